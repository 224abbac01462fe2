//! Every GPU op against the CPU op (candle) on seeded random inputs with awkward shapes.
//! Runs on lavapipe in CI. Tolerances sit next to each assertion with their reason.

mod common;

use common::*;
use glimpse::rng::Rng;
use glimpse::tensor::quant::quantize_dequantize;
use glimpse::{AttentionOpts, DType, Device, Tensor};

/// f32 dot products of length K summed in a different order (tiles vs candle's gemm) differ by
/// rounding that grows like √K·ε·|partial sums|; with inputs in [-1, 1] the partial sums are
/// O(√K), so 4·ε·K bounds the difference with a wide margin (K = 4096: 2e-3 absolute on values
/// of magnitude ~40).
fn dot_tol(k: usize) -> f32 {
    4.0 * f32::EPSILON * k as f32
}

#[test]
fn matmul_matches_cpu() {
    let mut rng = Rng::new(1);
    // (batch_a, batch_b, M, K, N)
    let cases = [
        (1, 1, 1, 1, 1),
        (1, 1, 3, 17, 5),
        (1, 1, 65, 257, 63),
        (2, 1, 17, 65, 33),   // rhs broadcast over the batch
        (3, 3, 5, 7, 9),      // batched
        (1, 1, 3, 4096, 5),   // long rows
        (1, 1, 197, 64, 197), // attention-sized
        (4, 4, 1, 769, 3),
    ];
    for (ba, bb, m, k, n) in cases {
        for transposed in [false, true] {
            let a = rng.vec(ba * m * k, -1.0, 1.0);
            let b = rng.vec(bb * k * n, -1.0, 1.0);
            let b_shape = if transposed { [bb, n, k] } else { [bb, k, n] };
            let outs: Vec<Vec<f32>> = [cpu(), gpu(), gpu_other_kernels()]
                .iter()
                .map(|d| {
                    let (ta, tb) = (t(&a, &[ba, m, k], d), t(&b, &b_shape, d));
                    let r = if transposed {
                        ta.matmul_t(&tb)
                    } else {
                        ta.matmul(&tb)
                    }
                    .unwrap();
                    assert_eq!(r.shape(), [ba, m, n]);
                    read(&r)
                })
                .collect();
            for (g, kernels) in [(1, "default"), (2, "other")] {
                assert_close(
                    &format!(
                        "matmul {ba}x{m}x{k} @ {bb}x{k}x{n} t={transposed} ({kernels} GPU kernels)"
                    ),
                    &outs[g],
                    &outs[0],
                    dot_tol(k),
                    0.0,
                );
            }
        }
    }
}

/// A GPU context that picks the other matmul kernels than `gpu()`: lavapipe is a software
/// adapter, so `gpu()` runs the barrier-free `gemv_rows` and `matmul_rows`; this one runs the
/// reduction `gemv` and the tiled `matmul` a real GPU gets (and the reverse on a real GPU).
fn gpu_other_kernels() -> Device {
    use std::sync::{Arc, OnceLock};
    static CTX: OnceLock<Arc<glimpse::GpuContext>> = OnceLock::new();
    let software = match gpu() {
        Device::Gpu(c) => c.summary().software,
        Device::Cpu => false,
    };
    let ctx = CTX.get_or_init(|| {
        pollster::block_on(glimpse::GpuContext::new(&glimpse::GpuOptions {
            software: Some(!software),
            ..Default::default()
        }))
        .unwrap_or_else(|e| panic!("GPU: {e}"))
    });
    Device::Gpu(ctx.clone())
}

/// Linear against f32, f16, q8_0 and q4_0 weights; GEMV (1 row, both GEMV kernels) and GEMM
/// (many rows). The reference is an f32 matmul on the CPU with the weight's exact dequantized
/// values.
#[test]
fn linear_all_weight_dtypes_match_dequantized_reference() {
    let mut rng = Rng::new(2);
    // (rows, K, N)
    let cases = [
        (1, 32, 1),
        (1, 64, 3),
        (1, 768, 769),
        (1, 4096, 65),
        (3, 96, 17),
        (17, 64, 65),
        (197, 768, 257),
        (2, 4096, 3),
    ];
    for (rows, k, n) in cases {
        let x = rng.vec(rows * k, -1.0, 1.0);
        let w = rng.vec(n * k, -1.0, 1.0);
        let bias = rng.vec(n, -1.0, 1.0);
        for dtype in [DType::F32, DType::F16, DType::Q8_0, DType::Q4_0] {
            let wq = quantize_dequantize(&w, &[n, k], dtype).unwrap();
            let want = read(
                &t(&x, &[rows, k], &cpu())
                    .linear(&t(&wq, &[n, k], &cpu()), Some(&t(&bias, &[n], &cpu())))
                    .unwrap(),
            );
            for g in [gpu(), gpu_other_kernels()] {
                let wt = Tensor::weight("w", &w, &[n, k], dtype, &g).unwrap();
                let got = read(
                    &t(&x, &[rows, k], &g)
                        .linear(&wt, Some(&t(&bias, &[n], &g)))
                        .unwrap(),
                );
                let software = match &g {
                    Device::Gpu(c) => c.summary().software,
                    Device::Cpu => false,
                };
                let what = format!(
                    "linear {rows}x{k} · {n}x{k} {} (software kernels: {software})",
                    dtype.name()
                );
                // same values, different summation order: as for f32 matmul
                assert_close(&what, &got, &want, dot_tol(k), 0.0);
                // the same GPU weight, read back, is exactly the dequantized reference
                let back = pollster::block_on(wt.dequantize_to_vec()).unwrap();
                assert_eq!(back, wq, "{what}: GPU weight storage round trip");
            }
        }
    }
}

/// A Linear with its activation and residual add in the matmul's epilogue (`linear_fused`) equals
/// the three ops one after another on the CPU, for one row (GEMV) and several (GEMM), on both
/// kernel sets, for every activation.
#[test]
fn fused_linear_epilogue_matches_separate_ops() {
    use glimpse::io::config::Activation;
    let mut rng = Rng::new(5);
    for (rows, k, n) in [(1, 96, 67), (5, 64, 33), (70, 128, 65)] {
        let x = rng.vec(rows * k, -1.0, 1.0);
        let w = rng.vec(n * k, -1.0, 1.0);
        let bias = rng.vec(n, -1.0, 1.0);
        let res = rng.vec(rows * n, -1.0, 1.0);
        for act in [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::QuickGelu,
            Activation::Silu,
        ] {
            let c = cpu();
            let want = read(
                &t(&x, &[rows, k], &c)
                    .linear(&t(&w, &[n, k], &c), Some(&t(&bias, &[n], &c)))
                    .unwrap()
                    .activation(act)
                    .unwrap()
                    .add(&t(&res, &[rows, n], &c))
                    .unwrap(),
            );
            for g in [gpu(), gpu_other_kernels()] {
                let got = read(
                    &t(&x, &[rows, k], &g)
                        .linear_fused(
                            &t(&w, &[n, k], &g),
                            Some(&t(&bias, &[n], &g)),
                            Some(act),
                            Some(&t(&res, &[rows, n], &g)),
                        )
                        .unwrap(),
                );
                // the matmul's summation order differs (dot_tol); the activations are within a
                // few ulps of candle's and have slopes ≤ 1.1, so the same bound holds after them
                assert_close(
                    &format!("fused linear {rows}x{k}·{n} {act:?}"),
                    &got,
                    &want,
                    dot_tol(k),
                    0.0,
                );
            }
        }
    }
}

/// The CPU path's quantized kernel rounds activations to 16-bit blocks (tensor::quant::gemv) for a
/// few rows, so it is compared to the dequantized reference by relative error of the whole output.
#[test]
fn cpu_quantized_linear_is_close_to_dequantized_reference() {
    let mut rng = Rng::new(3);
    let (rows, k, n) = (5, 256, 33);
    let x = rng.vec(rows * k, -1.0, 1.0);
    let w = rng.vec(n * k, -1.0, 1.0);
    for dtype in [DType::Q8_0, DType::Q4_0] {
        let wq = quantize_dequantize(&w, &[n, k], dtype).unwrap();
        let want = read(
            &t(&x, &[rows, k], &cpu())
                .linear(&t(&wq, &[n, k], &cpu()), None)
                .unwrap(),
        );
        let wt = Tensor::weight("w", &w, &[n, k], dtype, &cpu()).unwrap();
        let got = read(&t(&x, &[rows, k], &cpu()).linear(&wt, None).unwrap());
        let err: f32 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt();
        let norm: f32 = want.iter().map(|v| v * v).sum::<f32>().sqrt();
        // 8-bit activations carry ~0.4% relative error per value (1/2·1/127); summed it stays < 1%
        assert!(
            err / norm < 1e-2,
            "{}: relative error {}",
            dtype.name(),
            err / norm
        );
    }
}

#[test]
fn add_mul_broadcast_match_cpu() {
    let mut rng = Rng::new(4);
    let cases: [(&[usize], &[usize]); 6] = [
        (&[1], &[1]),
        (&[2, 3, 17, 65], &[2, 3, 17, 65]),
        (&[2, 3, 17, 65], &[65]),
        (&[2, 3, 17, 65], &[17, 1]),
        (&[3, 1, 5], &[1, 4, 1]),
        (&[1, 70000], &[1]),
    ];
    for (sa, sb) in cases {
        let a = rng.vec(sa.iter().product(), -5.0, 5.0);
        let b = rng.vec(sb.iter().product(), -5.0, 5.0);
        for mul in [false, true] {
            let outs: Vec<Vec<f32>> = [cpu(), gpu(), gpu_other_kernels()]
                .iter()
                .map(|d| {
                    let (x, y) = (t(&a, sa, d), t(&b, sb, d));
                    read(&if mul { x.mul(&y) } else { x.add(&y) }.unwrap())
                })
                .collect();
            // one IEEE operation per element on both sides: bit-identical
            assert_eq!(
                outs[1],
                outs[0],
                "{sa:?} {} {sb:?}",
                if mul { "*" } else { "+" }
            );
        }
    }
    let err = t(&[0.0; 6], &[2, 3], &gpu())
        .add(&t(&[0.0; 4], &[4], &gpu()))
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot broadcast [2, 3] with [4]"),
        "{err}"
    );
}

#[test]
fn activations_match_cpu() {
    let mut rng = Rng::new(5);
    let mut x = rng.vec(3 * 1025, -10.0, 10.0);
    x.extend([0.0, -0.0, 80.0, -80.0, 1e-8, -1e-8, 20.0, -20.0]);
    for op in ["gelu_erf", "gelu_tanh", "quick_gelu", "silu"] {
        let outs: Vec<Vec<f32>> = both()
            .iter()
            .map(|d| {
                let v = t(&x, &[x.len()], d);
                let r = match op {
                    "gelu_erf" => v.gelu_erf(),
                    "gelu_tanh" => v.gelu_tanh(),
                    "quick_gelu" => v.quick_gelu(),
                    _ => v.silu(),
                };
                read(&r.unwrap())
            })
            .collect();
        // GPU exp/tanh are within a few ulp; our erf (Abramowitz–Stegun 7.1.26) is within 1.5e-7,
        // which gelu scales by |x|/2 ≤ 40 here: 2e-6 absolute plus 2e-6 relative covers both.
        assert_close(op, &outs[1], &outs[0], 2e-6, 2e-6);
    }
}

#[test]
fn softmax_matches_cpu_and_is_stable() {
    let mut rng = Rng::new(6);
    for (rows, cols, scale, offset) in [
        (1, 1, 1.0, 0.0),
        (3, 17, 1.0, 0.0),
        (5, 257, 1.0, 0.0),
        (2, 4096, 10.0, 0.0),
        (2, 5000, 1.0, 0.0),
        (4, 65, 1000.0, 0.0),
        (3, 33, 1.0, 1e4),
    ] {
        let x: Vec<f32> = rng
            .vec(rows * cols, -1.0, 1.0)
            .iter()
            .map(|v| v * scale + offset)
            .collect();
        let outs: Vec<Vec<f32>> = both()
            .iter()
            .map(|d| read(&t(&x, &[rows, cols], d).softmax_last_dim().unwrap()))
            .collect();
        assert!(
            outs[1].iter().all(|v| v.is_finite()),
            "softmax produced a non-finite value for logits ×{scale} +{offset}"
        );
        // probabilities in [0, 1]; exp differs by a few ulp between implementations
        assert_close(
            &format!("softmax {rows}x{cols} ×{scale} +{offset}"),
            &outs[1],
            &outs[0],
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn layer_norm_and_rms_norm_match_cpu() {
    let mut rng = Rng::new(7);
    for (rows, cols, offset) in [
        (1, 3, 0.0),
        (3, 65, 0.0),
        (2, 769, 0.0),
        (2, 4096, 0.0),
        (5, 768, 1000.0),
        (197, 96, 0.0), // several workgroups of the one-row-per-invocation kernel
    ] {
        let x: Vec<f32> = rng
            .vec(rows * cols, -2.0, 2.0)
            .iter()
            .map(|v| v + offset)
            .collect();
        let w = rng.vec(cols, 0.5, 1.5);
        let b = rng.vec(cols, -1.0, 1.0);
        // the CPU, then the GPU's two kernels (a workgroup per row, an invocation per row)
        let outs: Vec<(Vec<f32>, Vec<f32>)> = [cpu(), gpu(), gpu_other_kernels()]
            .iter()
            .map(|d| {
                let xt = t(&x, &[rows, cols], d);
                let ln = xt
                    .layer_norm(&t(&w, &[cols], d), &t(&b, &[cols], d), 1e-5)
                    .unwrap();
                let rms = xt.rms_norm(&t(&w, &[cols], d), 1e-6).unwrap();
                (read(&ln), read(&rms))
            })
            .collect();
        // Normalized values are O(1). With a mean of 1000 each input carries f32 rounding of
        // 1000·ε ≈ 6e-5 before normalization: the tolerance is set by that, not by the kernels.
        let atol = if offset > 0.0 { 2e-4 } else { 2e-5 };
        for (g, kernels) in [(1, "default"), (2, "other")] {
            assert_close(
                &format!("layer_norm {rows}x{cols} +{offset} ({kernels} GPU kernel)"),
                &outs[g].0,
                &outs[0].0,
                atol,
                0.0,
            );
            assert_close(
                &format!("rms_norm {rows}x{cols} +{offset} ({kernels} GPU kernel)"),
                &outs[g].1,
                &outs[0].1,
                atol,
                1e-5,
            );
        }
    }
}

#[test]
fn rope_matches_cpu() {
    let mut rng = Rng::new(8);
    for (b, h, tt, d) in [(1, 1, 1, 2), (2, 3, 17, 64), (1, 4, 5, 6)] {
        let x = rng.vec(b * h * tt * d, -1.0, 1.0);
        let cos = rng.vec(tt * d / 2, -1.0, 1.0);
        let sin = rng.vec(tt * d / 2, -1.0, 1.0);
        for interleaved in [false, true] {
            let outs: Vec<Vec<f32>> = both()
                .iter()
                .map(|dv| {
                    read(
                        &t(&x, &[b, h, tt, d], dv)
                            .rope(
                                &t(&cos, &[tt, d / 2], dv),
                                &t(&sin, &[tt, d / 2], dv),
                                interleaved,
                            )
                            .unwrap(),
                    )
                })
                .collect();
            // two products and a sum per element; fma contraction may differ by an ulp
            assert_close(
                &format!("rope {b}x{h}x{tt}x{d} interleaved={interleaved}"),
                &outs[1],
                &outs[0],
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn embedding_gathers_f32_and_f16_rows() {
    let mut rng = Rng::new(9);
    let (v, dim) = (1000, 65);
    let table = rng.vec(v * dim, -1.0, 1.0);
    let ids = rng.ids(2 * 17, v as u32);
    for dtype in [DType::F32, DType::F16] {
        let outs: Vec<Vec<f32>> = both()
            .iter()
            .map(|d| {
                let tab = Tensor::weight("embed", &table, &[v, dim], dtype, d).unwrap();
                let r = tab
                    .embedding(&Tensor::from_u32(&ids, &[2, 17], d).unwrap())
                    .unwrap();
                assert_eq!(r.shape(), [2, 17, dim]);
                read(&r)
            })
            .collect();
        // a gather copies values: identical
        assert_eq!(outs[1], outs[0], "embedding {}", dtype.name());
    }
}

#[test]
fn a_token_id_past_the_vocabulary_is_the_same_error_on_every_device() {
    let (v, dim) = (50, 8);
    let table = vec![0.25f32; v * dim];
    let errs: Vec<String> = both()
        .iter()
        .map(|d| {
            let tab = Tensor::weight("embed", &table, &[v, dim], DType::F32, d).unwrap();
            // in range: a row; id == V: an error, before anything reaches the device
            assert_eq!(tab.lookup(&[0, 49], &[2]).unwrap().shape(), [2, dim]);
            tab.lookup(&[3, 50, 1], &[3]).unwrap_err().to_string()
        })
        .collect();
    assert_eq!(errs[0], errs[1]);
    assert!(
        errs[0].contains("token id 50 is outside the vocabulary of 50"),
        "{}",
        errs[0]
    );
}

struct AttnCase {
    b: usize,
    h: usize,
    hkv: usize,
    tq: usize,
    cap: usize,
    kv_len: usize,
    d: usize,
    causal: bool,
    mask: bool,
    q_scale: f32,
}

#[test]
fn attention_matches_cpu() {
    let mut rng = Rng::new(10);
    let base = AttnCase {
        b: 2,
        h: 4,
        hkv: 4,
        tq: 17,
        cap: 17,
        kv_len: 17,
        d: 64,
        causal: false,
        mask: false,
        q_scale: 1.0,
    };
    let cases = [
        AttnCase { ..base },
        AttnCase {
            tq: 65,
            cap: 65,
            kv_len: 65,
            causal: true,
            ..base
        }, // causal prefill
        AttnCase {
            tq: 1,
            cap: 300,
            kv_len: 257,
            h: 8,
            hkv: 2,
            d: 80,
            causal: true,
            ..base
        }, // decode step, GQA, KV cache with spare capacity
        AttnCase {
            tq: 5,
            cap: 9,
            kv_len: 9,
            mask: true,
            ..base
        }, // padding / custom additive mask
        AttnCase {
            b: 1,
            h: 2,
            hkv: 1,
            tq: 1,
            cap: 1,
            kv_len: 1,
            d: 256,
            ..base
        }, // largest head_dim, a single key
        AttnCase {
            tq: 3,
            cap: 200,
            kv_len: 200,
            d: 3,
            q_scale: 100.0,
            ..base
        }, // large logits
        AttnCase {
            b: 1,
            h: 12,
            hkv: 12,
            tq: 197,
            cap: 197,
            kv_len: 197,
            d: 64,
            ..base
        }, // ViT-base sized
        AttnCase {
            b: 1,
            h: 12,
            hkv: 12,
            tq: 577,
            cap: 577,
            kv_len: 577,
            d: 64,
            ..base
        }, // BLIP-base's vision tower (384 px): more keys than llvmpipe's loop budget allows
        // one invocation with scalar loops (see attention.rs ROWS_LOOP_BUDGET)
        AttnCase {
            b: 2,
            h: 4,
            hkv: 4,
            tq: 1,
            cap: 577,
            kv_len: 577,
            d: 64,
            ..base
        }, // cross-attention decode step over BLIP-base's image tokens
        AttnCase {
            b: 1,
            h: 2,
            hkv: 2,
            tq: 2,
            cap: 2100,
            kv_len: 2100,
            d: 64,
            ..base
        }, // past the budget: software adapters take the workgroup kernel here too
    ];
    for c in cases {
        let q: Vec<f32> = rng
            .vec(c.b * c.h * c.tq * c.d, -1.0, 1.0)
            .iter()
            .map(|v| v * c.q_scale)
            .collect();
        let k = rng.vec(c.b * c.hkv * c.cap * c.d, -1.0, 1.0);
        let v = rng.vec(c.b * c.hkv * c.cap * c.d, -1.0, 1.0);
        // mask: batch 0 drops its last 3 keys (padding), batch 1 keeps all
        let mask: Vec<f32> = (0..c.b * c.tq * c.cap)
            .map(|i| {
                if i / (c.tq * c.cap) == 0 && i % c.cap + 3 >= c.kv_len {
                    -1e9
                } else {
                    0.0
                }
            })
            .collect();
        let scale = 1.0 / (c.d as f32).sqrt();
        // the CPU, then the GPU's two kernels (one workgroup per query, one invocation per query)
        let outs: Vec<Vec<f32>> = [cpu(), gpu(), gpu_other_kernels()]
            .iter()
            .map(|d| {
                let m = t(&mask, &[c.b, c.tq, c.cap], d);
                let opts = AttentionOpts {
                    scale,
                    causal: c.causal,
                    mask: c.mask.then_some(&m),
                    kv_len: Some(c.kv_len),
                };
                let r = Tensor::attention(
                    &t(&q, &[c.b, c.h, c.tq, c.d], d),
                    &t(&k, &[c.b, c.hkv, c.cap, c.d], d),
                    &t(&v, &[c.b, c.hkv, c.cap, c.d], d),
                    &opts,
                )
                .unwrap();
                read(&r)
            })
            .collect();
        // outputs are convex combinations of v in [-1, 1]; online vs two-pass softmax and the
        // order of the d-long dot products change only rounding (d ≤ 256, logits ≤ 100·√d)
        let what = format!(
            "attention b{} h{}/{} tq{} kv{}/{} d{} causal={} mask={} ×{}",
            c.b, c.h, c.hkv, c.tq, c.kv_len, c.cap, c.d, c.causal, c.mask, c.q_scale
        );
        let atol = if c.q_scale > 1.0 { 2e-4 } else { 2e-5 };
        assert_close(&what, &outs[1], &outs[0], atol, 0.0);
        assert_close(
            &format!("{what} (other kernel)"),
            &outs[2],
            &outs[0],
            atol,
            0.0,
        );
    }
}

#[test]
fn patch_embed_matches_candle_conv2d() {
    let mut rng = Rng::new(11);
    let (b, ch, h, w, p, o) = (2, 3, 32, 48, 16, 37);
    let x = rng.vec(b * ch * h * w, -1.0, 1.0);
    let wt = rng.vec(o * ch * p * p, -0.1, 0.1);
    let bias = rng.vec(o, -1.0, 1.0);
    // candle's own conv2d is the reference for the im2col formulation: (B, O, Hp, Wp) -> (B, Np, O)
    let cx = candle_core::Tensor::from_slice(&x, (b, ch, h, w), &candle_core::Device::Cpu).unwrap();
    let cw =
        candle_core::Tensor::from_slice(&wt, (o, ch, p, p), &candle_core::Device::Cpu).unwrap();
    let cb =
        candle_core::Tensor::from_slice(&bias, (1, o, 1, 1), &candle_core::Device::Cpu).unwrap();
    let conv = cx
        .conv2d(&cw, 0, p, 1, 1)
        .unwrap()
        .broadcast_add(&cb)
        .unwrap();
    let want: Vec<f32> = conv
        .flatten_from(2)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for d in both() {
        let r = t(&x, &[b, ch, h, w], &d)
            .patch_embed(&t(&wt, &[o, ch * p * p], &d), Some(&t(&bias, &[o], &d)), p)
            .unwrap();
        assert_eq!(r.shape(), [b, (h / p) * (w / p), o]);
        // dot products of length C·P·P = 768 in another order
        assert_close(
            &format!("patch_embed on {}", d.name()),
            &read(&r),
            &want,
            dot_tol(ch * p * p),
            0.0,
        );
    }
    // quantized patch weights (C·P·P = 768 is whole blocks) against their dequantized values
    let wq = quantize_dequantize(&wt, &[o, ch * p * p], DType::Q8_0).unwrap();
    let want_q = read(
        &t(&x, &[b, ch, h, w], &cpu())
            .patch_embed(
                &t(&wq, &[o, ch * p * p], &cpu()),
                Some(&t(&bias, &[o], &cpu())),
                p,
            )
            .unwrap(),
    );
    let g = gpu();
    let got_q = read(
        &t(&x, &[b, ch, h, w], &g)
            .patch_embed(
                &Tensor::weight("patch", &wt, &[o, ch * p * p], DType::Q8_0, &g).unwrap(),
                Some(&t(&bias, &[o], &g)),
                p,
            )
            .unwrap(),
    );
    assert_close(
        "patch_embed q8_0",
        &got_q,
        &want_q,
        dot_tol(ch * p * p),
        0.0,
    );
}

#[test]
fn layout_ops_match_cpu_exactly() {
    let mut rng = Rng::new(12);
    let x = rng.vec(2 * 3 * 5 * 7, -1.0, 1.0);
    let y = rng.vec(2 * 3 * 4 * 7, -1.0, 1.0);
    let outs: Vec<Vec<Vec<f32>>> = both()
        .iter()
        .map(|d| {
            let a = t(&x, &[2, 3, 5, 7], d);
            let b = t(&y, &[2, 3, 4, 7], d);
            let p = a.permute(&[0, 2, 1, 3]).unwrap();
            assert_eq!(p.shape(), [2, 5, 3, 7]);
            let p2 = a.permute(&[3, 1, 0, 2]).unwrap();
            let n = a.narrow(2, 1, 3).unwrap();
            let c = Tensor::cat(&[&a, &b], 2).unwrap();
            assert_eq!(c.shape(), [2, 3, 9, 7]);
            let r = a.reshape(&[6, 35]).unwrap().narrow(1, 34, 1).unwrap();
            // KV-cache append: write b into a zeroed cache at position 2 along T
            let cache = Tensor::zeros(&[2, 3, 10, 7], d).unwrap();
            cache.write_slice(&b, 2, 2).unwrap();
            cache
                .write_slice(&a.narrow(2, 0, 1).unwrap(), 2, 9)
                .unwrap();
            vec![
                read(&p),
                read(&p2),
                read(&n),
                read(&c),
                read(&r),
                read(&cache),
            ]
        })
        .collect();
    for (i, name) in [
        "permute",
        "permute 3102",
        "narrow",
        "cat",
        "reshape+narrow",
        "write_slice",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(outs[1][i], outs[0][i], "{name}");
    }
    let err = t(&x, &[2, 3, 5, 7], &gpu())
        .permute(&[0, 0, 1, 2])
        .unwrap_err();
    assert!(err.to_string().contains("not a permutation"), "{err}");
}

#[test]
fn argmax_matches_cpu_and_takes_the_first_of_ties() {
    let mut rng = Rng::new(13);
    let (rows, cols) = (3, 30522);
    let mut x = rng.vec(rows * cols, -1.0, 1.0);
    x[cols + 17] = 5.0; // row 1: a tie between 17 and 29000 -> 17
    x[cols + 29000] = 5.0;
    let outs: Vec<Vec<u32>> = both()
        .iter()
        .map(|d| read_u32(&t(&x, &[rows, cols], d).argmax_last_dim().unwrap()))
        .collect();
    assert_eq!(outs[1], outs[0]);
    assert_eq!(outs[1][1], 17);
    let single = read_u32(
        &t(&[2.0, 7.0, 7.0], &[1, 3], &gpu())
            .argmax_last_dim()
            .unwrap(),
    );
    assert_eq!(single, [1]);
}

#[test]
fn mismatched_matmul_is_a_shape_error_on_both_devices() {
    for d in both() {
        let err = t(&[0.0; 6], &[2, 3], &d)
            .matmul(&t(&[0.0; 8], &[4, 2], &d))
            .unwrap_err();
        assert!(matches!(err, glimpse::Error::Shape { .. }), "{err:?}");
        assert!(
            err.to_string().contains("inner dimensions 3 and 4 differ"),
            "{err}"
        );
        let err = t(&[0.0; 6], &[2, 3], &d)
            .linear(&t(&[0.0; 8], &[2, 4], &d), None)
            .unwrap_err();
        assert!(err.to_string().contains("expects 4"), "{err}");
    }
    let err = t(&[0.0; 6], &[2, 3], &cpu())
        .matmul(&t(&[0.0; 6], &[3, 2], &gpu()))
        .unwrap_err();
    assert!(
        matches!(err, glimpse::Error::DeviceMismatch { .. }),
        "{err:?}"
    );
}

#[test]
fn too_large_binding_names_the_limit_and_the_tensor() {
    // A device asked for a 1 MiB binding limit behaves like a GPU that lacks a larger one.
    let small = pollster::block_on(glimpse::GpuContext::new(&glimpse::GpuOptions {
        max_storage_buffer_binding_size: Some(1 << 20),
        ..Default::default()
    }))
    .unwrap();
    let d = Device::Gpu(small);
    let data = vec![0.5f32; (1 << 20) / 4 + 1];
    for dtype in [DType::F32, DType::F16] {
        // f16 takes half the bytes: twice the values give the same 1 MiB + 4 bytes
        let n = if dtype == DType::F32 {
            data.len()
        } else {
            2 * data.len()
        };
        let err = Tensor::weight("text.embeddings", &vec![0.5; n], &[n, 1], dtype, &d).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, glimpse::Error::BindingTooLarge { .. }),
            "{err:?}"
        );
        assert!(
            msg.contains("allows 1048576 bytes (1.0 MiB) per storage binding")
                && msg.contains("tensor text.embeddings needs 1048580 bytes"),
            "{msg}"
        );
    }
    let err = Tensor::from_f32(&data, &[data.len()], &d).unwrap_err();
    assert!(err.to_string().contains("per storage binding"), "{err}");
    // the same device still works for tensors that fit
    let ok = t(&[1.0, 2.0], &[1, 2], &d).softmax_last_dim().unwrap();
    assert_close(
        "softmax after error",
        &read(&ok),
        &[0.26894142, 0.7310586],
        1e-6,
        0.0,
    );
}

/// Regression (found while writing these tests): threads sharing one context interleaved their
/// uniform parameters with another thread's submit, so a dispatch read someone else's params.
#[test]
fn concurrent_threads_on_one_context_get_their_own_results() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let g = gpu();
                let x: Vec<f32> = (0..2 * 3 * 5 * 7).map(|v| (v * (i + 1)) as f32).collect();
                let a = t(&x, &[2, 3, 5, 7], &g);
                for _ in 0..20 {
                    let n = a.narrow(2, 1, 3).unwrap().permute(&[0, 2, 1, 3]).unwrap();
                    let want = read(
                        &t(&x, &[2, 3, 5, 7], &cpu())
                            .narrow(2, 1, 3)
                            .unwrap()
                            .permute(&[0, 2, 1, 3])
                            .unwrap(),
                    );
                    assert_eq!(read(&n), want, "thread {i}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
