use std::collections::{BTreeMap, HashSet};

use super::error::GgufError;
use super::source::ByteSource;
use super::types::{GgmlType, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// Arrays inside arrays deeper than this are not real models.
const MAX_ARRAY_NESTING: u32 = 4;
/// The header is read in chunks of this size, never all at once.
const CHUNK: usize = 1 << 16;
/// Metadata array items in the whole header, at most. Each becomes a `Value` in memory (32
/// bytes) however small it is on disk, so the file size alone does not bound the allocation.
/// Real vocabularies use under a million (tekken: 131k tokens + 269k merges + 131k types).
const MAX_METADATA_ARRAY_ITEMS: u64 = 1 << 22;
/// Largest single metadata string we accept (chat templates are a few KiB; a vocabulary is an array).
const MAX_STRING_LEN: u64 = 16 << 20;
/// Bytes of all strings in the header, at most: what the parsed header holds in memory (in a
/// browser, the wasm heap) is bounded by this, not by the file's size. Real headers hold a few MB
/// (tekken's vocabulary and merges: about 6 MB).
const MAX_METADATA_STRING_BYTES: u64 = 64 << 20;

/// Where one tensor's bytes are, and what they hold.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous one (a weight matrix is `[cols, rows]`).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Absolute offset of the first byte in the source.
    pub offset: u64,
    pub n_bytes: u64,
}

/// One tensor's bytes in a source: read whole, or in pieces (a GPU backend uploads large tensors
/// piece by piece so the host never holds all of one).
#[derive(Clone, Copy)]
pub struct TensorData<'a> {
    pub info: &'a TensorInfo,
    source: &'a dyn ByteSource,
}

impl<'a> TensorData<'a> {
    pub fn new(info: &'a TensorInfo, source: &'a dyn ByteSource) -> Self {
        TensorData { info, source }
    }

    pub fn read_all(&self) -> Result<Vec<u8>, GgufError> {
        let mut bytes = vec![0u8; self.info.n_bytes as usize];
        self.source.read_at(self.info.offset, &mut bytes)?;
        Ok(bytes)
    }

    /// Fills `buf` with the tensor's bytes from `start` (relative to the tensor).
    pub fn read_range(&self, start: u64, buf: &mut [u8]) -> Result<(), GgufError> {
        let end = start
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.info.n_bytes);
        if end.is_none() {
            return Err(GgufError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "bytes {start}..+{} are outside tensor {}",
                    buf.len(),
                    self.info.name
                ),
            )));
        }
        Ok(self.source.read_at(self.info.offset + start, buf)?)
    }
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Dimensions in row-major order (outermost first), as candle and most code expect.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF header. Tensor data stays in the source until asked for.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset where tensor data starts.
    pub data_offset: u64,
    pub file_len: u64,
}

impl GgufFile {
    pub fn read(source: &dyn ByteSource) -> Result<Self, GgufError> {
        let mut r = Cursor::new(source);
        let magic = r.u32()?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = r.u32()?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        // Each tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes,
        // each key-value at least 8 (key length) + 4 (type) + 1.
        r.check_count("tensor count", n_tensors, 24)?;
        r.check_count("metadata key count", n_kv, 13)?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let value_type = r.value_type()?;
            let value = r.value(value_type, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::DuplicateKey(key));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                Some(a) => return Err(GgufError::BadAlignment(a)),
                None => {
                    return Err(GgufError::WrongValueType {
                        key: "general.alignment".into(),
                        found: v.value_type(),
                        expected: "unsigned integer",
                    })
                }
            },
        };

        let mut raw_tensors = Vec::with_capacity(n_tensors.min(4096) as usize);
        let mut names = HashSet::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims > 4 {
                return Err(GgufError::TooManyDims { name, n_dims });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let type_id = r.u32()?;
            let offset = r.u64()?;
            if !names.insert(name.clone()) {
                return Err(GgufError::DuplicateTensor(name));
            }
            raw_tensors.push((name, dims, type_id, offset));
        }

        let data_offset = r.pos.div_ceil(alignment) * alignment;
        let file_len = source.len();
        let mut tensors = Vec::with_capacity(raw_tensors.len());
        for (name, dims, type_id, rel_offset) in raw_tensors {
            let Some(dtype) = GgmlType::from_id(type_id) else {
                return Err(GgufError::UnsupportedTensorType {
                    type_name: GgmlType::name_of_id(type_id),
                    name,
                    type_id,
                });
            };
            let n_elements = tensor_elements(&name, &dims)?;
            let Some(n_bytes) = dtype.bytes_for(n_elements) else {
                return Err(GgufError::BadTensorShape {
                    name,
                    dims,
                    why: "rows do not fill whole quantization blocks",
                });
            };
            if dims
                .first()
                .is_some_and(|&cols| cols % dtype.block_len() as u64 != 0)
            {
                return Err(GgufError::BadTensorShape {
                    name,
                    dims,
                    why: "rows do not fill whole quantization blocks",
                });
            }
            if rel_offset % alignment != 0 {
                return Err(GgufError::MisalignedTensor {
                    name,
                    offset: rel_offset,
                    alignment,
                });
            }
            let start = data_offset.checked_add(rel_offset);
            let end = start.and_then(|s| s.checked_add(n_bytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                    name,
                    dims,
                    dtype,
                    offset: start,
                    n_bytes,
                }),
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        name,
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    })
                }
            }
        }

        Ok(Self {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_len,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))
    }

    /// Reads one tensor's bytes from the source (its size was bounded by the file length at parse).
    pub fn tensor_bytes(
        &self,
        source: &dyn ByteSource,
        info: &TensorInfo,
    ) -> Result<Vec<u8>, GgufError> {
        let mut bytes = vec![0u8; info.n_bytes as usize];
        source.read_at(info.offset, &mut bytes)?;
        Ok(bytes)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get(key)
            .map(|v| v.as_u64().ok_or_else(|| wrong(key, v, "unsigned integer")))
            .transpose()
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| wrong(key, v, "number")))
            .transpose()
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| wrong(key, v, "string")))
            .transpose()
    }

    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_str(key)?
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&[Value]>, GgufError> {
        self.get(key)
            .map(|v| v.as_array().ok_or_else(|| wrong(key, v, "array")))
            .transpose()
    }

    /// An array of strings (a vocabulary, merges).
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let Some(values) = self.get_array(key)? else {
            return Ok(None);
        };
        values
            .iter()
            .map(|v| v.as_str().ok_or_else(|| wrong(key, v, "array of strings")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The architecture prefix for model keys (`llama` for Ministral and SmolLM2).
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.require_str("general.architecture")
    }
}

fn wrong(key: &str, v: &Value, expected: &'static str) -> GgufError {
    GgufError::WrongValueType {
        key: key.to_string(),
        found: v.value_type(),
        expected,
    }
}

fn tensor_elements(name: &str, dims: &[u64]) -> Result<u64, GgufError> {
    if dims.contains(&0) {
        return Err(GgufError::BadTensorShape {
            name: name.to_string(),
            dims: dims.to_vec(),
            why: "a dimension is zero",
        });
    }
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| GgufError::BadTensorShape {
            name: name.to_string(),
            dims: dims.to_vec(),
            why: "element count overflows",
        })
}

/// Sequential reads over a `ByteSource`, through a small buffer.
struct Cursor<'a> {
    source: &'a dyn ByteSource,
    len: u64,
    /// Absolute position of the next byte to hand out.
    pos: u64,
    buf: Vec<u8>,
    /// Absolute offset of `buf[0]`.
    buf_start: u64,
    /// Metadata array items read so far (bounded by `MAX_METADATA_ARRAY_ITEMS`).
    array_items: u64,
    /// String bytes read so far (bounded by `MAX_METADATA_STRING_BYTES`).
    string_bytes: u64,
}

impl<'a> Cursor<'a> {
    fn new(source: &'a dyn ByteSource) -> Self {
        Self {
            source,
            len: source.len(),
            pos: 0,
            buf: Vec::new(),
            buf_start: 0,
            array_items: 0,
            string_bytes: 0,
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn check_count(&self, what: &'static str, count: u64, min_each: u64) -> Result<(), GgufError> {
        let max = self.remaining() / min_each;
        if count > max {
            return Err(GgufError::CountTooLarge { what, count, max });
        }
        Ok(())
    }

    fn truncated(&self, needed: u64) -> GgufError {
        GgufError::TruncatedHeader {
            offset: self.pos,
            needed,
            file_len: self.len,
        }
    }

    /// Copies `out.len()` bytes from the current position.
    fn bytes(&mut self, out: &mut [u8]) -> Result<(), GgufError> {
        let n = out.len() as u64;
        if n > self.remaining() {
            return Err(self.truncated(n));
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos + n > buf_end {
            if out.len() > CHUNK {
                self.source.read_at(self.pos, out)?;
                self.pos += n;
                return Ok(());
            }
            let fill = (CHUNK as u64).min(self.remaining()) as usize;
            self.buf.resize(fill, 0);
            self.source.read_at(self.pos, &mut self.buf)?;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        out.copy_from_slice(&self.buf[at..at + out.len()]);
        self.pos += n;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        self.bytes(&mut a)?;
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let offset = self.pos;
        let len = self.u64()?;
        if len > self.remaining() {
            return Err(self.truncated(len));
        }
        if len > MAX_STRING_LEN {
            return Err(GgufError::StringTooLong { offset, len });
        }
        self.string_bytes = self.string_bytes.saturating_add(len);
        if self.string_bytes > MAX_METADATA_STRING_BYTES {
            return Err(GgufError::CountTooLarge {
                what: "bytes of header strings in total",
                count: self.string_bytes,
                max: MAX_METADATA_STRING_BYTES,
            });
        }
        let mut bytes = vec![0u8; len as usize];
        self.bytes(&mut bytes)?;
        String::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { offset })
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let id = self.u32()?;
        ValueType::from_id(id).ok_or(GgufError::UnknownValueType(id))
    }

    fn value(&mut self, value_type: ValueType, depth: u32) -> Result<Value, GgufError> {
        Ok(match value_type {
            ValueType::U8 => Value::U8(self.array::<1>()?[0]),
            ValueType::I8 => Value::I8(self.array::<1>()?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            ValueType::Bool => Value::Bool(self.array::<1>()?[0] != 0),
            ValueType::String => Value::String(self.string()?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufError::NestingTooDeep);
                }
                let item_type = self.value_type()?;
                let count = self.u64()?;
                self.check_count("array length", count, item_type.min_size())?;
                self.array_items = self.array_items.saturating_add(count);
                if self.array_items > MAX_METADATA_ARRAY_ITEMS {
                    return Err(GgufError::CountTooLarge {
                        what: "metadata array items in total",
                        count: self.array_items,
                        max: MAX_METADATA_ARRAY_ITEMS,
                    });
                }
                let mut items = Vec::with_capacity(count.min(1 << 16) as usize);
                for _ in 0..count {
                    items.push(self.value(item_type, depth + 1)?);
                }
                Value::Array(items)
            }
        })
    }
}
