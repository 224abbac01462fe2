//! The CLIP vision transformer (`CLIPVisionTransformer` / `GitVisionTransformer`): the shared
//! [`VisionEncoder`] with a class token, a pre-LayerNorm and no patch bias. Shared by CLIP and
//! GIT; the post-LayerNorm is the caller's (CLIP applies it to the class token only, GIT to
//! every token).

use serde::Deserialize;

use crate::error::Result;
use crate::io::config::{Activation, Checks};
use crate::io::Vb;
use crate::nn::vision::{Stored, TowerDims, VisionEncoder, VisionGeometry, VisionSpec, CLIP_LAYER};

/// The fields of a vision tower's config: CLIP's and GIT's, BLIP's, and SigLIP's in Idefics3
/// (each model's DEFAULTS give its own defaults before these serde ones apply).
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
    /// The checks every config holding such a vision tower runs (see `HfConfig::validate`).
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

    pub fn geometry(&self) -> VisionGeometry {
        VisionGeometry {
            image_size: self.image_size,
            patch_size: self.patch_size,
            channels: self.num_channels,
            layers: self.num_hidden_layers,
        }
    }

    pub fn dims(&self) -> TowerDims {
        TowerDims {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            eps: self.layer_norm_eps,
            act: self.hidden_act,
            qkv_bias: true,
        }
    }
}

/// Where CLIP's (and GIT's) vision tower keeps its weights.
const SPEC: VisionSpec = VisionSpec {
    who: "vision",
    patch: "embeddings.patch_embedding",
    patch_bias: false,
    class: Some(("embeddings.class_embedding", Stored::Flat)),
    positions: ("embeddings.position_embedding.weight", Stored::Flat),
    pre_norm: Some("pre_layrnorm"),
    layers: "encoder.layers",
    layer: CLIP_LAYER,
    final_norm: "post_layernorm",
};

/// `CLIPVisionTransformer`: its final LayerNorm (`post_layernorm`) is the caller's to apply.
pub fn clip_vision(vb: &Vb, cfg: &VisionConfig) -> Result<VisionEncoder> {
    VisionEncoder::new(vb, &SPEC, &cfg.geometry(), &cfg.dims())
}
