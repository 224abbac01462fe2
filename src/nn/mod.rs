//! Building blocks shared by the models, each loaded from its checkpoint path.

use crate::error::Result;
use crate::io::config::Activation;
use crate::io::Vb;
use crate::tensor::Tensor;

/// `y = x · Wᵀ + b`, W `[out, in]` in the Vb's linear dtype.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(vb: &Vb, in_dim: usize, out_dim: usize) -> Result<Linear> {
        Ok(Linear {
            weight: vb.get_linear_weight("weight", &[out_dim, in_dim])?,
            bias: Some(vb.get("bias", &[out_dim])?),
        })
    }
    pub fn no_bias(vb: &Vb, in_dim: usize, out_dim: usize) -> Result<Linear> {
        Ok(Linear {
            weight: vb.get_linear_weight("weight", &[out_dim, in_dim])?,
            bias: None,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn new(vb: &Vb, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: vb.get("weight", &[dim])?,
            bias: vb.get("bias", &[dim])?,
            eps: eps as f32,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(&self.weight, &self.bias, self.eps)
    }
}

pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu_tanh(),
        Activation::QuickGelu => x.quick_gelu(),
        Activation::Silu => x.silu(),
    }
}

/// `[B, T, H·D] -> [B, H, T, D]`
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, hd) = (x.dim(0), x.dim(1), x.dim(2));
    x.reshape(&[b, t, heads, hd / heads])?
        .permute(&[0, 2, 1, 3])
}

/// `[B, H, T, D] -> [B, T, H·D]`
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    x.permute(&[0, 2, 1, 3])?.reshape(&[b, t, h * d])
}

/// Keys and values of one attention layer with room for `capacity` positions:
/// `[B, H, capacity, D]` each, of which the first `len` are filled.
pub struct KvCache {
    pub k: Tensor,
    pub v: Tensor,
    pub len: usize,
}

impl KvCache {
    pub fn new(
        b: usize,
        heads: usize,
        capacity: usize,
        head_dim: usize,
        device: &crate::Device,
    ) -> Result<KvCache> {
        let shape = [b, heads, capacity, head_dim];
        Ok(KvCache {
            k: Tensor::zeros(&shape, device)?,
            v: Tensor::zeros(&shape, device)?,
            len: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.k.dim(2)
    }

    /// Appends `k`, `v` `[B, H, T, D]` in place.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let t = k.dim(2);
        if self.len + t > self.capacity() {
            return Err(crate::Error::Invalid(format!(
                "the sequence outgrows its KV cache ({} + {t} > {} positions): ask for fewer new tokens or a shorter prompt",
                self.len,
                self.capacity()
            )));
        }
        self.k.write_slice(k, 2, self.len)?;
        self.v.write_slice(v, 2, self.len)?;
        self.len += t;
        Ok(())
    }

    /// A cache holding rows `rows` of this one's batch (beam search reorders its beams).
    pub fn select_rows(&self, rows: &[usize]) -> Result<KvCache> {
        Ok(KvCache {
            k: select_rows(&self.k, rows)?,
            v: select_rows(&self.v, rows)?,
            len: self.len,
        })
    }
}

/// Every layer's cache keeps, drops or duplicates batch rows as `rows` says (beam search).
pub fn reorder_caches(caches: &mut Vec<KvCache>, rows: &[usize]) -> Result<()> {
    *caches = caches
        .iter()
        .map(|c| c.select_rows(rows))
        .collect::<Result<_>>()?;
    Ok(())
}

/// Multi-head self-attention with separate q, k, v and output projections (no cache): the
/// attention block of CLIP, ViT and BLIP's vision layers.
pub struct SelfAttention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
    pub heads: usize,
}

impl SelfAttention {
    /// `x [B, T, D]` -> `out(attention(x))` `[B, T, D]`.
    pub fn forward(&self, x: &Tensor, causal: bool, mask: Option<&Tensor>) -> Result<Tensor> {
        // (B, T, D) -> (B, H, T, Dh) each
        let q = split_heads(&self.q.forward(x)?, self.heads)?;
        let k = split_heads(&self.k.forward(x)?, self.heads)?;
        let v = split_heads(&self.v.forward(x)?, self.heads)?;
        let scale = 1.0 / (q.dim(3) as f32).sqrt();
        let opts = crate::tensor::AttentionOpts {
            scale,
            causal,
            mask,
            kv_len: None,
        };
        self.out
            .forward(&merge_heads(&Tensor::attention(&q, &k, &v, &opts)?)?)
    }
}

/// ViT-style embeddings: `[cls ; patches] + positions`, with `cls [1, 1, D]` repeated over the
/// batch of `patches [B, N, D]` and `positions [(1,) 1 + N, D]` broadcast.
pub fn with_class_token(cls: &Tensor, patches: &Tensor, positions: &Tensor) -> Result<Tensor> {
    let cls: Vec<&Tensor> = (0..patches.dim(0)).map(|_| cls).collect();
    Tensor::cat(&[&Tensor::cat(&cls, 0)?, patches], 1)?.add(positions)
}

/// Checks that `pixels` is `[B, channels, size, size]`.
pub fn check_pixels(
    who: &'static str,
    pixels: &Tensor,
    channels: usize,
    size: usize,
) -> Result<()> {
    if pixels.rank() != 4
        || pixels.dim(1) != channels
        || pixels.dim(2) != size
        || pixels.dim(3) != size
    {
        return Err(crate::Error::shape(
            who,
            format!(
                "pixels {:?} should be [B, {channels}, {size}, {size}]",
                pixels.shape()
            ),
        ));
    }
    Ok(())
}

/// Rows `rows` of a tensor's first (batch) dimension, in that order (beam search).
pub fn select_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let parts = rows
        .iter()
        .map(|&r| t.narrow(0, r, 1))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)
}

/// One layer's cross-attention keys and values over encoder states `[B, H, Ne, Dh]`.
pub struct CrossKv {
    pub k: Tensor,
    pub v: Tensor,
}

impl CrossKv {
    pub fn batch(&self) -> usize {
        self.k.dim(0)
    }

    /// Row 0 repeated `n` times (every beam attends to the same image or question).
    fn repeat(&self, n: usize) -> Result<CrossKv> {
        let rows = vec![0; n];
        Ok(CrossKv {
            k: select_rows(&self.k, &rows)?,
            v: select_rows(&self.v, &rows)?,
        })
    }
}

/// The per-layer cross-attention entries a decoder reads: the encoded input's own (batch 1)
/// until beam search widens the batch, then a copy with one row per beam.
pub struct CrossView<'a> {
    base: &'a [CrossKv],
    repeated: Option<Vec<CrossKv>>,
}

impl<'a> CrossView<'a> {
    pub fn new(base: &'a [CrossKv]) -> CrossView<'a> {
        CrossView {
            base,
            repeated: None,
        }
    }

    pub fn layers(&self) -> &[CrossKv] {
        self.repeated.as_deref().unwrap_or(self.base)
    }

    /// Makes the entries `n` rows wide (the rows are identical, so a reorder needs no more).
    pub fn fit_batch(&mut self, n: usize) -> Result<()> {
        if self.layers().first().map_or(n, CrossKv::batch) != n {
            self.repeated = Some(
                self.base
                    .iter()
                    .map(|kv| kv.repeat(n))
                    .collect::<Result<_>>()?,
            );
        }
        Ok(())
    }
}
