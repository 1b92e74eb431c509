//! edgechat: llama-architecture GGUF inference for the browser (WebGPU, wasm) and native.

pub mod backend;
pub mod bench;
pub mod chat;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hybrid;
pub mod model;
pub mod openai;
pub mod sampling;
pub mod session;
pub mod tokenizer;

pub use error::{Error, Result};

/// The browser build's JavaScript interface (wasm-bindgen).
#[cfg(target_arch = "wasm32")]
pub mod wasm;
