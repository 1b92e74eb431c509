//! Shared helpers for integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub const SMOLLM2: &str = "smollm2-135m-instruct-q4_1.gguf";
pub const TINY_MISTRAL: &str = "tiny-mistral.gguf";

/// A test model under `models/`; fails with the command that creates it when it is missing.
pub fn model_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("models").join(name);
    assert!(path.exists(), "test model {} is missing: run scripts/models", path.display());
    path
}
