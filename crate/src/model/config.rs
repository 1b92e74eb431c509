use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// Hyper-parameters of a `llama`-architecture model, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub context_length: usize,
    pub embedding_length: usize,
    pub block_count: usize,
    pub feed_forward_length: usize,
    pub head_count: usize,
    pub head_count_kv: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope_freq_base: f32,
    pub rms_norm_eps: f32,
    /// Attention looks back at most this many tokens, when the model has a window.
    pub sliding_window: Option<usize>,
}

/// Upper bounds far above any real model, so a broken header cannot drive a huge allocation.
const MAX_DIM: u64 = 1 << 20;
const MAX_LAYERS: u64 = 1024;
const MAX_CONTEXT: u64 = 1 << 24;

impl LlamaConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.architecture()?;
        if arch != "llama" {
            return Err(Error::Model(format!(
                "architecture `{arch}` is not supported (edgechat runs `llama`-architecture GGUFs)"
            )));
        }
        let key = |name: &str| format!("llama.{name}");
        let bounded = |name: &str, max: u64| -> Result<usize> {
            let v = file.require_u64(&key(name))?;
            if v == 0 || v > max {
                return Err(Error::Model(format!(
                    "llama.{name} = {v} is out of range (1..={max})"
                )));
            }
            Ok(v as usize)
        };
        let embedding_length = bounded("embedding_length", MAX_DIM)?;
        let head_count = bounded("attention.head_count", MAX_DIM)?;
        let head_count_kv = match file.get_u64(&key("attention.head_count_kv"))? {
            Some(_) => bounded("attention.head_count_kv", MAX_DIM)?,
            None => head_count,
        };
        if head_count % head_count_kv != 0 {
            return Err(Error::Model(format!(
                "head_count {head_count} is not a multiple of head_count_kv {head_count_kv}"
            )));
        }
        let head_dim = match file.get_u64(&key("attention.key_length"))? {
            Some(_) => bounded("attention.key_length", MAX_DIM)?,
            None => {
                if embedding_length % head_count != 0 {
                    return Err(Error::Model(
                        "embedding_length is not a multiple of head_count".into(),
                    ));
                }
                embedding_length / head_count
            }
        };
        if head_dim % 2 != 0 {
            return Err(Error::Model(format!(
                "head dimension {head_dim} is odd; RoPE needs pairs"
            )));
        }
        let rope_dim = match file.get_u64(&key("rope.dimension_count"))? {
            Some(_) => bounded("rope.dimension_count", head_dim as u64)?,
            None => head_dim,
        };
        for (what, heads) in [("head_count", head_count), ("head_count_kv", head_count_kv)] {
            if (heads as u64) * (head_dim as u64) > MAX_DIM {
                return Err(Error::Model(format!(
                    "{what} × head dim {head_dim} is out of range"
                )));
            }
        }
        let vocab_size = match file.get_u64(&key("vocab_size"))? {
            Some(_) => bounded("vocab_size", MAX_DIM * 4)?,
            None => {
                let tokens = file.require("tokenizer.ggml.tokens")?;
                tokens
                    .as_array()
                    .map(|a| a.len())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        Error::Model("tokenizer.ggml.tokens is not a non-empty array".into())
                    })?
            }
        };
        let sliding_window = match file.get_u64(&key("attention.sliding_window"))? {
            Some(0) | None => None,
            Some(w) => Some(w.min(MAX_CONTEXT) as usize),
        };
        let positive = |name: &str, value: f64| -> Result<f32> {
            if value.is_finite() && value > 0.0 {
                Ok(value as f32)
            } else {
                Err(Error::Model(format!(
                    "llama.{name} = {value} must be a positive number"
                )))
            }
        };
        let rope_freq_base = positive(
            "rope.freq_base",
            file.get_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        )?;
        let rms_norm_eps = positive(
            "attention.layer_norm_rms_epsilon",
            file.get_f64(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
        )?;
        Ok(Self {
            vocab_size,
            context_length: bounded("context_length", MAX_CONTEXT)?,
            embedding_length,
            block_count: bounded("block_count", MAX_LAYERS)?,
            feed_forward_length: bounded("feed_forward_length", MAX_DIM)?,
            head_count,
            head_count_kv,
            head_dim,
            rope_dim,
            rope_freq_base,
            rms_norm_eps,
            sliding_window,
        })
    }
}
