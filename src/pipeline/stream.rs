//! The text a request streams: the new tokens decoded after each step, EOS left out, cut at
//! stop strings; and the request's result from the generated ids.

use super::Generated;
use crate::error::{Error, Result};
use crate::generate::GenerateOptions;
use crate::io::tokenizer::Tokenizer;

/// The text of the new tokens for a request's `on_text` after each token: EOS left out, cut
/// before the first stop string (which also stops the generation); a decode error is kept for
/// the request.
pub(crate) struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    opts: &'a GenerateOptions,
    on_text: &'a mut dyn FnMut(&str) -> bool,
    error: Option<Error>,
}

impl<'a> TextStream<'a> {
    pub(crate) fn new(
        tokenizer: &'a Tokenizer,
        opts: &'a GenerateOptions,
        on_text: &'a mut dyn FnMut(&str) -> bool,
    ) -> TextStream<'a> {
        TextStream {
            tokenizer,
            opts,
            on_text,
            error: None,
        }
    }

    fn text(&self, new: &[u32]) -> Result<(String, bool)> {
        let eos = &self.opts.eos_token_ids;
        let shown: Vec<u32> = new.iter().copied().filter(|t| !eos.contains(t)).collect();
        let text = self.tokenizer.decode(&shown)?;
        let stop = self
            .opts
            .stop_strings
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min();
        Ok(match stop {
            Some(at) => (text[..at].to_string(), true),
            None => (text, false),
        })
    }

    /// The new tokens so far; false stops the generation.
    pub(crate) fn push(&mut self, new: &[u32]) -> bool {
        match self.text(new) {
            Ok((text, stopped)) => (self.on_text)(&text) && !stopped,
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    /// The request's result from the generated `ids` (prompt included).
    pub(crate) fn finish(self, ids: Vec<u32>, prompt: usize) -> Result<Generated> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let (text, _) = self.text(&ids[prompt..])?;
        Ok(Generated {
            text: text.trim().to_string(),
            new_tokens: ids.len() - prompt,
            ids,
        })
    }
}
