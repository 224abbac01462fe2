//! Idefics3 / SmolVLM (`Idefics3ForConditionalGeneration`, `SmolVLMForConditionalGeneration`):
//! a SigLIP vision transformer over each tile of the image, a pixel-shuffle connector that folds
//! `scale_factor²` neighbouring patches into one token and projects it to the text width, and a
//! Llama decoder whose `<image>` token embeddings are replaced, in order, by those tokens.
//! A conversation keeps its key/value caches between turns: the next turn's prompt repeats
//! the earlier turns, and only what follows the longest shared prefix is computed.

use serde::Deserialize;

use super::clip_vision::VisionConfig;
use super::llama::{Llama, LlamaConfig};
use crate::error::{Error, Result};
use crate::generate::CachedDecoder;
use crate::io::config::Checks;
use crate::io::Vb;
use crate::nn::vision::{Stored, VisionEncoder, VisionSpec, CLIP_LAYER};
use crate::nn::{KvCache, Linear};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Deserialize)]
pub struct Idefics3Config {
    /// SigLIP's fields are those of the shared vision config
    pub vision_config: VisionConfig,
    pub text_config: LlamaConfig,
    pub scale_factor: usize,
    pub image_token_id: u32,
}

impl crate::io::config::HfConfig for Idefics3Config {
    // transformers' Idefics3Config() (SmolVLMConfig() has the same defaults) and its vision
    // config; a given text_config dict is read as LlamaConfig(**text_config), so it takes
    // LlamaConfig's own defaults (not the 1e-5 / pad 128002 of an absent text_config)
    const DEFAULTS: &'static str = r#"{
        "scale_factor": 2, "image_token_id": 128257,
        "vision_config": {
            "hidden_size": 1152, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 16, "num_channels": 3, "image_size": 224, "patch_size": 32,
            "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6
        },
        "text_config": {
            "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
            "bos_token_id": 1, "eos_token_id": 2
        }
    }"#;

    fn validate(&self, file: &str) -> Result<()> {
        let v = &self.vision_config;
        v.validate(&Checks::new(file, "vision_config."))?;
        let top = Checks::new(file, "");
        let side = v.image_size / v.patch_size;
        if self.scale_factor == 0 || !side.is_multiple_of(self.scale_factor) {
            return Err(top.err(
                "scale_factor",
                format!(
                    "= {} must divide the {side} patches per side of a tile",
                    self.scale_factor
                ),
            ));
        }
        self.text_config
            .validate(&Checks::new(file, "text_config."))?;
        top.token(
            "image_token_id",
            Some(self.image_token_id),
            self.text_config.vocab_size,
        )
    }
}

impl Idefics3Config {
    /// Image tokens per tile: the tile's patches folded by `scale_factor²`.
    pub fn image_seq_len(&self) -> usize {
        let v = &self.vision_config;
        (v.image_size / v.patch_size / self.scale_factor).pow(2)
    }
}

/// Where SigLIP keeps its weights inside Idefics3 (no class token; positions an nn.Embedding).
/// Its position ids are those of a full tile, 0..N: every tile the processor makes is whole
/// (transformers' bucketing of fractional coordinates gives exactly these for a full mask).
const SIGLIP: VisionSpec = VisionSpec {
    who: "siglip vision",
    patch: "embeddings.patch_embedding",
    patch_bias: true,
    class: None,
    positions: ("embeddings.position_embedding.weight", Stored::Flat),
    pre_norm: None,
    layers: "encoder.layers",
    layer: CLIP_LAYER,
    final_norm: "post_layernorm",
};

pub struct Idefics3 {
    vision: VisionEncoder,
    connector: Linear,
    pub text: Llama,
    pub cfg: Idefics3Config,
}

impl Idefics3 {
    /// `vb` at the checkpoint's root (`model.*`, `lm_head.*`).
    pub fn new(vb: &Vb, cfg: &Idefics3Config) -> Result<Idefics3> {
        let m = vb.pp("model");
        let v = &cfg.vision_config;
        let s2 = cfg.scale_factor * cfg.scale_factor;
        Ok(Idefics3 {
            vision: VisionEncoder::new(&m.pp("vision_model"), &SIGLIP, &v.geometry(), &v.dims())?,
            connector: Linear::no_bias(
                &m.pp("connector").pp("modality_projection").pp("proj"),
                v.hidden_size * s2,
                cfg.text_config.hidden_size,
            )?,
            text: Llama::new(&m.pp("text_model"), vb, &cfg.text_config)?,
            cfg: cfg.clone(),
        })
    }

    pub fn image_seq_len(&self) -> usize {
        self.cfg.image_seq_len()
    }

    /// The side of one tile in pixels.
    pub fn tile_size(&self) -> usize {
        self.cfg.vision_config.image_size
    }

    /// `tiles [N, 3, T, T]` -> image tokens `[N · seq, D_text]`, tile by tile.
    pub fn encode_image(&self, tiles: &Tensor) -> Result<Tensor> {
        let x = self.vision.forward(tiles)?;
        let (n, p, d) = (x.dim(0), x.dim(1), x.dim(2));
        let s = self.cfg.scale_factor;
        let side = self.cfg.vision_config.image_size / self.cfg.vision_config.patch_size;
        // pixel shuffle: token (i, j) concatenates patches (i·s + a, j·s + b), a then b:
        // [N·side/s, s, side/s, s·D] -> [N·side/s, side/s, s, s·D] -> [N, P/s², s²·D]
        let x = x
            .reshape(&[n * side / s, s, side / s, s * d])?
            .permute(&[0, 2, 1, 3])?
            .reshape(&[n, p / (s * s), s * s * d])?;
        let x = self.connector.forward(&x)?;
        let dt = x.dim(2);
        x.reshape(&[n * p / (s * s), dt])
    }

    /// A generation state over `image` (its tokens from [`Idefics3::encode_image`]) that
    /// continues `state` (the caches of earlier turns; None: a new conversation).
    pub fn decoder<'a>(
        &'a self,
        image: &'a Tensor,
        state: Option<ChatState>,
    ) -> Result<ChatDecoder<'a>> {
        let state = match state {
            Some(s) => s,
            None => ChatState {
                caches: self.text.new_caches(256, &image.device())?,
                ids: Vec::new(),
            },
        };
        Ok(ChatDecoder {
            model: self,
            image,
            state,
            resumed: false,
        })
    }

    /// Embeddings `[1, T, D]` of `ids`, the `<image>` positions taking image tokens from
    /// `first` on.
    fn embed(&self, ids: &[u32], image: &Tensor, first: usize) -> Result<Tensor> {
        let img = self.cfg.image_token_id;
        let words = &self.text.embeddings.words;
        let d = self.text.cfg.hidden_size;
        let mut parts = Vec::new();
        let (mut i, mut next) = (0, first);
        while i < ids.len() {
            let is_img = ids[i] == img;
            let run = ids[i..]
                .iter()
                .take_while(|&&t| (t == img) == is_img)
                .count();
            if is_img {
                if next + run > image.dim(0) {
                    return Err(Error::Invalid(format!(
                        "the prompt has more <image> tokens than the image gives ({}): one image per conversation, expanded by the processor",
                        image.dim(0)
                    )));
                }
                parts.push(image.narrow(0, next, run)?.reshape(&[1, run, d])?);
                next += run;
            } else {
                parts.push(words.lookup(&ids[i..i + run], &[1, run])?);
            }
            i += run;
        }
        Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1)
    }
}

/// What a conversation's caches hold: the keys and values of `ids`, every layer.
pub struct ChatState {
    pub caches: Vec<KvCache>,
    pub ids: Vec<u32>,
}

/// Generation over one image, resuming a conversation's caches.
pub struct ChatDecoder<'a> {
    model: &'a Idefics3,
    image: &'a Tensor,
    state: ChatState,
    /// whether the first feed (the prompt) has been matched against the cached ids
    resumed: bool,
}

impl ChatDecoder<'_> {
    /// The caches and ids after this generation, for the next turn (None after beam search:
    /// its caches hold several rows).
    pub fn into_state(self) -> Option<ChatState> {
        let one = self.state.caches.iter().all(|c| c.k.dim(0) == 1);
        one.then_some(self.state)
    }
}

impl CachedDecoder for ChatDecoder<'_> {
    fn caches(&mut self) -> &mut Vec<KvCache> {
        &mut self.state.caches
    }

    fn forward_all(&mut self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let m = self.model;
        let mut rows = ids.to_vec();
        if !self.resumed {
            // the prompt of this turn: keep the longest prefix the caches already hold (at
            // least one token is fed, for its logits)
            self.resumed = true;
            let [prompt] = ids else {
                return Err(Error::Invalid("a conversation's prompt is one row".into()));
            };
            let shared = self
                .state
                .ids
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count()
                .min(prompt.len().saturating_sub(1));
            for c in self.state.caches.iter_mut() {
                c.len = shared;
            }
            self.state.ids.truncate(shared);
            rows = vec![prompt[shared..].to_vec()];
        }
        let start = self.state.ids.len();
        let x = if let [row] = rows.as_slice() {
            // image tokens before this point were taken by the cached prefix
            let img = m.cfg.image_token_id;
            let first = self.state.ids.iter().filter(|&&t| t == img).count();
            m.embed(row, self.image, first)?
        } else {
            // beam steps: one new token per row, never an image token
            let t = rows.first().map_or(0, |r| r.len());
            let flat: Vec<u32> = rows.iter().flatten().copied().collect();
            m.text.embeddings.words.lookup(&flat, &[rows.len(), t])?
        };
        let logits = m.text.forward_embeds(&x, start, &mut self.state.caches)?;
        if let Some(row) = rows.first() {
            self.state.ids.extend_from_slice(row);
        }
        Ok(logits)
    }
}
