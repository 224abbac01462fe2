//! Entry points of the fuzz targets in `fuzz/` (see docs/hardening.md, "Fuzzing"). Each takes
//! arbitrary bytes and drives the path the CLI and the page take with such a file: the
//! streaming loader over a whole file and over chunks, the model built from what it loaded, an
//! image prepared and a caption (or an answer, or a match) generated on the CPU. An `Err`
//! anywhere is a correct outcome (the functions return the main path's, for the regression
//! tests to check its message); a panic, an abort, an allocation past the fuzzer's limit or a
//! hang is a bug. `tests/fuzz_regressions.rs` runs the crashes found (and
//! the seed corpora) through the same functions, so every fix stays fixed.
//!
//! The weight targets load a tiny GIT model (`fuzz/model/`: hidden size 8, one layer per tower);
//! the seeds are its checkpoint in each format. The JSON targets take several files in one input
//! (see [`split_files`]).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::generate::GenerateOptions;
use crate::image::{decode, ImageProcessorConfig};
use crate::io::gguf;
use crate::io::stream::{parse_safetensors_header, push_file, LoadOptions, Loader, WeightFile};
use crate::io::tokenizer::{Tokenizer, TokenizerFiles};
use crate::io::torch;
use crate::pipeline::{checkpoint_tensors, ModelFiles, ModelSpec, Pipeline, Task};
use crate::tensor::{DType, Device};

/// The small files of the tiny model the weight targets load.
const TINY: &[(&str, &str)] = &[
    ("config.json", include_str!("../fuzz/model/config.json")),
    (
        "preprocessor_config.json",
        include_str!("../fuzz/model/preprocessor_config.json"),
    ),
    (
        "generation_config.json",
        include_str!("../fuzz/model/generation_config.json"),
    ),
    ("vocab.txt", include_str!("../fuzz/model/vocab.txt")),
    (
        "tokenizer_config.json",
        include_str!("../fuzz/model/tokenizer_config.json"),
    ),
];

/// The image a loaded model is run on (32×32 RGB PNG).
const IMAGE: &[u8] = include_bytes!("../tests/fixtures/images/square_32.png");

/// The image processors the image target runs every decoded image through: the tiny model's,
/// the parity fixtures' (shortest edge + crop, fixed size bilinear and bicubic) and CLIP's class
/// defaults (shortest edge 224, as openai/clip-vit-base-patch32 and microsoft/git-base).
const PROCESSORS: &[&str] = &[
    include_str!("../fuzz/model/preprocessor_config.json"),
    include_str!("../tests/fixtures/git/preprocessor_config.json"),
    include_str!("../tests/fixtures/vit-gpt2/preprocessor_config.json"),
    include_str!("../tests/fixtures/blip-caption/preprocessor_config.json"),
    r#"{"image_processor_type": "CLIPImageProcessor"}"#,
];

/// The most parameters a fuzzed config may imply for [`config`] to build the model with random
/// weights and run it (4 MiB of f32): past that the fuzzer would only measure allocation.
pub const MAX_RANDOM_PARAMS: u64 = 1 << 20;

/// Longest caption generated and most beams used when a loaded model is run (generation costs
/// are not what these targets are after).
const MAX_NEW_TOKENS: usize = 3;
const MAX_BEAMS: usize = 2;

/// Splits one fuzz input into named files: records separated by NUL bytes, each
/// `<name>\n<contents>` (JSON and vocabularies hold no NUL). A record without a newline names an
/// empty file.
pub fn split_files(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for rec in data.split(|&b| b == 0) {
        let (name, body) = match rec.iter().position(|&b| b == b'\n') {
            Some(i) => (&rec[..i], &rec[i + 1..]),
            None => (rec, &rec[rec.len()..]),
        };
        out.insert(String::from_utf8_lossy(name).into_owned(), body.to_vec());
    }
    out
}

/// The inverse of [`split_files`] (to write seeds).
pub fn join_files(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, body)) in files.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body);
    }
    out
}

fn tiny_meta() -> BTreeMap<String, Vec<u8>> {
    TINY.iter()
        .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
        .collect()
}

/// Runs what a person does with a loaded model: prepare an image, then caption it, answer a
/// question about it or match it against texts.
fn exercise(p: &Pipeline) -> Result<()> {
    let image = p.prepare_image(IMAGE)?;
    let mut opts: GenerateOptions = p.default_options();
    opts.max_new_tokens = opts.max_new_tokens.min(MAX_NEW_TOKENS);
    opts.num_beams = opts.num_beams.min(MAX_BEAMS);
    let on_text = &mut |_: &str| true;
    match p.task() {
        Task::Caption => {
            pollster::block_on(p.caption(&image, None, &opts, on_text))?;
            pollster::block_on(p.caption(&image, Some("a photo of"), &opts, on_text))?;
        }
        Task::Answer => {
            pollster::block_on(p.ask(&image, "what is it?", &opts, on_text))?;
        }
        Task::Match => {
            let texts = ["a cat".to_string(), "a photo of a dog".to_string()];
            pollster::block_on(p.match_texts(&image, &texts))?;
        }
        Task::Chat => {
            let mut session = crate::pipeline::ChatSession::new();
            let mut msgs = vec![crate::io::chat::Message::user_with_image("What is it?")];
            let first = pollster::block_on(p.chat(&image, &msgs, &mut session, &opts, on_text))?;
            msgs.push(crate::io::chat::Message::text("assistant", &first.text));
            msgs.push(crate::io::chat::Message::text("user", "And then?"));
            pollster::block_on(p.chat(&image, &msgs, &mut session, &opts, on_text))?;
        }
    }
    Ok(())
}

/// The load dtypes a chunked load picks from (by input length, so each input always takes
/// the same one).
const DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::Q8_0, DType::Q4_0];

/// Loads one weight file (with `meta`, or alone for a `.gguf`) as the CLI does (the whole
/// file at once, f32) and as the page does (in chunks, quantizing while loading and writing
/// the GGUF it keeps), then runs the model.
fn load_weights(meta: BTreeMap<String, Vec<u8>>, name: &str, data: &[u8]) -> Result<()> {
    let files = ModelFiles {
        meta,
        weights: vec![(name.to_string(), data.to_vec())],
        index: None,
    };
    let whole = Pipeline::load(&files, &Device::Cpu, DType::F32).and_then(|p| exercise(&p));
    let chunked = load_chunked(&files.meta, name, data);
    // both errors, when they differ (the regression tests look for either)
    match (whole, chunked) {
        (Err(a), Err(b)) if a.to_string() != b.to_string() => {
            Err(Error::Invalid(format!("{a} | in chunks: {b}")))
        }
        (whole, chunked) => whole.and(chunked),
    }
}

/// The page's load: chunks, Linear weights quantized while loading, the GGUF it keeps written.
fn load_chunked(meta: &BTreeMap<String, Vec<u8>>, name: &str, data: &[u8]) -> Result<()> {
    let spec = if meta.contains_key("config.json") {
        Some(ModelSpec::from_files(meta)?)
    } else {
        None
    };
    let opts = LoadOptions {
        dtype: DTYPES[data.len() % DTYPES.len()],
        device: Some(Device::Cpu),
        write_gguf: true,
    };
    // a third of the inputs arrive without a length (a response without Content-Length)
    let wf = vec![WeightFile {
        name: name.to_string(),
        len: (!data.len().is_multiple_of(3)).then_some(data.len() as u64),
        sha256: None,
    }];
    let mut loader = Loader::new(spec, wf, opts)?;
    // chunks of 1 to 4096 bytes: headers and rows cut anywhere
    let chunk = 1 + data.len().wrapping_mul(7919) % 4096;
    push_file(&mut loader, 0, name, data, chunk, &mut |l| {
        l.take_writes();
        Ok(())
    })?;
    loader.gguf_header();
    let (p, _) = Pipeline::from_loader(loader)?;
    exercise(&p)
}

/// `model.safetensors` of the tiny model: the header parser, then the load.
pub fn safetensors(data: &[u8]) -> Result<()> {
    let _ = parse_safetensors_header(data, Some(data.len() as u64));
    load_weights(tiny_meta(), "model.safetensors", data)
}

/// A `.gguf` file, alone (the model comes from its metadata): the header parser, then the load.
pub fn gguf(data: &[u8]) -> Result<()> {
    let _ = gguf::parse_header(data, Some(data.len() as u64));
    load_weights(BTreeMap::new(), "model.gguf", data)
}

/// `pytorch_model.bin` of the tiny model: the zip readers, the pickle, then the load (the
/// directory and `data.pkl` first, as the page reads them with Range requests).
pub fn torch(data: &[u8]) -> Result<()> {
    let _ = torch::check_magic(data);
    let _ = torch::parse_local_header(data);
    let from = data.len().saturating_sub(64 << 10);
    let _ = torch::parse_directory(&data[from..], from as u64, data.len() as u64);
    load_weights(tiny_meta(), "pytorch_model.bin", data)
}

/// The bytes of a `data.pkl` (a state dict pickle).
pub fn pickle(data: &[u8]) -> Result<()> {
    torch::parse_pickle(data, "archive").map(|_| ())
}

/// A model's small files ([`split_files`]: config.json, preprocessor_config.json, optional
/// generation_config.json and tokenizer files; without tokenizer files the tiny model's BERT
/// vocabulary is used): the spec is parsed and checked, and when the config implies at most
/// [`MAX_RANDOM_PARAMS`] parameters the model is built with random weights and run.
pub fn config(data: &[u8]) -> Result<()> {
    let mut meta = split_files(data);
    let has_tokenizer = ["tokenizer.json", "vocab.txt", "vocab.json"]
        .iter()
        .any(|f| meta.contains_key(*f));
    if !has_tokenizer {
        for (n, t) in TINY {
            if matches!(*n, "vocab.txt" | "tokenizer_config.json") {
                meta.insert(n.to_string(), t.as_bytes().to_vec());
            }
        }
    }
    let spec = ModelSpec::from_files(&meta)?;
    let config = meta
        .get("config.json")
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| Error::Config("config.json".into()))?;
    let params = checkpoint_tensors(config)?
        .iter()
        .try_fold(0u64, |sum, (_, shape)| {
            let n = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))?;
            sum.checked_add(n)
        });
    if params.is_some_and(|n| n <= MAX_RANDOM_PARAMS) {
        let p = Pipeline::from_spec_random(spec, &Device::Cpu)?;
        exercise(&p)?;
    }
    Ok(())
}

/// Tokenizer files ([`split_files`]: tokenizer.json, or vocab.txt, or vocab.json with
/// merges.txt, with tokenizer_config.json, special_tokens_map.json, added_tokens.json, and a
/// `model_type` record): the tokenizer is built, then texts are encoded and decoded.
pub fn tokenizer(data: &[u8]) -> Result<()> {
    let files = split_files(data);
    let get = |n: &str| files.get(n).map(Vec::as_slice);
    let model_type = String::from_utf8_lossy(get("model_type").unwrap_or_default());
    let t = Tokenizer::from_files(&TokenizerFiles {
        tokenizer_json: get("tokenizer.json"),
        vocab_txt: get("vocab.txt"),
        vocab_json: get("vocab.json"),
        merges_txt: get("merges.txt"),
        tokenizer_config: get("tokenizer_config.json"),
        special_tokens_map: get("special_tokens_map.json"),
        added_tokens: get("added_tokens.json"),
        model_type: model_type.trim(),
    })?;
    let mut texts = vec![
        "a photo of a cat".to_string(),
        String::new(),
        " Ünïcödé  日本語 \u{0} 🐱 [CLS] <|endoftext|> ".to_string(),
    ];
    if let Some(t) = get("text") {
        texts.push(String::from_utf8_lossy(t).into_owned());
    }
    for text in &texts {
        for special in [false, true] {
            let ids = t.encode(text, special)?;
            t.decode(&ids)?;
        }
    }
    t.decode(&[0, 1, 2, u32::MAX])?;
    t.token_id("[CLS]");
    t.vocab_size();
    Ok(())
}

/// Image bytes (PNG, JPEG, WebP): decoded, then preprocessed by each processor of
/// [`PROCESSORS`]; the first error.
pub fn image(data: &[u8]) -> Result<()> {
    let img = decode(data)?;
    let mut first = Ok(());
    for json in PROCESSORS {
        let r = ImageProcessorConfig::from_json(json).and_then(|p| p.preprocess(&img));
        if let (Err(e), Ok(())) = (r, &first) {
            first = Err(e);
        }
    }
    first
}
