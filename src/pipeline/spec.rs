//! What a model is before any weight is read: its files held in memory ([`ModelFiles`]), its
//! metadata parsed and checked ([`ModelSpec`]), and the table from architecture to model code
//! ([`build_model`]).

use std::collections::{BTreeMap, HashMap};

use super::{chat, Model, Task};
use crate::error::{Error, Result};
use crate::image::ImageProcessorConfig;
use crate::io::chat::ChatTemplate;
use crate::io::config::{architecture, parse, parse_config, GenerationConfig};
#[cfg(not(target_arch = "wasm32"))]
use crate::io::files::{pick_weights, WeightSet, META_FILES};
use crate::io::gguf;
use crate::io::stream::ModelSource;
use crate::io::tokenizer::{Tokenizer, TokenizerFiles};
use crate::io::Vb;
use crate::models::blip::{Blip, BlipConfig};
use crate::models::clip::{Clip, ClipConfig};
use crate::models::git::{Git, GitConfig};
use crate::models::idefics3::{Idefics3, Idefics3Config};
use crate::models::vision_encoder_decoder::{VisionEncoderDecoder, VisionEncoderDecoderConfig};
use crate::tensor::{DType, Device};

/// The files of a Hugging Face model folder held in memory: the small files by name (see
/// `io::files::META_FILES`) and the weight files in load order. Large checkpoints are better
/// streamed ([`Pipeline::load_path`] natively, the loader from JS in the browser).
#[derive(Clone, Default)]
pub struct ModelFiles {
    pub meta: BTreeMap<String, Vec<u8>>,
    /// (file name, bytes): model.safetensors, its shards, pytorch_model.bin, or one .gguf
    pub weights: Vec<(String, Vec<u8>)>,
    /// a sharded checkpoint's tensor -> file map
    pub index: Option<HashMap<String, String>>,
}

impl ModelFiles {
    /// Reads a model folder (or one GGUF file) into memory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &std::path::Path) -> Result<ModelFiles> {
        let (meta, set) = read_dir_meta(dir)?;
        let weights = set
            .files
            .iter()
            .map(|f| {
                let path = if dir.is_file() {
                    dir.to_path_buf()
                } else {
                    dir.join(f)
                };
                std::fs::read(&path)
                    .map(|b| (f.clone(), b))
                    .map_err(|e| Error::Weights(format!("{}: {e}", path.display())))
            })
            .collect::<Result<_>>()?;
        Ok(ModelFiles {
            meta,
            weights,
            index: set.index,
        })
    }
}

/// The small files and the weight files of a folder on disk (or of one `.gguf` file).
#[cfg(not(target_arch = "wasm32"))]
pub fn read_dir_meta(dir: &std::path::Path) -> Result<(BTreeMap<String, Vec<u8>>, WeightSet)> {
    let io =
        |p: &std::path::Path, e: std::io::Error| Error::Weights(format!("{}: {e}", p.display()));
    if dir.is_file() {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.ends_with(".gguf") {
            return Err(Error::Weights(format!(
                "{} is neither a model folder nor a GGUF file",
                dir.display()
            )));
        }
        return Ok((
            BTreeMap::new(),
            WeightSet {
                files: vec![name],
                index: None,
            },
        ));
    }
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut meta = BTreeMap::new();
    for n in META_FILES {
        if names.iter().any(|x| x == n) {
            let p = dir.join(n);
            meta.insert(n.to_string(), std::fs::read(&p).map_err(|e| io(&p, e))?);
        }
    }
    let set = pick_weights(&names, &mut |n| {
        let p = dir.join(n);
        std::fs::read(&p).map_err(|e| io(&p, e))
    })
    .map_err(|e| match e {
        Error::Weights(m) => Error::Weights(format!("{}: {m}", dir.display())),
        e => e,
    })?;
    Ok((meta, set))
}

/// A model described by its small files, parsed and checked before any weight is read: the
/// architecture and its config, the image processor, the tokenizer, the generation defaults.
pub struct ModelSpec {
    pub(super) architecture: String,
    pub(super) config_json: String,
    pub(super) generation_json: Option<String>,
    pub(super) preprocessor_json: String,
    pub(super) processor: ImageProcessorConfig,
    pub(super) tokenizer: Tokenizer,
    pub(super) generation: GenerationConfig,
    /// the model's chat template (instruction models)
    pub(super) chat_template: Option<ChatTemplate>,
}

/// The architectures glimpse runs.
pub const ARCHITECTURES: &str = "GitForCausalLM, VisionEncoderDecoderModel, BlipForConditionalGeneration, BlipForQuestionAnswering, CLIPModel, Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration";

impl ModelSpec {
    /// Parses and checks the metadata files (by name, as `io::files::META_FILES`).
    pub fn from_files(meta: &BTreeMap<String, Vec<u8>>) -> Result<ModelSpec> {
        let text = |name: &str| -> Result<Option<String>> {
            meta.get(name)
                .map(|b| {
                    String::from_utf8(b.clone())
                        .map_err(|_| Error::Config(format!("{name} is not UTF-8 text")))
                })
                .transpose()
        };
        let config_json = text("config.json")?
            .ok_or_else(|| Error::Config("the model has no config.json".into()))?;
        let arch = architecture(&config_json)?;
        let mut head = crate::io::config::value("config.json", &config_json)?;
        crate::io::config::strip_nulls(&mut head);
        let model_type = head
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let preprocessor_json = text("preprocessor_config.json")?
            .ok_or_else(|| Error::Config("the model has no preprocessor_config.json".into()))?;
        let processor = ImageProcessorConfig::from_json_for(&preprocessor_json, &model_type)?;
        let tokenizer = Tokenizer::from_files(&TokenizerFiles {
            tokenizer_json: meta.get("tokenizer.json").map(Vec::as_slice),
            vocab_txt: meta.get("vocab.txt").map(Vec::as_slice),
            vocab_json: meta.get("vocab.json").map(Vec::as_slice),
            merges_txt: meta.get("merges.txt").map(Vec::as_slice),
            tokenizer_config: meta.get("tokenizer_config.json").map(Vec::as_slice),
            special_tokens_map: meta.get("special_tokens_map.json").map(Vec::as_slice),
            added_tokens: meta.get("added_tokens.json").map(Vec::as_slice),
            model_type: &model_type,
        })?;
        let generation_json = text("generation_config.json")?;
        let generation = match &generation_json {
            Some(t) => parse("generation_config.json", t)?,
            None => generation_from_model_config(&head)?,
        };
        let chat_template = ChatTemplate::from_files(meta)?;
        let spec = ModelSpec {
            architecture: arch,
            config_json,
            generation_json,
            preprocessor_json,
            processor,
            tokenizer,
            generation,
            chat_template,
        };
        // the config must describe a model glimpse can build (checked without weights)
        let plan = crate::io::Weights::plan(None, Default::default());
        let model = spec.build(&Vb::new(&plan, &Device::Cpu, DType::F32))?;
        // every id the tokenizer can produce must be a row of the embedding table
        let vocab = model.vocab_size();
        if let Some(max) = spec.tokenizer.max_id().filter(|&m| m as usize >= vocab) {
            return Err(Error::Config(format!(
                "the tokenizer has token ids up to {max}, but config.json's vocabulary has {vocab} tokens: the tokenizer belongs to another model"
            )));
        }
        if let Model::Idefics3(m) = &model {
            chat::check_files(&spec, m, text("processor_config.json")?.as_deref())?;
        }
        Ok(spec)
    }

    /// `architectures[0]` of config.json.
    pub fn arch_name(&self) -> &str {
        &self.architecture
    }

    /// What the model does.
    pub fn task(&self) -> Task {
        match self.architecture.as_str() {
            "CLIPModel" | "clip" => Task::Match,
            "BlipForQuestionAnswering" => Task::Answer,
            a if chat::is_chat_arch(a) => Task::Chat,
            _ => Task::Caption,
        }
    }
}

/// generation_config.json is optional: without it transformers builds the generation defaults
/// from config.json (`GenerationConfig.from_model_config`): its own fields first, then, for
/// fields still unset, the decoder's config (a VisionEncoderDecoder's `decoder`, BLIP's
/// `text_config`).
fn generation_from_model_config(config: &serde_json::Value) -> Result<GenerationConfig> {
    let mut merged = config
        .get("decoder")
        .or_else(|| config.get("text_config"))
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    crate::io::config::merge(&mut merged, config.clone());
    // only the generation fields are read; the rest of the config is ignored
    crate::io::config::from_value("config.json (generation defaults)", merged)
}

impl ModelSource for ModelSpec {
    type Model = Model;

    fn build(&self, vb: &Vb) -> Result<Model> {
        build_model(&self.architecture, &self.config_json, vb)
    }

    fn gguf_metadata(&self) -> Result<Vec<(String, String)>> {
        let mut m = vec![
            (
                "general.architecture".to_string(),
                self.architecture.clone(),
            ),
            (gguf::CONFIG.into(), self.config_json.clone()),
            (
                gguf::PREPROCESSOR_CONFIG.into(),
                self.preprocessor_json.clone(),
            ),
            (gguf::TOKENIZER.into(), self.tokenizer.json().to_string()),
        ];
        if let Some(g) = &self.generation_json {
            m.push((gguf::GENERATION_CONFIG.into(), g.clone()));
        }
        if let Some(t) = &self.chat_template {
            m.push((gguf::CHAT_TEMPLATE.into(), t.source().to_string()));
        }
        Ok(m)
    }

    fn from_gguf(strings: &HashMap<String, String>) -> Result<ModelSpec> {
        let mut meta = BTreeMap::new();
        for (key, file) in [
            (gguf::CONFIG, "config.json"),
            (gguf::GENERATION_CONFIG, "generation_config.json"),
            (gguf::PREPROCESSOR_CONFIG, "preprocessor_config.json"),
            (gguf::TOKENIZER, "tokenizer.json"),
        ] {
            if let Some(v) = strings.get(key) {
                meta.insert(file.to_string(), v.clone().into_bytes());
            } else if file != "generation_config.json" {
                return Err(Error::Weights(format!(
                    "this GGUF file carries no {file} (metadata {key}); glimpse reads GGUF files written by `glimpse quantize` or by the page"
                )));
            }
        }
        if let Some(t) = strings.get(gguf::CHAT_TEMPLATE) {
            meta.insert("chat_template.jinja".into(), t.clone().into_bytes());
        }
        ModelSpec::from_files(&meta)
    }
}

/// Builds the model of architecture `arch` described by `config_json` from `vb` (a plan, the
/// loaded tensors, or random weights).
pub fn build_model(arch: &str, config_json: &str, vb: &Vb) -> Result<Model> {
    let c = config_json;
    Ok(match arch {
        "GitForCausalLM" | "git" => Model::Git(Box::new(Git::new(
            vb,
            &parse_config::<GitConfig>("config.json", c)?,
        )?)),
        "CLIPModel" | "clip" => Model::Clip(Box::new(Clip::new(
            vb,
            &parse_config::<ClipConfig>("config.json", c)?,
        )?)),
        "VisionEncoderDecoderModel" | "vision-encoder-decoder" => {
            Model::VisionEncoderDecoder(Box::new(VisionEncoderDecoder::new(
                vb,
                &parse_config::<VisionEncoderDecoderConfig>("config.json", c)?,
            )?))
        }
        "BlipForConditionalGeneration" | "BlipForQuestionAnswering" => {
            let cfg = parse_config::<BlipConfig>("config.json", c)?;
            Model::Blip(Box::new(Blip::new(
                vb,
                &cfg,
                arch == "BlipForQuestionAnswering",
            )?))
        }
        a if chat::is_chat_arch(a) => Model::Idefics3(Box::new(Idefics3::new(
            vb,
            &parse_config::<Idefics3Config>("config.json", c)?,
        )?)),
        other => {
            return Err(Error::Config(format!(
                "config.json: architecture {other:?} is not supported (supported: {ARCHITECTURES})"
            )))
        }
    })
}

/// The tensors (Hugging Face names and checkpoint shapes, in the order the model reads them)
/// of the model `config_json` describes, as a checkpoint without tied copies holds them.
pub fn checkpoint_tensors(config_json: &str) -> Result<Vec<(String, Vec<usize>)>> {
    let arch = architecture(config_json)?;
    let w = crate::io::Weights::plan(None, Default::default());
    build_model(&arch, config_json, &Vb::new(&w, &Device::Cpu, DType::F32))?;
    let plan = w.into_plan().ok_or_else(|| Error::Invalid("plan".into()))?;
    Ok(plan
        .order
        .iter()
        .map(|n| (n.clone(), plan.uses[n][0].source_shape.clone()))
        .collect())
}
