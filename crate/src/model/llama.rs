//! (being written)
pub struct Llama;
