//! The CPU path: the same ops on candle-core. Shapes were checked by `Tensor`; these functions
//! only compute. f16 weights are widened to f32 per call; q8_0/q4_0 weights multiply their quants
//! by 16-bit activation blocks in integers (natively only for a few rows: many dequantize a slab
//! at a time for candle's GEMM; `quantized_linear`, `tensor::quant`). In wasm the f32 Linears run this
//! crate's own tiles (`gemm.rs`), and so does the attention, one head at a time (`attention.rs`);
//! natively both are candle's (its GEMM, its batched matmuls).
//!
//! Threads: natively candle's GEMM already uses every core. In wasm, candle sees one thread; the
//! threaded build (pkg/threads/, wasm32 with +atomics, picked by the page when it is
//! cross-origin isolated) starts a rayon pool of Web Workers (`web::threads`), and then the f32
//! Linears split their output columns over the pool ([`linear_f32`]), and so do the quantized
//! Linears and the dequantization of quantized weights (`tensor::quant`). Natively the
//! quantized Linears split over rayon's global pool.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType as CDType, Tensor as CT, D};

mod attention;
mod gemm;

use crate::error::Result;
use crate::gpu::kernels::elementwise::{BinaryOp, UnaryOp};
use crate::tensor::{AttentionOpts, Storage, Tensor};

fn f32_of(t: &Tensor, op: &'static str) -> Result<CT> {
    let c = t.candle(op)?;
    Ok(if c.dtype() == CDType::F32 {
        c.clone()
    } else {
        c.to_dtype(CDType::F32)?
    })
}

pub(crate) fn matmul(a: &Tensor, b: &Tensor, b_t: bool, out_shape: &[usize]) -> Result<Tensor> {
    let (ca, mut cb) = (a.candle("matmul")?.clone(), b.candle("matmul")?.clone());
    if b_t {
        cb = cb.t()?;
    }
    // candle's broadcast_matmul broadcasts the batch dims of rhs.
    let out = ca.broadcast_matmul(&cb)?.contiguous()?;
    Tensor::from_candle(out.reshape(out_shape)?)
}

/// Threads in the pool the CPU path splits its matmuls over; 0 = none (every native build, and
/// wasm until `web::threads` has built its pool). Never the global rayon pool's size: asking rayon
/// for it before the pool exists would start its default pool, which wasm cannot spawn.
static POOL_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Called once the pool of `n` threads is built (`web::threads`).
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
pub(crate) fn set_pool_threads(n: usize) {
    POOL_THREADS.store(n, Ordering::Release);
}

/// Threads of the CPU path's pool, 0 when it runs on the calling thread alone.
pub fn pool_threads() -> usize {
    POOL_THREADS.load(Ordering::Acquire)
}

/// `y` shared by the pool's threads, each writing its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the threads of `linear_f32` write disjoint column ranges of one live buffer
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `x [M, K] · w [N, K]ᵀ` (both contiguous f32) with [`gemm`]'s tiles straight on the weight:
/// on the calling thread, or on the pool with the output's columns in one run per thread (each
/// run a multiple of the tile's 3 columns).
fn linear_f32(x: &CT, w: &CT, threads: usize) -> Result<CT> {
    let (m, k) = x.dims2()?;
    let n = w.dim(0)?;
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let y = {
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (candle_core::Storage::Cpu(xs), candle_core::Storage::Cpu(ws)) = (&*xs, &*ws) else {
            return Err(crate::Error::shape(
                "linear",
                "a CPU tensor is not in CPU memory",
            ));
        };
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            return Err(crate::Error::shape("linear", "operands are not contiguous"));
        };
        let (xs, ws) = (
            &xs.as_slice::<f32>()?[x0..x1],
            &ws.as_slice::<f32>()?[w0..w1],
        );
        if xs.len() != m * k || ws.len() != n * k {
            return Err(crate::Error::shape(
                "linear",
                "operand sizes disagree with their shapes",
            ));
        }
        if threads <= 1 {
            gemm::matmul_nt::<gemm::Native>(xs, ws, m, n, k)
        } else {
            let mut y = vec![0f32; m * n];
            let per = n.div_ceil(threads).next_multiple_of(3).max(3);
            let out = OutPtr(y.as_mut_ptr());
            use rayon::prelude::*;
            (0..n.div_ceil(per)).into_par_iter().for_each(|r| {
                let cols = r * per..((r + 1) * per).min(n);
                // SAFETY: y is [m, n] and lives until the pool is done; each run writes only
                // its own columns
                unsafe { gemm::matmul_nt_cols::<gemm::Native>(xs, ws, (m, n, k), cols, { out }.0) };
            });
            y
        }
    };
    Ok(CT::from_vec(y, (m, n), &candle_core::Device::Cpu)?)
}

/// `x [M, K] · w [N, K]ᵀ` for f32 operands: in wasm [`linear_f32`] (on the pool when one
/// exists); natively candle's matmul (its GEMM has FMA, wide vectors and every core).
fn matmul_nt(x: &CT, w: &CT) -> Result<CT> {
    if cfg!(target_arch = "wasm32") {
        linear_f32(x, w, pool_threads())
    } else {
        Ok(x.matmul(&w.t()?)?)
    }
}

pub(crate) fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    out_shape: &[usize],
) -> Result<Tensor> {
    let cx = x.candle("linear")?;
    let k = x.dim(-1);
    let x2 = cx.reshape(((), k))?;
    let y = match w.storage() {
        Storage::CpuQuant(b) => quantized_linear(&x2, b, w)?,
        _ => matmul_nt(&x2, &f32_of(w, "linear")?)?,
    };
    let y = match bias {
        Some(b) => y.broadcast_add(b.candle("linear")?)?,
        None => y,
    };
    Tensor::from_candle(y.reshape(out_shape)?)
}

/// Rows a native quantized Linear multiplies in integers (`tensor::quant::gemv`: a decode step
/// and its beams); more rows go through candle's f32 GEMM on the exact dequantized weight. In
/// wasm every row count takes the integer kernel.
const GEMV_MAX_ROWS: usize = 8;

/// `x [R, K] · w [N, K]ᵀ` for ggml-block weights: the integer kernel of `tensor::quant::gemv`,
/// which reads the weight in its blocks — in wasm for any number of rows, natively for a decode
/// step. Natively an image or a prompt dequantizes the weight a slab of rows at a time for
/// candle's GEMM instead (FMA, wide vectors: the integer kernel's portable code took 8× longer
/// for CLIP's image). In Chromium, CLIP's q8_0 request on 2 threads took 521 ms through the
/// integer kernel, 529 ms through `gemm.rs`'s f32 tiles on 3 weight rows at a time dequantized
/// into a buffer, and 673 ms with the whole weight dequantized for gemm (fourth session,
/// bench/README.md): dequantizing costs about what the integer kernel saves on multiplying.
fn quantized_linear(x2: &CT, blocks: &[u8], w: &Tensor) -> Result<CT> {
    let (rows, k) = x2.dims2()?;
    let n = w.dim(0);
    let dtype = w.dtype();
    if rows <= GEMV_MAX_ROWS || cfg!(target_arch = "wasm32") {
        let x = x2.flatten_all()?.to_vec1::<f32>()?;
        let y = crate::tensor::quant::gemv(&x, rows, blocks, n, k, dtype)?;
        return Ok(CT::from_vec(y, (rows, n), &candle_core::Device::Cpu)?);
    }
    let row_bytes = blocks.len() / n.max(1);
    // 2048 rows of f32 at a time (6 MiB for K = 768): the whole weight is never expanded
    let slab = 2048;
    let mut parts = Vec::new();
    for chunk in blocks.chunks(slab * row_bytes.max(1)) {
        let r = chunk.len() / row_bytes.max(1);
        let deq = crate::tensor::quant::dequantize_blocks(chunk, dtype)?;
        let wt = CT::from_vec(deq, (r, k), &candle_core::Device::Cpu)?;
        parts.push(matmul_nt(x2, &wt)?);
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        CT::cat(&parts, 1)?
    })
}

pub(crate) fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let (ca, cb) = (a.candle(op.name())?, b.candle(op.name())?);
    let out = match op {
        BinaryOp::Add => ca.broadcast_add(cb)?,
        BinaryOp::Mul => ca.broadcast_mul(cb)?,
    };
    Tensor::from_candle(out)
}

/// Elements per thread below which a row-wise op stays on the calling thread (waking the pool
/// costs more than a few thousand exps).
const ROWS_ON_POOL_MIN: usize = 16 * 1024;

/// `f` (an op that treats each row of the last dimension on its own) over `c`: on the calling
/// thread, or — when a pool exists and `c` is large — over one run of rows per pool thread,
/// joined in order. Each row goes through the same candle op either way, so the values are the
/// same bits; what the pool saves is the time of the activations, LayerNorms and softmaxes that
/// would otherwise run on one thread between the parallel Linears.
fn rows_on_pool(c: &CT, f: impl Fn(&CT) -> candle_core::Result<CT> + Sync) -> Result<CT> {
    rows_split(c, pool_threads(), f)
}

/// [`rows_on_pool`] over `threads` runs.
fn rows_split(
    c: &CT,
    threads: usize,
    f: impl Fn(&CT) -> candle_core::Result<CT> + Sync,
) -> Result<CT> {
    let dims = c.dims().to_vec();
    let cols = dims.last().copied().unwrap_or(1).max(1);
    let rows = c.elem_count() / cols;
    if threads < 2 || rows < 2 || c.elem_count() < ROWS_ON_POOL_MIN * threads {
        return Ok(f(c)?);
    }
    let flat = c.reshape((rows, cols))?;
    let per = rows.div_ceil(threads);
    use rayon::prelude::*;
    let parts = (0..rows.div_ceil(per))
        .into_par_iter()
        .map(|r| f(&flat.narrow(0, r * per, per.min(rows - r * per))?))
        .collect::<candle_core::Result<Vec<CT>>>()?;
    Ok(CT::cat(&parts, 0)?.reshape(dims)?)
}

pub(crate) fn unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    let c = x.candle(op.name())?;
    let out = rows_on_pool(c, |c| match op {
        UnaryOp::GeluErf => c.gelu_erf(),
        UnaryOp::GeluTanh => c.gelu(),
        // x · sigmoid(1.702 x) = x / (1 + exp(-1.702 x))
        UnaryOp::QuickGelu => c / ((c * -1.702)?.exp()? + 1.0)?,
        UnaryOp::Silu => c.silu(),
    })?;
    Tensor::from_candle(out)
}

pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Tensor::from_candle(softmax(x.candle("softmax")?)?)
}

fn softmax(c: &CT) -> Result<CT> {
    rows_on_pool(c, softmax_rows)
}

fn softmax_rows(c: &CT) -> candle_core::Result<CT> {
    let max = c.max_keepdim(D::Minus1)?;
    let e = c.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

pub(crate) fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    let (w, b) = (w.candle("layer_norm")?, b.candle("layer_norm")?);
    let y = rows_on_pool(x.candle("layer_norm")?, |c| {
        let mean = c.mean_keepdim(D::Minus1)?;
        let xc = c.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + eps as f64)?.sqrt()?)?
            .broadcast_mul(w)?
            .broadcast_add(b)
    })?;
    Tensor::from_candle(y)
}

pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let c = x.candle("rms_norm")?;
    let ms = c.sqr()?.mean_keepdim(D::Minus1)?;
    let y = c.broadcast_div(&(ms + eps as f64)?.sqrt()?)?;
    Tensor::from_candle(y.broadcast_mul(w.candle("rms_norm")?)?)
}

pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let c = x.candle("rope")?;
    let (b, h, t, d) = c.dims4()?;
    let (cos, sin) = (cos.candle("rope")?, sin.candle("rope")?);
    let out = if interleaved {
        // (B, H, T, D/2, 2): pairs (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos)
        let x = c.reshape((b, h, t, d / 2, 2))?;
        let x0 = x.narrow(4, 0, 1)?.squeeze(4)?;
        let x1 = x.narrow(4, 1, 1)?.squeeze(4)?;
        let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
        let r1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
        CT::stack(&[r0, r1], 4)?.reshape((b, h, t, d))?
    } else {
        // HF: x·cos + rotate_half(x)·sin with cos = [c, c] over the two halves
        let x0 = c.narrow(3, 0, d / 2)?;
        let x1 = c.narrow(3, d / 2, d / 2)?;
        let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
        let r1 = (x1.broadcast_mul(cos)? + x0.broadcast_mul(sin)?)?;
        CT::cat(&[r0, r1], 3)?
    };
    Tensor::from_candle(out.contiguous()?)
}

pub(crate) fn embedding(table: &Tensor, ids: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
    let flat = ids.candle("embedding")?.flatten_all()?;
    // gather first, widen only the gathered rows (an f16 table stays f16)
    let rows = table.candle("embedding")?.index_select(&flat, 0)?;
    Tensor::from_candle(rows.to_dtype(CDType::F32)?.reshape(out_shape)?)
}

pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOpts,
    kv_len: usize,
) -> Result<Tensor> {
    let (cq, ck, cv) = (
        q.candle("attention")?,
        k.candle("attention")?,
        v.candle("attention")?,
    );
    if cfg!(target_arch = "wasm32") {
        // one head at a time with gemm.rs's tiles, on the pool (attention.rs)
        let mask = opts.mask.map(|m| m.candle("attention")).transpose()?;
        return Tensor::from_candle(attention::attention::<gemm::Native>(
            cq, ck, cv, mask, opts, kv_len,
        )?);
    }
    let (b, h, tq, d) = cq.dims4()?;
    let hkv = ck.dim(1)?;
    let (ck, cv) = (ck.narrow(2, 0, kv_len)?, cv.narrow(2, 0, kv_len)?);
    // grouped-query: repeat each kv head h/hkv times -> (B, H, Tk, D)
    let rep = h / hkv;
    let expand = |t: CT| -> Result<CT> {
        // batch 1 broadcasts over the queries' batch (cross-attention shared by beams)
        Ok(if rep == 1 {
            t.broadcast_as((b, h, kv_len, d))?
        } else {
            t.unsqueeze(2)?
                .expand((b, hkv, rep, kv_len, d))?
                .reshape((b, h, kv_len, d))?
        })
    };
    let (ck, cv) = (expand(ck)?, expand(cv)?);
    // (B, H, Tq, D) @ (B, H, D, Tk) -> (B, H, Tq, Tk)
    let mut s = (cq.contiguous()?.matmul(&ck.t()?.contiguous()?)? * opts.scale as f64)?;
    if let Some(m) = opts.mask {
        // (B|1, Tq, Tk_mask) -> (B|1, 1, Tq, Tk)
        let m = m.candle("attention")?.narrow(2, 0, kv_len)?.unsqueeze(1)?;
        s = s.broadcast_add(&m)?;
    }
    if opts.causal {
        let past = kv_len - tq;
        let mask: Vec<f32> = (0..tq)
            .flat_map(|i| {
                (0..kv_len).map(move |j| {
                    if j <= i + past {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = CT::from_vec(mask, (tq, kv_len), &candle_core::Device::Cpu)?;
        s = s.broadcast_add(&mask)?;
    }
    let p = softmax(&s)?;
    // (B, H, Tq, Tk) @ (B, H, Tk, D) -> (B, H, Tq, D)
    Tensor::from_candle(p.matmul(&cv.contiguous()?)?)
}

pub(crate) fn argmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Tensor::from_candle(x.candle("argmax")?.argmax(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ops_split_over_threads_are_the_same_bits() {
        // 4-D scores as the attention's softmax sees them, an activation's and a LayerNorm's
        // rows (all above the size that goes to the pool): split into runs, uneven ones too
        // (3 rows over 2 threads), the same bits
        let dev = candle_core::Device::Cpu;
        for dims in [vec![2, 12, 50, 50], vec![3, 3072 * 8], vec![2, 9, 4096]] {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0)
                .collect();
            let c = CT::from_vec(v, dims.as_slice(), &dev).unwrap();
            type RowOp<'a> = &'a (dyn Fn(&CT) -> candle_core::Result<CT> + Sync);
            let ops: [RowOp; 3] = [
                &softmax_rows,
                &|c: &CT| c / ((c * -1.702)?.exp()? + 1.0)?,
                &|c: &CT| c.gelu_erf(),
            ];
            for op in ops {
                let want = op(&c)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for threads in [2, 3] {
                    let got = rows_split(&c, threads, op).unwrap();
                    assert_eq!(got.dims(), dims.as_slice());
                    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(g, w)| g.to_bits() == w.to_bits()),
                        "{dims:?} over {threads} threads"
                    );
                }
            }
        }
    }

    #[test]
    fn threaded_linear_is_candles_matmul() {
        // the wasm build's Linear (gemm.rs's tiles, the output's columns split over threads)
        // against candle's matmul of the transposed weight, at a decode row, a few rows and an
        // image's rows
        let dev = candle_core::Device::Cpu;
        for (m, n, k) in [(1, 300, 64), (7, 33, 96), (197, 130, 768)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 40.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 17 % 89) as f32 - 44.0) / 50.0)
                .collect();
            let x = CT::from_vec(x, (m, k), &dev).unwrap();
            let w = CT::from_vec(w, (n, k), &dev).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
            // one run, uneven runs (300 = 2 × 150, 33 = 2 × 18 − 3), more threads than 3-column
            // groups
            for threads in [1, 2, 3, 64] {
                let got = linear_f32(&x, &w, threads)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                for (gr, wr) in got.iter().zip(&want) {
                    for (g, w) in gr.iter().zip(wr) {
                        // the same products summed in another blocking order: f32 rounding of a
                        // k-term sum of terms |·| ≤ 1.2, ~k · 2⁻²⁴ relative to Σ|terms| ≤ 1e-3
                        assert!((g - w).abs() <= 1e-3, "{m}×{n}×{k}, {threads}: {g} vs {w}");
                    }
                }
            }
        }
    }
}
