//! Storage buffers are reused: a dropped tensor's buffer goes back to the pool under its size
//! class and serves the next tensor of that class. Commands run in submission order on one queue,
//! so a buffer may be handed out again while commands that read its old contents are still queued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) struct Pool {
    device: wgpu::Device,
    max_buffer_size: u64,
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
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
        }
    }
}

/// A pooled storage buffer; returns to its pool when dropped.
pub(crate) struct GpuBuffer {
    buffer: wgpu::Buffer,
    class: u64,
    pool: Arc<Pool>,
}

impl GpuBuffer {
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        // wgpu::Buffer is a shared handle: the pool keeps the same buffer alive.
        self.pool
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(self.class)
            .or_default()
            .push(self.buffer.clone());
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
