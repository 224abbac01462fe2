//! Single-file GGUF models: the tensors (f32, f16, q8_0, q4_0; names as in the Hugging Face
//! checkpoint) plus the folder's JSON files as string metadata, so one file loads a whole model.
//! candle's `gguf_file` reads and writes the container; `glimpse quantize` makes one from a
//! model folder ([`quantize_model`]).

use std::collections::HashMap;
use std::io::Cursor;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::{Error, Result};
use crate::tensor::DType;

/// Metadata keys of the JSON files a model folder holds.
pub const CONFIG: &str = "glimpse.config_json";
pub const GENERATION_CONFIG: &str = "glimpse.generation_config_json";
pub const PREPROCESSOR_CONFIG: &str = "glimpse.preprocessor_config_json";
pub const TOKENIZER: &str = "glimpse.tokenizer_json";

pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GGUF")
}

fn gguf_err(e: impl std::fmt::Display) -> Error {
    Error::Weights(format!(
        "not a valid GGUF file (truncated or damaged?): {e}"
    ))
}

/// The parsed header of a GGUF file and its bytes.
pub struct GgufTensors {
    bytes: Vec<u8>,
    content: Content,
    shapes: HashMap<String, Vec<usize>>,
}

impl GgufTensors {
    /// Parses the header and checks that every tensor lies inside the file.
    pub fn new(bytes: Vec<u8>) -> Result<GgufTensors> {
        let content = Content::read(&mut Cursor::new(&bytes)).map_err(gguf_err)?;
        let mut shapes = HashMap::new();
        for (name, info) in &content.tensor_infos {
            let numel = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            let size = (numel / block.max(1)) * info.ggml_dtype.type_size();
            let end = content
                .tensor_data_offset
                .saturating_add(info.offset)
                .saturating_add(size as u64);
            if end > bytes.len() as u64 {
                return Err(Error::Weights(format!(
                    "GGUF tensor {name} ends at byte {end}, past the end of the file ({} bytes): the file is truncated",
                    bytes.len()
                )));
            }
            shapes.insert(name.clone(), info.shape.dims().to_vec());
        }
        Ok(GgufTensors {
            bytes,
            content,
            shapes,
        })
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    pub fn names(&self) -> Vec<String> {
        self.shapes.keys().cloned().collect()
    }

    pub fn get_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let shape = self
            .shape(name)
            .ok_or_else(|| Error::Weights(format!("the GGUF file has no tensor {name}")))?
            .to_vec();
        let q = self
            .content
            .tensor(
                &mut Cursor::new(&self.bytes),
                name,
                &candle_core::Device::Cpu,
            )
            .map_err(gguf_err)?;
        let values = q
            .dequantize(&candle_core::Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((values, shape))
    }

    /// A string metadata value.
    pub fn text(&self, key: &str) -> Result<Option<String>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Error::Weights(format!(
                "GGUF metadata {key} is a {:?}, not a string",
                other.value_type()
            ))),
        }
    }
}

/// The type a tensor is stored as: `dtype` for Linear-shaped weights (2-D `.weight` whose rows
/// are whole 32-value blocks), f32 for the rest (norms, biases, embeddings, convolutions).
fn stored_as(name: &str, shape: &[usize], dtype: DType) -> GgmlDType {
    let linear = shape.len() == 2
        && name.ends_with(".weight")
        && !name.contains("embedding")
        && shape[1].is_multiple_of(32);
    match dtype {
        DType::Q8_0 if linear => GgmlDType::Q8_0,
        DType::Q4_0 if linear => GgmlDType::Q4_0,
        DType::F16 if linear => GgmlDType::F16,
        _ => GgmlDType::F32,
    }
}

/// Writes the model of `files` as one GGUF file with Linear weights in `dtype`.
pub fn quantize_model(files: &crate::pipeline::ModelFiles, dtype: DType) -> Result<Vec<u8>> {
    if dtype == DType::U32 {
        return Err(Error::Invalid(
            "GGUF weights are f32, f16, q8_0 or q4_0".into(),
        ));
    }
    let weights = super::Weights::from_files(files.weights.clone())?;
    let mut tensors = Vec::new();
    for name in weights.names() {
        let (data, shape) = weights.get_f32(&name)?;
        let t = candle_core::Tensor::from_vec(data, shape.as_slice(), &candle_core::Device::Cpu)?;
        tensors.push((
            name.clone(),
            QTensor::quantize(&t, stored_as(&name, &shape, dtype))?,
        ));
    }
    let tokenizer = String::from_utf8(files.tokenizer.clone())
        .map_err(|_| Error::Config("tokenizer.json is not UTF-8 text".into()))?;
    let mut meta = vec![
        (
            "general.architecture".to_string(),
            Value::String(crate::io::config::architecture(&files.config)?),
        ),
        (CONFIG.into(), Value::String(files.config.clone())),
        (
            PREPROCESSOR_CONFIG.into(),
            Value::String(files.preprocessor_config.clone()),
        ),
        (TOKENIZER.into(), Value::String(tokenizer)),
    ];
    if let Some(g) = &files.generation_config {
        meta.push((GENERATION_CONFIG.into(), Value::String(g.clone())));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &meta_refs, &tensor_refs)?;
    Ok(out.into_inner())
}

/// The model files held in a GGUF file (its metadata), with the file itself as the weights.
pub fn model_files(bytes: Vec<u8>) -> Result<crate::pipeline::ModelFiles> {
    let g = GgufTensors::new(bytes)?;
    let need = |key: &str, file: &str| -> Result<String> {
        g.text(key)?.ok_or_else(|| {
            Error::Weights(format!(
                "this GGUF file carries no {file} (metadata {key}); glimpse reads GGUF files written by `glimpse quantize`"
            ))
        })
    };
    let files = crate::pipeline::ModelFiles {
        config: need(CONFIG, "config.json")?,
        generation_config: g.text(GENERATION_CONFIG)?,
        preprocessor_config: need(PREPROCESSOR_CONFIG, "preprocessor_config.json")?,
        tokenizer: need(TOKENIZER, "tokenizer.json")?.into_bytes(),
        weights: Vec::new(),
    };
    Ok(crate::pipeline::ModelFiles {
        weights: vec![g.bytes],
        ..files
    })
}
