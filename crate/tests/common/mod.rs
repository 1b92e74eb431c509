//! Shared helpers for integration tests.
#![allow(dead_code)]

pub mod quantized;

use std::path::{Path, PathBuf};

use edgechat::gguf::{FileSource, GgufFile, Value};

/// Largest |a − b| over the pairs, infinite when either side holds a NaN: `f64::max` drops a NaN,
/// so without this an all-NaN output would pass as a perfect match.
pub fn max_abs_diff<A: Into<f64> + Copy, B: Into<f64> + Copy>(a: &[A], b: &[B]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared vectors differ in length");
    a.iter().zip(b).fold(0f64, |max, (&x, &y)| {
        let d = (x.into() - y.into()).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            max.max(d)
        }
    })
}

pub const SMOLLM2: &str = "smollm2-135m-instruct-q4_1.gguf";
pub const TINY_MISTRAL: &str = "tiny-mistral.gguf";

/// The workspace root (the crate's parent directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A test model under `models/`; fails with the command that creates it when it is missing.
pub fn model_path(name: &str) -> PathBuf {
    let path = repo_root().join("models").join(name);
    assert!(
        path.exists(),
        "test model {} is missing: run scripts/models",
        path.display()
    );
    path
}

/// A data file (such as a tekken JSON) from `models/`, else from anywhere under `.venv-models/`
/// (mistral-common ships them there); fails with the command that creates them when missing.
pub fn find_in_models_or_venv(name: &str) -> PathBuf {
    let root = repo_root();
    Some(root.join("models").join(name))
        .filter(|p| p.exists())
        .or_else(|| find_under(&root.join(".venv-models"), name))
        .unwrap_or_else(|| {
            panic!("{name} not found under models/ or .venv-models/: run scripts/models")
        })
}

/// The first file called `name` in the tree under `dir`.
fn find_under(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_under(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

/// A tekken JSON from models/ or anywhere under .venv-models/ (mistral-common ships them).
pub fn tekken_json(name: &str) -> Vec<u8> {
    std::fs::read(find_in_models_or_venv(name)).unwrap()
}

/// The parsed header of a test model.
pub fn read_gguf(name: &str) -> GgufFile {
    let source = FileSource::open(model_path(name)).unwrap();
    GgufFile::read(&source).unwrap()
}

/// A header with only these metadata keys and no tensors.
pub fn metadata_only(pairs: &[(&str, Value)]) -> GgufFile {
    GgufFile {
        version: 3,
        metadata: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        tensors: Vec::new(),
        alignment: 32,
        data_offset: 0,
        file_len: 0,
    }
}
