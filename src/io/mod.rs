//! Reading models: weights (safetensors, GGUF), configs, tokenizers.

pub mod config;
pub mod gguf;
pub mod tokenizer;
pub mod weights;

pub use weights::{Vb, Weights};
