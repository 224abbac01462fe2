//! CLIP (`CLIPModel`): a causal text transformer pooled at the end-of-text token, the vision
//! transformer pooled at the class token, both projected; `logits_per_image` is the scaled
//! cosine similarity.

use serde::Deserialize;

use super::clip_vision::{clip_vision, VisionConfig};
use crate::error::{Error, Result};
use crate::io::config::{Activation, Checks};
use crate::io::Vb;
use crate::nn::vision::{EncoderLayer, TowerDims, VisionEncoder, CLIP_LAYER};
use crate::nn::{LayerNorm, Linear, TextEmbeddings};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "crate::io::config::defaults::eps_1e5")]
    pub layer_norm_eps: f64,
    #[serde(default = "crate::io::config::defaults::quick_gelu")]
    pub hidden_act: Activation,
    /// 2 in the configs of 2021 (openai/clip-vit-*): pooling then takes the highest id
    pub eos_token_id: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    pub projection_dim: usize,
}

impl crate::io::config::HfConfig for ClipConfig {
    // transformers' CLIPConfig(), CLIPTextConfig() and CLIPVisionConfig() (ViT-B/32)
    const DEFAULTS: &'static str = r#"{
        "projection_dim": 512,
        "text_config": {
            "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
            "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "pad_token_id": 1,
            "bos_token_id": 49406, "eos_token_id": 49407
        },
        "vision_config": {
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5
        }
    }"#;

    fn validate(&self, file: &str) -> Result<()> {
        Checks::new(file, "").width("projection_dim", self.projection_dim)?;
        let t = &self.text_config;
        let c = Checks::new(file, "text_config.");
        c.vocab("vocab_size", t.vocab_size)?;
        c.tower(
            t.hidden_size,
            t.num_attention_heads,
            t.intermediate_size,
            t.num_hidden_layers,
            t.layer_norm_eps,
        )?;
        c.positions("max_position_embeddings", t.max_position_embeddings)?;
        c.token("eos_token_id", Some(t.eos_token_id), t.vocab_size)?;
        self.vision_config
            .validate(&Checks::new(file, "vision_config."))
    }
}

pub struct Clip {
    embeddings: TextEmbeddings,
    text_layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Linear,
    vision: VisionEncoder,
    visual_projection: Linear,
    /// exp(logit_scale)
    pub logit_scale: f32,
    pub cfg: ClipConfig,
}

impl Clip {
    pub fn new(vb: &Vb, cfg: &ClipConfig) -> Result<Clip> {
        let t = &cfg.text_config;
        let tm = vb.pp("text_model");
        let scale = crate::io::weights::scalar(vb, "logit_scale")?;
        let dims = TowerDims {
            hidden: t.hidden_size,
            intermediate: t.intermediate_size,
            heads: t.num_attention_heads,
            eps: t.layer_norm_eps,
            act: t.hidden_act,
            qkv_bias: true,
        };
        Ok(Clip {
            embeddings: TextEmbeddings::new(
                tm.get_embedding(
                    "embeddings.token_embedding.weight",
                    &[t.vocab_size, t.hidden_size],
                )?,
                Some(tm.get(
                    "embeddings.position_embedding.weight",
                    &[t.max_position_embeddings, t.hidden_size],
                )?),
                None,
                (t.max_position_embeddings, "max_position_embeddings"),
            ),
            text_layers: (0..t.num_hidden_layers)
                .map(|i| {
                    EncoderLayer::new(&tm.pp("encoder").pp("layers").pp(i), &CLIP_LAYER, &dims)
                })
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::new(
                &tm.pp("final_layer_norm"),
                t.hidden_size,
                t.layer_norm_eps,
            )?,
            text_projection: Linear::no_bias(
                &vb.pp("text_projection"),
                t.hidden_size,
                cfg.projection_dim,
            )?,
            vision: clip_vision(&vb.pp("vision_model"), &cfg.vision_config)?,
            visual_projection: Linear::no_bias(
                &vb.pp("visual_projection"),
                cfg.vision_config.hidden_size,
                cfg.projection_dim,
            )?,
            logit_scale: scale.exp(),
            cfg: cfg.clone(),
        })
    }

    /// Projected image embedding `[B, P]` (not normalized) of `pixels [B, 3, H, W]`.
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.vision.forward_unnormed(pixels)?;
        let (b, d) = (x.dim(0), x.dim(2));
        // class token: (B, 1 + N, D) -> (B, D)
        let cls = x.narrow(1, 0, 1)?.reshape(&[b, d])?;
        self.visual_projection
            .forward(&self.vision.final_norm.forward(&cls)?)
    }

    /// Projected text embeddings `[B, P]` of padded `ids [B][T]` with `mask` (1 = token, 0 = pad).
    pub fn text_embeds(&self, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Result<Tensor> {
        let t = &self.cfg.text_config;
        let (b, len) = (ids.len(), ids.first().map_or(0, |r| r.len()));
        if len == 0 || len > t.max_position_embeddings || ids.iter().any(|r| r.len() != len) {
            return Err(Error::Invalid(format!(
                "texts must be 1..={} tokens and padded to one length",
                t.max_position_embeddings
            )));
        }
        let device = self.embeddings.device();
        let mut x = self.embeddings.forward(ids, 0)?;
        // padding keys are masked for every query: (B, T, T)
        let mut add_mask = vec![0f32; b * len * len];
        for (r, m) in mask.iter().enumerate() {
            for q in 0..len {
                for (k, &keep) in m.iter().enumerate().take(len) {
                    if keep == 0 {
                        add_mask[(r * len + q) * len + k] = f32::MIN;
                    }
                }
            }
        }
        let add_mask = Tensor::from_f32(&add_mask, &[b, len, len], &device)?;
        for layer in &self.text_layers {
            x = layer.forward(&x, true, Some(&add_mask))?;
        }
        let x = self.final_layer_norm.forward(&x)?;
        // pool at the end-of-text token (the highest id for legacy configs with eos_token_id = 2)
        let rows: Vec<usize> = ids
            .iter()
            .map(|r| {
                if t.eos_token_id == 2 {
                    // first position of the largest id, as torch.argmax
                    let max = r.iter().copied().max().unwrap_or(0);
                    r.iter().position(|&v| v == max).unwrap_or(0)
                } else {
                    r.iter()
                        .position(|&v| v == t.eos_token_id)
                        .unwrap_or(len - 1)
                }
            })
            .collect();
        let picked = rows
            .iter()
            .enumerate()
            .map(|(r, &p)| {
                x.narrow(0, r, 1)?
                    .narrow(1, p, 1)?
                    .reshape(&[1, t.hidden_size])
            })
            .collect::<Result<Vec<_>>>()?;
        let pooled = Tensor::cat(&picked.iter().collect::<Vec<_>>(), 0)?;
        self.text_projection.forward(&pooled)
    }
}

/// L2-normalizes rows of a host matrix `[n, p]`.
pub fn normalize_rows(v: &mut [f32], p: usize) {
    for row in v.chunks_mut(p) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= n);
    }
}

/// `logits_per_image [n_img, n_txt]` from embeddings on the host.
pub fn logits_per_image(mut img: Vec<f32>, mut txt: Vec<f32>, p: usize, scale: f32) -> Vec<f32> {
    normalize_rows(&mut img, p);
    normalize_rows(&mut txt, p);
    let n_txt = txt.len() / p;
    img.chunks(p)
        .flat_map(|i| {
            txt.chunks(p)
                .map(move |t| scale * i.iter().zip(t).map(|(a, b)| a * b).sum::<f32>())
        })
        .take(img.len() / p * n_txt)
        .collect()
}
