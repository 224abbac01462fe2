//! tokenizer.json through the `tokenizers` crate.

use crate::error::{Error, Result};

/// A Hugging Face fast tokenizer.
pub struct Tokenizer(tokenizers::Tokenizer);

impl Tokenizer {
    pub fn from_bytes(bytes: &[u8]) -> Result<Tokenizer> {
        tokenizers::Tokenizer::from_bytes(bytes)
            .map(Tokenizer)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))
    }

    /// Ids of `text`, with or without the template's special tokens ([CLS] … [SEP], BOS … EOS).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .0
            .encode(text, special)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.0
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.0.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.0.get_vocab_size(true)
    }
}
