//! [`Tensor`] and [`Device`]: the small op set every model is written against. A tensor is always
//! contiguous and row-major; the device and the dtype are data, so a model is written once.
//!
//! Each op checks shapes and dtypes here, once, then runs on the tensor's device: the CPU path
//! is candle-core (`crate::cpu`), the GPU path our WGSL kernels (`crate::gpu::kernels`).

mod ops;
pub mod quant;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{GpuBuffer, GpuContext};
pub use ops::AttentionOpts;

/// Element types. Activations are always `F32`; weights may be stored as `F16`, `Q8_0` or `Q4_0`
/// (ggml block formats, 32 values per block), dequantized inside the kernels; ids are `U32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Q8_0,
    Q4_0,
    U32,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::U32 => "u32",
        }
    }

    pub fn parse(s: &str) -> Result<DType> {
        Ok(match s {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "q8_0" => DType::Q8_0,
            "q4_0" => DType::Q4_0,
            "u32" => DType::U32,
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown dtype {s:?}: expected f32, f16, q8_0 or q4_0"
                )))
            }
        })
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8_0 | DType::Q4_0)
    }

    /// Weight-storage code the kernels read through the `WDTYPE` override constant.
    pub(crate) fn kernel_code(self) -> u32 {
        match self {
            DType::F32 | DType::U32 => 0,
            DType::F16 => 1,
            DType::Q8_0 => 2,
            DType::Q4_0 => 3,
        }
    }

    /// Bytes a tensor of `numel` elements takes in a GPU buffer (see `quant` for the layouts).
    pub(crate) fn gpu_bytes(self, numel: usize) -> u64 {
        let n = numel as u64;
        match self {
            DType::F32 | DType::U32 => 4 * n,
            DType::F16 => 2 * n,
            DType::Q8_0 => (n / 32) * quant::Q8_0_WORDS_PER_BLOCK * 4,
            DType::Q4_0 => (n / 32) * quant::Q4_0_WORDS_PER_BLOCK * 4,
        }
    }
}

/// Where a tensor lives and its ops run.
#[derive(Clone, Debug)]
pub enum Device {
    /// candle-core on the host (wasm32 with simd128 in the browser).
    Cpu,
    /// Our WGSL kernels through wgpu: WebGPU in the browser; Vulkan, Metal or DX12 natively.
    Gpu(Arc<GpuContext>),
}

impl Device {
    pub fn name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu(_) => "gpu",
        }
    }

    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Gpu(a), Device::Gpu(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Waits for queued GPU work (no-op on the CPU). Used by benchmarks.
    pub async fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Gpu(ctx) => ctx.synchronize().await,
        }
    }
}

pub(crate) enum Storage {
    /// f32, f16 and u32 tensors on the CPU.
    Cpu(candle_core::Tensor),
    /// q8_0 / q4_0 weights [N, K] on the CPU: ggml blocks, row after row (see `quant`).
    CpuQuant(Arc<Vec<u8>>),
    Gpu {
        ctx: Arc<GpuContext>,
        buf: Arc<GpuBuffer>,
    },
    /// A weight `[N, K]` larger than one storage binding, split by rows: each chunk holds
    /// `rows` consecutive rows in the dtype's own GPU layout. Only Linear and embedding read it.
    GpuSplit {
        ctx: Arc<GpuContext>,
        chunks: Vec<(usize, Arc<GpuBuffer>)>,
    },
    /// Shape and dtype only, no data: what a model's constructor gets while glimpse plans a
    /// load (which tensors it reads, and how), before any weight has arrived. No op runs on it.
    Meta,
}

struct Inner {
    shape: Vec<usize>,
    dtype: DType,
    storage: Storage,
}

/// An n-dimensional array on a [`Device`]. Cheap to clone (shared storage).
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, {})",
            self.shape(),
            self.dtype().name(),
            self.device().name()
        )
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn rank(&self) -> usize {
        self.0.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }
    /// Size of dimension `d`; negative counts from the end.
    pub fn dim(&self, d: isize) -> usize {
        let r = self.rank() as isize;
        let i = if d < 0 { r + d } else { d };
        if i < 0 || i >= r {
            return 1;
        }
        self.0.shape[i as usize]
    }
    pub fn device(&self) -> Device {
        match &self.0.storage {
            Storage::Cpu(_) | Storage::CpuQuant(_) | Storage::Meta => Device::Cpu,
            Storage::Gpu { ctx, .. } | Storage::GpuSplit { ctx, .. } => Device::Gpu(ctx.clone()),
        }
    }
    pub(crate) fn storage(&self) -> &Storage {
        &self.0.storage
    }

    pub(crate) fn from_storage(shape: Vec<usize>, dtype: DType, storage: Storage) -> Tensor {
        Tensor(Arc::new(Inner {
            shape,
            dtype,
            storage,
        }))
    }

    /// Wraps a candle tensor (f32, f16 or u32).
    pub(crate) fn from_candle(t: candle_core::Tensor) -> Result<Tensor> {
        let dtype = match t.dtype() {
            candle_core::DType::F32 => DType::F32,
            candle_core::DType::F16 => DType::F16,
            candle_core::DType::U32 => DType::U32,
            other => {
                return Err(Error::Invalid(format!(
                    "unexpected CPU dtype {other:?} (glimpse uses f32, f16 and u32)"
                )))
            }
        };
        let shape = t.dims().to_vec();
        Ok(Tensor::from_storage(shape, dtype, Storage::Cpu(t)))
    }

    pub(crate) fn gpu_parts(&self) -> Option<(&Arc<GpuContext>, &GpuBuffer)> {
        match &self.0.storage {
            Storage::Gpu { ctx, buf } => Some((ctx, buf)),
            _ => None,
        }
    }

    /// The chunks of a weight split across buffers, each as a tensor `[rows, K]` of its own,
    /// with the row it starts at; `None` unless the weight is split.
    pub(crate) fn split_chunks(&self) -> Option<Vec<(usize, Tensor)>> {
        let Storage::GpuSplit { ctx, chunks } = &self.0.storage else {
            return None;
        };
        let k = self.dim(-1);
        let mut start = 0;
        Some(
            chunks
                .iter()
                .map(|(rows, buf)| {
                    let t = Tensor::from_storage(
                        vec![*rows, k],
                        self.dtype(),
                        Storage::Gpu {
                            ctx: ctx.clone(),
                            buf: buf.clone(),
                        },
                    );
                    let at = start;
                    start += rows;
                    (at, t)
                })
                .collect(),
        )
    }

    /// The bytes of an f32 split weight, chunk after chunk (f32 layouts concatenate).
    async fn split_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for (_, c) in self.split_chunks().unwrap_or_default() {
            let (ctx, buf) = c
                .gpu_parts()
                .ok_or_else(|| self.dtype_err("read", "split chunk"))?;
            out.extend(ctx.read(buf, c.gpu_bytes()).await?);
        }
        Ok(out)
    }

    /// Bytes this tensor occupies in its GPU buffer.
    pub(crate) fn gpu_bytes(&self) -> u64 {
        self.dtype().gpu_bytes(self.numel())
    }

    /// A new f32 tensor from host data.
    pub fn from_f32(data: &[f32], shape: &[usize], device: &Device) -> Result<Tensor> {
        Self::check_len("from_f32", data.len(), shape)?;
        match device {
            Device::Cpu => Tensor::from_candle(candle_core::Tensor::from_slice(
                data,
                shape,
                &candle_core::Device::Cpu,
            )?),
            Device::Gpu(ctx) => {
                let buf = ctx.upload("input", bytemuck::cast_slice(data))?;
                Ok(Self::gpu(ctx, buf, shape, DType::F32))
            }
        }
    }

    /// A new u32 tensor (token ids) from host data.
    pub fn from_u32(data: &[u32], shape: &[usize], device: &Device) -> Result<Tensor> {
        Self::check_len("from_u32", data.len(), shape)?;
        match device {
            Device::Cpu => Tensor::from_candle(candle_core::Tensor::from_slice(
                data,
                shape,
                &candle_core::Device::Cpu,
            )?),
            Device::Gpu(ctx) => {
                let buf = ctx.upload("ids", bytemuck::cast_slice(data))?;
                Ok(Self::gpu(ctx, buf, shape, DType::U32))
            }
        }
    }

    /// A weight tensor stored as `dtype` (f32, f16, q8_0 or q4_0), made from f32 host data.
    /// Quantized weights are 2-D `[N, K]` (a Linear's layout) with K a multiple of 32.
    pub fn weight(
        name: &str,
        data: &[f32],
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        Self::check_len("weight", data.len(), shape)?;
        match dtype {
            DType::F32 => match device {
                Device::Cpu => Self::from_f32(data, shape, device),
                Device::Gpu(ctx) => {
                    let buf = ctx.upload_weight(name, bytemuck::cast_slice(data))?;
                    Ok(Self::gpu(ctx, buf, shape, DType::F32))
                }
            },
            DType::U32 => Err(Error::DType {
                op: "weight",
                dtype: "u32",
                msg: "weights are f32, f16, q8_0 or q4_0".into(),
            }),
            DType::F16 => match device {
                Device::Cpu => Tensor::from_candle(
                    candle_core::Tensor::from_slice(data, shape, &candle_core::Device::Cpu)?
                        .to_dtype(candle_core::DType::F16)?,
                ),
                Device::Gpu(ctx) => {
                    let halves: Vec<half::f16> =
                        data.iter().map(|&x| half::f16::from_f32(x)).collect();
                    let buf = ctx.upload_weight(name, bytemuck::cast_slice(&halves))?;
                    Ok(Self::gpu(ctx, buf, shape, DType::F16))
                }
            },
            DType::Q8_0 | DType::Q4_0 => {
                let blocks = quant::quantize(name, data, shape, dtype)?;
                match device {
                    Device::Cpu => Ok(Tensor::from_storage(
                        shape.to_vec(),
                        dtype,
                        Storage::CpuQuant(Arc::new(blocks)),
                    )),
                    Device::Gpu(ctx) => {
                        let words = quant::pack_for_gpu(&blocks, dtype)?;
                        let buf = ctx.upload_weight(name, bytemuck::cast_slice(&words))?;
                        Ok(Self::gpu(ctx, buf, shape, dtype))
                    }
                }
            }
        }
    }

    /// A placeholder with a shape and a dtype but no data (see [`Storage::Meta`]).
    pub(crate) fn meta(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::from_storage(shape.to_vec(), dtype, Storage::Meta)
    }

    /// An f32 tensor whose values are not set (a pooled GPU buffer's old contents): for outputs
    /// that are written before they are read, e.g. a KV cache's spare rows.
    pub fn empty(shape: &[usize], device: &Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Tensor::zeros(shape, device),
            Device::Gpu(ctx) => {
                let buf = ctx.alloc("empty", DType::F32.gpu_bytes(numel(shape)))?;
                Ok(Self::gpu(ctx, buf, shape, DType::F32))
            }
        }
    }

    /// An f32 tensor of zeros.
    pub fn zeros(shape: &[usize], device: &Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Tensor::from_candle(candle_core::Tensor::zeros(
                shape,
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?),
            Device::Gpu(ctx) => {
                let data = vec![0u8; DType::F32.gpu_bytes(numel(shape)) as usize];
                let buf = ctx.upload("zeros", &data)?;
                Ok(Self::gpu(ctx, buf, shape, DType::F32))
            }
        }
    }

    pub(crate) fn gpu(
        ctx: &Arc<GpuContext>,
        buf: GpuBuffer,
        shape: &[usize],
        dtype: DType,
    ) -> Tensor {
        Tensor::from_storage(
            shape.to_vec(),
            dtype,
            Storage::Gpu {
                ctx: ctx.clone(),
                buf: Arc::new(buf),
            },
        )
    }

    fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
        if len != numel(shape) {
            return Err(Error::shape(
                op,
                format!("{len} values do not fill shape {shape:?}"),
            ));
        }
        Ok(())
    }

    /// Copies the tensor to `device` (weights keep their dtype).
    pub async fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device().same(device) {
            return Ok(self.clone());
        }
        match self.dtype() {
            DType::F32 => Tensor::from_f32(&self.to_vec_f32().await?, self.shape(), device),
            DType::U32 => Tensor::from_u32(&self.to_vec_u32().await?, self.shape(), device),
            d => Tensor::weight(
                "copy",
                &self.dequantize_to_vec().await?,
                self.shape(),
                d,
                device,
            ),
        }
    }

    /// Reads an f32 tensor back to the host. On the GPU this submits the pending step.
    pub async fn to_vec_f32(&self) -> Result<Vec<f32>> {
        self.read_words("to_vec_f32", DType::F32).await
    }

    /// Reads a u32 tensor (ids) back to the host.
    pub async fn to_vec_u32(&self) -> Result<Vec<u32>> {
        self.read_words("to_vec_u32", DType::U32).await
    }

    async fn read_words<T>(&self, op: &'static str, dtype: DType) -> Result<Vec<T>>
    where
        T: bytemuck::Pod + candle_core::WithDType,
    {
        self.expect_dtype(op, dtype)?;
        match &self.0.storage {
            Storage::Cpu(t) => Ok(t.flatten_all()?.to_vec1::<T>()?),
            Storage::Gpu { ctx, buf } => {
                let bytes = ctx.read(buf, self.gpu_bytes()).await?;
                Ok(bytemuck::pod_collect_to_vec(&bytes))
            }
            Storage::CpuQuant(_) => Err(self.dtype_err(op, "not a dense tensor")),
            Storage::Meta => Err(self.dtype_err(op, "a planning placeholder holds no data")),
            Storage::GpuSplit { .. } => {
                Ok(bytemuck::pod_collect_to_vec(&self.split_bytes().await?))
            }
        }
    }

    /// The values of any weight tensor as f32 on the host (dequantized if quantized).
    pub async fn dequantize_to_vec(&self) -> Result<Vec<f32>> {
        match (&self.0.storage, self.dtype()) {
            (_, DType::F32) => self.to_vec_f32().await,
            (Storage::Cpu(t), DType::F16) => Ok(t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?),
            (Storage::CpuQuant(b), d) => quant::dequantize_blocks(b, d),
            (Storage::Gpu { ctx, buf }, d) => {
                let bytes = ctx.read(buf, self.gpu_bytes()).await?;
                let words: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
                quant::unpack_from_gpu(&words, self.numel(), d)
            }
            (Storage::GpuSplit { ctx, chunks }, d) => {
                let k = self.dim(-1);
                let mut out = Vec::with_capacity(self.numel());
                for (rows, buf) in chunks {
                    let bytes = ctx.read(buf, d.gpu_bytes(rows * k)).await?;
                    let words: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
                    out.extend(quant::unpack_from_gpu(&words, rows * k, d)?);
                }
                Ok(out)
            }
            _ => Err(self.dtype_err("dequantize", "not a weight tensor")),
        }
    }

    pub(crate) fn expect_dtype(&self, op: &'static str, dtype: DType) -> Result<()> {
        if self.dtype() != dtype {
            return Err(self.dtype_err(op, &format!("expected {}", dtype.name())));
        }
        Ok(())
    }

    pub(crate) fn dtype_err(&self, op: &'static str, msg: &str) -> Error {
        Error::DType {
            op,
            dtype: self.dtype().name(),
            msg: msg.to_string(),
        }
    }

    /// The candle tensor behind a CPU f32/f16/u32 tensor.
    pub(crate) fn candle(&self, op: &'static str) -> Result<&candle_core::Tensor> {
        match &self.0.storage {
            Storage::Cpu(t) => Ok(t),
            _ => Err(Error::DeviceMismatch {
                op,
                lhs: "cpu",
                rhs: self.device().name(),
            }),
        }
    }

    /// Same data, new shape (free: tensors are contiguous).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} as {:?}", self.shape(), shape),
            ));
        }
        let storage = match &self.0.storage {
            Storage::Cpu(t) => Storage::Cpu(t.reshape(shape)?),
            Storage::CpuQuant(_) => {
                return Err(self.dtype_err("reshape", "quantized weights keep their [N, K] shape"))
            }
            Storage::Meta => Storage::Meta,
            Storage::GpuSplit { .. } => {
                return Err(self.dtype_err("reshape", "a split weight keeps its [N, K] shape"))
            }
            Storage::Gpu { ctx, buf } => Storage::Gpu {
                ctx: ctx.clone(),
                buf: buf.clone(),
            },
        };
        Ok(Tensor::from_storage(shape.to_vec(), self.dtype(), storage))
    }
}

/// Makes sure all tensors are on one device; returns it.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let d = ts[0].device();
    for t in &ts[1..] {
        let e = t.device();
        if !d.same(&e) {
            return Err(Error::DeviceMismatch {
                op,
                lhs: d.name(),
                rhs: e.name(),
            });
        }
    }
    Ok(d)
}
