//! `glimpse bench`: kernel and whole-model benchmarks that print tables.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use glimpse::{bench, DType, Device};

use super::{devices, DeviceArg};

#[derive(Subcommand)]
pub enum BenchWhat {
    /// A whole model at a real size with random weights: image encode, first token, tokens/s
    Model {
        /// git, vit-gpt2, blip, clip or smolvlm
        #[arg(long, default_value = "git")]
        arch: String,
        /// base (the real model's shape), tiny (the test fixtures' shape), or for smolvlm base-global (the global view only: 1 tile instead of 5)
        #[arg(long, default_value = "base")]
        size: String,
        #[arg(long, value_enum, default_value = "all")]
        device: DeviceArg,
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "q8_0", "q4_0"])]
        dtype: String,
        #[arg(long, default_value_t = 20)]
        new_tokens: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
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

/// Runs one benchmark and prints its table (and writes its JSON).
pub fn run(what: BenchWhat) -> anyhow::Result<()> {
    match what {
        BenchWhat::Kernels {
            device,
            samples,
            json,
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
        BenchWhat::Model {
            arch,
            size,
            device,
            dtype,
            new_tokens,
            json,
        } => {
            let (mut rows, mut failed) = (Vec::new(), Vec::new());
            for (d, label) in devices(device)? {
                eprintln!("{arch} ({size}) on {label} …");
                // one device failing (e.g. a tensor over its binding limit) does not hide the others
                let dt = DType::parse(&dtype)?;
                match pollster::block_on(bench::bench_model(
                    &arch, &size, &d, &label, dt, new_tokens,
                )) {
                    Ok(row) => rows.push(row),
                    Err(e) => failed.push(format!("{arch} {size} {dtype} on {label}: {e}")),
                }
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
            }
            print!("{}", bench::format_model_table(&rows));
            for f in &failed {
                println!("not run: {f}");
            }
        }
    }
    Ok(())
}
