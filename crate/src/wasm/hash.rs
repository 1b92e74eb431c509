//! SHA-256 in pieces, for the integrity check of a model downloaded in parallel ranges (Web
//! Crypto's `digest` only hashes a whole buffer at once).

use sha2::Digest;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
#[derive(Default)]
pub struct Sha256(sha2::Sha256);

#[wasm_bindgen]
impl Sha256 {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest as lowercase hex; the hasher starts over.
    pub fn finish(&mut self) -> String {
        self.0
            .finalize_reset()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
