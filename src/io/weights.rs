//! Checkpoint tensors from safetensors (f32, f16, bf16; one file or shards), looked up by their
//! Hugging Face names through [`Vb`], which follows the module tree (`vb.pp("encoder")`), checks
//! every shape against the config and converts Linear weights to the requested dtype.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, Metadata};

use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// Where one tensor's bytes are.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The tensors of a checkpoint (one or more safetensors files, or one GGUF file), kept as the
/// files' bytes.
pub struct Weights {
    files: Vec<Vec<u8>>,
    entries: HashMap<String, Entry>,
    gguf: Option<super::gguf::GgufTensors>,
    /// Benchmarks of real model sizes without their checkpoints: every tensor the model asks
    /// for exists, filled from this seed (see [`Weights::random`]).
    random: Option<u64>,
    /// Values handed out so far (the parameter count of what a model loaded).
    handed_out: std::sync::atomic::AtomicU64,
}

impl Weights {
    /// Parses the headers of safetensors files (a single model.safetensors or every shard).
    /// A truncated or inconsistent file is an error naming what is wrong.
    pub fn from_safetensors(files: Vec<Vec<u8>>) -> Result<Weights> {
        let mut entries = HashMap::new();
        for (i, bytes) in files.iter().enumerate() {
            let (header_len, meta): (usize, Metadata) =
                safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
                    Error::Weights(format!(
                        "not a valid safetensors file (truncated or damaged?): {e}"
                    ))
                })?;
            let data_len = bytes.len().saturating_sub(8 + header_len);
            for (name, info) in meta.tensors() {
                let (start, end) = info.data_offsets;
                if end > data_len || start > end {
                    return Err(Error::Weights(format!(
                        "tensor {name} lies past the end of the file ({end} > {data_len} bytes of data): the file is truncated"
                    )));
                }
                let elem = match info.dtype {
                    Dtype::F32 => 4,
                    Dtype::F16 | Dtype::BF16 => 2,
                    other => {
                        return Err(Error::Weights(format!(
                            "tensor {name} has dtype {other:?}; glimpse reads f32, f16 and bf16"
                        )))
                    }
                };
                let numel: usize = info.shape.iter().product();
                if numel * elem != end - start {
                    return Err(Error::Weights(format!(
                        "tensor {name}: shape {:?} does not match its {} bytes",
                        info.shape,
                        end - start
                    )));
                }
                let offset = 8 + header_len;
                entries.insert(
                    name.clone(),
                    Entry {
                        file: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: offset + start,
                        end: offset + end,
                    },
                );
            }
        }
        Ok(Weights {
            files,
            entries,
            gguf: None,
            random: None,
            handed_out: Default::default(),
        })
    }

    /// Weights that answer every request with seeded values (uniform, ±0.05) of the shape the
    /// config implies: for benchmarking a base-size architecture without a download.
    pub fn random(seed: u64) -> Weights {
        Weights {
            files: Vec::new(),
            entries: HashMap::new(),
            gguf: None,
            random: Some(seed),
            handed_out: Default::default(),
        }
    }

    /// How many values models have loaded from these weights.
    pub fn values_loaded(&self) -> u64 {
        self.handed_out.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The tensors of a GGUF file (see [`super::gguf`]); quantized ones are dequantized when
    /// read, and quantizing them again to their own format gives back the same blocks.
    pub fn from_gguf(bytes: Vec<u8>) -> Result<Weights> {
        Ok(Weights {
            files: Vec::new(),
            entries: HashMap::new(),
            gguf: Some(super::gguf::GgufTensors::new(bytes)?),
            random: None,
            handed_out: Default::default(),
        })
    }

    /// Safetensors or GGUF, told apart by the first file's magic bytes.
    pub fn from_files(files: Vec<Vec<u8>>) -> Result<Weights> {
        match files.as_slice() {
            [one] if super::gguf::is_gguf(one) => {
                Weights::from_gguf(files.into_iter().next().unwrap_or_default())
            }
            _ => Weights::from_safetensors(files),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.random.is_some()
            || self.entries.contains_key(name)
            || self.gguf.as_ref().is_some_and(|g| g.shape(name).is_some())
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        if let Some(g) = &self.gguf {
            return g.shape(name);
        }
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.gguf {
            Some(g) => g.names(),
            None => self.entries.keys().cloned().collect(),
        };
        names.sort();
        names
    }

    /// The values of a tensor as f32, with its shape.
    pub fn get_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        if let Some(g) = &self.gguf {
            return g.get_f32(name);
        }
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::Weights(format!("the checkpoint has no tensor {name}")))?;
        let raw = &self.files[e.file][e.start..e.end];
        let values = match e.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        Ok((values, e.shape.clone()))
    }
}

/// A view of the weights at a module path, on a device, with the dtype Linear weights take.
#[derive(Clone)]
pub struct Vb<'a> {
    weights: &'a Weights,
    prefix: String,
    pub device: Device,
    /// Storage of Linear weights (f32, f16, q8_0, q4_0); everything else stays f32.
    pub linear_dtype: DType,
}

impl<'a> Vb<'a> {
    pub fn new(weights: &'a Weights, device: &Device, linear_dtype: DType) -> Vb<'a> {
        Vb {
            weights,
            prefix: String::new(),
            device: device.clone(),
            linear_dtype,
        }
    }

    /// The sub-module `name` (a field name or a layer index).
    pub fn pp(&self, name: impl std::fmt::Display) -> Vb<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Vb {
            prefix,
            ..self.clone()
        }
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.path(name))
    }

    fn values(&self, name: &str, shape: &[usize]) -> Result<(String, Vec<f32>)> {
        let full = self.path(name);
        let n: usize = shape.iter().product();
        self.weights
            .handed_out
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(seed) = self.weights.random {
            let salt = full
                .bytes()
                .fold(seed, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
            return Ok((full, crate::rng::Rng::new(salt).vec(n, -0.05, 0.05)));
        }
        let (data, have) = self.weights.get_f32(&full)?;
        if have != shape {
            return Err(Error::Weights(format!(
                "tensor {full} has shape {have:?}, the config implies {shape:?}"
            )));
        }
        Ok((full, data))
    }

    /// Storage of a Linear weight with rows of `k` values: the linear dtype, except that
    /// q8_0/q4_0 need whole 32-value blocks (other rows stay f16 so any checkpoint loads).
    fn storage_dtype(&self, k: usize) -> DType {
        match self.linear_dtype {
            d if d.is_quantized() && k.is_multiple_of(32) => d,
            d if d.is_quantized() => DType::F16,
            d => d,
        }
    }

    /// An f32 tensor of the expected shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (_, data) = self.values(name, shape)?;
        Tensor::from_f32(&data, shape, &self.device)
    }

    /// An embedding table `[V, D]`: f32 for f32 models, f16 otherwise (the gather kernel reads
    /// f32 and f16; half the bytes keeps GPT-2's 50257-row table under a 128 MiB binding).
    pub fn get_embedding(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (full, data) = self.values(name, shape)?;
        let dtype = if self.linear_dtype == DType::F32 {
            DType::F32
        } else {
            DType::F16
        };
        Tensor::weight(&full, &data, shape, dtype, &self.device)
    }

    /// A weight in `self.linear_dtype` when its rows allow it (q8_0/q4_0 need K % 32 == 0;
    /// other shapes stay f16 or f32 so any checkpoint loads).
    pub fn get_linear_weight(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_linear_weight_as(name, shape, shape)
    }

    /// As [`Vb::get_linear_weight`] for a tensor stored as `stored` and used as the 2-D `shape`
    /// (a patch-embedding conv weight `[O, C, P, P]` used as `[O, C·P·P]`).
    pub fn get_linear_weight_as(
        &self,
        name: &str,
        stored: &[usize],
        shape: &[usize],
    ) -> Result<Tensor> {
        let (full, data) = self.values(name, stored)?;
        let dtype = self.storage_dtype(if shape.len() == 2 { shape[1] } else { 1 });
        Tensor::weight(&full, &data, shape, dtype, &self.device)
    }
}

/// A 0-d (or 1-element) tensor's value, e.g. CLIP's `logit_scale`.
pub fn scalar(vb: &Vb, name: &str) -> Result<f32> {
    let full = vb.path(name);
    if vb.weights.random.is_some() {
        return Ok(2.6592); // CLIP's logit_scale at initialization
    }
    let (v, _) = vb.weights.get_f32(&full)?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => Err(Error::Weights(format!(
            "tensor {full} should hold one value, it has {}",
            v.len()
        ))),
    }
}

impl Vb<'_> {
    /// A GPT-2 `Conv1D` of `parts` equal outputs (c_attn: q, k, v) as separate Linears:
    /// weight `[in, parts·out]` (transposed here into Linear rows), bias `[parts·out]`.
    pub fn conv1d_split(
        &self,
        in_dim: usize,
        out_dim: usize,
        parts: usize,
    ) -> Result<Vec<crate::nn::Linear>> {
        let (full, w) = self.values("weight", &[in_dim, parts * out_dim])?;
        let n = parts * out_dim;
        // [in, parts·out] -> [parts·out, in]
        let mut t = vec![0f32; w.len()];
        for i in 0..in_dim {
            for o in 0..n {
                t[o * in_dim + i] = w[i * n + o];
            }
        }
        self.split_rows(&full, &t, in_dim, out_dim, parts)
    }

    /// A fused `nn.Linear(in, parts·out)` (BLIP's `qkv`) as `parts` Linears.
    pub fn linear_split(
        &self,
        in_dim: usize,
        out_dim: usize,
        parts: usize,
    ) -> Result<Vec<crate::nn::Linear>> {
        let (full, w) = self.values("weight", &[parts * out_dim, in_dim])?;
        self.split_rows(&full, &w, in_dim, out_dim, parts)
    }

    /// Linear p takes weight rows `[p·out, (p+1)·out)` of `w [parts·out, in]` and the matching
    /// slice of this module's bias.
    fn split_rows(
        &self,
        full: &str,
        w: &[f32],
        in_dim: usize,
        out_dim: usize,
        parts: usize,
    ) -> Result<Vec<crate::nn::Linear>> {
        let (_, b) = self.values("bias", &[parts * out_dim])?;
        let dtype = self.storage_dtype(in_dim);
        (0..parts)
            .map(|p| {
                let rows = &w[p * out_dim * in_dim..(p + 1) * out_dim * in_dim];
                Ok(crate::nn::Linear {
                    weight: Tensor::weight(
                        &format!("{full}[{p}]"),
                        rows,
                        &[out_dim, in_dim],
                        dtype,
                        &self.device,
                    )?,
                    bias: Some(Tensor::from_f32(
                        &b[p * out_dim..(p + 1) * out_dim],
                        &[out_dim],
                        &self.device,
                    )?),
                })
            })
            .collect()
    }
}
