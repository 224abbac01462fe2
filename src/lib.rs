//! glimpse: vision-language models in the browser and natively. Our own WGSL kernels on
//! WebGPU / Vulkan / Metal / DX12 through wgpu, with candle-core as the CPU path.
//! See DESIGN.md in the project's shared notes and docs/ for the layers.

// On wasm32 wgpu's handles are neither Send nor Sync (the browser's WebGPU objects live on one
// thread), while natively the same `Arc`s are shared across threads; one type serves both.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod bench;
mod cpu;
pub mod error;
pub mod eval;
// entry points of the fuzz targets in fuzz/ and of tests/fuzz_regressions.rs
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod gpu;
pub mod image;
pub mod io;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod rng;
pub mod scenes;
pub mod selfcheck;
#[cfg(not(target_arch = "wasm32"))]
pub mod soak;
pub mod tensor;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
pub use gpu::{GpuContext, GpuOptions};
pub use tensor::{AttentionOpts, DType, Device, Tensor};
