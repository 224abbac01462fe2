//! The CPU path: the same ops on candle-core. Shapes were checked by `Tensor`; these functions
//! only compute. f16 weights are widened to f32 per call; q8_0/q4_0 weights multiply their quants
//! by 16-bit activation blocks in integers for a few rows, or are dequantized a slab at a time
//! for an f32 matmul (`quantized_linear`, `tensor::quant`).

use candle_core::{DType as CDType, Tensor as CT, D};

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
        _ => x2.matmul(&f32_of(w, "linear")?.t()?)?,
    };
    let y = match bias {
        Some(b) => y.broadcast_add(b.candle("linear")?)?,
        None => y,
    };
    Tensor::from_candle(y.reshape(out_shape)?)
}

/// `x [R, K] · w [N, K]ᵀ` for ggml-block weights. A few rows (a decode step, its beams) go through
/// the integer kernel of `tensor::quant::gemv`, which reads the weight in its blocks; many rows
/// (an image, a prompt) dequantize the weight a slab of rows at a time for candle's f32 matmul
/// (in wasm the integer kernel is slower than candle's packed f32 GEMM at 50–200 rows).
fn quantized_linear(x2: &CT, blocks: &[u8], w: &Tensor) -> Result<CT> {
    let (rows, k) = x2.dims2()?;
    let n = w.dim(0);
    let dtype = w.dtype();
    if rows <= crate::tensor::quant::GEMV_MAX_ROWS {
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
        parts.push(x2.matmul(&wt.t()?)?);
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

pub(crate) fn unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    let c = x.candle(op.name())?;
    let out = match op {
        UnaryOp::GeluErf => c.gelu_erf()?,
        UnaryOp::GeluTanh => c.gelu()?,
        // x · sigmoid(1.702 x) = x / (1 + exp(-1.702 x))
        UnaryOp::QuickGelu => (c / ((c * -1.702)?.exp()? + 1.0)?)?,
        UnaryOp::Silu => c.silu()?,
    };
    Tensor::from_candle(out)
}

pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Tensor::from_candle(softmax(x.candle("softmax")?)?)
}

fn softmax(c: &CT) -> Result<CT> {
    let max = c.max_keepdim(D::Minus1)?;
    let e = c.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

pub(crate) fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    let c = x.candle("layer_norm")?;
    let mean = c.mean_keepdim(D::Minus1)?;
    let xc = c.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps as f64)?.sqrt()?)?;
    let y = y
        .broadcast_mul(w.candle("layer_norm")?)?
        .broadcast_add(b.candle("layer_norm")?)?;
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
