//! Embedding gather: embedding.wgsl.

use super::{launch, output, parts, u32_of};
use crate::error::Result;
use crate::gpu::{Shader, Workload};
use crate::tensor::{DType, Tensor};

static SHADER: Shader = Shader {
    name: "embedding.wgsl",
    source: include_str!("embedding.wgsl"),
};
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    dim: u32,
    numel: u32,
    row_pitch: u32,
}

pub(crate) fn embedding(table: &Tensor, ids: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
    let (ctx, tbuf) = parts(table)?;
    let (_, ibuf) = parts(ids)?;
    let numel: usize = out_shape.iter().product();
    let out = output(ctx, "embedding", out_shape, DType::F32)?;
    let workload = Workload::linear(numel, WG);
    let op = "embedding";
    let params = Params {
        vocab: u32_of(op, "vocab", table.shape()[0])?,
        dim: u32_of(op, "dim", table.shape()[1])?,
        numel: u32_of(op, "numel", numel)?,
        row_pitch: workload.workgroup_count[0] * WG,
    };
    launch(
        ctx,
        &SHADER,
        "embedding",
        vec![("WDTYPE", table.dtype().kernel_code())],
        &params,
        &[
            (ibuf, ids.gpu_bytes()),
            (tbuf, table.gpu_bytes()),
            (&out, (numel * 4) as u64),
        ],
        workload,
    )?;
    Ok(Tensor::gpu(ctx, out, out_shape, DType::F32))
}
