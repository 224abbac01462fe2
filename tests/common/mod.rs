//! Shared by the integration tests: one GPU context for the whole test binary (lavapipe in CI),
//! and comparison helpers that report the worst element.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use glimpse::{Device, GpuContext, GpuOptions, Tensor};

pub fn gpu() -> Device {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    let ctx = CTX.get_or_init(|| {
        pollster::block_on(GpuContext::new(&GpuOptions::default())).unwrap_or_else(|e| {
            panic!("GPU tests need an adapter (CI installs lavapipe: mesa-vulkan-drivers): {e}")
        })
    });
    Device::Gpu(ctx.clone())
}

/// A GPU context that allows 128 MiB per storage binding, as phone GPUs do (lavapipe's own limit;
/// a real GPU offers more): weights larger than that must be split across buffers.
pub fn gpu_128mib() -> Device {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    let ctx = CTX.get_or_init(|| {
        let opts = GpuOptions {
            max_storage_buffer_binding_size: Some(128 << 20),
            ..Default::default()
        };
        pollster::block_on(GpuContext::new(&opts)).unwrap_or_else(|e| panic!("GPU: {e}"))
    });
    assert!(ctx.summary().max_storage_buffer_binding_size <= 128 << 20);
    Device::Gpu(ctx.clone())
}

pub fn cpu() -> Device {
    Device::Cpu
}

pub fn both() -> [Device; 2] {
    [cpu(), gpu()]
}

pub fn read(t: &Tensor) -> Vec<f32> {
    pollster::block_on(t.to_vec_f32()).unwrap()
}

pub fn read_u32(t: &Tensor) -> Vec<u32> {
    pollster::block_on(t.to_vec_u32()).unwrap()
}

pub fn t(data: &[f32], shape: &[usize], d: &Device) -> Tensor {
    Tensor::from_f32(data, shape, d).unwrap()
}

/// (max |a - b|, its index); NaN counts as infinitely far.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let mut worst = (0.0f32, 0usize);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d.is_nan() || d > worst.0 {
            worst = (if d.is_nan() { f32::INFINITY } else { d }, i);
        }
    }
    worst
}

/// Asserts every element is within `atol + rtol·|expected|`.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = atol + rtol * w.abs();
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (|diff| {} > tol {tol}); max abs diff over all {:?}",
            (g - w).abs(),
            max_abs_diff(got, want)
        );
    }
}

/// `tests/fixtures/<name>` (made by tools/make_fixtures.py).
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Number(n) => out.push(n.as_f64().unwrap() as f32),
            other => panic!("not a number: {other}"),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}
