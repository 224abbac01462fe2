//! Broadcast binary ops (binary.wgsl) and activations (unary.wgsl).

use super::{launch, output, parts, u32_of};
use crate::error::Result;
use crate::gpu::{Shader, Workload};
use crate::tensor::{DType, Tensor};

static BINARY: Shader = Shader {
    name: "binary.wgsl",
    source: include_str!("binary.wgsl"),
};
static UNARY: Shader = Shader {
    name: "unary.wgsl",
    source: concat!(include_str!("activation.wgsl"), include_str!("unary.wgsl")),
};
const WG: u32 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Mul,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Mul => "mul",
        }
    }
}

/// The discriminant is activation.wgsl's `op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    GeluErf,
    GeluTanh,
    QuickGelu,
    Silu,
}

impl UnaryOp {
    /// The kernel of a model's activation function.
    pub fn of(act: crate::io::config::Activation) -> UnaryOp {
        use crate::io::config::Activation;
        match act {
            Activation::Gelu => UnaryOp::GeluErf,
            Activation::GeluTanh => UnaryOp::GeluTanh,
            Activation::QuickGelu => UnaryOp::QuickGelu,
            Activation::Silu => UnaryOp::Silu,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::GeluErf => "gelu_erf",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::QuickGelu => "quick_gelu",
            UnaryOp::Silu => "silu",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BinaryParams {
    shape: [u32; 4],
    a_strides: [u32; 4],
    b_strides: [u32; 4],
    numel: u32,
    row_pitch: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct UnaryParams {
    numel: u32,
    row_pitch: u32,
    _pad: [u32; 2],
}

/// Row-major strides of `shape` seen through the 4-D `out` shape; broadcast dims get stride 0.
fn broadcast_strides(shape: &[usize], out: &[usize; 4]) -> [u32; 4] {
    let mut padded = [1usize; 4];
    padded[4 - shape.len()..].copy_from_slice(shape);
    let mut strides = [0u32; 4];
    let mut s = 1usize;
    for d in (0..4).rev() {
        strides[d] = if padded[d] == 1 && out[d] != 1 {
            0
        } else {
            s as u32
        };
        s *= padded[d];
    }
    strides
}

pub(crate) fn binary(a: &Tensor, b: &Tensor, op: BinaryOp, out_shape: &[usize]) -> Result<Tensor> {
    if out_shape.len() > 4 {
        return Err(crate::error::Error::shape(
            op.name(),
            format!("broadcast ops take up to 4 dims, got {out_shape:?}"),
        ));
    }
    let (ctx, abuf) = parts(a)?;
    let (_, bbuf) = parts(b)?;
    let numel: usize = out_shape.iter().product();
    let mut shape4 = [1usize; 4];
    shape4[4 - out_shape.len()..].copy_from_slice(out_shape);
    let out = output(ctx, op.name(), out_shape, DType::F32)?;
    let workload = Workload::linear(numel, WG);
    let params = BinaryParams {
        shape: shape4.map(|d| d as u32),
        a_strides: broadcast_strides(a.shape(), &shape4),
        b_strides: broadcast_strides(b.shape(), &shape4),
        numel: u32_of(op.name(), "numel", numel)?,
        row_pitch: workload.workgroup_count[0] * WG,
        _pad: [0; 2],
    };
    launch(
        ctx,
        &BINARY,
        "binary",
        vec![("OP", op as u32)],
        &params,
        &[
            (abuf, a.gpu_bytes()),
            (bbuf, b.gpu_bytes()),
            (&out, (numel * 4) as u64),
        ],
        workload,
    )?;
    Ok(Tensor::gpu(ctx, out, out_shape, DType::F32))
}

pub(crate) fn unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    let (ctx, xbuf) = parts(x)?;
    let numel = x.numel();
    let out = output(ctx, op.name(), x.shape(), DType::F32)?;
    let workload = Workload::linear(numel, WG);
    let params = UnaryParams {
        numel: u32_of(op.name(), "numel", numel)?,
        row_pitch: workload.workgroup_count[0] * WG,
        _pad: [0; 2],
    };
    launch(
        ctx,
        &UNARY,
        "unary",
        vec![("OP", op as u32)],
        &params,
        &[(xbuf, x.gpu_bytes()), (&out, (numel * 4) as u64)],
        workload,
    )?;
    Ok(Tensor::gpu(ctx, out, x.shape(), DType::F32))
}
