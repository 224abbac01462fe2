//! Row-wise reductions, one workgroup per row: softmax.wgsl, layer_norm.wgsl, argmax.wgsl.

use super::{launch, output, parts, placeholder, u32_of};
use crate::error::Result;
use crate::gpu::{Shader, Workload};
use crate::tensor::{DType, Tensor};

static SOFTMAX: Shader = Shader {
    name: "softmax.wgsl",
    source: include_str!("softmax.wgsl"),
};
static LAYER_NORM: Shader = Shader {
    name: "layer_norm.wgsl",
    source: include_str!("layer_norm.wgsl"),
};
static ARGMAX: Shader = Shader {
    name: "argmax.wgsl",
    source: include_str!("argmax.wgsl"),
};
const WG: u32 = 256;
/// Invocations per workgroup of the one-row-per-invocation kernels.
const ROWS_WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RowParams {
    rows: u32,
    cols: u32,
    groups_x: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormParams {
    row: RowParams,
    eps: f32,
    _pad: [u32; 3],
}

/// The rows of `x` spread over workgroups of `size` invocations, `per_group` rows each: one row
/// per workgroup (`per_group` = 1, the reduction kernels) or one per invocation (`per_group` =
/// `size`, the `_rows` kernels of software adapters). `groups_x` is the number of rows along x;
/// rows past it continue along y.
fn rows_workload(
    op: &'static str,
    x: &Tensor,
    size: u32,
    per_group: usize,
) -> Result<(RowParams, Workload)> {
    let cols = x.dim(-1);
    let rows = x.numel() / cols.max(1);
    let x_groups = rows.div_ceil(per_group).clamp(1, 65535);
    let params = RowParams {
        rows: u32_of(op, "rows", rows)?,
        cols: u32_of(op, "cols", cols)?,
        groups_x: (x_groups * per_group) as u32,
        _pad: 0,
    };
    let workload = Workload {
        workgroup_size: [size, 1],
        workgroup_count: [
            x_groups as u32,
            rows.div_ceil(x_groups * per_group).max(1) as u32,
            1,
        ],
    };
    Ok((params, workload))
}

pub(crate) fn softmax(x: &Tensor) -> Result<Tensor> {
    let (ctx, xbuf) = parts(x)?;
    let (params, workload) = rows_workload("softmax", x, WG, 1)?;
    let out = output(ctx, "softmax", x.shape(), DType::F32)?;
    launch(
        ctx,
        &SOFTMAX,
        "softmax",
        vec![],
        &params,
        &[(xbuf, x.gpu_bytes()), (&out, x.gpu_bytes())],
        workload,
    )?;
    Ok(Tensor::gpu(ctx, out, x.shape(), DType::F32))
}

/// LayerNorm (`rms = false`, weight and bias) or RMSNorm (`rms = true`, weight only).
pub(crate) fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
    rms: bool,
) -> Result<Tensor> {
    let (ctx, xbuf) = parts(x)?;
    let software = ctx.summary().software;
    let (row, workload) = if software {
        rows_workload("layer_norm", x, ROWS_WG, ROWS_WG as usize)?
    } else {
        rows_workload("layer_norm", x, WG, 1)?
    };
    let out = output(ctx, "layer_norm", x.shape(), DType::F32)?;
    let dummy = placeholder(ctx)?;
    let (wbuf, wbytes) = match weight {
        Some(w) => (parts(w)?.1, w.gpu_bytes()),
        None => (&dummy, 4),
    };
    let (bbuf, bbytes) = match bias {
        Some(b) => (parts(b)?.1, b.gpu_bytes()),
        None => (&dummy, 4),
    };
    let params = NormParams {
        row,
        eps,
        _pad: [0; 3],
    };
    launch(
        ctx,
        &LAYER_NORM,
        if software {
            "layer_norm_rows"
        } else {
            "layer_norm"
        },
        vec![("RMS", rms as u32), ("HAS_BIAS", bias.is_some() as u32)],
        &params,
        &[
            (xbuf, x.gpu_bytes()),
            (wbuf, wbytes),
            (bbuf, bbytes),
            (&out, x.gpu_bytes()),
        ],
        workload,
    )?;
    Ok(Tensor::gpu(ctx, out, x.shape(), DType::F32))
}

pub(crate) fn argmax(x: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
    let (ctx, xbuf) = parts(x)?;
    let (params, workload) = rows_workload("argmax", x, WG, 1)?;
    let rows = params.rows as usize;
    let out = output(ctx, "argmax", out_shape, DType::U32)?;
    launch(
        ctx,
        &ARGMAX,
        "argmax",
        vec![],
        &params,
        &[(xbuf, x.gpu_bytes()), (&out, (rows * 4) as u64)],
        workload,
    )?;
    Ok(Tensor::gpu(ctx, out, out_shape, DType::U32))
}
