//! The CLIP vision transformer (`CLIPVisionTransformer` / `GitVisionTransformer`): patch
//! embedding + class token + position embedding, pre-LayerNorm, pre-LN encoder layers.
//! Shared by CLIP and GIT; the post-LayerNorm is the caller's (CLIP applies it to the class
//! token only, GIT to every token).

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::io::config::{Activation, Checks};
use crate::io::Vb;
use crate::nn::{check_pixels, with_class_token, LayerNorm, Linear, SelfAttention};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "crate::io::config::defaults::three")]
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "crate::io::config::defaults::eps_1e5")]
    pub layer_norm_eps: f64,
    #[serde(default = "crate::io::config::defaults::quick_gelu")]
    pub hidden_act: Activation,
}

impl VisionConfig {
    /// The checks every config holding a CLIP vision tower runs (see `HfConfig::validate`).
    pub fn validate(&self, c: &Checks) -> Result<()> {
        c.tower(
            self.hidden_size,
            self.num_attention_heads,
            self.intermediate_size,
            self.num_hidden_layers,
            self.layer_norm_eps,
        )?;
        c.image(self.image_size, self.patch_size, self.num_channels)
    }

    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

/// Pre-LN self-attention + MLP, as CLIP's encoder layer (q/k/v/out_proj, fc1/fc2).
pub struct ClipEncoderLayer {
    attn: SelfAttention,
    layer_norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    layer_norm2: LayerNorm,
    act: Activation,
}

impl ClipEncoderLayer {
    pub fn new(
        vb: &Vb,
        hidden: usize,
        intermediate: usize,
        heads: usize,
        eps: f64,
        act: Activation,
    ) -> Result<Self> {
        let a = vb.pp("self_attn");
        Ok(ClipEncoderLayer {
            attn: SelfAttention {
                q: Linear::new(&a.pp("q_proj"), hidden, hidden)?,
                k: Linear::new(&a.pp("k_proj"), hidden, hidden)?,
                v: Linear::new(&a.pp("v_proj"), hidden, hidden)?,
                out: Linear::new(&a.pp("out_proj"), hidden, hidden)?,
                heads,
            },
            layer_norm1: LayerNorm::new(&vb.pp("layer_norm1"), hidden, eps)?,
            fc1: Linear::new(&vb.pp("mlp").pp("fc1"), hidden, intermediate)?,
            fc2: Linear::new(&vb.pp("mlp").pp("fc2"), intermediate, hidden)?,
            layer_norm2: LayerNorm::new(&vb.pp("layer_norm2"), hidden, eps)?,
            act,
        })
    }

    /// `x [B, T, D]`; `causal` for CLIP's text tower, `mask` an additive `[B, T, T]` padding mask.
    pub fn forward(&self, x: &Tensor, causal: bool, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = self
            .attn
            .forward_add(&self.layer_norm1.forward(x)?, causal, mask, Some(x))?;
        let h = self.layer_norm2.forward(&x)?;
        let h = self.fc1.forward_act(&h, self.act)?;
        self.fc2.forward_add(&h, &x)
    }
}

pub struct ClipVisionTransformer {
    class_embedding: Tensor,
    patch_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<ClipEncoderLayer>,
    pub post_layernorm: LayerNorm,
    cfg: VisionConfig,
}

impl ClipVisionTransformer {
    pub fn new(vb: &Vb, cfg: &VisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let (p, c) = (cfg.patch_size, cfg.num_channels);
        if !cfg.image_size.is_multiple_of(p) {
            return Err(Error::Config(format!(
                "vision_config: image_size {} is not a multiple of patch_size {p}",
                cfg.image_size
            )));
        }
        // the conv weight [D, C, P, P] is used as a Linear over flattened patches [D, C·P·P]
        let patch_embedding = emb.pp("patch_embedding").get_linear_weight_as(
            "weight",
            &[d, c, p, p],
            &[d, c * p * p],
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                ClipEncoderLayer::new(
                    &vb.pp("encoder").pp("layers").pp(i),
                    d,
                    cfg.intermediate_size,
                    cfg.num_attention_heads,
                    cfg.layer_norm_eps,
                    cfg.hidden_act,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ClipVisionTransformer {
            class_embedding: emb.get("class_embedding", &[d])?.reshape(&[1, 1, d])?,
            patch_embedding,
            position_embedding: emb
                .get("position_embedding.weight", &[cfg.num_patches() + 1, d])?,
            pre_layrnorm: LayerNorm::new(&vb.pp("pre_layrnorm"), d, cfg.layer_norm_eps)?,
            layers,
            post_layernorm: LayerNorm::new(&vb.pp("post_layernorm"), d, cfg.layer_norm_eps)?,
            cfg: cfg.clone(),
        })
    }

    /// `pixels [B, C, H, W]` -> encoder output `[B, 1 + N, D]` (before post_layernorm).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        check_pixels("vision", pixels, self.cfg.num_channels, self.cfg.image_size)?;
        // (B, C, H, W) -> (B, N, D) -> (B, 1 + N, D)
        let patches = pixels.patch_embed(&self.patch_embedding, None, self.cfg.patch_size)?;
        let mut x = with_class_token(&self.class_embedding, &patches, &self.position_embedding)?;
        x = self.pre_layrnorm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, false, None)?;
        }
        Ok(x)
    }
}
