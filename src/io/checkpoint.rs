//! Checkpoints with seeded random weights at any shape, written as a Hugging Face repo writes
//! them (`model.safetensors` or `pytorch_model.bin`), a tensor at a time: real-size tests and
//! benchmarks without a download (`glimpse checkpoint`), and parity fixtures whose weights are
//! made here rather than committed (the Python reference reads the same file).

use std::io::{Seek, Write};

use crate::error::{Error, Result};
use crate::io::torch::{TorchDType, TorchWriter};
use crate::rng::Rng;

/// The file format of a written checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    Torch,
}

impl Format {
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Safetensors => "model.safetensors",
            Format::Torch => "pytorch_model.bin",
        }
    }
}

/// Seeded values of tensor `name`: uniform in ±`scale`, except norm weights (1-D tensors named
/// like a LayerNorm's weight), which are 1 ± scale/4 as an initialized model's are.
pub fn random_values(name: &str, shape: &[usize], seed: u64, scale: f32) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let salt = name
        .bytes()
        .fold(seed, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let mut rng = Rng::new(salt);
    let lower = name.to_ascii_lowercase();
    let norm = shape.len() == 1
        && lower.ends_with(".weight")
        && (lower.contains("norm") || lower.contains("ln_") || lower.contains(".ln"));
    if norm {
        rng.vec(n, 1.0 - scale / 4.0, 1.0 + scale / 4.0)
    } else {
        rng.vec(n, -scale, scale)
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `tensors` (name, shape) with seeded values to `out` in `format`; returns the bytes.
pub fn write<W: Write + Seek>(
    out: W,
    tensors: &[(String, Vec<usize>)],
    seed: u64,
    scale: f32,
    format: Format,
) -> Result<W> {
    let io = |e: std::io::Error| Error::Weights(format!("writing the checkpoint: {e}"));
    match format {
        Format::Torch => {
            let list: Vec<(String, Vec<usize>, TorchDType)> = tensors
                .iter()
                .map(|(n, s)| (n.clone(), s.clone(), TorchDType::F32))
                .collect();
            let mut w = TorchWriter::new(out, &list)?;
            for (name, shape) in tensors {
                w.tensor(&f32_bytes(&random_values(name, shape, seed, scale)))?;
            }
            w.finish()
        }
        Format::Safetensors => {
            // header: {name: {dtype, shape, data_offsets}} in file order, then the data
            let mut header = serde_json::Map::new();
            let mut at = 0u64;
            for (name, shape) in tensors {
                let bytes = 4 * shape.iter().product::<usize>() as u64;
                header.insert(
                    name.clone(),
                    serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, at + bytes]}),
                );
                at += bytes;
            }
            let mut h = serde_json::Value::Object(header).to_string().into_bytes();
            h.resize(h.len().next_multiple_of(8), b' ');
            let mut out = out;
            out.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
            out.write_all(&h).map_err(io)?;
            for (name, shape) in tensors {
                out.write_all(&f32_bytes(&random_values(name, shape, seed, scale)))
                    .map_err(io)?;
            }
            Ok(out)
        }
    }
}

/// A checkpoint of the model `config_json` describes, in memory.
pub fn random_checkpoint(
    config_json: &str,
    seed: u64,
    scale: f32,
    format: Format,
) -> Result<Vec<u8>> {
    let tensors = crate::pipeline::checkpoint_tensors(config_json)?;
    Ok(write(
        std::io::Cursor::new(Vec::new()),
        &tensors,
        seed,
        scale,
        format,
    )?
    .into_inner())
}

/// Cuts every layer count of a config (`num_hidden_layers`, `n_layer`, in nested configs too) to
/// at most `n`: a model at real widths with fewer layers, for tests and benchmarks.
pub fn cut_layers(v: &mut serde_json::Value, n: u64) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x.as_u64() {
                    Some(c) if k == "num_hidden_layers" || k == "n_layer" => *x = c.min(n).into(),
                    _ => cut_layers(x, n),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| cut_layers(x, n)),
        _ => {}
    }
}
