//! A loaded model with its tokenizer, image processor and generation defaults, behind the tasks
//! a person asks for: caption an image, answer a question about it, match it against texts.
//! The image is prepared once ([`Pipeline::prepare_image`]) and serves any number of requests.
//! Instruction models (SmolVLM) also hold conversations about it (`chat.rs`).

mod chat;
mod load;
use load::load_files;
mod spec;
mod stream;
pub use chat::ChatSession;
#[cfg(not(target_arch = "wasm32"))]
pub use load::{quantize, stream_dir};
#[cfg(not(target_arch = "wasm32"))]
pub use spec::read_dir_meta;
pub use spec::{build_model, checkpoint_tensors, ModelFiles, ModelSpec, ARCHITECTURES};
use stream::TextStream;

use crate::error::{Error, Result};
use crate::generate::{generate, GenerateOptions};
use crate::image::{decode, ImageProcessorConfig};
use crate::io::chat::ChatTemplate;
use crate::io::config::GenerationConfig;
use crate::io::stream::{LoadOptions, LoadStats, Loader, ModelSource};
use crate::io::tokenizer::Tokenizer;
use crate::io::Vb;
use crate::models::blip::{Blip, BlipMemory};
use crate::models::clip::{logits_per_image, Clip};
use crate::models::git::{Git, ImagePrefix};
use crate::models::idefics3::Idefics3;
use crate::models::vision_encoder_decoder::{EncodedImage, VisionEncoderDecoder};
use crate::tensor::{DType, Device, Tensor};

/// The most key/value cache one generation request may hold by default (all layers and beams,
/// f32; `GenerateOptions::max_kv_bytes`): a request over it (many beams × many new tokens) is
/// refused before anything is allocated. 1 GiB: git-base with 16 beams × 1024 positions.
pub const MAX_KV_BYTES: u64 = 1 << 30;
/// The longest prompt or question text, in UTF-8 bytes, glimpse tokenizes; every model's text
/// positions hold far fewer tokens than this, so a longer text is refused before tokenizing.
pub const MAX_PROMPT_BYTES: usize = 64 << 10;

/// Tokenizes a user's text (a prompt, a question, a label) after checking its length.
fn encode_text(tokenizer: &Tokenizer, what: &str, text: &str, special: bool) -> Result<Vec<u32>> {
    if text.len() > MAX_PROMPT_BYTES {
        return Err(Error::Invalid(format!(
            "the {what} is {} bytes long; glimpse reads at most {MAX_PROMPT_BYTES} bytes (no model here holds more than a few hundred tokens)",
            text.len()
        )));
    }
    tokenizer.encode(text, special)
}

/// The most texts one CLIP request may match an image against (they run as one batch).
pub const MAX_TEXTS: usize = 256;

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
    /// holds a conversation about the image, answers in sentences (SmolVLM)
    Chat,
}

pub enum Model {
    Git(Box<Git>),
    Clip(Box<Clip>),
    VisionEncoderDecoder(Box<VisionEncoderDecoder>),
    Blip(Box<Blip>),
    Idefics3(Box<Idefics3>),
}

impl Model {
    /// The rows of the text embedding table (the ids the model can read).
    pub fn vocab_size(&self) -> usize {
        match self {
            Model::Git(g) => g.cfg.vocab_size,
            Model::Clip(c) => c.cfg.text_config.vocab_size,
            Model::VisionEncoderDecoder(m) => m.vocab_size(),
            Model::Blip(b) => b.cfg.text_config.vocab_size,
            Model::Idefics3(m) => m.cfg.text_config.vocab_size,
        }
    }
}

/// An image ready for requests: its pixels encoded once.
pub enum PreparedImage {
    Git(ImagePrefix),
    Clip(Tensor),
    VisionEncoderDecoder(EncodedImage),
    /// image embeddings, and for captioning models the decoder's memory of them
    Blip(Tensor, Option<BlipMemory>),
    /// the image tokens of every tile `[N · seq, D]`, the tile grid (rows, cols), and an id
    /// that tells a conversation which image its caches belong to
    Idefics3(Tensor, (usize, usize), u64),
}

/// Preprocessed pixels `[N, 3, H, W]` (N = 1, or the tiles of a tiling processor) and, for
/// tiles, their grid (rows, cols).
pub struct ImagePixels {
    pub tensor: Tensor,
    pub grid: (usize, usize),
}

impl Drop for Pipeline {
    /// The model's weights leave the GPU with it (exact buffers, destroyed when dropped); the
    /// pool's free activation buffers go too, so a page that swaps models does not keep the old
    /// one's working memory.
    fn drop(&mut self) {
        if let Device::Gpu(ctx) = &self.device {
            ctx.trim_pool();
        }
    }
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
    chat_template: Option<ChatTemplate>,
    architecture: String,
    pub device: Device,
}

impl Pipeline {
    /// Loads a model from files in memory; Linear weights are stored as `dtype` (quantized
    /// while loading).
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Pipeline> {
        let opts = LoadOptions {
            dtype,
            device: Some(device.clone()),
            write_gguf: false,
        };
        Pipeline::from_loader(load_files(files, opts)?).map(|(p, _)| p)
    }

    /// Loads a model folder (or a `.gguf` file) from disk, streaming its weights: the process
    /// never holds the checkpoint's bytes, only the model.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_path(
        path: &std::path::Path,
        device: &Device,
        dtype: DType,
    ) -> Result<(Pipeline, LoadStats)> {
        let (meta, _) = read_dir_meta(path)?;
        let spec = if meta.contains_key("config.json") {
            Some(ModelSpec::from_files(&meta)?)
        } else {
            None
        };
        let opts = LoadOptions {
            dtype,
            device: Some(device.clone()),
            write_gguf: false,
        };
        Pipeline::from_loader(stream_dir(path, spec, opts, &mut |_| Ok(()))?)
    }

    /// The model a spec describes with seeded random weights (benchmarks and real-shape tests
    /// without a checkpoint).
    pub fn from_spec_random(spec: ModelSpec, device: &Device) -> Result<Pipeline> {
        let w = crate::io::Weights::random(1);
        let model = spec.build(&Vb::new(&w, device, DType::F32))?;
        Ok(Pipeline::from_parts(model, spec, device.clone()))
    }

    fn from_parts(model: Model, spec: ModelSpec, device: Device) -> Pipeline {
        Pipeline {
            model,
            architecture: spec.architecture,
            tokenizer: spec.tokenizer,
            processor: spec.processor,
            generation: spec.generation,
            chat_template: spec.chat_template,
            device,
        }
    }

    /// The pipeline of a loader whose files have all ended.
    pub fn from_loader(mut loader: Loader<ModelSpec>) -> Result<(Pipeline, LoadStats)> {
        let (model, stats) = loader.finish()?;
        let model = model.ok_or_else(|| Error::Invalid("the load had no device".into()))?;
        let device = loader
            .device()
            .ok_or_else(|| Error::Invalid("the load had no device".into()))?;
        let spec = loader
            .into_spec()
            .ok_or_else(|| Error::Invalid("the load has no model description".into()))?;
        Ok((Pipeline::from_parts(model, spec, device), stats))
    }

    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn task(&self) -> Task {
        match &self.model {
            Model::Git(_) | Model::VisionEncoderDecoder(_) => Task::Caption,
            Model::Blip(b) if b.is_vqa() => Task::Answer,
            Model::Blip(_) => Task::Caption,
            Model::Clip(_) => Task::Match,
            Model::Idefics3(_) => Task::Chat,
        }
    }

    /// Generation options from generation_config.json (and the model's special tokens).
    pub fn default_options(&self) -> GenerateOptions {
        let mut opts = GenerateOptions::from_config(&self.generation);
        if let Model::Blip(b) = &self.model {
            // BLIP's generate() passes sep as EOS whatever the configs say (its text_config's
            // eos_token_id, 2, is never used)
            opts.eos_token_ids = vec![b.cfg.text_config.sep_token_id];
        }
        if opts.eos_token_ids.is_empty() {
            match &self.model {
                Model::Git(g) => opts.eos_token_ids.extend(g.cfg.eos_token_id),
                Model::VisionEncoderDecoder(m) => opts.eos_token_ids.extend(m.cfg.eos_token_id),
                Model::Blip(b) => opts.eos_token_ids.push(b.cfg.text_config.sep_token_id),
                Model::Idefics3(m) => opts
                    .eos_token_ids
                    .extend(m.cfg.text_config.eos_token_id.iter().copied()),
                Model::Clip(_) => {}
            }
        }
        opts
    }

    /// Decodes, preprocesses and encodes an image (PNG, JPEG, WebP or GIF bytes).
    pub fn prepare_image(&self, bytes: &[u8]) -> Result<PreparedImage> {
        let pixels = self.pixels(bytes)?;
        self.encode_pixels(&pixels)
    }

    /// Decodes and preprocesses an image into the model's pixel tensor: `[1, 3, H, W]`, or
    /// the tiles `[N, 3, T, T]` of a tiling processor (SmolVLM).
    pub fn pixels(&self, bytes: &[u8]) -> Result<ImagePixels> {
        let img = decode(bytes)?;
        if let Model::Idefics3(_) = &self.model {
            let t = self.processor.preprocess_tiles(&img)?;
            let side = self.processor.tile_size().unwrap_or(0);
            let data: Vec<f32> = t
                .frames
                .iter()
                .flat_map(|p| p.data.iter().copied())
                .collect();
            return Ok(ImagePixels {
                tensor: Tensor::from_f32(&data, &[t.frames.len(), 3, side, side], &self.device)?,
                grid: (t.rows, t.cols),
            });
        }
        let px = self.processor.preprocess(&img)?;
        Ok(ImagePixels {
            tensor: Tensor::from_f32(&px.data, &[1, 3, px.height, px.width], &self.device)?,
            grid: (0, 0),
        })
    }

    /// Runs the vision side on preprocessed pixels (see [`Pipeline::pixels`]).
    pub fn encode_pixels(&self, pixels: &ImagePixels) -> Result<PreparedImage> {
        let grid = pixels.grid;
        let pixels = &pixels.tensor;
        match &self.model {
            Model::Idefics3(m) => Ok(PreparedImage::Idefics3(
                m.encode_image(pixels)?,
                grid,
                chat::next_image_id(),
            )),
            Model::Git(g) => {
                let visual = g.encode_image(pixels)?;
                Ok(PreparedImage::Git(g.image_prefix(&visual)?))
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
    pub fn start_token(&self) -> Result<u32> {
        let g = &self.generation;
        let id = match &self.model {
            Model::Git(m) => g.bos_token_id.or(m.cfg.bos_token_id),
            Model::VisionEncoderDecoder(m) => g
                .decoder_start_token_id
                .or(m.cfg.decoder_start_token_id)
                .or(g.bos_token_id),
            Model::Blip(b) => Some(b.cfg.text_config.bos_token_id),
            Model::Clip(_) | Model::Idefics3(_) => return Err(self.not_generative()),
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
        if self.task() == Task::Chat {
            // an instruction model is asked for a description (or the given instruction)
            let q = prompt.unwrap_or(chat::DESCRIBE);
            return self.chat_once(image, q, opts, on_text).await;
        }
        let mut ids = vec![self.start_token()?];
        if let Some(p) = prompt {
            ids.extend(encode_text(&self.tokenizer, "prompt", p, false)?);
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
            Model::Idefics3(_) => self.chat_once(image, question, opts, on_text).await,
            // GIT: the question is the prefix of the text the decoder continues
            Model::Git(_) => {
                let mut ids = vec![self.start_token()?];
                ids.extend(encode_text(&self.tokenizer, "question", question, false)?);
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
            Model::Idefics3(_) => {
                return Err(Error::Invalid("a chat model answers through chat".into()))
            }
            Model::Git(g) => g.cfg.max_position_embeddings,
            Model::VisionEncoderDecoder(m) => m.max_positions(),
            Model::Blip(b) => b.max_positions(),
            Model::Clip(_) => return Err(self.not_generative()),
        };
        opts.check()?;
        if prompt.len() + opts.max_new_tokens > room {
            return Err(Error::Invalid(format!(
                "the prompt is {} tokens and {} new tokens were asked for; this model holds {room} text positions",
                prompt.len(),
                opts.max_new_tokens
            )));
        }
        // the KV caches hold what this request needs (they grow if it ever needs more)
        let text = prompt.len() + opts.max_new_tokens;
        let (layers, width, prefix) = match (&self.model, image) {
            (Model::Git(g), PreparedImage::Git(p)) => (
                g.cfg.num_hidden_layers,
                g.cfg.hidden_size,
                p.num_image_tokens,
            ),
            (Model::VisionEncoderDecoder(m), _) => (m.decoder_layers(), m.decoder_width(), 0),
            (Model::Blip(b), _) => (
                b.cfg.text_config.num_hidden_layers,
                b.cfg.text_config.hidden_size,
                0,
            ),
            _ => (0, 0, 0),
        };
        // keys and values, f32, per layer, beam and cached position
        let kv = (layers * 2 * opts.num_beams * (prefix + text) * width * 4) as u64;
        if kv > opts.max_kv_bytes {
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            return Err(Error::Invalid(format!(
                "{} beams of {} positions need {:.1} MiB of key/value cache; this request allows {:.1} MiB (max_kv_bytes): ask for fewer beams or new tokens",
                opts.num_beams,
                prefix + text,
                mib(kv),
                mib(opts.max_kv_bytes)
            )));
        }
        let mut text_so_far = TextStream::new(&self.tokenizer, opts, on_text);
        let mut stream = |new: &[u32]| text_so_far.push(new);
        let ids = match (&self.model, image) {
            (Model::Git(g), PreparedImage::Git(prefix)) => {
                generate(&mut g.decoder(prefix, text)?, &prompt, opts, &mut stream).await?
            }
            (Model::VisionEncoderDecoder(m), PreparedImage::VisionEncoderDecoder(enc)) => {
                generate(&mut m.decoder(enc, text)?, &prompt, opts, &mut stream).await?
            }
            (Model::Blip(b), PreparedImage::Blip(image, memory)) => {
                let asked;
                let memory = match (question, memory) {
                    (Some(q), _) => {
                        let ids = encode_text(&self.tokenizer, "question", q, true)?;
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
                generate(&mut b.decoder(memory, text)?, &prompt, opts, &mut stream).await?
            }
            _ => {
                return Err(Error::Invalid(
                    "this image was prepared for another model".into(),
                ))
            }
        };
        text_so_far.finish(ids, prompt.len())
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
        if texts.len() > MAX_TEXTS {
            return Err(Error::Invalid(format!(
                "{} texts were given; glimpse matches at most {MAX_TEXTS} texts per request",
                texts.len()
            )));
        }
        let encoded = texts
            .iter()
            .map(|t| encode_text(&self.tokenizer, "text", t, true))
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
