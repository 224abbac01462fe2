//! Device tensors filled row by row: [`Builder`] takes the stored rows of one tensor (see
//! `convert::Stored`) as they are converted and writes them straight to their destination, an
//! exact-size GPU buffer (split by rows when the weight is larger than one binding) or a CPU
//! tensor, so no second copy of the checkpoint is ever held.

use std::sync::Arc;

use super::convert::{decode, device_dtype, encode, SrcType, Stored};
use crate::error::{Error, Result};
use crate::gpu::{GpuBuffer, GpuContext};
use crate::io::gguf::GgmlType;
use crate::io::weights::{Role, Use};
use crate::tensor::{quant, DType, Device, Storage, Tensor};

fn ggml_of(d: DType) -> GgmlType {
    match d {
        DType::F16 => GgmlType::F16,
        DType::Q8_0 => GgmlType::Q8_0,
        DType::Q4_0 => GgmlType::Q4_0,
        _ => GgmlType::F32,
    }
}

/// One GPU buffer being filled: `rows` rows of the part, written in order.
struct GpuChunk {
    buf: GpuBuffer,
    rows: usize,
    /// bytes written so far (plain layouts) and a tail shorter than 4 bytes not yet written
    written: u64,
    carry: Vec<u8>,
}

enum Acc {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    /// q8_0 / q4_0 blocks (ggml layout)
    Blocks(Vec<u8>),
    Gpu {
        ctx: Arc<GpuContext>,
        chunks: Vec<GpuChunk>,
        rows_per_chunk: usize,
    },
}

/// The destination of one use of a tensor: `parts` equal row blocks (1 = whole), each a tensor
/// on the device in the use's dtype.
pub(crate) struct Builder {
    name: String,
    dtype: DType,
    stored: Stored,
    /// shape of one part
    part_shape: Vec<usize>,
    rows_per_part: usize,
    parts: Vec<Acc>,
    /// a 1-D tensor split into parts has one row: kept whole, split at the end
    split_vector: Option<Vec<f32>>,
    scalar: Option<f32>,
    role: Role,
    device: Device,
    nparts: usize,
}

impl Builder {
    pub fn new(
        name: &str,
        u: &Use,
        stored: &Stored,
        linear: DType,
        device: &Device,
    ) -> Result<Builder> {
        let dtype = device_dtype(u, linear);
        let parts = u.parts.max(1);
        let rows = stored.rows();
        let cols = stored.cols();
        let mut part_shape = u.shape.clone();
        let split_vector = if parts > 1 && u.shape.len() == 1 {
            part_shape[0] /= parts;
            Some(Vec::with_capacity(stored.numel()))
        } else {
            if parts > 1 {
                part_shape[0] /= parts;
            }
            None
        };
        if parts > 1 && !u.shape[0].is_multiple_of(parts) {
            return Err(Error::Weights(format!(
                "tensor {name}: {} rows do not split into {parts} parts",
                u.shape[0]
            )));
        }
        let rows_per_part = if split_vector.is_some() {
            rows
        } else {
            rows / parts
        };
        let mut accs = Vec::new();
        for p in 0..if split_vector.is_some() { 0 } else { parts } {
            let n = rows_per_part * cols;
            accs.push(match (device, dtype) {
                (_, _) if u.role == Role::Scalar => Acc::F32(Vec::new()),
                (Device::Cpu, DType::F32) => Acc::F32(Vec::with_capacity(n)),
                (Device::Cpu, DType::F16) => Acc::F16(Vec::with_capacity(n)),
                (Device::Cpu, _) => Acc::Blocks(Vec::with_capacity(ggml_of(dtype).bytes(n))),
                (Device::Gpu(ctx), _) => {
                    let row_bytes = dtype.gpu_bytes(cols).max(1);
                    let rows_per_chunk = (ctx.max_weight_bytes() / row_bytes) as usize;
                    if rows_per_chunk == 0 {
                        return Err(Error::BindingTooLarge {
                            name: name.to_string(),
                            bytes: row_bytes,
                            mib: row_bytes as f64 / 1048576.0,
                            limit_bytes: ctx.max_weight_bytes(),
                            limit_mib: ctx.max_weight_bytes() as f64 / 1048576.0,
                        });
                    }
                    let mut chunks = Vec::new();
                    let mut left = rows_per_part;
                    while left > 0 || chunks.is_empty() {
                        let r = left.min(rows_per_chunk);
                        let label = if parts > 1 {
                            format!("{name}[{p}]")
                        } else {
                            name.to_string()
                        };
                        chunks.push(GpuChunk {
                            buf: ctx.weight_buffer(&label, dtype.gpu_bytes(r * cols))?,
                            rows: r,
                            written: 0,
                            carry: Vec::new(),
                        });
                        left -= r;
                    }
                    Acc::Gpu {
                        ctx: ctx.clone(),
                        chunks,
                        rows_per_chunk,
                    }
                }
            });
        }
        Ok(Builder {
            name: name.to_string(),
            dtype,
            stored: stored.clone(),
            part_shape,
            rows_per_part,
            parts: accs,
            split_vector,
            scalar: None,
            role: u.role,
            device: device.clone(),
            nparts: parts,
        })
    }

    /// Writes stored rows `[row0, row0 + n)` (`bytes` = n whole stored rows).
    pub fn write_rows(&mut self, row0: usize, bytes: &[u8]) -> Result<()> {
        let cols = self.stored.cols();
        let n = bytes.len() / self.stored.row_bytes().max(1);
        if n == 0 {
            return Ok(());
        }
        let src = SrcType::from_ggml(self.stored.dtype);
        let want = ggml_of(self.dtype);
        if self.role == Role::Scalar {
            self.scalar = decode(src, bytes).first().copied();
            return Ok(());
        }
        if let Some(v) = &mut self.split_vector {
            v.extend(decode(src, bytes));
            return Ok(());
        }
        // rows may cross a part boundary: cut at each
        let mut r = row0;
        let mut at = 0usize;
        let row_bytes = self.stored.row_bytes();
        while r < row0 + n {
            let part = r / self.rows_per_part;
            let in_part = r % self.rows_per_part;
            let take = (self.rows_per_part - in_part).min(row0 + n - r);
            let slice = &bytes[at..at + take * row_bytes];
            let acc = self.parts.get_mut(part).ok_or_else(|| {
                Error::Weights(format!("tensor {}: row {r} past its end", self.name))
            })?;
            match acc {
                Acc::F32(v) => v.extend(decode(src, slice)),
                Acc::F16(v) => {
                    if self.stored.dtype == GgmlType::F16 {
                        v.extend(
                            slice
                                .chunks_exact(2)
                                .map(|b| half::f16::from_le_bytes([b[0], b[1]])),
                        );
                    } else {
                        v.extend(decode(src, slice).into_iter().map(half::f16::from_f32));
                    }
                }
                Acc::Blocks(v) => {
                    if self.stored.dtype == want {
                        v.extend_from_slice(slice);
                    } else {
                        v.extend(encode(&decode(src, slice), cols, want)?);
                    }
                }
                Acc::Gpu {
                    ctx,
                    chunks,
                    rows_per_chunk,
                } => {
                    let dev_bytes = if self.stored.dtype == want {
                        slice.to_vec()
                    } else {
                        encode(&decode(src, slice), cols, want)?
                    };
                    write_gpu(
                        ctx,
                        chunks,
                        *rows_per_chunk,
                        in_part,
                        take,
                        &dev_bytes,
                        want,
                        cols,
                    )?;
                }
            }
            r += take;
            at += take * row_bytes;
        }
        Ok(())
    }

    /// The finished tensors (one per part); for a scalar, its value.
    pub fn finish(self) -> Result<(Vec<Tensor>, Option<f32>)> {
        if self.role == Role::Scalar {
            return Ok((Vec::new(), self.scalar));
        }
        if let Some(v) = self.split_vector {
            let n = self.part_shape[0];
            check_len(&self.name, v.len(), n * self.nparts)?;
            let parts = v
                .chunks(n.max(1))
                .map(|c| Tensor::weight(&self.name, c, &[n], DType::F32, &self.device))
                .collect::<Result<_>>()?;
            return Ok((parts, None));
        }
        let mut out = Vec::with_capacity(self.parts.len());
        for acc in self.parts {
            let shape = self.part_shape.clone();
            let numel: usize = shape.iter().product();
            out.push(match acc {
                Acc::F32(v) => {
                    check_len(&self.name, v.len(), numel)?;
                    Tensor::from_storage(
                        shape.clone(),
                        DType::F32,
                        Storage::Cpu(candle_core::Tensor::from_vec(
                            v,
                            shape,
                            &candle_core::Device::Cpu,
                        )?),
                    )
                }
                Acc::F16(v) => {
                    check_len(&self.name, v.len(), numel)?;
                    Tensor::from_storage(
                        shape.clone(),
                        DType::F16,
                        Storage::Cpu(candle_core::Tensor::from_vec(
                            v,
                            shape,
                            &candle_core::Device::Cpu,
                        )?),
                    )
                }
                Acc::Blocks(v) => {
                    check_len(&self.name, v.len(), ggml_of(self.dtype).bytes(numel))?;
                    Tensor::from_storage(shape, self.dtype, Storage::CpuQuant(Arc::new(v)))
                }
                Acc::Gpu { ctx, chunks, .. } => {
                    let cols = self.stored.cols();
                    let mut done = Vec::with_capacity(chunks.len());
                    for mut c in chunks {
                        if !c.carry.is_empty() {
                            let mut tail = std::mem::take(&mut c.carry);
                            tail.resize(4, 0);
                            ctx.write_buffer(&c.buf, c.written, &tail)?;
                            c.written += 4;
                        }
                        let need = self.dtype.gpu_bytes(c.rows * cols);
                        let plain = !self.dtype.is_quantized();
                        if plain && c.written < need {
                            return Err(Error::Weights(format!(
                                "tensor {}: {} of {need} bytes arrived",
                                self.name, c.written
                            )));
                        }
                        done.push((c.rows, Arc::new(c.buf)));
                    }
                    if done.len() == 1 {
                        let (_, buf) = done.remove(0);
                        Tensor::from_storage(shape, self.dtype, Storage::Gpu { ctx, buf })
                    } else {
                        Tensor::from_storage(
                            shape,
                            self.dtype,
                            Storage::GpuSplit { ctx, chunks: done },
                        )
                    }
                }
            });
        }
        Ok((out, None))
    }
}

fn check_len(name: &str, have: usize, want: usize) -> Result<()> {
    if have != want {
        return Err(Error::Weights(format!(
            "tensor {name}: {have} of {want} values arrived (the file ended early?)"
        )));
    }
    Ok(())
}

/// Writes `take` device-encoded rows starting at row `in_part` of a part into its chunks.
#[allow(clippy::too_many_arguments)]
fn write_gpu(
    ctx: &GpuContext,
    chunks: &mut [GpuChunk],
    rows_per_chunk: usize,
    in_part: usize,
    take: usize,
    bytes: &[u8],
    dtype: GgmlType,
    cols: usize,
) -> Result<()> {
    let row_bytes = dtype.bytes(cols);
    let mut r = in_part;
    let mut at = 0;
    while r < in_part + take {
        let ci = r / rows_per_chunk;
        let rc = r % rows_per_chunk;
        let chunk = &mut chunks[ci];
        let n = (chunk.rows - rc).min(in_part + take - r);
        let slice = &bytes[at..at + n * row_bytes];
        match dtype {
            GgmlType::F32 | GgmlType::F16 => {
                // rows arrive in order: append, keeping a tail under 4 bytes for the next write
                let mut data = std::mem::take(&mut chunk.carry);
                data.extend_from_slice(slice);
                let whole = data.len() / 4 * 4;
                ctx.write_buffer(&chunk.buf, chunk.written, &data[..whole])?;
                chunk.written += whole as u64;
                chunk.carry = data[whole..].to_vec();
            }
            GgmlType::Q8_0 | GgmlType::Q4_0 => {
                // the GPU layout: every block's quant words, then every block's scale (f32)
                let (block_bytes, qwords) = if dtype == GgmlType::Q8_0 {
                    (34, 8)
                } else {
                    (18, 4)
                };
                let bpr = cols / quant::BLOCK;
                let nblocks = chunk.rows * bpr;
                let b0 = rc * bpr;
                let mut q = Vec::with_capacity(n * bpr * qwords * 4);
                let mut s = Vec::with_capacity(n * bpr * 4);
                for blk in slice.chunks_exact(block_bytes) {
                    q.extend_from_slice(&blk[2..2 + qwords * 4]);
                    s.extend(
                        half::f16::from_le_bytes([blk[0], blk[1]])
                            .to_f32()
                            .to_le_bytes(),
                    );
                }
                ctx.write_buffer(&chunk.buf, (b0 * qwords * 4) as u64, &q)?;
                ctx.write_buffer(&chunk.buf, ((nblocks * qwords + b0) * 4) as u64, &s)?;
            }
        }
        r += n;
        at += n * row_bytes;
    }
    Ok(())
}
