//! GGUF v2/v3 reader: header, metadata, tensor infos. Every count and length in the header is
//! checked against the bytes that remain before anything is allocated for it, so a hostile
//! file gets a typed error and never a panic or a huge allocation.

mod error;
mod reader;
mod source;
mod types;
mod writer;

pub use error::GgufError;
pub use reader::{GgufFile, TensorData, TensorInfo};
#[cfg(unix)]
pub use source::FileSource;
pub use source::{ByteSource, MemorySource};
pub use types::{GgmlType, Value, ValueType};
pub use writer::{GgufWriteError, GgufWriter, PlannedTensor, GGUF_WRITE_VERSION};

/// `GGUF` in little-endian order.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Default tensor-data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
