use super::types::ValueType;

/// Everything that can be wrong with a GGUF file, named so a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("I/O error reading the model: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a GGUF file (bad magic {found:#010x}, expected 0x46554747 \"GGUF\")")]
    BadMagic { found: u32 },
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("truncated header: needed {needed} bytes at offset {offset}, the file has {file_len}")]
    TruncatedHeader {
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("{what} of {count} is too large to be real (at most {max} fit in the file)")]
    CountTooLarge {
        what: &'static str,
        count: u64,
        max: u64,
    },
    #[error("string of {len} bytes at offset {offset} is too large to be real")]
    StringTooLong { offset: u64, len: u64 },
    #[error("string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: u64 },
    #[error("unknown metadata value type {0}")]
    UnknownValueType(u32),
    #[error("metadata arrays nested too deeply")]
    NestingTooDeep,
    #[error("duplicate metadata key `{0}`")]
    DuplicateKey(String),
    #[error("duplicate tensor `{0}`")]
    DuplicateTensor(String),
    #[error("general.alignment {0} is not a power of two")]
    BadAlignment(u64),
    #[error("tensor `{name}` has {n_dims} dimensions (at most 4)")]
    TooManyDims { name: String, n_dims: u32 },
    #[error("tensor `{name}` has a bad shape {dims:?}: {why}")]
    BadTensorShape {
        name: String,
        dims: Vec<u64>,
        why: &'static str,
    },
    #[error("tensor `{name}` has unsupported type {type_name} (id {type_id})")]
    UnsupportedTensorType {
        name: String,
        type_id: u32,
        type_name: &'static str,
    },
    #[error("tensor `{name}` at offset {offset} is not aligned to {alignment} bytes")]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor `{name}` (bytes {start}..{end}) lies outside the file ({file_len} bytes): truncated data")]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("missing metadata key `{0}`")]
    MissingKey(String),
    #[error("metadata key `{key}` has type {found:?}, expected {expected}")]
    WrongValueType {
        key: String,
        found: ValueType,
        expected: &'static str,
    },
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
}
