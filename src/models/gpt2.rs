//! The GPT-2 decoder (`GPT2LMHeadModel`) with optional cross-attention over encoder states, as
//! VisionEncoderDecoder uses it. `Conv1D` weights (`[in, out]`) are transposed into Linears while
//! loading, and `c_attn` is split into q, k, v.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::io::config::{Activation, Checks};
use crate::io::Vb;
use crate::nn::{merge_heads, split_heads, CrossKv, KvCache, LayerNorm, Linear, TextEmbeddings};
use crate::tensor::{AttentionOpts, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "crate::io::config::defaults::gelu_new")]
    pub activation_function: Activation,
    #[serde(default = "crate::io::config::defaults::eps_1e5")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default = "crate::io::config::defaults::yes")]
    pub scale_attn_weights: bool,
}

impl crate::io::config::HfConfig for Gpt2Config {
    // transformers' GPT2Config()
    const DEFAULTS: &'static str = r#"{
        "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": true, "add_cross_attention": false
    }"#;

    fn validate(&self, file: &str) -> Result<()> {
        let c = Checks::new(file, "");
        c.vocab("vocab_size", self.vocab_size)?;
        c.width("n_embd", self.n_embd)?;
        c.heads("n_head", self.n_head, "n_embd", self.n_embd)?;
        if let Some(inner) = self.n_inner {
            c.width("n_inner", inner)?;
        } else {
            c.width("n_embd (times 4, the default n_inner)", 4 * self.n_embd)?;
        }
        c.layers("n_layer", self.n_layer)?;
        c.positions("n_positions", self.n_positions)?;
        c.eps("layer_norm_epsilon", self.layer_norm_epsilon)
    }
}

/// A block's cross-attention over encoder states (`ln_cross_attn`, `crossattention.*`).
struct CrossAttention {
    ln: LayerNorm,
    /// `q_attn`
    q: Linear,
    /// `c_attn`, split into k and v
    k: Linear,
    v: Linear,
    /// `c_proj`
    out: Linear,
}

struct Block {
    ln_1: LayerNorm,
    /// c_attn: q, k and v in one Linear `[3·D, D]` (split into heads by one kernel)
    qkv: Linear,
    c_proj: Linear,
    cross: Option<CrossAttention>,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
    heads: usize,
    act: Activation,
    scale: f32,
}

impl Block {
    fn new(vb: &Vb, c: &Gpt2Config) -> Result<Block> {
        let d = c.n_embd;
        let inner = c.n_inner.unwrap_or(4 * d);
        let qkv = vb
            .pp("attn")
            .pp("c_attn")
            .conv1d_split(d, 3 * d, 1)?
            .remove(0);
        let cross = if c.add_cross_attention {
            let ca = vb.pp("crossattention");
            let mut kv = ca.pp("c_attn").conv1d_split(d, d, 2)?.into_iter();
            let mut next = || {
                kv.next()
                    .ok_or_else(|| Error::Weights("crossattention.c_attn split".into()))
            };
            Some(CrossAttention {
                ln: LayerNorm::new(&vb.pp("ln_cross_attn"), d, c.layer_norm_epsilon)?,
                q: ca.pp("q_attn").conv1d_split(d, d, 1)?.remove(0),
                k: next()?,
                v: next()?,
                out: ca.pp("c_proj").conv1d_split(d, d, 1)?.remove(0),
            })
        } else {
            None
        };
        let head_dim = d / c.n_head;
        Ok(Block {
            ln_1: LayerNorm::new(&vb.pp("ln_1"), d, c.layer_norm_epsilon)?,
            qkv,
            c_proj: vb.pp("attn").pp("c_proj").conv1d_split(d, d, 1)?.remove(0),
            cross,
            ln_2: LayerNorm::new(&vb.pp("ln_2"), d, c.layer_norm_epsilon)?,
            c_fc: vb.pp("mlp").pp("c_fc").conv1d_split(d, inner, 1)?.remove(0),
            mlp_proj: vb
                .pp("mlp")
                .pp("c_proj")
                .conv1d_split(inner, d, 1)?
                .remove(0),
            heads: c.n_head,
            act: c.activation_function,
            scale: if c.scale_attn_weights {
                1.0 / (head_dim as f32).sqrt()
            } else {
                1.0
            },
        })
    }

    fn cross_kv(&self, enc: &Tensor) -> Result<CrossKv> {
        let Some(cross) = &self.cross else {
            return Err(Error::Config(
                "the decoder has no cross-attention (add_cross_attention is false)".into(),
            ));
        };
        // (B, Ne, D) -> (B, H, Ne, Dh)
        Ok(CrossKv {
            k: split_heads(&cross.k.forward(enc)?, self.heads)?,
            v: split_heads(&cross.v.forward(enc)?, self.heads)?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut KvCache, cross: Option<&CrossKv>) -> Result<Tensor> {
        let h = self.ln_1.forward(x)?;
        // (B, T, 3·D) -> q (B, H, T, Dh); k and v into the cache
        let q = cache.append_qkv(&self.qkv.forward(&h)?)?;
        let opts = AttentionOpts {
            scale: self.scale,
            causal: true,
            mask: None,
            kv_len: Some(cache.len),
        };
        let a = Tensor::attention(&q, &cache.k, &cache.v, &opts)?;
        let mut x = self.c_proj.forward_add(&merge_heads(&a)?, x)?;
        if let (Some(ca), Some(kv)) = (&self.cross, cross) {
            let q = split_heads(&ca.q.forward(&ca.ln.forward(&x)?)?, self.heads)?;
            let a = Tensor::attention(
                &q,
                &kv.k,
                &kv.v,
                &AttentionOpts {
                    scale: self.scale,
                    ..Default::default()
                },
            )?;
            x = ca.out.forward_add(&merge_heads(&a)?, &x)?;
        }
        let h = self.c_fc.forward_act(&self.ln_2.forward(&x)?, self.act)?;
        self.mlp_proj.forward_add(&h, &x)
    }
}

pub struct Gpt2 {
    embeddings: TextEmbeddings,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
    pub cfg: Gpt2Config,
}

impl Gpt2 {
    /// `vb` at the `GPT2LMHeadModel` (holding `transformer.*` and maybe `lm_head`).
    pub fn new(vb: &Vb, cfg: &Gpt2Config) -> Result<Gpt2> {
        let (d, v) = (cfg.n_embd, cfg.vocab_size);
        let t = vb.pp("transformer");
        let wte = t.get_embedding("wte.weight", &[v, d])?;
        // lm_head is tied to wte unless the checkpoint has its own
        let lm_head = if vb.contains("lm_head.weight") {
            Linear::no_bias(&vb.pp("lm_head"), d, v)?
        } else {
            Linear::no_bias(&t.pp("wte"), d, v)?
        };
        Ok(Gpt2 {
            embeddings: TextEmbeddings::new(
                wte,
                Some(t.get("wpe.weight", &[cfg.n_positions, d])?),
                None,
                (cfg.n_positions, "n_positions"),
            ),
            blocks: (0..cfg.n_layer)
                .map(|i| Block::new(&t.pp("h").pp(i), cfg))
                .collect::<Result<_>>()?,
            ln_f: LayerNorm::new(&t.pp("ln_f"), d, cfg.layer_norm_epsilon)?,
            lm_head,
            cfg: cfg.clone(),
        })
    }

    /// Cross-attention keys and values of the encoder states, one entry per layer.
    pub fn cross_kv(&self, enc: &Tensor) -> Result<Vec<CrossKv>> {
        self.blocks.iter().map(|b| b.cross_kv(enc)).collect()
    }

    pub fn cfg_device(&self) -> crate::Device {
        self.embeddings.device()
    }

    /// Empty caches for `capacity` positions (they grow if a request needs more).
    pub fn new_caches(
        &self,
        batch: usize,
        capacity: usize,
        device: &crate::Device,
    ) -> Result<Vec<KvCache>> {
        let dh = self.cfg.n_embd / self.cfg.n_head;
        self.blocks
            .iter()
            .map(|_| KvCache::new(batch, self.cfg.n_head, capacity, dh, device))
            .collect()
    }

    /// Logits `[B, T, V]` of `ids [B][T]` at positions `start..`, appending to `caches`.
    pub fn forward(
        &self,
        ids: &[Vec<u32>],
        start: usize,
        caches: &mut [KvCache],
        cross: Option<&[CrossKv]>,
    ) -> Result<Tensor> {
        let mut x = self.embeddings.forward(ids, start)?;
        for (i, (block, cache)) in self.blocks.iter().zip(caches.iter_mut()).enumerate() {
            x = block.forward(&x, cache, cross.and_then(|c| c.get(i)))?;
        }
        self.lm_head.forward(&self.ln_f.forward(&x)?)
    }
}
