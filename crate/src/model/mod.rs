//! The one model definition: a `llama`-architecture transformer written once over the
//! [`Backend`](crate::backend::Backend) interface, so CPU and WebGPU run the same forward pass.

mod config;
mod llama;

pub use config::LlamaConfig;
pub use llama::Llama;

use crate::error::Result;

/// A loaded model with its own KV cache for one sequence. Object-safe, so sessions, the CLI and
/// the server work with any backend through `Box<dyn LanguageModel>`.
pub trait LanguageModel: Send {
    fn config(&self) -> &LlamaConfig;

    /// Runs `tokens` at positions `cache_len()..`, appends their keys and values to the cache and
    /// returns the logits (`vocab_size` values) after the last token.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;

    /// Like [`forward`](Self::forward) but returns the logits after every token, row after row
    /// (`tokens.len() * vocab_size` values). Used for perplexity.
    fn forward_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;

    /// Number of positions held in the KV cache.
    fn cache_len(&self) -> usize;

    /// Drops cached positions from `len` on, so a new turn can reuse the shared prefix.
    fn truncate_cache(&mut self, len: usize);

    /// Bytes of weights read to decode one token (for effective GB/s figures).
    fn weight_bytes_per_token(&self) -> u64;

    /// A short name of the backend (`cpu`, `webgpu`).
    fn backend_name(&self) -> &'static str;

    /// What the backend runs on, for reports (the GPU adapter, its features and limits).
    fn backend_description(&self) -> String {
        self.backend_name().to_string()
    }
}
