//! Building blocks shared by the models, each loaded from its checkpoint path.

pub mod vision;

use crate::error::{Error, Result};
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
    /// `act(self(x))`, fused on the GPU.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        x.linear_fused(&self.weight, self.bias.as_ref(), Some(act), None)
    }
    /// `residual + self(x)`, fused on the GPU (a transformer block's residual connection).
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        x.linear_fused(&self.weight, self.bias.as_ref(), None, Some(residual))
    }
}

/// Token embeddings, plus learned absolute positions and a LayerNorm where the model has them:
/// GPT-2 (`wte` + `wpe`), BERT-style towers (GIT, BLIP: words + positions, LayerNorm), CLIP's
/// text tower, Llama (tokens only; its positions are rotary, inside attention).
pub struct TextEmbeddings {
    /// `[V, D]`, f32 or f16 (see [`Vb::get_embedding`])
    pub words: Tensor,
    /// `[P, D]`
    positions: Option<Tensor>,
    norm: Option<LayerNorm>,
    /// the most positions a text may take, and the config field that says so (for errors)
    limit: (usize, &'static str),
}

impl TextEmbeddings {
    pub fn new(
        words: Tensor,
        positions: Option<Tensor>,
        norm: Option<LayerNorm>,
        limit: (usize, &'static str),
    ) -> TextEmbeddings {
        TextEmbeddings {
            words,
            positions,
            norm,
            limit,
        }
    }

    pub fn device(&self) -> crate::Device {
        self.words.device()
    }

    /// The most positions a text may take.
    pub fn max_positions(&self) -> usize {
        self.limit.0
    }

    /// Embeddings `[B, T, D]` of `ids [B][T]` (rows of one length) at positions `start..start+T`.
    pub fn forward(&self, ids: &[Vec<u32>], start: usize) -> Result<Tensor> {
        let (b, t) = (ids.len(), ids.first().map_or(0, |r| r.len()));
        if ids.iter().any(|r| r.len() != t) {
            return Err(Error::Invalid(
                "the rows of a batch of texts must have one length".into(),
            ));
        }
        let (max, field) = self.limit;
        if start + t > max {
            return Err(Error::Invalid(format!(
                "the text is {} tokens long; this model's {field} is {max}",
                start + t
            )));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let mut x = self.words.lookup(&flat, &[b, t])?;
        if let Some(table) = &self.positions {
            let pos: Vec<u32> = (start..start + t).map(|p| p as u32).collect();
            // (B, T, D) + (T, D)
            x = x.add(&table.embedding(&Tensor::from_u32(&pos, &[t], &self.device())?)?)?;
        }
        match &self.norm {
            Some(ln) => ln.forward(&x),
            None => Ok(x),
        }
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
/// `[B, H, capacity, D]` each, of which the first `len` are filled. The capacity is what a
/// request needs (prompt + new tokens), not the model's maximum; an append past it grows the
/// cache. Copies (a prefix reused, beams reordered) move only the rows in use.
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
        let shape = [b, heads, capacity.max(1), head_dim];
        Ok(KvCache {
            // rows past `len` are never read: no need to clear them
            k: Tensor::empty(&shape, device)?,
            v: Tensor::empty(&shape, device)?,
            len: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.k.dim(2)
    }

    /// A cache of `capacity` positions starting with this one's rows (a prefix computed once,
    /// e.g. GIT's image tokens, copied for a request).
    pub fn extended(&self, capacity: usize) -> Result<KvCache> {
        let (b, h, d) = (self.k.dim(0), self.k.dim(1), self.k.dim(3));
        let mut c = KvCache::new(b, h, capacity.max(self.len), d, &self.k.device())?;
        if self.len > 0 {
            c.append(
                &self.k.narrow(2, 0, self.len)?,
                &self.v.narrow(2, 0, self.len)?,
            )?;
        }
        Ok(c)
    }

    /// Appends `k`, `v` `[B, H, T, D]` in place, growing the cache when it is full.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let t = k.dim(2);
        self.reserve(t)?;
        self.k.write_slice(k, 2, self.len)?;
        self.v.write_slice(v, 2, self.len)?;
        self.len += t;
        Ok(())
    }

    /// Room for `t` more positions: grows geometrically when full, copying only the rows in use.
    fn reserve(&mut self, t: usize) -> Result<()> {
        if self.len + t > self.capacity() {
            let grown = self.extended((self.len + t).max(2 * self.capacity()))?;
            *self = grown;
        }
        Ok(())
    }

    /// Appends the k and v of a fused projection `qkv [B, T, 3·H·Dh]` (see
    /// [`Tensor::split_qkv_into`]) and returns its q `[B, H, T, Dh]`.
    pub fn append_qkv(&mut self, qkv: &Tensor) -> Result<Tensor> {
        let t = qkv.dim(1);
        self.reserve(t)?;
        let q = qkv.split_qkv_into(self.k.dim(1), &self.k, &self.v, self.len)?;
        self.len += t;
        Ok(q)
    }

    /// A cache holding rows `rows` of this one's batch (beam search reorders its beams); only
    /// the positions in use are copied.
    pub fn select_rows(&self, rows: &[usize]) -> Result<KvCache> {
        let (h, d) = (self.k.dim(1), self.k.dim(3));
        let mut c = KvCache::new(rows.len(), h, self.capacity(), d, &self.k.device())?;
        if self.len > 0 {
            let pick = |t: &Tensor| -> Result<Tensor> {
                // [1, H, len, D] per row, joined: [rows, H, len, D]
                let parts = rows
                    .iter()
                    .map(|&r| t.narrow(0, r, 1)?.narrow(2, 0, self.len))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)
            };
            c.append(&pick(&self.k)?, &pick(&self.v)?)?;
        }
        Ok(c)
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
        self.forward_add(x, causal, mask, None)
    }

    /// `residual + out(attention(x))`, the residual add fused into the output projection.
    pub fn forward_add(
        &self,
        x: &Tensor,
        causal: bool,
        mask: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
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
        let a = merge_heads(&Tensor::attention(&q, &k, &v, &opts)?)?;
        match residual {
            Some(r) => self.out.forward_add(&a, r),
            None => self.out.forward(&a),
        }
    }
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

/// One layer's cross-attention keys and values over encoder states `[1, H, Ne, Dh]`. Every beam
/// attends to the same image or question: attention broadcasts them over the query batch, so
/// they are never repeated per beam.
pub struct CrossKv {
    pub k: Tensor,
    pub v: Tensor,
}
