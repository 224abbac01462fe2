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

/// One line of `glimpse bench model`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelBenchRow {
    pub arch: String,
    pub size: String,
    pub dtype: String,
    pub device: String,
    pub params_m: f64,
    pub load_ms: f64,
    /// pixels -> what the decoder attends to (GIT: image prefix; ViT-GPT2: cross K/V; CLIP: embedding)
    pub image_encode_ms: f64,
    /// prompt prefill up to the first generated token (0 for CLIP)
    pub first_token_ms: f64,
    /// decode steps after the first token (0 for CLIP)
    pub tokens_per_s: f64,
    /// GPU dispatches and submits per decode step after the first token (0 on the CPU)
    pub dispatches_per_step: f64,
    pub submits_per_step: f64,
    /// decoder layers (dispatches per layer ≈ dispatches_per_step / layers, plus the head)
    pub decoder_layers: usize,
    /// the process's peak resident memory so far (Linux `VmHWM`; 0 where unknown), MiB
    pub peak_rss_mib: f64,
}

/// The process's peak resident set (Linux), MiB; 0 elsewhere.
fn peak_rss_mib() -> f64 {
    #[cfg(target_os = "linux")]
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kb) = s
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        {
            return kb / 1024.0;
        }
    }
    0.0
}

/// The tiles `bench model --arch smolvlm` encodes: a wide photo's 1 × 4 tiles and the global view
/// (`--size base-global`: the global view alone, as without image splitting).
pub const SMOLVLM_TILES: usize = 5;

/// config.json of a real model's shape (random weights): "base" follows microsoft/git-base,
/// nlpconnect/vit-gpt2-image-captioning and openai/clip-vit-base-patch32; "tiny" the fixtures.
pub fn model_config(arch: &str, size: &str) -> Result<serde_json::Value> {
    use serde_json::json;
    // "base-global": SmolVLM with only the global view (one tile), for slow devices
    let base = size == "base" || size == "base-global";
    let vit = |patch: usize| {
        if base {
            json!({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 224, "patch_size": patch})
        } else {
            json!({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 8})
        }
    };
    let v = match arch {
        "git" => {
            let (d, l, i, v) = if base {
                (768, 6, 3072, 30522)
            } else {
                (32, 2, 64, 120)
            };
            json!({"architectures": ["GitForCausalLM"], "vision_config": vit(16), "vocab_size": v, "hidden_size": d,
                   "num_hidden_layers": l, "num_attention_heads": if base { 12 } else { 4 }, "intermediate_size": i,
                   "max_position_embeddings": 1024, "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0})
        }
        "vit-gpt2" => {
            let (d, l, v) = if base { (768, 12, 50257) } else { (32, 2, 300) };
            json!({"architectures": ["VisionEncoderDecoderModel"], "encoder": vit(16).as_object().cloned().map(|mut o| { o.insert("model_type".into(), "vit".into()); o }),
                   "decoder": {"model_type": "gpt2", "vocab_size": v, "n_positions": 1024, "n_embd": d, "n_layer": l, "n_head": if base { 12 } else { 4 }, "add_cross_attention": true},
                   "decoder_start_token_id": 0, "eos_token_id": 0})
        }
        "clip" => {
            let (d, l, v) = if base { (512, 12, 49408) } else { (32, 2, 390) };
            json!({"architectures": ["CLIPModel"], "vision_config": vit(32), "projection_dim": if base { 512 } else { 16 },
                   "text_config": {"vocab_size": v, "hidden_size": d, "intermediate_size": 4 * d, "num_hidden_layers": l,
                                   "num_attention_heads": if base { 8 } else { 4 }, "max_position_embeddings": 77, "eos_token_id": 2}})
        }
        "blip" => {
            // Salesforce/blip-image-captioning-base: ViT-B/16 at 384 px, BERT-base text with cross-attention
            let (vision, d, l, v, bos) = if base {
                (
                    json!({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 384, "patch_size": 16}),
                    768,
                    12,
                    30524,
                    30522,
                )
            } else {
                (vit(8), 32, 2, 120, 5)
            };
            json!({"architectures": ["BlipForConditionalGeneration"], "vision_config": vision,
                   "text_config": {"vocab_size": v, "hidden_size": d, "encoder_hidden_size": d, "intermediate_size": 4 * d,
                                   "num_hidden_layers": l, "num_attention_heads": if base { 12 } else { 4 },
                                   "max_position_embeddings": 512, "bos_token_id": bos, "sep_token_id": 102, "pad_token_id": 0}})
        }
        "smolvlm" => {
            // HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP-B/16 at 512 px, pixel shuffle by 4
            // (64 tokens a tile), SmolLM2-135M (30 layers of 576, 9 heads over 3 K/V heads)
            let (vision, text, scale) = if base {
                (
                    json!({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 512, "patch_size": 16}),
                    json!({"vocab_size": 49280, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                           "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 8192,
                           "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2}),
                    4,
                )
            } else {
                (
                    vit(8),
                    json!({"vocab_size": 340, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 512,
                           "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2}),
                    2,
                )
            };
            json!({"architectures": ["Idefics3ForConditionalGeneration"], "vision_config": vision, "text_config": text,
                   "scale_factor": scale, "image_token_id": if base { 49190 } else { 301 }})
        }
        other => {
            return Err(crate::Error::Invalid(format!(
                "unknown architecture {other:?}: git, vit-gpt2, blip, clip or smolvlm"
            )))
        }
    };
    Ok(v)
}

/// The device's (dispatches, submits) counters; zeros on the CPU.
fn counters(device: &Device) -> (u64, u64) {
    match device {
        Device::Gpu(c) => c.counters(),
        Device::Cpu => (0, 0),
    }
}

/// Two rounds (the first warms up) of: `encode` the image, generate one token, generate
/// `new_tokens`. Returns the last round's (encode, first token, all tokens) in ms; `marks` gets
/// the device counters around its two generations.
async fn timed_rounds<T>(
    device: &Device,
    marks: &mut [(u64, u64); 4],
    encode: impl Fn() -> Result<T>,
    generate_n: impl AsyncFn(&T, usize) -> Result<()>,
    new_tokens: usize,
) -> Result<(f64, f64, f64)> {
    let mut times = (0.0, 0.0, 0.0);
    for _ in 0..2 {
        let t = now_ms();
        let image = encode()?;
        device.synchronize().await?;
        times.0 = now_ms() - t;
        let (t, c0) = (now_ms(), counters(device));
        generate_n(&image, 1).await?;
        times.1 = now_ms() - t;
        (marks[0], marks[1]) = (c0, counters(device));
        let (t, c0) = (now_ms(), counters(device));
        generate_n(&image, new_tokens).await?;
        times.2 = now_ms() - t;
        (marks[2], marks[3]) = (c0, counters(device));
    }
    Ok(times)
}

/// `n` greedy tokens after `prompt` with no early stop, the ids dropped: one timed generation of
/// [`bench_model`].
async fn greedy(dec: &mut dyn crate::generate::Decoder, prompt: &[u32], n: usize) -> Result<()> {
    let opts = crate::generate::GenerateOptions {
        max_new_tokens: n,
        min_new_tokens: 0,
        num_beams: 1,
        length_penalty: 1.0,
        early_stopping: crate::generate::EarlyStopping::False,
        do_sample: false,
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
        repetition_penalty: 1.0,
        no_repeat_ngram_size: 0,
        eos_token_ids: vec![],
        stop_strings: vec![],
        yield_each_token: false,
        max_kv_bytes: crate::pipeline::MAX_KV_BYTES,
    };
    crate::generate::generate(dec, prompt, &opts, &mut |_| true).await?;
    Ok(())
}

/// Loads `arch` at `size` with random weights on `device` and times image encoding, the first
/// token and the decode steps (greedy, `new_tokens` tokens, no early stop).
pub async fn bench_model(
    arch: &str,
    size: &str,
    device: &Device,
    label: &str,
    dtype: DType,
    new_tokens: usize,
) -> Result<ModelBenchRow> {
    use crate::io::{Vb, Weights};
    use crate::models::{blip, clip, git, vision_encoder_decoder as ved};

    let cfg = model_config(arch, size)?;
    let parse = |what: &str| crate::Error::Config(format!("bench config for {what}"));
    let weights = Weights::random(1);
    let vb = Vb::new(&weights, device, dtype);
    let mut rng = Rng::new(3);
    let t0 = now_ms();
    let mut row = ModelBenchRow {
        arch: arch.into(),
        size: size.into(),
        dtype: dtype.name().into(),
        device: label.into(),
        params_m: 0.0,
        load_ms: 0.0,
        image_encode_ms: 0.0,
        first_token_ms: 0.0,
        tokens_per_s: 0.0,
        dispatches_per_step: 0.0,
        submits_per_step: 0.0,
        decoder_layers: 0,
        peak_rss_mib: 0.0,
    };
    // counters around the one-token and the whole generation of the last round
    let mut marks = [(0u64, 0u64); 4];
    // (encode, first token, total for new_tokens) in ms, measured after one warm-up round
    let (encode, first, total) = match arch {
        "git" => {
            let c: git::GitConfig = serde_json::from_value(cfg).map_err(|_| parse(arch))?;
            let m = git::Git::new(&vb, &c)?;
            row.decoder_layers = c.num_hidden_layers;
            device.synchronize().await?;
            row.load_ms = now_ms() - t0;
            let s = c.vision_config.image_size;
            let px = Tensor::from_f32(&rng.vec(3 * s * s, -1.0, 1.0), &[1, 3, s, s], device)?;
            timed_rounds(
                device,
                &mut marks,
                || m.image_prefix(&m.encode_image(&px)?),
                async |prefix: &git::ImagePrefix, n: usize| {
                    greedy(&mut m.decoder(prefix, 1 + new_tokens)?, &[101], n).await
                },
                new_tokens,
            )
            .await?
        }
        "vit-gpt2" => {
            let c: ved::VisionEncoderDecoderConfig =
                serde_json::from_value(cfg).map_err(|_| parse(arch))?;
            let m = ved::VisionEncoderDecoder::new(&vb, &c)?;
            row.decoder_layers = c.decoder["n_layer"].as_u64().unwrap_or(0) as usize;
            device.synchronize().await?;
            row.load_ms = now_ms() - t0;
            let s = if size == "tiny" { 32 } else { 224 };
            let px = Tensor::from_f32(&rng.vec(3 * s * s, -1.0, 1.0), &[1, 3, s, s], device)?;
            timed_rounds(
                device,
                &mut marks,
                || m.encode_image(&px),
                async |enc: &ved::EncodedImage, n: usize| {
                    greedy(&mut m.decoder(enc, 1 + new_tokens)?, &[0], n).await
                },
                new_tokens,
            )
            .await?
        }
        "blip" => {
            let c: blip::BlipConfig = serde_json::from_value(cfg).map_err(|_| parse(arch))?;
            let m = blip::Blip::new(&vb, &c, false)?;
            row.decoder_layers = c.text_config.num_hidden_layers;
            device.synchronize().await?;
            row.load_ms = now_ms() - t0;
            let s = c.vision_config.image_size;
            let px = Tensor::from_f32(&rng.vec(3 * s * s, -1.0, 1.0), &[1, 3, s, s], device)?;
            let bos = c.text_config.bos_token_id;
            timed_rounds(
                device,
                &mut marks,
                || m.caption_memory(&m.encode_image(&px)?),
                async |memory: &blip::BlipMemory, n: usize| {
                    greedy(&mut m.decoder(memory, 1 + new_tokens)?, &[bos], n).await
                },
                new_tokens,
            )
            .await?
        }
        "smolvlm" => {
            let c: crate::models::idefics3::Idefics3Config =
                crate::io::config::config_from_value("config.json", cfg)?;
            let m = crate::models::idefics3::Idefics3::new(&vb, &c)?;
            row.decoder_layers = c.text_config.num_hidden_layers;
            device.synchronize().await?;
            row.load_ms = now_ms() - t0;
            // a wide photo: Idefics3's processor makes 1 × 4 tiles and the global view
            let s = c.vision_config.image_size;
            let tiles = if size == "base-global" {
                1
            } else {
                SMOLVLM_TILES
            };
            let px = Tensor::from_f32(
                &rng.vec(tiles * 3 * s * s, -1.0, 1.0),
                &[tiles, 3, s, s],
                device,
            )?;
            // <|im_start|>User: <the image's tokens> a question <end_of_utterance>\nAssistant:
            let img = c.image_token_id;
            let text = |n: usize| (0..n as u32).map(|i| 10 + i % 200).collect::<Vec<u32>>();
            let prompt: Vec<u32> =
                [text(4), vec![img; tiles * c.image_seq_len()], text(16)].concat();
            timed_rounds(
                device,
                &mut marks,
                || m.encode_image(&px),
                async |image: &Tensor, n: usize| {
                    greedy(&mut m.decoder(image, None)?, &prompt, n).await
                },
                new_tokens,
            )
            .await?
        }
        "clip" => {
            let c: clip::ClipConfig = serde_json::from_value(cfg).map_err(|_| parse(arch))?;
            let m = clip::Clip::new(&vb, &c)?;
            device.synchronize().await?;
            row.load_ms = now_ms() - t0;
            let s = c.vision_config.image_size;
            let px = Tensor::from_f32(&rng.vec(3 * s * s, -1.0, 1.0), &[1, 3, s, s], device)?;
            let mut encode = 0.0;
            for _ in 0..2 {
                let t = now_ms();
                m.image_embeds(&px)?.to_vec_f32().await?;
                encode = now_ms() - t;
            }
            (encode, 0.0, 0.0)
        }
        other => {
            return Err(crate::Error::Invalid(format!(
                "unknown architecture {other:?}"
            )))
        }
    };
    row.params_m = weights.values_loaded() as f64 / 1e6;
    row.peak_rss_mib = peak_rss_mib();
    row.image_encode_ms = encode;
    row.first_token_ms = first;
    if new_tokens > 1 && total > first {
        row.tokens_per_s = (new_tokens - 1) as f64 / ((total - first) / 1e3);
        let steps = (new_tokens - 1) as f64;
        let per = |f: fn((u64, u64)) -> u64| {
            (f(marks[3]) - f(marks[2])).saturating_sub(f(marks[1]) - f(marks[0])) as f64 / steps
        };
        row.dispatches_per_step = per(|c| c.0);
        row.submits_per_step = per(|c| c.1);
    }
    Ok(row)
}

pub fn format_model_table(rows: &[ModelBenchRow]) -> String {
    let mut s = format!(
        "{:<9} {:>5} {:>5} {:>10} {:>8} {:>10} {:>14} {:>15} {:>9} {:>12} {:>16}\n",
        "arch",
        "size",
        "dtype",
        "device",
        "params M",
        "load ms",
        "image encode ms",
        "first token ms",
        "tokens/s",
        "peak RSS MiB",
        "dispatches/step"
    );
    for r in rows {
        s += &format!(
            "{:<9} {:>5} {:>5} {:>10} {:>8.1} {:>10.0} {:>14.1} {:>15.1} {:>9.2} {:>12.0} {:>16}\n",
            r.arch,
            r.size,
            r.dtype,
            r.device,
            r.params_m,
            r.load_ms,
            r.image_encode_ms,
            r.first_token_ms,
            r.tokens_per_s,
            r.peak_rss_mib,
            if r.dispatches_per_step > 0.0 {
                format!(
                    "{:.0} ({:.1}/layer, {:.0} submits)",
                    r.dispatches_per_step,
                    r.dispatches_per_step / r.decoder_layers.max(1) as f64,
                    r.submits_per_step
                )
            } else {
                "–".into()
            }
        );
    }
    s
}
