//! Streaming a model into the engine from JS: `engine.beginLoad`, then the weight bytes as they
//! arrive (`Loader`), then `finish()` for the model.

use js_sys::Reflect;
use wasm_bindgen::prelude::*;

use super::{invalid, js_err, task_name, Engine, JsModel};
use crate::io::stream::{LoadOptions, Loader, WeightFile};
use crate::pipeline::{ModelSpec, Pipeline};
use crate::tensor::DType;

/// What `engine.beginLoad` takes: the model's small files by name, the weight files in the
/// order they will be pushed, the dtype of Linear weights, and whether to write the GGUF file.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BeginLoad {
    #[serde(default)]
    files: std::collections::BTreeMap<String, serde_bytes::ByteBuf>,
    weights: Vec<JsWeightFile>,
    dtype: Option<String>,
    #[serde(default)]
    store_gguf: bool,
    /// a sharded checkpoint's index (`*.index.json` text)
    shard_index: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsWeightFile {
    name: String,
    /// bytes, when known (a catalog's exact size, an unencoded Content-Length, a File's size)
    size: Option<f64>,
    sha256: Option<String>,
}

/// A streaming load: metadata checked first, weight bytes pushed as they arrive, each tensor sent
/// to the device (and to the GGUF file being written) the moment its bytes are complete; the
/// wasm heap never holds the checkpoint.
#[wasm_bindgen(js_name = Loader)]
pub struct JsLoader {
    inner: Option<Loader<ModelSpec>>,
}

#[wasm_bindgen]
impl Engine {
    /// `engine.beginLoad({files: {'config.json': Uint8Array, …}, weights: [{name, size,
    /// sha256}], dtype, storeGguf, shardIndex})`. Parses and checks config.json, the image
    /// processor, the tokenizer and the generation config before any weight is fetched; with no
    /// `files` and one `.gguf` weight file the model comes from the file's own metadata.
    #[wasm_bindgen(js_name = beginLoad)]
    pub fn begin_load(&self, opts: JsValue) -> Result<JsLoader, JsValue> {
        let o: BeginLoad = serde_wasm_bindgen::from_value(opts).map_err(js_err)?;
        let meta: std::collections::BTreeMap<String, Vec<u8>> = o
            .files
            .into_iter()
            .map(|(k, v)| (k, v.into_vec()))
            .collect();
        let spec = if meta.contains_key("config.json") {
            Some(ModelSpec::from_files(&meta).map_err(js_err)?)
        } else {
            None
        };
        let weights = o
            .weights
            .into_iter()
            .map(|w| WeightFile {
                name: w.name,
                len: w.size.map(|s| s as u64),
                sha256: w.sha256.map(|s| s.to_lowercase()),
            })
            .collect();
        let dtype = DType::parse(o.dtype.as_deref().unwrap_or("f32")).map_err(js_err)?;
        let opts = LoadOptions {
            dtype,
            device: Some(self.device.clone()),
            write_gguf: o.store_gguf,
        };
        let mut loader = Loader::new(spec, weights, opts).map_err(js_err)?;
        if let Some(index) = o.shard_index {
            let set = crate::io::files::parse_index("the shard index", index.as_bytes())
                .map_err(js_err)?;
            if let Some(map) = set.index {
                loader.set_shard_index(&map).map_err(js_err)?;
            }
        }
        Ok(JsLoader {
            inner: Some(loader),
        })
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TorchAhead {
    /// fetch `[pickleAt, pickleAt + pickleMax)` (or up to the end) and give it to torchPickle
    pickle_at: Option<f64>,
    pickle_max: Option<f64>,
    /// the tail was too short: fetch from here to the end and call torchDirectory again
    need_from: Option<f64>,
}

#[wasm_bindgen(js_class = Loader)]
impl JsLoader {
    fn get(&mut self) -> Result<&mut Loader<ModelSpec>, JsValue> {
        self.inner
            .as_mut()
            .ok_or_else(|| invalid("this load has finished"))
    }

    /// `{architecture, task}` of the model (once known: a GGUF file's header says it).
    pub fn info(&mut self) -> Result<JsValue, JsValue> {
        let spec = self.get()?.spec();
        let info = spec.map(
            |s| serde_json::json!({"architecture": s.arch_name(), "task": task_name(s.task())}),
        );
        serde_wasm_bindgen::to_value(&info).map_err(js_err)
    }

    /// The last bytes of a `pytorch_model.bin` (`tail` starts at `tailOffset` and ends at the
    /// end of the file): the archive is checked and `data.pkl`'s place returned.
    #[wasm_bindgen(js_name = torchDirectory)]
    pub fn torch_directory(
        &mut self,
        file: u32,
        tail: &[u8],
        tail_offset: f64,
        file_len: f64,
    ) -> Result<JsValue, JsValue> {
        let r = self
            .get()?
            .torch_directory(file as usize, tail, tail_offset as u64, file_len as u64)
            .map_err(js_err)?;
        let out = match r {
            Ok((at, max)) => TorchAhead {
                pickle_at: Some(at as f64),
                pickle_max: Some(max as f64),
                need_from: None,
            },
            Err(from) => TorchAhead {
                pickle_at: None,
                pickle_max: None,
                need_from: Some(from as f64),
            },
        };
        serde_wasm_bindgen::to_value(&out).map_err(js_err)
    }

    /// The bytes from `data.pkl`'s local header on (see `torchDirectory`).
    #[wasm_bindgen(js_name = torchPickle)]
    pub fn torch_pickle(&mut self, file: u32, bytes: &[u8]) -> Result<(), JsValue> {
        self.get()?
            .torch_pickle(file as usize, bytes)
            .map_err(js_err)
    }

    /// The next bytes of the current weight file.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsValue> {
        self.get()?.push(chunk).map_err(js_err)
    }

    /// The current weight file has ended (its length and sha256 are checked).
    #[wasm_bindgen(js_name = endFile)]
    pub fn end_file(&mut self) -> Result<(), JsValue> {
        self.get()?.end_file().map_err(js_err)
    }

    /// GGUF bytes to write since the last call: `[[offset, Uint8Array], …]`.
    #[wasm_bindgen(js_name = takeWrites)]
    pub fn take_writes(&mut self) -> Result<js_sys::Array, JsValue> {
        let out = js_sys::Array::new();
        for (at, bytes) in self.get()?.take_writes() {
            let pair = js_sys::Array::new();
            pair.push(&JsValue::from_f64(at as f64));
            pair.push(&js_sys::Uint8Array::from(&bytes[..]));
            out.push(&pair);
        }
        Ok(out)
    }

    /// The GGUF header (written at offset 0 once every tensor arrived) and the file's length:
    /// `{header: Uint8Array, length}`, or null when no GGUF is written.
    #[wasm_bindgen(js_name = ggufHeader)]
    pub fn gguf_header(&mut self) -> Result<JsValue, JsValue> {
        let Some((h, len)) = self.get()?.gguf_header() else {
            return Ok(JsValue::NULL);
        };
        let o = js_sys::Object::new();
        Reflect::set(&o, &"header".into(), &js_sys::Uint8Array::from(&h[..]))
            .map_err(|_| invalid("ggufHeader"))?;
        Reflect::set(&o, &"length".into(), &JsValue::from_f64(len as f64))
            .map_err(|_| invalid("ggufHeader"))?;
        Ok(o.into())
    }

    /// The model, once every weight file has ended; `stats()` then says what was read.
    pub fn finish(&mut self) -> Result<JsModel, JsValue> {
        let loader = self
            .inner
            .take()
            .ok_or_else(|| invalid("this load has finished"))?;
        let (pipeline, stats) = Pipeline::from_loader(loader).map_err(js_err)?;
        Ok(JsModel {
            pipeline,
            images: Vec::new(),
            sessions: Default::default(),
            stats,
        })
    }
}
