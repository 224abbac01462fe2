//! A loaded model with its tokenizer, image processor and generation defaults, behind the tasks
//! a person asks for: caption an image, answer a question about it, match it against texts.
//! The image is prepared once ([`Pipeline::prepare_image`]) and serves any number of requests.

use crate::error::{Error, Result};
use crate::generate::{generate, GenerateOptions};
use crate::image::{decode, ImageProcessorConfig};
use crate::io::config::{architecture, parse, GenerationConfig};
use crate::io::tokenizer::Tokenizer;
use crate::io::{Vb, Weights};
use crate::models::blip::{Blip, BlipConfig, BlipMemory};
use crate::models::clip::{logits_per_image, Clip, ClipConfig};
use crate::models::git::{Git, GitConfig, ImagePrefix};
use crate::models::vision_encoder_decoder::{
    EncodedImage, VisionEncoderDecoder, VisionEncoderDecoderConfig,
};
use crate::tensor::{DType, Device, Tensor};

/// The files of a Hugging Face model folder, as bytes (from disk, URLs or a file picker).
pub struct ModelFiles {
    pub config: String,
    pub generation_config: Option<String>,
    pub preprocessor_config: String,
    pub tokenizer: Vec<u8>,
    /// model.safetensors, or every shard
    pub weights: Vec<Vec<u8>>,
}

impl ModelFiles {
    /// Reads a model folder: config.json, preprocessor_config.json, tokenizer.json,
    /// generation_config.json (optional) and model.safetensors or its sharded index.
    /// A path to a GGUF file (written by `glimpse quantize`) loads that one file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &std::path::Path) -> Result<ModelFiles> {
        if dir.is_file() {
            let bytes = std::fs::read(dir)
                .map_err(|e| Error::Weights(format!("{}: {e}", dir.display())))?;
            if !crate::io::gguf::is_gguf(&bytes) {
                return Err(Error::Weights(format!(
                    "{} is neither a model folder nor a GGUF file",
                    dir.display()
                )));
            }
            return crate::io::gguf::model_files(bytes);
        }
        let read = |name: &str| -> Result<Vec<u8>> {
            std::fs::read(dir.join(name))
                .map_err(|e| Error::Weights(format!("{}: {e}", dir.join(name).display())))
        };
        let text = |name: &str| -> Result<String> {
            String::from_utf8(read(name)?)
                .map_err(|_| Error::Config(format!("{name} is not UTF-8 text")))
        };
        let weights = if dir.join("model.safetensors").exists() {
            vec![read("model.safetensors")?]
        } else if dir.join("model.safetensors.index.json").exists() {
            let index: serde_json::Value = parse(
                "model.safetensors.index.json",
                &text("model.safetensors.index.json")?,
            )?;
            let mut shards: Vec<String> = index["weight_map"]
                .as_object()
                .ok_or_else(|| {
                    Error::Config("model.safetensors.index.json has no weight_map".into())
                })?
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            shards.iter().map(|s| read(s)).collect::<Result<_>>()?
        } else {
            return Err(Error::Weights(format!(
                "{} has no model.safetensors (or model.safetensors.index.json)",
                dir.display()
            )));
        };
        Ok(ModelFiles {
            config: text("config.json")?,
            generation_config: dir
                .join("generation_config.json")
                .exists()
                .then(|| text("generation_config.json"))
                .transpose()?,
            preprocessor_config: text("preprocessor_config.json")?,
            tokenizer: read("tokenizer.json")?,
            weights,
        })
    }
}

/// What a loaded model can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// captions and answers questions (GIT)
    Caption,
    /// answers questions only (BLIP VQA)
    Answer,
    /// scores an image against texts (CLIP)
    Match,
}

enum Model {
    Git(Box<Git>),
    Clip(Box<Clip>),
    VisionEncoderDecoder(Box<VisionEncoderDecoder>),
    Blip(Box<Blip>),
}

/// An image ready for requests: its pixels encoded once.
pub enum PreparedImage {
    Git(ImagePrefix),
    Clip(Tensor),
    VisionEncoderDecoder(EncodedImage),
    /// image embeddings, and for captioning models the decoder's memory of them
    Blip(Tensor, Option<BlipMemory>),
}

/// Generated text with its ids (prompt included, as transformers returns them).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generated {
    pub text: String,
    pub ids: Vec<u32>,
    pub new_tokens: usize,
}

pub struct Pipeline {
    model: Model,
    tokenizer: Tokenizer,
    processor: ImageProcessorConfig,
    generation: GenerationConfig,
    architecture: String,
    pub device: Device,
}

impl Pipeline {
    /// Loads a model; Linear weights are stored as `dtype` (quantized while loading).
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Pipeline> {
        let arch = architecture(&files.config)?;
        let weights = Weights::from_files(files.weights.clone())?;
        let vb = Vb::new(&weights, device, dtype);
        let model = match arch.as_str() {
            "GitForCausalLM" | "git" => Model::Git(Box::new(Git::new(&vb, &parse::<GitConfig>("config.json", &files.config)?)?)),
            "CLIPModel" | "clip" => Model::Clip(Box::new(Clip::new(&vb, &parse::<ClipConfig>("config.json", &files.config)?)?)),
            "VisionEncoderDecoderModel" | "vision-encoder-decoder" => Model::VisionEncoderDecoder(Box::new(VisionEncoderDecoder::new(
                &vb,
                &parse::<VisionEncoderDecoderConfig>("config.json", &files.config)?,
            )?)),
            "BlipForConditionalGeneration" | "BlipForQuestionAnswering" => {
                let cfg = parse::<BlipConfig>("config.json", &files.config)?;
                Model::Blip(Box::new(Blip::new(&vb, &cfg, arch == "BlipForQuestionAnswering")?))
            }
            other => {
                return Err(Error::Config(format!(
                    "config.json: architecture {other:?} is not supported (supported: GitForCausalLM, VisionEncoderDecoderModel, BlipForConditionalGeneration, BlipForQuestionAnswering, CLIPModel)"
                )))
            }
        };
        let generation = match &files.generation_config {
            Some(text) => parse("generation_config.json", text)?,
            None => GenerationConfig::default(),
        };
        Ok(Pipeline {
            model,
            tokenizer: Tokenizer::from_bytes(&files.tokenizer)?,
            processor: ImageProcessorConfig::from_json(&files.preprocessor_config)?,
            generation,
            architecture: arch,
            device: device.clone(),
        })
    }

    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    pub fn task(&self) -> Task {
        match &self.model {
            Model::Git(_) | Model::VisionEncoderDecoder(_) => Task::Caption,
            Model::Blip(b) if b.is_vqa() => Task::Answer,
            Model::Blip(_) => Task::Caption,
            Model::Clip(_) => Task::Match,
        }
    }

    /// Generation options from generation_config.json (and the model's special tokens).
    pub fn default_options(&self) -> GenerateOptions {
        let mut opts = GenerateOptions::from_config(&self.generation);
        if opts.eos_token_ids.is_empty() {
            match &self.model {
                Model::Git(g) => opts.eos_token_ids.extend(g.cfg.eos_token_id),
                Model::VisionEncoderDecoder(m) => opts.eos_token_ids.extend(m.cfg.eos_token_id),
                Model::Blip(b) => opts.eos_token_ids.push(b.cfg.text_config.sep_token_id),
                Model::Clip(_) => {}
            }
        }
        opts
    }

    /// Decodes, preprocesses and encodes an image (PNG, JPEG or WebP bytes).
    pub fn prepare_image(&self, bytes: &[u8]) -> Result<PreparedImage> {
        let pixels = self.pixels(bytes)?;
        self.encode_pixels(&pixels)
    }

    /// Decodes and preprocesses an image into the model's pixel tensor `[1, 3, H, W]`.
    pub fn pixels(&self, bytes: &[u8]) -> Result<Tensor> {
        let px = self.processor.preprocess(&decode(bytes)?)?;
        Tensor::from_f32(&px.data, &[1, 3, px.height, px.width], &self.device)
    }

    /// Runs the vision side on preprocessed pixels (see [`Pipeline::pixels`]).
    pub fn encode_pixels(&self, pixels: &Tensor) -> Result<PreparedImage> {
        match &self.model {
            Model::Git(g) => {
                let visual = g.encode_image(pixels)?;
                Ok(PreparedImage::Git(
                    g.image_prefix(&visual, g.cfg.max_position_embeddings)?,
                ))
            }
            Model::Clip(c) => Ok(PreparedImage::Clip(c.image_embeds(pixels)?)),
            Model::VisionEncoderDecoder(m) => {
                Ok(PreparedImage::VisionEncoderDecoder(m.encode_image(pixels)?))
            }
            Model::Blip(b) => {
                let image = b.encode_image(pixels)?;
                let memory = if b.is_vqa() {
                    None
                } else {
                    Some(b.caption_memory(&image)?)
                };
                Ok(PreparedImage::Blip(image, memory))
            }
        }
    }

    /// The first token of a caption: BOS for GIT, decoder_start_token_id for encoder-decoders.
    fn start_token(&self) -> Result<u32> {
        let g = &self.generation;
        let id = match &self.model {
            Model::Git(m) => g.bos_token_id.or(m.cfg.bos_token_id),
            Model::VisionEncoderDecoder(m) => g
                .decoder_start_token_id
                .or(m.cfg.decoder_start_token_id)
                .or(g.bos_token_id),
            Model::Blip(b) => Some(b.cfg.text_config.bos_token_id),
            Model::Clip(_) => return Err(self.not_generative()),
        };
        id.ok_or_else(|| {
            Error::Config(
                "no bos_token_id / decoder_start_token_id in generation_config.json or config.json"
                    .into(),
            )
        })
    }

    fn not_generative(&self) -> Error {
        Error::Invalid(format!(
            "{} matches images with texts; it does not generate text",
            self.architecture
        ))
    }

    /// A caption, optionally continuing `prompt` (conditional captioning). `on_text`
    /// receives the caption so far after each token; returning false cancels.
    pub async fn caption(
        &self,
        image: &PreparedImage,
        prompt: Option<&str>,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generated> {
        if self.task() == Task::Answer {
            return Err(Error::Invalid(format!(
                "{} answers questions; it does not caption (use ask)",
                self.architecture
            )));
        }
        let mut ids = vec![self.start_token()?];
        if let Some(p) = prompt {
            ids.extend(self.tokenizer.encode(p, false)?);
        }
        self.run(image, ids, None, opts, on_text).await
    }

    /// The answer to `question` (GIT VQA: the question is the text prefix, the answer follows).
    pub async fn ask(
        &self,
        image: &PreparedImage,
        question: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generated> {
        if question.trim().is_empty() {
            return Err(Error::Invalid("the question is empty".into()));
        }
        match &self.model {
            // GIT: the question is the prefix of the text the decoder continues
            Model::Git(_) => {
                let mut ids = vec![self.start_token()?];
                ids.extend(self.tokenizer.encode(question, false)?);
                self.run(image, ids, None, opts, on_text).await
            }
            // BLIP VQA: the question goes through the text encoder; the answer starts at BOS
            Model::Blip(b) if b.is_vqa() => {
                let start = vec![self.start_token()?];
                self.run(image, start, Some(question), opts, on_text).await
            }
            _ => Err(Error::Invalid(format!(
                "{} captions images; it does not answer questions (use a VQA model)",
                self.architecture
            ))),
        }
    }

    async fn run(
        &self,
        image: &PreparedImage,
        prompt: Vec<u32>,
        question: Option<&str>,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generated> {
        let room = match &self.model {
            Model::Git(g) => g.cfg.max_position_embeddings,
            Model::VisionEncoderDecoder(m) => m.max_positions(),
            Model::Blip(b) => b.max_positions(),
            Model::Clip(_) => return Err(self.not_generative()),
        };
        if prompt.len() + opts.max_new_tokens > room {
            return Err(Error::Invalid(format!(
                "the prompt is {} tokens and {} new tokens were asked for; this model holds {room} text positions",
                prompt.len(),
                opts.max_new_tokens
            )));
        }
        let mut new_ids: Vec<u32> = Vec::new();
        let tokenizer = &self.tokenizer;
        let eos = opts.eos_token_ids.clone();
        let mut stream = |id: u32| {
            if !eos.contains(&id) {
                new_ids.push(id);
            }
            match tokenizer.decode(&new_ids) {
                Ok(text) => on_text(&text),
                Err(_) => true,
            }
        };
        let ids = match (&self.model, image) {
            (Model::Git(g), PreparedImage::Git(prefix)) => {
                generate(&mut g.decoder(prefix)?, &prompt, opts, &mut stream).await?
            }
            (Model::VisionEncoderDecoder(m), PreparedImage::VisionEncoderDecoder(enc)) => {
                generate(&mut m.decoder(enc)?, &prompt, opts, &mut stream).await?
            }
            (Model::Blip(b), PreparedImage::Blip(image, memory)) => {
                let asked;
                let memory = match (question, memory) {
                    (Some(q), _) => {
                        let ids = self.tokenizer.encode(q, true)?;
                        if ids.len() > b.max_positions() {
                            return Err(Error::Invalid(format!(
                                "the question is {} tokens; this model reads at most {}",
                                ids.len(),
                                b.max_positions()
                            )));
                        }
                        asked = b.question_memory(image, &ids)?;
                        &asked
                    }
                    (None, Some(m)) => m,
                    (None, None) => {
                        return Err(Error::Invalid("this BLIP model needs a question".into()))
                    }
                };
                generate(&mut b.decoder(memory)?, &prompt, opts, &mut stream).await?
            }
            _ => {
                return Err(Error::Invalid(
                    "this image was prepared for another model".into(),
                ))
            }
        };
        let answer: Vec<u32> = ids[prompt.len()..]
            .iter()
            .copied()
            .filter(|t| !opts.eos_token_ids.contains(t))
            .collect();
        Ok(Generated {
            text: self.tokenizer.decode(&answer)?.trim().to_string(),
            new_tokens: ids.len() - prompt.len(),
            ids,
        })
    }

    /// Probabilities (softmax of logits_per_image) of each text for the image (CLIP).
    pub async fn match_texts(&self, image: &PreparedImage, texts: &[String]) -> Result<Vec<f32>> {
        let (Model::Clip(c), PreparedImage::Clip(img)) = (&self.model, image) else {
            return Err(Error::Invalid(format!(
                "{} does not match images with texts (use a CLIP model)",
                self.architecture
            )));
        };
        if texts.is_empty() {
            return Err(Error::Invalid("give at least one text to match".into()));
        }
        let encoded = texts
            .iter()
            .map(|t| self.tokenizer.encode(t, true))
            .collect::<Result<Vec<_>>>()?;
        let max_pos = c.cfg.text_config.max_position_embeddings;
        let len = encoded.iter().map(Vec::len).max().unwrap_or(1);
        if len > max_pos {
            return Err(Error::Invalid(format!(
                "a text is {len} tokens; this model reads at most {max_pos}"
            )));
        }
        let pad = c.cfg.text_config.eos_token_id;
        let ids: Vec<Vec<u32>> = encoded
            .iter()
            .map(|e| {
                e.iter()
                    .copied()
                    .chain(std::iter::repeat(pad))
                    .take(len)
                    .collect()
            })
            .collect();
        let mask: Vec<Vec<u32>> = encoded
            .iter()
            .map(|e| (0..len).map(|i| (i < e.len()) as u32).collect())
            .collect();
        let txt = c.text_embeds(&ids, &mask)?.to_vec_f32().await?;
        let img = img.to_vec_f32().await?;
        let logits = logits_per_image(img, txt, c.cfg.projection_dim, c.logit_scale);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        Ok(exps.iter().map(|e| e / sum).collect())
    }
}
