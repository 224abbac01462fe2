//! Reading models: weights (safetensors, GGUF), configs, tokenizers.

pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod files;
pub mod gguf;
pub mod pickle;
pub mod stream;
pub mod tokenizer;
pub mod torch;
pub mod weights;

pub use weights::{Vb, Weights};
