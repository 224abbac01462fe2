//! The ViT encoder (`ViTModel`): patch embedding with bias, class token, learned positions,
//! pre-LN layers (`layernorm_before` / `layernorm_after`), a final LayerNorm.

use serde::Deserialize;

use crate::error::Result;
use crate::io::config::{Activation, Checks};
use crate::io::Vb;
use crate::nn::vision::{Stored, TowerDims, VisionEncoder, VisionGeometry, VisionSpec, VIT_LAYER};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Deserialize)]
pub struct VitConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "crate::io::config::defaults::three")]
    pub num_channels: usize,
    #[serde(default = "crate::io::config::defaults::eps_1e12")]
    pub layer_norm_eps: f64,
    #[serde(default = "crate::io::config::defaults::gelu")]
    pub hidden_act: Activation,
    #[serde(default = "crate::io::config::defaults::yes")]
    pub qkv_bias: bool,
}

impl crate::io::config::HfConfig for VitConfig {
    // transformers' ViTConfig()
    const DEFAULTS: &'static str = r#"{
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
        "image_size": 224, "patch_size": 16, "num_channels": 3, "qkv_bias": true
    }"#;

    fn validate(&self, file: &str) -> Result<()> {
        let c = Checks::new(file, "");
        c.tower(
            self.hidden_size,
            self.num_attention_heads,
            self.intermediate_size,
            self.num_hidden_layers,
            self.layer_norm_eps,
        )?;
        c.image(self.image_size, self.patch_size, self.num_channels)
    }
}

/// Where ViT's tower keeps its weights.
const SPEC: VisionSpec = VisionSpec {
    who: "vit",
    patch: "embeddings.patch_embeddings.projection",
    patch_bias: true,
    class: Some(("embeddings.cls_token", Stored::Batched)),
    positions: ("embeddings.position_embeddings", Stored::Batched),
    pre_norm: None,
    layers: "encoder.layer",
    layer: VIT_LAYER,
    final_norm: "layernorm",
};

/// `ViTModel`: its output is every token after the final LayerNorm.
pub struct Vit(VisionEncoder);

impl Vit {
    pub fn new(vb: &Vb, cfg: &VitConfig) -> Result<Vit> {
        let geo = VisionGeometry {
            image_size: cfg.image_size,
            patch_size: cfg.patch_size,
            channels: cfg.num_channels,
            layers: cfg.num_hidden_layers,
        };
        let dims = TowerDims {
            hidden: cfg.hidden_size,
            intermediate: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            eps: cfg.layer_norm_eps,
            act: cfg.hidden_act,
            qkv_bias: cfg.qkv_bias,
        };
        Ok(Vit(VisionEncoder::new(vb, &SPEC, &geo, &dims)?))
    }

    /// `pixels [B, C, H, W]` -> `[B, 1 + N, D]` (after the final LayerNorm).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.0.forward(pixels)
    }
}
