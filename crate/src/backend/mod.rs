//! The small interface the model is written against. A backend owns how tensors are stored and
//! computed (candle on the CPU; wgpu with our WGSL kernels next); the forward pass in
//! `model::llama` is the same for all of them.

pub mod cpu;
#[cfg(feature = "webgpu")]
pub mod webgpu;

use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgufFile, TensorData, TensorInfo};
use crate::model::LanguageModel;
use crate::sampling::DeviceSampling;

/// Which backend runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// candle-core's quantized kernels and ours, on the CPU (SIMD; wasm simd128 in the browser).
    #[default]
    Cpu,
    /// wgpu with our WGSL kernels: Vulkan/Metal/DX12 natively, WebGPU in the browser.
    WebGpu,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "webgpu" | "gpu" => Ok(BackendKind::WebGpu),
            other => Err(Error::Backend(format!(
                "unknown backend {other:?}: use cpu or webgpu"
            ))),
        }
    }
}

/// Loads a model's weights onto the chosen backend.
pub fn load_model(
    kind: BackendKind,
    file: &GgufFile,
    source: &dyn ByteSource,
) -> Result<Box<dyn LanguageModel>> {
    match kind {
        BackendKind::Cpu => cpu::load_model(file, source),
        #[cfg(all(feature = "webgpu", not(target_arch = "wasm32")))]
        BackendKind::WebGpu => webgpu::load_model(file, source),
        // Opening a device in a browser is async: `webgpu::WebGpuBackend::new_async`.
        #[cfg(all(feature = "webgpu", target_arch = "wasm32"))]
        BackendKind::WebGpu => Err(Error::Backend(
            "in a browser the WebGPU backend opens asynchronously (WebGpuBackend::new_async)"
                .into(),
        )),
        #[cfg(not(feature = "webgpu"))]
        BackendKind::WebGpu => Err(Error::Backend(
            "this build has no WebGPU backend (feature `webgpu`)".into(),
        )),
    }
}

/// The words a forward call produced (f32 values, or a token id's bits): already on the host
/// (CPU), or on their way from a device.
pub enum Readback {
    Host(Vec<f32>),
    #[cfg(feature = "webgpu")]
    Gpu(webgpu::GpuReadback),
}

impl Readback {
    /// Blocks until the words are on the host. Not possible in a browser, where the copy finishes
    /// only when control returns to the event loop: use [`words_async`](Self::words_async) there.
    pub fn words(self) -> Result<Vec<f32>> {
        match self {
            Readback::Host(words) => Ok(words),
            #[cfg(feature = "webgpu")]
            Readback::Gpu(read) => Ok(f32_values(&read.wait()?)),
        }
    }

    pub async fn words_async(self) -> Result<Vec<f32>> {
        match self {
            Readback::Host(words) => Ok(words),
            #[cfg(feature = "webgpu")]
            Readback::Gpu(read) => Ok(f32_values(&read.wait_async().await?)),
        }
    }
}

/// GPU work recorded since the backend opened, for reports (dispatches and submissions per token).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkCounts {
    /// Compute dispatches.
    pub dispatches: u64,
    /// Command-buffer submissions of forward work (uploads at load are not counted).
    pub submissions: u64,
    /// Bind groups created (dispatches reuse them while shapes stay the same).
    pub bind_groups_made: u64,
    /// GPU time per kernel (pipeline label), when the backend was opened to profile
    /// (`EDGECHAT_GPU_PROFILE=1`); empty otherwise.
    pub kernel_time: std::collections::BTreeMap<String, KernelTime>,
}

/// Dispatches of one kernel and the GPU time they took (timestamp queries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelTime {
    pub calls: u64,
    pub nanos: u64,
}

/// Little-endian f32 values from bytes (readbacks are whole words).
pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

/// Attention shape and position parameters for one layer call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionParams {
    pub head_count: usize,
    pub head_count_kv: usize,
    pub head_dim: usize,
    /// Position of the first token of this call in the sequence.
    pub start_pos: usize,
    /// Keys further back than this are masked out (sliding-window attention).
    pub sliding_window: Option<usize>,
}

pub trait Backend: Send + Sized {
    /// Activations: `rows` tokens × `cols` features, row-major.
    type Tensor: Send;
    /// A weight matrix `rows × cols` used as `x · Wᵀ`, kept in its GGUF encoding where possible.
    type Matrix: Send;
    /// A weight vector (norm scales).
    type Vector: Send;
    /// An embedding table, looked up row by row.
    type Embedding: Send;
    /// One layer's keys and values.
    type KvCache: Send;
    /// What every layer of one forward call shares: the rotary tables and the attention mask for
    /// its positions, computed once per call instead of once per layer.
    type Positions;

    fn name(&self) -> &'static str;

    /// Whether a forward call returns once its work is queued (a GPU), not done. Only then is a
    /// call started on a token [`sample`](Self::sample) chose, before the host reads it, worth
    /// making: the device runs it while the host handles the token. A backend that computes in
    /// the call itself (the CPU) would deliver every token one step late that way.
    const QUEUES_WORK: bool = false;

    /// What it runs on, for reports.
    fn describe(&self) -> String {
        self.name().to_string()
    }

    /// Runs one forward call. The CPU backend runs it on a worker of its thread pool, so the
    /// hundreds of parallel kernels of a decode step fork and join there instead of handing each
    /// one over from an outside thread (a sleep and a wake-up every time).
    fn run_forward<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// Work done so far (zero on backends that do not record GPU work).
    fn work_counts(&self) -> WorkCounts {
        WorkCounts::default()
    }

    fn load_matrix(&self, data: TensorData<'_>) -> Result<Self::Matrix>;
    /// The output projection: the model multiplies it by the last position only, one row per
    /// decode step (all rows only when asked for every position's logits).
    fn load_head(&self, data: TensorData<'_>) -> Result<Self::Matrix> {
        self.load_matrix(data)
    }
    fn load_vector(&self, info: &TensorInfo, bytes: &[u8]) -> Result<Self::Vector>;
    fn load_embedding(&self, data: TensorData<'_>) -> Result<Self::Embedding>;

    /// Rows of the table for `tokens`.
    fn embed(&self, table: &Self::Embedding, tokens: &[u32]) -> Result<Self::Tensor>;
    /// The row for a token [`sample`](Self::sample) chose, without reading it back: the next
    /// forward call starts while the host still waits for the id. `None` where the backend
    /// never samples.
    fn embed_sampled(
        &self,
        _table: &Self::Embedding,
        _token: &Self::Tensor,
    ) -> Result<Option<Self::Tensor>> {
        Ok(None)
    }
    fn rms_norm(&self, x: &Self::Tensor, scale: &Self::Vector, eps: f32) -> Result<Self::Tensor>;
    /// `x · Wᵀ`.
    fn matmul(&self, x: &Self::Tensor, w: &Self::Matrix) -> Result<Self::Tensor>;
    /// `residual + x · Wᵀ`: the attention output and FFN down projections feed the residual
    /// stream, which a backend may add as it writes the product.
    fn matmul_add(
        &self,
        x: &Self::Tensor,
        w: &Self::Matrix,
        residual: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        self.add(residual, &self.matmul(x, w)?)
    }
    /// `silu(x · gateᵀ) * (x · upᵀ)`: the FFN's two input projections and SwiGLU, which a
    /// backend may fuse (the CPU runs both products in one pass, the GPU applies SwiGLU as it
    /// writes the gate product).
    fn swiglu_matmul(
        &self,
        x: &Self::Tensor,
        gate: &Self::Matrix,
        up: &Self::Matrix,
    ) -> Result<Self::Tensor> {
        let mut products = self.matmul_many(x, &[gate, up])?;
        match (products.pop(), products.pop()) {
            (Some(up), Some(gate)) => self.swiglu(&gate, &up),
            _ => Err(Error::Backend(
                "matmul_many returned the wrong number of products".into(),
            )),
        }
    }
    /// `x · Wᵢᵀ` for each matrix of a group that reads the same input (Q, K, V; gate, up), which a
    /// backend may run as one pass.
    fn matmul_many(&self, x: &Self::Tensor, ws: &[&Self::Matrix]) -> Result<Vec<Self::Tensor>> {
        ws.iter().map(|w| self.matmul(x, w)).collect()
    }
    /// Tables for `rows` tokens at `params.start_pos..`; `inv_freq` has `head_dim / 2` entries.
    fn positions(
        &self,
        params: &AttentionParams,
        rows: usize,
        inv_freq: &[f32],
    ) -> Result<Self::Positions>;
    /// Rotary embedding on interleaved pairs `(x[2i], x[2i+1])` of each head (GGUF `llama` layout).
    fn rope(
        &self,
        x: &Self::Tensor,
        n_heads: usize,
        positions: &Self::Positions,
    ) -> Result<Self::Tensor>;
    /// `silu(gate) * up`.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// The last row of `x` (only the last token's logits are needed in generation).
    fn last_row(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Starts copying `x` to the host; everything recorded so far is submitted.
    fn read(&self, x: &Self::Tensor) -> Result<Readback>;
    /// `x` on the host, waiting for it.
    fn to_vec(&self, x: &Self::Tensor) -> Result<Vec<f32>> {
        self.read(x)?.words()
    }
    /// Chooses the next token from `logits` (one row) on the device: a 1×1 tensor holding the
    /// token id's bits (`f32::to_bits`). `None` when the host is to choose (the CPU backend
    /// chooses only greedily).
    fn sample(
        &self,
        _logits: &Self::Tensor,
        _request: &DeviceSampling,
    ) -> Result<Option<Self::Tensor>> {
        Ok(None)
    }

    fn new_kv_cache(
        &self,
        head_count_kv: usize,
        head_dim: usize,
        max_len: usize,
    ) -> Result<Self::KvCache>;
    fn kv_cache_len(&self, cache: &Self::KvCache) -> usize;
    fn truncate_kv_cache(&self, cache: &mut Self::KvCache, len: usize);
    /// Appends `k`, `v` (already rotated) at `params.start_pos` and returns causal attention of `q`
    /// over the whole cache: `rows × head_count·head_dim`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        cache: &mut Self::KvCache,
        params: &AttentionParams,
        positions: &Self::Positions,
    ) -> Result<Self::Tensor>;
}
