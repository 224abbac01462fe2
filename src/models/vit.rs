//! The ViT encoder (`ViTModel`): patch embedding with bias, class token, learned positions,
//! pre-LN layers (`layernorm_before` / `layernorm_after`), a final LayerNorm.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::io::config::{Activation, Checks};
use crate::io::Vb;
use crate::nn::{check_pixels, with_class_token, LayerNorm, Linear, SelfAttention};
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

struct VitLayer {
    attn: SelfAttention,
    intermediate: Linear,
    output: Linear,
    ln_before: LayerNorm,
    ln_after: LayerNorm,
    act: Activation,
}

impl VitLayer {
    fn new(vb: &Vb, c: &VitConfig) -> Result<VitLayer> {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let att = vb.pp("attention").pp("attention");
        let lin = |v: &Vb, a, b| {
            if c.qkv_bias {
                Linear::new(v, a, b)
            } else {
                Linear::no_bias(v, a, b)
            }
        };
        Ok(VitLayer {
            attn: SelfAttention {
                q: lin(&att.pp("query"), d, d)?,
                k: lin(&att.pp("key"), d, d)?,
                v: lin(&att.pp("value"), d, d)?,
                out: Linear::new(&vb.pp("attention").pp("output").pp("dense"), d, d)?,
                heads: c.num_attention_heads,
            },
            intermediate: Linear::new(&vb.pp("intermediate").pp("dense"), d, i)?,
            output: Linear::new(&vb.pp("output").pp("dense"), i, d)?,
            ln_before: LayerNorm::new(&vb.pp("layernorm_before"), d, c.layer_norm_eps)?,
            ln_after: LayerNorm::new(&vb.pp("layernorm_after"), d, c.layer_norm_eps)?,
            act: c.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self
            .attn
            .forward_add(&self.ln_before.forward(x)?, false, None, Some(x))?;
        let h = self
            .intermediate
            .forward_act(&self.ln_after.forward(&x)?, self.act)?;
        self.output.forward_add(&h, &x)
    }
}

pub struct Vit {
    cls_token: Tensor,
    position_embeddings: Tensor,
    patch_weight: Tensor,
    patch_bias: Tensor,
    layers: Vec<VitLayer>,
    layernorm: LayerNorm,
    cfg: VitConfig,
}

impl Vit {
    pub fn new(vb: &Vb, cfg: &VitConfig) -> Result<Vit> {
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        if !cfg.image_size.is_multiple_of(p) {
            return Err(Error::Config(format!(
                "encoder: image_size {} is not a multiple of patch_size {p}",
                cfg.image_size
            )));
        }
        let n = (cfg.image_size / p).pow(2);
        let emb = vb.pp("embeddings");
        let proj = emb.pp("patch_embeddings").pp("projection");
        Ok(Vit {
            cls_token: emb.get("cls_token", &[1, 1, d])?,
            position_embeddings: emb.get("position_embeddings", &[1, n + 1, d])?,
            // the conv weight [D, C, P, P] is a Linear over flattened patches [D, C·P·P]
            patch_weight: proj.get_linear_weight_as("weight", &[d, c, p, p], &[d, c * p * p])?,
            patch_bias: proj.get("bias", &[d])?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| VitLayer::new(&vb.pp("encoder").pp("layer").pp(i), cfg))
                .collect::<Result<_>>()?,
            layernorm: LayerNorm::new(&vb.pp("layernorm"), d, cfg.layer_norm_eps)?,
            cfg: cfg.clone(),
        })
    }

    /// `pixels [B, C, H, W]` -> `[B, 1 + N, D]` (after the final LayerNorm).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        check_pixels("vit", pixels, self.cfg.num_channels, self.cfg.image_size)?;
        // (B, C, H, W) -> (B, N, D) -> (B, 1 + N, D)
        let patches = pixels.patch_embed(
            &self.patch_weight,
            Some(&self.patch_bias),
            self.cfg.patch_size,
        )?;
        let mut x = with_class_token(&self.cls_token, &patches, &self.position_embeddings)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        self.layernorm.forward(&x)
    }
}
