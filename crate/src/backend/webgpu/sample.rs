//! Sampling on the GPU (kernels/sample.wgsl): the token is chosen where the logits are, so only
//! its id is read back. One dispatch of one workgroup per token, recorded into the forward call's
//! encoder like every other kernel; the algorithm is described at the top of the kernel.
//!
//! Same semantics as [`Sampler::sample`](crate::sampling::Sampler::sample) without penalties,
//! ties included, with two differences: the draw walks the survivors in id order (the CPU walks
//! them by descending logit: the same distribution, but the same uniform can land on a different
//! token), and the sums are f32 (a top-p boundary within rounding of `top_p` may keep one token
//! more or less).

use bytemuck::{Pod, Zeroable};

use super::{u32_of, GpuTensor, WebGpuBackend};
use crate::error::{Error, Result};
use crate::sampling::DeviceSampling;

const SAMPLE: &str = include_str!("kernels/sample.wgsl");

pub(super) struct SampleKernels {
    sample: wgpu::ComputePipeline,
}

impl SampleKernels {
    fn compile(device: &wgpu::Device) -> SampleKernels {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("sample"),
            source: wgpu::ShaderSource::Wgsl(SAMPLE.into()),
        });
        let sample = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("sample"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        SampleKernels { sample }
    }

    pub(super) fn is(&self, pipeline: &wgpu::ComputePipeline) -> bool {
        &self.sample == pipeline
    }
}

/// `Params` in kernels/sample.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SampleParams {
    n: u32,
    top_k: u32,
    greedy: u32,
    top_p_on: u32,
    min_p_on: u32,
    top_p: f32,
    log_min_p: f32,
    inv_temp: f32,
    draw: f32,
}

impl SampleParams {
    /// The request in the kernel's terms, with the CPU's rules for what is off: top-k unless
    /// `0 < top_k < n`, top-p unless `top_p < 1`, min-p unless `0 < min_p <= 1`.
    fn new(request: &DeviceSampling, n: u32) -> SampleParams {
        let greedy = request.is_greedy();
        let min_p_on = request.min_p > 0.0 && request.min_p <= 1.0;
        SampleParams {
            n,
            top_k: if request.top_k < n { request.top_k } else { 0 },
            greedy: u32::from(greedy),
            top_p_on: u32::from(request.top_p < 1.0),
            min_p_on: u32::from(min_p_on),
            top_p: request.top_p,
            // The same f32 logarithm as the CPU's threshold `max + ln(min_p)`.
            log_min_p: if min_p_on { request.min_p.ln() } else { 0.0 },
            inv_temp: if greedy {
                0.0
            } else {
                (1.0 / f64::from(request.temperature)) as f32
            },
            // Into [0, 1); NaN becomes 0.
            draw: if request.uniform > 0.0 {
                request.uniform.min(1.0 - f32::EPSILON)
            } else {
                0.0
            },
        }
    }
}

impl WebGpuBackend {
    /// Records the choice of a token from `logits` (one row) and returns a 1×1 tensor holding the
    /// token id's bits (`f32::to_bits` of what `to_vec` reads). Nothing is submitted.
    pub(super) fn sample_on_gpu(
        &self,
        logits: &GpuTensor,
        request: &DeviceSampling,
    ) -> Result<GpuTensor> {
        if logits.rows != 1 {
            return Err(Error::Backend(format!(
                "sampling takes one row of logits, not {}",
                logits.rows
            )));
        }
        let n = u32_of(logits.cols, "vocabulary size")?;
        let params = SampleParams::new(request, n);
        let kernels = self
            .sample_kernels
            .get_or_init(|| SampleKernels::compile(self.device()));
        // The compacted candidates, (key, id) each; greedy never touches them.
        let scratch_words = if params.greedy != 0 {
            2
        } else {
            logits.cols.max(1).checked_mul(2).ok_or_else(|| {
                Error::Backend(format!("{} logits are too many to sample", logits.cols))
            })?
        };
        let scratch = self.storage(scratch_words);
        let token = self.token_tensor();
        self.dispatch(
            &kernels.sample,
            &[&logits.buffer, &scratch, &token.buffer],
            &params,
            (1, 1),
        );
        Ok(token)
    }
}
