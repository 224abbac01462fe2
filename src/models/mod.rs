//! One file per architecture, written once against `Tensor`.

pub mod clip;
pub mod clip_vision;
pub mod git;
