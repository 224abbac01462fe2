//! Rotary position embedding: rope.wgsl.

use super::{launch, output, parts, u32_of};
use crate::error::Result;
use crate::gpu::{Shader, Workload};
use crate::tensor::{DType, Tensor};

static SHADER: Shader = Shader {
    name: "rope.wgsl",
    source: include_str!("rope.wgsl"),
};
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    seq: u32,
    head_dim: u32,
    numel: u32,
    row_pitch: u32,
}

pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let (ctx, xbuf) = parts(x)?;
    let (_, cbuf) = parts(cos)?;
    let (_, sbuf) = parts(sin)?;
    let numel = x.numel();
    let out = output(ctx, "rope", x.shape(), DType::F32)?;
    let workload = Workload::linear(numel, WG);
    let params = Params {
        seq: x.shape()[2] as u32,
        head_dim: x.shape()[3] as u32,
        numel: u32_of("rope", "numel", numel)?,
        row_pitch: workload.workgroup_count[0] * WG,
    };
    launch(
        ctx,
        &SHADER,
        "rope",
        vec![("INTERLEAVED", interleaved as u32)],
        &params,
        &[
            (xbuf, x.gpu_bytes()),
            (cbuf, cos.gpu_bytes()),
            (sbuf, sin.gpu_bytes()),
            (&out, x.gpu_bytes()),
        ],
        workload,
    )?;
    Ok(Tensor::gpu(ctx, out, x.shape(), DType::F32))
}
