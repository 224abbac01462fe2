//! The `glimpse` command line.

mod serve;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use glimpse::{bench, selfcheck, Device, GpuContext, GpuOptions};

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
        what: BenchWhat,
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
    /// Shows the GPU adapter and the limits glimpse uses
    Info,
    /// Serves the web app (www/, pkg/, models/) on 127.0.0.1
    Serve {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// folder that holds www/, pkg/ and models/
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Prefill GEMM and decode GEMV at base-model shapes, f32 / q8_0 / q4_0
    Kernels {
        #[arg(long, value_enum, default_value = "all")]
        device: DeviceArg,
        #[arg(long, default_value_t = 5)]
        samples: usize,
        /// also write the rows as JSON
        #[arg(long)]
        json: Option<PathBuf>,
    },
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench {
            what:
                BenchWhat::Kernels {
                    device,
                    samples,
                    json,
                },
        } => {
            let opts = bench::BenchOptions {
                samples,
                ..Default::default()
            };
            let mut rows = Vec::new();
            for (d, label) in devices(device)? {
                if let Device::Gpu(ctx) = &d {
                    let s = ctx.summary();
                    eprintln!(
                        "GPU: {} ({}, {}, {})",
                        s.name, s.backend, s.device_type, s.driver
                    );
                }
                eprintln!("timing on {label} …");
                rows.extend(pollster::block_on(bench::bench_kernels(&d, &label, &opts))?);
            }
            bench::attach_cpu_ratios(&mut rows);
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&rows)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            print!("{}", bench::format_table(&rows));
        }
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
        Command::Info => {
            let d = gpu()?;
            if let Device::Gpu(ctx) = d {
                println!("{}", serde_json::to_string_pretty(ctx.summary())?);
            }
        }
        Command::Serve { port, root } => serve::serve(&root, port)?,
    }
    Ok(())
}
