//! One module per op family: the host function (shape math, params, workload) next to its
//! `.wgsl` file. Shapes and dtypes were already checked by `Tensor`.

pub(crate) mod attention;
pub(crate) mod elementwise;
pub(crate) mod embedding;
pub(crate) mod layout;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod rope;

use std::sync::Arc;

use super::{GpuBuffer, GpuContext, KernelKey, Shader, Workload};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The GPU context and buffer of a tensor already known to be on the GPU.
pub(crate) fn parts(t: &Tensor) -> Result<(&Arc<GpuContext>, &GpuBuffer)> {
    t.gpu_parts()
        .ok_or_else(|| Error::Invalid(format!("{t:?} is not on the GPU")))
}

/// A new output tensor's buffer.
pub(crate) fn output(
    ctx: &Arc<GpuContext>,
    name: &str,
    shape: &[usize],
    dtype: DType,
) -> Result<GpuBuffer> {
    ctx.alloc(name, dtype.gpu_bytes(shape.iter().product()))
}

/// A binding for an optional input the kernel ignores (its flag in the params says so).
pub(crate) fn placeholder(ctx: &Arc<GpuContext>) -> Result<GpuBuffer> {
    ctx.alloc("placeholder", 4)
}

/// Checks that a count fits a u32 shader parameter.
pub(crate) fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::shape(op, format!("{what} = {v} exceeds 2³²")))
}

/// Records one kernel launch with a `#[repr(C)]` params struct.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch<P: bytemuck::Pod>(
    ctx: &Arc<GpuContext>,
    shader: &Shader,
    entry: &'static str,
    mut constants: Vec<(&'static str, u32)>,
    params: &P,
    buffers: &[(&GpuBuffer, u64)],
    workload: Workload,
) -> Result<()> {
    let [x, y] = workload.workgroup_size;
    constants.push(("WG_X", x));
    constants.push(("WG_Y", y));
    for (axis, &count) in ["x", "y", "z"].iter().zip(workload.workgroup_count.iter()) {
        let max = ctx.limits.max_compute_workgroups_per_dimension;
        if count > max {
            return Err(Error::Gpu(format!(
                "{entry}: {count} workgroups along {axis} exceed this GPU's maxComputeWorkgroupsPerDimension = {max}"
            )));
        }
    }
    let key = KernelKey {
        shader: shader.name,
        entry,
        constants,
    };
    ctx.dispatch(shader, key, bytemuck::bytes_of(params), buffers, workload)
}
