//! The Llama-family decoder (`LlamaModel` + `lm_head`), as SmolLM2 inside SmolVLM uses it:
//! RMSNorm before attention and MLP, rotary positions (halves, HF `rotate_half`), grouped-query
//! attention (`num_key_value_heads` ≤ `num_attention_heads`), a SwiGLU MLP
//! (`down(silu(gate(x)) · up(x))`), and a head tied to the token embeddings unless the
//! checkpoint has `lm_head.weight`.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::io::config::{Activation, Checks};
use crate::io::Vb;
use crate::nn::{merge_heads, split_heads, KvCache, Linear, TextEmbeddings};
use crate::tensor::{AttentionOpts, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// grouped-query attention; absent: one K/V head per query head
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// absent: hidden_size / num_attention_heads
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    /// transformers 4 writes `rope_theta`; transformers 5 writes `rope_parameters`
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// only null (plain RoPE) is supported
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "crate::io::config::defaults::silu")]
    pub hidden_act: Activation,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "crate::io::config::one_or_many")]
    pub eos_token_id: Vec<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// RoPE's base: `rope_parameters.rope_theta`, else `rope_theta`, else Llama's 10000.
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    /// The checks of a text_config (`prefix` names it in errors).
    pub fn validate(&self, c: &Checks) -> Result<()> {
        c.vocab("vocab_size", self.vocab_size)?;
        c.width("hidden_size", self.hidden_size)?;
        c.width("intermediate_size", self.intermediate_size)?;
        c.layers("num_hidden_layers", self.num_hidden_layers)?;
        c.range("num_attention_heads", self.num_attention_heads, 1, 1024)?;
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(c.err(
                "num_key_value_heads",
                format!(
                    "= {kv} must divide num_attention_heads = {}",
                    self.num_attention_heads
                ),
            ));
        }
        let hd = self.head_dim();
        if hd == 0 || !hd.is_multiple_of(2) || hd > 1024 {
            return Err(c.err(
                "head_dim",
                format!("= {hd} must be even and at most 1024 (rotary halves)"),
            ));
        }
        c.positions("max_position_embeddings", self.max_position_embeddings)?;
        c.eps("rms_norm_eps", self.rms_norm_eps)?;
        let theta = self.theta();
        if !(theta.is_finite() && theta > 1.0) {
            return Err(c.err("rope_theta", format!("= {theta} must be a number > 1")));
        }
        let plain = |t: &Option<String>| t.as_deref().is_none_or(|t| t == "default");
        let scaled = self.rope_scaling.as_ref().is_some_and(|v| !v.is_null())
            || self
                .rope_parameters
                .as_ref()
                .is_some_and(|p| !plain(&p.rope_type));
        if scaled {
            return Err(c.err(
                "rope_scaling",
                "is set: scaled RoPE (llama3, yarn, linear, dynamic) is not supported, plain RoPE is"
                    .into(),
            ));
        }
        if self.hidden_act != Activation::Silu {
            return Err(c.err(
                "hidden_act",
                format!(
                    "= {:?}: the Llama MLP here is SwiGLU (silu)",
                    self.hidden_act
                ),
            ));
        }
        for (field, id) in [
            ("bos_token_id", self.bos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            c.token(field, id, self.vocab_size)?;
        }
        for &id in &self.eos_token_id {
            c.token("eos_token_id", Some(id), self.vocab_size)?;
        }
        Ok(())
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn new(vb: &Vb, dim: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: vb.get("weight", &[dim])?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.rms_norm(&self.weight, self.eps)
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    heads: usize,
    kv_heads: usize,
}

impl Layer {
    fn new(vb: &Vb, c: &LlamaConfig) -> Result<Layer> {
        let (d, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (h, kv) = (c.num_attention_heads, c.kv_heads());
        let lin = |v: &Vb, a, b, bias: bool| {
            if bias {
                Linear::new(v, a, b)
            } else {
                Linear::no_bias(v, a, b)
            }
        };
        let a = vb.pp("self_attn");
        let m = vb.pp("mlp");
        Ok(Layer {
            input_norm: RmsNorm::new(&vb.pp("input_layernorm"), d, c.rms_norm_eps)?,
            q: lin(&a.pp("q_proj"), d, h * hd, c.attention_bias)?,
            k: lin(&a.pp("k_proj"), d, kv * hd, c.attention_bias)?,
            v: lin(&a.pp("v_proj"), d, kv * hd, c.attention_bias)?,
            o: lin(&a.pp("o_proj"), h * hd, d, c.attention_bias)?,
            post_norm: RmsNorm::new(&vb.pp("post_attention_layernorm"), d, c.rms_norm_eps)?,
            gate: lin(&m.pp("gate_proj"), d, i, c.mlp_bias)?,
            up: lin(&m.pp("up_proj"), d, i, c.mlp_bias)?,
            down: lin(&m.pp("down_proj"), i, d, c.mlp_bias)?,
            heads: h,
            kv_heads: kv,
        })
    }

    /// `x [B, T, D]` at the positions whose rotations are `cos`, `sin` `[T, Dh/2]`, appended
    /// to `cache`; causal over everything cached.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let h = self.input_norm.forward(x)?;
        // (B, T, H·Dh) -> (B, H, T, Dh), rotated
        let q = split_heads(&self.q.forward(&h)?, self.heads)?.rope(cos, sin, false)?;
        let k = split_heads(&self.k.forward(&h)?, self.kv_heads)?.rope(cos, sin, false)?;
        let v = split_heads(&self.v.forward(&h)?, self.kv_heads)?;
        cache.append(&k, &v)?;
        let opts = AttentionOpts {
            scale: 1.0 / (q.dim(3) as f32).sqrt(),
            causal: true,
            mask: None,
            kv_len: Some(cache.len),
        };
        let a = merge_heads(&Tensor::attention(&q, &cache.k, &cache.v, &opts)?)?;
        let x = self.o.forward_add(&a, x)?;
        let h = self.post_norm.forward(&x)?;
        let g = self.gate.forward_act(&h, Activation::Silu)?;
        let u = self.up.forward(&h)?;
        self.down.forward_add(&g.mul(&u)?, &x)
    }
}

pub struct Llama {
    pub embeddings: TextEmbeddings,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    /// RoPE's inverse frequencies `[Dh/2]`, as transformers computes them in f32
    inv_freq: Vec<f32>,
    pub cfg: LlamaConfig,
}

impl Llama {
    /// `model` at `LlamaModel` (`embed_tokens`, `layers`, `norm`), `head` where `lm_head` would
    /// be (tied to `embed_tokens` when the checkpoint has no `lm_head.weight`).
    pub fn new(model: &Vb, head: &Vb, cfg: &LlamaConfig) -> Result<Llama> {
        let (d, v) = (cfg.hidden_size, cfg.vocab_size);
        let lm_head = if head.contains("lm_head.weight") {
            Linear::no_bias(&head.pp("lm_head"), d, v)?
        } else {
            Linear::no_bias(&model.pp("embed_tokens"), d, v)?
        };
        let hd = cfg.head_dim();
        let theta = cfg.theta() as f32;
        // 1 / theta^(2i / Dh) in f32, as LlamaRotaryEmbedding's default init
        let inv_freq = (0..hd / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / hd as f32))
            .collect();
        Ok(Llama {
            embeddings: TextEmbeddings::new(
                model.get_embedding("embed_tokens.weight", &[v, d])?,
                None,
                None,
                (cfg.max_position_embeddings, "max_position_embeddings"),
            ),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::new(&model.pp("layers").pp(i), cfg))
                .collect::<Result<_>>()?,
            norm: RmsNorm::new(&model.pp("norm"), d, cfg.rms_norm_eps)?,
            lm_head,
            inv_freq,
            cfg: cfg.clone(),
        })
    }

    /// Empty caches for `capacity` positions (they grow when a conversation needs more).
    pub fn new_caches(&self, capacity: usize, device: &crate::Device) -> Result<Vec<KvCache>> {
        let (kv, hd) = (self.cfg.kv_heads(), self.cfg.head_dim());
        self.layers
            .iter()
            .map(|_| KvCache::new(1, kv, capacity, hd, device))
            .collect()
    }

    /// The rotations `cos`, `sin` `[T, Dh/2]` of positions `start..start+T`.
    fn rotations(
        &self,
        start: usize,
        t: usize,
        device: &crate::Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(t * half), Vec::with_capacity(t * half));
        for p in start..start + t {
            for &f in &self.inv_freq {
                // position · inv_freq in f32, as the reference's matmul of the two
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((
            Tensor::from_f32(&cos, &[t, half], device)?,
            Tensor::from_f32(&sin, &[t, half], device)?,
        ))
    }

    /// Logits `[B, T, V]` of the embeddings `x [B, T, D]` at positions `start..`, appending to
    /// `caches`.
    pub fn forward_embeds(
        &self,
        x: &Tensor,
        start: usize,
        caches: &mut [KvCache],
    ) -> Result<Tensor> {
        let t = x.dim(1);
        if start + t > self.cfg.max_position_embeddings {
            return Err(Error::Invalid(format!(
                "the conversation is {} tokens long; this model's max_position_embeddings is {}",
                start + t,
                self.cfg.max_position_embeddings
            )));
        }
        let (cos, sin) = self.rotations(start, t, &x.device())?;
        let mut x = x.clone();
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            x = layer.forward(&x, &cos, &sin, cache)?;
        }
        self.lm_head.forward(&self.norm.forward(&x)?)
    }
}
