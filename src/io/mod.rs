//! Reading models: weights (safetensors), configs, tokenizers.

pub mod config;
pub mod tokenizer;
pub mod weights;

pub use weights::{Vb, Weights};
