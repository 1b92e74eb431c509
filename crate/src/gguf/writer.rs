//! Streaming GGUF v3 writer: the header (metadata and tensor infos) is written first, then each
//! tensor's bytes in the declared order, so a multi-gigabyte model never has to sit in memory.
//!
//! ```text
//! let mut writer = GgufWriter::new(metadata, tensors)?;
//! writer.write_header(&mut out)?;
//! for each tensor, in order: writer.write_tensor_data(&mut out, name, bytes)?   // whole tensor
//!                       or: writer.write_tensor_part(&mut out, name, chunk)?    // piece by piece
//! writer.finish(&mut out)?;
//! ```

use std::collections::HashSet;
use std::io::Write;

use super::types::{GgmlType, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// The GGUF version this writer produces.
pub const GGUF_WRITE_VERSION: u32 = 3;

/// Mistakes in what the caller asked the writer to write.
#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    #[error("I/O error writing the model: {0}")]
    Io(#[from] std::io::Error),
    #[error("duplicate metadata key `{0}`")]
    DuplicateKey(String),
    #[error("duplicate tensor `{0}`")]
    DuplicateTensor(String),
    #[error("general.alignment must be a power of two stored as an unsigned integer")]
    BadAlignment,
    #[error("metadata array `{key}` mixes value types {first:?} and {other:?}")]
    MixedArray {
        key: String,
        first: ValueType,
        other: ValueType,
    },
    #[error("tensor `{name}` has a bad shape {dims:?}: {why}")]
    BadTensorShape {
        name: String,
        dims: Vec<u64>,
        why: &'static str,
    },
    #[error("{0}")]
    Order(String),
}

impl From<GgufWriteError> for crate::Error {
    fn from(e: GgufWriteError) -> Self {
        match e {
            GgufWriteError::Io(io) => crate::Error::Io(io),
            other => crate::Error::Model(format!("GGUF writer: {other}")),
        }
    }
}

/// One tensor as the header declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    pub name: String,
    /// Dimensions in ggml order (`dims[0]` is the contiguous one).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset from the start of the tensor-data section (a multiple of the alignment).
    pub offset: u64,
    pub n_bytes: u64,
}

/// Where the writer is in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    /// Writing tensor `index`; `written` of its bytes are out.
    Data {
        index: usize,
        written: u64,
    },
    Finished,
}

/// A GGUF file being written; see the module docs for the call order.
#[derive(Debug)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PlannedTensor>,
    alignment: u64,
    stage: Stage,
    /// Bytes written so far (for padding).
    position: u64,
}

impl GgufWriter {
    /// Plans a file. `tensors` are `(name, dims in ggml order, type)`, written in this order.
    /// `general.alignment` is added (as 32) when the metadata does not set it.
    pub fn new(
        mut metadata: Vec<(String, Value)>,
        tensors: Vec<(String, Vec<u64>, GgmlType)>,
    ) -> Result<Self, GgufWriteError> {
        let mut keys = HashSet::new();
        for (key, value) in &metadata {
            if !keys.insert(key.as_str()) {
                return Err(GgufWriteError::DuplicateKey(key.clone()));
            }
            check_array_types(key, value)?;
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, value)) => match value {
                Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) => value
                    .as_u64()
                    .filter(|a| *a > 0 && a.is_power_of_two())
                    .ok_or(GgufWriteError::BadAlignment)?,
                _ => return Err(GgufWriteError::BadAlignment),
            },
            None => {
                metadata.push((
                    "general.alignment".to_string(),
                    Value::U32(DEFAULT_ALIGNMENT as u32),
                ));
                DEFAULT_ALIGNMENT
            }
        };

        let mut names = HashSet::new();
        let mut planned = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for (name, dims, dtype) in tensors {
            if !names.insert(name.clone()) {
                return Err(GgufWriteError::DuplicateTensor(name));
            }
            let n_bytes = tensor_bytes(&name, &dims, dtype)?;
            planned.push(PlannedTensor {
                name,
                dims,
                dtype,
                offset,
                n_bytes,
            });
            offset = align(offset + n_bytes, alignment);
        }
        Ok(Self {
            metadata,
            tensors: planned,
            alignment,
            stage: Stage::Header,
            position: 0,
        })
    }

    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Writes magic, version, metadata and tensor infos, padded to the alignment.
    pub fn write_header(&mut self, w: &mut impl Write) -> Result<(), GgufWriteError> {
        if self.stage != Stage::Header {
            return Err(GgufWriteError::Order(
                "the header was already written".into(),
            ));
        }
        let mut header = Vec::with_capacity(1 << 16);
        header.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        header.extend_from_slice(&GGUF_WRITE_VERSION.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        // The header is flushed in pieces so a 131072-token vocabulary does not build one big buffer.
        for (key, value) in &self.metadata {
            put_string(&mut header, key);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut header, value, w, &mut self.position)?;
            flush_if_large(&mut header, w, &mut self.position)?;
        }
        for tensor in &self.tensors {
            put_string(&mut header, &tensor.name);
            header.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
            for d in &tensor.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&tensor.dtype.id().to_le_bytes());
            header.extend_from_slice(&tensor.offset.to_le_bytes());
        }
        w.write_all(&header)?;
        self.position += header.len() as u64;
        self.pad(w)?;
        self.stage = self.next_tensor_stage(0);
        Ok(())
    }

    /// Writes all of tensor `name`'s bytes; it must be the next tensor in the declared order.
    pub fn write_tensor_data(
        &mut self,
        w: &mut impl Write,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), GgufWriteError> {
        let (index, written) = self.current(name)?;
        let expected = self.tensors[index].n_bytes;
        if written != 0 || bytes.len() as u64 != expected {
            return Err(GgufWriteError::Order(format!(
                "tensor `{name}` needs {expected} bytes at once, got {} (after {written} already written)",
                bytes.len()
            )));
        }
        self.write_tensor_part(w, name, bytes)
    }

    /// Writes the next piece of tensor `name`. When its last byte is out, the padding follows.
    pub fn write_tensor_part(
        &mut self,
        w: &mut impl Write,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), GgufWriteError> {
        let (index, written) = self.current(name)?;
        let expected = self.tensors[index].n_bytes;
        let total = written + bytes.len() as u64;
        if total > expected {
            return Err(GgufWriteError::Order(format!(
                "tensor `{name}` has {expected} bytes but {total} were written"
            )));
        }
        w.write_all(bytes)?;
        self.position += bytes.len() as u64;
        if total == expected {
            self.pad(w)?;
            self.stage = self.next_tensor_stage(index + 1);
        } else {
            self.stage = Stage::Data {
                index,
                written: total,
            };
        }
        Ok(())
    }

    /// Checks that every tensor was written in full and flushes. Returns the file length.
    pub fn finish(self, w: &mut impl Write) -> Result<u64, GgufWriteError> {
        match self.stage {
            Stage::Finished => {
                w.flush()?;
                Ok(self.position)
            }
            Stage::Header => Err(GgufWriteError::Order(
                "finish before the header was written".into(),
            )),
            Stage::Data { index, written } => Err(GgufWriteError::Order(format!(
                "finish with tensor `{}` at {written} of {} bytes",
                self.tensors[index].name, self.tensors[index].n_bytes
            ))),
        }
    }

    fn next_tensor_stage(&self, index: usize) -> Stage {
        if index < self.tensors.len() {
            Stage::Data { index, written: 0 }
        } else {
            Stage::Finished
        }
    }

    /// The tensor now being written, checked against `name`.
    fn current(&self, name: &str) -> Result<(usize, u64), GgufWriteError> {
        match self.stage {
            Stage::Data { index, written } if self.tensors[index].name == name => {
                Ok((index, written))
            }
            Stage::Data { index, .. } => Err(GgufWriteError::Order(format!(
                "tensor `{name}` written out of order: `{}` comes next",
                self.tensors[index].name
            ))),
            Stage::Header => Err(GgufWriteError::Order(format!(
                "tensor `{name}` written before the header"
            ))),
            Stage::Finished => Err(GgufWriteError::Order(format!(
                "tensor `{name}` written after every declared tensor"
            ))),
        }
    }

    fn pad(&mut self, w: &mut impl Write) -> Result<(), GgufWriteError> {
        let padding = align(self.position, self.alignment) - self.position;
        const ZEROS: [u8; 64] = [0; 64];
        let mut left = padding;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            w.write_all(&ZEROS[..n])?;
            left -= n as u64;
        }
        self.position += padding;
        Ok(())
    }
}

fn align(offset: u64, alignment: u64) -> u64 {
    offset.div_ceil(alignment) * alignment
}

fn tensor_bytes(name: &str, dims: &[u64], dtype: GgmlType) -> Result<u64, GgufWriteError> {
    let bad = |why| GgufWriteError::BadTensorShape {
        name: name.to_string(),
        dims: dims.to_vec(),
        why,
    };
    if dims.is_empty() || dims.len() > 4 {
        return Err(bad("a tensor has 1 to 4 dimensions"));
    }
    if dims.contains(&0) {
        return Err(bad("a dimension is zero"));
    }
    if !dims[0].is_multiple_of(dtype.block_len() as u64) {
        return Err(bad("rows do not fill whole quantization blocks"));
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or(bad("element count overflows"))?;
    dtype
        .bytes_for(n_elements)
        .ok_or(bad("rows do not fill whole quantization blocks"))
}

/// Arrays hold one value type; nested arrays are checked too.
fn check_array_types(key: &str, value: &Value) -> Result<(), GgufWriteError> {
    if let Value::Array(items) = value {
        if let Some(first) = items.first() {
            let first_type = first.value_type();
            for item in items {
                if item.value_type() != first_type {
                    return Err(GgufWriteError::MixedArray {
                        key: key.to_string(),
                        first: first_type,
                        other: item.value_type(),
                    });
                }
                check_array_types(key, item)?;
            }
        }
    }
    Ok(())
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Large header pieces go out as they fill, to keep the staging buffer small.
fn flush_if_large(
    buf: &mut Vec<u8>,
    w: &mut impl Write,
    position: &mut u64,
) -> std::io::Result<()> {
    if buf.len() >= 1 << 20 {
        w.write_all(buf)?;
        *position += buf.len() as u64;
        buf.clear();
    }
    Ok(())
}

/// Appends a value's payload (its type id is written by the caller).
fn put_value(
    buf: &mut Vec<u8>,
    value: &Value,
    w: &mut impl Write,
    position: &mut u64,
) -> std::io::Result<()> {
    match value {
        Value::U8(v) => buf.push(*v),
        Value::I8(v) => buf.push(*v as u8),
        Value::U16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => buf.push(u8::from(*v)),
        Value::String(s) => put_string(buf, s),
        Value::U64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::Array(items) => {
            // An empty array has no element to take the type from; any type reads back the same.
            let item_type = items.first().map_or(ValueType::U32, Value::value_type);
            buf.extend_from_slice(&item_type.id().to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(buf, item, w, position)?;
                flush_if_large(buf, w, position)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufFile, MemorySource};

    fn all_value_types() -> Vec<(String, Value)> {
        vec![
            ("t.u8".into(), Value::U8(200)),
            ("t.i8".into(), Value::I8(-100)),
            ("t.u16".into(), Value::U16(60_000)),
            ("t.i16".into(), Value::I16(-30_000)),
            ("t.u32".into(), Value::U32(4_000_000_000)),
            ("t.i32".into(), Value::I32(-2_000_000_000)),
            ("t.f32".into(), Value::F32(1.5e-5)),
            ("t.bool".into(), Value::Bool(true)),
            ("t.string".into(), Value::String("héllo [INST]".into())),
            ("t.u64".into(), Value::U64(u64::MAX - 1)),
            ("t.i64".into(), Value::I64(i64::MIN + 1)),
            ("t.f64".into(), Value::F64(-1e100)),
            (
                "t.strings".into(),
                Value::Array(vec![Value::String("a".into()), Value::String("".into())]),
            ),
            (
                "t.ints".into(),
                Value::Array(vec![Value::I32(-1), Value::I32(7)]),
            ),
            (
                "t.floats".into(),
                Value::Array(vec![Value::F32(0.25), Value::F32(-3.0)]),
            ),
            (
                "t.nested".into(),
                Value::Array(vec![Value::Array(vec![Value::U8(1)]), Value::Array(vec![])]),
            ),
            ("t.empty".into(), Value::Array(vec![])),
        ]
    }

    #[test]
    fn round_trips_metadata_and_tensors() {
        let tensors = vec![
            ("a".to_string(), vec![3u64], GgmlType::F32),
            ("b".to_string(), vec![32, 2], GgmlType::Q8_0),
            ("c".to_string(), vec![256], GgmlType::Q4K),
        ];
        let mut writer = GgufWriter::new(all_value_types(), tensors).unwrap();
        let mut out = Vec::new();
        writer.write_header(&mut out).unwrap();
        writer.write_tensor_data(&mut out, "a", &[1u8; 12]).unwrap();
        writer.write_tensor_part(&mut out, "b", &[2u8; 30]).unwrap();
        writer.write_tensor_part(&mut out, "b", &[3u8; 38]).unwrap();
        writer
            .write_tensor_data(&mut out, "c", &[4u8; 144])
            .unwrap();
        let len = writer.finish(&mut out).unwrap();
        assert_eq!(len, out.len() as u64);

        let file = GgufFile::read(&MemorySource::new(out.clone())).unwrap();
        assert_eq!(file.version, 3);
        for (key, value) in all_value_types() {
            assert_eq!(file.get(&key), Some(&value), "{key}");
        }
        assert_eq!(file.get_u64("general.alignment").unwrap(), Some(32));
        let b = file.tensor("b").unwrap();
        assert_eq!(b.offset % 32, 0);
        assert_eq!(&out[b.offset as usize..][..30], &[2u8; 30]);
        assert_eq!(&out[b.offset as usize + 30..][..38], &[3u8; 38]);
        let c = file.tensor("c").unwrap();
        assert_eq!(c.n_bytes, 144);
        assert_eq!(&out[c.offset as usize..][..144], &[4u8; 144]);
    }

    #[test]
    fn rejects_misuse() {
        assert!(matches!(
            GgufWriter::new(
                vec![("k".into(), Value::U8(1)), ("k".into(), Value::U8(2))],
                vec![]
            ),
            Err(GgufWriteError::DuplicateKey(_))
        ));
        assert!(matches!(
            GgufWriter::new(
                vec![("k".into(), Value::Array(vec![Value::U8(1), Value::I8(2)]))],
                vec![]
            ),
            Err(GgufWriteError::MixedArray { .. })
        ));
        assert!(matches!(
            GgufWriter::new(vec![], vec![("q".into(), vec![100, 2], GgmlType::Q4K)]),
            Err(GgufWriteError::BadTensorShape { .. })
        ));
        let tensors = vec![
            ("a".to_string(), vec![4u64], GgmlType::F32),
            ("b".to_string(), vec![4], GgmlType::F32),
        ];
        let mut writer = GgufWriter::new(vec![], tensors).unwrap();
        let mut out = Vec::new();
        assert!(
            writer.write_tensor_data(&mut out, "a", &[0; 16]).is_err(),
            "before the header"
        );
        writer.write_header(&mut out).unwrap();
        assert!(
            writer.write_tensor_data(&mut out, "b", &[0; 16]).is_err(),
            "out of order"
        );
        assert!(
            writer.write_tensor_data(&mut out, "a", &[0; 15]).is_err(),
            "wrong size"
        );
        writer.write_tensor_data(&mut out, "a", &[0; 16]).unwrap();
        assert!(
            writer.write_tensor_part(&mut out, "b", &[0; 17]).is_err(),
            "too long"
        );
        writer.write_tensor_part(&mut out, "b", &[0; 8]).unwrap();
        assert!(writer.finish(&mut out).is_err(), "unfinished tensor");
    }
}
