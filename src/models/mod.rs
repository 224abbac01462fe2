//! One file per architecture, written once against `Tensor`.

pub mod blip;
pub mod clip;
pub mod clip_vision;
pub mod git;
pub mod gpt2;
pub mod idefics3;
pub mod llama;
pub mod vision_encoder_decoder;
pub mod vit;
