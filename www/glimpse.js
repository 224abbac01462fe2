// glimpse's JS API. Everything runs in a module Web Worker (worker.js) that owns the wasm
// instance and the GPU device; this module only posts requests and streams the answers back.
//
//   import * as glimpse from './glimpse.js';
//   const model = await glimpse.load('scenes-git', { device: 'auto', onProgress });
//   const { text } = await model.caption(fileOrImage, { onToken: ({ text }) => …, signal });
//   const { text: answer } = await model.ask(fileOrImage, 'what color is the ring?');
//   const labels = await model.match(image, ['a cat', 'a dog']);   // CLIP: [{label, score}], best first
//   // instruction models (SmolVLM): a conversation, the image in its first user turn
//   const messages = [{ role: 'user', content: [{ type: 'image', image: file }, { type: 'text', text: 'What is this?' }] }];
//   const { text: reply } = await model.chat(messages, { onToken, signal });
//   messages.push({ role: 'assistant', content: reply }, { role: 'user', content: 'And the color?' });
//   await model.chat(messages);   // reuses the first turn's work (the image is encoded once)
//
// `model` is a catalog id (models/catalog.json), a URL of a model folder or of a .gguf file,
// or an array of user-picked Files. Images are File/Blob, ImageBitmap, HTMLImageElement,
// HTMLCanvasElement/OffscreenCanvas, ImageData or encoded bytes (Uint8Array/ArrayBuffer).

const HERE = new URL('.', import.meta.url);
export const DEFAULT_MODEL = 'scenes-git';
export const CATALOG_URL = new URL('../models/catalog.json', HERE).href;

let shared = null;

/** One worker per page, shared by every model (and by widget.js). */
export function worker() {
  shared ??= new Client();
  return shared;
}

/** An Error with the worker protocol's `code` ('cancelled' errors are named AbortError). */
function coded(code, message) {
  const e = Object.assign(new Error(message), { code });
  if (code === 'cancelled') e.name = 'AbortError';
  return e;
}

/**
 * The page's side of the worker protocol (see worker.js). Errors reject with an Error carrying
 * `code`. When the worker's wasm instance traps, the client replaces the worker (a fresh module
 * and memory) and reloads every live model in it, keeping the Model objects; the request that
 * trapped fails with code 'trap' and later requests wait for the reload.
 */
class Client {
  constructor() {
    this.next = 1;
    this.pending = new Map();
    this.backend = null;
    this.device = null;
    this.listeners = new Set();
    this.models = new Set(); // live Model objects, reloaded after a restart
    this.restarting = null; // a promise while a new worker is being set up
    this.restarts = 0;
    // a pool thread of the threaded CPU build that traps cannot reach its (blocked) worker: it
    // says so here instead (www/thread.js), and the worker is replaced as after any trap
    this.trapChannel = `glimpse-trap-${Math.random().toString(36).slice(2)}-${Date.now()}`;
    if (typeof BroadcastChannel === 'function') {
      this.traps = new BroadcastChannel(this.trapChannel);
      this.traps.onmessage = (ev) => this.restart(ev.data?.reason ?? 'a CPU pool thread trapped');
    }
    this.spawn();
  }

  spawn() {
    // the worker's name is the trap channel its CPU pool threads report on (www/thread.js)
    const w = new Worker(new URL('worker.js', HERE), { type: 'module', name: this.trapChannel });
    w.onmessage = (ev) => this.receive(ev.data);
    w.onerror = (ev) => {
      const err = coded('error', `the glimpse worker failed: ${ev.message || 'could not start (is pkg/ built?)'}`);
      for (const p of this.pending.values()) p.settle(() => p.reject(err));
      this.pending.clear();
    };
    this.w = w;
  }

  receive(m) {
    if (m.event === 'backend') {
      // the worker replaced a lost WebGPU device (or fell back to the CPU)
      this.backend = Promise.resolve(m.backend);
      for (const f of this.listeners) f(m.backend);
      return;
    }
    if (m.event === 'trapped') {
      this.restart(m.reason);
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    if ('progress' in m) return this.callback(m.id, p, p.onProgress, m.progress);
    if ('text' in m) return this.callback(m.id, p, p.onText, m.text);
    this.pending.delete(m.id);
    if ('error' in m) {
      p.settle(() => p.reject(coded(m.code ?? (m.cancelled ? 'cancelled' : 'error'), m.error)));
    } else {
      p.settle(() => p.resolve(m.result));
    }
  }

  /** Runs a caller's callback; if it throws, the request is cancelled and fails with that error. */
  callback(id, p, f, value) {
    try {
      f?.(value);
    } catch (e) {
      this.pending.delete(id);
      this.w.postMessage({ type: 'cancel', target: id });
      if (e && typeof e === 'object' && e.code === undefined) e.code = 'callback';
      p.settle(() => p.reject(e));
    }
  }

  /** Posts a request; `signal` cancels it (queued: never runs; generating: stops at the next token). */
  async request(type, body = {}, opts = {}) {
    if (this.restarting && !opts.internal) await this.restarting.catch(() => {});
    return this.post(type, body, opts);
  }

  post(type, body, { onProgress, onText, signal, transfer = [] } = {}) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(coded('cancelled', 'cancelled'));
        return;
      }
      const onAbort = () => this.w.postMessage({ type: 'cancel', target: id });
      signal?.addEventListener('abort', onAbort, { once: true });
      // every way a request ends removes its abort listener
      const settle = (f) => {
        signal?.removeEventListener('abort', onAbort);
        f();
      };
      this.pending.set(id, { resolve, reject, onProgress, onText, settle });
      this.w.postMessage({ id, type, ...body }, transfer);
    });
  }

  /** Replaces a worker whose wasm instance trapped, then reloads every live model in the new one. */
  restart(reason) {
    if (this.restarting) return;
    this.restarts += 1;
    this.w.terminate();
    const gone = coded('trap', `glimpse hit an internal error (${reason}); its engine was restarted: run the request again`);
    for (const p of this.pending.values()) p.settle(() => p.reject(gone));
    this.pending.clear();
    this.spawn();
    this.restarting = (async () => {
      const backend = await this.post('init', { device: this.device ?? 'auto', selfcheck: this.selfcheck ?? 'cached', threads: this.threads ?? 'auto' });
      this.backend = Promise.resolve(backend);
      for (const model of this.models) {
        try {
          const info = await this.post('load', model.loadRequest);
          model.handle = info.handle;
          model.broken = null;
        } catch (e) {
          model.broken = `it could not be reloaded after the engine restarted: ${e.message}`;
        }
        model.images = new WeakMap();
      }
      for (const f of this.listeners) f(backend);
    })().finally(() => { this.restarting = null; });
  }

  /** Resolves once no restart is under way (a model's handle is then current). */
  async ready() {
    if (this.restarting) await this.restarting.catch(() => {});
  }

  /** Calls `f(backend)` whenever the worker changes device (after a WebGPU device loss). */
  onBackendChange(f) {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  /** Opens the engine once: `device` 'auto' | 'webgpu' | 'cpu'; `selfcheck` 'cached' (a passing
   * kernel self-test is kept per adapter and build) or 'always'; `threads` for the CPU path
   * ('auto', or a number; 1 = the single-thread build; more needs a cross-origin isolated page). */
  async init(device, { selfcheck = 'cached', threads = 'auto' } = {}) {
    if (!this.backend) {
      this.device = device;
      this.selfcheck = selfcheck;
      this.threads = threads;
      // a failed init is not kept: the next call tries again
      this.backend = this.request('init', { device, selfcheck, threads }).catch((e) => {
        this.backend = null;
        throw e;
      });
    }
    return this.backend;
  }
}

/** Encoded image bytes (PNG) of anything image-like; encoded bytes pass through. */
export async function imageBytes(image) {
  if (image instanceof Uint8Array) return image;
  if (image instanceof ArrayBuffer) return new Uint8Array(image);
  if (typeof Blob !== 'undefined' && image instanceof Blob) return new Uint8Array(await image.arrayBuffer());
  if (typeof HTMLImageElement !== 'undefined' && image instanceof HTMLImageElement) {
    if (!image.complete) await image.decode();
    if (!image.naturalWidth) throw new Error('the image has no pixels (it failed to load)');
  }
  const w = image.naturalWidth ?? image.displayWidth ?? image.width;
  const h = image.naturalHeight ?? image.displayHeight ?? image.height;
  if (!w || !h) throw new Error('not an image: give a File, Blob, ImageBitmap, <img>, canvas, ImageData or bytes');
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext('2d');
  if (typeof ImageData !== 'undefined' && image instanceof ImageData) ctx.putImageData(image, 0, 0);
  else ctx.drawImage(image, 0, 0);
  return new Uint8Array(await (await canvas.convertToBlob({ type: 'image/png' })).arrayBuffer());
}

/** Where a model comes from, as the worker reads it. */
function source(model, opts) {
  if (Array.isArray(model) || (typeof FileList !== 'undefined' && model instanceof FileList)) return { files: Array.from(model) };
  if (typeof model === 'string' && /^[\w.-]+$/.test(model) && !model.endsWith('.gguf')) {
    return { catalog: model, catalogUrl: opts.catalog ?? CATALOG_URL, preferGguf: opts.dtype === 'q8_0' };
  }
  return { url: new URL(model, location.href).href };
}

/**
 * Loads a model in the worker. Options: device ('auto' | 'webgpu' | 'cpu'; auto = WebGPU after a
 * kernel self-test, else CPU), threads (the CPU path's: 'auto' = every core, at most 8, where the
 * page is cross-origin isolated; 1 = one; the first load's choice holds for the page), dtype
 * ('f32' | 'f16' | 'q8_0' | 'q4_0'), onProgress({file, loaded, total, stored}), catalog (URL of a catalog.json), store (default true: keep a catalog or URL
 * model in this browser as one GGUF file in the dtype asked, so the next load reads it with no
 * download, also offline). The weights stream straight to the device as they arrive; the model
 * says where it came from (`from`: 'network' | 'store' | 'files'), `downloadedBytes`,
 * `storedBytes`, and `peakWasmBytes` (the wasm memory the load reached). Its `warnings` say what
 * could not be stored (e.g. a full storage quota).
 */
export async function load(model = DEFAULT_MODEL, opts = {}) {
  const client = worker();
  const backend = await client.init(opts.device ?? 'auto', { threads: opts.threads ?? 'auto' });
  const loadRequest = {
    source: source(model, opts),
    dtype: opts.dtype ?? 'f32',
    store: opts.store ?? true,
  };
  const info = await client.request('load', loadRequest, { onProgress: opts.onProgress });
  const m = new Model(client, info, backend);
  m.loadRequest = loadRequest;
  client.models.add(m);
  return m;
}

/** The models kept in this browser: [{key, name, dtype, bytes, downloadedBytes, storedAt}]. */
export function storedModels() {
  return worker().request('stored');
}

/** Removes a kept model (by its `key` from storedModels() or a model's `storeKey`). */
export function forgetModel(key) {
  return worker().request('forget', { key });
}

/** A loaded model. Images are encoded once and reused across captions and questions. */
export class Model {
  constructor(client, info, backend) {
    this.client = client;
    this.handle = info.handle;
    this.architecture = info.architecture;
    this.task = info.task;
    this.bytes = info.bytes;
    this.params = info.params;
    this.from = info.from;
    this.storeKey = info.storeKey;
    this.downloadedBytes = info.downloadedBytes;
    this.storedBytes = info.storedBytes;
    this.peakWasmBytes = info.peakWasmBytes;
    this.loadTimings = info.timings;
    this.warnings = info.warnings ?? [];
    this.backend = backend;
    this.images = new WeakMap();
  }

  /** The worker's handle of a prepared image (cached per image object). */
  async prepare(image) {
    await this.usable();
    const cacheable = typeof image === 'object' && image !== null;
    if (cacheable && this.images.has(image)) return this.images.get(image);
    const p = (async () => {
      const t0 = performance.now();
      const bytes = await imageBytes(image);
      const t1 = performance.now();
      const r = await this.client.request('prepare', { model: this.handle, bytes });
      return { image: r.image, timings: { readMs: t1 - t0, preprocessMs: r.preprocessMs, encodeMs: r.encodeMs } };
    })();
    if (cacheable) {
      this.images.set(image, p);
      p.catch(() => this.images.delete(image));
    }
    return p;
  }

  /** Waits out an engine restart; a model that could not be reloaded is an error. */
  async usable() {
    await this.client.ready();
    if (this.broken) throw coded('trap', `the model cannot run: ${this.broken}`);
  }

  /** Frees a prepared image in the worker. */
  async forget(image) {
    const p = this.images.get(image);
    if (!p) return;
    this.images.delete(image);
    const { image: handle } = await p;
    await this.client.request('release', { model: this.handle, image: handle });
  }

  async generate(type, image, extra, opts = {}) {
    const { onToken, signal, ...options } = opts;
    const reused = typeof image === 'object' && image !== null && this.images.has(image);
    const prepared = await this.prepare(image);
    await this.usable();
    let last = '';
    const out = await this.client.request(type, { model: this.handle, image: prepared.image, options, ...extra }, {
      signal,
      onText: (text) => {
        const delta = text.startsWith(last) ? text.slice(last.length) : text;
        last = text;
        onToken?.({ text, delta });
      },
    });
    // a reused image was encoded by an earlier request: its encode cost is not this request's
    const imageTimings = reused ? { imageReused: true } : prepared.timings;
    return { ...out, timings: { ...imageTimings, ...out.timings } };
  }

  /** `{text, ids, new_tokens, timings}`; options: onToken({text, delta}), signal, maxNewTokens, numBeams, prompt, … */
  caption(image, opts) {
    return this.generate('caption', image, {}, opts);
  }

  ask(image, question, opts) {
    return this.generate('ask', image, { question }, opts);
  }

  /**
   * The assistant's next message in a conversation about one image (instruction models such
   * as SmolVLM): `messages` is the whole conversation, `[{role, content}]`, content a string or
   * parts `[{type: 'image', image}, {type: 'text', text}]`, the image (anything `caption`
   * takes) in one part. Returns `{text, ids, new_tokens, timings}`; options as `caption`, plus
   * `stopStrings`. Calls with the same image object reuse its encoding and the earlier turns'
   * caches.
   */
  async chat(messages, opts) {
    if (!Array.isArray(messages) || messages.length === 0) throw coded('invalid', 'chat needs a non-empty array of messages');
    const images = [];
    const plain = messages.map((m) => {
      if (!m || typeof m !== 'object' || typeof m.role !== 'string') throw coded('invalid', 'each message needs a role and a content');
      if (typeof m.content === 'string') return { role: m.role, content: m.content };
      if (!Array.isArray(m.content)) throw coded('invalid', `a ${m.role} message's content must be a string or an array of parts`);
      return {
        role: m.role,
        content: m.content.map((part) => {
          if (part?.type === 'image') {
            images.push(part.image);
            return { type: 'image' };
          }
          if (part?.type === 'text') return { type: 'text', text: String(part.text ?? '') };
          throw coded('invalid', `unknown content part ${JSON.stringify(part?.type)} (use 'image' or 'text')`);
        }),
      };
    });
    if (images.length !== 1) throw coded('invalid', `a conversation shows exactly one image (in a content part {type: 'image', image}); it has ${images.length}`);
    if (images[0] === undefined || images[0] === null) throw coded('invalid', "the image part has no image (give {type: 'image', image: file})");
    return this.generate('chat', images[0], { messages: plain }, opts);
  }

  /**
   * Zero-shot labels (CLIP): `[{label, score}]`, best first, scores summing to 1 over `texts`;
   * the array carries `timings` ({readMs, encodeMs, matchMs}).
   */
  async match(image, texts) {
    const prepared = await this.prepare(image);
    await this.usable();
    const r = await this.client.request('match', { model: this.handle, image: prepared.image, texts });
    const out = texts.map((label, i) => ({ label, score: r.scores[i] })).sort((a, b) => b.score - a.score);
    out.timings = { ...prepared.timings, ...r.timings };
    return out;
  }

  dispose() {
    this.client.models.delete(this);
    return this.client.request('dispose', { model: this.handle });
  }
}

/** A synthetic scene from the default model's world: {seed, png, caption, questions}. */
export function sampleScene(seed, size = 64) {
  return worker().request('scene', { seed, size });
}
