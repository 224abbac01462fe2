//! Storage buffers are reused: a dropped tensor's buffer goes back to the pool under its size
//! class and serves the next tensor of that class. Commands run in submission order on one queue,
//! so a buffer may be handed out again while commands that read its old contents are still queued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) struct Pool {
    device: wgpu::Device,
    max_buffer_size: u64,
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Exact buffers (weights) whose tensors were dropped: commands recorded before the drop may
    /// still read them, so they are destroyed after the next submit, not at once.
    retired: Mutex<Vec<wgpu::Buffer>>,
    /// Bytes of every buffer created and destroyed: their difference is what the GPU holds for
    /// glimpse (weights, activations in use, free pooled buffers).
    created: AtomicU64,
    destroyed: AtomicU64,
}

/// Size classes: powers of two and 1.5× powers of two (at most 33% waste), from 256 bytes.
fn size_class(bytes: u64) -> u64 {
    let mut c = 256u64;
    loop {
        if bytes <= c {
            return c;
        }
        if bytes <= c + c / 2 {
            return c + c / 2;
        }
        c *= 2;
    }
}

impl Pool {
    pub fn new(device: wgpu::Device, max_buffer_size: u64) -> Pool {
        Pool {
            device,
            max_buffer_size,
            free: Mutex::default(),
            retired: Mutex::default(),
            created: AtomicU64::new(0),
            destroyed: AtomicU64::new(0),
        }
    }

    pub fn get(self: &Arc<Self>, bytes: u64) -> GpuBuffer {
        // A class larger than the device allows falls back to the exact size.
        let class = size_class(bytes);
        let class = if class > self.max_buffer_size {
            bytes
        } else {
            class
        };
        let reused = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&class)
            .and_then(|v| v.pop());
        let buffer = reused.unwrap_or_else(|| {
            self.created.fetch_add(class, Ordering::Relaxed);
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("glimpse tensor"),
                size: class,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        GpuBuffer {
            buffer,
            class,
            pool: self.clone(),
            exact: false,
        }
    }

    /// Destroys the buffers retired since the last submit (call right after submitting).
    pub fn destroy_retired(&self) {
        let bufs = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|e| e.into_inner()));
        for b in bufs {
            self.destroyed.fetch_add(b.size(), Ordering::Relaxed);
            b.destroy();
        }
    }

    /// Destroys every free buffer (after a model went, its activations' buffers are not needed
    /// by the next one); returns the bytes given back.
    pub fn trim(&self) -> u64 {
        self.destroy_retired();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = 0;
        for (class, bufs) in free.drain() {
            for b in bufs {
                b.destroy();
                bytes += class;
            }
        }
        self.destroyed.fetch_add(bytes, Ordering::Relaxed);
        bytes
    }

    /// Bytes of GPU buffers glimpse holds now (created and not yet destroyed).
    pub fn held_bytes(&self) -> u64 {
        self.created.load(Ordering::Relaxed) - self.destroyed.load(Ordering::Relaxed)
    }

    /// Bytes held by free buffers.
    pub fn free_bytes(&self) -> u64 {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.iter().map(|(c, v)| c * v.len() as u64).sum()
    }
}

/// An exact-size buffer outside the pool (a weight): destroyed when its tensor is dropped.
pub(crate) fn exact(pool: &Arc<Pool>, label: &str, bytes: u64) -> GpuBuffer {
    let buffer = pool.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(4).next_multiple_of(4),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    pool.created.fetch_add(buffer.size(), Ordering::Relaxed);
    GpuBuffer {
        class: buffer.size(),
        buffer,
        pool: pool.clone(),
        exact: true,
    }
}

/// A storage buffer: pooled ones return to their pool when dropped, exact ones (weights) are
/// destroyed (after the next submit), so a model's weights leave the GPU with the model.
pub(crate) struct GpuBuffer {
    buffer: wgpu::Buffer,
    class: u64,
    pool: Arc<Pool>,
    exact: bool,
}

impl GpuBuffer {
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        // wgpu::Buffer is a shared handle: the pool keeps the same buffer alive
        if self.exact {
            self.pool
                .retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.buffer.clone());
        } else {
            self.pool
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(self.class)
                .or_default()
                .push(self.buffer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_classes_waste_at_most_a_third() {
        for bytes in [
            1u64,
            255,
            256,
            257,
            384,
            385,
            1000,
            4096,
            1 << 20,
            3 << 20,
            100_000_000,
        ] {
            let c = super::size_class(bytes);
            assert!(
                c >= bytes && (c as f64) <= (bytes.max(256) as f64) * 1.5 + 1.0,
                "{bytes} -> {c}"
            );
        }
    }
}
