//! The files of a Hugging Face model folder as the hub holds it: which small files glimpse
//! reads, and which weight files (in load order) a listing offers.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// The small files glimpse reads from a model folder (all optional but config.json, the
/// preprocessor config and one tokenizer form).
pub const META_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
    "processor_config.json",
];

/// Weight files in the order glimpse prefers them: safetensors, then PyTorch's format.
pub const WEIGHT_FILES: &[&str] = &[
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// The weight files of a load, in order, with a sharded index's tensor → file map.
#[derive(Debug, Clone)]
pub struct WeightSet {
    pub files: Vec<String>,
    pub index: Option<HashMap<String, String>>,
}

/// The shards a `*.index.json` names (its `weight_map`), in file order.
pub fn parse_index(name: &str, bytes: &[u8]) -> Result<WeightSet> {
    let v = crate::io::config::value(
        name,
        std::str::from_utf8(bytes).map_err(|_| Error::Config(format!("{name} is not UTF-8")))?,
    )?;
    let map: HashMap<String, String> = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Config(format!("{name} has no weight_map")))?
        .iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|s| (k.clone(), s.to_string()))
                .ok_or_else(|| Error::Config(format!("{name}: weight_map.{k} is not a file name")))
        })
        .collect::<Result<_>>()?;
    let mut files: Vec<String> = map.values().cloned().collect();
    files.sort();
    files.dedup();
    if let Some(bad) = files
        .iter()
        .find(|f| f.contains("..") || f.starts_with('/') || f.contains('\\'))
    {
        return Err(Error::Config(format!(
            "{name} names a shard outside the folder: {bad}"
        )));
    }
    Ok(WeightSet {
        files,
        index: Some(map),
    })
}

/// Which weight files to load, from the names a folder has (`read` gives an index's bytes).
pub fn pick_weights(
    names: &[String],
    read: &mut dyn FnMut(&str) -> Result<Vec<u8>>,
) -> Result<WeightSet> {
    let has = |n: &str| names.iter().any(|x| x == n);
    for w in WEIGHT_FILES {
        if !has(w) {
            continue;
        }
        return if w.ends_with(".index.json") {
            parse_index(w, &read(w)?)
        } else {
            Ok(WeightSet {
                files: vec![w.to_string()],
                index: None,
            })
        };
    }
    let ggufs: Vec<&String> = names.iter().filter(|n| n.ends_with(".gguf")).collect();
    if let [one] = ggufs.as_slice() {
        return Ok(WeightSet {
            files: vec![one.to_string()],
            index: None,
        });
    }
    Err(Error::Weights(format!(
        "no weights: the folder has none of {} (or one .gguf file)",
        WEIGHT_FILES.join(", ")
    )))
}
