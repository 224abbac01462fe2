//! config.json and generation_config.json, with Hugging Face field names.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Parses a JSON config, naming the file in errors.
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Config(format!("{file}: {e}")))
}

/// The architecture named by config.json (`architectures[0]`, else `model_type`).
pub fn architecture(config_json: &str) -> Result<String> {
    #[derive(Deserialize)]
    struct Head {
        architectures: Option<Vec<String>>,
        model_type: Option<String>,
    }
    let head: Head = parse("config.json", config_json)?;
    head.architectures
        .and_then(|a| a.into_iter().next())
        .or(head.model_type)
        .ok_or_else(|| {
            Error::Config(
                "config.json names no architecture (no \"architectures\" or \"model_type\")".into(),
            )
        })
}

/// generation_config.json: the defaults of the generation loop.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub decoder_start_token_id: Option<u32>,
    pub max_new_tokens: Option<usize>,
    pub max_length: Option<usize>,
    pub min_new_tokens: Option<usize>,
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f32>,
    pub early_stopping: Option<serde_json::Value>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub no_repeat_ngram_size: Option<usize>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(v) => vec![v],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => vec![],
    })
}

/// Activation functions by their Hugging Face names (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    #[serde(rename = "gelu")]
    Gelu,
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

/// Serde defaults shared by the model configs (the values Hugging Face's config classes use).
pub mod defaults {
    use super::Activation;

    pub fn eps_1e5() -> f64 {
        1e-5
    }
    pub fn eps_1e12() -> f64 {
        1e-12
    }
    pub fn gelu() -> Activation {
        Activation::Gelu
    }
    pub fn gelu_new() -> Activation {
        Activation::GeluTanh
    }
    pub fn quick_gelu() -> Activation {
        Activation::QuickGelu
    }
    pub fn three() -> usize {
        3
    }
    pub fn yes() -> bool {
        true
    }
}
