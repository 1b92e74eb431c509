//! CPU backend on candle-core: weights stay in their GGUF quantization and are multiplied with
//! candle's quantized kernels (AVX2 / AVX-512-VNNI natively, simd128 in wasm), except Q4_1, which
//! candle only has in scalar code and which goes through our own kernels (`q4_1.rs`).

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

mod q4_1;

use q4_1::Q4_1Matrix;

use super::{AttentionParams, Backend, Readback};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgmlType, GgufFile, TensorData, TensorInfo};
use crate::model::{LanguageModel, Llama};

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

/// A weight matrix: Q4_1 through our own kernel, everything else through candle's.
pub enum CpuMatrix {
    Candle(QMatMul),
    Q4_1(Q4_1Matrix),
}

/// Keys and values of one layer, `[kv_heads, capacity, head_dim]`, grown by doubling so a short
/// chat does not reserve the whole context.
pub struct CpuKvCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
    len: usize,
    head_count_kv: usize,
    head_dim: usize,
    max_len: usize,
}

impl CpuKvCache {
    fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[1])
    }

    fn reserve(&mut self, needed: usize, device: &Device) -> Result<()> {
        if needed <= self.capacity() {
            return Ok(());
        }
        if needed > self.max_len {
            return Err(Error::ContextLength {
                needed,
                limit: self.max_len,
            });
        }
        // needed <= max_len here, so the result is at least `needed`.
        let capacity = needed.max(self.capacity() * 2).max(256).min(self.max_len);
        let shape = (self.head_count_kv, capacity, self.head_dim);
        let new_keys = Tensor::zeros(shape, DType::F32, device)?;
        let new_values = Tensor::zeros(shape, DType::F32, device)?;
        if let (Some(k), Some(v)) = (&self.keys, &self.values) {
            if self.len > 0 {
                new_keys.slice_set(&k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                new_values.slice_set(&v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            }
        }
        self.keys = Some(new_keys);
        self.values = Some(new_values);
        Ok(())
    }
}

/// Rotary tables and the attention mask for the positions of one forward call.
pub struct CpuPositions {
    /// `[rows, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    /// First cached position any query of this call can see (sliding window).
    first_key: usize,
    /// `[rows, keys]` of 0 / −∞; none when every query sees every key.
    mask: Option<Tensor>,
}

/// `[rows, heads * head_dim]` → `[heads, rows, head_dim]`.
fn split_heads(x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let rows = x.dims()[0];
    Ok(x.reshape((rows, heads, head_dim))?
        .transpose(0, 1)?
        .contiguous()?)
}

/// Q4_1 prompts of at least this many tokens go through f32 tiles of dequantized weights: a
/// blocked f32 GEMM beats one quantized dot product per (token, row) pair once a tile is reused
/// enough (2.6x on SmolLM2 at 256 tokens). K-quants and Q8_0 keep candle's VNNI-repacked kernels,
/// which beat this path.
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
        // wasm has no worker threads: rayon runs everything on the caller there.
        #[cfg(not(target_arch = "wasm32"))]
        return rayon::scope(|_| f());
        #[cfg(target_arch = "wasm32")]
        f()
    }

    fn load_matrix(&self, data: TensorData<'_>) -> Result<CpuMatrix> {
        let (info, bytes) = (data.info, data.read_all()?);
        if info.dtype == GgmlType::Q4_1 && info.dims.len() == 2 {
            let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
            return Ok(CpuMatrix::Q4_1(Q4_1Matrix::new(bytes, rows, cols)?));
        }
        Ok(CpuMatrix::Candle(QMatMul::from_qtensor(
            self.qtensor(info, &bytes)?,
        )?))
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
            CpuMatrix::Q4_1(w) => {
                let rows = x.dims()[0];
                if rows >= DEQUANTIZED_PREFILL_MIN_TOKENS {
                    return self.dequantized_tiles_matmul(
                        x,
                        GgmlDType::Q4_1,
                        w.bytes(),
                        w.rows(),
                        w.cols(),
                    );
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
        // Keys before the first query's window are never attended to: skip them entirely.
        let first_key = match p.sliding_window {
            Some(w) => (p.start_pos + 1).saturating_sub(w),
            None => 0,
        };
        let n_keys = p.start_pos + rows - first_key;
        let mask = if rows > 1 || p.sliding_window.is_some_and(|w| w < n_keys) {
            let mut mask = Vec::with_capacity(rows * n_keys);
            for t in 0..rows {
                let pos = p.start_pos + t;
                for j in 0..n_keys {
                    let key_pos = first_key + j;
                    let visible =
                        key_pos <= pos && p.sliding_window.is_none_or(|w| pos - key_pos < w);
                    mask.push(if visible { 0f32 } else { f32::NEG_INFINITY });
                }
            }
            Some(Tensor::from_vec(mask, (rows, n_keys), &self.device)?)
        } else {
            None
        };
        Ok(CpuPositions {
            cos: Tensor::from_vec(cos, (rows, half), &self.device)?,
            sin: Tensor::from_vec(sin, (rows, half), &self.device)?,
            first_key,
            mask,
        })
    }

    fn rope(&self, x: &Tensor, n_heads: usize, positions: &CpuPositions) -> Result<Tensor> {
        let (rows, half) = positions.cos.dims2()?;
        let head_dim = half * 2;
        let heads = split_heads(x, n_heads, head_dim)?.unsqueeze(0)?;
        let rotated = candle_nn::rotary_emb::rope_i(&heads, &positions.cos, &positions.sin)?;
        Ok(rotated
            .squeeze(0)?
            .transpose(0, 1)?
            .reshape((rows, n_heads * head_dim))?)
    }

    fn matmul_many(&self, x: &Tensor, ws: &[&CpuMatrix]) -> Result<Vec<Tensor>> {
        let tokens = x.dims()[0];
        let q4_1: Option<Vec<&Q4_1Matrix>> = ws
            .iter()
            .map(|w| {
                if let CpuMatrix::Q4_1(m) = w {
                    Some(m)
                } else {
                    None
                }
            })
            .collect();
        match q4_1 {
            Some(group)
                if tokens < DEQUANTIZED_PREFILL_MIN_TOKENS
                    && group.iter().all(|w| w.cols() == group[0].cols()) =>
            {
                let input = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                q4_1::matmul_many(&group, &input, tokens)
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
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        Ok(Readback::Host(
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ))
    }

    fn to_vec(&self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(x.flatten_all()?.to_vec1::<f32>()?)
    }

    fn new_kv_cache(
        &self,
        head_count_kv: usize,
        head_dim: usize,
        max_len: usize,
    ) -> Result<CpuKvCache> {
        Ok(CpuKvCache {
            keys: None,
            values: None,
            len: 0,
            head_count_kv,
            head_dim,
            max_len,
        })
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
        positions: &CpuPositions,
    ) -> Result<Tensor> {
        let rows = q.dims()[0];
        if p.start_pos != cache.len {
            return Err(Error::Backend(format!(
                "attention at position {} but the cache holds {}",
                p.start_pos, cache.len
            )));
        }
        let total = cache.len + rows;
        cache.reserve(total, &self.device)?;
        let (Some(keys), Some(values)) = (&cache.keys, &cache.values) else {
            return Err(Error::Backend("KV cache was not allocated".into()));
        };
        keys.slice_set(&split_heads(k, p.head_count_kv, p.head_dim)?, 1, cache.len)?;
        values.slice_set(&split_heads(v, p.head_count_kv, p.head_dim)?, 1, cache.len)?;
        cache.len = total;

        // Contiguous copies of the visible keys and values: candle's matmul also takes the strided
        // views, but then sums in an order that depends on the cache capacity, and a prompt split
        // in two would no longer give the logits of the whole prompt in one call.
        let n_keys = total - positions.first_key;
        let keys_t = keys
            .narrow(1, positions.first_key, n_keys)?
            .t()?
            .contiguous()?;
        let values = values
            .narrow(1, positions.first_key, n_keys)?
            .contiguous()?;

        // Group the query heads that share a KV head: [kv_heads, group * rows, head_dim].
        let group = p.head_count / p.head_count_kv;
        let q = split_heads(q, p.head_count, p.head_dim)?.reshape((
            p.head_count_kv,
            group * rows,
            p.head_dim,
        ))?;
        let scale = 1.0 / (p.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&keys_t)? * scale)?;
        if let Some(mask) = &positions.mask {
            scores = scores
                .reshape((p.head_count_kv, group, rows, n_keys))?
                .broadcast_add(mask)?
                .reshape((p.head_count_kv, group * rows, n_keys))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&values)?;
        Ok(out
            .reshape((p.head_count, rows, p.head_dim))?
            .transpose(0, 1)?
            .reshape((rows, p.head_count * p.head_dim))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
