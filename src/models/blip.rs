//! BLIP: `BlipForConditionalGeneration` (captioning, optionally continuing a prompt) and
//! `BlipForQuestionAnswering` (vision encoder → text encoder with cross-attention over the
//! question → answer decoder with cross-attention over the encoded question).
//! The text tower is BERT with a cross-attention block in every layer; the LM head's decoder is
//! tied to the word embeddings.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::generate::Decoder;
use crate::io::config::{Activation, Checks};
use crate::io::Vb;
use crate::nn::{
    check_pixels, merge_heads, split_heads, with_class_token, CrossKv, KvCache, LayerNorm, Linear,
    SelfAttention,
};
use crate::tensor::{AttentionOpts, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct BlipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "crate::io::config::defaults::eps_1e5")]
    pub layer_norm_eps: f64,
    #[serde(default = "crate::io::config::defaults::gelu")]
    pub hidden_act: Activation,
}

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
    pub vision_config: BlipVisionConfig,
    pub text_config: BlipTextConfig,
}

impl crate::io::config::HfConfig for BlipConfig {
    // transformers' BlipConfig(), BlipTextConfig() and BlipVisionConfig()
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
        let v = &self.vision_config;
        let c = Checks::new(file, "vision_config.");
        c.tower(
            v.hidden_size,
            v.num_attention_heads,
            v.intermediate_size,
            v.num_hidden_layers,
            v.layer_norm_eps,
        )?;
        c.image(v.image_size, v.patch_size, 3)?;
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

struct VisionLayer {
    attn: SelfAttention,
    ln1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ln2: LayerNorm,
    act: Activation,
}

impl VisionLayer {
    fn new(vb: &Vb, c: &BlipVisionConfig) -> Result<Self> {
        let d = c.hidden_size;
        // the fused qkv Linear [3D, D] splits into q, k, v
        let mut qkv = vb
            .pp("self_attn")
            .pp("qkv")
            .linear_split(d, d, 3)?
            .into_iter();
        let mut next = || qkv.next().ok_or_else(|| Error::Weights("qkv split".into()));
        Ok(VisionLayer {
            attn: SelfAttention {
                q: next()?,
                k: next()?,
                v: next()?,
                out: Linear::new(&vb.pp("self_attn").pp("projection"), d, d)?,
                heads: c.num_attention_heads,
            },
            ln1: LayerNorm::new(&vb.pp("layer_norm1"), d, c.layer_norm_eps)?,
            fc1: Linear::new(&vb.pp("mlp").pp("fc1"), d, c.intermediate_size)?,
            fc2: Linear::new(&vb.pp("mlp").pp("fc2"), c.intermediate_size, d)?,
            ln2: LayerNorm::new(&vb.pp("layer_norm2"), d, c.layer_norm_eps)?,
            act: c.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self
            .attn
            .forward_add(&self.ln1.forward(x)?, false, None, Some(x))?;
        let h = self.fc1.forward_act(&self.ln2.forward(&x)?, self.act)?;
        self.fc2.forward_add(&h, &x)
    }
}

pub struct BlipVision {
    class_embedding: Tensor,
    patch_weight: Tensor,
    patch_bias: Tensor,
    position_embedding: Tensor,
    layers: Vec<VisionLayer>,
    post_layernorm: LayerNorm,
    cfg: BlipVisionConfig,
}

impl BlipVision {
    fn new(vb: &Vb, c: &BlipVisionConfig) -> Result<Self> {
        let (d, p) = (c.hidden_size, c.patch_size);
        if !c.image_size.is_multiple_of(p) {
            return Err(Error::Config(format!(
                "vision_config: image_size {} is not a multiple of patch_size {p}",
                c.image_size
            )));
        }
        let n = (c.image_size / p).pow(2);
        let emb = vb.pp("embeddings");
        Ok(BlipVision {
            class_embedding: emb.get("class_embedding", &[1, 1, d])?,
            // the conv weight [D, 3, P, P] is a Linear over flattened patches [D, 3·P·P]
            patch_weight: emb.pp("patch_embedding").get_linear_weight_as(
                "weight",
                &[d, 3, p, p],
                &[d, 3 * p * p],
            )?,
            patch_bias: emb.pp("patch_embedding").get("bias", &[d])?,
            position_embedding: emb.get("position_embedding", &[1, n + 1, d])?,
            layers: (0..c.num_hidden_layers)
                .map(|i| VisionLayer::new(&vb.pp("encoder").pp("layers").pp(i), c))
                .collect::<Result<_>>()?,
            post_layernorm: LayerNorm::new(&vb.pp("post_layernorm"), d, c.layer_norm_eps)?,
            cfg: c.clone(),
        })
    }

    /// `pixels [B, 3, H, W]` -> image embeddings `[B, 1 + N, D]` (post-LayerNorm, every token).
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        check_pixels("blip vision", pixels, 3, self.cfg.image_size)?;
        let patches = pixels.patch_embed(
            &self.patch_weight,
            Some(&self.patch_bias),
            self.cfg.patch_size,
        )?;
        let mut x = with_class_token(&self.class_embedding, &patches, &self.position_embedding)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        self.post_layernorm.forward(&x)
    }
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
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    ln: LayerNorm,
    layers: Vec<TextLayer>,
    cfg: BlipTextConfig,
}

impl BlipText {
    fn new(vb: &Vb, c: &BlipTextConfig) -> Result<Self> {
        let emb = vb.pp("embeddings");
        Ok(BlipText {
            word_embeddings: emb
                .get_embedding("word_embeddings.weight", &[c.vocab_size, c.hidden_size])?,
            position_embeddings: emb.get(
                "position_embeddings.weight",
                &[c.max_position_embeddings, c.hidden_size],
            )?,
            ln: LayerNorm::new(&emb.pp("LayerNorm"), c.hidden_size, c.layer_norm_eps)?,
            layers: (0..c.num_hidden_layers)
                .map(|i| TextLayer::new(&vb.pp("encoder").pp("layer").pp(i), c))
                .collect::<Result<_>>()?,
            cfg: c.clone(),
        })
    }

    fn embed(&self, ids: &[Vec<u32>], start: usize) -> Result<Tensor> {
        let (b, t) = (ids.len(), ids.first().map_or(0, |r| r.len()));
        if start + t > self.cfg.max_position_embeddings {
            return Err(Error::Invalid(format!(
                "the text is {} tokens long; this model's max_position_embeddings is {}",
                start + t,
                self.cfg.max_position_embeddings
            )));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let device = self.word_embeddings.device();
        let pos: Vec<u32> = (start..start + t).map(|p| p as u32).collect();
        let x = self.word_embeddings.lookup(&flat, &[b, t])?;
        self.ln.forward(
            &x.add(&self.position_embeddings.embedding(&Tensor::from_u32(
                &pos,
                &[t],
                &device,
            )?)?)?,
        )
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
    vision: BlipVision,
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
            vision: BlipVision::new(&vb.pp("vision_model"), &cfg.vision_config)?,
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
        let mut x = enc.embed(&[question_ids.to_vec()], 0)?;
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
        let device = self.text_decoder.bert.word_embeddings.device();
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

impl BlipDecoder<'_> {
    /// Logits `[B, T, V]` of every new position.
    pub fn forward_all(&mut self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let lm = &self.model.text_decoder;
        let mut x = lm.bert.embed(ids, self.pos)?;
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

impl Decoder for BlipDecoder<'_> {
    fn forward(&mut self, ids: &[Vec<u32>]) -> Result<Tensor> {
        crate::generate::last_position(&self.forward_all(ids)?)
    }

    fn reorder(&mut self, rows: &[usize]) -> Result<()> {
        crate::nn::reorder_caches(&mut self.caches, rows)
    }
}
