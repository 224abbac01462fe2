//! The wasm-bindgen API: the only place that knows JS types. Errors become JS `Error`s with
//! the library's message. `www/` builds the page and the worker on top of this.

use js_sys::{Function, Reflect};
use wasm_bindgen::prelude::*;

use crate::bench::{self, BenchOptions, BenchRow};
use crate::gpu::{GpuContext, GpuOptions};
use crate::io::stream::LoadStats;
use crate::pipeline::{ChatSession, Pipeline, PreparedImage, Task};
use crate::selfcheck;
use crate::tensor::{AttentionOpts, DType, Device, Tensor};

mod loader;
#[cfg(target_feature = "atomics")]
mod threads;

/// A JS `Error` with a machine-readable `code` (see `Error::code`; the worker passes it on).
fn coded(code: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    let _ = Reflect::set(&e, &"code".into(), &code.into());
    e.into()
}

/// A bad argument from the caller (options that do not parse, an unknown handle …).
fn invalid(message: &str) -> JsValue {
    coded("invalid", message)
}

/// Errors as JS `Error`s with their `code`.
trait ToJs {
    fn to_js(self) -> JsValue;
}

impl ToJs for crate::Error {
    fn to_js(self) -> JsValue {
        coded(self.code(), &self.to_string())
    }
}

impl ToJs for serde_wasm_bindgen::Error {
    fn to_js(self) -> JsValue {
        // options or arguments that do not have the expected shape
        invalid(&format!(
            "options: {}",
            self.to_string().trim_start_matches("Error: ")
        ))
    }
}

fn js_err(e: impl ToJs) -> JsValue {
    e.to_js()
}

/// `performance.now()` of the page or worker.
pub(crate) fn performance_now() -> f64 {
    let perf = Reflect::get(&js_sys::global(), &JsValue::from_str("performance"));
    let now = perf
        .as_ref()
        .ok()
        .and_then(|p| Reflect::get(p, &JsValue::from_str("now")).ok());
    match (perf, now) {
        (Ok(p), Some(f)) => f
            .dyn_into::<Function>()
            .ok()
            .and_then(|f| f.call0(&p).ok())
            .and_then(|v| v.as_f64())
            .unwrap_or_else(js_sys::Date::now),
        _ => js_sys::Date::now(),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct EngineOptions {
    /// "webgpu" (default) or "cpu"
    device: Option<String>,
    /// ask the GPU for a smaller storage-binding limit (bytes), e.g. to act like a phone
    max_storage_buffer_binding_size: Option<f64>,
    /// the adapter is a software one (www/engine.js's `emulated`): barrier-free kernels
    software: Option<bool>,
}

/// A device to run tensors on: WebGPU (our WGSL kernels) or the CPU (candle in wasm).
#[wasm_bindgen]
pub struct Engine {
    pub(super) device: Device,
}

#[wasm_bindgen]
impl Engine {
    /// `await Engine.create({ device: 'webgpu' | 'cpu', maxStorageBufferBindingSize, software })`.
    /// Rejects with a readable message when WebGPU has no adapter or lacks a limit we need.
    pub async fn create(opts: JsValue) -> Result<Engine, JsValue> {
        let opts: EngineOptions = if opts.is_undefined() || opts.is_null() {
            EngineOptions::default()
        } else {
            serde_wasm_bindgen::from_value(opts).map_err(js_err)?
        };
        let device = match opts.device.as_deref().unwrap_or("webgpu") {
            "cpu" => Device::Cpu,
            "webgpu" | "gpu" => {
                let gpu_opts = GpuOptions {
                    max_storage_buffer_binding_size: opts
                        .max_storage_buffer_binding_size
                        .map(|v| v as u64),
                    software: opts.software,
                };
                Device::Gpu(GpuContext::new(&gpu_opts).await.map_err(js_err)?)
            }
            other => {
                return Err(invalid(&format!(
                    "unknown device {other:?}: use 'webgpu' or 'cpu'"
                )))
            }
        };
        Ok(Engine { device })
    }

    /// "webgpu" or "cpu".
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        match self.device {
            Device::Cpu => "cpu".into(),
            Device::Gpu(_) => "webgpu".into(),
        }
    }

    /// The adapter's limits glimpse uses (null on the CPU).
    pub fn info(&self) -> Result<JsValue, JsValue> {
        match &self.device {
            Device::Cpu => Ok(JsValue::NULL),
            Device::Gpu(ctx) => serde_wasm_bindgen::to_value(ctx.summary()).map_err(js_err),
        }
    }

    /// The GPU memory glimpse holds: `{heldBytes, poolFreeBytes}` (null on the CPU). Held:
    /// every buffer created and not destroyed (weights, activations in use, free pooled ones).
    #[wasm_bindgen(js_name = memoryStats)]
    pub fn memory_stats(&self) -> JsValue {
        match &self.device {
            Device::Cpu => JsValue::NULL,
            Device::Gpu(ctx) => {
                let o = js_sys::Object::new();
                let _ = Reflect::set(&o, &"heldBytes".into(), &(ctx.held_bytes() as f64).into());
                let _ = Reflect::set(
                    &o,
                    &"poolFreeBytes".into(),
                    &(ctx.pool_free_bytes() as f64).into(),
                );
                o.into()
            }
        }
    }

    /// Why the WebGPU device was lost, or `undefined` while it works (always on the CPU).
    #[wasm_bindgen(js_name = lostReason)]
    pub fn lost_reason(&self) -> Option<String> {
        match &self.device {
            Device::Cpu => None,
            Device::Gpu(ctx) => ctx.lost_reason(),
        }
    }

    /// Destroys the WebGPU device as a driver reset would (no-op on the CPU). For testing that
    /// the worker recovers from device loss.
    #[wasm_bindgen(js_name = destroyDevice)]
    pub fn destroy_device(&self) {
        if let Device::Gpu(ctx) = &self.device {
            ctx.destroy();
        }
    }

    /// Output of a self-check case (see `caseNames()`) with inputs drawn from `seed`.
    #[wasm_bindgen(js_name = runCase)]
    pub async fn run_case(&self, name: String, seed: f64) -> Result<Vec<f32>, JsValue> {
        selfcheck::run_case(&name, seed as u64, &self.device)
            .await
            .map_err(js_err)
    }

    /// The key a passing self-test is kept under, with the adapter's description
    /// (`selfcheck::fingerprint`: kernel sources, cases, tolerances, version).
    #[wasm_bindgen(js_name = selfcheckFingerprint)]
    pub fn selfcheck_fingerprint() -> String {
        selfcheck::fingerprint()
    }

    /// Every case on this device and on the CPU, compared: `[{case, max_abs_diff, tolerance, pass}]`.
    pub async fn selfcheck(&self, seed: f64) -> Result<JsValue, JsValue> {
        let r = selfcheck::selfcheck(&self.device, seed as u64)
            .await
            .map_err(js_err)?;
        serde_wasm_bindgen::to_value(&r).map_err(js_err)
    }

    /// Kernel benchmark rows for this device (see `formatBenchTable`).
    #[wasm_bindgen(js_name = benchKernels)]
    pub async fn bench_kernels(&self, samples: u32, max_n: u32) -> Result<JsValue, JsValue> {
        let opts = BenchOptions {
            samples: samples.max(1) as usize,
            target_ms: 20.0,
            max_n: max_n as usize,
        };
        let label = match self.device {
            Device::Cpu => "cpu",
            Device::Gpu(_) => "webgpu",
        };
        let rows = bench::bench_kernels(&self.device, label, &opts)
            .await
            .map_err(js_err)?;
        serde_wasm_bindgen::to_value(&rows).map_err(js_err)
    }

    /// One model at a real shape with seeded random weights on this device (as the CLI's
    /// `bench model`): `{arch, size, dtype, load_ms, image_encode_ms, first_token_ms,
    /// tokens_per_s, …}`. The page reads its wasm memory around it for the peak.
    #[wasm_bindgen(js_name = benchModel)]
    pub async fn bench_model(
        &self,
        arch: String,
        size: String,
        dtype: String,
        new_tokens: u32,
    ) -> Result<JsValue, JsValue> {
        let label = match self.device {
            Device::Cpu => "cpu",
            Device::Gpu(_) => "webgpu",
        };
        let dtype = crate::DType::parse(&dtype).map_err(js_err)?;
        let row = bench::bench_model(
            &arch,
            &size,
            &self.device,
            label,
            dtype,
            new_tokens.max(1) as usize,
        )
        .await
        .map_err(js_err)?;
        to_js(&row)
    }

    /// An f32 tensor from data and shape.
    pub fn tensor(&self, data: Vec<f32>, shape: Vec<u32>) -> Result<JsTensor, JsValue> {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        Tensor::from_f32(&data, &shape, &self.device)
            .map(JsTensor)
            .map_err(js_err)
    }

    /// A weight tensor stored as `dtype`: "f32", "f16", "q8_0" or "q4_0".
    pub fn weight(
        &self,
        name: String,
        data: Vec<f32>,
        shape: Vec<u32>,
        dtype: String,
    ) -> Result<JsTensor, JsValue> {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let dtype = DType::parse(&dtype).map_err(js_err)?;
        Tensor::weight(&name, &data, &shape, dtype, &self.device)
            .map(JsTensor)
            .map_err(js_err)
    }
}

/// A tensor on an engine's device.
#[wasm_bindgen(js_name = Tensor)]
pub struct JsTensor(Tensor);

#[wasm_bindgen(js_class = Tensor)]
impl JsTensor {
    #[wasm_bindgen(getter)]
    pub fn shape(&self) -> Vec<u32> {
        self.0.shape().iter().map(|&d| d as u32).collect()
    }
    #[wasm_bindgen(getter)]
    pub fn dtype(&self) -> String {
        self.0.dtype().name().into()
    }
    pub fn matmul(&self, rhs: &JsTensor) -> Result<JsTensor, JsValue> {
        self.0.matmul(&rhs.0).map(JsTensor).map_err(js_err)
    }
    /// `self · wᵀ` for a weight `[N, K]` of any dtype.
    pub fn linear(&self, w: &JsTensor) -> Result<JsTensor, JsValue> {
        self.0.linear(&w.0, None).map(JsTensor).map_err(js_err)
    }
    pub fn softmax(&self) -> Result<JsTensor, JsValue> {
        self.0.softmax_last_dim().map(JsTensor).map_err(js_err)
    }
    /// Causal or full attention with `self` as q `[B, H, Tq, D]`.
    pub fn attention(
        &self,
        k: &JsTensor,
        v: &JsTensor,
        scale: f32,
        causal: bool,
    ) -> Result<JsTensor, JsValue> {
        let opts = AttentionOpts {
            scale,
            causal,
            mask: None,
            kv_len: None,
        };
        Tensor::attention(&self.0, &k.0, &v.0, &opts)
            .map(JsTensor)
            .map_err(js_err)
    }
    /// Reads the values back (awaits the GPU).
    #[wasm_bindgen(js_name = toArray)]
    pub async fn to_array(&self) -> Result<Vec<f32>, JsValue> {
        self.0.to_vec_f32().await.map_err(js_err)
    }
}

/// Names of the self-check cases.
#[wasm_bindgen(js_name = caseNames)]
pub fn case_names() -> Vec<String> {
    selfcheck::CASES.iter().map(|s| s.to_string()).collect()
}

/// Tolerance of a self-check case (GPU vs CPU, absolute).
#[wasm_bindgen(js_name = caseTolerance)]
pub fn case_tolerance(name: String) -> f32 {
    selfcheck::tolerance(&name)
}

/// Formats benchmark rows (from several engines) as the CLI's table, with CPU ratios.
#[wasm_bindgen(js_name = formatBenchTable)]
pub fn format_bench_table(rows: JsValue) -> Result<String, JsValue> {
    let mut rows: Vec<BenchRow> = serde_wasm_bindgen::from_value(rows).map_err(js_err)?;
    bench::attach_cpu_ratios(&mut rows);
    Ok(bench::format_table(&rows))
}

/// Generation options from JS (camelCase); unset ones come from generation_config.json.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsGenerateOptions {
    max_new_tokens: Option<usize>,
    min_new_tokens: Option<usize>,
    num_beams: Option<usize>,
    do_sample: Option<bool>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: Option<f64>,
    repetition_penalty: Option<f32>,
    no_repeat_ngram_size: Option<usize>,
    /// the request's key/value cache budget in bytes (default `MAX_KV_BYTES`, 1 GiB)
    max_kv_bytes: Option<f64>,
    /// conditional captioning: the caption continues this text
    prompt: Option<String>,
    /// the text stops before the first of these (adds to generation_config.json's)
    stop_strings: Option<Vec<String>>,
}

fn options(
    p: &Pipeline,
    js: &JsValue,
) -> Result<(crate::generate::GenerateOptions, Option<String>), JsValue> {
    let o: JsGenerateOptions = if js.is_undefined() || js.is_null() {
        JsGenerateOptions::default()
    } else {
        serde_wasm_bindgen::from_value(js.clone()).map_err(js_err)?
    };
    let mut g = p.default_options();
    g.max_new_tokens = o.max_new_tokens.unwrap_or(g.max_new_tokens);
    g.min_new_tokens = o.min_new_tokens.unwrap_or(g.min_new_tokens);
    g.num_beams = o.num_beams.unwrap_or(g.num_beams);
    g.do_sample = o.do_sample.unwrap_or(g.do_sample);
    g.temperature = o.temperature.unwrap_or(g.temperature);
    g.top_k = o.top_k.unwrap_or(g.top_k);
    g.top_p = o.top_p.unwrap_or(g.top_p);
    g.seed = o.seed.map_or(g.seed, |s| s as u64);
    g.repetition_penalty = o.repetition_penalty.unwrap_or(g.repetition_penalty);
    g.no_repeat_ngram_size = o.no_repeat_ngram_size.unwrap_or(g.no_repeat_ngram_size);
    g.max_kv_bytes = o.max_kv_bytes.map_or(g.max_kv_bytes, |b| b.max(0.0) as u64);
    g.stop_strings.extend(o.stop_strings.unwrap_or_default());
    // on the CPU nothing else yields during a generation: a worker could not take a cancel
    g.yield_each_token = matches!(p.device, Device::Cpu);
    Ok((g, o.prompt))
}

/// A loaded model: caption, ask, match. Images are prepared once and referred to by handle.
#[wasm_bindgen(js_name = Model)]
pub struct JsModel {
    pub(super) pipeline: Pipeline,
    pub(super) images: Vec<Option<PreparedImage>>,
    /// the conversation caches of each prepared image (instruction models)
    pub(super) sessions: std::cell::RefCell<std::collections::HashMap<u32, ChatSession>>,
    pub(super) stats: LoadStats,
}

/// A value as plain JS objects (serde_wasm_bindgen makes JSON maps into `Map`s by default).
fn to_js<T: serde::Serialize>(v: &T) -> Result<JsValue, JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::new().serialize_maps_as_objects(true))
        .map_err(js_err)
}

fn task_name(t: Task) -> &'static str {
    match t {
        Task::Caption => "caption",
        Task::Answer => "answer",
        Task::Match => "match",
        Task::Chat => "chat",
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PreparedTimed {
    handle: u32,
    preprocess_ms: f64,
    encode_ms: f64,
}

#[wasm_bindgen(js_class = Model)]
impl JsModel {
    #[wasm_bindgen(getter)]
    pub fn architecture(&self) -> String {
        self.pipeline.architecture().to_string()
    }

    /// "caption" (captions; GIT also answers questions), "answer" (BLIP VQA) or "match" (CLIP).
    #[wasm_bindgen(getter)]
    pub fn task(&self) -> String {
        task_name(self.pipeline.task()).into()
    }

    /// What the load read and made: `{bytes, params, tensors, ggufBytes}`.
    pub fn stats(&self) -> Result<JsValue, JsValue> {
        let s = &self.stats;
        let o = serde_json::json!({
            "bytes": s.bytes, "params": s.params, "tensors": s.tensors, "ggufBytes": s.gguf_bytes
        });
        to_js(&o)
    }

    /// Decodes and encodes an image (PNG, JPEG, WebP bytes); returns its handle.
    #[wasm_bindgen(js_name = prepareImage)]
    pub fn prepare_image(&mut self, bytes: &[u8]) -> Result<u32, JsValue> {
        let prepared = self.pipeline.prepare_image(bytes).map_err(js_err)?;
        self.images.push(Some(prepared));
        Ok((self.images.len() - 1) as u32)
    }

    /// As `prepareImage`, timed: `{handle, preprocessMs, encodeMs}`. On WebGPU the encode time
    /// is the time to record and submit the vision tower; the GPU may finish it later (its
    /// remainder then shows up in the first token's time).
    #[wasm_bindgen(js_name = prepareImageTimed)]
    pub fn prepare_image_timed(&mut self, bytes: &[u8]) -> Result<JsValue, JsValue> {
        let t0 = performance_now();
        let pixels = self.pipeline.pixels(bytes).map_err(js_err)?;
        let t1 = performance_now();
        let prepared = self.pipeline.encode_pixels(&pixels).map_err(js_err)?;
        let t2 = performance_now();
        self.images.push(Some(prepared));
        let timed = PreparedTimed {
            handle: (self.images.len() - 1) as u32,
            preprocess_ms: t1 - t0,
            encode_ms: t2 - t1,
        };
        serde_wasm_bindgen::to_value(&timed).map_err(js_err)
    }

    #[wasm_bindgen(js_name = releaseImage)]
    pub fn release_image(&mut self, handle: u32) {
        if let Some(slot) = self.images.get_mut(handle as usize) {
            *slot = None;
        }
        self.sessions.borrow_mut().remove(&handle);
    }

    fn image(&self, handle: u32) -> Result<&PreparedImage, JsValue> {
        self.images
            .get(handle as usize)
            .and_then(|i| i.as_ref())
            .ok_or_else(|| invalid(&format!("no prepared image {handle}")))
    }

    /// `{text, ids, new_tokens}`; `onText(textSoFar)` after every token (return false to stop).
    pub async fn caption(
        &self,
        handle: u32,
        opts: JsValue,
        on_text: Option<Function>,
    ) -> Result<JsValue, JsValue> {
        let (g, prompt) = options(&self.pipeline, &opts)?;
        let mut stream = Stream::new(on_text);
        let out = self
            .pipeline
            .caption(self.image(handle)?, prompt.as_deref(), &g, &mut |t| {
                stream.call(t)
            })
            .await;
        let out = stream.finish(out)?;
        serde_wasm_bindgen::to_value(&out).map_err(js_err)
    }

    /// The answer to `question` about the image.
    pub async fn ask(
        &self,
        handle: u32,
        question: String,
        opts: JsValue,
        on_text: Option<Function>,
    ) -> Result<JsValue, JsValue> {
        let (g, _) = options(&self.pipeline, &opts)?;
        let mut stream = Stream::new(on_text);
        let out = self
            .pipeline
            .ask(self.image(handle)?, &question, &g, &mut |t| stream.call(t))
            .await;
        let out = stream.finish(out)?;
        serde_wasm_bindgen::to_value(&out).map_err(js_err)
    }

    /// The assistant's next message about the image (instruction models): `messages` is the
    /// whole conversation, `[{role, content: string | [{type: 'image'} | {type: 'text', text}]}]`,
    /// ending with the user's turn. The image's conversation caches are reused across calls:
    /// each turn computes only what follows the prefix it shares with the previous one.
    pub async fn chat(
        &self,
        handle: u32,
        messages: JsValue,
        opts: JsValue,
        on_text: Option<Function>,
    ) -> Result<JsValue, JsValue> {
        let messages: Vec<crate::io::chat::Message> = serde_wasm_bindgen::from_value(messages)
            .map_err(|e| invalid(&format!("messages: {e}")))?;
        let (g, _) = options(&self.pipeline, &opts)?;
        let image = self.image(handle)?;
        // the session leaves the map while it runs (no RefCell borrow across an await)
        let mut session = self
            .sessions
            .borrow_mut()
            .remove(&handle)
            .unwrap_or_default();
        let mut stream = Stream::new(on_text);
        let out = self
            .pipeline
            .chat(image, &messages, &mut session, &g, &mut |t| stream.call(t))
            .await;
        if self
            .images
            .get(handle as usize)
            .is_some_and(|i| i.is_some())
        {
            self.sessions.borrow_mut().insert(handle, session);
        }
        let out = stream.finish(out)?;
        serde_wasm_bindgen::to_value(&out).map_err(js_err)
    }

    /// Probability of each text for the image (CLIP).
    #[wasm_bindgen(js_name = matchTexts)]
    pub async fn match_texts(&self, handle: u32, texts: Vec<String>) -> Result<Vec<f32>, JsValue> {
        self.pipeline
            .match_texts(self.image(handle)?, &texts)
            .await
            .map_err(js_err)
    }
}

/// Calls `onText(textSoFar)` after each token: `false` stops the generation; an exception
/// thrown by the callback stops it too and becomes the request's error (never "go on").
struct Stream {
    f: Option<Function>,
    thrown: Option<JsValue>,
}

impl Stream {
    fn new(f: Option<Function>) -> Stream {
        Stream { f, thrown: None }
    }

    fn call(&mut self, text: &str) -> bool {
        let Some(f) = &self.f else { return true };
        match f.call1(&JsValue::NULL, &JsValue::from_str(text)) {
            Ok(v) => v != JsValue::FALSE,
            Err(e) => {
                self.thrown = Some(e);
                false
            }
        }
    }

    /// The generation's result, or the callback's exception (with `code: 'callback'`).
    fn finish<T>(self, out: crate::Result<T>) -> Result<T, JsValue> {
        if let Some(e) = self.thrown {
            if e.is_object() && Reflect::get(&e, &"code".into()).is_ok_and(|c| c.is_undefined()) {
                let _ = Reflect::set(&e, &"code".into(), &"callback".into());
            }
            return Err(e);
        }
        out.map_err(js_err)
    }
}

/// Reports a Rust panic before the instance traps: its message goes to `globalThis.glimpsePanic`
/// when the host defines it (the worker does, and names it in the request's error), and to the
/// console. After a panic the instance is unusable; the worker replaces it.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("glimpse panicked: {info}");
        let global = js_sys::global();
        if let Ok(f) = Reflect::get(&global, &"glimpsePanic".into()) {
            if let Ok(f) = f.dyn_into::<Function>() {
                let _ = f.call1(&JsValue::NULL, &JsValue::from_str(&msg));
            }
        }
        web_sys::console::error_1(&JsValue::from_str(&msg));
    }));
}

/// Panics on purpose (tests of the worker's trap recovery). Never called by the page or API.
#[wasm_bindgen(js_name = debugPanic)]
pub fn debug_panic(message: String) {
    panic!("{message}");
}

/// As `debugPanic`, inside a future after it has yielded to the event loop: its promise never
/// settles (the trap unwinds nothing), which the worker must notice by itself.
#[wasm_bindgen(js_name = debugPanicAsync)]
pub async fn debug_panic_async(message: String) {
    crate::generate::yield_now().await;
    panic!("{message}");
}

/// A synthetic scene (the default model's world): `{seed, png: Uint8Array, caption, questions:
/// [{kind, question, answer}]}`, the same as `glimpse scenes` writes for this seed.
#[wasm_bindgen(js_name = sampleScene)]
pub fn sample_scene(seed: f64, size: u32) -> Result<JsValue, JsValue> {
    if !(16..=512).contains(&size) {
        return Err(invalid(&format!(
            "scene size {size} is outside 16..=512 pixels"
        )));
    }
    #[derive(serde::Serialize)]
    struct Out {
        seed: u64,
        png: serde_bytes::ByteBuf,
        caption: String,
        questions: Vec<crate::scenes::Qa>,
    }
    let scene = crate::scenes::Scene::generate(seed as u64, size as usize);
    let out = Out {
        seed: scene.seed,
        png: serde_bytes::ByteBuf::from(scene.png().map_err(js_err)?),
        caption: scene.caption(),
        questions: scene.questions(),
    };
    serde_wasm_bindgen::to_value(&out).map_err(js_err)
}

/// The size of this instance's wasm memory in bytes: it only grows, so after a load it is the
/// peak the load reached.
#[wasm_bindgen(js_name = memoryBytes)]
pub fn memory_bytes() -> f64 {
    let m: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    m.buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as f64
}
