//! The one pre-LayerNorm vision transformer of every model: ViT (ViT-GPT2), CLIP's and GIT's
//! vision tower, BLIP's, and SigLIP (Idefics3 / SmolVLM). They differ only in their checkpoint
//! names, whether the patch conv has a bias, whether there is a class token, a LayerNorm before
//! the layers (CLIP), and how the learned positions are stored; [`VisionSpec`] says which.
//! The layer ([`EncoderLayer`]) also serves CLIP's text tower.

use crate::error::{Error, Result};
use crate::io::config::Activation;
use crate::io::Vb;
use crate::nn::{check_pixels, LayerNorm, Linear, SelfAttention};
use crate::tensor::Tensor;

/// Sizes of one transformer tower.
#[derive(Debug, Clone, Copy)]
pub struct TowerDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub eps: f64,
    pub act: Activation,
    /// q, k and v projections with bias (ViT's `qkv_bias`; always true elsewhere)
    pub qkv_bias: bool,
}

/// Where the attention projections live: three Linears, or one fused `[3·D, D]` Linear (BLIP).
#[derive(Debug, Clone, Copy)]
pub enum QkvNames {
    Separate([&'static str; 3]),
    Fused(&'static str),
}

/// The checkpoint names inside one pre-LN encoder layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerNames {
    pub qkv: QkvNames,
    pub out: &'static str,
    pub ln1: &'static str,
    pub ln2: &'static str,
    pub fc1: &'static str,
    pub fc2: &'static str,
}

/// CLIP's (and SigLIP's) layer: `self_attn.{q,k,v,out}_proj`, `layer_norm{1,2}`, `mlp.fc{1,2}`.
pub const CLIP_LAYER: LayerNames = LayerNames {
    qkv: QkvNames::Separate(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
    out: "self_attn.out_proj",
    ln1: "layer_norm1",
    ln2: "layer_norm2",
    fc1: "mlp.fc1",
    fc2: "mlp.fc2",
};

/// ViT's layer: `attention.attention.{query,key,value}`, `layernorm_{before,after}`.
pub const VIT_LAYER: LayerNames = LayerNames {
    qkv: QkvNames::Separate([
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
    ]),
    out: "attention.output.dense",
    ln1: "layernorm_before",
    ln2: "layernorm_after",
    fc1: "intermediate.dense",
    fc2: "output.dense",
};

/// BLIP's vision layer: one fused `self_attn.qkv` and `self_attn.projection`.
pub const BLIP_LAYER: LayerNames = LayerNames {
    qkv: QkvNames::Fused("self_attn.qkv"),
    out: "self_attn.projection",
    ln1: "layer_norm1",
    ln2: "layer_norm2",
    fc1: "mlp.fc1",
    fc2: "mlp.fc2",
};

/// Pre-LN self-attention + MLP: `x + attn(ln1(x))`, then `x + fc2(act(fc1(ln2(x))))`.
pub struct EncoderLayer {
    attn: SelfAttention,
    ln1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ln2: LayerNorm,
    act: Activation,
}

impl EncoderLayer {
    pub fn new(vb: &Vb, names: &LayerNames, dims: &TowerDims) -> Result<Self> {
        let (d, i) = (dims.hidden, dims.intermediate);
        let lin = |name: &str| {
            if dims.qkv_bias {
                Linear::new(&vb.pp(name), d, d)
            } else {
                Linear::no_bias(&vb.pp(name), d, d)
            }
        };
        let (q, k, v) = match names.qkv {
            QkvNames::Separate([q, k, v]) => (lin(q)?, lin(k)?, lin(v)?),
            QkvNames::Fused(name) => {
                // the fused Linear [3D, D] splits into q, k, v
                let mut parts = vb.pp(name).linear_split(d, d, 3)?.into_iter();
                let mut next = || {
                    parts
                        .next()
                        .ok_or_else(|| Error::Weights(format!("{}: qkv split", vb.path(name))))
                };
                (next()?, next()?, next()?)
            }
        };
        Ok(EncoderLayer {
            attn: SelfAttention {
                q,
                k,
                v,
                out: Linear::new(&vb.pp(names.out), d, d)?,
                heads: dims.heads,
            },
            ln1: LayerNorm::new(&vb.pp(names.ln1), d, dims.eps)?,
            fc1: Linear::new(&vb.pp(names.fc1), d, i)?,
            fc2: Linear::new(&vb.pp(names.fc2), i, d)?,
            ln2: LayerNorm::new(&vb.pp(names.ln2), d, dims.eps)?,
            act: dims.act,
        })
    }

    /// `x [B, T, D]`; `causal` for CLIP's text tower, `mask` an additive `[B, T, T]` padding mask.
    pub fn forward(&self, x: &Tensor, causal: bool, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = self
            .attn
            .forward_add(&self.ln1.forward(x)?, causal, mask, Some(x))?;
        let h = self.fc1.forward_act(&self.ln2.forward(&x)?, self.act)?;
        self.fc2.forward_add(&h, &x)
    }
}

/// How a checkpoint stores a learned `[N, D]` table: as is, or with a leading batch of 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Flat,
    Batched,
}

/// What differs between the vision towers (checkpoint names relative to the tower's root).
#[derive(Debug, Clone, Copy)]
pub struct VisionSpec {
    /// the name errors carry ("vit", "vision", ...)
    pub who: &'static str,
    /// the patch conv `[D, C, P, P]` (its `weight`, and `bias` when `patch_bias`)
    pub patch: &'static str,
    pub patch_bias: bool,
    /// the class token, stored `[D]` (Flat) or `[1, 1, D]` (Batched); None: no class token
    pub class: Option<(&'static str, Stored)>,
    /// the learned positions, one per patch (+ the class token)
    pub positions: (&'static str, Stored),
    /// a LayerNorm before the layers (CLIP's `pre_layrnorm`)
    pub pre_norm: Option<&'static str>,
    /// the layers' list (`encoder.layers` / `encoder.layer`)
    pub layers: &'static str,
    pub layer: LayerNames,
    /// the LayerNorm after the layers
    pub final_norm: &'static str,
}

/// The geometry of a tower: the square image it takes and its patches.
#[derive(Debug, Clone, Copy)]
pub struct VisionGeometry {
    pub image_size: usize,
    pub patch_size: usize,
    pub channels: usize,
    pub layers: usize,
}

impl VisionGeometry {
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

pub struct VisionEncoder {
    patch_weight: Tensor,
    patch_bias: Option<Tensor>,
    class: Option<Tensor>,
    positions: Tensor,
    pre_norm: Option<LayerNorm>,
    layers: Vec<EncoderLayer>,
    /// applied by [`VisionEncoder::forward`] unless the caller asks for the states before it
    /// (CLIP normalizes only its class token)
    pub final_norm: LayerNorm,
    geo: VisionGeometry,
    who: &'static str,
}

impl VisionEncoder {
    pub fn new(
        vb: &Vb,
        spec: &VisionSpec,
        geo: &VisionGeometry,
        dims: &TowerDims,
    ) -> Result<VisionEncoder> {
        let (d, p, c) = (dims.hidden, geo.patch_size, geo.channels);
        if p == 0 || !geo.image_size.is_multiple_of(p) {
            return Err(Error::Config(format!(
                "{}: image_size {} is not a multiple of patch_size {p}",
                spec.who, geo.image_size
            )));
        }
        let n = geo.num_patches() + usize::from(spec.class.is_some());
        let table = |(name, stored): (&str, Stored), rows: usize| {
            let shape = [rows, d];
            match stored {
                Stored::Flat => vb.get(name, &shape),
                Stored::Batched => vb.get_as(name, &[1, rows, d], &shape),
            }
        };
        let pv = vb.pp(spec.patch);
        Ok(VisionEncoder {
            // the conv weight [D, C, P, P] is a Linear over flattened patches [D, C·P·P]
            patch_weight: pv.get_linear_weight_as("weight", &[d, c, p, p], &[d, c * p * p])?,
            patch_bias: if spec.patch_bias {
                Some(pv.get("bias", &[d])?)
            } else {
                None
            },
            class: match spec.class {
                Some((name, Stored::Flat)) => Some(vb.get_as(name, &[d], &[1, 1, d])?),
                Some((name, Stored::Batched)) => Some(vb.get(name, &[1, 1, d])?),
                None => None,
            },
            positions: table(spec.positions, n)?,
            pre_norm: spec
                .pre_norm
                .map(|name| LayerNorm::new(&vb.pp(name), d, dims.eps))
                .transpose()?,
            layers: (0..geo.layers)
                .map(|i| EncoderLayer::new(&vb.pp(spec.layers).pp(i), &spec.layer, dims))
                .collect::<Result<_>>()?,
            final_norm: LayerNorm::new(&vb.pp(spec.final_norm), d, dims.eps)?,
            geo: *geo,
            who: spec.who,
        })
    }

    pub fn geometry(&self) -> &VisionGeometry {
        &self.geo
    }

    /// `pixels [B, C, H, W]` -> the last layer's states `[B, (1 +) N, D]`, before the final
    /// LayerNorm.
    pub fn forward_unnormed(&self, pixels: &Tensor) -> Result<Tensor> {
        check_pixels(self.who, pixels, self.geo.channels, self.geo.image_size)?;
        // (B, C, H, W) -> (B, N, D)
        let patches = pixels.patch_embed(
            &self.patch_weight,
            self.patch_bias.as_ref(),
            self.geo.patch_size,
        )?;
        let mut x = match &self.class {
            // [cls ; patches]: the class token repeated over the batch
            Some(cls) => {
                let cls: Vec<&Tensor> = (0..patches.dim(0)).map(|_| cls).collect();
                Tensor::cat(&[&Tensor::cat(&cls, 0)?, &patches], 1)?
            }
            None => patches,
        };
        x = x.add(&self.positions)?;
        if let Some(ln) = &self.pre_norm {
            x = ln.forward(&x)?;
        }
        for layer in &self.layers {
            x = layer.forward(&x, false, None)?;
        }
        Ok(x)
    }

    /// `pixels [B, C, H, W]` -> `[B, (1 +) N, D]` after the final LayerNorm.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.final_norm.forward(&self.forward_unnormed(pixels)?)
    }
}
