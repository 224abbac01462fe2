// The glimpse worker: a module Web Worker that owns the wasm instance and the GPU device.
// www/glimpse.js talks to it; nothing here touches the page.
//
// Protocol: the page posts {id, type, ...}; the worker answers {id, result} or {id, error},
// and on the way {id, progress} (downloads) or {id, text} (each generated token). Requests run
// one at a time in arrival order; {type: 'cancel', target} stops a queued request before it
// starts, or a running generation at its next token. An error answers its own request only:
// the worker goes on serving. Events not tied to a request ({event: 'backend', backend}) tell
// the page that the device changed (after a WebGPU device loss).
//
// Model files fetched from a URL are kept in the Cache API (the same cache the service worker
// fills), once every file arrived whole, matched the catalog's byte count and sha256, and the
// model loaded; all of a model's files are stored or none. A storage error (quota) does not fail
// the load: it comes back as a warning.
//
// WebGPU device loss: before each request and after each failed one the worker asks the engine
// whether its device was lost. If so it opens a new device (or falls back to the CPU), reloads
// every model from its source and re-encodes the prepared images, keeping their handles; the
// request that hit the loss fails with a message that says so, and the next one runs.

import init, * as wasm from '../pkg/glimpse.js';
import { describeAdapter, messageOf } from './engine.js';

let engine = null; // wasm Engine
let backend = null; // {device, reason, adapter, selfcheck}
let requestedDevice = 'auto';
const models = new Map(); // handle -> {model, info, source, dtype, images: Map<handle, {bytes, inner}>}
let nextModel = 1;
let nextImage = 1;
const MODEL_CACHE = 'models-glimpse-v1'; // = sw.js MODELS
const cancelled = new Set();
let queue = Promise.resolve();

const post = (m) => self.postMessage(m);

self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.type === 'cancel') {
    cancelled.add(msg.target);
    return;
  }
  queue = queue.then(() => serve(msg));
};

async function serve(msg) {
  const { id } = msg;
  try {
    if (cancelled.has(id)) throw Object.assign(new Error('cancelled'), { cancelled: true });
    const handler = HANDLERS[msg.type];
    if (!handler) throw new Error(`unknown request ${msg.type}`);
    if (msg.type !== 'init' && lostReason()) await recover(lostReason());
    post({ id, result: await handler(msg) });
  } catch (e) {
    let error = messageOf(e);
    const lost = await waitForLoss();
    if (lost) {
      try {
        const b = await recover(lost);
        error = `the WebGPU device was lost (${lost}) during this request; glimpse opened ${b.device === 'webgpu' ? 'a new WebGPU device' : 'the CPU'} and reloaded the model: run the request again`;
      } catch (r) {
        error = `the WebGPU device was lost (${lost}) and could not be reopened: ${messageOf(r)}`;
      }
    }
    post({ id, error, cancelled: Boolean(e?.cancelled) || cancelled.has(id) });
  } finally {
    cancelled.delete(id);
  }
}

function lostReason() {
  return engine?.lostReason?.() ?? null;
}

/** WebGPU reports a loss asynchronously: after a failed GPU request, give it a moment to arrive. */
async function waitForLoss() {
  if (!engine || engine.device !== 'webgpu') return null;
  for (let i = 0; i < 10 && !lostReason(); i += 1) await new Promise((r) => setTimeout(r, 20));
  return lostReason();
}

/** A new engine after device loss, then every model and prepared image again, same handles. */
async function recover(reason) {
  try { engine?.free?.(); } catch { /* the old engine's device is gone */ }
  engine = null;
  const previous = backend;
  backend = await openEngine(requestedDevice === 'cpu' ? 'cpu' : 'auto');
  backend.recoveredFrom = reason;
  if (previous?.device === 'webgpu' && backend.device === 'cpu') backend.reason = `the WebGPU device was lost (${reason}) and could not be reopened; ${backend.reason}`;
  for (const [, rec] of models) {
    try { rec.model?.free?.(); } catch { /* belonged to the lost device */ }
    rec.model = null;
    try {
      const files = await fetchModel(rec.source, null);
      rec.model = files.gguf ? engine.loadGguf(files.gguf, rec.dtype) : engine.loadModel(files, rec.dtype);
      for (const img of rec.images.values()) img.inner = rec.model.prepareImage(img.bytes);
      rec.broken = null;
    } catch (e) {
      rec.broken = `it could not be reloaded after the WebGPU device was lost: ${messageOf(e)}`;
    }
  }
  post({ event: 'backend', backend });
  return backend;
}

async function openCpu(reason) {
  engine = await wasm.Engine.create({ device: 'cpu' });
  return { device: 'cpu', reason };
}

/**
 * 'webgpu', 'cpu' or 'auto'. Auto takes WebGPU when an adapter with the limits glimpse needs
 * exists and the kernels pass a short numeric self-test against the CPU path; otherwise the CPU,
 * with the reason.
 */
async function openEngine(device) {
  if (device === 'cpu') return openCpu('the CPU was asked for');
  const adapter = await describeAdapter();
  if (!adapter.available) {
    if (device === 'webgpu') throw new Error(`WebGPU is not available: ${adapter.reason}`);
    return { ...(await openCpu(adapter.reason)), adapter };
  }
  try {
    engine = await wasm.Engine.create({ device: 'webgpu' });
  } catch (e) {
    if (device === 'webgpu') throw e;
    return { ...(await openCpu(`WebGPU refused: ${messageOf(e)}`)), adapter };
  }
  let selfcheck = null;
  if (device === 'auto') {
    const t0 = performance.now();
    const results = await engine.selfcheck(1);
    const failed = results.filter((r) => !r.pass);
    selfcheck = { pass: failed.length === 0, ms: performance.now() - t0, cases: results.length, results };
    if (failed.length) {
      engine.free?.();
      const why = failed.map((r) => `${r.case} off by ${r.max_abs_diff}`).join(', ');
      return { ...(await openCpu(`the WebGPU kernels failed the start-up self-test (${why})`)), adapter, selfcheck };
    }
  }
  return { device: 'webgpu', reason: null, adapter, selfcheck, limits: engine.info() };
}

async function sha256(bytes) {
  const d = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

const warnings = new Map(); // request id -> [warning]
const warn = (id, text) => {
  if (id === null) return;
  if (!warnings.has(id)) warnings.set(id, []);
  warnings.get(id).push(text);
};

/**
 * Fetches a URL into bytes, reporting {file, loaded, total, cached} as it arrives. `expect`
 * ({bytes, sha256}, from the catalog) is checked before the bytes are used or cached. A file in
 * the model cache is used without a download.
 */
async function download(url, file, id, expect = {}) {
  const report = (p) => id !== null && post({ id, progress: { file, ...p } });
  const href = String(url);
  const cacheable = /^https?:/.test(href) && typeof caches !== 'undefined';
  let cache = null;
  if (cacheable) {
    try {
      cache = await caches.open(MODEL_CACHE);
      const hit = await cache.match(href);
      if (hit) {
        const b = new Uint8Array(await hit.arrayBuffer());
        if (!(await mismatch(b, expect))) {
          report({ loaded: b.length, total: b.length, cached: true });
          return b;
        }
        await cache.delete(href); // a stale or damaged copy is never used
      }
    } catch (e) {
      warn(id, `${file}: the model cache cannot be read (${messageOf(e)})`);
      cache = null;
    }
  }
  const res = await fetch(href);
  if (!res.ok) throw new Error(`${file}: HTTP ${res.status} from ${href}`);
  const total = Number(res.headers.get('content-length')) || expect.bytes || null;
  let out;
  if (!res.body) {
    out = new Uint8Array(await res.arrayBuffer());
    report({ loaded: out.length, total: out.length });
  } else {
    const reader = res.body.getReader();
    const chunks = [];
    let loaded = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      loaded += value.length;
      report({ loaded, total });
    }
    if (total !== null && loaded !== total) throw new Error(`${file}: the download stopped at ${loaded} of ${total} bytes`);
    out = new Uint8Array(loaded);
    let at = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.length;
    }
  }
  const why = await mismatch(out, expect);
  if (why) throw new Error(`${file}: ${why}; it was not used`);
  if (cache && id !== null) {
    if (!toStore.has(id)) toStore.set(id, []);
    toStore.get(id).push({ href, file, bytes: out, type: res.headers.get('content-type') ?? 'application/octet-stream' });
  }
  return out;
}

const toStore = new Map(); // request id -> downloaded files to cache once the model loaded

/**
 * Caches the files a load downloaded, all or none: if one cannot be stored (a full quota), the
 * ones already stored are removed again, and the load returns a warning instead of failing.
 */
async function storeDownloads(id) {
  const files = toStore.get(id) ?? [];
  toStore.delete(id);
  if (!files.length) return;
  const cache = await caches.open(MODEL_CACHE);
  const done = [];
  try {
    for (const f of files) {
      await cache.put(f.href, new Response(f.bytes, { headers: { 'content-type': f.type } }));
      done.push(f.href);
    }
  } catch (e) {
    for (const href of done) await cache.delete(href).catch(() => {});
    const quota = e?.name === 'QuotaExceededError' || /quota/i.test(messageOf(e));
    warn(id, `The model was not stored for offline use: ${quota ? 'the browser\'s storage quota for this site is full' : messageOf(e)}. It works now, and will be downloaded again next time.`);
  }
}

/** Why `bytes` are not the file the catalog describes (`expect` = {bytes, sha256}), or null. */
async function mismatch(bytes, expect) {
  if (expect.bytes !== undefined && bytes.length !== expect.bytes) return `${bytes.length} bytes arrived, the catalog says ${expect.bytes}`;
  if (expect.sha256 && (await sha256(bytes)) !== expect.sha256) return 'its sha256 differs from the catalog\'s';
  return null;
}

const utf8 = (b) => new TextDecoder().decode(b);

/** The files of a model: {gguf} or {config, generationConfig, preprocessorConfig, tokenizer, weights}. */
async function fetchModel(source, id) {
  if (source.files) return readLocalFiles(source.files);
  if (source.catalog) {
    const catalogUrl = new URL(source.catalogUrl, self.location.href);
    const res = await fetch(catalogUrl);
    if (!res.ok) throw new Error(`catalog.json: HTTP ${res.status} from ${catalogUrl}`);
    const catalog = await res.json();
    const entry = catalog.models.find((m) => m.id === source.catalog);
    if (!entry) throw new Error(`the catalog has no model ${source.catalog} (it has ${catalog.models.map((m) => m.id).join(', ')})`);
    const files = entry.files.map((f) => ({ ...f, href: new URL(f.url, catalogUrl).href }));
    const pick = (n) => files.find((f) => f.name === n);
    if (source.preferGguf && files.some((f) => f.name.endsWith('.gguf'))) {
      const g = files.find((f) => f.name.endsWith('.gguf'));
      return { gguf: await download(g.href, g.name, id, g) };
    }
    const get = async (n, optional = false) => {
      const f = pick(n);
      if (!f) {
        if (optional) return null;
        throw new Error(`catalog entry ${entry.id} lists no ${n}`);
      }
      return download(f.href, n, id, f);
    };
    return assemble(await get('config.json'), await get('generation_config.json', true),
      await get('preprocessor_config.json'), await get('tokenizer.json'), [await get('model.safetensors')]);
  }
  const url = new URL(source.url, self.location.href);
  if (url.pathname.endsWith('.gguf')) return { gguf: await download(url, url.pathname.split('/').pop(), id) };
  const base = url.href.endsWith('/') ? url.href : `${url.href}/`;
  const got = {};
  for (const n of ['config.json', 'preprocessor_config.json', 'tokenizer.json', 'model.safetensors']) {
    got[n] = await download(new URL(n, base), n, id);
  }
  let generation = null;
  try {
    generation = await download(new URL('generation_config.json', base), 'generation_config.json', id);
  } catch {
    generation = null; // optional, as in transformers
  }
  return assemble(got['config.json'], generation, got['preprocessor_config.json'], got['tokenizer.json'], [got['model.safetensors']]);
}

async function readLocalFiles(files) {
  const byName = new Map(files.map((f) => [f.name, f]));
  const gguf = files.find((f) => f.name.endsWith('.gguf'));
  if (gguf) return { gguf: new Uint8Array(await gguf.arrayBuffer()) };
  const need = (n) => {
    const f = byName.get(n);
    if (!f) throw new Error(`the chosen files lack ${n} (pick config.json, preprocessor_config.json, tokenizer.json and model.safetensors, or one .gguf)`);
    return f.arrayBuffer().then((b) => new Uint8Array(b));
  };
  const gen = byName.get('generation_config.json');
  return assemble(await need('config.json'), gen ? new Uint8Array(await gen.arrayBuffer()) : null,
    await need('preprocessor_config.json'), await need('tokenizer.json'), [await need('model.safetensors')]);
}

function assemble(config, generation, preprocessor, tokenizer, weights) {
  return {
    config: utf8(config),
    generationConfig: generation ? utf8(generation) : undefined,
    preprocessorConfig: utf8(preprocessor),
    tokenizer,
    weights,
  };
}

function record(h) {
  const m = models.get(h);
  if (!m) throw new Error(`no loaded model ${h} (it was disposed?)`);
  if (m.broken) throw new Error(`the model cannot run: ${m.broken}; load it again`);
  return m;
}

/** The wasm model and the wasm handle of a prepared image. */
function modelImage(h, image) {
  const rec = record(h);
  const img = rec.images.get(image);
  if (!img) throw new Error(`no prepared image ${image} (it was released?)`);
  return [rec.model, img.inner];
}

/** Runs a generation, posting each text so far and stopping when the request is cancelled. */
async function generate(msg, run) {
  const t0 = performance.now();
  let first = null;
  let pieces = 0;
  const out = await run((text) => {
    if (cancelled.has(msg.id)) return false;
    if (first === null) first = performance.now() - t0;
    pieces += 1;
    post({ id: msg.id, text });
    return true;
  });
  const ms = performance.now() - t0;
  if (cancelled.has(msg.id)) throw Object.assign(new Error('cancelled'), { cancelled: true });
  return { ...out, timings: { firstTokenMs: first, totalMs: ms, tokensPerSecond: out.new_tokens / (ms / 1000), pieces } };
}

const HANDLERS = {
  async init({ device = 'auto' }) {
    await init();
    if (engine) return backend;
    requestedDevice = device;
    backend = await openEngine(device);
    return backend;
  },

  async load({ id, source, dtype = 'f32' }) {
    if (!engine) throw new Error('the worker has no engine yet (init first)');
    try {
      const t0 = performance.now();
      const files = await fetchModel(source, id);
      const t1 = performance.now();
      const m = files.gguf ? engine.loadGguf(files.gguf, dtype) : engine.loadModel(files, dtype);
      await storeDownloads(id); // only files that loaded are kept
      const handle = nextModel++;
      const info = {
        handle,
        architecture: m.architecture,
        task: m.task,
        bytes: files.gguf ? files.gguf.length : files.weights.reduce((n, w) => n + w.length, 0),
        timings: { downloadMs: t1 - t0, loadMs: performance.now() - t1 },
        warnings: warnings.get(id) ?? [],
      };
      models.set(handle, { model: m, info, source, dtype, images: new Map() });
      return info;
    } finally {
      warnings.delete(id);
      toStore.delete(id);
    }
  },

  async prepare({ model: h, bytes }) {
    const rec = record(h);
    const { handle: inner, preprocessMs, encodeMs } = rec.model.prepareImageTimed(bytes);
    const image = nextImage++;
    rec.images.set(image, { bytes, inner });
    return { image, preprocessMs, encodeMs };
  },

  async release({ model: h, image }) {
    const rec = models.get(h);
    const img = rec?.images.get(image);
    if (img) {
      rec.images.delete(image);
      rec.model?.releaseImage(img.inner);
    }
    return true;
  },

  /** Destroys the WebGPU device as a driver reset would: tests use it to check recovery. */
  async loseDevice() {
    engine?.destroyDevice?.();
    return engine?.device ?? null;
  },

  async caption(msg) {
    const [m, image] = modelImage(msg.model, msg.image);
    return generate(msg, (cb) => m.caption(image, msg.options ?? {}, cb));
  },

  async ask(msg) {
    const [m, image] = modelImage(msg.model, msg.image);
    return generate(msg, (cb) => m.ask(image, msg.question, msg.options ?? {}, cb));
  },

  async match({ model: h, image: i, texts }) {
    const [m, image] = modelImage(h, i);
    const t0 = performance.now();
    const scores = Array.from(await m.matchTexts(image, texts));
    return { scores, timings: { matchMs: performance.now() - t0 } };
  },

  async dispose({ model: h }) {
    const m = models.get(h);
    models.delete(h);
    m?.model?.free?.();
    return true;
  },

  async scene({ seed, size = 64 }) {
    await init();
    return wasm.sampleScene(seed, size);
  },
};
