//! The `llama` transformer (Ministral, SmolLM2, Llama …): written once, run by any backend.

use super::{Forwarded, LanguageModel, LlamaConfig, Output, PendingForward};
use crate::backend::{AttentionParams, Backend};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgmlType, GgufFile, TensorData, TensorInfo};

struct Layer<B: Backend> {
    attn_norm: B::Vector,
    attn_q: B::Matrix,
    attn_k: B::Matrix,
    attn_v: B::Matrix,
    attn_output: B::Matrix,
    ffn_norm: B::Vector,
    ffn_gate: B::Matrix,
    ffn_up: B::Matrix,
    ffn_down: B::Matrix,
}

pub struct Llama<B: Backend> {
    backend: B,
    config: LlamaConfig,
    token_embd: B::Embedding,
    output_norm: B::Vector,
    output: B::Matrix,
    layers: Vec<Layer<B>>,
    kv_caches: Vec<B::KvCache>,
    /// RoPE inverse frequencies, one per pair (with Llama-3 `rope_freqs` factors applied).
    inv_freq: Vec<f32>,
    weight_bytes_per_token: u64,
    /// The token the last forward call chose on the device, which the next call may start from
    /// before the host has read it.
    last_sampled: Option<B::Tensor>,
}

/// A forward call's input.
#[derive(Clone, Copy)]
enum Input<'a> {
    Tokens(&'a [u32]),
    /// The token the previous call chose on the device.
    Sampled,
}

/// Reads tensors from the source one at a time, checking each shape against the config.
struct Loader<'a, B: Backend> {
    backend: &'a B,
    file: &'a GgufFile,
    source: &'a dyn ByteSource,
    bytes_per_token: u64,
}

impl<'a, B: Backend> Loader<'a, B> {
    fn info(&self, name: &str, expected: &[u64]) -> Result<&'a TensorInfo> {
        let info = self.file.require_tensor(name)?;
        if info.dims != expected {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: info.dims.clone(),
            });
        }
        Ok(info)
    }

    fn bytes(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        Ok(self.file.tensor_bytes(self.source, info)?)
    }

    fn matrix(&mut self, name: &str, cols: usize, rows: usize) -> Result<B::Matrix> {
        let info = self.info(name, &[cols as u64, rows as u64])?;
        self.bytes_per_token += info.n_bytes;
        self.backend.load_matrix(TensorData::new(info, self.source))
    }

    fn head(&mut self, name: &str, cols: usize, rows: usize) -> Result<B::Matrix> {
        let info = self.info(name, &[cols as u64, rows as u64])?;
        self.bytes_per_token += info.n_bytes;
        self.backend.load_head(TensorData::new(info, self.source))
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<B::Vector> {
        let info = self.info(name, &[len as u64])?;
        self.bytes_per_token += info.n_bytes;
        self.backend.load_vector(info, &self.bytes(info)?)
    }
}

impl<B: Backend> Llama<B> {
    pub fn load(backend: B, file: &GgufFile, source: &dyn ByteSource) -> Result<Self> {
        let config = LlamaConfig::from_gguf(file)?;
        if config.rope_dim != config.head_dim {
            return Err(Error::Model(format!(
                "partial rotary embeddings (rope.dimension_count {} < head dim {}) are not supported",
                config.rope_dim, config.head_dim
            )));
        }
        let embd = config.embedding_length;
        let q_dim = config.head_count * config.head_dim;
        let kv_dim = config.head_count_kv * config.head_dim;
        let ffn = config.feed_forward_length;
        let vocab = config.vocab_size;

        let mut loader = Loader {
            backend: &backend,
            file,
            source,
            bytes_per_token: 0,
        };
        let embd_info = loader.info("token_embd.weight", &[embd as u64, vocab as u64])?;
        let token_embd = backend.load_embedding(TensorData::new(embd_info, source))?;
        // One row of the table is read per token.
        loader.bytes_per_token += embd_info.n_bytes / vocab as u64;

        let mut layers = Vec::with_capacity(config.block_count);
        for i in 0..config.block_count {
            let name = |part: &str| format!("blk.{i}.{part}.weight");
            layers.push(Layer {
                attn_norm: loader.vector(&name("attn_norm"), embd)?,
                attn_q: loader.matrix(&name("attn_q"), embd, q_dim)?,
                attn_k: loader.matrix(&name("attn_k"), embd, kv_dim)?,
                attn_v: loader.matrix(&name("attn_v"), embd, kv_dim)?,
                attn_output: loader.matrix(&name("attn_output"), q_dim, embd)?,
                ffn_norm: loader.vector(&name("ffn_norm"), embd)?,
                ffn_gate: loader.matrix(&name("ffn_gate"), embd, ffn)?,
                ffn_up: loader.matrix(&name("ffn_up"), embd, ffn)?,
                ffn_down: loader.matrix(&name("ffn_down"), ffn, embd)?,
            });
        }
        let output_norm = loader.vector("output_norm.weight", embd)?;
        // Tied embeddings: models without `output.weight` reuse the embedding table as the head.
        let output_name = if file.tensor("output.weight").is_some() {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let output = loader.head(output_name, embd, vocab)?;

        let inv_freq = rope_inverse_frequencies(&config, &loader)?;
        let weight_bytes_per_token = loader.bytes_per_token;
        let kv_caches = (0..config.block_count)
            .map(|_| {
                backend.new_kv_cache(config.head_count_kv, config.head_dim, config.context_length)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            backend,
            config,
            token_embd,
            output_norm,
            output,
            layers,
            kv_caches,
            inv_freq,
            weight_bytes_per_token,
            last_sampled: None,
        })
    }

    /// Runs `tokens` and starts reading back the logits (every row or the last) or a token sampled
    /// on the device.
    fn run(&mut self, input: Input<'_>, all_rows: bool, output: Output) -> Result<PendingForward> {
        let sampled = self.last_sampled.take();
        let rows = match input {
            Input::Tokens(tokens) => tokens.len(),
            Input::Sampled => 1,
        };
        if let Input::Tokens(tokens) = input {
            if tokens.is_empty() {
                return Err(Error::Model("forward needs at least one token".into()));
            }
            if let Some(&id) = tokens
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                return Err(Error::TokenOutOfRange {
                    id,
                    vocab_size: self.config.vocab_size,
                });
            }
        } else if sampled.is_none() {
            return Err(Error::Model(
                "no token was chosen on the device to continue from".into(),
            ));
        }
        let start_pos = self.cache_len();
        let needed = start_pos + rows;
        if needed > self.config.context_length {
            return Err(Error::ContextLength {
                needed,
                limit: self.config.context_length,
            });
        }
        let result = B::run_forward(|| {
            // Moved in: a tensor is Send, not Sync.
            let sampled = sampled;
            let x = match input {
                Input::Tokens(tokens) => self.backend.embed(&self.token_embd, tokens)?,
                Input::Sampled => {
                    let token = sampled.as_ref().expect("checked above");
                    self.backend
                        .embed_sampled(&self.token_embd, token)?
                        .ok_or_else(|| Error::Backend("this backend samples on the host".into()))?
                }
            };
            let logits = self.run_layers(x, rows, start_pos, all_rows)?;
            let b = &self.backend;
            if let Output::Sample(request) = output {
                if let Some(token) = b.sample(&logits, &request)? {
                    return Ok((PendingForward::token(b.read(&token)?), Some(token)));
                }
            }
            Ok((PendingForward::logits(b.read(&logits)?), None))
        });
        match result {
            Ok((pending, sampled)) => {
                // Continued from on the device only where the device works ahead of the host.
                self.last_sampled = sampled.filter(|_| B::QUEUES_WORK);
                Ok(pending)
            }
            Err(e) => {
                // Keep the caches consistent with what was fully processed.
                self.truncate_cache(start_pos);
                Err(e)
            }
        }
    }

    /// The logits tensor, recorded but not read.
    fn run_layers(
        &mut self,
        mut x: B::Tensor,
        rows: usize,
        start_pos: usize,
        all_rows: bool,
    ) -> Result<B::Tensor> {
        let b = &self.backend;
        let c = &self.config;
        let params = AttentionParams {
            head_count: c.head_count,
            head_count_kv: c.head_count_kv,
            head_dim: c.head_dim,
            start_pos,
            sliding_window: c.sliding_window,
        };
        let positions = b.positions(&params, rows, &self.inv_freq)?;
        for (layer, cache) in self.layers.iter().zip(self.kv_caches.iter_mut()) {
            let h = b.rms_norm(&x, &layer.attn_norm, c.rms_norm_eps)?;
            let [q, k, v] = matmul_group(b, &h, [&layer.attn_q, &layer.attn_k, &layer.attn_v])?;
            let q = b.rope(&q, c.head_count, &positions)?;
            let k = b.rope(&k, c.head_count_kv, &positions)?;
            let attn = b.attention(&q, &k, &v, cache, &params, &positions)?;
            x = b.matmul_add(&attn, &layer.attn_output, &x)?;

            let h = b.rms_norm(&x, &layer.ffn_norm, c.rms_norm_eps)?;
            let gated = b.swiglu_matmul(&h, &layer.ffn_gate, &layer.ffn_up)?;
            x = b.matmul_add(&gated, &layer.ffn_down, &x)?;
        }
        if !all_rows {
            x = b.last_row(&x)?;
        }
        let x = b.rms_norm(&x, &self.output_norm, c.rms_norm_eps)?;
        b.matmul(&x, &self.output)
    }
}

/// The products of one input with a fixed-size group of matrices.
fn matmul_group<B: Backend, const N: usize>(
    b: &B,
    x: &B::Tensor,
    ws: [&B::Matrix; N],
) -> Result<[B::Tensor; N]> {
    b.matmul_many(x, &ws)?.try_into().map_err(|_| {
        Error::Backend(format!(
            "matmul_many returned the wrong number of products (expected {N})"
        ))
    })
}

/// `base^(-2i/d)` per pair, divided by the per-pair factors of a `rope_freqs.weight` tensor
/// when the file has one (Llama 3.1-style long-context scaling).
fn rope_inverse_frequencies<B: Backend>(
    config: &LlamaConfig,
    loader: &Loader<'_, B>,
) -> Result<Vec<f32>> {
    let half = config.head_dim / 2;
    let base = config.rope_freq_base as f64;
    let mut inv_freq: Vec<f32> = (0..half)
        .map(|i| base.powf(-2.0 * i as f64 / config.head_dim as f64) as f32)
        .collect();
    if let Some(info) = loader.file.tensor("rope_freqs.weight") {
        if info.dtype != GgmlType::F32 {
            return Err(Error::Model(format!(
                "rope_freqs.weight is {}, expected F32",
                info.dtype.name()
            )));
        }
        if info.dims != [half as u64] {
            return Err(Error::TensorShape {
                name: info.name.clone(),
                expected: vec![half as u64],
                found: info.dims.clone(),
            });
        }
        let bytes = loader.bytes(info)?;
        for (f, factor) in inv_freq.iter_mut().zip(bytes.chunks_exact(4)) {
            *f /= f32::from_le_bytes([factor[0], factor[1], factor[2], factor[3]]);
        }
    }
    Ok(inv_freq)
}

impl<B: Backend> LanguageModel for Llama<B> {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn start_forward(&mut self, tokens: &[u32], output: Output) -> Result<PendingForward> {
        self.run(Input::Tokens(tokens), false, output)
    }

    fn start_forward_sampled(&mut self, output: Output) -> Result<Option<PendingForward>> {
        if self.last_sampled.is_none() {
            return Ok(None);
        }
        self.run(Input::Sampled, false, output).map(Some)
    }

    fn forward_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        match self
            .run(Input::Tokens(tokens), true, Output::Logits)?
            .wait()
        {
            Ok(Forwarded::Logits(logits)) => Ok(logits),
            Ok(Forwarded::Token(_)) => Err(Error::Backend("asked for logits, got a token".into())),
            Err(e) => {
                self.truncate_cache(self.cache_len() - tokens.len());
                Err(e)
            }
        }
    }

    fn cache_len(&self) -> usize {
        self.kv_caches
            .first()
            .map_or(0, |c| self.backend.kv_cache_len(c))
    }

    fn truncate_cache(&mut self, len: usize) {
        // A token chosen for a position that may be gone: never continue from it.
        self.last_sampled = None;
        for cache in &mut self.kv_caches {
            self.backend.truncate_kv_cache(cache, len);
        }
    }

    fn weight_bytes_per_token(&self) -> u64 {
        self.weight_bytes_per_token
    }

    fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    fn work_counts(&self) -> crate::backend::WorkCounts {
        self.backend.work_counts()
    }

    fn backend_description(&self) -> String {
        self.backend.describe()
    }
}
