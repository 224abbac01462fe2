//! `glimpse bench kernels`: prefill GEMM and decode GEMV at the shapes of a base-size model, for
//! each weight dtype and device, printed as a table (and JSON). Also run in the browser.
//! Timings are medians of several samples; each sample repeats the op enough times to be
//! measurable and waits for the device once at its end.

use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::{DType, Device, Tensor};

/// (M, K, N): x [M, K] · w [N, K]ᵀ. M = 197 is ViT-base's token count (196 patches + CLS).
pub const SHAPES: &[(usize, usize, usize)] = &[
    (197, 768, 768),
    (197, 768, 3072),
    (197, 3072, 768),
    (1, 768, 768),
    (1, 768, 3072),
    (1, 768, 30522),
];
pub const DTYPES: &[DType] = &[DType::F32, DType::Q8_0, DType::Q4_0];

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BenchRow {
    /// "gemm" (prefill) or "gemv" (decode)
    pub op: String,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub dtype: String,
    pub device: String,
    pub median_ms: f64,
    pub gflops: f64,
    /// weight bytes read per call / time
    pub weight_gbps: f64,
    /// CPU time / this time, when the CPU ran the same row
    pub vs_cpu: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Samples per row (the median is reported).
    pub samples: usize,
    /// Aim for samples of about this many milliseconds.
    pub target_ms: f64,
    /// Only shapes whose N is at most this (the browser skips the largest vocabulary GEMV on slow paths).
    pub max_n: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            samples: 5,
            target_ms: 30.0,
            max_n: usize::MAX,
        }
    }
}

/// Milliseconds from an arbitrary origin: `Instant` natively, `performance.now()` on the web
/// (`std::time::Instant` panics on wasm32).
pub fn now_ms() -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        use std::time::Instant;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
    }
    #[cfg(target_arch = "wasm32")]
    {
        crate::web::performance_now()
    }
}

/// Times `x · wᵀ` on `device` for every shape and dtype; `device_label` names it in the table.
pub async fn bench_kernels(
    device: &Device,
    device_label: &str,
    opts: &BenchOptions,
) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    let mut rng = Rng::new(7);
    for &(m, k, n) in SHAPES.iter().filter(|s| s.2 <= opts.max_n) {
        let x = Tensor::from_f32(&rng.vec(m * k, -1.0, 1.0), &[m, k], device)?;
        let w_data = rng.vec(n * k, -1.0, 1.0);
        for &dtype in DTYPES {
            let w = Tensor::weight("bench weight", &w_data, &[n, k], dtype, device)?;
            let ms = time_op(device, opts, || x.linear(&w, None).map(drop)).await?;
            let flops = 2.0 * (m * n * k) as f64;
            let wbytes = dtype.gpu_bytes(n * k) as f64;
            rows.push(BenchRow {
                op: if m == 1 { "gemv" } else { "gemm" }.into(),
                m,
                k,
                n,
                dtype: dtype.name().into(),
                device: device_label.into(),
                median_ms: ms,
                gflops: flops / (ms * 1e6),
                weight_gbps: wbytes / (ms * 1e6),
                vs_cpu: None,
            });
        }
    }
    Ok(rows)
}

async fn time_op(
    device: &Device,
    opts: &BenchOptions,
    mut op: impl FnMut() -> Result<()>,
) -> Result<f64> {
    // warm-up: compiles the pipeline, fills the buffer pool, wakes the CPU thread pool
    for _ in 0..3 {
        op()?;
    }
    device.synchronize().await?;
    // calibrate on the fastest of three single runs, so one slow run does not shrink `reps`
    let mut once = f64::MAX;
    for _ in 0..3 {
        let t0 = now_ms();
        op()?;
        device.synchronize().await?;
        once = once.min(now_ms() - t0);
    }
    let once = once.max(1e-3);
    let reps = ((opts.target_ms / once).ceil() as usize).clamp(1, 200);
    let mut samples = Vec::with_capacity(opts.samples);
    for _ in 0..opts.samples.max(1) {
        let t0 = now_ms();
        for _ in 0..reps {
            op()?;
        }
        device.synchronize().await?;
        samples.push((now_ms() - t0) / reps as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[samples.len() / 2])
}

/// Fills `vs_cpu` for every row that has a CPU row of the same op, shape and dtype.
pub fn attach_cpu_ratios(rows: &mut [BenchRow]) {
    let cpu: Vec<BenchRow> = rows.iter().filter(|r| r.device == "cpu").cloned().collect();
    for r in rows.iter_mut() {
        if let Some(c) = cpu
            .iter()
            .find(|c| c.m == r.m && c.k == r.k && c.n == r.n && c.dtype == r.dtype)
        {
            r.vs_cpu = Some(c.median_ms / r.median_ms);
        }
    }
}

/// The table, one row per (shape, dtype, device).
pub fn format_table(rows: &[BenchRow]) -> String {
    let mut s = format!(
        "{:<5} {:>16} {:>5} {:>10} {:>11} {:>9} {:>8} {:>8}\n",
        "op", "M×K×N", "dtype", "device", "median ms", "GFLOP/s", "GB/s", "vs CPU"
    );
    for r in rows {
        let ratio = r
            .vs_cpu
            .map(|v| format!("{v:.2}×"))
            .unwrap_or_else(|| "-".into());
        s += &format!(
            "{:<5} {:>16} {:>5} {:>10} {:>11.3} {:>9.2} {:>8.2} {:>8}\n",
            r.op,
            format!("{}×{}×{}", r.m, r.k, r.n),
            r.dtype,
            r.device,
            r.median_ms,
            r.gflops,
            r.weight_gbps,
            ratio
        );
    }
    s
}
