//! Fused attention for prefill and decode: attention.wgsl.

use super::{launch, output, parts, placeholder, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Shader, Workload};
use crate::tensor::{AttentionOpts, DType, Tensor};

static SHADER: Shader = Shader {
    name: "attention.wgsl",
    source: include_str!("attention.wgsl"),
};
/// 64 invocations; each owns up to 4 output dims (attention.wgsl's MAX_D = 256).
const WG: u32 = 64;
const MAX_HEAD_DIM: usize = 4 * WG as usize;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    heads: u32,
    kv_heads: u32,
    tq: u32,
    kv_len: u32,
    head_dim: u32,
    cap: u32,
    causal: u32,
    has_mask: u32,
    mask_b_stride: u32,
    mask_cols: u32,
    scale: f32,
    /// 1: k and v have batch 1 and serve every query batch row
    kv_shared: u32,
}

/// llvmpipe (lavapipe) stops every loop of a shader invocation once 65535 loop iterations were
/// taken in all (gallivm's loop limiter), silently: `attention_rows`, which walks all keys in one
/// invocation, gave wrong outputs from ~500 keys at head_dim 64 before it read 4 dims per
/// iteration. This budget keeps a margin below that limit; longer rows take `attention`.
const ROWS_LOOP_BUDGET: usize = 60_000;

/// Whether `attention_rows`' loops for `kv_len` keys of `d` dims stay within ROWS_LOOP_BUDGET:
/// per key one iteration of the key loop and two passes over the dims (4 at a time when d is a
/// multiple of 4), plus the query load and the output store.
fn rows_kernel_fits(kv_len: usize, d: usize) -> bool {
    let dims = if d.is_multiple_of(4) { d / 4 } else { d };
    kv_len * (2 * dims + 1) + 2 * dims <= ROWS_LOOP_BUDGET
}

pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOpts,
    kv_len: usize,
) -> Result<Tensor> {
    let op = "attention";
    let (b, h, tq, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (hkv, cap) = (k.shape()[1], k.shape()[2]);
    if d > MAX_HEAD_DIM {
        return Err(Error::shape(
            op,
            format!("head_dim {d} exceeds the GPU kernel's {MAX_HEAD_DIM}"),
        ));
    }
    let (ctx, qbuf) = parts(q)?;
    let (_, kbuf) = parts(k)?;
    let (_, vbuf) = parts(v)?;
    let dummy = placeholder(ctx)?;
    let (mbuf, mbytes, mask_b_stride, mask_cols) = match opts.mask {
        Some(m) => {
            let (mb, _, cols) = (m.shape()[0], m.shape()[1], m.shape()[2]);
            (
                parts(m)?.1,
                m.gpu_bytes(),
                if mb == 1 { 0 } else { tq * cols },
                cols,
            )
        }
        None => (&dummy, 4, 0, 0),
    };
    let out = output(ctx, "attention output", q.shape(), DType::F32)?;
    let params = Params {
        heads: h as u32,
        kv_heads: hkv as u32,
        tq: u32_of(op, "Tq", tq)?,
        kv_len: u32_of(op, "kv_len", kv_len)?,
        head_dim: d as u32,
        cap: u32_of(op, "capacity", cap)?,
        causal: opts.causal as u32,
        has_mask: opts.mask.is_some() as u32,
        mask_b_stride: u32_of(op, "mask stride", mask_b_stride)?,
        mask_cols: u32_of(op, "mask cols", mask_cols)?,
        scale: opts.scale,
        kv_shared: (k.shape()[0] == 1 && b > 1) as u32,
    };
    // one workgroup per query row, or on a software adapter one invocation per query row while
    // its loops stay within llvmpipe's budget (see ROWS_LOOP_BUDGET)
    let rows = ctx.summary().software && rows_kernel_fits(kv_len, d);
    let (entry, rows_wg) = if rows {
        ("attention_rows", WG as usize)
    } else {
        ("attention", 1)
    };
    let workload = Workload {
        workgroup_size: [WG, 1],
        workgroup_count: [
            u32_of(op, "Tq", tq.div_ceil(rows_wg))?,
            u32_of(op, "heads", h)?,
            u32_of(op, "batch", b)?,
        ],
    };
    launch(
        ctx,
        &SHADER,
        entry,
        vec![],
        &params,
        &[
            (qbuf, q.gpu_bytes()),
            (kbuf, k.gpu_bytes()),
            (vbuf, v.gpu_bytes()),
            (mbuf, mbytes),
            (&out, q.gpu_bytes()),
        ],
        workload,
    )?;
    Ok(Tensor::gpu(ctx, out, q.shape(), DType::F32))
}
