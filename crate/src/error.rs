use crate::gguf::GgufError;

/// Errors from loading a model or generating with it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("model: {0}")]
    Model(String),
    #[error(
        "tensor `{name}` has shape {found:?} (ggml order), the architecture needs {expected:?}"
    )]
    TensorShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("token id {id} is outside the vocabulary ({vocab_size} tokens)")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("the conversation needs {needed} tokens but the context holds {limit}")]
    ContextLength { needed: usize, limit: usize },
    #[error("generation was cancelled")]
    Cancelled,
    #[error("backend: {0}")]
    Backend(String),
    /// The model does not fit the GPU adapter's limits (the hybrid fallback goes elsewhere).
    #[error("the GPU adapter cannot hold {what}: it needs {needed} bytes in one buffer, the adapter allows {limit}")]
    GpuLimit {
        what: String,
        needed: u64,
        limit: u64,
    },
    /// The GPU device was lost (driver reset, tab in the background, out of memory).
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Backend(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
