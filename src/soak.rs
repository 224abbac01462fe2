//! The soak run: many captions and questions in a row, each on a new image, with the memory the
//! process holds sampled as it goes. After a warm-up (the pool has buffers of every size the
//! requests use, the allocator its arenas) the samples must stay flat: a leak grows them with
//! every request. `glimpse soak` runs it natively (RSS and GPU buffers); the browser's soak
//! (tests/browser/soak.test.mjs, `node bench/soak.mjs`) samples wasm memory, the GPU buffers and
//! the worker's JS heap through the worker.

use crate::error::Result;
use crate::pipeline::{Pipeline, Task};
use crate::scenes::Scene;
use crate::tensor::Device;

/// Memory after `request` requests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakSample {
    pub request: usize,
    /// resident set of this process (Linux: /proc/self/statm), bytes
    pub rss_bytes: Option<u64>,
    /// GPU buffers glimpse holds (weights, pooled activations), bytes
    pub gpu_held_bytes: Option<u64>,
    /// of those, free buffers kept by the pool
    pub gpu_free_bytes: Option<u64>,
    /// mean milliseconds per request since the previous sample
    pub ms_per_request: f64,
}

/// The resident set size of this process, where the OS says it.
pub fn rss_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

fn sample(p: &Pipeline, request: usize, ms_per_request: f64) -> SoakSample {
    let gpu = match &p.device {
        Device::Gpu(ctx) => Some(ctx),
        _ => None,
    };
    SoakSample {
        request,
        rss_bytes: rss_bytes(),
        gpu_held_bytes: gpu.map(|g| g.held_bytes()),
        gpu_free_bytes: gpu.map(|g| g.pool_free_bytes()),
        ms_per_request,
    }
}

/// Runs `requests` requests on `p` (even ones caption, odd ones ask the scene's first question
/// when the model answers questions; CLIP models match the scene's caption against two others),
/// each on a new synthetic scene of `size` pixels from `seed` on, sampling memory before the
/// first and after every `every` requests. `on_sample` sees each sample as it is taken.
pub fn soak(
    p: &Pipeline,
    requests: usize,
    every: usize,
    seed: u64,
    size: usize,
    on_sample: &mut dyn FnMut(&SoakSample),
) -> Result<Vec<SoakSample>> {
    let every = every.max(1);
    let mut samples = vec![sample(p, 0, 0.0)];
    on_sample(&samples[0]);
    let opts = p.default_options();
    let mut t0 = std::time::Instant::now();
    for i in 0..requests {
        let scene = Scene::generate(seed + i as u64, size);
        let image = p.prepare_image(&scene.png()?)?;
        match p.task() {
            Task::Match => {
                let texts = vec![scene.caption(), "a photo".into(), "nothing at all".into()];
                pollster::block_on(p.match_texts(&image, &texts))?;
            }
            Task::Answer => {
                let q = &scene.questions()[0].question;
                pollster::block_on(p.ask(&image, q, &opts, &mut |_| true))?;
            }
            Task::Caption if i % 2 == 1 && p.architecture().starts_with("Git") => {
                let q = &scene.questions()[0].question;
                pollster::block_on(p.ask(&image, q, &opts, &mut |_| true))?;
            }
            Task::Caption | Task::Chat => {
                pollster::block_on(p.caption(&image, None, &opts, &mut |_| true))?;
            }
        }
        if (i + 1) % every == 0 || i + 1 == requests {
            let n = (i + 1) - samples.last().map_or(0, |s| s.request);
            let s = sample(p, i + 1, t0.elapsed().as_secs_f64() * 1000.0 / n as f64);
            on_sample(&s);
            samples.push(s);
            t0 = std::time::Instant::now();
        }
    }
    Ok(samples)
}
