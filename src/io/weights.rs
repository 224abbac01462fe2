//! How a model asks for its checkpoint tensors: [`Vb`] follows the Hugging Face module tree
//! (`vb.pp("encoder")`) and names each tensor with the [`Use`] the model makes of it (an f32
//! parameter, an embedding table, a Linear weight, maybe split or transposed).
//!
//! A model's constructor runs twice for every load (see `io::stream`): first against a *plan*
//! ([`Weights::plan`]), which records every use and hands out placeholders without data, so that
//! each tensor can be converted to its final form and sent to its device the moment its bytes
//! arrive; then against the finished tensors ([`Weights::ready`]). A third source,
//! [`Weights::random`], makes seeded values at any shape (benchmarks and real-size tests).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// What the model does with a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// f32 values (norms, biases, positions, class tokens)
    F32,
    /// a gather table: f32 for f32 models, f16 otherwise
    Embedding,
    /// a Linear weight `[N, K]` in the load's dtype (q8_0/q4_0 when K allows)
    Linear,
    /// one value, read on the host (CLIP's logit_scale)
    Scalar,
}

/// One use of a checkpoint tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Use {
    pub role: Role,
    /// the checkpoint's shape
    pub source_shape: Vec<usize>,
    /// the shape the model holds, whole (2-D for Linear weights)
    pub shape: Vec<usize>,
    /// the checkpoint holds the transpose of `shape` (GPT-2's `Conv1D` `[in, out]`)
    pub transposed: bool,
    /// split into this many equal row blocks (a fused q/k/v projection)
    pub parts: usize,
}

impl Use {
    fn plain(role: Role, shape: &[usize]) -> Use {
        Use {
            role,
            source_shape: shape.to_vec(),
            shape: shape.to_vec(),
            transposed: false,
            parts: 1,
        }
    }
}

/// The source the [`Vb`]s of one constructor run read from.
pub struct Weights {
    mode: Mode,
}

enum Mode {
    Plan(Mutex<Plan>),
    Ready(Ready),
    Random { seed: u64, handed_out: Mutex<u64> },
}

/// What a constructor asked for, in order; `known` answers `contains` (the checkpoint's names
/// and shapes, when known; `None` while only the metadata is checked).
#[derive(Default)]
pub struct Plan {
    pub known: Option<HashMap<String, Option<Vec<usize>>>>,
    /// names whose checkpoint shape is `Use::shape` already (tensors a GGUF written by glimpse
    /// stores transposed or flattened)
    pub model_layout: HashSet<String>,
    pub uses: BTreeMap<String, Vec<Use>>,
    pub order: Vec<String>,
}

/// Finished tensors by (name, use), and scalars.
#[derive(Default)]
pub struct Ready {
    pub names: HashSet<String>,
    pub tensors: HashMap<(String, Use), Vec<Tensor>>,
    pub scalars: HashMap<String, f32>,
}

impl Weights {
    /// A plan over a checkpoint with these tensor names and shapes (`None`: names not known yet;
    /// `contains` then answers false, as for a checkpoint that leaves optional tensors out).
    pub fn plan(
        known: Option<HashMap<String, Option<Vec<usize>>>>,
        model_layout: HashSet<String>,
    ) -> Weights {
        Weights {
            mode: Mode::Plan(Mutex::new(Plan {
                known,
                model_layout,
                ..Default::default()
            })),
        }
    }

    pub fn ready(ready: Ready) -> Weights {
        Weights {
            mode: Mode::Ready(ready),
        }
    }

    /// Weights that answer every request with seeded values (uniform, ±0.05) of the shape the
    /// config implies: for benchmarking a base-size architecture without a download.
    pub fn random(seed: u64) -> Weights {
        Weights {
            mode: Mode::Random {
                seed,
                handed_out: Mutex::new(0),
            },
        }
    }

    /// The plan recorded so far (a plan source only).
    pub fn into_plan(self) -> Option<Plan> {
        match self.mode {
            Mode::Plan(p) => Some(p.into_inner().unwrap_or_else(|e| e.into_inner())),
            _ => None,
        }
    }

    /// How many values models have loaded from random weights.
    pub fn values_loaded(&self) -> u64 {
        match &self.mode {
            Mode::Random { handed_out, .. } => {
                *handed_out.lock().unwrap_or_else(|e| e.into_inner())
            }
            _ => 0,
        }
    }

    fn contains(&self, name: &str) -> bool {
        match &self.mode {
            Mode::Plan(p) => p
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .known
                .as_ref()
                .is_some_and(|k| k.contains_key(name)),
            Mode::Ready(r) => r.names.contains(name),
            Mode::Random { .. } => true,
        }
    }

    /// The tensors (one per part) of one use of `name`.
    fn tensors(&self, name: &str, u: &Use, device: &Device, linear: DType) -> Result<Vec<Tensor>> {
        match &self.mode {
            Mode::Plan(p) => {
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(known) = &p.known {
                    let have = known.get(name).ok_or_else(|| {
                        Error::Weights(format!("the checkpoint has no tensor {name}"))
                    })?;
                    let ok = match have {
                        // a shard whose header has not arrived: checked when it does
                        None => true,
                        Some(have) if u.role == Role::Scalar => have.iter().product::<usize>() == 1,
                        Some(have) => {
                            *have == u.source_shape
                                || (p.model_layout.contains(name) && *have == u.shape)
                        }
                    };
                    if !ok {
                        return Err(Error::Weights(format!(
                            "tensor {name} has shape {:?}, the config implies {:?}",
                            have.clone().unwrap_or_default(),
                            u.source_shape
                        )));
                    }
                }
                if !p.uses.contains_key(name) {
                    p.order.push(name.to_string());
                }
                let entry = p.uses.entry(name.to_string()).or_default();
                if !entry.contains(u) {
                    entry.push(u.clone());
                }
                let dtype = super::stream::convert::device_dtype(u, linear);
                let mut part = u.shape.clone();
                if u.parts > 1 {
                    part[0] /= u.parts;
                }
                Ok((0..u.parts.max(1))
                    .map(|_| Tensor::meta(&part, dtype))
                    .collect())
            }
            Mode::Ready(r) => r
                .tensors
                .get(&(name.to_string(), u.clone()))
                .cloned()
                .ok_or_else(|| Error::Weights(format!("tensor {name} was not loaded"))),
            Mode::Random { seed, handed_out } => {
                let n: usize = u.source_shape.iter().product();
                *handed_out.lock().unwrap_or_else(|e| e.into_inner()) += n as u64;
                let salt = name
                    .bytes()
                    .fold(*seed, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
                let values = crate::rng::Rng::new(salt).vec(n, -0.05, 0.05);
                super::stream::build_from_f32(name, &values, u, linear, device)
            }
        }
    }

    fn scalar(&self, name: &str) -> Result<f32> {
        match &self.mode {
            Mode::Ready(r) => r
                .scalars
                .get(name)
                .copied()
                .ok_or_else(|| Error::Weights(format!("tensor {name} was not loaded"))),
            // CLIP's logit_scale at initialization
            _ => Ok(2.6592),
        }
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
        Vb {
            prefix: self.path(&name.to_string()),
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

    fn one(&self, name: &str, u: Use) -> Result<Tensor> {
        let mut v = self
            .weights
            .tensors(&self.path(name), &u, &self.device, self.linear_dtype)?;
        v.pop()
            .ok_or_else(|| Error::Weights(format!("tensor {} is empty", self.path(name))))
    }

    /// An f32 tensor of the expected shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.one(name, Use::plain(Role::F32, shape))
    }

    /// An f32 tensor stored as `stored` and used as `shape` (same values, e.g. a class token
    /// kept as `[D]` by one checkpoint and `[1, 1, D]` by another).
    pub fn get_as(&self, name: &str, stored: &[usize], shape: &[usize]) -> Result<Tensor> {
        let mut u = Use::plain(Role::F32, shape);
        u.source_shape = stored.to_vec();
        self.one(name, u)
    }

    /// An embedding table `[V, D]`: f32 for f32 models, f16 otherwise (the gather kernel reads
    /// f32 and f16; half the bytes keeps GPT-2's 50257-row table under a 128 MiB binding).
    pub fn get_embedding(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.one(name, Use::plain(Role::Embedding, shape))
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
        let mut u = Use::plain(Role::Linear, shape);
        u.source_shape = stored.to_vec();
        self.one(name, u)
    }

    /// A GPT-2 `Conv1D` of `parts` equal outputs (c_attn: q, k, v) as separate Linears:
    /// weight `[in, parts·out]` (transposed into Linear rows), bias `[parts·out]`.
    pub fn conv1d_split(
        &self,
        in_dim: usize,
        out_dim: usize,
        parts: usize,
    ) -> Result<Vec<crate::nn::Linear>> {
        let w = Use {
            role: Role::Linear,
            source_shape: vec![in_dim, parts * out_dim],
            shape: vec![parts * out_dim, in_dim],
            transposed: true,
            parts,
        };
        self.split(w, out_dim, parts)
    }

    /// A fused `nn.Linear(in, parts·out)` (BLIP's `qkv`) as `parts` Linears.
    pub fn linear_split(
        &self,
        in_dim: usize,
        out_dim: usize,
        parts: usize,
    ) -> Result<Vec<crate::nn::Linear>> {
        let mut w = Use::plain(Role::Linear, &[parts * out_dim, in_dim]);
        w.parts = parts;
        self.split(w, out_dim, parts)
    }

    fn split(&self, w: Use, out_dim: usize, parts: usize) -> Result<Vec<crate::nn::Linear>> {
        let mut b = Use::plain(Role::F32, &[parts * out_dim]);
        b.parts = parts;
        let weights =
            self.weights
                .tensors(&self.path("weight"), &w, &self.device, self.linear_dtype)?;
        let biases =
            self.weights
                .tensors(&self.path("bias"), &b, &self.device, self.linear_dtype)?;
        if weights.len() != parts || biases.len() != parts {
            return Err(Error::Weights(format!(
                "{}: expected {parts} parts",
                self.path("weight")
            )));
        }
        Ok(weights
            .into_iter()
            .zip(biases)
            .map(|(weight, bias)| crate::nn::Linear {
                weight,
                bias: Some(bias),
            })
            .collect())
    }
}

/// A 0-d (or 1-element) tensor's value, e.g. CLIP's `logit_scale`.
pub fn scalar(vb: &Vb, name: &str) -> Result<f32> {
    let full = vb.path(name);
    if let Mode::Plan(_) = &vb.weights.mode {
        vb.weights.tensors(
            &full,
            &Use::plain(Role::Scalar, &[]),
            &vb.device,
            vb.linear_dtype,
        )?;
    }
    vb.weights.scalar(&full)
}
