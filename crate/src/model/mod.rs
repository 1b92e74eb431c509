//! The one model definition: a `llama`-architecture transformer written once over the
//! [`Backend`](crate::backend::Backend) interface, so CPU and WebGPU run the same forward pass.

mod config;
mod llama;

pub use config::LlamaConfig;
pub use llama::Llama;

use crate::backend::{Readback, WorkCounts};
use crate::error::{Error, Result};
use crate::sampling::DeviceSampling;

/// What a forward call should hand back.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    /// The logits after the last token.
    Logits,
    /// The next token, chosen where the logits are (on a GPU only the id comes back); backends
    /// that sample on the host hand back the logits instead.
    Sample(DeviceSampling),
}

/// A forward call's result on its way to the host.
pub struct PendingForward {
    readback: Readback,
    is_token: bool,
}

/// A forward call's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Forwarded {
    Logits(Vec<f32>),
    Token(u32),
}

impl PendingForward {
    /// Logits computed on the host.
    pub fn host_logits(logits: &[f32]) -> Self {
        Self::logits(Readback::Host(logits.to_vec()))
    }

    pub fn logits(readback: Readback) -> Self {
        PendingForward {
            readback,
            is_token: false,
        }
    }

    pub fn token(readback: Readback) -> Self {
        PendingForward {
            readback,
            is_token: true,
        }
    }

    /// Blocks until the result is on the host (native only).
    pub fn wait(self) -> Result<Forwarded> {
        let is_token = self.is_token;
        Self::decode(is_token, self.readback.words()?)
    }

    pub async fn wait_async(self) -> Result<Forwarded> {
        let is_token = self.is_token;
        Self::decode(is_token, self.readback.words_async().await?)
    }

    fn decode(is_token: bool, words: Vec<f32>) -> Result<Forwarded> {
        if !is_token {
            return Ok(Forwarded::Logits(words));
        }
        match words[..] {
            [id] => Ok(Forwarded::Token(id.to_bits())),
            _ => Err(Error::Backend(format!(
                "a sampled token is one word, not {}",
                words.len()
            ))),
        }
    }
}

/// A loaded model with its own KV cache for one sequence. Object-safe, so sessions, the CLI and
/// the server work with any backend through `Box<dyn LanguageModel>`.
pub trait LanguageModel: Send {
    fn config(&self) -> &LlamaConfig;

    /// Runs `tokens` at positions `cache_len()..` and appends their keys and values to the cache;
    /// the work is submitted and its result is on its way. The cache counts the tokens at once:
    /// if waiting fails, truncate it back.
    fn start_forward(&mut self, tokens: &[u32], output: Output) -> Result<PendingForward>;

    /// Runs one more token: the one the previous call chose on the device (`Output::Sample`),
    /// before the host has read it, so the device never waits for the host between tokens. `None`
    /// when there is no such token (the host sampled, the previous call wanted logits, or the
    /// backend computes in the call itself, as the CPU does); the caller then passes the token.
    fn start_forward_sampled(&mut self, _output: Output) -> Result<Option<PendingForward>> {
        Ok(None)
    }

    /// [`start_forward`](Self::start_forward) for the logits (`vocab_size` values) after the last
    /// token, waited for (native only).
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        match self.start_forward(tokens, Output::Logits)?.wait() {
            Ok(Forwarded::Logits(logits)) => Ok(logits),
            Ok(Forwarded::Token(_)) => Err(Error::Backend("asked for logits, got a token".into())),
            Err(e) => {
                let len = self.cache_len().saturating_sub(tokens.len());
                self.truncate_cache(len);
                Err(e)
            }
        }
    }

    /// Like [`forward`](Self::forward) but returns the logits after every token, row after row
    /// (`tokens.len() * vocab_size` values). Used for perplexity.
    fn forward_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;

    /// Number of positions held in the KV cache.
    fn cache_len(&self) -> usize;

    /// Drops cached positions from `len` on, so a new turn can reuse the shared prefix.
    fn truncate_cache(&mut self, len: usize);

    /// Bytes of weights read to decode one token (for effective GB/s figures).
    fn weight_bytes_per_token(&self) -> u64;

    /// GPU dispatches and submissions so far (zero on the CPU).
    fn work_counts(&self) -> WorkCounts {
        WorkCounts::default()
    }

    /// A short name of the backend (`cpu`, `webgpu`).
    fn backend_name(&self) -> &'static str;

    /// What the backend runs on, for reports (the GPU adapter, its features and limits).
    fn backend_description(&self) -> String {
        self.backend_name().to_string()
    }
}
