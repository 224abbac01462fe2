//! The wgpu side of the engine: one [`GpuContext`] per device, holding the queue, a buffer pool,
//! a pipeline cache keyed by [`KernelKey`], and the command encoder that the current forward step
//! records into. Work is submitted only when the host needs a result (readback) or asks (`flush`).

pub(crate) mod kernels;
mod pool;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
pub(crate) use pool::GpuBuffer;

/// Reads one limit from wgpu's struct.
type LimitGetter = fn(&wgpu::Limits) -> u64;

/// What glimpse's kernels need from a GPU, the weakest target (WebGPU's defaults) included.
/// Each entry: (limit name as WebGPU spells it, how to read it, minimum).
const REQUIRED_LIMITS: &[(&str, LimitGetter, u64)] = &[
    (
        "maxComputeInvocationsPerWorkgroup",
        |l| l.max_compute_invocations_per_workgroup as u64,
        256,
    ),
    (
        "maxComputeWorkgroupSizeX",
        |l| l.max_compute_workgroup_size_x as u64,
        256,
    ),
    (
        "maxStorageBuffersPerShaderStage",
        |l| l.max_storage_buffers_per_shader_stage as u64,
        8,
    ),
    (
        "maxComputeWorkgroupStorageSize",
        |l| l.max_compute_workgroup_storage_size as u64,
        16384,
    ),
    (
        "maxComputeWorkgroupsPerDimension",
        |l| l.max_compute_workgroups_per_dimension as u64,
        65535,
    ),
];

/// Returns the first limit this adapter lacks, as a user-facing error.
pub fn check_limits(limits: &wgpu::Limits) -> Result<()> {
    for (name, get, need) in REQUIRED_LIMITS {
        let have = get(limits);
        if have < *need {
            return Err(Error::MissingLimit {
                limit: name,
                have,
                need: *need,
            });
        }
    }
    Ok(())
}

/// Options for creating a GPU context.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Ask the device for a smaller storage-binding limit than the adapter offers, e.g. to
    /// behave like a phone GPU (128 MiB). `None`: the adapter's own limit.
    pub max_storage_buffer_binding_size: Option<u64>,
    /// The adapter is a software one (SwiftShader, lavapipe): pick kernels without workgroup
    /// barriers where glimpse has them (each barrier there switches through every invocation of
    /// the workgroup). `None`: what wgpu reports (`DeviceType::Cpu`); in a browser the page
    /// passes whether the adapter is emulated (`isFallbackAdapter`, or a SwiftShader / llvmpipe name).
    pub software: Option<bool>,
}

/// A description of the adapter, for display and for benchmark tables.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub shader_f16: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    /// Software adapter: barrier-free kernel variants are used (`GpuOptions::software`).
    pub software: bool,
}

/// Identifies a compiled pipeline: the shader file, its entry point and the override constants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct KernelKey {
    pub shader: &'static str,
    pub entry: &'static str,
    /// Override constants as (name, value); values are integral or booleans in every shader.
    pub constants: Vec<(&'static str, u32)>,
}

/// How many invocations a workgroup has and how many workgroups a dispatch launches.
/// The workgroup size reaches the shader through the `WG_X`/`WG_Y` override constants, so the
/// size the host plans with is the size the shader runs with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Workload {
    pub workgroup_size: [u32; 2],
    pub workgroup_count: [u32; 3],
}

impl Workload {
    /// A 1-D problem of `n` items, one per invocation, spread over x and y so that no dimension
    /// exceeds the 65535-workgroup limit.
    pub fn linear(n: usize, wg: u32) -> Workload {
        let groups = (n as u64).div_ceil(wg as u64).max(1);
        let x = groups.min(65535) as u32;
        let y = groups.div_ceil(x as u64) as u32;
        Workload {
            workgroup_size: [wg, 1],
            workgroup_count: [x, y, 1],
        }
    }
}

/// A shader source embedded in the binary.
pub(crate) struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

struct CachedPipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Uniform parameters of the dispatches recorded so far, written to their buffers at submit time.
struct UniformArena {
    chunks: Vec<wgpu::Buffer>,
    /// Bytes of each chunk in use by the current recording, and the staged contents.
    staged: Vec<Vec<u8>>,
    current: usize,
}

const UNIFORM_CHUNK: u64 = 64 * 1024;

/// Everything about the step being recorded, under one lock: dispatches from several threads
/// (native tests share a context) must not interleave their uniforms with a submit.
struct Recording {
    encoder: Option<wgpu::CommandEncoder>,
    /// The one compute pass the step's dispatches go into, open until the encoder is needed for
    /// something else (a readback copy) or submitted. WebGPU orders the dispatches of a pass
    /// (each is its own usage scope), so a kernel reads what the previous one wrote.
    pass: Option<wgpu::ComputePass<'static>>,
    dispatches: usize,
    uniforms: UniformArena,
}

pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    summary: AdapterSummary,
    shaders: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<KernelKey, Arc<CachedPipeline>>>,
    recording: Mutex<Recording>,
    pool: Arc<pool::Pool>,
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    uniform_align: u64,
    /// Dispatches recorded and submits made since the context was created (benchmarks).
    total_dispatches: std::sync::atomic::AtomicU64,
    total_submits: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuContext({})", self.summary.name)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update; the data is still usable
    // for our purposes (caches and staging), so recover it rather than propagate the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GpuContext {
    /// Finds an adapter, checks the limits glimpse needs and creates a device with the adapter's
    /// own limits (so storage bindings are not capped at WebGPU's 128 MiB default).
    pub async fn new(opts: &GpuOptions) -> Result<Arc<GpuContext>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                // wgpu lists every backend it was built without; in a browser only WebGPU matters
                if cfg!(target_arch = "wasm32") {
                    Error::NoAdapter("navigator.gpu gave no WebGPU adapter".into())
                } else {
                    Error::NoAdapter(e.to_string())
                }
            })?;
        let mut limits = adapter.limits();
        check_limits(&limits)?;
        if let Some(cap) = opts.max_storage_buffer_binding_size {
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(cap);
        }
        let info = adapter.get_info();
        let features = adapter.features();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("glimpse"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;

        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&sink).push(e.to_string());
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lock(&lost_sink) = Some(format!("{reason:?}: {msg}"));
        });

        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            software: opts
                .software
                .unwrap_or(info.device_type == wgpu::DeviceType::Cpu),
        };
        let uniform_align = limits.min_uniform_buffer_offset_alignment.max(16) as u64;
        Ok(Arc::new(GpuContext {
            pool: Arc::new(pool::Pool::new(device.clone(), limits.max_buffer_size)),
            device,
            queue,
            limits,
            summary,
            shaders: Mutex::default(),
            pipelines: Mutex::default(),
            recording: Mutex::new(Recording {
                encoder: None,
                pass: None,
                dispatches: 0,
                uniforms: UniformArena {
                    chunks: Vec::new(),
                    staged: Vec::new(),
                    current: 0,
                },
            }),
            errors,
            lost,
            uniform_align,
            total_dispatches: Default::default(),
            total_submits: Default::default(),
        }))
    }

    pub fn summary(&self) -> &AdapterSummary {
        &self.summary
    }

    /// Why the device was lost (`None` while it works). WebGPU reports the loss asynchronously,
    /// so a request may fail with a readback error first and see the reason here afterwards.
    pub fn lost_reason(&self) -> Option<String> {
        lock(&self.lost).clone()
    }

    /// Destroys the device, as a driver reset or a closed GPU process would. The engine then
    /// reports the loss on its next GPU operation; used to test recovery.
    pub fn destroy(&self) {
        self.device.destroy();
    }

    /// Fails if the device was lost or a GPU validation error was reported since the last check.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(reason) = lock(&self.lost).clone() {
            return Err(Error::DeviceLost(reason));
        }
        let mut errs = lock(&self.errors);
        if !errs.is_empty() {
            let msg = errs.join("; ");
            errs.clear();
            return Err(Error::Gpu(msg));
        }
        Ok(())
    }

    /// A buffer of at least `bytes` bytes for tensor `name`, from the pool. Fails with the limit
    /// named when the tensor cannot be bound as one storage buffer on this device.
    pub(crate) fn alloc(&self, name: &str, bytes: u64) -> Result<GpuBuffer> {
        let bytes = bytes.max(4).next_multiple_of(4);
        let limit = self.limits.max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(Error::BindingTooLarge {
                name: name.to_string(),
                bytes,
                mib: bytes as f64 / (1024.0 * 1024.0),
                limit_bytes: limit,
                limit_mib: limit as f64 / (1024.0 * 1024.0),
            });
        }
        Ok(self.pool.get(bytes))
    }

    /// The most bytes one weight buffer may hold here: the storage-binding limit (a kernel binds
    /// a weight whole) and the buffer-size limit. Larger weights are split by rows.
    pub(crate) fn max_weight_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// An exact-size buffer for weight `name`, outside the pool: it is destroyed when its
    /// tensor is dropped (with its model).
    pub(crate) fn weight_buffer(&self, name: &str, bytes: u64) -> Result<GpuBuffer> {
        let bytes = bytes.max(4).next_multiple_of(4);
        let limit = self.max_weight_bytes();
        if bytes > limit {
            return Err(Error::BindingTooLarge {
                name: name.to_string(),
                bytes,
                mib: bytes as f64 / (1024.0 * 1024.0),
                limit_bytes: limit,
                limit_mib: limit as f64 / (1024.0 * 1024.0),
            });
        }
        let buf = pool::exact(&self.pool, name, bytes);
        self.check()?;
        Ok(buf)
    }

    /// Writes `data` (a multiple of 4 bytes) at byte `offset` of a buffer no recorded command
    /// uses yet (a weight being loaded).
    pub(crate) fn write_buffer(&self, buf: &GpuBuffer, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.queue.write_buffer(buf.raw(), offset, data);
        self.check()
    }

    /// Uploads a weight into an exact-size buffer (see [`GpuContext::weight_buffer`]).
    pub(crate) fn upload_weight(&self, name: &str, data: &[u8]) -> Result<GpuBuffer> {
        let buf = self.weight_buffer(name, data.len() as u64)?;
        if data.len().is_multiple_of(4) {
            self.write_buffer(&buf, 0, data)?;
        } else {
            let mut padded = data.to_vec();
            padded.resize(data.len().next_multiple_of(4), 0);
            self.write_buffer(&buf, 0, &padded)?;
        }
        Ok(buf)
    }

    /// Gives the pool's free buffers back to the GPU (after a model is dropped); returns the
    /// bytes released.
    pub fn trim_pool(&self) -> u64 {
        let mut rec = lock(&self.recording);
        // free buffers may still be read by recorded commands: submit those first
        self.submit_locked(&mut rec);
        drop(rec);
        self.pool.trim()
    }

    /// Bytes held by the pool's free buffers.
    pub fn pool_free_bytes(&self) -> u64 {
        self.pool.free_bytes()
    }

    /// Bytes of GPU buffers glimpse holds (weights, live activations and the pool's free
    /// buffers; staging buffers for readback are not counted).
    pub fn held_bytes(&self) -> u64 {
        self.pool.held_bytes()
    }

    /// Uploads `data` into a fresh pooled buffer.
    pub(crate) fn upload(&self, name: &str, data: &[u8]) -> Result<GpuBuffer> {
        let buf = self.alloc(name, data.len() as u64)?;
        // queue.write_buffer runs before any command recorded but not yet submitted; the pooled
        // buffer may still be read by such a command (its previous owner), so submit those first.
        let mut rec = lock(&self.recording);
        self.submit_locked(&mut rec);
        let mut padded;
        let bytes = if !data.len().is_multiple_of(4) {
            padded = data.to_vec();
            padded.resize(data.len().next_multiple_of(4), 0);
            &padded[..]
        } else {
            data
        };
        if !bytes.is_empty() {
            self.queue.write_buffer(buf.raw(), 0, bytes);
        }
        drop(rec);
        self.check()?;
        Ok(buf)
    }

    fn shader_module(&self, shader: &Shader) -> wgpu::ShaderModule {
        let mut shaders = lock(&self.shaders);
        shaders
            .entry(shader.name)
            .or_insert_with(|| {
                self.device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name),
                        source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                    })
            })
            .clone()
    }

    fn pipeline(&self, shader: &Shader, key: &KernelKey) -> Result<Arc<CachedPipeline>> {
        if let Some(p) = lock(&self.pipelines).get(key) {
            return Ok(p.clone());
        }
        let module = self.shader_module(shader);
        let constants: Vec<(&str, f64)> =
            key.constants.iter().map(|(k, v)| (*k, *v as f64)).collect();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key.entry),
                layout: None,
                module: &module,
                entry_point: Some(key.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        // A shader that fails to build is a bug in glimpse, reported as an error, never a warning.
        self.check()?;
        let layout = pipeline.get_bind_group_layout(0);
        let cached = Arc::new(CachedPipeline { pipeline, layout });
        lock(&self.pipelines).insert(key.clone(), cached.clone());
        Ok(cached)
    }

    /// Stages `params` in the uniform arena; returns (chunk buffer, offset).
    fn stage_uniform(&self, u: &mut UniformArena, params: &[u8]) -> (wgpu::Buffer, u64) {
        let size = (params.len() as u64).next_multiple_of(self.uniform_align);
        loop {
            if u.current == u.chunks.len() {
                let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("glimpse uniforms"),
                    size: UNIFORM_CHUNK,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                u.chunks.push(buf);
                u.staged.push(Vec::new());
            }
            let cur = u.current;
            let used = u.staged[cur].len() as u64;
            if used + size <= UNIFORM_CHUNK {
                let staged = &mut u.staged[cur];
                staged.extend_from_slice(params);
                staged.resize((used + size) as usize, 0);
                return (u.chunks[cur].clone(), used);
            }
            u.current += 1;
        }
    }

    /// Records one compute dispatch into the current step's command encoder. Binding 0 is the
    /// params uniform; `buffers` are bindings 1.., each bound with its tensor's byte size.
    pub(crate) fn dispatch(
        &self,
        shader: &Shader,
        key: KernelKey,
        params: &[u8],
        buffers: &[(&GpuBuffer, u64)],
        workload: Workload,
    ) -> Result<()> {
        self.check()?;
        let pipeline = self.pipeline(shader, &key)?;
        let mut rec = lock(&self.recording);
        let (uniform_buf, offset) = self.stage_uniform(&mut rec.uniforms, params);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &uniform_buf,
                offset,
                size: NonZeroU64::new(params.len().max(16) as u64),
            }),
        }];
        for (i, (buf, bytes)) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: buf.raw(),
                    offset: 0,
                    size: NonZeroU64::new((*bytes).max(4).next_multiple_of(4)),
                }),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(key.entry),
            layout: &pipeline.layout,
            entries: &entries,
        });
        let rec = &mut *rec;
        let pass = match &mut rec.pass {
            Some(pass) => pass,
            slot => {
                let encoder = rec.encoder.get_or_insert_with(|| {
                    self.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("glimpse step"),
                        })
                });
                slot.insert(
                    encoder
                        .begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("glimpse step"),
                            timestamp_writes: None,
                        })
                        .forget_lifetime(),
                )
            }
        };
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        let [x, y, z] = workload.workgroup_count;
        pass.dispatch_workgroups(x, y, z);
        rec.dispatches += 1;
        self.total_dispatches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Submits everything recorded so far, after writing the staged uniform parameters.
    pub fn flush(&self) -> Result<()> {
        let mut rec = lock(&self.recording);
        self.submit_locked(&mut rec);
        drop(rec);
        self.check()
    }

    fn submit_locked(&self, rec: &mut Recording) {
        rec.dispatches = 0;
        // end the pass: the encoder is locked while it is open
        rec.pass = None;
        let Some(encoder) = rec.encoder.take() else {
            return;
        };
        let u = &mut rec.uniforms;
        for (chunk, staged) in u.chunks.iter().zip(u.staged.iter_mut()) {
            if !staged.is_empty() {
                self.queue.write_buffer(chunk, 0, staged);
                staged.clear();
            }
        }
        u.current = 0;
        self.queue.submit([encoder.finish()]);
        self.total_submits.fetch_add(1, Ordering::Relaxed);
        // weights dropped before this submit may have been read by it: destroy them now
        self.pool.destroy_retired();
    }

    /// (dispatches recorded, submits made) since the context was created.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.total_dispatches.load(Ordering::Relaxed),
            self.total_submits.load(Ordering::Relaxed),
        )
    }

    /// Number of dispatches recorded and not yet submitted.
    pub fn pending_dispatches(&self) -> usize {
        lock(&self.recording).dispatches
    }

    /// Waits until the GPU has finished all submitted work (natively blocks; on the web awaits).
    pub async fn synchronize(&self) -> Result<()> {
        self.flush()?;
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        rx.await
            .map_err(|_| Error::Gpu("the GPU queue was dropped before the work finished".into()))?;
        self.check()
    }

    /// Copies `bytes` bytes of `buf` back to the host. Submits the current step first.
    pub(crate) async fn read(&self, buf: &GpuBuffer, bytes: u64) -> Result<Vec<u8>> {
        let size = bytes.max(4).next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("glimpse readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut rec = lock(&self.recording);
            rec.pass = None;
            rec.encoder
                .get_or_insert_with(|| {
                    self.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("glimpse step"),
                        })
                })
                .copy_buffer_to_buffer(buf.raw(), 0, &staging, 0, size);
            self.submit_locked(&mut rec);
        }
        self.check()?;
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        rx.await
            .map_err(|_| Error::Gpu("readback was cancelled".into()))?
            .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
        let data = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
            view[..bytes as usize].to_vec()
        };
        staging.unmap();
        self.check()?;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_limit_is_named() {
        let limits = wgpu::Limits {
            max_compute_invocations_per_workgroup: 128,
            ..Default::default()
        };
        let err = check_limits(&limits).unwrap_err().to_string();
        assert!(
            err.contains("maxComputeInvocationsPerWorkgroup = 128") && err.contains("256"),
            "{err}"
        );
        assert!(check_limits(&wgpu::Limits::default()).is_ok());
    }
}
