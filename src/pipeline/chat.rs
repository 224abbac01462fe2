//! Conversations with instruction models (SmolVLM): the model's chat template renders the
//! messages, the processor expands the image into its tile tokens, and generation resumes the
//! conversation's caches so that each turn computes only what it adds. A [`ChatSession`] holds
//! those caches for one prepared image between turns.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{encode_text, Generated, Model, ModelSpec, Pipeline, PreparedImage, TextStream};
use crate::error::{Error, Result};
use crate::generate::{generate, GenerateOptions};
use crate::image::tiles::expand_images;
use crate::io::chat::Message;
use crate::models::idefics3::{ChatState, Idefics3};

/// config.json architectures (and GGUF `general.architecture` names) that hold conversations.
pub(super) fn is_chat_arch(a: &str) -> bool {
    matches!(
        a,
        "Idefics3ForConditionalGeneration"
            | "SmolVLMForConditionalGeneration"
            | "idefics3"
            | "smolvlm"
    )
}

/// What a caption asks an instruction model (the request SmolVLM's model card shows).
pub const DESCRIBE: &str = "Can you describe this image?";

/// The processor's tokens every Idefics3 prompt uses.
const PROMPT_TOKENS: [&str; 3] = ["<image>", "<fake_token_around_image>", "<global-img>"];

/// The model's small files agree with each other: a chat template, tiles of the vision tower's
/// size, the image-token count processor_config.json states, the processor's tokens known.
pub(super) fn check_files(
    spec: &ModelSpec,
    m: &Idefics3,
    processor_config: Option<&str>,
) -> Result<()> {
    if spec.chat_template.is_none() {
        return Err(Error::Config(
            "this instruction model has no chat template (chat_template.json, chat_template.jinja or tokenizer_config.json's chat_template)".into(),
        ));
    }
    if spec.processor.tile_size() != Some(m.tile_size()) {
        return Err(Error::Config(format!(
            "preprocessor_config.json: max_image_size.longest_edge is {:?}; the vision tower's image_size is {}",
            spec.processor.tile_size(),
            m.tile_size()
        )));
    }
    if let Some(text) = processor_config {
        let v = crate::io::config::value("processor_config.json", text)?;
        if let Some(n) = v.get("image_seq_len").and_then(|n| n.as_u64()) {
            if n as usize != m.image_seq_len() {
                return Err(Error::Config(format!(
                    "processor_config.json: image_seq_len = {n}, but the model makes {} tokens per tile",
                    m.image_seq_len()
                )));
            }
        }
    }
    for t in PROMPT_TOKENS {
        if spec.tokenizer.token_id(t).is_none() {
            return Err(Error::Config(format!(
                "the tokenizer has no {t} token: it is not an Idefics3 / SmolVLM tokenizer"
            )));
        }
    }
    if spec.tokenizer.token_id("<image>") != Some(m.cfg.image_token_id) {
        return Err(Error::Config(format!(
            "config.json: image_token_id = {}, but the tokenizer's <image> is {:?}",
            m.cfg.image_token_id,
            spec.tokenizer.token_id("<image>")
        )));
    }
    Ok(())
}

/// Identifies a prepared image, so that a session never resumes caches of another image.
static NEXT_IMAGE: AtomicU64 = AtomicU64::new(1);

pub(super) fn next_image_id() -> u64 {
    NEXT_IMAGE.fetch_add(1, Ordering::Relaxed)
}

/// The caches of one conversation between its turns. A new session (or one used with another
/// image) starts from nothing; the next turn reuses the longest prefix its prompt shares
/// with what the caches hold (all earlier turns, when the messages only grew).
#[derive(Default)]
pub struct ChatSession {
    state: Option<ChatState>,
    image: u64,
}

impl ChatSession {
    pub fn new() -> ChatSession {
        ChatSession::default()
    }

    /// Positions the caches hold (0 after a reset).
    pub fn cached_tokens(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.ids.len())
    }
}

impl Pipeline {
    /// The chat template's prompt ids for `messages` about an image of `grid` tiles.
    pub fn chat_prompt(&self, messages: &[Message], grid: (usize, usize)) -> Result<Vec<u32>> {
        let Model::Idefics3(m) = &self.model else {
            return Err(self.not_chat());
        };
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| Error::Config("this model has no chat template".into()))?;
        let images: usize = messages.iter().map(Message::images).sum();
        if images > 1 {
            return Err(Error::Invalid(format!(
                "the conversation shows {images} images; glimpse holds one image per conversation"
            )));
        }
        let text = template.render(messages, true, &Default::default())?;
        let grids = if images == 1 { vec![grid] } else { vec![] };
        let expanded = expand_images(&text, &grids, m.image_seq_len())?;
        encode_text(&self.tokenizer, "conversation", &expanded, true)
    }

    fn not_chat(&self) -> Error {
        Error::Invalid(format!(
            "{} does not hold conversations (load an instruction model such as SmolVLM)",
            self.architecture
        ))
    }

    /// The assistant's next message in a conversation about `image`. `messages` is the whole
    /// conversation so far (the user's turns and the assistant's earlier answers), ending with
    /// the user's turn; `session` keeps the caches between calls. `on_text` receives the answer
    /// so far after each token; returning false stops it.
    pub async fn chat(
        &self,
        image: &PreparedImage,
        messages: &[Message],
        session: &mut ChatSession,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generated> {
        let (Model::Idefics3(m), PreparedImage::Idefics3(tokens, grid, image_id)) =
            (&self.model, image)
        else {
            return Err(match &self.model {
                Model::Idefics3(_) => {
                    Error::Invalid("this image was prepared for another model".into())
                }
                _ => self.not_chat(),
            });
        };
        opts.check()?;
        if messages.is_empty() {
            return Err(Error::Invalid("the conversation has no messages".into()));
        }
        let prompt = self.chat_prompt(messages, *grid)?;
        let room = m.text.cfg.max_position_embeddings;
        if prompt.len() + opts.max_new_tokens > room {
            return Err(Error::Invalid(format!(
                "the conversation is {} tokens and {} new tokens were asked for; this model holds {room} positions: start a new conversation, or ask for fewer new tokens",
                prompt.len(),
                opts.max_new_tokens
            )));
        }
        let c = &m.text.cfg;
        let kv = (c.num_hidden_layers
            * 2
            * opts.num_beams
            * (prompt.len() + opts.max_new_tokens)
            * c.kv_heads()
            * c.head_dim()
            * 4) as u64;
        if kv > opts.max_kv_bytes {
            return Err(Error::Invalid(format!(
                "{} beams of {} positions need {:.1} MiB of key/value cache; this request allows {:.1} MiB (max_kv_bytes)",
                opts.num_beams,
                prompt.len() + opts.max_new_tokens,
                kv as f64 / (1 << 20) as f64,
                opts.max_kv_bytes as f64 / (1 << 20) as f64
            )));
        }
        if session.image != *image_id {
            *session = ChatSession {
                state: None,
                image: *image_id,
            };
        }
        let mut text_so_far = TextStream::new(&self.tokenizer, opts, on_text);
        let mut dec = m.decoder(tokens, session.state.take())?;
        let out = generate(&mut dec, &prompt, opts, &mut |new| text_so_far.push(new)).await;
        // after an error the caches may hold part of a step: the next turn starts afresh
        if out.is_ok() {
            session.state = dec.into_state();
        }
        text_so_far.finish(out?, prompt.len())
    }

    /// One question about the image, answered in a new conversation (caption and ask on an
    /// instruction model).
    pub(super) async fn chat_once(
        &self,
        image: &PreparedImage,
        question: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generated> {
        let msgs = [Message::user_with_image(question)];
        self.chat(image, &msgs, &mut ChatSession::new(), opts, on_text)
            .await
    }
}
