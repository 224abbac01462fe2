//! Data movement: permute, narrow, cat and the in-place slice write all go through one strided
//! copy (copy.wgsl); im2col (im2col.wgsl) lays patches out for the patch-embedding matmul.

use super::{launch, output, parts, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{GpuBuffer, Shader, Workload};
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

static COPY: Shader = Shader {
    name: "copy.wgsl",
    source: include_str!("copy.wgsl"),
};
static IM2COL: Shader = Shader {
    name: "im2col.wgsl",
    source: include_str!("im2col.wgsl"),
};
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CopyParams {
    shape: [u32; 4],
    src_strides: [u32; 4],
    dst_strides: [u32; 4],
    src_offset: u32,
    dst_offset: u32,
    numel: u32,
    row_pitch: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Im2colParams {
    channels: u32,
    height: u32,
    width: u32,
    patch: u32,
    numel: u32,
    row_pitch: u32,
    _pad: [u32; 2],
}

/// Row-major strides of a shape.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Pads shape/strides at the front to 4 dims.
fn pad4(v: &[usize], fill: usize) -> [u32; 4] {
    let mut out = [fill as u32; 4];
    for (i, &x) in v.iter().enumerate() {
        out[4 - v.len() + i] = x as u32;
    }
    out
}

/// One strided copy of `shape` elements from `src` into `dst`.
#[allow(clippy::too_many_arguments)]
fn copy(
    ctx: &Arc<crate::gpu::GpuContext>,
    src: (&GpuBuffer, u64),
    dst: (&GpuBuffer, u64),
    shape: &[usize],
    src_strides: &[usize],
    src_offset: usize,
    dst_strides: &[usize],
    dst_offset: usize,
) -> Result<()> {
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return Ok(());
    }
    let workload = Workload::linear(numel, WG);
    let params = CopyParams {
        shape: pad4(shape, 1),
        src_strides: pad4(src_strides, 0),
        dst_strides: pad4(dst_strides, 0),
        src_offset: u32_of("copy", "offset", src_offset)?,
        dst_offset: u32_of("copy", "offset", dst_offset)?,
        numel: u32_of("copy", "numel", numel)?,
        row_pitch: workload.workgroup_count[0] * WG,
    };
    launch(
        ctx,
        &COPY,
        "copy_strided",
        vec![],
        &params,
        &[src, dst],
        workload,
    )
}

fn word_dtype(t: &Tensor) -> Result<DType> {
    match t.dtype() {
        DType::F32 | DType::U32 => Ok(t.dtype()),
        _ => Err(Error::Invalid(format!(
            "layout ops copy 32-bit tensors, got {:?}",
            t
        ))),
    }
}

pub(crate) fn permute(x: &Tensor, dims: &[usize], out_shape: &[usize]) -> Result<Tensor> {
    let (ctx, xbuf) = parts(x)?;
    let dtype = word_dtype(x)?;
    let out = output(ctx, "permute", out_shape, dtype)?;
    let in_strides = strides(x.shape());
    let src_strides: Vec<usize> = dims.iter().map(|&d| in_strides[d]).collect();
    copy(
        ctx,
        (xbuf, x.gpu_bytes()),
        (&out, x.gpu_bytes()),
        out_shape,
        &src_strides,
        0,
        &strides(out_shape),
        0,
    )?;
    Ok(Tensor::gpu(ctx, out, out_shape, dtype))
}

pub(crate) fn narrow(x: &Tensor, dim: usize, start: usize, out_shape: &[usize]) -> Result<Tensor> {
    let (ctx, xbuf) = parts(x)?;
    let dtype = word_dtype(x)?;
    let out = output(ctx, "narrow", out_shape, dtype)?;
    let in_strides = strides(x.shape());
    let bytes = dtype.gpu_bytes(out_shape.iter().product());
    copy(
        ctx,
        (xbuf, x.gpu_bytes()),
        (&out, bytes),
        out_shape,
        &in_strides,
        start * in_strides[dim],
        &strides(out_shape),
        0,
    )?;
    Ok(Tensor::gpu(ctx, out, out_shape, dtype))
}

pub(crate) fn cat(ts: &[&Tensor], dim: usize, out_shape: &[usize]) -> Result<Tensor> {
    let (ctx, _) = parts(ts[0])?;
    let dtype = word_dtype(ts[0])?;
    let out = output(ctx, "cat", out_shape, dtype)?;
    let out_bytes = dtype.gpu_bytes(out_shape.iter().product());
    let out_strides = strides(out_shape);
    let mut offset = 0;
    for t in ts {
        let (_, buf) = parts(t)?;
        copy(
            ctx,
            (buf, t.gpu_bytes()),
            (&out, out_bytes),
            t.shape(),
            &strides(t.shape()),
            0,
            &out_strides,
            offset * out_strides[dim],
        )?;
        offset += t.shape()[dim];
    }
    Ok(Tensor::gpu(ctx, out, out_shape, dtype))
}

pub(crate) fn write_slice(dst: &Tensor, src: &Tensor, dim: usize, offset: usize) -> Result<()> {
    let (ctx, dbuf) = parts(dst)?;
    let (_, sbuf) = parts(src)?;
    let dst_strides = strides(dst.shape());
    copy(
        ctx,
        (sbuf, src.gpu_bytes()),
        (dbuf, dst.gpu_bytes()),
        src.shape(),
        &strides(src.shape()),
        0,
        &dst_strides,
        offset * dst_strides[dim],
    )
}

pub(crate) fn im2col(x: &Tensor, patch: usize) -> Result<Tensor> {
    let (ctx, xbuf) = parts(x)?;
    let (b, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let shape = [b * (h / patch) * (w / patch), c * patch * patch];
    let numel = x.numel();
    let out = output(ctx, "im2col", &shape, DType::F32)?;
    let workload = Workload::linear(numel, WG);
    let op = "patch_embed";
    let params = Im2colParams {
        channels: u32_of(op, "C", c)?,
        height: u32_of(op, "H", h)?,
        width: u32_of(op, "W", w)?,
        patch: u32_of(op, "patch", patch)?,
        numel: u32_of(op, "numel", numel)?,
        row_pitch: workload.workgroup_count[0] * WG,
        _pad: [0; 2],
    };
    launch(
        ctx,
        &IM2COL,
        "im2col",
        vec![],
        &params,
        &[(xbuf, x.gpu_bytes()), (&out, x.gpu_bytes())],
        workload,
    )?;
    Ok(Tensor::gpu(ctx, out, &shape, DType::F32))
}

static QKV: Shader = Shader {
    name: "qkv.wgsl",
    source: include_str!("qkv.wgsl"),
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct QkvParams {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    capacity: u32,
    pos: u32,
    numel: u32,
    row_pitch: u32,
}

/// `qkv [B, T, 3·H·Dh]` -> q `[B, H, T, Dh]`, with k and v written into the caches
/// `[B, H, capacity, Dh]` at position `pos` (qkv.wgsl). Shapes were checked by the caller.
pub(crate) fn split_qkv(
    qkv: &Tensor,
    heads: usize,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos: usize,
) -> Result<Tensor> {
    let op = "split_qkv";
    let (ctx, src) = parts(qkv)?;
    let (_, kbuf) = parts(k_cache)?;
    let (_, vbuf) = parts(v_cache)?;
    let (b, t, hd3) = (qkv.dim(0), qkv.dim(1), qkv.dim(2));
    let dh = hd3 / 3 / heads;
    let q_shape = [b, heads, t, dh];
    let q = output(ctx, op, &q_shape, DType::F32)?;
    let numel = qkv.numel();
    let workload = Workload::linear(numel, WG);
    let params = QkvParams {
        batch: u32_of(op, "B", b)?,
        tokens: u32_of(op, "T", t)?,
        heads: u32_of(op, "H", heads)?,
        head_dim: u32_of(op, "Dh", dh)?,
        capacity: u32_of(op, "capacity", k_cache.dim(2))?,
        pos: u32_of(op, "pos", pos)?,
        numel: u32_of(op, "numel", numel)?,
        row_pitch: workload.workgroup_count[0] * WG,
    };
    launch(
        ctx,
        &QKV,
        "split_qkv",
        vec![],
        &params,
        &[
            (src, qkv.gpu_bytes()),
            (&q, (numel / 3 * 4) as u64),
            (kbuf, k_cache.gpu_bytes()),
            (vbuf, v_cache.gpu_bytes()),
        ],
        workload,
    )?;
    Ok(Tensor::gpu(ctx, q, &q_shape, DType::F32))
}
