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
    /// The adapter has `shader-f16`.
    pub shader_f16: bool,
    /// The adapter has `subgroups`.
    pub subgroups: bool,
    pub max_buffer_size: u64,
    pub max_storage_binding: u64,
    /// The matmul kernels in use: "f32" or "f16" (products within a 32-value block in f16; F32
    /// weights always use the f32 kernel), with "+subgroups" when a row's partial sums are added
    /// with subgroup shuffles rather than through workgroup memory (needs `subgroups`, more than
    /// one thread per row and subgroups of at least that many lanes), and "+q8x" when decode
    /// multiplies quantized weights by quantized activations.
    pub kernel_variant: String,
    /// Threads that share a weight row in the matmul.
    pub matmul_threads_per_row: u32,
    /// The adapter's subgroup sizes (min, max) as reported (4 and 128 when it does not say).
    pub subgroup_sizes: (u32, u32),
    /// The adapter runs on the CPU: lavapipe, SwiftShader, a browser's fallback adapter.
    pub runs_on_cpu: bool,
}

pub(super) struct Kernels {
    /// Each pipeline's label, for the profile.
    names: HashMap<wgpu::ComputePipeline, Arc<str>>,
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
    /// Activations to signed bytes per 32 values (kernels/quantize.wgsl), for `Q8X` decode; only
    /// built for that variant (it needs WGSL's packed 4×8-bit integer functions).
    pub quantize: Option<wgpu::ComputePipeline>,
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
    pub fn name(&self, pipeline: &wgpu::ComputePipeline) -> Arc<str> {
        self.names
            .get(pipeline)
            .cloned()
            .unwrap_or_else(|| "unlabelled".into())
    }
}

const QUANT: &str = include_str!("kernels/quant.wgsl");
const MATMUL: &str = include_str!("kernels/matmul.wgsl");
const EMBED: &str = include_str!("kernels/embed.wgsl");
const NORM: &str = include_str!("kernels/norm.wgsl");
const ROPE: &str = include_str!("kernels/rope.wgsl");
const ELEMENTWISE: &str = include_str!("kernels/elementwise.wgsl");
const ATTENTION: &str = include_str!("kernels/attention.wgsl");
const QUANTIZE: &str = include_str!("kernels/quantize.wgsl");

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

/// Block-quantized weights (not F32 or F16): the types the q8 activation kernels take.
fn is_quantized(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::F32 | GgmlType::F16)
}

/// What went wrong on the device, as reported by wgpu's callbacks.
#[derive(Clone, Debug)]
enum GpuFault {
    Lost(String),
    Error(String),
}

/// Settings that are normally chosen for the adapter; tests force them. `None` = the adapter's
/// choice, or natively what `EDGECHAT_GPU_VARIANT=f32|f16`, `EDGECHAT_GPU_SUBGROUPS=0|1`,
/// `EDGECHAT_GPU_THREADS_PER_ROW=n` and `EDGECHAT_GPU_ACTIVATIONS=f32|q8` say when they are set.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuOptions {
    /// Threads per weight row in the matmul (a power of two up to 64).
    pub matmul_threads_per_row: Option<u32>,
    /// f16 products in the matmul kernels (`Some(true)` fails on an adapter without
    /// `shader-f16`; `Some(false)`: f32 only).
    pub shader_f16: Option<bool>,
    /// Subgroup operations for the matmul's reductions (`Some(true)` fails on an adapter without
    /// `subgroups`; they are still used only where they apply, see
    /// [`AdapterSummary::kernel_variant`]).
    pub subgroups: Option<bool>,
    /// Decode multiplies quantized weights by activations quantized to signed bytes per 32
    /// values, with integer dot products (kernels/quantize.wgsl, matmul.wgsl `Q8X`); the default
    /// is f32 activations.
    pub q8_activations: Option<bool>,
    /// A lower storage-binding limit than the adapter's (splits matrices into more buffers).
    pub max_binding_bytes: Option<u64>,
    /// Bytes of a tensor held on the host at once while uploading (default 16 MiB).
    pub upload_piece_bytes: Option<usize>,
    /// GPU time per kernel with timestamp queries (natively also `EDGECHAT_GPU_PROFILE=1`);
    /// waits for the GPU after every submission.
    pub profile: Option<bool>,
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
    /// The decode kernel is matmul.wgsl's MULTI_ROW (CPU implementations): see `gemm_prefill`.
    multi_row: bool,
    /// Decode multiplies quantized weights by quantized activations: see `q8_decode`.
    q8x: bool,
    /// Bytes between dispatch parameters in a uniform buffer (the adapter's offset alignment).
    pub uniform_slot_bytes: usize,
    pub upload_piece_bytes: usize,
    /// GPU time per kernel, when asked for.
    pub profiler: Option<super::profile::Profiler>,
    /// The first validation, out-of-memory or device-lost error, reported at the next flush.
    error: Arc<Mutex<Option<GpuFault>>>,
}

impl Gpu {
    pub async fn open_async(options: GpuOptions) -> Result<Gpu> {
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
        let variant = Variant::choose(&options, &info, features)?;
        let profile = options
            .profile
            .or(env_choice(
                "EDGECHAT_GPU_PROFILE",
                &[("0", false), ("1", true)],
            )?)
            .unwrap_or(false)
            && cfg!(not(target_arch = "wasm32"));
        if profile && !features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::Backend(format!(
                "a kernel profile was asked for, but the adapter {} ({:?}) has no timestamp queries",
                info.name, info.backend
            )));
        }
        let mut required_features = variant.features;
        required_features.set(wgpu::Features::TIMESTAMP_QUERY, profile);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("edgechat"),
                required_features,
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
            kernel_variant: variant.name(),
            matmul_threads_per_row: variant.threads_per_row,
            subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
            runs_on_cpu: info.device_type == wgpu::DeviceType::Cpu,
        };
        let adapter_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding_bytes = (options
            .max_binding_bytes
            .map_or(adapter_binding, |m| m.min(adapter_binding))
            as usize)
            & !3;
        let threads_per_row = variant.threads_per_row;
        let kernels = Kernels::compile(&device, &variant);
        let profiler = profile.then(|| super::profile::Profiler::new(&device, &queue));
        let gpu = Gpu {
            device,
            queue,
            kernels,
            summary,
            max_binding_bytes,
            max_groups_per_dim: limits.max_compute_workgroups_per_dimension,
            // matmul.wgsl: 64 threads, or 16 invocations of 8 rows each (MULTI_ROW).
            matmul_rows_per_group: if variant.multi_row() {
                128
            } else {
                64 / threads_per_row as usize
            },
            multi_row: variant.multi_row(),
            q8x: variant.q8x,
            uniform_slot_bytes: (limits.min_uniform_buffer_offset_alignment as usize).max(256),
            upload_piece_bytes: options.upload_piece_bytes.unwrap_or(16 << 20),
            profiler,
            error,
        };
        gpu.check()?;
        Ok(gpu)
    }

    /// Whether prefill multiplies by `ty` matrices through the tiled kernel (matmul.wgsl `tiled`)
    /// rather than the decode kernel token by token. Always on GPUs. On CPU implementations the
    /// multi-row decode kernel reads whole-word Q4_1 blocks in place faster than the tiled kernel
    /// computes: 64 tokens times a 2048 × 2048 Q4_1 matrix at 0.66 against 0.55 GMAC/s on
    /// SwiftShader (0.78 against 0.52 on lavapipe), while every other type is faster tiled
    /// (SwiftShader: Q4_K 0.53 → 0.63, Q6_K 0.22 → 0.63, Q8_0 0.32 → 0.62 GMAC/s).
    pub fn gemm_prefill(&self, ty: GgmlType) -> bool {
        !self.multi_row || ty != GgmlType::Q4_1
    }

    /// Whether the decode kernel for `ty` matrices reads x quantized (`Kernels::quantize`) rather
    /// than in f32: with the q8 activation variant, for the quantized weight types.
    pub fn q8_decode(&self, ty: GgmlType) -> bool {
        self.q8x && is_quantized(ty)
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
    /// In a browser `writeBuffer` has already copied the data and nothing may block: only checks.
    pub fn wait_idle(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Backend(format!("waiting for the GPU: {e}")))?;
        self.check()
    }
}

/// How a row's partial sums are added up in the matmul (see kernels/matmul.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reduction {
    /// One thread per row: nothing to add.
    None,
    /// Through workgroup memory and a barrier.
    Shared,
    /// With subgroup shuffles.
    Subgroup,
}

/// The kernel variant for an adapter and the device features it needs.
#[derive(Clone, Debug)]
struct Variant {
    f16: bool,
    /// Quantized activations in the decode kernel of quantized weights (matmul.wgsl `Q8X`).
    q8x: bool,
    reduction: Reduction,
    threads_per_row: u32,
    /// `enable subgroups;` in the source: browsers require it; wgpu's own compiler (naga) rejects
    /// it and takes the device feature instead.
    subgroups_directive: bool,
    features: wgpu::Features,
}

impl Variant {
    /// What `options` force, else (natively) the environment, else what the adapter has:
    /// - `EDGECHAT_GPU_VARIANT=f32|f16`: f16 products in the matmul or not;
    /// - `EDGECHAT_GPU_SUBGROUPS=0|1`: subgroup reductions or not;
    /// - `EDGECHAT_GPU_THREADS_PER_ROW=n`: threads per weight row (a power of two up to 64).
    ///
    /// By default the f32 kernels, with 32 threads per weight row on GPUs and subgroup reductions
    /// where the adapter has subgroups: on an H100 (Vulkan) that decoded the 8B-shaped Q4_K_M
    /// model at 33.7 tok/s against 21.9 for f16 with 8 threads per row (`scripts/bench-gpu`; the
    /// f16 kernels build each 32-value sub-block as an array first, the f32 ones accumulate
    /// directly). One thread per row on CPU implementations (lavapipe, SwiftShader): a
    /// workgroup's threads are SIMD lanes, one row per lane, and x is read once for all.
    fn choose(
        options: &GpuOptions,
        info: &wgpu::AdapterInfo,
        features: wgpu::Features,
    ) -> Result<Variant> {
        let has_f16 = features.contains(wgpu::Features::SHADER_F16);
        let has_subgroups = features.contains(wgpu::Features::SUBGROUP);
        let cpu = info.device_type == wgpu::DeviceType::Cpu;
        let f16 = match options.shader_f16.or(env_choice(
            "EDGECHAT_GPU_VARIANT",
            &[("f32", false), ("f16", true)],
        )?) {
            Some(true) if !has_f16 => {
                return Err(Error::Backend(format!(
                    "f16 kernels were asked for, but the adapter {} ({:?}) has no shader-f16",
                    info.name, info.backend
                )))
            }
            Some(forced) => forced,
            None => false,
        };
        let subgroups = match options.subgroups.or(env_choice(
            "EDGECHAT_GPU_SUBGROUPS",
            &[("0", false), ("1", true)],
        )?) {
            Some(true) if !has_subgroups => {
                return Err(Error::Backend(format!(
                    "subgroup kernels were asked for, but the adapter {} ({:?}) has no subgroups",
                    info.name, info.backend
                )))
            }
            Some(forced) => forced,
            None => has_subgroups,
        };
        let q8x = options
            .q8_activations
            .or(env_choice(
                "EDGECHAT_GPU_ACTIVATIONS",
                &[("f32", false), ("q8", true)],
            )?)
            .unwrap_or(false);
        let threads_per_row = match options.matmul_threads_per_row {
            Some(n) => n,
            None => env_threads_per_row()?.unwrap_or(if cpu { 1 } else { 32 }),
        };
        // Shuffles stay within a subgroup: every subgroup must hold a row's lanes. The adapter's
        // minimum is a bound (4, the least WebGPU allows, when it does not know better).
        let reduction = if threads_per_row == 1 {
            Reduction::None
        } else if subgroups && info.subgroup_min_size >= threads_per_row {
            Reduction::Subgroup
        } else {
            Reduction::Shared
        };
        let mut needed = wgpu::Features::empty();
        needed.set(wgpu::Features::SHADER_F16, f16);
        needed.set(wgpu::Features::SUBGROUP, subgroups);
        Ok(Variant {
            f16,
            q8x,
            reduction,
            threads_per_row,
            subgroups_directive: info.backend == wgpu::Backend::BrowserWebGpu,
            features: needed,
        })
    }

    /// One thread per row with f32 products: kernels/matmul.wgsl's MULTI_ROW decode kernel,
    /// eight rows per invocation, for CPU implementations.
    fn multi_row(&self) -> bool {
        self.threads_per_row == 1 && !self.f16 && !self.q8x
    }

    fn name(&self) -> String {
        let precision = if self.f16 { "f16" } else { "f32" };
        let reduction = match self.reduction {
            Reduction::Subgroup => "+subgroups",
            Reduction::None | Reduction::Shared => "",
        };
        let activations = if self.q8x { "+q8x" } else { "" };
        format!("{precision}{reduction}{activations}")
    }

    /// The matmul source for weights of type `ty`, with the quant.wgsl decoders it calls.
    fn matmul_source(&self, ty: GgmlType) -> String {
        // F32 weights have nothing to gain from f16 (and would lose precision).
        let f16 = self.f16 && ty != GgmlType::F32;
        let mut flags = Vec::new();
        let mut header = String::new();
        if f16 {
            flags.push("F16");
            header.push_str("enable f16; ");
        }
        if self.q8x && is_quantized(ty) {
            flags.push("Q8X");
        }
        match self.reduction {
            Reduction::None if self.multi_row() => flags.push("MULTI_ROW"),
            Reduction::None => {}
            Reduction::Shared => flags.push("REDUCE_SHARED"),
            Reduction::Subgroup => {
                flags.push("REDUCE_SUBGROUP");
                if self.subgroups_directive {
                    header.push_str("enable subgroups; ");
                }
            }
        }
        // The directives go before the file's first line (a comment), keeping its line numbers.
        let kernel = select_lines(MATMUL, &flags).replace("TYPE", wgsl_type_name(ty));
        format!("{header}{kernel}\n{}", select_lines(QUANT, &flags))
    }
}

/// A choice from an environment variable (natively; `None` when unset), one of `values`.
fn env_choice(name: &str, values: &[(&str, bool)]) -> Result<Option<bool>> {
    let Some(value) = env_var(name) else {
        return Ok(None);
    };
    values
        .iter()
        .find(|(v, _)| *v == value.trim())
        .map(|&(_, choice)| Some(choice))
        .ok_or_else(|| {
            let allowed: Vec<&str> = values.iter().map(|(v, _)| *v).collect();
            Error::Backend(format!(
                "{name}={value}: expected one of {}",
                allowed.join(", ")
            ))
        })
}

fn env_threads_per_row() -> Result<Option<u32>> {
    const NAME: &str = "EDGECHAT_GPU_THREADS_PER_ROW";
    let Some(value) = env_var(NAME) else {
        return Ok(None);
    };
    match value.trim().parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= 64 => Ok(Some(n)),
        _ => Err(Error::Backend(format!(
            "{NAME}={value}: expected a power of two up to 64"
        ))),
    }
}

fn env_var(name: &str) -> Option<String> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = name;
        None
    }
}

/// The lines of a kernel source that its `// #if FLAG`, `// #else` and `// #endif` lines (which
/// nest) select for `flags`. Marker and dropped lines are left empty, so line numbers in compiler
/// messages are the file's.
fn select_lines(source: &str, flags: &[&str]) -> String {
    // Per open `#if`: whether the enclosing lines are kept, and its condition.
    let mut open: Vec<(bool, bool)> = Vec::new();
    let mut keep = true;
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        let marker = line.trim();
        if let Some(flag) = marker.strip_prefix("// #if ") {
            let condition = flags.contains(&flag.trim());
            open.push((keep, condition));
            keep = keep && condition;
        } else if marker == "// #else" {
            let &(outer, condition) = open.last().expect("`// #else` without `// #if`");
            keep = outer && !condition;
        } else if marker == "// #endif" {
            keep = open.pop().expect("`// #endif` without `// #if`").0;
        } else if keep {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(open.is_empty(), "`// #if` without `// #endif`");
    out
}

impl Kernels {
    fn compile(device: &wgpu::Device, variant: &Variant) -> Kernels {
        let matmul_constants = [("THREADS_PER_ROW", f64::from(variant.threads_per_row))];
        let names = std::cell::RefCell::new(HashMap::new());
        let pipeline = |label: &str, source: String, entry: &str| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
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
            });
            names
                .borrow_mut()
                .insert(pipeline.clone(), Arc::from(label));
            pipeline
        };
        let typed = |name: &str, entry: &str, source: &dyn Fn(GgmlType) -> String| {
            super::SUPPORTED_TYPES
                .iter()
                .map(|&ty| {
                    let label = format!("{name}_{}", wgsl_type_name(ty));
                    (ty, pipeline(&label, source(ty), entry))
                })
                .collect()
        };
        let matmul_source = |ty| variant.matmul_source(ty);
        let embed_source = |ty| {
            let quant = select_lines(QUANT, &[]);
            format!("{}\n{quant}", EMBED.replace("TYPE", wgsl_type_name(ty)))
        };
        Kernels {
            matmul: typed("matmul", "main", &matmul_source),
            matmul_tiled: typed("matmul_tiled", "tiled", &matmul_source),
            embed: typed("embed", "main", &embed_source),
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
            quantize: variant
                .q8x
                .then(|| pipeline("quantize", QUANTIZE.into(), "main")),
            names: names.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::select_lines;

    #[test]
    fn select_lines_keeps_the_chosen_branches() {
        let source = "a\n// #if X\nb\n  // #if Y\nc\n  // #else\nd\n  // #endif\n// #else\ne\n// #endif\nf\n";
        let kept = |flags: &[&str]| {
            select_lines(source, flags)
                .lines()
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(kept(&[]), "a e f");
        assert_eq!(kept(&["X"]), "a b d f");
        assert_eq!(kept(&["X", "Y"]), "a b c f");
        assert_eq!(kept(&["Y"]), "a e f");
        // Line numbers are kept.
        assert_eq!(
            select_lines(source, &[]).lines().count(),
            source.lines().count()
        );
    }
}
