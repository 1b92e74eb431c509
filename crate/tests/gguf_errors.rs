//! Broken and hostile GGUF files, crafted byte by byte: each must give its exact, typed error,
//! fast and without a big allocation, and never a panic.

use edgechat::gguf::{GgmlType, GgufError, GgufFile, MemorySource, Value};
use edgechat::model::LlamaConfig;
use edgechat::Error;

// ---------------------------------------------------------------------------------------------
// A tiny GGUF writer: every field is written explicitly so tests can break any one of them.

const F32: u32 = 0;
const TYPE_U32: u32 = 4;
const TYPE_F32: u32 = 6;
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;
const TYPE_U64: u32 = 10;

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s);
}

struct Builder {
    magic: [u8; 4],
    version: u32,
    /// Counts written in the header; `None` = the real number of entries.
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    kvs: Vec<u8>,
    kv_count: u64,
    infos: Vec<u8>,
    info_count: u64,
    data: Vec<u8>,
    alignment: usize,
}

impl Builder {
    fn new() -> Self {
        Self {
            magic: *b"GGUF",
            version: 3,
            n_tensors: None,
            n_kv: None,
            kvs: Vec::new(),
            kv_count: 0,
            infos: Vec::new(),
            info_count: 0,
            data: Vec::new(),
            alignment: 32,
        }
    }

    /// A key-value pair with the value already encoded (type id, then bytes).
    fn kv_raw(mut self, key: &[u8], type_id: u32, value: &[u8]) -> Self {
        put_str(&mut self.kvs, key);
        put_u32(&mut self.kvs, type_id);
        self.kvs.extend_from_slice(value);
        self.kv_count += 1;
        self
    }

    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.kv_raw(key.as_bytes(), TYPE_U32, &v.to_le_bytes())
    }

    fn kv_u64(self, key: &str, v: u64) -> Self {
        self.kv_raw(key.as_bytes(), TYPE_U64, &v.to_le_bytes())
    }

    fn kv_f32(self, key: &str, v: f32) -> Self {
        self.kv_raw(key.as_bytes(), TYPE_F32, &v.to_le_bytes())
    }

    fn kv_str(self, key: &str, v: &str) -> Self {
        let mut value = Vec::new();
        put_str(&mut value, v.as_bytes());
        self.kv_raw(key.as_bytes(), TYPE_STRING, &value)
    }

    fn kv_str_array(self, key: &str, items: &[&str]) -> Self {
        let mut value = Vec::new();
        put_u32(&mut value, TYPE_STRING);
        put_u64(&mut value, items.len() as u64);
        for item in items {
            put_str(&mut value, item.as_bytes());
        }
        self.kv_raw(key.as_bytes(), TYPE_ARRAY, &value)
    }

    /// A tensor info only: name, dims, type and relative offset exactly as given.
    fn tensor_info(mut self, name: &[u8], dims: &[u64], type_id: u32, offset: u64) -> Self {
        put_str(&mut self.infos, name);
        put_u32(&mut self.infos, dims.len() as u32);
        for &d in dims {
            put_u64(&mut self.infos, d);
        }
        put_u32(&mut self.infos, type_id);
        put_u64(&mut self.infos, offset);
        self.info_count += 1;
        self
    }

    /// An F32 tensor with its data, placed at the next aligned offset.
    fn tensor_f32(mut self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        assert_eq!(
            dims.iter().product::<u64>() as usize,
            values.len(),
            "test bug: {name}"
        );
        self.pad_data();
        let offset = self.data.len() as u64;
        for v in values {
            self.data.extend_from_slice(&v.to_le_bytes());
        }
        self.tensor_info(name.as_bytes(), dims, F32, offset)
    }

    fn pad_data(&mut self) {
        self.data
            .resize(self.data.len().next_multiple_of(self.alignment), 0);
    }

    fn header_and_infos(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        put_u32(&mut out, self.version);
        put_u64(&mut out, self.n_tensors.unwrap_or(self.info_count));
        put_u64(&mut out, self.n_kv.unwrap_or(self.kv_count));
        out.extend_from_slice(&self.kvs);
        out.extend_from_slice(&self.infos);
        out
    }

    fn build(&self) -> Vec<u8> {
        let mut out = self.header_and_infos();
        if !self.data.is_empty() {
            out.resize(out.len().next_multiple_of(self.alignment), 0);
            out.extend_from_slice(&self.data);
        }
        out
    }
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::read(&MemorySource::new(bytes))
}

fn parse_err(bytes: Vec<u8>) -> GgufError {
    match parse(bytes) {
        Ok(file) => panic!("expected an error, the file parsed: {file:?}"),
        Err(e) => e,
    }
}

/// A small valid file: a few keys of different types and two F32 tensors.
fn small_valid() -> Builder {
    Builder::new()
        .kv_str("general.architecture", "llama")
        .kv_u32("some.u32", 7)
        .kv_f32("some.f32", 0.5)
        .kv_str_array("some.strings", &["a", "bc", ""])
        .tensor_f32("first", &[4], &[1.0, 2.0, 3.0, 4.0])
        .tensor_f32("second", &[2, 3], &[0.0; 6])
}

// ---------------------------------------------------------------------------------------------
// Header

#[test]
fn a_small_valid_file_parses() {
    let bytes = small_valid().build();
    let file = parse(bytes.clone()).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.get_str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(file.get_u64("some.u32").unwrap(), Some(7));
    assert_eq!(file.get_f64("some.f32").unwrap(), Some(0.5));
    assert_eq!(
        file.get_str_array("some.strings").unwrap(),
        Some(vec!["a", "bc", ""])
    );
    assert_eq!(file.tensors.len(), 2);
    let first = file.tensor("first").unwrap();
    assert_eq!((first.dtype, first.n_bytes), (GgmlType::F32, 16));
    assert_eq!(file.data_offset % 32, 0);
    let source = MemorySource::new(bytes);
    let data = file.tensor_bytes(&source, first).unwrap();
    assert_eq!(&data[4..8], &2.0f32.to_le_bytes());
    let second = file.tensor("second").unwrap();
    assert_eq!(second.offset, file.data_offset + 32);
    assert_eq!(second.shape(), vec![3, 2]);
}

#[test]
fn version_2_parses() {
    let mut b = small_valid();
    b.version = 2;
    assert_eq!(parse(b.build()).unwrap().version, 2);
}

#[test]
fn bad_magic() {
    let mut b = small_valid();
    b.magic = *b"GGJT";
    match parse_err(b.build()) {
        GgufError::BadMagic { found } => assert_eq!(found, u32::from_le_bytes(*b"GGJT")),
        e => panic!("wrong error: {e:?}"),
    }
    // A text file, and all zeros.
    assert!(matches!(
        parse_err(b"hello world, not a model".to_vec()),
        GgufError::BadMagic { .. }
    ));
    assert!(matches!(
        parse_err(vec![0; 64]),
        GgufError::BadMagic { found: 0 }
    ));
}

#[test]
fn unsupported_versions() {
    for version in [0, 1, 4, u32::MAX] {
        let mut b = small_valid();
        b.version = version;
        match parse_err(b.build()) {
            GgufError::UnsupportedVersion(v) => assert_eq!(v, version),
            e => panic!("version {version}: wrong error {e:?}"),
        }
    }
}

#[test]
fn truncated_header_at_several_points() {
    let key = "general.a_rather_long_key_so_that_cuts_can_land_inside_it";
    let b = Builder::new()
        .kv_str(key, &"x".repeat(100))
        .tensor_info(b"t", &[4], F32, 0);
    let full = b.header_and_infos();
    // Inside the magic, the version, the tensor count, the kv count.
    for cut in [0, 2, 4, 6, 8, 15, 16, 23] {
        match parse_err(full[..cut].to_vec()) {
            GgufError::TruncatedHeader { file_len, .. } => assert_eq!(file_len, cut as u64),
            e => panic!("cut at {cut}: wrong error {e:?}"),
        }
    }
    // Right after the counts, the rest cannot hold one tensor info (24 bytes at least) plus one
    // key-value (13): the counts are rejected before anything is read.
    for cut in [24, 28, 40] {
        match parse_err(full[..cut].to_vec()) {
            GgufError::CountTooLarge { what, count, .. } => {
                assert_eq!((what, count), ("tensor count", 1))
            }
            e => panic!("cut at {cut}: wrong error {e:?}"),
        }
    }
    // Inside the key, the value type, the value string, the tensor name, dims, type, offset.
    let key_start = 24;
    let value_start = key_start + 8 + key.len() + 4;
    let info_start = value_start + 8 + 100;
    for cut in [
        key_start + 40,
        value_start - 2,
        value_start + 4,
        value_start + 50,
        info_start + 3,
        info_start + 9,
        info_start + 15,
        info_start + 25,
        full.len() - 1,
    ] {
        match parse_err(full[..cut].to_vec()) {
            GgufError::TruncatedHeader { .. } => {}
            e => panic!("cut at {cut} of {}: wrong error {e:?}", full.len()),
        }
    }
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let full = small_valid().build();
    assert!(parse(full.clone()).is_ok());
    for cut in 0..full.len() {
        if let Ok(file) = parse(full[..cut].to_vec()) {
            panic!("file cut at {cut} of {} bytes parsed: {file:?}", full.len());
        }
    }
}

#[test]
fn corrupting_any_byte_never_panics() {
    let full = small_valid().build();
    for i in 0..full.len() {
        for flip in [0xff, 0x80, 0x01] {
            let mut bytes = full.clone();
            bytes[i] ^= flip;
            if let Ok(file) = parse(bytes) {
                // Parsed files must still be safe to interpret.
                let _ = LlamaConfig::from_gguf(&file);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Counts and lengths that do not fit the file must fail before any allocation.

#[test]
fn huge_tensor_count() {
    for count in [u64::MAX, 1 << 40, 1000] {
        let mut b = small_valid();
        b.n_tensors = Some(count);
        match parse_err(b.build()) {
            GgufError::CountTooLarge { what, count: c, .. } => {
                assert_eq!((what, c), ("tensor count", count))
            }
            e => panic!("{count}: wrong error {e:?}"),
        }
    }
}

#[test]
fn huge_kv_count() {
    for count in [u64::MAX, 1 << 40] {
        let mut b = small_valid();
        b.n_kv = Some(count);
        match parse_err(b.build()) {
            GgufError::CountTooLarge { what, count: c, .. } => {
                assert_eq!((what, c), ("metadata key count", count))
            }
            e => panic!("{count}: wrong error {e:?}"),
        }
    }
}

/// Arrays that each fit in the file but together would expand 32-fold in memory (one `Value`
/// per byte-sized item): the reader stops at 4 Mi items in total.
#[test]
fn too_many_metadata_array_items_in_total() {
    let mut b = Builder::new();
    for i in 0..3 {
        let mut value = Vec::new();
        put_u32(&mut value, 0); // u8 items
        put_u64(&mut value, 1_500_000);
        value.resize(value.len() + 1_500_000, 7);
        b = b.kv_raw(format!("test.bytes.{i}").as_bytes(), TYPE_ARRAY, &value);
    }
    match parse_err(b.build()) {
        GgufError::CountTooLarge { what, max, .. } => {
            assert_eq!((what, max), ("metadata array items in total", 1 << 22))
        }
        e => panic!("wrong error {e:?}"),
    }
}

#[test]
fn huge_array_length() {
    for len in [u64::MAX, 1 << 40] {
        for item_type in [0u32, TYPE_U64, TYPE_STRING, TYPE_ARRAY] {
            let mut value = Vec::new();
            put_u32(&mut value, item_type);
            put_u64(&mut value, len);
            value.extend_from_slice(&[0; 64]);
            let b = Builder::new().kv_raw(b"tokenizer.ggml.tokens", TYPE_ARRAY, &value);
            match parse_err(b.build()) {
                GgufError::CountTooLarge { what, count, .. } => {
                    assert_eq!((what, count), ("array length", len))
                }
                e => panic!("len {len} of type {item_type}: wrong error {e:?}"),
            }
        }
    }
}

#[test]
fn huge_string_lengths() {
    for len in [u64::MAX, 1 << 40] {
        // As a key.
        let mut kvs = Vec::new();
        put_u64(&mut kvs, len);
        kvs.extend_from_slice(b"general.name");
        let mut b = Builder::new();
        b.kvs = kvs;
        b.kv_count = 1;
        assert!(
            matches!(parse_err(b.build()), GgufError::TruncatedHeader { needed, .. } if needed == len)
        );

        // As a value.
        let mut value = Vec::new();
        put_u64(&mut value, len);
        value.extend_from_slice(b"short");
        let b = Builder::new().kv_raw(b"general.name", TYPE_STRING, &value);
        assert!(
            matches!(parse_err(b.build()), GgufError::TruncatedHeader { needed, .. } if needed == len)
        );

        // As a tensor name.
        let mut b = Builder::new();
        put_u64(&mut b.infos, len);
        b.infos.extend_from_slice(&[0; 40]);
        b.info_count = 1;
        assert!(
            matches!(parse_err(b.build()), GgufError::TruncatedHeader { needed, .. } if needed == len)
        );
    }
}

#[test]
fn a_string_longer_than_any_real_one_is_rejected_even_when_the_file_holds_it() {
    // 16 MiB is the limit; the bytes are really there, so this is not a truncation.
    let len = (16 << 20) + 1;
    let mut value = Vec::with_capacity(len + 8);
    put_u64(&mut value, len as u64);
    value.resize(len + 8, b'a');
    let b = Builder::new().kv_raw(b"tokenizer.chat_template", TYPE_STRING, &value);
    match parse_err(b.build()) {
        GgufError::StringTooLong { len: l, .. } => assert_eq!(l, len as u64),
        e => panic!("wrong error {e:?}"),
    }
}

#[test]
fn header_strings_past_64_mib_in_total_are_rejected_even_when_the_file_holds_them() {
    // Five strings of 15 MiB, each under the one-string limit: the header would hold 75 MiB.
    let len = 15 << 20;
    let mut b = Builder::new();
    for i in 0..5 {
        let mut value = Vec::with_capacity(len + 8);
        put_u64(&mut value, len as u64);
        value.resize(len + 8, b'a');
        b = b.kv_raw(format!("test.text.{i}").as_bytes(), TYPE_STRING, &value);
    }
    match parse_err(b.build()) {
        GgufError::CountTooLarge { what, max, .. } => {
            assert_eq!((what, max), ("bytes of header strings in total", 64 << 20))
        }
        e => panic!("wrong error {e:?}"),
    }
}

#[test]
fn deeply_nested_arrays() {
    // Arrays of arrays, nested ten deep, each with one element; the innermost holds one u32.
    let depth = 10;
    let mut value = Vec::new();
    for _ in 0..depth {
        put_u32(&mut value, TYPE_ARRAY);
        put_u64(&mut value, 1);
    }
    put_u32(&mut value, TYPE_U32);
    put_u64(&mut value, 1);
    put_u32(&mut value, 0);
    let b = Builder::new().kv_raw(b"nested", TYPE_ARRAY, &value);
    assert!(matches!(parse_err(b.build()), GgufError::NestingTooDeep));
}

// ---------------------------------------------------------------------------------------------
// Metadata

#[test]
fn duplicate_key() {
    let b = small_valid().kv_u32("some.u32", 8);
    match parse_err(b.build()) {
        GgufError::DuplicateKey(k) => assert_eq!(k, "some.u32"),
        e => panic!("wrong error {e:?}"),
    }
}

#[test]
fn invalid_utf8() {
    // In a key.
    let b = Builder::new().kv_raw(b"bad\xff\xfekey", TYPE_U32, &1u32.to_le_bytes());
    match parse_err(b.build()) {
        GgufError::InvalidUtf8 { offset } => assert_eq!(offset, 24),
        e => panic!("wrong error {e:?}"),
    }
    // In a string value (the offset is where its length starts).
    let mut value = Vec::new();
    put_str(&mut value, b"caf\xc3");
    let b = Builder::new().kv_raw(b"k", TYPE_STRING, &value);
    match parse_err(b.build()) {
        GgufError::InvalidUtf8 { offset } => assert_eq!(offset, 24 + 8 + 1 + 4),
        e => panic!("wrong error {e:?}"),
    }
    // In a tensor name.
    let b = Builder::new().tensor_info(b"\x80tensor", &[4], F32, 0);
    assert!(matches!(
        parse_err(b.build()),
        GgufError::InvalidUtf8 { .. }
    ));
}

#[test]
fn unknown_value_types() {
    for type_id in [13u32, 100, u32::MAX] {
        let b = Builder::new().kv_raw(b"k", type_id, &[0; 16]);
        match parse_err(b.build()) {
            GgufError::UnknownValueType(t) => assert_eq!(t, type_id),
            e => panic!("type {type_id}: wrong error {e:?}"),
        }
        // As an array's item type.
        let mut value = Vec::new();
        put_u32(&mut value, type_id);
        put_u64(&mut value, 1);
        value.extend_from_slice(&[0; 16]);
        let b = Builder::new().kv_raw(b"k", TYPE_ARRAY, &value);
        assert!(matches!(parse_err(b.build()), GgufError::UnknownValueType(t) if t == type_id));
    }
}

#[test]
fn bad_alignment() {
    for alignment in [0u32, 3, 48, 1000] {
        let b = small_valid().kv_u32("general.alignment", alignment);
        match parse_err(b.build()) {
            GgufError::BadAlignment(a) => assert_eq!(a, alignment as u64),
            e => panic!("alignment {alignment}: wrong error {e:?}"),
        }
    }
    let b = small_valid().kv_str("general.alignment", "32");
    assert!(matches!(
        parse_err(b.build()),
        GgufError::WrongValueType { .. }
    ));
}

#[test]
fn a_custom_power_of_two_alignment_is_honoured() {
    let mut b = Builder::new().kv_u32("general.alignment", 64);
    b.alignment = 64;
    let b = b
        .tensor_f32("a", &[3], &[1.0, 2.0, 3.0])
        .tensor_f32("b", &[2], &[5.0, 6.0]);
    let file = parse(b.build()).unwrap();
    assert_eq!(file.alignment, 64);
    assert_eq!(file.data_offset % 64, 0);
    assert_eq!(file.tensor("b").unwrap().offset, file.data_offset + 64);
}

// ---------------------------------------------------------------------------------------------
// Tensor infos

#[test]
fn tensor_outside_the_file() {
    let full = small_valid().build();
    // Cut off the last 4 bytes of the second tensor's data.
    match parse_err(full[..full.len() - 4].to_vec()) {
        GgufError::TensorOutOfBounds {
            name,
            end,
            file_len,
            ..
        } => {
            assert_eq!(name, "second");
            assert_eq!(file_len, full.len() as u64 - 4);
            assert_eq!(end, full.len() as u64);
        }
        e => panic!("wrong error {e:?}"),
    }
    // An offset far past the end, and one where offset + size overflows u64.
    for offset in [1 << 40, u64::MAX - 31] {
        let b = Builder::new().tensor_info(b"far", &[4], F32, offset);
        assert!(
            matches!(parse_err(b.build()), GgufError::TensorOutOfBounds { .. }),
            "offset {offset}"
        );
    }
}

#[test]
fn unsupported_tensor_types() {
    let cases: &[(u32, &str)] = &[
        (6, "Q5_0"),
        (7, "Q5_1"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (16, "IQ (importance) quant"),
        (19, "IQ (importance) quant"),
        (23, "IQ (importance) quant"),
        (29, "IQ1_M"),
        (1000, "unknown"),
    ];
    for &(type_id, type_name) in cases {
        let b = Builder::new().tensor_info(b"w", &[256], type_id, 0);
        match parse_err(b.build()) {
            GgufError::UnsupportedTensorType {
                name,
                type_id: t,
                type_name: n,
            } => {
                assert_eq!((name.as_str(), t, n), ("w", type_id, type_name))
            }
            e => panic!("type {type_id}: wrong error {e:?}"),
        }
    }
}

#[test]
fn misaligned_tensor_offset() {
    let mut b = small_valid();
    let offset = 4;
    b = b.tensor_info(b"odd", &[1], F32, offset);
    match parse_err(b.build()) {
        GgufError::MisalignedTensor {
            name,
            offset: o,
            alignment,
        } => {
            assert_eq!((name.as_str(), o, alignment), ("odd", offset, 32))
        }
        e => panic!("wrong error {e:?}"),
    }
}

#[test]
fn too_many_dims() {
    for n_dims in [5u32, 100, u32::MAX] {
        let mut b = Builder::new();
        put_str(&mut b.infos, b"t");
        put_u32(&mut b.infos, n_dims);
        b.infos.extend_from_slice(&[1; 64]);
        b.info_count = 1;
        match parse_err(b.build()) {
            GgufError::TooManyDims { name, n_dims: n } => {
                assert_eq!((name.as_str(), n), ("t", n_dims))
            }
            e => panic!("{n_dims} dims: wrong error {e:?}"),
        }
    }
}

#[test]
fn zero_dimension() {
    let b = Builder::new().tensor_info(b"t", &[4, 0], F32, 0);
    match parse_err(b.build()) {
        GgufError::BadTensorShape { name, dims, why } => {
            assert_eq!((name.as_str(), dims), ("t", vec![4, 0]));
            assert!(why.contains("zero"), "{why}");
        }
        e => panic!("wrong error {e:?}"),
    }
}

#[test]
fn element_count_overflow() {
    let b = Builder::new().tensor_info(b"t", &[1 << 32, 1 << 32, 1 << 32], F32, 0);
    match parse_err(b.build()) {
        GgufError::BadTensorShape { why, .. } => assert!(why.contains("overflow"), "{why}"),
        e => panic!("wrong error {e:?}"),
    }
    // Elements fit in u64 but the byte size does not: still an error, never a wrap-around.
    let b = Builder::new().tensor_info(b"t", &[1 << 31, 1 << 31, 1 << 1], F32, 0);
    assert!(matches!(
        parse_err(b.build()),
        GgufError::BadTensorShape { .. } | GgufError::TensorOutOfBounds { .. }
    ));
}

#[test]
fn quantized_rows_must_fill_whole_blocks() {
    // Q4_0 blocks hold 32 values: a row of 40 does not fit.
    let b = Builder::new().tensor_info(b"q", &[40, 4], GgmlType::Q4_0.id(), 0);
    assert!(matches!(
        parse_err(b.build()),
        GgufError::BadTensorShape { .. }
    ));
    // Q4_K blocks hold 256.
    let b = Builder::new().tensor_info(b"q", &[128, 2], GgmlType::Q4K.id(), 0);
    assert!(matches!(
        parse_err(b.build()),
        GgufError::BadTensorShape { .. }
    ));
}

#[test]
fn duplicate_tensor() {
    let b = small_valid().tensor_f32("first", &[1], &[0.0]);
    match parse_err(b.build()) {
        GgufError::DuplicateTensor(name) => assert_eq!(name, "first"),
        e => panic!("wrong error {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny llama model: metadata and shapes checked by LlamaConfig and the CPU loader.

const EMBD: u64 = 8;
const HEADS: u64 = 2;
const HEADS_KV: u64 = 1;
const HEAD_DIM: u64 = EMBD / HEADS;
const FFN: u64 = 16;
const VOCAB: u64 = 10;
const CONTEXT: u64 = 32;

fn llama_metadata() -> Builder {
    Builder::new()
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.context_length", CONTEXT as u32)
        .kv_u32("llama.embedding_length", EMBD as u32)
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.feed_forward_length", FFN as u32)
        .kv_u32("llama.attention.head_count", HEADS as u32)
        .kv_u32("llama.attention.head_count_kv", HEADS_KV as u32)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .kv_f32("llama.rope.freq_base", 10000.0)
        .kv_u32("llama.vocab_size", VOCAB as u32)
}

/// The tensors of a one-layer model in ggml order, `[cols, rows]`.
fn llama_tensors() -> Vec<(&'static str, Vec<u64>)> {
    vec![
        ("token_embd.weight", vec![EMBD, VOCAB]),
        ("blk.0.attn_norm.weight", vec![EMBD]),
        ("blk.0.attn_q.weight", vec![EMBD, HEADS * HEAD_DIM]),
        ("blk.0.attn_k.weight", vec![EMBD, HEADS_KV * HEAD_DIM]),
        ("blk.0.attn_v.weight", vec![EMBD, HEADS_KV * HEAD_DIM]),
        ("blk.0.attn_output.weight", vec![HEADS * HEAD_DIM, EMBD]),
        ("blk.0.ffn_norm.weight", vec![EMBD]),
        ("blk.0.ffn_gate.weight", vec![EMBD, FFN]),
        ("blk.0.ffn_up.weight", vec![EMBD, FFN]),
        ("blk.0.ffn_down.weight", vec![FFN, EMBD]),
        ("output_norm.weight", vec![EMBD]),
        ("output.weight", vec![EMBD, VOCAB]),
    ]
}

/// A full tiny model with small deterministic weights, after `edit` changed the tensor list.
fn tiny_llama(edit: impl FnOnce(&mut Vec<(&'static str, Vec<u64>)>)) -> Vec<u8> {
    let mut tensors = llama_tensors();
    edit(&mut tensors);
    let mut b = llama_metadata();
    for (i, (name, dims)) in tensors.iter().enumerate() {
        let n = dims.iter().product::<u64>() as usize;
        let values: Vec<f32> = (0..n)
            .map(|j| (((i * 31 + j * 7) % 13) as f32 - 6.0) * 0.05)
            .collect();
        b = b.tensor_f32(name, dims, &values);
    }
    b.build()
}

fn config_err(b: Builder) -> Error {
    let file = parse(b.build()).expect("the header itself is valid");
    match LlamaConfig::from_gguf(&file) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn tiny_llama_config_reads() {
    let file = parse(tiny_llama(|_| {})).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(config.embedding_length, EMBD as usize);
    assert_eq!(config.head_count_kv, HEADS_KV as usize);
    assert_eq!(config.head_dim, HEAD_DIM as usize);
    assert_eq!(config.vocab_size, VOCAB as usize);
    assert_eq!(config.context_length, CONTEXT as usize);
}

#[test]
fn every_truncation_of_a_tiny_model_is_an_error() {
    let full = tiny_llama(|_| {});
    for cut in 0..full.len() {
        assert!(
            parse(full[..cut].to_vec()).is_err(),
            "model cut at {cut} of {} parsed",
            full.len()
        );
    }
}

#[test]
fn config_missing_keys() {
    let b = Builder::new().kv_u32("llama.embedding_length", 8);
    assert!(
        matches!(config_err(b), Error::Gguf(GgufError::MissingKey(k)) if k == "general.architecture")
    );

    for missing in [
        "llama.embedding_length",
        "llama.block_count",
        "llama.context_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
    ] {
        let mut b = Builder::new();
        for (key, value) in [
            ("llama.context_length", 32),
            ("llama.embedding_length", 8),
            ("llama.block_count", 1),
            ("llama.feed_forward_length", 16),
            ("llama.attention.head_count", 2),
            ("llama.vocab_size", 10),
        ] {
            if key != missing {
                b = b.kv_u32(key, value);
            }
        }
        let b = b.kv_str("general.architecture", "llama");
        match config_err(b) {
            Error::Gguf(GgufError::MissingKey(k)) => assert_eq!(k, missing),
            e => panic!("without {missing}: wrong error {e:?}"),
        }
    }

    // No vocab_size and no token list.
    let b = Builder::new()
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.context_length", 32)
        .kv_u32("llama.embedding_length", 8)
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.feed_forward_length", 16)
        .kv_u32("llama.attention.head_count", 2);
    assert!(
        matches!(config_err(b), Error::Gguf(GgufError::MissingKey(k)) if k == "tokenizer.ggml.tokens")
    );
}

#[test]
fn config_rejects_bad_values() {
    // Another architecture.
    let b = Builder::new().kv_str("general.architecture", "gpt2");
    assert!(matches!(config_err(b), Error::Model(m) if m.contains("gpt2")));

    // A key with the wrong type.
    let b = Builder::new()
        .kv_str("general.architecture", "llama")
        .kv_str("llama.embedding_length", "8");
    assert!(
        matches!(config_err(b), Error::Gguf(GgufError::WrongValueType { key, .. }) if key == "llama.embedding_length")
    );

    // Zero, and absurdly large, values.
    for (key, value) in [
        ("llama.block_count", 0u64),
        ("llama.embedding_length", 0),
        ("llama.attention.head_count", 0),
        ("llama.context_length", 1 << 40),
        ("llama.block_count", u64::MAX),
        ("llama.vocab_size", 1 << 40),
    ] {
        let mut b = Builder::new().kv_str("general.architecture", "llama");
        for (k, v) in [
            ("llama.context_length", 32u64),
            ("llama.embedding_length", 8),
            ("llama.block_count", 1),
            ("llama.feed_forward_length", 16),
            ("llama.attention.head_count", 2),
            ("llama.vocab_size", 10),
        ] {
            b = b.kv_u64(k, if k == key { value } else { v });
        }
        assert!(
            matches!(config_err(b), Error::Model(_)),
            "{key} = {value} was accepted"
        );
    }

    // head_count not a multiple of head_count_kv.
    let mut b = Builder::new().kv_str("general.architecture", "llama");
    for (k, v) in [
        ("llama.context_length", 32u32),
        ("llama.embedding_length", 12),
        ("llama.block_count", 1),
        ("llama.feed_forward_length", 16),
        ("llama.attention.head_count", 3),
        ("llama.attention.head_count_kv", 2),
        ("llama.vocab_size", 10),
    ] {
        b = b.kv_u32(k, v);
    }
    assert!(matches!(config_err(b), Error::Model(m) if m.contains("multiple")));
}

#[test]
fn tokens_array_gives_the_vocab_size_when_the_key_is_absent() {
    let b = Builder::new()
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.context_length", 32)
        .kv_u32("llama.embedding_length", 8)
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.feed_forward_length", 16)
        .kv_u32("llama.attention.head_count", 2)
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "c"]);
    let file = parse(b.build()).unwrap();
    assert_eq!(LlamaConfig::from_gguf(&file).unwrap().vocab_size, 3);
    assert!(matches!(file.get("tokenizer.ggml.tokens"), Some(Value::Array(a)) if a.len() == 3));
}

// ---------------------------------------------------------------------------------------------
// The CPU loader: tensors that do not fit the architecture are clear errors, never panics.

fn load(bytes: Vec<u8>) -> edgechat::Result<Box<dyn edgechat::model::LanguageModel>> {
    let source = MemorySource::new(bytes);
    let file = GgufFile::read(&source)?;
    edgechat::backend::cpu::load_model(&file, &source)
}

fn load_err(bytes: Vec<u8>) -> Error {
    match load(bytes) {
        Ok(_) => panic!("expected the model to be rejected"),
        Err(e) => e,
    }
}

#[test]
fn tiny_llama_loads_and_runs() {
    let mut model = load(tiny_llama(|_| {})).unwrap();
    let logits = model.forward(&[1, 2, 3]).unwrap();
    assert_eq!(logits.len(), VOCAB as usize);
    assert!(logits.iter().all(|v| v.is_finite()));
    assert_eq!(model.cache_len(), 3);
    // Without output.weight the embedding table is the output head.
    let mut tied = load(tiny_llama(|t| {
        t.retain(|(name, _)| *name != "output.weight")
    }))
    .unwrap();
    assert_eq!(tied.forward(&[4]).unwrap().len(), VOCAB as usize);
}

#[test]
fn a_weight_with_the_wrong_shape_is_named() {
    let bytes = tiny_llama(|t| {
        t.iter_mut()
            .find(|(name, _)| *name == "blk.0.attn_q.weight")
            .unwrap()
            .1 = vec![EMBD, HEADS_KV * HEAD_DIM];
    });
    match load_err(bytes) {
        Error::TensorShape {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "blk.0.attn_q.weight");
            assert_eq!(expected, vec![EMBD, HEADS * HEAD_DIM]);
            assert_eq!(found, vec![EMBD, HEADS_KV * HEAD_DIM]);
        }
        e => panic!("wrong error {e:?}"),
    }
    // Transposed matrices, a norm of the wrong length, an embedding table for another vocabulary.
    for (tensor, dims) in [
        ("blk.0.ffn_down.weight", vec![EMBD, FFN]),
        ("blk.0.attn_norm.weight", vec![EMBD + 2]),
        ("token_embd.weight", vec![EMBD, VOCAB + 1]),
        ("output.weight", vec![EMBD, 2, VOCAB]),
    ] {
        let bytes = tiny_llama(|t| {
            t.iter_mut().find(|(name, _)| *name == tensor).unwrap().1 = dims.clone()
        });
        match load_err(bytes) {
            Error::TensorShape { name, found, .. } => {
                assert_eq!((name.as_str(), found), (tensor, dims))
            }
            e => panic!("{tensor}: wrong error {e:?}"),
        }
    }
}

#[test]
fn a_missing_weight_is_named() {
    for missing in [
        "token_embd.weight",
        "blk.0.ffn_down.weight",
        "blk.0.attn_k.weight",
        "output_norm.weight",
    ] {
        let bytes = tiny_llama(|t| t.retain(|(name, _)| *name != missing));
        match load_err(bytes) {
            Error::Gguf(GgufError::MissingTensor(name)) => assert_eq!(name, missing),
            e => panic!("without {missing}: wrong error {e:?}"),
        }
    }
}

#[test]
fn tokens_outside_the_vocabulary_are_an_error() {
    let mut model = load(tiny_llama(|_| {})).unwrap();
    assert!(matches!(
        model.forward(&[VOCAB as u32]),
        Err(Error::TokenOutOfRange { .. })
    ));
    assert_eq!(model.cache_len(), 0);
    assert!(model.forward(&[]).is_err());
}
