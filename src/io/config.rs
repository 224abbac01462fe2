//! config.json and generation_config.json, with Hugging Face field names.
//!
//! JSON is read as Python's `json` reads it: a key given twice keeps its last value (real hub
//! files have duplicate keys, e.g. blip-vqa-base's tokenizer_config.json), and a `null` field is
//! the same as an absent one, so the config class's default applies (2022-era configs are full
//! dumps with `null` for every unset field).

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Parses JSON into a generic value as Python's `json.loads` does (the last of duplicate keys
/// wins), naming the file in errors.
pub fn value(file: &str, text: &str) -> Result<serde_json::Value> {
    // serde_json's map keeps the last value of a repeated key, as Python's dict does
    serde_json::from_str(text).map_err(|e| Error::Config(format!("{file}: {e}")))
}

/// Removes `null` members from every object, recursively.
pub fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Parses a JSON config into `T`, naming the file in errors; duplicate keys and `null` fields
/// are read as transformers reads them (see the module comment).
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T> {
    let mut v = value(file, text)?;
    strip_nulls(&mut v);
    from_value(file, v)
}

/// Deserializes an already parsed (and null-stripped) value.
pub fn from_value<T: DeserializeOwned>(file: &str, v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::Config(format!("{file}: {e}")))
}

/// A model config class: its Hugging Face defaults (what `XConfig()` holds), applied under
/// every field the file leaves out, as transformers does when it builds the config object.
pub trait HfConfig: DeserializeOwned {
    /// The class defaults as JSON (nested configs included).
    const DEFAULTS: &'static str;
    /// What the class's `__init__` derives after reading the fields (e.g. BLIP sets the text
    /// tower's `encoder_hidden_size` from the vision width).
    fn finish(&mut self) {}
    /// Checks the values once, after defaults and `finish`: every later computation (head
    /// widths, patch grids, table sizes) may then rely on them. Errors name the field.
    fn validate(&self, _file: &str) -> Result<()> {
        Ok(())
    }
}

/// The largest width (hidden or intermediate size) a config may declare.
pub const MAX_WIDTH: usize = 1 << 16;
/// The most layers a tower may declare.
pub const MAX_LAYERS: usize = 512;
/// The largest vocabulary a config may declare.
pub const MAX_VOCAB: usize = 1 << 21;
/// The most learned positions a config may declare (the position table is a weight).
pub const MAX_POSITIONS: usize = 1 << 16;
/// The largest input image side (`image_size`) a vision config may declare.
pub const MAX_IMAGE_SIZE: usize = 4096;

/// Checks of config values, each naming its field (`vision_config.num_attention_heads`).
pub struct Checks<'a> {
    file: &'a str,
    prefix: &'a str,
}

impl<'a> Checks<'a> {
    /// Checks of the fields of `file`, under `prefix` (e.g. `"text_config."`; may be empty).
    pub fn new(file: &'a str, prefix: &'a str) -> Checks<'a> {
        Checks { file, prefix }
    }

    /// The error for `field` (its file and prefix named), with `msg` after the name.
    pub fn err(&self, field: &str, msg: String) -> Error {
        Error::Config(format!("{}: {}{field} {msg}", self.file, self.prefix))
    }

    /// `lo <= v <= hi`.
    pub fn range(&self, field: &str, v: usize, lo: usize, hi: usize) -> Result<()> {
        if v < lo || v > hi {
            return Err(self.err(field, format!("= {v}; it must be between {lo} and {hi}")));
        }
        Ok(())
    }

    /// A width of at least 1, at most [`MAX_WIDTH`].
    pub fn width(&self, field: &str, v: usize) -> Result<()> {
        self.range(field, v, 1, MAX_WIDTH)
    }

    /// A layer count (0 is a valid, empty tower).
    pub fn layers(&self, field: &str, v: usize) -> Result<()> {
        self.range(field, v, 0, MAX_LAYERS)
    }

    /// At least one head, and the heads divide the width.
    pub fn heads(&self, field: &str, heads: usize, width_field: &str, width: usize) -> Result<()> {
        self.range(field, heads, 1, MAX_WIDTH)?;
        if !width.is_multiple_of(heads) {
            return Err(self.err(
                field,
                format!(
                    "= {heads} does not divide {}{width_field} = {width}",
                    self.prefix
                ),
            ));
        }
        Ok(())
    }

    /// The fields every transformer tower names alike: `hidden_size`, `num_attention_heads`
    /// (dividing it), `intermediate_size`, `num_hidden_layers`, `layer_norm_eps`.
    pub fn tower(
        &self,
        hidden: usize,
        heads: usize,
        intermediate: usize,
        layers: usize,
        eps: f64,
    ) -> Result<()> {
        self.width("hidden_size", hidden)?;
        self.heads("num_attention_heads", heads, "hidden_size", hidden)?;
        self.width("intermediate_size", intermediate)?;
        self.layers("num_hidden_layers", layers)?;
        self.eps("layer_norm_eps", eps)
    }

    pub fn vocab(&self, field: &str, v: usize) -> Result<()> {
        self.range(field, v, 1, MAX_VOCAB)
    }

    pub fn positions(&self, field: &str, v: usize) -> Result<()> {
        self.range(field, v, 1, MAX_POSITIONS)
    }

    /// A LayerNorm epsilon: finite and not negative.
    pub fn eps(&self, field: &str, v: f64) -> Result<()> {
        if !v.is_finite() || v < 0.0 {
            return Err(self.err(field, format!("= {v}; it must be a finite number >= 0")));
        }
        Ok(())
    }

    /// A token id the model will embed: inside the vocabulary.
    pub fn token(&self, field: &str, id: Option<u32>, vocab: usize) -> Result<()> {
        match id {
            Some(id) if id as usize >= vocab => Err(self.err(
                field,
                format!("= {id} is outside the vocabulary of {vocab} tokens"),
            )),
            _ => Ok(()),
        }
    }

    /// A square image of `image_size` cut into `patch_size` patches, RGB.
    pub fn image(&self, image_size: usize, patch_size: usize, channels: usize) -> Result<()> {
        self.range("image_size", image_size, 1, MAX_IMAGE_SIZE)?;
        self.range("patch_size", patch_size, 1, image_size)?;
        if !image_size.is_multiple_of(patch_size) {
            return Err(self.err(
                "image_size",
                format!("= {image_size} is not a multiple of patch_size {patch_size}"),
            ));
        }
        if channels != 3 {
            return Err(self.err(
                "num_channels",
                format!("= {channels}; glimpse feeds RGB images (3 channels)"),
            ));
        }
        Ok(())
    }
}

/// Recursively puts `given` over `base`: objects merge key by key, anything else replaces.
pub fn merge(base: &mut serde_json::Value, given: serde_json::Value) {
    match (base, given) {
        (serde_json::Value::Object(b), serde_json::Value::Object(g)) => {
            for (k, v) in g {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// A config of class `T` from the text of `file`: nulls dropped, class defaults filled in.
pub fn parse_config<T: HfConfig>(file: &str, text: &str) -> Result<T> {
    config_from_value(file, value(file, text)?)
}

/// As [`parse_config`] for an already parsed value (a nested config, e.g. an encoder's).
pub fn config_from_value<T: HfConfig>(file: &str, mut given: serde_json::Value) -> Result<T> {
    strip_nulls(&mut given);
    let mut v: serde_json::Value = serde_json::from_str(T::DEFAULTS)
        .map_err(|e| Error::Config(format!("built-in defaults of {file}: {e}")))?;
    merge(&mut v, given);
    let mut cfg: T = from_value(file, v)?;
    cfg.finish();
    cfg.validate(file)?;
    Ok(cfg)
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
    /// generation stops when the text so far contains one of these (one string or a list)
    #[serde(default, deserialize_with = "one_or_many")]
    pub stop_strings: Vec<String>,
}

/// A field that is one value, a list of them, or null (eos_token_id, stop_strings).
pub fn one_or_many<'de, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
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
    pub fn silu() -> Activation {
        Activation::Silu
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
