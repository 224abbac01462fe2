//! `VisionEncoderDecoderModel` with a ViT encoder and a GPT-2 decoder (e.g. vit-gpt2 image
//! captioning). The encoder runs once per image; its states become each decoder layer's
//! cross-attention keys and values, reused for every caption of that image.

use serde::Deserialize;

use super::gpt2::{Gpt2, Gpt2Config};
use super::vit::{Vit, VitConfig};
use crate::error::{Error, Result};
use crate::generate::CachedDecoder;
use crate::io::config::config_from_value;
use crate::io::Vb;
use crate::nn::{CrossKv, KvCache, Linear};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Deserialize)]
pub struct VisionEncoderDecoderConfig {
    pub encoder: serde_json::Value,
    pub decoder: serde_json::Value,
    pub decoder_start_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl crate::io::config::HfConfig for VisionEncoderDecoderConfig {
    // the encoder's and decoder's own defaults are applied by their config classes
    const DEFAULTS: &'static str = "{}";
}

pub struct VisionEncoderDecoder {
    encoder: Vit,
    enc_to_dec_proj: Option<Linear>,
    decoder: Gpt2,
    pub cfg: VisionEncoderDecoderConfig,
}

/// An encoded image: the decoder's cross-attention keys and values.
pub struct EncodedImage {
    cross: Vec<CrossKv>,
}

impl VisionEncoderDecoder {
    pub fn new(vb: &Vb, cfg: &VisionEncoderDecoderConfig) -> Result<Self> {
        let kind = |v: &serde_json::Value| {
            v.get("model_type")
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (ek, dk) = (kind(&cfg.encoder), kind(&cfg.decoder));
        if ek != "vit" || dk != "gpt2" {
            return Err(Error::Config(format!(
                "config.json: VisionEncoderDecoder with encoder {ek:?} and decoder {dk:?} is not supported (vit + gpt2 is)"
            )));
        }
        let enc_cfg: VitConfig = config_from_value("config.json encoder", cfg.encoder.clone())?;
        let dec_cfg: Gpt2Config = config_from_value("config.json decoder", cfg.decoder.clone())?;
        if !dec_cfg.add_cross_attention {
            return Err(Error::Config(
                "config.json decoder: add_cross_attention must be true".into(),
            ));
        }
        let c = crate::io::config::Checks::new("config.json", "");
        for (field, id) in [
            ("decoder_start_token_id", cfg.decoder_start_token_id),
            ("eos_token_id", cfg.eos_token_id),
            ("pad_token_id", cfg.pad_token_id),
        ] {
            c.token(field, id, dec_cfg.vocab_size)?;
        }
        let enc_to_dec_proj = if enc_cfg.hidden_size != dec_cfg.n_embd {
            Some(Linear::new(
                &vb.pp("enc_to_dec_proj"),
                enc_cfg.hidden_size,
                dec_cfg.n_embd,
            )?)
        } else {
            None
        };
        Ok(VisionEncoderDecoder {
            encoder: Vit::new(&vb.pp("encoder"), &enc_cfg)?,
            enc_to_dec_proj,
            decoder: Gpt2::new(&vb.pp("decoder"), &dec_cfg)?,
            cfg: cfg.clone(),
        })
    }

    pub fn encode_image(&self, pixels: &Tensor) -> Result<EncodedImage> {
        let mut states = self.encoder.forward(pixels)?;
        if let Some(p) = &self.enc_to_dec_proj {
            states = p.forward(&states)?;
        }
        Ok(EncodedImage {
            cross: self.decoder.cross_kv(&states)?,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.decoder.cfg.vocab_size
    }

    pub fn decoder_layers(&self) -> usize {
        self.decoder.cfg.n_layer
    }

    pub fn decoder_width(&self) -> usize {
        self.decoder.cfg.n_embd
    }

    pub fn max_positions(&self) -> usize {
        self.decoder.cfg.n_positions
    }

    /// A decoder state for up to `text` tokens (prompt and caption).
    pub fn decoder<'a>(&'a self, image: &'a EncodedImage, text: usize) -> Result<VedDecoder<'a>> {
        let device = self.decoder_device();
        Ok(VedDecoder {
            model: self,
            caches: self.decoder.new_caches(1, text, &device)?,
            cross: &image.cross,
            pos: 0,
        })
    }

    fn decoder_device(&self) -> crate::Device {
        self.decoder.cfg_device()
    }
}

/// Generation state: self-attention caches, and the image's cross keys/values (shared by beams).
pub struct VedDecoder<'a> {
    model: &'a VisionEncoderDecoder,
    caches: Vec<KvCache>,
    cross: &'a [CrossKv],
    pos: usize,
}

impl CachedDecoder for VedDecoder<'_> {
    fn caches(&mut self) -> &mut Vec<KvCache> {
        &mut self.caches
    }

    /// Logits `[B, T, V]` of every new position.
    fn forward_all(&mut self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let logits =
            self.model
                .decoder
                .forward(ids, self.pos, &mut self.caches, Some(self.cross))?;
        self.pos += ids.first().map_or(0, |r| r.len());
        Ok(logits)
    }
}
