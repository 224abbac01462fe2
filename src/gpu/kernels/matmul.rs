//! GEMM (prefill) and GEMV (decode) against f32 / f16 / q8_0 / q4_0 weights: matmul.wgsl.

use super::elementwise::UnaryOp;
use super::{launch, output, parts, placeholder, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Shader, Workload};
use crate::tensor::{quant, DType, Tensor};

static SHADER: Shader = Shader {
    name: "matmul.wgsl",
    source: concat!(include_str!("activation.wgsl"), include_str!("matmul.wgsl")),
};

/// GEMM tile of 64×64 outputs from 16×16 invocations (matmul.wgsl's BM, BN, TM, TN).
const GEMM_WG: [u32; 2] = [16, 16];
const GEMM_TILE: usize = 64;
/// GEMV: 256 invocations, 8 output rows per workgroup (matmul.wgsl's GEMV_ROWS).
const GEMV_WG: u32 = 256;
const GEMV_ROWS: usize = 8;
/// gemv_rows (software adapters): one output per invocation, 64 per workgroup.
const GEMV_ROWS_WG: u32 = 64;
/// matmul_rows (software adapters): 8 rows × 4 columns of outputs per invocation, 16×4 invocations per workgroup.
const GEMM_ROWS_WG: [u32; 2] = [16, 4];

/// The GEMM's entry point and workload for M×N outputs per batch: the tiled `matmul`, or on a
/// software adapter the barrier-free `matmul_rows` (see GpuOptions::software).
fn gemm(software: bool, m: usize, n: usize, batch: u32) -> Result<(&'static str, Workload)> {
    let op = "matmul";
    let (entry, size, tile) = if software {
        let [x, y] = GEMM_ROWS_WG;
        (
            "matmul_rows",
            GEMM_ROWS_WG,
            [4 * x as usize, 8 * y as usize],
        )
    } else {
        ("matmul", GEMM_WG, [GEMM_TILE, GEMM_TILE])
    };
    let workload = Workload {
        workgroup_size: size,
        workgroup_count: [
            u32_of(op, "N / tile", n.div_ceil(tile[0]))?,
            u32_of(op, "M / tile", m.div_ceil(tile[1]))?,
            batch,
        ],
    };
    Ok((entry, workload))
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    c_batch_stride: u32,
    scale_offset: u32,
    has_residual: u32,
    /// 0: none, else the activation's op + 1 (activation.wgsl)
    act: u32,
    _pad: [u32; 2],
}

/// Word offset of the scales in a quantized weight of `numel` values.
fn scale_offset(dtype: DType, numel: usize) -> u32 {
    let blocks = (numel / quant::BLOCK) as u64;
    let q = match dtype {
        DType::Q8_0 => quant::Q8_0_WORDS_PER_BLOCK - 1,
        DType::Q4_0 => quant::Q4_0_WORDS_PER_BLOCK - 1,
        _ => 0,
    };
    (blocks * q) as u32
}

/// `a [batch, M, K] @ b` with b `[bb, K, N]` or (`b_t`) `[bb, N, K]`, bb ∈ {1, batch}.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    a: &Tensor,
    b: &Tensor,
    b_t: bool,
    batch: usize,
    bb: usize,
    m: usize,
    n: usize,
    k: usize,
    out_shape: &[usize],
) -> Result<Tensor> {
    let op = "matmul";
    let (ctx, abuf) = parts(a)?;
    let (_, bbuf) = parts(b)?;
    let out = output(ctx, "matmul output", out_shape, DType::F32)?;
    let dummy = placeholder(ctx)?;
    let params = Params {
        m: u32_of(op, "M", m)?,
        n: u32_of(op, "N", n)?,
        k: u32_of(op, "K", k)?,
        has_bias: 0,
        a_batch_stride: u32_of(op, "M·K", m * k)?,
        b_batch_stride: if bb == 1 {
            0
        } else {
            u32_of(op, "K·N", k * n)?
        },
        c_batch_stride: u32_of(op, "M·N", m * n)?,
        scale_offset: 0,
        has_residual: 0,
        act: 0,
        _pad: [0; 2],
    };
    let (entry, workload) = gemm(ctx.summary().software, m, n, u32_of(op, "batch", batch)?)?;
    launch(
        ctx,
        &SHADER,
        entry,
        vec![("WDTYPE", 0), ("B_TRANS", b_t as u32)],
        &params,
        &[
            (abuf, a.gpu_bytes()),
            (bbuf, b.gpu_bytes()),
            (&dummy, 4),
            (&out, (m * n * batch * 4) as u64),
            (&dummy, 4),
        ],
        workload,
    )?;
    Ok(Tensor::gpu(ctx, out, out_shape, DType::F32))
}

/// `act(x [rows, K] · w [N, K]ᵀ + bias) + residual`: GEMV for one row, GEMM otherwise; the
/// activation and the residual add run in the kernel's epilogue. `residual` has the output's shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Option<UnaryOp>,
    residual: Option<&Tensor>,
    rows: usize,
    n: usize,
    k: usize,
    out_shape: &[usize],
) -> Result<Tensor> {
    let op = "linear";
    let (ctx, xbuf) = parts(x)?;
    let (_, wbuf) = parts(w)?;
    if w.dtype().is_quantized() && !k.is_multiple_of(quant::BLOCK) {
        return Err(Error::shape(
            op,
            format!("quantized weight K = {k} is not a multiple of 32"),
        ));
    }
    let out = output(ctx, "linear output", out_shape, DType::F32)?;
    let dummy = placeholder(ctx)?;
    let (bbuf, bbytes) = match bias {
        Some(b) => (parts(b)?.1, b.gpu_bytes()),
        None => (&dummy, 4),
    };
    let (rbuf, rbytes) = match residual {
        Some(r) => (parts(r)?.1, r.gpu_bytes()),
        None => (&dummy, 4),
    };
    let params = Params {
        m: u32_of(op, "rows", rows)?,
        n: u32_of(op, "N", n)?,
        k: u32_of(op, "K", k)?,
        has_bias: bias.is_some() as u32,
        a_batch_stride: 0,
        b_batch_stride: 0,
        c_batch_stride: 0,
        scale_offset: scale_offset(w.dtype(), w.numel()),
        has_residual: residual.is_some() as u32,
        act: act.map_or(0, |a| a as u32 + 1),
        _pad: [0; 2],
    };
    let constants = vec![("WDTYPE", w.dtype().kernel_code()), ("B_TRANS", 1)];
    let buffers = [
        (xbuf, x.gpu_bytes()),
        (wbuf, w.gpu_bytes()),
        (bbuf, bbytes),
        (&out, (rows * n * 4) as u64),
        (rbuf, rbytes),
    ];
    if rows == 1 && ctx.summary().software {
        // one output per invocation, no barriers (see GpuOptions::software)
        let workload = Workload {
            workgroup_size: [GEMV_ROWS_WG, 1],
            workgroup_count: [u32_of(op, "N/64", n.div_ceil(GEMV_ROWS_WG as usize))?, 1, 1],
        };
        launch(
            ctx,
            &SHADER,
            "gemv_rows",
            constants,
            &params,
            &buffers,
            workload,
        )?;
    } else if rows == 1 {
        let workload = Workload {
            workgroup_size: [GEMV_WG, 1],
            workgroup_count: [u32_of(op, "N/8", n.div_ceil(GEMV_ROWS))?, 1, 1],
        };
        launch(ctx, &SHADER, "gemv", constants, &params, &buffers, workload)?;
    } else {
        let (entry, workload) = gemm(ctx.summary().software, rows, n, 1)?;
        launch(ctx, &SHADER, entry, constants, &params, &buffers, workload)?;
    }
    Ok(Tensor::gpu(ctx, out, out_shape, DType::F32))
}
