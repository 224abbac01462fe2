//! Named kernel checks on seeded inputs. The same case, seed and code run natively and in the
//! browser, so a device's output can be compared with the CPU path's on another machine (the
//! browser test compares WebGPU in Chromium with native candle), and the page runs them at start.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{AttentionOpts, DType, Device, Tensor};

/// The cases, in the order the page shows them.
pub const CASES: &[&str] = &[
    "matmul",
    "linear_q8_0_gemv",
    "linear_q4_0_gemm",
    "linear_f16_gemv",
    "softmax",
    "attention",
    "attention_decode",
    "layer_norm",
    "gelu",
];

/// Every kernel source, for [`fingerprint`].
const KERNEL_SOURCES: &[&str] = &[
    include_str!("gpu/kernels/activation.wgsl"),
    include_str!("gpu/kernels/argmax.wgsl"),
    include_str!("gpu/kernels/attention.wgsl"),
    include_str!("gpu/kernels/binary.wgsl"),
    include_str!("gpu/kernels/copy.wgsl"),
    include_str!("gpu/kernels/embedding.wgsl"),
    include_str!("gpu/kernels/im2col.wgsl"),
    include_str!("gpu/kernels/layer_norm.wgsl"),
    include_str!("gpu/kernels/matmul.wgsl"),
    include_str!("gpu/kernels/qkv.wgsl"),
    include_str!("gpu/kernels/rope.wgsl"),
    include_str!("gpu/kernels/softmax.wgsl"),
    include_str!("gpu/kernels/unary.wgsl"),
];

/// What a self-test result depends on besides the adapter: the kernels' sources, the cases and
/// their tolerances, and this version. The page keeps a passing self-test per adapter under
/// this key, so it runs once per adapter and build rather than at every page load.
pub fn fingerprint() -> String {
    // FNV-1a, 64 bits: a cache key, not a security boundary
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(env!("CARGO_PKG_VERSION").as_bytes());
    for s in KERNEL_SOURCES {
        eat(s.as_bytes());
    }
    for c in CASES {
        eat(c.as_bytes());
        eat(&tolerance(c).to_le_bytes());
    }
    format!("{h:016x}")
}

/// Absolute tolerance of a case when a GPU result is compared with the CPU's.
/// Dot products of length K differ in summation order only (≈ 4·ε·K, see tests/ops.rs);
/// softmax and attention outputs are probabilities / convex combinations of values in [-1, 1].
pub fn tolerance(case: &str) -> f32 {
    match case {
        "matmul" => 4.0 * f32::EPSILON * 257.0,
        "linear_q8_0_gemv" | "linear_f16_gemv" => 4.0 * f32::EPSILON * 768.0,
        "linear_q4_0_gemm" => 4.0 * f32::EPSILON * 256.0,
        "softmax" => 1e-6,
        "attention" | "attention_decode" => 2e-5,
        "layer_norm" => 2e-5,
        _ => 2e-6,
    }
}

/// Runs `case` with inputs drawn from `seed` on `device`; returns the output values.
/// Quantized cases quantize the weight on the device's own path; on the CPU they use the
/// dequantized weight in an f32 matmul (the reference the GPU kernel must match).
pub async fn run_case(case: &str, seed: u64, device: &Device) -> Result<Vec<f32>> {
    let mut rng = Rng::new(seed);
    let f = |data: &[f32], shape: &[usize]| Tensor::from_f32(data, shape, device);
    let cpu = matches!(device, Device::Cpu);
    let linear = |rng: &mut Rng, rows: usize, k: usize, n: usize, dtype: DType| -> Result<Tensor> {
        let x = rng.vec(rows * k, -1.0, 1.0);
        let w = rng.vec(n * k, -1.0, 1.0);
        let b = rng.vec(n, -1.0, 1.0);
        let wt = if cpu {
            let wq = crate::tensor::quant::quantize_dequantize(&w, &[n, k], dtype)?;
            Tensor::from_f32(&wq, &[n, k], device)?
        } else {
            Tensor::weight("w", &w, &[n, k], dtype, device)?
        };
        Tensor::from_f32(&x, &[rows, k], device)?
            .linear(&wt, Some(&Tensor::from_f32(&b, &[n], device)?))
    };
    let out = match case {
        "matmul" => {
            // (2, 17, 257) @ (257, 65): batch broadcast, shapes off the 64-tile grid
            let a = rng.vec(2 * 17 * 257, -1.0, 1.0);
            let b = rng.vec(257 * 65, -1.0, 1.0);
            f(&a, &[2, 17, 257])?.matmul(&f(&b, &[257, 65])?)?
        }
        "linear_q8_0_gemv" => linear(&mut rng, 1, 768, 769, DType::Q8_0)?,
        "linear_q4_0_gemm" => linear(&mut rng, 33, 256, 65, DType::Q4_0)?,
        "linear_f16_gemv" => linear(&mut rng, 1, 768, 257, DType::F16)?,
        "softmax" => {
            // large logits: exp without the max subtracted would overflow
            let x: Vec<f32> = rng
                .vec(3 * 1000, -1.0, 1.0)
                .iter()
                .map(|v| v * 500.0)
                .collect();
            f(&x, &[3, 1000])?.softmax_last_dim()?
        }
        "attention" | "attention_decode" => {
            let decode = case == "attention_decode";
            // prefill: causal, 2×4 heads, 33 tokens; decode: one query over a 100-entry cache of 128, GQA 8/2
            let (b, h, hkv, tq, cap, len, d) = if decode {
                (1, 8, 2, 1, 128, 100, 64)
            } else {
                (2, 4, 4, 33, 33, 33, 64)
            };
            let q = rng.vec(b * h * tq * d, -1.0, 1.0);
            let k = rng.vec(b * hkv * cap * d, -1.0, 1.0);
            let v = rng.vec(b * hkv * cap * d, -1.0, 1.0);
            let opts = AttentionOpts {
                scale: 1.0 / (d as f32).sqrt(),
                causal: true,
                mask: None,
                kv_len: Some(len),
            };
            Tensor::attention(
                &f(&q, &[b, h, tq, d])?,
                &f(&k, &[b, hkv, cap, d])?,
                &f(&v, &[b, hkv, cap, d])?,
                &opts,
            )?
        }
        "layer_norm" => {
            let x = rng.vec(5 * 769, -3.0, 3.0);
            let w = rng.vec(769, 0.5, 1.5);
            let b = rng.vec(769, -1.0, 1.0);
            f(&x, &[5, 769])?.layer_norm(&f(&w, &[769])?, &f(&b, &[769])?, 1e-5)?
        }
        "gelu" => {
            let x = rng.vec(4099, -8.0, 8.0);
            f(&x, &[4099])?.gelu_erf()?
        }
        other => {
            return Err(Error::Invalid(format!(
                "unknown self-check case {other:?}; known: {}",
                CASES.join(", ")
            )))
        }
    };
    out.to_vec_f32().await
}

/// One case of a self-check: a device against the CPU path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    pub case: String,
    pub max_abs_diff: f32,
    pub tolerance: f32,
    pub pass: bool,
}

/// Runs every case on `device` and on the CPU and compares them.
pub async fn selfcheck(device: &Device, seed: u64) -> Result<Vec<CheckResult>> {
    let mut results = Vec::new();
    for case in CASES {
        let got = run_case(case, seed, device).await?;
        let want = run_case(case, seed, &Device::Cpu).await?;
        let max_abs_diff = max_abs_diff(&got, &want);
        let tol = tolerance(case);
        results.push(CheckResult {
            case: case.to_string(),
            max_abs_diff,
            tolerance: tol,
            pass: max_abs_diff <= tol,
        });
    }
    Ok(results)
}

/// Largest elementwise |a - b|; a length mismatch or a NaN counts as infinite.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}
