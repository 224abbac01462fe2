//! Tokenizers through the `tokenizers` crate: from `tokenizer.json` when the repo has one, else
//! built from the slow tokenizer's files as transformers' fast-tokenizer conversion builds them
//! (`convert_slow_tokenizer.py`): `vocab.txt` as BERT WordPiece (honouring `do_lower_case`),
//! `vocab.json` + `merges.txt` as byte-level BPE (GPT-2) or CLIP's BPE. The result is the same
//! `tokenizer.json` document transformers would write, so it can be kept in a GGUF file.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::io::config::value;

/// A Hugging Face fast tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    json: String,
    /// the special added tokens (skipped when decoding)
    special: std::collections::HashSet<String>,
}

/// The tokenizer files a model folder may hold (any may be missing).
pub struct TokenizerFiles<'a> {
    pub tokenizer_json: Option<&'a [u8]>,
    pub vocab_txt: Option<&'a [u8]>,
    pub vocab_json: Option<&'a [u8]>,
    pub merges_txt: Option<&'a [u8]>,
    pub tokenizer_config: Option<&'a [u8]>,
    pub special_tokens_map: Option<&'a [u8]>,
    pub added_tokens: Option<&'a [u8]>,
    /// `model_type` of config.json: picks CLIP's BPE for `vocab.json` without a tokenizer_class
    pub model_type: &'a str,
}

fn text<'a>(file: &str, b: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(b).map_err(|_| Error::Tokenizer(format!("{file} is not UTF-8 text")))
}

/// Whether `v` or anything inside it is an object of `"type": ty` (nesting is bounded by
/// serde_json's recursion limit).
fn uses_type(v: &Value, ty: &str) -> bool {
    match v {
        Value::Object(o) => {
            o.get("type").and_then(Value::as_str) == Some(ty)
                || o.values().any(|x| uses_type(x, ty))
        }
        Value::Array(a) => a.iter().any(|x| uses_type(x, ty)),
        _ => false,
    }
}

/// A special token as the config files give it: a string or an AddedToken dict.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

impl Tokenizer {
    pub fn from_bytes(bytes: &[u8]) -> Result<Tokenizer> {
        // the JSON is read whole before tokenizers reads it: its decoder field is deserialized
        // with an `expect` (tokenizers 0.23 decoders/mod.rs), so a syntax error or a string
        // escape that is no character (a lone surrogate) inside it panicked instead of failing
        // (found by fuzzing). Strings are decoded here too (a serde_json::Value, not IgnoredAny,
        // which lets a bad escape through).
        let doc = serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json is not valid JSON: {e}")))?;
        // SentencePiece's precompiled charsmap is read by tokenizers with an `expect`, reserves
        // what its first 4 bytes claim (up to 8 GB) and indexes its trie unchecked; none of the
        // tokenizers of the models glimpse runs (WordPiece, byte-level and CLIP BPE) uses it
        if doc
            .get("normalizer")
            .is_some_and(|n| uses_type(n, "Precompiled"))
        {
            return Err(Error::Tokenizer(
                "tokenizer.json: the Precompiled normalizer (a SentencePiece charsmap) is not supported; glimpse reads WordPiece and BPE tokenizers".into(),
            ));
        }
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        let special = inner
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special)
            .map(|t| t.content)
            .collect();
        Ok(Tokenizer {
            inner,
            json: text("tokenizer.json", bytes)?.to_string(),
            special,
        })
    }

    /// The tokenizer of a model folder: tokenizer.json, else the slow tokenizer's files.
    pub fn from_files(f: &TokenizerFiles) -> Result<Tokenizer> {
        if let Some(b) = f.tokenizer_json {
            return Tokenizer::from_bytes(b);
        }
        // special_tokens_map.json's keys win over tokenizer_config.json's, as transformers
        // merges them; either may repeat a key (the last wins, as in Python)
        let mut cfg = serde_json::Map::new();
        for (name, b) in [
            ("special_tokens_map.json", f.special_tokens_map),
            ("tokenizer_config.json", f.tokenizer_config),
        ] {
            if let Some(b) = b {
                if let Value::Object(m) = value(name, text(name, b)?)? {
                    for (k, v) in m {
                        cfg.entry(k).or_insert(v);
                    }
                }
            }
        }
        let class = cfg
            .get("tokenizer_class")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim_end_matches("Fast")
            .to_string();
        let added: BTreeMap<String, u32> = match f.added_tokens {
            Some(b) => serde_json::from_str(text("added_tokens.json", b)?)
                .map_err(|e| Error::Tokenizer(format!("added_tokens.json: {e}")))?,
            None => BTreeMap::new(),
        };
        let doc = match (f.vocab_txt, f.vocab_json, f.merges_txt) {
            (Some(v), _, _) if class.is_empty() || class.contains("Bert") => {
                wordpiece(text("vocab.txt", v)?, &cfg, &added)?
            }
            (_, Some(v), Some(m)) => {
                let clip = class == "CLIPTokenizer" || (class.is_empty() && f.model_type == "clip");
                bpe(text("vocab.json", v)?, text("merges.txt", m)?, &cfg, &added, clip)?
            }
            _ => {
                return Err(Error::Tokenizer(format!(
                    "the model has no tokenizer glimpse can read: tokenizer.json, or vocab.txt (BERT), or vocab.json with merges.txt (GPT-2, CLIP){}",
                    if class.is_empty() { String::new() } else { format!("; tokenizer_class is {class}") }
                )))
            }
        };
        Tokenizer::from_bytes(doc.to_string().as_bytes())
    }

    /// The tokenizer.json document (for a GGUF file's metadata).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Ids of `text`, with or without the template's special tokens ([CLS] … [SEP], BOS … EOS).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        // nothing to decode (no ids, or only special or unknown ones) is the empty text: the
        // decoders are not called, as tokenizers' BPE decoder (CLIP's) overflows on no tokens
        // (`tokens.len() - 1`, a panic where overflow checks are on; found by fuzzing)
        // (tokenizers skips a token whose text is a special token's, whatever its id)
        let decodable = |id: &u32| {
            self.inner
                .id_to_token(*id)
                .is_some_and(|t| !self.special.contains(&t))
        };
        if !ids.iter().any(decodable) {
            return Ok(String::new());
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest id the tokenizer can produce (its vocabulary and added tokens).
    pub fn max_id(&self) -> Option<u32> {
        self.inner.get_vocab(true).into_values().max()
    }
}

fn added_token(id: u32, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": !special, "special": special})
}

/// The added tokens: every special token the config names that the vocabulary (or
/// added_tokens.json) holds, and added_tokens.json's other entries.
fn added_tokens(
    vocab: &serde_json::Map<String, Value>,
    cfg: &serde_json::Map<String, Value>,
    added: &BTreeMap<String, u32>,
    special_keys: &[&str],
) -> Vec<Value> {
    let mut specials: Vec<String> = special_keys
        .iter()
        .filter_map(|k| token_str(cfg.get(*k)))
        .collect();
    if let Some(Value::Array(extra)) = cfg.get("additional_special_tokens") {
        specials.extend(extra.iter().filter_map(|v| token_str(Some(v))));
    }
    let id_of = |t: &str| {
        vocab
            .get(t)
            .and_then(Value::as_u64)
            .map(|i| i as u32)
            .or_else(|| added.get(t).copied())
    };
    let mut out: BTreeMap<u32, Value> = BTreeMap::new();
    for t in &specials {
        if let Some(id) = id_of(t) {
            out.insert(id, added_token(id, t, true));
        }
    }
    for (t, &id) in added {
        out.entry(id)
            .or_insert_with(|| added_token(id, t, specials.contains(t)));
    }
    out.into_values().collect()
}

/// transformers' BertConverter.
fn wordpiece(
    vocab_txt: &str,
    cfg: &serde_json::Map<String, Value>,
    added: &BTreeMap<String, u32>,
) -> Result<Value> {
    let mut vocab = serde_json::Map::new();
    for (i, line) in vocab_txt.lines().enumerate() {
        // BertTokenizer's load_vocab: one token per line, trailing newline stripped
        vocab
            .entry(line.trim_end_matches('\r').to_string())
            .or_insert(json!(i));
    }
    if vocab.is_empty() {
        return Err(Error::Tokenizer("vocab.txt is empty".into()));
    }
    let get = |k: &str, d: &str| token_str(cfg.get(k)).unwrap_or_else(|| d.to_string());
    let (cls, sep, unk) = (
        get("cls_token", "[CLS]"),
        get("sep_token", "[SEP]"),
        get("unk_token", "[UNK]"),
    );
    let id = |t: &str| -> Result<u64> {
        vocab
            .get(t)
            .and_then(Value::as_u64)
            .or_else(|| added.get(t).map(|&i| i as u64))
            .ok_or_else(|| Error::Tokenizer(format!("vocab.txt has no {t} token")))
    };
    let flag = |k: &str, d: bool| cfg.get(k).and_then(Value::as_bool).unwrap_or(d);
    let lowercase = flag("do_lower_case", true);
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let added_list = added_tokens(
        &vocab,
        cfg,
        added,
        &[
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
            "bos_token",
            "eos_token",
        ],
    );
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_list,
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": true,
            "handle_chinese_chars": flag("tokenize_chinese_chars", true),
            "strip_accents": cfg.get("strip_accents").cloned().unwrap_or(Value::Null),
            "lowercase": lowercase
        },
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special(&cls, 0), seq("A", 0), special(&sep, 0)],
            "pair": [special(&cls, 0), seq("A", 0), special(&sep, 0), seq("B", 1), special(&sep, 1)],
            "special_tokens": {
                cls.clone(): {"id": cls, "ids": [id(&cls)?], "tokens": [cls]},
                sep.clone(): {"id": sep, "ids": [id(&sep)?], "tokens": [sep]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {
            "type": "WordPiece",
            "unk_token": unk,
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": vocab
        }
    }))
}

/// transformers' GPT2Converter, or its CLIPConverter (`clip`).
fn bpe(
    vocab_json: &str,
    merges_txt: &str,
    cfg: &serde_json::Map<String, Value>,
    added: &BTreeMap<String, u32>,
    clip: bool,
) -> Result<Value> {
    let vocab: serde_json::Map<String, Value> = serde_json::from_str(vocab_json)
        .map_err(|e| Error::Tokenizer(format!("vocab.json: {e}")))?;
    let merges: Vec<Value> = merges_txt
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(|l| json!(l.trim_end_matches('\r')))
        .collect();
    let get = |k: &str, d: &str| token_str(cfg.get(k)).unwrap_or_else(|| d.to_string());
    let id = |t: &str| -> Result<u64> {
        vocab
            .get(t)
            .and_then(Value::as_u64)
            .or_else(|| added.get(t).map(|&i| i as u64))
            .ok_or_else(|| Error::Tokenizer(format!("vocab.json has no {t} token")))
    };
    let added_list = added_tokens(
        &vocab,
        cfg,
        added,
        &["unk_token", "bos_token", "eos_token", "pad_token"],
    );
    if clip {
        let (bos, eos) = (
            get("bos_token", "<|startoftext|>"),
            get("eos_token", "<|endoftext|>"),
        );
        return Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_list,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split",
                 "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
                 "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]},
            "post_processor": {
                "type": "RobertaProcessing",
                "sep": [eos.clone(), id(&eos)?],
                "cls": [bos.clone(), id(&bos)?],
                "trim_offsets": false,
                "add_prefix_space": false
            },
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "BPEDecoder", "suffix": "</w>"},
                {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}
            ]},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": get("unk_token", "<|endoftext|>"),
                "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges
            }
        }));
    }
    let add_prefix_space = cfg
        .get("add_prefix_space")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let post = if cfg
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let bos = get("bos_token", "<|endoftext|>");
        json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos.clone(), "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos.clone(), "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos.clone(), "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [id(&get("bos_token", "<|endoftext|>"))?], "tokens": [get("bos_token", "<|endoftext|>")]}}
        })
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_list,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": true},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    }))
}
