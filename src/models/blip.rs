//! BLIP: `BlipForConditionalGeneration` (captioning, optionally continuing a prompt) and
//! `BlipForQuestionAnswering` (vision encoder → text encoder with cross-attention over the
//! question → answer decoder with cross-attention over the encoded question).
//! The text tower is BERT with a cross-attention block in every layer; the LM head's decoder is
//! tied to the word embeddings.

use serde::Deserialize;

use super::clip_vision::VisionConfig;
use crate::error::{Error, Result};
use crate::generate::CachedDecoder;
use crate::io::config::{Activation, Checks};
use crate::io::Vb;
use crate::nn::vision::{Stored, VisionEncoder, VisionSpec, BLIP_LAYER};
use crate::nn::{merge_heads, split_heads, CrossKv, KvCache, LayerNorm, Linear, TextEmbeddings};
use crate::tensor::{AttentionOpts, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct BlipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub encoder_hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "crate::io::config::defaults::eps_1e12")]
    pub layer_norm_eps: f64,
    #[serde(default = "crate::io::config::defaults::gelu")]
    pub hidden_act: Activation,
    pub bos_token_id: u32,
    pub sep_token_id: u32,
    #[serde(default)]
    pub pad_token_id: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BlipConfig {
    pub vision_config: VisionConfig,
    pub text_config: BlipTextConfig,
}

impl crate::io::config::HfConfig for BlipConfig {
    // transformers' BlipConfig(), BlipTextConfig() and BlipVisionConfig() (its vision tower is
    // read as the shared VisionConfig: the same fields)
    const DEFAULTS: &'static str = r#"{
        "text_config": {
            "vocab_size": 30524, "hidden_size": 768, "encoder_hidden_size": 768,
            "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 8,
            "max_position_embeddings": 512, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
            "bos_token_id": 30522, "pad_token_id": 0, "sep_token_id": 102
        },
        "vision_config": {
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "image_size": 384, "patch_size": 16, "hidden_act": "gelu",
            "layer_norm_eps": 1e-5
        }
    }"#;

    /// BlipConfig.__init__: the text tower cross-attends to the vision tower's states, so its
    /// `encoder_hidden_size` is the vision width whatever the file says (the hub's real
    /// text_config has no such field).
    fn finish(&mut self) {
        self.text_config.encoder_hidden_size = self.vision_config.hidden_size;
    }

    fn validate(&self, file: &str) -> Result<()> {
        self.vision_config
            .validate(&Checks::new(file, "vision_config."))?;
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
        for (field, id) in [
            ("bos_token_id", t.bos_token_id),
            ("sep_token_id", t.sep_token_id),
            ("pad_token_id", t.pad_token_id),
        ] {
            c.token(field, Some(id), t.vocab_size)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- vision

/// Where BLIP's vision tower keeps its weights.
const VISION: VisionSpec = VisionSpec {
    who: "blip vision",
    patch: "embeddings.patch_embedding",
    patch_bias: true,
    class: Some(("embeddings.class_embedding", Stored::Batched)),
    positions: ("embeddings.position_embedding", Stored::Batched),
    pre_norm: None,
    layers: "encoder.layers",
    layer: BLIP_LAYER,
    final_norm: "post_layernorm",
};

fn blip_vision(vb: &Vb, c: &VisionConfig) -> Result<VisionEncoder> {
    VisionEncoder::new(vb, &VISION, &c.geometry(), &c.dims())
}

// ---------------------------------------------------------------- text

/// BERT attention sub-block: `self.{query,key,value}` + `output.{dense,LayerNorm}`.
struct BertAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    ln: LayerNorm,
    heads: usize,
}

impl BertAttention {
    fn new(vb: &Vb, d: usize, kv_in: usize, heads: usize, eps: f64) -> Result<Self> {
        Ok(BertAttention {
            query: Linear::new(&vb.pp("self").pp("query"), d, d)?,
            key: Linear::new(&vb.pp("self").pp("key"), kv_in, d)?,
            value: Linear::new(&vb.pp("self").pp("value"), kv_in, d)?,
            dense: Linear::new(&vb.pp("output").pp("dense"), d, d)?,
            ln: LayerNorm::new(&vb.pp("output").pp("LayerNorm"), d, eps)?,
            heads,
        })
    }

    fn kv(&self, states: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            split_heads(&self.key.forward(states)?, self.heads)?,
            split_heads(&self.value.forward(states)?, self.heads)?,
        ))
    }

    /// `x` attends to `k`, `v` (`kv_len` valid rows); returns LayerNorm(dense(attn) + x).
    fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        causal: bool,
        kv_len: usize,
    ) -> Result<Tensor> {
        let q = split_heads(&self.query.forward(x)?, self.heads)?;
        let scale = 1.0 / (q.dim(3) as f32).sqrt();
        let a = Tensor::attention(
            &q,
            k,
            v,
            &AttentionOpts {
                scale,
                causal,
                mask: None,
                kv_len: Some(kv_len),
            },
        )?;
        self.ln
            .forward(&self.dense.forward_add(&merge_heads(&a)?, x)?)
    }
}

struct TextLayer {
    attention: BertAttention,
    crossattention: BertAttention,
    intermediate: Linear,
    output: Linear,
    output_ln: LayerNorm,
    act: Activation,
}

impl TextLayer {
    fn new(vb: &Vb, c: &BlipTextConfig) -> Result<Self> {
        let (d, h, eps) = (c.hidden_size, c.num_attention_heads, c.layer_norm_eps);
        Ok(TextLayer {
            attention: BertAttention::new(&vb.pp("attention"), d, d, h, eps)?,
            crossattention: BertAttention::new(
                &vb.pp("crossattention"),
                d,
                c.encoder_hidden_size,
                h,
                eps,
            )?,
            intermediate: Linear::new(&vb.pp("intermediate").pp("dense"), d, c.intermediate_size)?,
            output: Linear::new(&vb.pp("output").pp("dense"), c.intermediate_size, d)?,
            output_ln: LayerNorm::new(&vb.pp("output").pp("LayerNorm"), d, eps)?,
            act: c.hidden_act,
        })
    }

    /// Decoder layers append to `cache` and attend causally; the encoder (cache None) attends
    /// to all of its own tokens.
    fn forward(&self, x: &Tensor, cache: Option<&mut KvCache>, cross: &CrossKv) -> Result<Tensor> {
        let (k, v) = self.attention.kv(x)?;
        let h = match cache {
            Some(c) => {
                c.append(&k, &v)?;
                self.attention.attend(x, &c.k, &c.v, true, c.len)?
            }
            None => self.attention.attend(x, &k, &v, false, k.dim(2))?,
        };
        let h = self
            .crossattention
            .attend(&h, &cross.k, &cross.v, false, cross.k.dim(2))?;
        let i = self.intermediate.forward_act(&h, self.act)?;
        self.output_ln.forward(&self.output.forward_add(&i, &h)?)
    }
}

/// BERT embeddings + layers (`BlipTextModel`).
struct BlipText {
    embeddings: TextEmbeddings,
    layers: Vec<TextLayer>,
    cfg: BlipTextConfig,
}

impl BlipText {
    fn new(vb: &Vb, c: &BlipTextConfig) -> Result<Self> {
        let emb = vb.pp("embeddings");
        Ok(BlipText {
            embeddings: TextEmbeddings::new(
                emb.get_embedding("word_embeddings.weight", &[c.vocab_size, c.hidden_size])?,
                Some(emb.get(
                    "position_embeddings.weight",
                    &[c.max_position_embeddings, c.hidden_size],
                )?),
                Some(LayerNorm::new(
                    &emb.pp("LayerNorm"),
                    c.hidden_size,
                    c.layer_norm_eps,
                )?),
                (c.max_position_embeddings, "max_position_embeddings"),
            ),
            layers: (0..c.num_hidden_layers)
                .map(|i| TextLayer::new(&vb.pp("encoder").pp("layer").pp(i), c))
                .collect::<Result<_>>()?,
            cfg: c.clone(),
        })
    }

    fn cross_kv(&self, states: &Tensor) -> Result<Vec<CrossKv>> {
        self.layers
            .iter()
            .map(|l| l.crossattention.kv(states).map(|(k, v)| CrossKv { k, v }))
            .collect()
    }
}

/// `BlipTextLMHeadModel`: the text tower plus `cls.predictions` (transform, tied decoder + bias).
struct BlipTextLm {
    bert: BlipText,
    transform: Linear,
    transform_ln: LayerNorm,
    decoder: Linear,
}

impl BlipTextLm {
    fn new(vb: &Vb, c: &BlipTextConfig) -> Result<Self> {
        let d = c.hidden_size;
        let pred = vb.pp("cls").pp("predictions");
        let emb = vb.pp("bert").pp("embeddings").pp("word_embeddings");
        let weight = if pred.contains("decoder.weight") {
            pred.pp("decoder")
                .get_linear_weight("weight", &[c.vocab_size, d])?
        } else {
            emb.get_linear_weight("weight", &[c.vocab_size, d])?
        };
        Ok(BlipTextLm {
            bert: BlipText::new(&vb.pp("bert"), c)?,
            transform: Linear::new(&pred.pp("transform").pp("dense"), d, d)?,
            transform_ln: LayerNorm::new(
                &pred.pp("transform").pp("LayerNorm"),
                d,
                c.layer_norm_eps,
            )?,
            decoder: Linear {
                weight,
                bias: Some(pred.get("bias", &[c.vocab_size])?),
            },
        })
    }

    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let h = self.transform.forward_act(h, self.bert.cfg.hidden_act)?;
        self.decoder.forward(&self.transform_ln.forward(&h)?)
    }
}

/// Either BLIP head: captioning (decoder over the image) or VQA (encoder over the question,
/// decoder over the encoded question).
pub struct Blip {
    vision: VisionEncoder,
    text_encoder: Option<BlipText>,
    text_decoder: BlipTextLm,
    pub cfg: BlipConfig,
}

/// What the answer decoder attends to.
pub struct BlipMemory {
    cross: Vec<CrossKv>,
}

impl Blip {
    /// `vqa`: BlipForQuestionAnswering (has `text_encoder`), else BlipForConditionalGeneration.
    pub fn new(vb: &Vb, cfg: &BlipConfig, vqa: bool) -> Result<Blip> {
        Ok(Blip {
            vision: blip_vision(&vb.pp("vision_model"), &cfg.vision_config)?,
            text_encoder: if vqa {
                Some(BlipText::new(&vb.pp("text_encoder"), &cfg.text_config)?)
            } else {
                None
            },
            text_decoder: BlipTextLm::new(&vb.pp("text_decoder"), &cfg.text_config)?,
            cfg: cfg.clone(),
        })
    }

    pub fn is_vqa(&self) -> bool {
        self.text_encoder.is_some()
    }

    /// Image embeddings `[1, 1 + N, D]`.
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.forward(pixels)
    }

    /// Captioning: the decoder attends to the image.
    pub fn caption_memory(&self, image: &Tensor) -> Result<BlipMemory> {
        Ok(BlipMemory {
            cross: self.text_decoder.bert.cross_kv(image)?,
        })
    }

    /// VQA: the question (with [CLS] … [SEP]) through the text encoder over the image; the
    /// decoder attends to the encoded question.
    pub fn question_memory(&self, image: &Tensor, question_ids: &[u32]) -> Result<BlipMemory> {
        let enc = self.text_encoder.as_ref().ok_or_else(|| {
            Error::Invalid("this BLIP model captions; it has no question encoder".into())
        })?;
        let image_kv = enc.cross_kv(image)?;
        let mut x = enc.embeddings.forward(&[question_ids.to_vec()], 0)?;
        for (layer, kv) in enc.layers.iter().zip(&image_kv) {
            x = layer.forward(&x, None, kv)?;
        }
        Ok(BlipMemory {
            cross: self.text_decoder.bert.cross_kv(&x)?,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cfg.text_config.max_position_embeddings
    }

    /// A decoder state for up to `text` tokens (prompt and answer).
    pub fn decoder<'a>(&'a self, memory: &'a BlipMemory, text: usize) -> Result<BlipDecoder<'a>> {
        let c = &self.cfg.text_config;
        let device = self.text_decoder.bert.embeddings.device();
        let caches = (0..c.num_hidden_layers)
            .map(|_| {
                KvCache::new(
                    1,
                    c.num_attention_heads,
                    text,
                    c.hidden_size / c.num_attention_heads,
                    &device,
                )
            })
            .collect::<Result<_>>()?;
        Ok(BlipDecoder {
            model: self,
            cross: &memory.cross,
            caches,
            pos: 0,
        })
    }
}

pub struct BlipDecoder<'a> {
    model: &'a Blip,
    cross: &'a [CrossKv],
    caches: Vec<KvCache>,
    pos: usize,
}

impl CachedDecoder for BlipDecoder<'_> {
    fn caches(&mut self) -> &mut Vec<KvCache> {
        &mut self.caches
    }

    /// Logits `[B, T, V]` of every new position.
    fn forward_all(&mut self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let lm = &self.model.text_decoder;
        let mut x = lm.bert.embeddings.forward(ids, self.pos)?;
        for ((layer, cache), kv) in lm
            .bert
            .layers
            .iter()
            .zip(self.caches.iter_mut())
            .zip(self.cross)
        {
            x = layer.forward(&x, Some(cache), kv)?;
        }
        self.pos += ids.first().map_or(0, |r| r.len());
        lm.logits(&x)
    }
}
