//! A short soak (`glimpse soak` runs the long one): captions and questions in a row on new
//! images, natively on the CPU and on lavapipe, with the memory the process holds sampled; after
//! a warm-up it must not grow.

mod common;

use common::gpu;
use glimpse::pipeline::{ModelFiles, Pipeline};
use glimpse::soak::soak;
use glimpse::{DType, Device};

fn default_model() -> ModelFiles {
    ModelFiles::from_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/scenes-git"),
    )
    .unwrap()
}

/// One test, the CPU first: RSS is the process's, so nothing may run beside it.
#[test]
fn memory_is_flat_after_warm_up_on_the_cpu_then_on_lavapipe() {
    cpu();
    lavapipe();
}

fn cpu() {
    let p = Pipeline::load(&default_model(), &Device::Cpu, DType::F32).unwrap();
    let samples = soak(&p, 200, 50, 77_000_000, 64, &mut |_| {}).unwrap();
    let rss: Vec<f64> = samples
        .iter()
        .map(|s| s.rss_bytes.unwrap() as f64 / (1 << 20) as f64)
        .collect();
    println!("RSS MiB every 50 requests: {rss:?}");
    // from the first sample after warm-up (50 requests) to the last (200): 2 MiB is allocator
    // slack (glibc keeps freed chunks in its arenas; 1000 requests measured 0.1 MiB of growth);
    // leaking one request's image tensor (3×64×64 f32 = 48 KiB) would add 7 MiB over 150 requests
    let growth = rss[rss.len() - 1] - rss[1];
    assert!(
        growth < 2.0,
        "RSS grew {growth:.1} MiB after warm-up: {rss:?}"
    );
}

fn lavapipe() {
    let p = Pipeline::load(&default_model(), &gpu(), DType::F32).unwrap();
    let samples = soak(&p, 20, 4, 77_000_000, 64, &mut |_| {}).unwrap();
    let held: Vec<u64> = samples.iter().map(|s| s.gpu_held_bytes.unwrap()).collect();
    let rss: Vec<f64> = samples
        .iter()
        .map(|s| s.rss_bytes.unwrap() as f64 / (1 << 20) as f64)
        .collect();
    println!("GPU held bytes every 4 requests: {held:?}; RSS MiB: {rss:?}");
    // every buffer a request needs comes back to the pool: after the first requests made each
    // size class, the next ones create none (the run is deterministic: same scenes, same sizes)
    assert!(
        held[1..].windows(2).all(|w| w[1] == w[0]),
        "GPU buffers grew after warm-up: {held:?}"
    );
    // from 8 requests on (Mesa's lavapipe fills its pipeline caches over the first ones): the
    // same allocator slack as on the CPU (the 300-request lavapipe run: +0.1 MiB after 50)
    let growth = rss[rss.len() - 1] - rss[2];
    assert!(
        growth < 2.0,
        "RSS grew {growth:.1} MiB after warm-up: {rss:?}"
    );
}
