//! The GPU backend: wgpu (Vulkan/Metal/DX12 natively, WebGPU in the browser) running our WGSL
//! kernels (`kernels/*.wgsl`, one family per file). It implements the same [`Backend`] as the CPU,
//! so `model::Llama` is the one forward pass for both.
//!
//! A forward call records every dispatch into one command encoder and is submitted when its result
//! is read: the logits, or the one word of the token `sample` chose on the GPU. A token is one
//! submission; the next call can start on the GPU-held token before the host reads it
//! (`embed_sampled`). Activation buffers come from an arena reused in allocation order, so decode
//! steps find their bind groups already made. Weights stay in their GGUF encoding on the GPU and
//! are decoded inside the kernels (no re-quantization at load). Matrices larger than the adapter's
//! storage-binding limit are split by rows across buffers.
//!
//! Every kernel has an f32 path, which every adapter supports (SwiftShader in Chromium has no
//! `shader-f16`); the matmuls also have f16 and subgroup variants, chosen in context.rs from the
//! adapter's features.

mod context;
mod profile;
mod readback;
mod sample;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::{AttentionParams, Backend, Readback, WorkCounts};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgmlType, GgufFile, TensorData, TensorInfo};
use crate::model::{LanguageModel, Llama, LlamaConfig};
use crate::sampling::DeviceSampling;
use context::Gpu;

pub use context::{AdapterSummary, GpuOptions};
pub use readback::GpuReadback;

/// Loads a model onto the default GPU adapter.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_model(file: &GgufFile, source: &dyn ByteSource) -> Result<Box<dyn LanguageModel>> {
    load_model_on(WebGpuBackend::new()?, file, source)
}

/// Loads a model onto an opened backend (in a browser: from [`WebGpuBackend::new_async`]), after
/// checking that it fits the adapter's limits ([`WebGpuBackend::check_fits`]).
pub fn load_model_on(
    backend: WebGpuBackend,
    file: &GgufFile,
    source: &dyn ByteSource,
) -> Result<Box<dyn LanguageModel>> {
    backend.check_fits(file, &LlamaConfig::from_gguf(file)?)?;
    Ok(Box::new(Llama::load(backend, file, source)?))
}

/// The KV cache must hold at least this many positions (or the model's whole context, if shorter)
/// for a model to count as fitting an adapter: a shorter chat is not worth running.
pub const MIN_GPU_CONTEXT: usize = 4096;

/// Activations on the GPU: `rows × cols` f32, row-major.
pub struct GpuTensor {
    buffer: Arc<wgpu::Buffer>,
    rows: usize,
    cols: usize,
    /// The same quantized for the q8 decode kernels, once a matmul has asked for it (the inputs
    /// of Q, K and V, or of the FFN's gate and up, are quantized once for all of them).
    quantized: OnceLock<Arc<wgpu::Buffer>>,
}

/// Rows `[first_row, first_row + rows)` of a weight matrix, in one buffer.
struct Chunk {
    buffer: wgpu::Buffer,
    first_row: usize,
    rows: usize,
}

/// A weight matrix (or embedding table) `rows × cols` in its GGUF encoding.
pub struct GpuMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    chunks: Vec<Chunk>,
}

pub struct GpuVector {
    buffer: wgpu::Buffer,
}

pub struct GpuKvCache {
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    /// Positions held.
    len: usize,
    /// Positions the buffers can hold.
    capacity: usize,
    /// Largest capacity (the model's context length).
    max_len: usize,
    /// Floats per position: kv heads × head dim.
    width: usize,
}

pub struct GpuPositions {
    /// (cos, sin) per row and rotary pair.
    table: Arc<wgpu::Buffer>,
    rows: usize,
}

pub struct WebGpuBackend {
    gpu: Arc<Gpu>,
    /// What the forward call being recorded has so far.
    frame: Mutex<Frame>,
    /// Uniform buffers for dispatch parameters, reused by every forward call (`SLOTS_PER_BLOCK`
    /// dispatches each; more are added when a call needs them).
    uniform_blocks: Mutex<Vec<wgpu::Buffer>>,
    /// Activation buffers reused by every forward call in allocation order, so the same dispatch
    /// of the next token binds the same buffers and finds its bind group made.
    arena: Mutex<Arena>,
    bind_groups: Mutex<HashMap<BindGroupKey, wgpu::BindGroup>>,
    /// One-word tensors for sampled tokens. The token a call chose is still held while the next
    /// call runs on it, so these live apart from the arena: generation uses two, alternately.
    token_pool: Mutex<Vec<Arc<wgpu::Buffer>>>,
    /// Bound as the matmul epilogue's operand when there is none (a binding must name a buffer).
    no_residual: Arc<wgpu::Buffer>,
    dispatches: AtomicU64,
    submissions: AtomicU64,
    bind_groups_made: AtomicU64,
    /// The sampling kernels, compiled on first use.
    sample_kernels: std::sync::OnceLock<sample::SampleKernels>,
}

/// Per-forward buffers: the `i`-th allocation of a forward call gets `buffers[i]` when it has the
/// size asked for and nobody else still holds it.
#[derive(Default)]
struct Arena {
    buffers: Vec<Arc<wgpu::Buffer>>,
    next: usize,
}

/// What a bind group binds: a dispatch with the same pipeline, buffers and parameter slot reuses
/// it (wgpu handles compare and hash by identity).
#[derive(PartialEq, Eq, Hash)]
struct BindGroupKey {
    pipeline: wgpu::ComputePipeline,
    buffers: Vec<(u32, wgpu::Buffer)>,
    uniform_block: usize,
    uniform_offset: u64,
}

/// Bind groups kept at most; past this the cache starts over (shapes keep changing).
const MAX_BIND_GROUPS: usize = 8192;

/// One forward call's recording, submitted at once.
#[derive(Default)]
struct Frame {
    encoder: Option<wgpu::CommandEncoder>,
    /// Dispatch parameters, one slot per dispatch, written to the uniform blocks just before the
    /// submission (queue writes land before the commands that follow them).
    params: Vec<u8>,
}

/// Dispatches whose parameters share one uniform buffer.
const SLOTS_PER_BLOCK: usize = 512;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
    k: u32,
    n_rows: u32,
    row_bytes: u32,
    out_cols: u32,
    out_offset: u32,
    tokens: u32,
    epilogue: u32,
}

/// What the matmul kernel does with each output as it writes it (`EPILOGUE_*` in matmul.wgsl).
#[derive(Clone, Copy)]
enum Epilogue<'a> {
    None,
    /// `+ r`.
    Add(&'a GpuTensor),
    /// `silu(·) * r`.
    Swiglu(&'a GpuTensor),
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EmbedParams {
    cols: u32,
    row_bytes: u32,
    first_row: u32,
    n_rows: u32,
    tokens: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    cols: u32,
    eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeParams {
    heads: u32,
    head_dim: u32,
    rows: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LenParams {
    len: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionKernelParams {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    rows: u32,
    start_pos: u32,
    window: u32,
    scale: f32,
    keys_per_split: u32,
    splits: u32,
}

/// Decode attends over key ranges of this many positions in parallel (flash-decoding) once the
/// visible context is longer than one range.
const KEYS_PER_SPLIT: usize = 64;

/// The attention kernel reads keys four dimensions at a time and holds a query in 256 values.
fn check_head_dim(head_dim: usize) -> Result<()> {
    if head_dim > 256 || !head_dim.is_multiple_of(4) {
        return Err(Error::Backend(format!(
            "head_dim {head_dim}: the attention kernel takes multiples of 4 up to 256"
        )));
    }
    Ok(())
}

/// The tile of the prefill matmul: weight rows and tokens per workgroup (`GEMM_ROWS`,
/// `GEMM_TOKENS` in kernels/matmul.wgsl).
const GEMM_ROWS: usize = 64;
const GEMM_TOKENS: usize = 32;

/// Types the kernels decode.
pub const SUPPORTED_TYPES: [GgmlType; 7] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

fn u32_of(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n)
        .map_err(|_| Error::Backend(format!("{what} ({n}) is too large for the GPU kernels")))
}

impl WebGpuBackend {
    /// Opens the default adapter (natively: Vulkan, Metal or DX12).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        Self::with_options(GpuOptions::default())
    }

    /// Like [`new`](Self::new), with settings forced instead of chosen for the adapter.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(options: GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(options))
    }

    /// Opens the default adapter without blocking (the only way in a browser).
    pub async fn new_async(options: GpuOptions) -> Result<Self> {
        if let Some(threads) = options.matmul_threads_per_row {
            if !threads.is_power_of_two() || threads > 64 {
                return Err(Error::Backend(format!(
                    "threads per row must be a power of two up to 64, not {threads}"
                )));
            }
        }
        let gpu = Gpu::open_async(options).await?;
        let no_residual = Arc::new(gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("no epilogue operand"),
            size: 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        }));
        Ok(WebGpuBackend {
            gpu: Arc::new(gpu),
            no_residual,
            frame: Mutex::new(Frame::default()),
            uniform_blocks: Mutex::new(Vec::new()),
            arena: Mutex::new(Arena::default()),
            bind_groups: Mutex::new(HashMap::new()),
            token_pool: Mutex::new(Vec::new()),
            dispatches: AtomicU64::new(0),
            submissions: AtomicU64::new(0),
            bind_groups_made: AtomicU64::new(0),
            sample_kernels: std::sync::OnceLock::new(),
        })
    }

    pub fn adapter(&self) -> &AdapterSummary {
        &self.gpu.summary
    }

    /// Whether a model fits this adapter's limits, checked from its header before anything is
    /// uploaded: every weight row within one binding (`maxStorageBufferBindingSize`, and
    /// `maxBufferSize`), and each layer's keys or values for [`MIN_GPU_CONTEXT`] positions (or
    /// the model's context, if shorter) within one binding. The error is `GpuLimit`.
    pub fn check_fits(&self, file: &GgufFile, config: &LlamaConfig) -> Result<()> {
        let limit = self.gpu.max_binding_bytes.saturating_sub(4) as u64;
        for info in &file.tensors {
            let rows: u64 = info.dims.iter().skip(1).product();
            let row_bytes = info.n_bytes / rows.max(1);
            if row_bytes > limit {
                return Err(Error::GpuLimit {
                    what: format!("a row of tensor {}", info.name),
                    needed: row_bytes,
                    limit,
                });
            }
        }
        check_head_dim(config.head_dim)?;
        let positions = config.context_length.min(MIN_GPU_CONTEXT) as u64;
        let kv_bytes = positions * (config.head_count_kv * config.head_dim * 4) as u64;
        if kv_bytes > self.gpu.max_binding_bytes as u64 {
            return Err(Error::GpuLimit {
                what: format!("the keys of one layer for {positions} positions"),
                needed: kv_bytes,
                limit: self.gpu.max_binding_bytes as u64,
            });
        }
        Ok(())
    }

    fn device(&self) -> &wgpu::Device {
        &self.gpu.device
    }

    /// A buffer that lives as long as its owner (KV caches).
    fn persistent_storage(&self, floats: usize) -> wgpu::Buffer {
        self.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (floats.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A buffer for this forward call, from the arena. Reusing one the previous call wrote is safe:
    /// the queue runs submissions in order.
    fn storage(&self, floats: usize) -> Arc<wgpu::Buffer> {
        let size = (floats.max(1) * 4) as u64;
        let mut arena = self.arena.lock().expect("arena lock");
        let slot = arena.next;
        arena.next += 1;
        if let Some(buffer) = arena.buffers.get(slot) {
            if buffer.size() == size && Arc::strong_count(buffer) == 1 {
                return buffer.clone();
            }
            if Arc::strong_count(buffer) > 1 {
                // Still held (a tensor kept across calls): leave it, use a new one.
                return Arc::new(self.persistent_storage(floats));
            }
        }
        let buffer = Arc::new(self.persistent_storage(floats));
        if slot < arena.buffers.len() {
            // The shapes changed: bind groups of the old buffer would keep it alive.
            let old = std::mem::replace(&mut arena.buffers[slot], buffer.clone());
            self.forget_bind_groups_of(&old);
        } else {
            arena.buffers.push(buffer.clone());
        }
        buffer
    }

    /// Drops the bind groups that bind `buffer` (about to be released).
    fn forget_bind_groups_of(&self, buffer: &wgpu::Buffer) {
        self.bind_groups
            .lock()
            .expect("bind group lock")
            .retain(|key, _| !key.buffers.iter().any(|(_, b)| b == buffer));
    }

    /// A 1×1 tensor for a sampled token id, from the token pool.
    fn token_tensor(&self) -> GpuTensor {
        let mut pool = self.token_pool.lock().expect("token pool lock");
        let buffer = match pool.iter().find(|b| Arc::strong_count(b) == 1) {
            Some(free) => free.clone(),
            None => {
                let buffer = Arc::new(self.persistent_storage(1));
                pool.push(buffer.clone());
                buffer
            }
        };
        GpuTensor {
            buffer,
            rows: 1,
            cols: 1,
            quantized: OnceLock::new(),
        }
    }

    /// An arena buffer holding `bytes` (written before this call's commands run).
    fn storage_with(&self, bytes: &[u8]) -> Arc<wgpu::Buffer> {
        let buffer = self.storage(bytes.len().div_ceil(4));
        let mut words = bytes.to_vec();
        words.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
        self.gpu.queue.write_buffer(&buffer, 0, &words);
        buffer
    }

    fn tensor(&self, rows: usize, cols: usize) -> GpuTensor {
        GpuTensor {
            buffer: self.storage(rows * cols),
            rows,
            cols,
            quantized: OnceLock::new(),
        }
    }

    fn upload(&self, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        // Buffers are sized in whole 4-byte words (the kernels read u32s).
        let padded;
        let contents = if bytes.len().is_multiple_of(4) && !bytes.is_empty() {
            bytes
        } else {
            let mut words = bytes.to_vec();
            words.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            padded = words;
            &padded
        };
        self.device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents,
                usage,
            })
    }

    /// Runs `f` with the forward call's command encoder.
    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut frame = self.frame.lock().expect("frame lock");
        f(self.encoder(&mut frame));
    }

    fn encoder<'f>(&self, frame: &'f mut Frame) -> &'f mut wgpu::CommandEncoder {
        frame.encoder.get_or_insert_with(|| {
            self.device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("forward"),
                })
        })
    }

    /// Records one dispatch of `pipeline` with `buffers` at bindings 0.. and `params` as the
    /// uniform right after them.
    fn dispatch<P: Pod>(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&wgpu::Buffer],
        params: &P,
        groups: (u32, u32),
    ) {
        let bound: Vec<(u32, &wgpu::Buffer)> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32, *b))
            .collect();
        self.dispatch_bound(
            pipeline,
            &bound,
            buffers.len() as u32,
            params,
            (groups.0, groups.1, 1),
        );
    }

    /// Records one dispatch with storage buffers at the given bindings and `params` as the uniform
    /// at `uniform_binding`.
    fn dispatch_bound<P: Pod>(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[(u32, &wgpu::Buffer)],
        uniform_binding: u32,
        params: &P,
        groups: (u32, u32, u32),
    ) {
        let slot_bytes = self.gpu.uniform_slot_bytes;
        let mut frame = self.frame.lock().expect("frame lock");
        let slot = frame.params.len() / slot_bytes;
        frame.params.extend_from_slice(bytemuck::bytes_of(params));
        frame.params.resize((slot + 1) * slot_bytes, 0);
        let mut blocks = self.uniform_blocks.lock().expect("uniform lock");
        while blocks.len() <= slot / SLOTS_PER_BLOCK {
            blocks.push(self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("dispatch parameters"),
                size: (SLOTS_PER_BLOCK * slot_bytes) as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let key = BindGroupKey {
            pipeline: pipeline.clone(),
            buffers: buffers.iter().map(|&(i, b)| (i, b.clone())).collect(),
            uniform_block: slot / SLOTS_PER_BLOCK,
            uniform_offset: ((slot % SLOTS_PER_BLOCK) * slot_bytes) as u64,
        };
        let mut bind_groups = self.bind_groups.lock().expect("bind group lock");
        let cached = bind_groups.get(&key).cloned();
        let bind_group = if let Some(bind_group) = cached {
            bind_group
        } else {
            let uniform = wgpu::BufferBinding {
                buffer: &blocks[key.uniform_block],
                offset: key.uniform_offset,
                size: std::num::NonZeroU64::new(
                    std::mem::size_of::<P>().next_multiple_of(16) as u64
                ),
            };
            let mut entries: Vec<wgpu::BindGroupEntry> = buffers
                .iter()
                .map(|&(binding, b)| wgpu::BindGroupEntry {
                    binding,
                    resource: b.as_entire_binding(),
                })
                .collect();
            entries.push(wgpu::BindGroupEntry {
                binding: uniform_binding,
                resource: wgpu::BindingResource::Buffer(uniform),
            });
            let bind_group = self.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            self.bind_groups_made.fetch_add(1, Ordering::Relaxed);
            if bind_groups.len() >= MAX_BIND_GROUPS {
                bind_groups.clear();
            }
            bind_groups.insert(key, bind_group.clone());
            bind_group
        };
        drop(bind_groups);
        drop(blocks);
        let timestamp_writes = self
            .gpu
            .profiler
            .as_ref()
            .and_then(|p| p.pass_writes(&self.kernel_name(pipeline)));
        let encoder = self.encoder(&mut frame);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes,
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        self.dispatches.fetch_add(1, Ordering::Relaxed);
    }

    /// The pipeline's label, for the profile.
    fn kernel_name(&self, pipeline: &wgpu::ComputePipeline) -> std::sync::Arc<str> {
        match self.sample_kernels.get() {
            Some(sample) if sample.is(pipeline) => "sample".into(),
            _ => self.gpu.kernels.name(pipeline),
        }
    }

    /// Workgroups for `n` elements at 256 per group, laid out in 2-D under the per-dimension limit.
    fn elementwise_groups(&self, n: usize) -> (u32, u32) {
        let groups = n.div_ceil(256).max(1);
        let width = groups.min(self.gpu.max_groups_per_dim as usize);
        (width as u32, groups.div_ceil(width) as u32)
    }

    fn elementwise(
        &self,
        pipeline: &wgpu::ComputePipeline,
        a: &GpuTensor,
        b: &GpuTensor,
    ) -> Result<GpuTensor> {
        if (a.rows, a.cols) != (b.rows, b.cols) {
            return Err(Error::Backend(format!(
                "shape mismatch {}x{} vs {}x{}",
                a.rows, a.cols, b.rows, b.cols
            )));
        }
        let y = self.tensor(a.rows, a.cols);
        let len = u32_of(a.rows * a.cols, "tensor size")?;
        self.dispatch(
            pipeline,
            &[&a.buffer, &b.buffer, &y.buffer],
            &LenParams { len },
            self.elementwise_groups(a.rows * a.cols),
        );
        Ok(y)
    }

    /// Submits what was recorded; gives the submission's index (none when nothing was recorded).
    fn flush(&self) -> Result<Option<wgpu::SubmissionIndex>> {
        let frame = std::mem::take(&mut *self.frame.lock().expect("frame lock"));
        let mut submitted = None;
        if let Some(mut encoder) = frame.encoder {
            let blocks = self.uniform_blocks.lock().expect("uniform lock");
            let block_bytes = SLOTS_PER_BLOCK * self.gpu.uniform_slot_bytes;
            for (block, params) in blocks.iter().zip(frame.params.chunks(block_bytes)) {
                self.gpu.queue.write_buffer(block, 0, params);
            }
            if let Some(profiler) = &self.gpu.profiler {
                profiler.resolve(&mut encoder);
            }
            submitted = Some(self.gpu.queue.submit([encoder.finish()]));
            self.submissions.fetch_add(1, Ordering::Relaxed);
            if let Some(profiler) = &self.gpu.profiler {
                profiler.collect(&self.gpu.device)?;
            }
        }
        // The next call's allocations start over at the arena's first buffer.
        self.arena.lock().expect("arena lock").next = 0;
        self.gpu.check()?;
        Ok(submitted)
    }

    /// Uploads a matrix or table: whole rows per buffer (split at the binding limit), each buffer
    /// filled in pieces of at most `upload_piece_bytes`, submitted and waited for one at a time so
    /// the host holds one piece, never the tensor.
    fn load_rows(&self, data: TensorData<'_>) -> Result<GpuMatrix> {
        let info = data.info;
        if !SUPPORTED_TYPES.contains(&info.dtype) {
            return Err(Error::Backend(format!(
                "tensor {}: type {:?} is not supported by the WebGPU backend (supported: {:?})",
                info.name, info.dtype, SUPPORTED_TYPES
            )));
        }
        let cols = info.dims[0] as usize;
        let rows = info.dims.get(1).copied().unwrap_or(1) as usize;
        if !cols.is_multiple_of(32) {
            return Err(Error::Backend(format!(
                "tensor {}: rows of {cols} values are not whole 32-value blocks",
                info.name
            )));
        }
        let total = info.n_bytes as usize;
        let row_bytes = total / rows.max(1);
        if row_bytes * rows != total {
            return Err(Error::Backend(format!(
                "tensor {}: {total} bytes are not {rows} equal rows",
                info.name
            )));
        }
        // Whole rows per buffer, each buffer within the binding limit (with room for padding).
        let limit = self.gpu.max_binding_bytes - 4;
        if row_bytes > limit {
            return Err(Error::GpuLimit {
                what: format!("a row of tensor {}", info.name),
                needed: row_bytes as u64,
                limit: limit as u64,
            });
        }
        let max_rows = (limit / row_bytes.max(1)).max(1);
        let piece_limit = self.gpu.upload_piece_bytes.max(4) & !3;
        let mut piece = Vec::new();
        let mut chunks = Vec::new();
        let mut first_row = 0;
        while first_row < rows {
            let n = max_rows.min(rows - first_row);
            let (start, len) = (first_row * row_bytes, n * row_bytes);
            let buffer = self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(&info.name),
                size: len.div_ceil(4).max(1) as u64 * 4,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut done = 0;
            while done < len {
                let take = piece_limit.min(len - done);
                piece.resize(take, 0);
                data.read_range((start + done) as u64, &mut piece)?;
                piece.resize(take.div_ceil(4) * 4, 0); // queue writes are whole words
                self.gpu.queue.write_buffer(&buffer, done as u64, &piece);
                self.gpu.queue.submit([]);
                self.gpu.wait_idle()?;
                done += take;
            }
            chunks.push(Chunk {
                buffer,
                first_row,
                rows: n,
            });
            first_row += n;
        }
        Ok(GpuMatrix {
            ty: info.dtype,
            rows,
            cols,
            row_bytes,
            chunks,
        })
    }
}

impl WebGpuBackend {
    /// `x · Wᵀ`, with `epilogue` applied as each output is written.
    fn matmul_into(
        &self,
        x: &GpuTensor,
        w: &GpuMatrix,
        epilogue: Epilogue<'_>,
    ) -> Result<GpuTensor> {
        if x.cols != w.cols {
            return Err(Error::Backend(format!(
                "matmul: input has {} features, the matrix {}",
                x.cols, w.cols
            )));
        }
        let (code, operand) = match epilogue {
            Epilogue::None => (0, None),
            Epilogue::Add(r) => (1, Some(r)),
            Epilogue::Swiglu(r) => (2, Some(r)),
        };
        if let Some(r) = operand {
            if (r.rows, r.cols) != (x.rows, w.rows) {
                return Err(Error::Backend(format!(
                    "matmul: the epilogue's operand is {}x{}, the product {}x{}",
                    r.rows, r.cols, x.rows, w.rows
                )));
            }
        }
        let y = self.tensor(x.rows, w.rows);
        let r = operand.map_or(&self.no_residual, |r| &r.buffer);
        let gemm = x.rows > 1 && self.gpu.gemm_prefill(w.ty);
        // The decode kernel reads x at binding 1, or quantized at binding 5 (see `quantized`).
        let input = if !gemm && self.gpu.q8_decode(w.ty) {
            (5, self.quantized(x)?)
        } else {
            (1, x.buffer.clone())
        };
        // Prefill: a tile of rows and tokens per workgroup, each weight block decoded once for
        // all of its tokens (on CPU implementations not for every type: see `gemm_prefill`).
        let (pipeline, rows_per_group, tokens_per_group) = if gemm {
            (self.gpu.kernels.matmul_tiled(w.ty), GEMM_ROWS, GEMM_TOKENS)
        } else {
            (
                self.gpu.kernels.matmul(w.ty),
                self.gpu.matmul_rows_per_group,
                1,
            )
        };
        for chunk in &w.chunks {
            let params = MatmulParams {
                k: u32_of(w.cols, "row length")?,
                n_rows: u32_of(chunk.rows, "rows")?,
                row_bytes: u32_of(w.row_bytes, "row size")?,
                out_cols: u32_of(w.rows, "output width")?,
                out_offset: u32_of(chunk.first_row, "row")?,
                tokens: u32_of(x.rows, "tokens")?,
                epilogue: code,
            };
            // Row groups beyond the per-dimension limit (a large vocabulary at many threads per
            // row) continue in z; the kernel numbers them x + z · (groups in x).
            let row_groups = chunk.rows.div_ceil(rows_per_group);
            let max = self.gpu.max_groups_per_dim as usize;
            let groups = (
                u32_of(row_groups.min(max), "row groups")?,
                u32_of(x.rows.div_ceil(tokens_per_group), "token groups")?,
                u32_of(row_groups.div_ceil(max), "row groups")?,
            );
            self.dispatch_bound(
                pipeline,
                &[
                    (0, &chunk.buffer),
                    (input.0, &input.1),
                    (2, &y.buffer),
                    (4, r),
                ],
                3,
                &params,
                groups,
            );
        }
        Ok(y)
    }

    /// `x` in 32-value blocks of signed bytes with a scale each (kernels/quantize.wgsl), for the
    /// q8 decode kernels: made once per tensor, on the first matmul that asks.
    fn quantized(&self, x: &GpuTensor) -> Result<Arc<wgpu::Buffer>> {
        if let Some(xq) = x.quantized.get() {
            return Ok(xq.clone());
        }
        let Some(quantize) = &self.gpu.kernels.quantize else {
            return Err(Error::Backend(
                "quantized activations: the kernel variant does not have them".into(),
            ));
        };
        if !x.cols.is_multiple_of(32) {
            return Err(Error::Backend(format!(
                "quantized activations: rows of {} values are not whole 32-value blocks",
                x.cols
            )));
        }
        let blocks = x.rows * x.cols / 32;
        // Three 16-byte quads per block: its 32 bytes, then its scale and sum.
        let xq = self.storage(blocks * 12);
        let params = LenParams {
            len: u32_of(blocks, "blocks")?,
        };
        let groups = blocks.div_ceil(64);
        let max = self.gpu.max_groups_per_dim as usize;
        let groups = (
            u32_of(groups.min(max), "groups")?,
            u32_of(groups.div_ceil(max), "groups")?,
        );
        self.dispatch(quantize, &[&x.buffer, &xq], &params, groups);
        Ok(x.quantized.get_or_init(|| xq).clone())
    }

    /// Rows of `table` for the `n` token ids in `ids` (on the GPU).
    fn embed_ids(&self, table: &GpuMatrix, ids: &wgpu::Buffer, n: usize) -> Result<GpuTensor> {
        let y = self.tensor(n, table.cols);
        let pipeline = self.gpu.kernels.embed(table.ty);
        for chunk in &table.chunks {
            let params = EmbedParams {
                cols: u32_of(table.cols, "embedding width")?,
                row_bytes: u32_of(table.row_bytes, "row size")?,
                first_row: u32_of(chunk.first_row, "row")?,
                n_rows: u32_of(chunk.rows, "rows")?,
                tokens: u32_of(n, "tokens")?,
            };
            let groups = (table.cols.div_ceil(64) as u32, n as u32);
            self.dispatch(pipeline, &[&chunk.buffer, ids, &y.buffer], &params, groups);
        }
        Ok(y)
    }
}

impl Backend for WebGpuBackend {
    type Tensor = GpuTensor;
    type Matrix = GpuMatrix;
    type Vector = GpuVector;
    type Embedding = GpuMatrix;
    type KvCache = GpuKvCache;
    type Positions = GpuPositions;

    const QUEUES_WORK: bool = true;

    fn name(&self) -> &'static str {
        "webgpu"
    }

    fn describe(&self) -> String {
        let a = &self.gpu.summary;
        format!(
            "webgpu on {} ({}, {}; shader-f16 {}, subgroups {}, storage binding {} MiB; \
             kernels {}, {} thread(s) per row)",
            if a.name.is_empty() {
                "an unnamed adapter"
            } else {
                &a.name
            },
            a.backend,
            a.driver.trim(),
            if a.shader_f16 { "yes" } else { "no" },
            if a.subgroups { "yes" } else { "no" },
            a.max_storage_binding >> 20,
            a.kernel_variant,
            a.matmul_threads_per_row,
        )
    }

    fn work_counts(&self) -> WorkCounts {
        WorkCounts {
            dispatches: self.dispatches.load(Ordering::Relaxed),
            submissions: self.submissions.load(Ordering::Relaxed),
            bind_groups_made: self.bind_groups_made.load(Ordering::Relaxed),
            kernel_time: self
                .gpu
                .profiler
                .as_ref()
                .map(|p| p.totals())
                .unwrap_or_default(),
        }
    }

    fn load_matrix(&self, data: TensorData<'_>) -> Result<GpuMatrix> {
        self.load_rows(data)
    }

    fn load_vector(&self, info: &TensorInfo, bytes: &[u8]) -> Result<GpuVector> {
        let values = super::cpu::dequantize(info, bytes)?;
        Ok(GpuVector {
            buffer: self.upload(bytemuck::cast_slice(&values), wgpu::BufferUsages::STORAGE),
        })
    }

    fn load_embedding(&self, data: TensorData<'_>) -> Result<GpuMatrix> {
        self.load_rows(data)
    }

    fn embed(&self, table: &GpuMatrix, tokens: &[u32]) -> Result<GpuTensor> {
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= table.rows) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: table.rows,
            });
        }
        let ids = self.storage_with(bytemuck::cast_slice(tokens));
        self.embed_ids(table, &ids, tokens.len())
    }

    fn embed_sampled(&self, table: &GpuMatrix, token: &GpuTensor) -> Result<Option<GpuTensor>> {
        // `sample` wrote an id below the logits' width, which is the table's row count.
        self.embed_ids(table, &token.buffer, 1).map(Some)
    }

    fn rms_norm(&self, x: &GpuTensor, scale: &GpuVector, eps: f32) -> Result<GpuTensor> {
        let y = self.tensor(x.rows, x.cols);
        let params = NormParams {
            cols: u32_of(x.cols, "row length")?,
            eps,
        };
        self.dispatch(
            &self.gpu.kernels.rms_norm,
            &[&x.buffer, &scale.buffer, &y.buffer],
            &params,
            (x.rows as u32, 1),
        );
        Ok(y)
    }

    fn matmul(&self, x: &GpuTensor, w: &GpuMatrix) -> Result<GpuTensor> {
        self.matmul_into(x, w, Epilogue::None)
    }

    fn matmul_add(&self, x: &GpuTensor, w: &GpuMatrix, residual: &GpuTensor) -> Result<GpuTensor> {
        self.matmul_into(x, w, Epilogue::Add(residual))
    }

    fn swiglu_matmul(&self, x: &GpuTensor, gate: &GpuMatrix, up: &GpuMatrix) -> Result<GpuTensor> {
        let up = self.matmul(x, up)?;
        self.matmul_into(x, gate, Epilogue::Swiglu(&up))
    }

    fn positions(
        &self,
        p: &AttentionParams,
        rows: usize,
        inv_freq: &[f32],
    ) -> Result<GpuPositions> {
        let mut table = Vec::with_capacity(rows * inv_freq.len() * 2);
        for t in 0..rows {
            let pos = (p.start_pos + t) as f32;
            for &f in inv_freq {
                let angle = pos * f;
                table.push(angle.cos());
                table.push(angle.sin());
            }
        }
        Ok(GpuPositions {
            table: self.storage_with(bytemuck::cast_slice(&table)),
            rows,
        })
    }

    fn rope(&self, x: &GpuTensor, n_heads: usize, positions: &GpuPositions) -> Result<GpuTensor> {
        let head_dim = x.cols / n_heads;
        let y = self.tensor(x.rows, x.cols);
        let params = RopeParams {
            heads: u32_of(n_heads, "heads")?,
            head_dim: u32_of(head_dim, "head dim")?,
            rows: u32_of(positions.rows, "rows")?,
        };
        let groups = ((n_heads * head_dim / 2).div_ceil(64) as u32, x.rows as u32);
        self.dispatch(
            &self.gpu.kernels.rope,
            &[&x.buffer, &positions.table, &y.buffer],
            &params,
            groups,
        );
        Ok(y)
    }

    fn swiglu(&self, gate: &GpuTensor, up: &GpuTensor) -> Result<GpuTensor> {
        self.elementwise(&self.gpu.kernels.swiglu, gate, up)
    }

    fn add(&self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        self.elementwise(&self.gpu.kernels.add, a, b)
    }

    fn last_row(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let y = self.tensor(1, x.cols);
        let offset = ((x.rows - 1) * x.cols * 4) as u64;
        self.record(|encoder| {
            encoder.copy_buffer_to_buffer(&x.buffer, offset, &y.buffer, 0, (x.cols * 4) as u64)
        });
        Ok(y)
    }

    /// Submits everything recorded with a copy of `x` at the end, and requests its map.
    fn read(&self, x: &GpuTensor) -> Result<Readback> {
        let size = (x.rows * x.cols * 4) as u64;
        let staging = self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: size.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.record(|encoder| {
            encoder.copy_buffer_to_buffer(&x.buffer, 0, &staging, 0, size.max(4))
        });
        let submission = self.flush()?;
        Ok(Readback::Gpu(GpuReadback::start(
            self.gpu.clone(),
            staging,
            size as usize,
            submission,
        )))
    }

    fn sample(&self, logits: &GpuTensor, request: &DeviceSampling) -> Result<Option<GpuTensor>> {
        self.sample_on_gpu(logits, request).map(Some)
    }

    fn new_kv_cache(
        &self,
        head_count_kv: usize,
        head_dim: usize,
        max_len: usize,
    ) -> Result<GpuKvCache> {
        let width = head_count_kv * head_dim;
        // Each of K and V is one buffer: the context the adapter can hold may be shorter than the
        // model's (then longer conversations get a ContextLength error, as on a smaller model).
        let fits = self.gpu.max_binding_bytes / (width * 4).max(1);
        if fits == 0 {
            return Err(Error::GpuLimit {
                what: "one position of the KV cache".into(),
                needed: (width * 4) as u64,
                limit: self.gpu.max_binding_bytes as u64,
            });
        }
        let max_len = max_len.min(fits);
        let capacity = max_len.min(256);
        let buffer = |cap: usize| self.persistent_storage(cap * width);
        Ok(GpuKvCache {
            k: buffer(capacity),
            v: buffer(capacity),
            len: 0,
            capacity,
            max_len,
            width,
        })
    }

    fn kv_cache_len(&self, cache: &GpuKvCache) -> usize {
        cache.len
    }

    fn truncate_kv_cache(&self, cache: &mut GpuKvCache, len: usize) {
        cache.len = cache.len.min(len);
    }

    fn attention(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        cache: &mut GpuKvCache,
        params: &AttentionParams,
        _positions: &GpuPositions,
    ) -> Result<GpuTensor> {
        let rows = q.rows;
        let needed = params.start_pos + rows;
        if needed > cache.max_len {
            return Err(Error::ContextLength {
                needed,
                limit: cache.max_len,
            });
        }
        if needed > cache.capacity {
            // Grow by doubling; the positions held so far move to the new buffers.
            let capacity = needed.next_power_of_two().min(cache.max_len);
            let k_new = self.persistent_storage(capacity * cache.width);
            let v_new = self.persistent_storage(capacity * cache.width);
            let held = (cache.len * cache.width * 4) as u64;
            if held > 0 {
                self.record(|encoder| {
                    encoder.copy_buffer_to_buffer(&cache.k, 0, &k_new, 0, held);
                    encoder.copy_buffer_to_buffer(&cache.v, 0, &v_new, 0, held);
                });
            }
            // Bind groups of the old buffers would keep them alive.
            self.forget_bind_groups_of(&cache.k);
            self.forget_bind_groups_of(&cache.v);
            cache.k = k_new;
            cache.v = v_new;
            cache.capacity = capacity;
        }
        let offset = (params.start_pos * cache.width * 4) as u64;
        let size = (rows * cache.width * 4) as u64;
        self.record(|encoder| {
            encoder.copy_buffer_to_buffer(&k.buffer, 0, &cache.k, offset, size);
            encoder.copy_buffer_to_buffer(&v.buffer, 0, &cache.v, offset, size);
        });
        cache.len = needed;
        let y = self.tensor(rows, params.head_count * params.head_dim);
        check_head_dim(params.head_dim)?;
        let first_key = params
            .sliding_window
            .map_or(0, |w| (params.start_pos + 1).saturating_sub(w));
        let visible = params.start_pos + 1 - first_key;
        let splits = if rows == 1 && visible > KEYS_PER_SPLIT {
            visible.div_ceil(KEYS_PER_SPLIT)
        } else {
            1
        };
        let kernel_params = AttentionKernelParams {
            heads: u32_of(params.head_count, "heads")?,
            kv_heads: u32_of(params.head_count_kv, "kv heads")?,
            head_dim: u32_of(params.head_dim, "head dim")?,
            rows: u32_of(rows, "rows")?,
            start_pos: u32_of(params.start_pos, "position")?,
            window: u32_of(params.sliding_window.unwrap_or(0), "window")?,
            scale: 1.0 / (params.head_dim as f32).sqrt(),
            keys_per_split: KEYS_PER_SPLIT as u32,
            splits: u32_of(splits, "splits")?,
        };
        if splits == 1 {
            self.dispatch(
                &self.gpu.kernels.attention,
                &[&q.buffer, &cache.k, &cache.v, &y.buffer],
                &kernel_params,
                (kernel_params.heads, kernel_params.rows),
            );
        } else {
            // Each (head, key range) in parallel, then one merge per head.
            // Room for the next power of two of ranges: the buffer (and the bind groups holding
            // it) changes at 2, 4, 8 … ranges, not at every new range.
            let partials = self
                .storage(params.head_count * splits.next_power_of_two() * (params.head_dim + 2));
            self.dispatch_bound(
                &self.gpu.kernels.attention_split_partial,
                &[(0, &q.buffer), (1, &cache.k), (2, &cache.v), (5, &partials)],
                4,
                &kernel_params,
                (kernel_params.heads, kernel_params.splits, 1),
            );
            self.dispatch_bound(
                &self.gpu.kernels.attention_split_combine,
                &[(3, &y.buffer), (5, &partials)],
                4,
                &kernel_params,
                (kernel_params.heads, 1, 1),
            );
        }
        Ok(y)
    }
}
