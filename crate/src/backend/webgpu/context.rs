//! The adapter, device, queue and compiled kernels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gguf::GgmlType;

/// What the adapter is, for `edgechat bench`/`info` and error messages.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub driver: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub max_buffer_size: u64,
    pub max_storage_binding: u64,
}

pub(super) struct Kernels {
    matmul: HashMap<GgmlType, wgpu::ComputePipeline>,
    matmul_tiled: HashMap<GgmlType, wgpu::ComputePipeline>,
    embed: HashMap<GgmlType, wgpu::ComputePipeline>,
    pub rms_norm: wgpu::ComputePipeline,
    pub rope: wgpu::ComputePipeline,
    pub add: wgpu::ComputePipeline,
    pub swiglu: wgpu::ComputePipeline,
    pub attention: wgpu::ComputePipeline,
    pub attention_split_partial: wgpu::ComputePipeline,
    pub attention_split_combine: wgpu::ComputePipeline,
}

impl Kernels {
    pub fn matmul(&self, ty: GgmlType) -> &wgpu::ComputePipeline {
        &self.matmul[&ty]
    }
    /// Several tokens per workgroup (prefill).
    pub fn matmul_tiled(&self, ty: GgmlType) -> &wgpu::ComputePipeline {
        &self.matmul_tiled[&ty]
    }
    pub fn embed(&self, ty: GgmlType) -> &wgpu::ComputePipeline {
        &self.embed[&ty]
    }
}

const QUANT: &str = include_str!("kernels/quant.wgsl");
const MATMUL: &str = include_str!("kernels/matmul.wgsl");
const EMBED: &str = include_str!("kernels/embed.wgsl");
const NORM: &str = include_str!("kernels/norm.wgsl");
const ROPE: &str = include_str!("kernels/rope.wgsl");
const ELEMENTWISE: &str = include_str!("kernels/elementwise.wgsl");
const ATTENTION: &str = include_str!("kernels/attention.wgsl");

/// The name a type's decoding functions have in quant.wgsl.
fn wgsl_type_name(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F32 => "f32",
        GgmlType::F16 => "f16",
        GgmlType::Q4_0 => "q4_0",
        GgmlType::Q4_1 => "q4_1",
        GgmlType::Q8_0 => "q8_0",
        GgmlType::Q4K => "q4_k",
        GgmlType::Q6K => "q6_k",
        other => unreachable!("{other:?} has no kernel (checked at load)"),
    }
}

/// What went wrong on the device, as reported by wgpu's callbacks.
#[derive(Clone, Debug)]
enum GpuFault {
    Lost(String),
    Error(String),
}

/// Settings that are normally chosen for the adapter; tests force them.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuOptions {
    /// Threads per weight row in the matmul (a power of two up to 64).
    pub matmul_threads_per_row: Option<u32>,
    /// A lower storage-binding limit than the adapter's (splits matrices into more buffers).
    pub max_binding_bytes: Option<u64>,
    /// Bytes of a tensor held on the host at once while uploading (default 16 MiB).
    pub upload_piece_bytes: Option<usize>,
}

pub(super) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub kernels: Kernels,
    pub summary: AdapterSummary,
    /// Largest storage buffer one binding may cover.
    pub max_binding_bytes: usize,
    pub max_groups_per_dim: u32,
    /// Weight rows per matmul workgroup (see kernels/matmul.wgsl).
    pub matmul_rows_per_group: usize,
    /// Bytes between dispatch parameters in a uniform buffer (the adapter's offset alignment).
    pub uniform_slot_bytes: usize,
    pub upload_piece_bytes: usize,
    /// The first validation, out-of-memory or device-lost error, reported at the next flush.
    error: Arc<Mutex<Option<GpuFault>>>,
}

impl Gpu {
    pub fn open(options: GpuOptions) -> Result<Gpu> {
        pollster::block_on(Self::open_async(options))
    }

    async fn open_async(options: GpuOptions) -> Result<Gpu> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Backend(format!("no WebGPU adapter: {e}")))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("edgechat"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Backend(format!("could not open the GPU device: {e}")))?;
        let error = Arc::new(Mutex::new(None));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().expect("error slot");
            slot.get_or_insert_with(|| GpuFault::Error(e.to_string()));
        }));
        let lost = error.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = lost.lock().expect("error slot");
            slot.get_or_insert_with(|| GpuFault::Lost(format!("{reason:?}: {message}")));
        });
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            driver: format!("{} {}", info.driver, info.driver_info),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            max_buffer_size: limits.max_buffer_size,
            max_storage_binding: limits.max_storage_buffer_binding_size,
        };
        let adapter_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding_bytes = (options
            .max_binding_bytes
            .map_or(adapter_binding, |m| m.min(adapter_binding))
            as usize)
            & !3;
        // CPU implementations of WebGPU run a workgroup's threads as SIMD lanes: one row per lane.
        let default_threads = if info.device_type == wgpu::DeviceType::Cpu {
            1
        } else {
            8
        };
        let threads_per_row = options.matmul_threads_per_row.unwrap_or(default_threads);
        let kernels = Kernels::compile(&device, threads_per_row);
        let gpu = Gpu {
            device,
            queue,
            kernels,
            summary,
            max_binding_bytes,
            max_groups_per_dim: limits.max_compute_workgroups_per_dimension,
            matmul_rows_per_group: 64 / threads_per_row as usize,
            uniform_slot_bytes: (limits.min_uniform_buffer_offset_alignment as usize).max(256),
            upload_piece_bytes: options.upload_piece_bytes.unwrap_or(16 << 20),
            error,
        };
        gpu.check()?;
        Ok(gpu)
    }

    /// The first GPU error since the device opened, if any.
    pub fn check(&self) -> Result<()> {
        match self.error.lock().expect("error slot").clone() {
            Some(GpuFault::Lost(e)) => Err(Error::DeviceLost(e)),
            Some(GpuFault::Error(e)) => Err(Error::Backend(format!("GPU error: {e}"))),
            None => Ok(()),
        }
    }

    /// Waits until the GPU has done everything submitted (uploads release their staging memory).
    pub fn wait_idle(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Backend(format!("waiting for the GPU: {e}")))?;
        self.check()
    }

    /// Maps a MAP_READ buffer whose copy was submitted, and returns its bytes.
    pub fn map_read(&self, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        buffer.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Backend(format!("waiting for the GPU: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Backend("the GPU never finished the readback".into()))?
            .map_err(|e| Error::Backend(format!("reading GPU memory: {e}")))?;
        self.check()?;
        let data = buffer
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Backend(format!("reading GPU memory: {e}")))?
            .to_vec();
        buffer.unmap();
        Ok(data)
    }
}

impl Kernels {
    fn compile(device: &wgpu::Device, threads_per_row: u32) -> Kernels {
        let matmul_constants = [("THREADS_PER_ROW", f64::from(threads_per_row))];
        let pipeline = |label: &str, source: String, entry: &str| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: if label.starts_with("matmul") {
                        &matmul_constants
                    } else {
                        &[]
                    },
                    ..Default::default()
                },
                cache: None,
            })
        };
        let typed = |kernel: &str, name: &str, entry: &str| {
            super::SUPPORTED_TYPES
                .iter()
                .map(|&ty| {
                    let source = format!("{}\n{QUANT}", kernel.replace("TYPE", wgsl_type_name(ty)));
                    let label = format!("{name}_{}", wgsl_type_name(ty));
                    (ty, pipeline(&label, source, entry))
                })
                .collect()
        };
        Kernels {
            matmul: typed(MATMUL, "matmul", "main"),
            matmul_tiled: typed(MATMUL, "matmul_tiled", "tiled"),
            embed: typed(EMBED, "embed", "main"),
            rms_norm: pipeline("rms_norm", NORM.into(), "main"),
            rope: pipeline("rope", ROPE.into(), "main"),
            add: pipeline("add", ELEMENTWISE.into(), "add"),
            swiglu: pipeline("swiglu", ELEMENTWISE.into(), "swiglu"),
            attention: pipeline("attention", ATTENTION.into(), "main"),
            attention_split_partial: pipeline("attention_split", ATTENTION.into(), "split_partial"),
            attention_split_combine: pipeline(
                "attention_combine",
                ATTENTION.into(),
                "split_combine",
            ),
        }
    }
}
