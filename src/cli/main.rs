//! The `glimpse` command line.

mod bench;
mod chat;
mod default_model;
mod serve;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use glimpse::pipeline::{ModelFiles, Pipeline};
use glimpse::{selfcheck, DType, Device, GpuContext, GpuOptions};

#[derive(Parser)]
#[command(
    name = "glimpse",
    version,
    about = "Vision-language models on WebGPU / wgpu and the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Gpu,
    /// every device that is available
    All,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks; prints a table
    Bench {
        #[command(subcommand)]
        what: bench::BenchWhat,
    },
    /// Runs every kernel on the GPU and on the CPU with seeded inputs and compares them
    Selfcheck {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// write the results as JSON
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Writes the outputs of the self-check cases on one device as JSON ({case: [values]});
    /// the browser test compares WebGPU in Chromium against these
    Cases {
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: PathBuf,
    },
    /// Many captions and questions in a row, each on a new synthetic scene, with the process's
    /// memory (RSS, GPU buffers) sampled as it goes: after a warm-up it must stay flat. Prints a
    /// table; --json writes every sample as JSON to stdout
    Soak {
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// sample every N requests
        #[arg(long, default_value_t = 100)]
        every: usize,
        /// the scenes' side in pixels
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Captions images (several images reuse the loaded model)
    Caption {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// continue this text (conditional captioning)
        #[arg(long)]
        prompt: Option<String>,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
    },
    /// Answers a question about an image
    Ask {
        image: PathBuf,
        question: String,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
    },
    /// A conversation about an image with an instruction model (SmolVLM): each line read from
    /// the terminal (or a pipe) is the next user turn; an empty line or end of input ends it.
    /// The image is encoded once and each turn reuses the earlier turns' caches.
    Chat {
        image: PathBuf,
        /// the first question (then the conversation goes on from stdin)
        #[arg(long)]
        say: Option<String>,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
    },
    /// Scores an image against texts (CLIP): zero-shot labels
    Match {
        image: PathBuf,
        #[arg(required = true)]
        texts: Vec<String>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Scores a model on synthetic scenes: caption exact match and token F1, VQA accuracy per
    /// question type (a table, and JSON with every prediction)
    Eval {
        /// a Hugging Face model folder; the embedded default model when not given
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "all")]
        device: DeviceArg,
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "q8_0", "q4_0"])]
        dtype: String,
        /// the first scene's seed (the default model was trained on seeds from 1000000)
        #[arg(long, default_value_t = 9_000_000)]
        scenes_seed: u64,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// write the reports (one per device, every prediction included) as JSON
        #[arg(long)]
        json: Option<PathBuf>,
        /// another report's JSON (e.g. tools/train_scenes.py --evaluate): count the items on
        /// which each device makes the same prediction
        #[arg(long)]
        compare: Vec<PathBuf>,
    },
    /// Writes a model as one GGUF file with quantized Linear weights (config, preprocessor
    /// config and tokenizer in its metadata); `--model FILE.gguf` loads it
    Quantize {
        /// a Hugging Face model folder; the embedded default model when not given
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value = "q8_0", value_parser = ["f32", "f16", "q8_0", "q4_0"])]
        dtype: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Writes a checkpoint with seeded random weights for a config.json (real-size tests and
    /// benchmarks without a download), as a hub repo holds it: config.json and
    /// model.safetensors or pytorch_model.bin, plus the small files of --meta-from
    Checkpoint {
        /// the model's config.json (e.g. one of a hub repo)
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// values are uniform in ±scale (norm weights 1 ± scale/4)
        #[arg(long, default_value_t = 0.05)]
        scale: f32,
        #[arg(long, default_value = "bin", value_parser = ["bin", "safetensors"])]
        format: String,
        /// cut every layer count (num_hidden_layers, n_layer) to at most this
        #[arg(long)]
        layers: Option<u64>,
        /// copy the small files (preprocessor config, tokenizer …) of this folder
        #[arg(long)]
        meta_from: Option<PathBuf>,
    },
    /// Writes synthetic scenes (PNG) and their captions and questions (scenes.jsonl)
    Scenes {
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 16)]
        count: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Shows the GPU adapter and the limits glimpse uses
    Info,
    /// Serves the web app (www/, pkg/, models/) on 127.0.0.1
    Serve {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// folder that holds www/, pkg/ and models/
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// print every request to stderr
        #[arg(long)]
        log: bool,
        /// leave out the COOP/COEP headers: the page is then not cross-origin isolated and runs
        /// the single-thread CPU build, as on a host that does not send them
        #[arg(long)]
        no_isolation: bool,
    },
}

#[derive(clap::Args)]
struct ModelArgs {
    /// a Hugging Face model folder (config.json, model.safetensors, tokenizer.json, …); the
    /// embedded default model (models/scenes-git) when not given
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "gpu")]
    device: DeviceArg,
    /// storage of Linear weights, quantized while loading
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "q8_0", "q4_0"])]
    dtype: String,
    /// print JSON instead of streaming text
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct GenArgs {
    #[arg(long)]
    beams: Option<usize>,
    #[arg(long)]
    max_new_tokens: Option<usize>,
    #[arg(long)]
    min_new_tokens: Option<usize>,
    #[arg(long)]
    sample: bool,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long)]
    no_repeat_ngram_size: Option<usize>,
}

impl GenArgs {
    fn apply(
        &self,
        mut o: glimpse::generate::GenerateOptions,
    ) -> glimpse::generate::GenerateOptions {
        if let Some(v) = self.beams {
            o.num_beams = v;
        }
        if let Some(v) = self.max_new_tokens {
            o.max_new_tokens = v;
        }
        if let Some(v) = self.min_new_tokens {
            o.min_new_tokens = v;
        }
        o.do_sample |= self.sample;
        if let Some(v) = self.temperature {
            o.temperature = v;
        }
        if let Some(v) = self.top_k {
            o.top_k = v;
        }
        if let Some(v) = self.top_p {
            o.top_p = v;
        }
        if let Some(v) = self.repetition_penalty {
            o.repetition_penalty = v;
        }
        if let Some(v) = self.no_repeat_ngram_size {
            o.no_repeat_ngram_size = v;
        }
        o.seed = self.seed;
        o
    }
}

fn load_pipeline(m: &ModelArgs) -> anyhow::Result<Pipeline> {
    let device = match m.device {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Gpu | DeviceArg::All => gpu()?,
    };
    let dtype = DType::parse(&m.dtype)?;
    Ok(match m.model.as_deref() {
        // a folder or .gguf on disk streams in; the default model is built in
        Some(path) => {
            Pipeline::load_path(path, &device, dtype)
                .with_context(|| format!("loading {}", path.display()))?
                .0
        }
        None => Pipeline::load(&default_model::files(), &device, dtype)?,
    })
}

/// The files of `--model`, or of the embedded default model.
fn model_files(dir: Option<&std::path::Path>) -> anyhow::Result<ModelFiles> {
    match dir {
        Some(dir) => {
            ModelFiles::from_dir(dir).with_context(|| format!("loading {}", dir.display()))
        }
        None => Ok(default_model::files()),
    }
}

fn read_image(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Runs one generation, streaming to stdout unless `json`.
fn generate_text(
    p: &Pipeline,
    image: &glimpse::pipeline::PreparedImage,
    question: Option<&str>,
    prompt: Option<&str>,
    opts: &glimpse::generate::GenerateOptions,
    json: bool,
) -> anyhow::Result<glimpse::pipeline::Generated> {
    use std::io::Write;
    let mut shown = 0usize;
    let mut on_text = |text: &str| {
        if !json && text.len() > shown && text.is_char_boundary(shown) {
            print!("{}", &text[shown..]);
            let _ = std::io::stdout().flush();
            shown = text.len();
        }
        true
    };
    let out = match question {
        Some(q) => pollster::block_on(p.ask(image, q, opts, &mut on_text))?,
        None => pollster::block_on(p.caption(image, prompt, opts, &mut on_text))?,
    };
    if !json {
        println!();
    }
    Ok(out)
}

fn gpu() -> anyhow::Result<Device> {
    let ctx = pollster::block_on(GpuContext::new(&GpuOptions::default()))?;
    Ok(Device::Gpu(ctx))
}

fn devices(arg: DeviceArg) -> anyhow::Result<Vec<(Device, String)>> {
    let mut out = Vec::new();
    if matches!(arg, DeviceArg::Cpu | DeviceArg::All) {
        out.push((Device::Cpu, "cpu".to_string()));
    }
    if matches!(arg, DeviceArg::Gpu | DeviceArg::All) {
        match gpu() {
            Ok(d) => {
                let label = match &d {
                    Device::Gpu(ctx) => gpu_label(ctx),
                    Device::Cpu => "cpu".into(),
                };
                out.push((d, label));
            }
            Err(e) if arg == DeviceArg::All => eprintln!("skipping the GPU: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A short device label for tables: "lavapipe", or the adapter's first words.
fn gpu_label(ctx: &GpuContext) -> String {
    let name = &ctx.summary().name;
    if name.contains("llvmpipe") {
        "lavapipe".into()
    } else {
        name.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Errors end the program with `error: <what went wrong, with its context>` and status 1 (a
/// panic, status 101, is always a bug); no backtrace, whatever RUST_BACKTRACE says.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { what } => bench::run(what)?,
        Command::Selfcheck { seed, json } => {
            let d = gpu()?;
            let results = pollster::block_on(selfcheck::selfcheck(&d, seed))?;
            for r in &results {
                println!(
                    "{:<18} max |Δ| {:>10.3e}  tol {:>8.1e}  {}",
                    r.case,
                    r.max_abs_diff,
                    r.tolerance,
                    if r.pass { "ok" } else { "FAIL" }
                );
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
            }
            if results.iter().any(|r| !r.pass) {
                bail!("the GPU kernels disagree with the CPU path");
            }
        }
        Command::Cases { device, seed, json } => {
            let (d, _) = devices(device)?.into_iter().next().context("no device")?;
            let mut map = serde_json::Map::new();
            for case in selfcheck::CASES {
                let v = pollster::block_on(selfcheck::run_case(case, seed, &d))?;
                map.insert(case.to_string(), serde_json::to_value(v)?);
            }
            std::fs::write(&json, serde_json::to_string(&map)?)
                .with_context(|| format!("writing {}", json.display()))?;
        }
        Command::Soak {
            requests,
            every,
            size,
            model,
        } => {
            let p = load_pipeline(&model)?;
            let mib = |b: Option<u64>| {
                b.map_or("-".to_string(), |b| {
                    format!("{:.1}", b as f64 / (1 << 20) as f64)
                })
            };
            if !model.json {
                println!("| requests | RSS MiB | GPU held MiB | GPU pool free MiB | ms/request |");
                println!("|---:|---:|---:|---:|---:|");
            }
            let samples = glimpse::soak::soak(&p, requests, every, 77_000_000, size, &mut |s| {
                if !model.json {
                    println!(
                        "| {} | {} | {} | {} | {:.1} |",
                        s.request,
                        mib(s.rss_bytes),
                        mib(s.gpu_held_bytes),
                        mib(s.gpu_free_bytes),
                        s.ms_per_request
                    );
                }
            })?;
            if model.json {
                println!("{}", serde_json::to_string_pretty(&samples)?);
            }
        }
        Command::Caption {
            images,
            prompt,
            model,
            gen,
        } => {
            let p = load_pipeline(&model)?;
            let opts = gen.apply(p.default_options());
            let mut results = Vec::new();
            // a bad image fails alone: the others are still captioned, and the exit status
            // says that one failed
            let mut failed = 0;
            for path in &images {
                if !model.json && images.len() > 1 {
                    print!("{}: ", path.display());
                }
                let out = read_image(path).and_then(|bytes| {
                    let image = p.prepare_image(&bytes)?;
                    generate_text(&p, &image, None, prompt.as_deref(), &opts, model.json)
                });
                match out {
                    Ok(out) => results.push(
                        serde_json::json!({"image": path, "caption": out.text, "ids": out.ids}),
                    ),
                    // one image: its error is the program's
                    Err(e) if images.len() == 1 && !model.json => return Err(e),
                    Err(e) => {
                        failed += 1;
                        if !model.json {
                            println!("(failed)");
                        }
                        eprintln!("error: {}: {e:#}", path.display());
                        let code = e
                            .downcast_ref::<glimpse::Error>()
                            .map_or("io", glimpse::Error::code);
                        results.push(
                            serde_json::json!({"image": path, "error": format!("{e:#}"), "code": code}),
                        );
                    }
                }
            }
            if model.json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} images could not be captioned", images.len());
            }
        }
        Command::Ask {
            image,
            question,
            model,
            gen,
        } => {
            let p = load_pipeline(&model)?;
            let opts = gen.apply(p.default_options());
            let prepared = p
                .prepare_image(&read_image(&image)?)
                .with_context(|| format!("{}", image.display()))?;
            let out = generate_text(&p, &prepared, Some(&question), None, &opts, model.json)?;
            if model.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"image": image, "question": question, "answer": out.text, "ids": out.ids})
                    )?
                );
            }
        }
        Command::Chat {
            image,
            say,
            model,
            gen,
        } => chat::chat(&image, say, &model, &gen)?,
        Command::Match {
            image,
            texts,
            model,
        } => {
            let p = load_pipeline(&model)?;
            let prepared = p
                .prepare_image(&read_image(&image)?)
                .with_context(|| format!("{}", image.display()))?;
            let probs = pollster::block_on(p.match_texts(&prepared, &texts))?;
            let mut ranked: Vec<(&String, f32)> = texts.iter().zip(probs).collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            if model.json {
                let rows: Vec<_> = ranked
                    .iter()
                    .map(|(t, p)| serde_json::json!({"text": t, "score": p}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for (t, p) in ranked {
                    println!("{:>6.2}%  {t}", p * 100.0);
                }
            }
        }
        Command::Eval {
            model,
            device,
            dtype,
            scenes_seed,
            count,
            size,
            json,
            compare,
        } => {
            let files = model_files(model.as_deref())?;
            let others = compare
                .iter()
                .map(|path| -> anyhow::Result<(String, glimpse::eval::Report)> {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let report = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not an eval report", path.display()))?;
                    let name = path
                        .file_stem()
                        .map_or("other".into(), |s| s.to_string_lossy().into_owned());
                    Ok((name, report))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut reports = Vec::new();
            for (d, label) in devices(device)? {
                let p = Pipeline::load(&files, &d, DType::parse(&dtype)?)?;
                let t0 = std::time::Instant::now();
                let mut progress = |done: u64, total: u64| {
                    if done.is_multiple_of(100) || done == total {
                        eprintln!(
                            "{label}: {done}/{total} scenes ({:.0} s)",
                            t0.elapsed().as_secs_f64()
                        );
                    }
                };
                let report = pollster::block_on(glimpse::eval::evaluate(
                    &p,
                    scenes_seed,
                    count,
                    size,
                    &mut progress,
                ))?;
                reports.push((label, report));
            }
            let columns: Vec<(&str, &glimpse::eval::Report)> = reports
                .iter()
                .chain(others.iter())
                .map(|(l, r)| (l.as_str(), r))
                .collect();
            print!("{}", glimpse::eval::format_table(&columns));
            for (i, (a, ra)) in columns.iter().enumerate() {
                for (b, rb) in &columns[i + 1..] {
                    let (same, n) = glimpse::eval::agreement(&ra.items, &rb.items);
                    println!(
                        "{a} and {b} agree on {same} of {n} predictions ({:.2}%)",
                        100.0 * same as f64 / n.max(1) as f64
                    );
                }
            }
            if let Some(path) = json {
                let map: serde_json::Map<String, serde_json::Value> = reports
                    .iter()
                    .map(|(l, r)| Ok((l.clone(), serde_json::to_value(r)?)))
                    .collect::<anyhow::Result<_>>()?;
                std::fs::write(&path, serde_json::to_string(&map)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Quantize { model, dtype, out } => {
            let files = match model.as_deref() {
                Some(_) => None,
                None => Some(default_model::files()),
            };
            let stats = glimpse::pipeline::quantize(
                model.as_deref(),
                files.as_ref(),
                DType::parse(&dtype)?,
                &out,
            )
            .with_context(|| format!("quantizing into {}", out.display()))?;
            println!(
                "wrote {} ({} bytes, {} tensors, {:.1} M values, Linear weights {dtype})",
                out.display(),
                stats.gguf_bytes,
                stats.tensors,
                stats.params as f64 / 1e6
            );
        }
        Command::Checkpoint {
            config,
            out,
            seed,
            scale,
            format,
            layers,
            meta_from,
        } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let mut v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", config.display()))?;
            if let Some(n) = layers {
                glimpse::io::checkpoint::cut_layers(&mut v, n);
            }
            let text = serde_json::to_string_pretty(&v)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            if let Some(dir) = meta_from {
                for f in glimpse::io::files::META_FILES {
                    let src = dir.join(f);
                    if src.exists() && *f != "config.json" {
                        std::fs::copy(&src, out.join(f))
                            .with_context(|| format!("copying {}", src.display()))?;
                    }
                }
            }
            std::fs::write(out.join("config.json"), &text)?;
            let format = match format.as_str() {
                "safetensors" => glimpse::io::checkpoint::Format::Safetensors,
                _ => glimpse::io::checkpoint::Format::Torch,
            };
            let tensors = glimpse::pipeline::checkpoint_tensors(&text)?;
            let path = out.join(format.file_name());
            let file = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            glimpse::io::checkpoint::write(file, &tensors, seed, scale, format)?;
            let params: usize = tensors
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            println!(
                "wrote {} ({} tensors, {:.1} M parameters, {} bytes)",
                path.display(),
                tensors.len(),
                params as f64 / 1e6,
                std::fs::metadata(&path)?.len()
            );
        }
        Command::Scenes {
            seed,
            count,
            size,
            out,
        } => {
            use std::io::Write;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut jsonl = std::fs::File::create(out.join("scenes.jsonl"))?;
            for s in seed..seed + count {
                let scene = glimpse::scenes::Scene::generate(s, size);
                let file = format!("scene-{s:06}.png");
                std::fs::write(out.join(&file), scene.png()?)?;
                let line = serde_json::json!({"image": file, "seed": s, "caption": scene.caption(), "qa": scene.questions(), "objects": scene.objects});
                writeln!(jsonl, "{line}")?;
            }
            println!("wrote {count} scenes to {}", out.display());
        }
        Command::Info => {
            let d = gpu()?;
            if let Device::Gpu(ctx) = d {
                println!("{}", serde_json::to_string_pretty(ctx.summary())?);
            }
        }
        Command::Serve {
            port,
            root,
            log,
            no_isolation,
        } => serve::serve(&root, port, log, !no_isolation)?,
    }
    Ok(())
}
