//! GIT (`GitForCausalLM`): a CLIP vision transformer, a projection, and a BERT-style decoder over
//! [image tokens ; text]. Image tokens attend to each other only; text attends to every image
//! token and causally to earlier text. Because image tokens never see text, their keys and
//! values do not depend on the prompt: [`Git::image_prefix`] computes them once per image, and
//! every caption or question about that image starts from a copy.

use serde::Deserialize;

use super::clip_vision::{clip_vision, VisionConfig};
use crate::error::{Error, Result};
use crate::generate::CachedDecoder;
use crate::io::config::{Activation, Checks};
use crate::io::Vb;
use crate::nn::vision::VisionEncoder;
use crate::nn::{merge_heads, split_heads, KvCache, LayerNorm, Linear, TextEmbeddings};
use crate::tensor::{AttentionOpts, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct GitConfig {
    pub vision_config: VisionConfig,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "crate::io::config::defaults::eps_1e12")]
    pub layer_norm_eps: f64,
    #[serde(default = "crate::io::config::defaults::gelu")]
    pub hidden_act: Activation,
    #[serde(default)]
    pub num_image_with_embedding: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl crate::io::config::HfConfig for GitConfig {
    // transformers' GitConfig() and GitVisionConfig() (git-base's shapes)
    const DEFAULTS: &'static str = r#"{
        "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 6, "num_attention_heads": 12,
        "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 1024,
        "layer_norm_eps": 1e-12, "pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102,
        "tie_word_embeddings": false,
        "vision_config": {
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5
        }
    }"#;

    fn validate(&self, file: &str) -> Result<()> {
        let c = Checks::new(file, "");
        c.vocab("vocab_size", self.vocab_size)?;
        c.tower(
            self.hidden_size,
            self.num_attention_heads,
            self.intermediate_size,
            self.num_hidden_layers,
            self.layer_norm_eps,
        )?;
        c.positions("max_position_embeddings", self.max_position_embeddings)?;
        for (field, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            c.token(field, id, self.vocab_size)?;
        }
        self.vision_config
            .validate(&Checks::new(file, "vision_config."))
    }
}

/// One BERT-style (post-LN) decoder layer: `attention.self.{query,key,value}`,
/// `attention.output.{dense,LayerNorm}`, `intermediate.dense`, `output.{dense,LayerNorm}`.
struct GitLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_dense: Linear,
    attn_ln: LayerNorm,
    intermediate: Linear,
    out_dense: Linear,
    out_ln: LayerNorm,
    heads: usize,
    act: Activation,
}

impl GitLayer {
    fn new(vb: &Vb, cfg: &GitConfig) -> Result<GitLayer> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        let sa = vb.pp("attention").pp("self");
        let ao = vb.pp("attention").pp("output");
        Ok(GitLayer {
            query: Linear::new(&sa.pp("query"), d, d)?,
            key: Linear::new(&sa.pp("key"), d, d)?,
            value: Linear::new(&sa.pp("value"), d, d)?,
            attn_dense: Linear::new(&ao.pp("dense"), d, d)?,
            attn_ln: LayerNorm::new(&ao.pp("LayerNorm"), d, cfg.layer_norm_eps)?,
            intermediate: Linear::new(&vb.pp("intermediate").pp("dense"), d, i)?,
            out_dense: Linear::new(&vb.pp("output").pp("dense"), i, d)?,
            out_ln: LayerNorm::new(&vb.pp("output").pp("LayerNorm"), d, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
            act: cfg.hidden_act,
        })
    }

    /// `x [B, T, D]`, appended to `cache`; `causal`: text rows (query i sees cache entries up to
    /// its own position), otherwise every cached entry (image rows).
    fn forward(&self, x: &Tensor, cache: &mut KvCache, causal: bool) -> Result<Tensor> {
        // (B, T, D) -> (B, H, T, Dh)
        let q = split_heads(&self.query.forward(x)?, self.heads)?;
        let k = split_heads(&self.key.forward(x)?, self.heads)?;
        let v = split_heads(&self.value.forward(x)?, self.heads)?;
        cache.append(&k, &v)?;
        let scale = 1.0 / (q.dim(3) as f32).sqrt();
        let opts = AttentionOpts {
            scale,
            causal,
            mask: None,
            kv_len: Some(cache.len),
        };
        let a = merge_heads(&Tensor::attention(&q, &cache.k, &cache.v, &opts)?)?;
        let h = self.attn_ln.forward(&self.attn_dense.forward_add(&a, x)?)?;
        let i = self.intermediate.forward_act(&h, self.act)?;
        self.out_ln.forward(&self.out_dense.forward_add(&i, &h)?)
    }
}

pub struct Git {
    embeddings: TextEmbeddings,
    vision: VisionEncoder,
    projection: Linear,
    projection_ln: LayerNorm,
    layers: Vec<GitLayer>,
    output: Linear,
    pub cfg: GitConfig,
}

/// The per-layer keys and values of one image's tokens.
pub struct ImagePrefix {
    caches: Vec<KvCache>,
    pub num_image_tokens: usize,
}

impl Git {
    pub fn new(vb: &Vb, cfg: &GitConfig) -> Result<Git> {
        if let Some(n) = cfg.num_image_with_embedding {
            return Err(Error::Config(format!(
                "config.json: num_image_with_embedding = {n} (GIT for video) is not supported; image GIT has null"
            )));
        }
        let d = cfg.hidden_size;
        let g = vb.pp("git");
        let emb = g.pp("embeddings");
        let vd = cfg.vision_config.hidden_size;
        let proj = g.pp("visual_projection").pp("visual_projection");
        let output = if vb.contains("output.weight") || !cfg.tie_word_embeddings {
            Linear::new(&vb.pp("output"), d, cfg.vocab_size)?
        } else {
            Linear {
                weight: emb.get("word_embeddings.weight", &[cfg.vocab_size, d])?,
                bias: Some(vb.get("output.bias", &[cfg.vocab_size])?),
            }
        };
        Ok(Git {
            embeddings: TextEmbeddings::new(
                emb.get_embedding("word_embeddings.weight", &[cfg.vocab_size, d])?,
                Some(emb.get(
                    "position_embeddings.weight",
                    &[cfg.max_position_embeddings, d],
                )?),
                Some(LayerNorm::new(&emb.pp("LayerNorm"), d, cfg.layer_norm_eps)?),
                (cfg.max_position_embeddings, "max_position_embeddings"),
            ),
            vision: clip_vision(
                &g.pp("image_encoder").pp("vision_model"),
                &cfg.vision_config,
            )?,
            projection: Linear::new(&proj.pp(0), vd, d)?,
            projection_ln: LayerNorm::new(&proj.pp(1), d, cfg.vision_config.layer_norm_eps)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| GitLayer::new(&g.pp("encoder").pp("layer").pp(i), cfg))
                .collect::<Result<_>>()?,
            output,
            cfg: cfg.clone(),
        })
    }

    pub fn num_image_tokens(&self) -> usize {
        self.cfg.vision_config.num_patches() + 1
    }

    /// `pixels [1, 3, H, W]` -> projected visual features `[1, Ni, D]`.
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.vision.forward(pixels)?;
        self.projection_ln.forward(&self.projection.forward(&x)?)
    }

    /// Runs the image tokens through the decoder once; the caches hold exactly those tokens
    /// (each request copies them into caches sized for its own text, see [`Git::decoder`]).
    pub fn image_prefix(&self, visual: &Tensor) -> Result<ImagePrefix> {
        let (n, dh) = (
            visual.dim(1),
            self.cfg.hidden_size / self.cfg.num_attention_heads,
        );
        let device = visual.device();
        let mut caches = Vec::with_capacity(self.layers.len());
        let mut x = visual.clone();
        for layer in &self.layers {
            let mut cache = KvCache::new(1, self.cfg.num_attention_heads, n, dh, &device)?;
            x = layer.forward(&x, &mut cache, false)?;
            caches.push(cache);
        }
        Ok(ImagePrefix {
            caches,
            num_image_tokens: n,
        })
    }

    /// A decoder state for generating up to `text` tokens (prompt and answer) after `prefix`
    /// (copied: the prefix can serve again).
    pub fn decoder<'a>(&'a self, prefix: &ImagePrefix, text: usize) -> Result<GitDecoder<'a>> {
        let caches = prefix
            .caches
            .iter()
            .map(|c| c.extended(prefix.num_image_tokens + text))
            .collect::<Result<_>>()?;
        Ok(GitDecoder {
            model: self,
            caches,
            text_len: 0,
        })
    }
}

/// Generation state of GIT: per-layer caches holding [image ; text so far].
pub struct GitDecoder<'a> {
    model: &'a Git,
    caches: Vec<KvCache>,
    text_len: usize,
}

impl CachedDecoder for GitDecoder<'_> {
    fn caches(&mut self) -> &mut Vec<KvCache> {
        &mut self.caches
    }

    /// Logits of every new position: `ids [B][T]` -> `[B, T, V]`.
    fn forward_all(&mut self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let mut x = self.model.embeddings.forward(ids, self.text_len)?;
        for (layer, cache) in self.model.layers.iter().zip(self.caches.iter_mut()) {
            x = layer.forward(&x, cache, true)?;
        }
        self.text_len += ids.first().map_or(0, |r| r.len());
        self.model.output.forward(&x)
    }
}
