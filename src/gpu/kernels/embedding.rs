//! Embedding gather: embedding.wgsl. A table split across buffers (larger than one binding)
//! is gathered chunk by chunk into the same output: each chunk writes the rows whose ids fall
//! in its range.

use super::{launch, output, parts, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{GpuBuffer, GpuContext, Shader, Workload};
use crate::tensor::{DType, Tensor};

static SHADER: Shader = Shader {
    name: "embedding.wgsl",
    source: include_str!("embedding.wgsl"),
};
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    /// rows of this table (chunk)
    vocab: u32,
    dim: u32,
    numel: u32,
    row_pitch: u32,
    /// the first id this chunk holds
    row_start: u32,
    /// 1: ids outside [row_start, row_start + vocab) are another chunk's, left unwritten
    skip_outside: u32,
    /// ids at or past this are outside the whole table: zero rows (written by the last chunk)
    vocab_total: u32,
    last_chunk: u32,
}

#[allow(clippy::too_many_arguments)]
fn gather(
    ctx: &std::sync::Arc<GpuContext>,
    table: &Tensor,
    ids: &Tensor,
    out: &GpuBuffer,
    numel: usize,
    row_start: usize,
    vocab_total: usize,
    split: Option<bool>,
) -> Result<()> {
    let (_, tbuf) = parts(table)?;
    let (_, ibuf) = parts(ids)?;
    let workload = Workload::linear(numel, WG);
    let op = "embedding";
    let params = Params {
        vocab: u32_of(op, "vocab", table.shape()[0])?,
        dim: u32_of(op, "dim", table.shape()[1])?,
        numel: u32_of(op, "numel", numel)?,
        row_pitch: workload.workgroup_count[0] * WG,
        row_start: u32_of(op, "row", row_start)?,
        skip_outside: split.is_some() as u32,
        vocab_total: u32_of(op, "vocab", vocab_total)?,
        last_chunk: split.unwrap_or(true) as u32,
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
            (out, (numel * 4) as u64),
        ],
        workload,
    )
}

pub(crate) fn embedding(table: &Tensor, ids: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
    let (ctx, _) = parts(table)?;
    let numel: usize = out_shape.iter().product();
    let out = output(ctx, "embedding", out_shape, DType::F32)?;
    gather(ctx, table, ids, &out, numel, 0, table.shape()[0], None)?;
    Ok(Tensor::gpu(ctx, out, out_shape, DType::F32))
}

/// Gathers from a table split by rows (see `Storage::GpuSplit`).
pub(crate) fn embedding_split(table: &Tensor, ids: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
    let chunks = table
        .split_chunks()
        .ok_or_else(|| Error::Invalid("embedding_split of an unsplit table".into()))?;
    let (ctx, _) = parts(ids)?;
    let numel: usize = out_shape.iter().product();
    let out = output(ctx, "embedding", out_shape, DType::F32)?;
    let last = chunks.len().saturating_sub(1);
    for (i, (start, chunk)) in chunks.iter().enumerate() {
        gather(
            ctx,
            chunk,
            ids,
            &out,
            numel,
            *start,
            table.shape()[0],
            Some(i == last),
        )?;
    }
    Ok(Tensor::gpu(ctx, out, out_shape, DType::F32))
}
