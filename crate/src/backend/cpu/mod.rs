//! CPU backend on candle-core: weights stay in their GGUF quantization and are multiplied with
//! candle's quantized kernels (AVX2 / AVX-512-VNNI natively, simd128 in wasm), except where ours
//! are faster (`rows.rs`: Q4_1 everywhere, Q8_0 in wasm; `tiles.rs`: Q4_K and Q6_K with
//! AVX-512 VNNI or AVX2).

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};

mod attention;
mod parallel;
mod rows;
#[cfg(test)]
mod test_blocks;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
mod tiles;

pub use attention::CpuKvCache;
use rows::{RowFormat, RowMatrix};

use super::{AttentionParams, Backend, Readback};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgmlType, GgufFile, TensorData, TensorInfo};
use crate::model::{LanguageModel, Llama};
use crate::sampling::DeviceSampling;

/// Loads a `llama` GGUF onto the CPU backend.
pub fn load_model(file: &GgufFile, source: &dyn ByteSource) -> Result<Box<dyn LanguageModel>> {
    Ok(Box::new(Llama::load(CpuBackend::new(), file, source)?))
}

#[derive(Debug, Clone)]
pub struct CpuBackend {
    device: Device,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self {
            device: Device::Cpu,
        }
    }

    fn qtensor(&self, info: &TensorInfo, bytes: &[u8]) -> Result<QTensor> {
        Ok(qtensor_from_ggml(
            candle_dtype(info.dtype),
            bytes,
            info.shape(),
            &self.device,
        )?)
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// A tensor's values as f32 (norm scales for the GPU backend).
#[cfg(feature = "webgpu")]
pub(crate) fn dequantize(info: &TensorInfo, bytes: &[u8]) -> Result<Vec<f32>> {
    let q = qtensor_from_ggml(candle_dtype(info.dtype), bytes, info.shape(), &Device::Cpu)?;
    Ok(q.dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

pub(crate) fn candle_dtype(t: GgmlType) -> GgmlDType {
    match t {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
    }
}

/// A weight matrix: through candle's kernels or through ours.
pub enum CpuMatrix {
    Candle(QMatMul),
    Rows(RowMatrix),
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    Tiles(tiles::TiledMatrix),
}

/// Repacks a K-quant matrix into our tiles (`tiles.rs`) where they are built and the shape
/// tiles (rows a multiple of 16, columns of 256); `None` leaves it to the other kernels.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
fn tiled(info: &TensorInfo, bytes: &[u8]) -> Option<Result<CpuMatrix>> {
    let format = match info.dtype {
        GgmlType::Q4K => tiles::TileFormat::Q4K,
        GgmlType::Q6K => tiles::TileFormat::Q6K,
        _ => return None,
    };
    let [cols, rows] = info.dims[..] else {
        return None;
    };
    let (rows, cols) = (rows as usize, cols as usize);
    if !tiles::TiledMatrix::fits(rows, cols) {
        return None;
    }
    Some(tiles::TiledMatrix::from_gguf(format, bytes, rows, cols).map(CpuMatrix::Tiles))
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
)))]
fn tiled(_info: &TensorInfo, _bytes: &[u8]) -> Option<Result<CpuMatrix>> {
    None
}

/// The formats our kernels multiply (see `rows.rs`).
fn own_row_format(dtype: GgmlType) -> Option<RowFormat> {
    match dtype {
        GgmlType::Q4_1 => Some(RowFormat::Q4_1),
        GgmlType::Q8_0 if cfg!(target_arch = "wasm32") => Some(RowFormat::Q8_0),
        _ => None,
    }
}

/// Rotary tables for the positions of one forward call, each `[rows, head_dim / 2]`.
pub struct CpuPositions {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Q4_1 prompts (and a Q6_K head asked for every position's logits) of at least this many
/// tokens go through f32 tiles of dequantized weights: a blocked f32 GEMM beats one quantized dot
/// product per (token, row) pair once a tile is reused enough (2.6x on SmolLM2 at 256 tokens).
/// K-quant layers and Q8_0 keep quantized kernels (natively our AVX-512 tiles or candle's
/// repacked kernels, which beat this path; Q8_0 in wasm ours, the same algorithm).
const DEQUANTIZED_PREFILL_MIN_TOKENS: usize = 32;
/// Weight rows dequantized at a time (bounded scratch: 512 × 14336 f32 is 29 MB).
const PREFILL_TILE_ROWS: usize = 512;

impl CpuBackend {
    fn dequantized_tiles_matmul(
        &self,
        x: &Tensor,
        dtype: GgmlDType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Tensor> {
        let row_bytes = bytes.len() / rows;
        let x = x.contiguous()?;
        let mut parts = Vec::with_capacity(rows.div_ceil(PREFILL_TILE_ROWS));
        for start in (0..rows).step_by(PREFILL_TILE_ROWS) {
            let n = PREFILL_TILE_ROWS.min(rows - start);
            let tile = &bytes[start * row_bytes..(start + n) * row_bytes];
            let tile = qtensor_from_ggml(dtype, tile, vec![n, cols], &self.device)?
                .dequantize(&self.device)?;
            parts.push(x.matmul(&tile.t()?)?);
        }
        Ok(Tensor::cat(&parts, 1)?)
    }
}

impl Backend for CpuBackend {
    type Tensor = Tensor;
    type Matrix = CpuMatrix;
    type Vector = Tensor;
    type Embedding = QTensor;
    type KvCache = CpuKvCache;
    type Positions = CpuPositions;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run_forward<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        // On a rayon worker, candle's rayon-parallel ops (the f32 GEMM of long prompts) fork and
        // join there instead of being handed over from an outside thread. wasm has no threads.
        #[cfg(not(target_arch = "wasm32"))]
        return rayon::scope(|_| f());
        #[cfg(target_arch = "wasm32")]
        f()
    }

    fn load_matrix(&self, data: TensorData<'_>) -> Result<CpuMatrix> {
        let (info, bytes) = (data.info, data.read_all()?);
        if let Some(matrix) = tiled(info, &bytes) {
            return matrix;
        }
        if let (Some(format), 2) = (own_row_format(info.dtype), info.dims.len()) {
            let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
            return Ok(CpuMatrix::Rows(RowMatrix::new(format, bytes, rows, cols)?));
        }
        Ok(CpuMatrix::Candle(QMatMul::from_qtensor(
            self.qtensor(info, &bytes)?,
        )?))
    }

    /// A Q6_K head (Mistral-shaped files) goes through our kernels: the tiles (as the layers),
    /// else, for a shape they cannot take, the AVX2 rows, two at a time: one row per decode step
    /// is what it serves, where candle's kernel, repacked for prompts, takes one weight row at a
    /// time. Without AVX2, candle's.
    fn load_head(&self, data: TensorData<'_>) -> Result<CpuMatrix> {
        let avx2 = cfg!(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ));
        if avx2 && data.info.dtype == GgmlType::Q6K && data.info.dims.len() == 2 {
            let (cols, rows) = (data.info.dims[0] as usize, data.info.dims[1] as usize);
            let bytes = data.read_all()?;
            if let Some(matrix) = tiled(data.info, &bytes) {
                return matrix;
            }
            return Ok(CpuMatrix::Rows(RowMatrix::new(
                RowFormat::Q6K,
                bytes,
                rows,
                cols,
            )?));
        }
        self.load_matrix(data)
    }

    fn load_vector(&self, info: &TensorInfo, bytes: &[u8]) -> Result<Tensor> {
        Ok(self.qtensor(info, bytes)?.dequantize(&self.device)?)
    }

    fn load_embedding(&self, data: TensorData<'_>) -> Result<QTensor> {
        self.qtensor(data.info, &data.read_all()?)
    }

    fn embed(&self, table: &QTensor, tokens: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(tokens, &self.device)?;
        Ok(table.embedding(&ids)?)
    }

    fn rms_norm(&self, x: &Tensor, scale: &Tensor, eps: f32) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, scale, eps)?)
    }

    fn matmul(&self, x: &Tensor, w: &CpuMatrix) -> Result<Tensor> {
        match w {
            CpuMatrix::Candle(w) => Ok(x.apply(w)?),
            #[cfg(all(
                target_arch = "x86_64",
                target_feature = "avx2",
                target_feature = "fma",
                target_feature = "f16c"
            ))]
            CpuMatrix::Tiles(w) => {
                let rows = x.dims()[0];
                let input = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let out = w.matmul(&input, rows);
                Ok(Tensor::from_vec(out, (rows, w.rows()), &self.device)?)
            }
            CpuMatrix::Rows(w) => {
                let rows = x.dims()[0];
                let tiled = match w.format() {
                    RowFormat::Q4_1 => Some(GgmlDType::Q4_1),
                    RowFormat::Q6K => Some(GgmlDType::Q6K),
                    RowFormat::Q8_0 => None,
                };
                if let Some(dtype) = tiled.filter(|_| rows >= DEQUANTIZED_PREFILL_MIN_TOKENS) {
                    return self.dequantized_tiles_matmul(x, dtype, w.bytes(), w.rows(), w.cols());
                }
                let input = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let out = w.matmul(&input, rows);
                Ok(Tensor::from_vec(out, (rows, w.rows()), &self.device)?)
            }
        }
    }

    fn positions(
        &self,
        p: &AttentionParams,
        rows: usize,
        inv_freq: &[f32],
    ) -> Result<CpuPositions> {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(rows * half);
        let mut sin = Vec::with_capacity(rows * half);
        for t in 0..rows {
            let pos = (p.start_pos + t) as f32;
            for &f in inv_freq {
                let angle = pos * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(CpuPositions { cos, sin })
    }

    fn rope(&self, x: &Tensor, n_heads: usize, positions: &CpuPositions) -> Result<Tensor> {
        let (rows, width) = x.dims2()?;
        let head_dim = width.checked_div(n_heads).unwrap_or(0);
        if head_dim == 0
            || !head_dim.is_multiple_of(2)
            || head_dim * n_heads != width
            || positions.cos.len() != rows * head_dim / 2
        {
            return Err(Error::Backend(format!(
                "rope: {rows}x{width} values as {n_heads} heads do not match {} rotary pairs",
                positions.cos.len()
            )));
        }
        let mut values = x.flatten_all()?.to_vec1::<f32>()?;
        attention::rope_in_place(&mut values, width, head_dim, &positions.cos, &positions.sin);
        Ok(Tensor::from_vec(values, (rows, width), &self.device)?)
    }

    fn matmul_many(&self, x: &Tensor, ws: &[&CpuMatrix]) -> Result<Vec<Tensor>> {
        let tokens = x.dims()[0];
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))]
        {
            let group: Option<Vec<&tiles::TiledMatrix>> = ws
                .iter()
                .map(|w| match w {
                    CpuMatrix::Tiles(m) => Some(m),
                    _ => None,
                })
                .collect();
            if let Some(group) = group.filter(|g| g.iter().all(|w| w.cols() == g[0].cols())) {
                let input = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                return tiles::matmul_many(&group, &input, tokens)
                    .into_iter()
                    .zip(&group)
                    .map(|(out, w)| Ok(Tensor::from_vec(out, (tokens, w.rows()), &self.device)?))
                    .collect();
            }
        }
        let own: Option<Vec<&RowMatrix>> = ws
            .iter()
            .map(|w| {
                if let CpuMatrix::Rows(m) = w {
                    Some(m)
                } else {
                    None
                }
            })
            .collect();
        match own {
            Some(group)
                if tokens < DEQUANTIZED_PREFILL_MIN_TOKENS
                    && group.iter().all(|w| w.cols() == group[0].cols()) =>
            {
                let input = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                rows::matmul_many(&group, &input, tokens)
                    .into_iter()
                    .zip(&group)
                    .map(|(out, w)| Ok(Tensor::from_vec(out, (tokens, w.rows()), &self.device)?))
                    .collect()
            }
            _ => ws.iter().map(|w| self.matmul(x, w)).collect(),
        }
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        Ok((candle_nn::ops::silu(gate)? * up)?)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a + b)?)
    }

    fn last_row(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dims()[0];
        Ok(x.narrow(0, rows - 1, 1)?)
    }

    fn read(&self, x: &Tensor) -> Result<Readback> {
        Ok(Readback::Host(x.flatten_all()?.to_vec1::<f32>()?))
    }

    /// Greedy choice where the logits lie, over the worker threads: the host then reads one id
    /// instead of copying the vocabulary's logits and scanning them on one thread. Other sampling
    /// is the host's.
    fn sample(&self, logits: &Tensor, request: &DeviceSampling) -> Result<Option<Tensor>> {
        if !request.is_greedy() {
            return Ok(None);
        }
        let (storage, layout) = logits.storage_and_layout();
        let token = match (&*storage, layout.contiguous_offsets()) {
            (
                candle_core::Storage::Cpu(candle_core::CpuStorage::F32(values)),
                Some((start, end)),
            ) => parallel::argmax_in_parallel(&values[start..end]),
            _ => return Ok(None),
        };
        Ok(Some(Tensor::from_vec(
            vec![f32::from_bits(token)],
            (1, 1),
            &self.device,
        )?))
    }

    fn new_kv_cache(
        &self,
        head_count_kv: usize,
        head_dim: usize,
        max_len: usize,
    ) -> Result<CpuKvCache> {
        Ok(CpuKvCache::new(head_count_kv, head_dim, max_len))
    }

    fn kv_cache_len(&self, cache: &CpuKvCache) -> usize {
        cache.len
    }

    fn truncate_kv_cache(&self, cache: &mut CpuKvCache, len: usize) {
        cache.len = cache.len.min(len);
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut CpuKvCache,
        p: &AttentionParams,
        _positions: &CpuPositions,
    ) -> Result<Tensor> {
        let rows = q.dims()[0];
        // Checked here so that no slice inside the worker pool can be out of range.
        let kv_width = p.head_count_kv * p.head_dim;
        if p.head_count_kv == 0
            || !p.head_count.is_multiple_of(p.head_count_kv)
            || q.dims() != [rows, p.head_count * p.head_dim]
            || k.dims() != [rows, kv_width]
            || v.dims() != [rows, kv_width]
        {
            return Err(Error::Backend(format!(
                "attention: q {:?}, k {:?}, v {:?} do not fit {} heads, {} KV heads of {}",
                q.dims(),
                k.dims(),
                v.dims(),
                p.head_count,
                p.head_count_kv,
                p.head_dim
            )));
        }
        if p.start_pos != cache.len {
            return Err(Error::Backend(format!(
                "attention at position {} but the cache holds {}",
                p.start_pos, cache.len
            )));
        }
        let keys = k.flatten_all()?.to_vec1::<f32>()?;
        let values = v.flatten_all()?.to_vec1::<f32>()?;
        cache.append(&keys, &values, rows)?;
        let q = q.flatten_all()?.to_vec1::<f32>()?;
        let out = attention::attend(&q, cache, p, rows);
        Ok(Tensor::from_vec(
            out,
            (rows, p.head_count * p.head_dim),
            &self.device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// Causal attention written out per query over the keys it may see, in f64.
    fn reference_attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        p: &AttentionParams,
        rows: usize,
    ) -> Vec<f32> {
        let (h, kvh, hd) = (p.head_count, p.head_count_kv, p.head_dim);
        let mut out = vec![0f32; rows * h * hd];
        for t in 0..rows {
            for head in 0..h {
                let kv = head / (h / kvh);
                let visible: Vec<usize> = (0..=t)
                    .filter(|&j| p.sliding_window.is_none_or(|w| t - j < w))
                    .collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        (0..hd)
                            .map(|i| {
                                q[t * h * hd + head * hd + i] as f64
                                    * k[j * kvh * hd + kv * hd + i] as f64
                            })
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for (w, &j) in weights.iter().zip(&visible) {
                    for i in 0..hd {
                        out[t * h * hd + head * hd + i] +=
                            (w / total * v[j * kvh * hd + kv * hd + i] as f64) as f32;
                    }
                }
            }
        }
        out
    }

    /// Prefill in one call and decode one token at a time both match the reference, with and
    /// without a sliding window (tolerance 1e-5: f32 against f64 over a few terms).
    #[test]
    fn attention_matches_reference_with_and_without_window() {
        let backend = CpuBackend::new();
        let (rows, h, kvh, hd) = (7, 4, 2, 8);
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0)
                .collect()
        };
        let (q, k, v) = (
            values(rows * h * hd, 1),
            values(rows * kvh * hd, 2),
            values(rows * kvh * hd, 3),
        );
        let tensor = |data: &[f32], cols: usize, from: usize, n: usize| {
            Tensor::from_vec(
                data[from * cols..(from + n) * cols].to_vec(),
                (n, cols),
                &Device::Cpu,
            )
            .unwrap()
        };
        for window in [None, Some(3)] {
            let params = |start_pos| AttentionParams {
                head_count: h,
                head_count_kv: kvh,
                head_dim: hd,
                start_pos,
                sliding_window: window,
            };
            let inv_freq = vec![1.0f32; hd / 2];
            let expected = reference_attention(&q, &k, &v, &params(0), rows);

            let mut cache = backend.new_kv_cache(kvh, hd, 64).unwrap();
            let out = backend
                .attention(
                    &tensor(&q, h * hd, 0, rows),
                    &tensor(&k, kvh * hd, 0, rows),
                    &tensor(&v, kvh * hd, 0, rows),
                    &mut cache,
                    &params(0),
                    &backend.positions(&params(0), rows, &inv_freq).unwrap(),
                )
                .unwrap();
            let batched = backend.to_vec(&out).unwrap();

            let mut cache = backend.new_kv_cache(kvh, hd, 64).unwrap();
            let mut stepwise = Vec::new();
            for t in 0..rows {
                let out = backend
                    .attention(
                        &tensor(&q, h * hd, t, 1),
                        &tensor(&k, kvh * hd, t, 1),
                        &tensor(&v, kvh * hd, t, 1),
                        &mut cache,
                        &params(t),
                        &backend.positions(&params(t), 1, &inv_freq).unwrap(),
                    )
                    .unwrap();
                stepwise.extend(backend.to_vec(&out).unwrap());
            }
            for (name, got) in [("batched", &batched), ("stepwise", &stepwise)] {
                let diff = got
                    .iter()
                    .zip(&expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(diff < 1e-5, "{name} window {window:?}: differs by {diff}");
            }
        }
    }

    /// Growing the cache past its first capacity (256 positions, then 512) keeps every key and
    /// value where it was, also after the cache was cut back.
    #[test]
    fn kv_cache_keeps_its_contents_when_it_grows() {
        let backend = CpuBackend::new();
        let (kv_heads, head_dim) = (2, 4);
        let mut cache = backend.new_kv_cache(kv_heads, head_dim, 1024).unwrap();
        let keys = |t: usize| -> Vec<f32> {
            (0..kv_heads * head_dim)
                .map(|i| (t * 100 + i) as f32)
                .collect()
        };
        let values = |t: usize| -> Vec<f32> { keys(t).iter().map(|k| -k).collect() };
        for t in 0..200 {
            cache.append(&keys(t), &values(t), 1).unwrap();
        }
        backend.truncate_kv_cache(&mut cache, 150);
        // Different contents from position 150 on, in two calls of several rows each.
        let later = |t: usize| t + 10_000;
        for (start, rows) in [(150, 100), (250, 350)] {
            let k: Vec<f32> = (start..start + rows).flat_map(|t| keys(later(t))).collect();
            let v: Vec<f32> = (start..start + rows)
                .flat_map(|t| values(later(t)))
                .collect();
            cache.append(&k, &v, rows).unwrap();
        }
        assert_eq!(backend.kv_cache_len(&cache), 600);
        for t in 0..600 {
            let source = if t < 150 { t } else { later(t) };
            for head in 0..kv_heads {
                let part = head * head_dim..(head + 1) * head_dim;
                assert_eq!(
                    cache.keys(head, t..t + 1),
                    &keys(source)[part.clone()],
                    "key {t}"
                );
                assert_eq!(
                    cache.values(head, t..t + 1),
                    &values(source)[part],
                    "value {t}"
                );
            }
        }
    }

    /// Greedy sampling over the threads chooses what one `argmax` scan chooses: a maximum in
    /// any chunk of the scan, equal maxima within and across chunks (the first wins), NaN, and
    /// nothing above -inf. Other sampling stays on the host.
    #[test]
    fn greedy_sampling_over_the_threads_equals_one_scan() {
        let backend = CpuBackend::new();
        let logits = |v: &[f32]| Tensor::from_vec(v.to_vec(), (1, v.len()), &Device::Cpu).unwrap();
        let sample = |v: &[f32]| {
            let token = backend
                .sample(&logits(v), &DeviceSampling::GREEDY)
                .unwrap()
                .expect("the CPU samples greedily");
            backend.to_vec(&token).unwrap()[0].to_bits()
        };
        for len in [1, 7, 16384, 16385, 131_077] {
            // Many equal values, in every chunk.
            let base: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1013) as f32 / 100.0 - 5.0)
                .collect();
            let with = |changes: &[(usize, f32)]| {
                let mut v = base.clone();
                for &(i, x) in changes {
                    v[i] = x;
                }
                v
            };
            let mut cases = vec![base.clone()];
            for at in [0, len / 3, len - 1] {
                cases.push(with(&[(at, 100.0)]));
            }
            if len > 16384 {
                cases.push(with(&[(len - 1, 100.0), (3, 100.0)]));
                cases.push(with(&[(16384, f32::NAN), (0, f32::NAN)]));
            }
            cases.push(vec![f32::NEG_INFINITY; len]);
            let mut nan = vec![f32::NEG_INFINITY; len];
            nan[len / 2] = f32::NAN;
            cases.push(nan);
            for (i, v) in cases.iter().enumerate() {
                assert_eq!(
                    sample(v),
                    crate::sampling::argmax(v),
                    "length {len}, case {i}"
                );
            }
        }
        let warm = DeviceSampling {
            temperature: 0.8,
            ..DeviceSampling::GREEDY
        };
        assert!(backend
            .sample(&logits(&[1.0, 2.0]), &warm)
            .unwrap()
            .is_none());
    }

    #[test]
    fn kv_cache_refuses_to_grow_past_the_context() {
        let backend = CpuBackend::new();
        let mut cache = backend.new_kv_cache(1, 2, 4).unwrap();
        let params = AttentionParams {
            head_count: 1,
            head_count_kv: 1,
            head_dim: 2,
            start_pos: 0,
            sliding_window: None,
        };
        let x = Tensor::zeros((5, 2), DType::F32, &Device::Cpu).unwrap();
        let positions = backend.positions(&params, 5, &[1.0]).unwrap();
        let err = backend
            .attention(&x, &x, &x, &mut cache, &params, &positions)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ContextLength {
                    needed: 5,
                    limit: 4
                }
            ),
            "{err}"
        );
    }
}
