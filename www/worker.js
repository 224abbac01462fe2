// The glimpse worker: a module Web Worker that owns the wasm instance and the GPU device.
// www/glimpse.js talks to it; nothing here touches the page.
//
// Protocol: the page posts {id, type, ...}; the worker answers {id, result} or {id, error},
// and on the way {id, progress} (downloads) or {id, text} (each generated token). Requests run
// one at a time in arrival order; {type: 'cancel', target} stops a queued request before it
// starts, or a running generation at its next token. An error answers its own request only:
// the worker goes on serving.

import init, * as wasm from '../pkg/glimpse.js';
import { describeAdapter, messageOf } from './engine.js';

let engine = null; // wasm Engine
let backend = null; // {device, reason, adapter, selfcheck}
const models = new Map(); // id -> {model, info}
let nextModel = 1;
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
    post({ id, result: await handler(msg) });
  } catch (e) {
    post({ id, error: messageOf(e), cancelled: Boolean(e?.cancelled) || cancelled.has(id) });
  } finally {
    cancelled.delete(id);
  }
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
    selfcheck = { pass: failed.length === 0, ms: performance.now() - t0, cases: results.length };
    if (failed.length) {
      engine.free?.();
      const why = failed.map((r) => `${r.case} off by ${r.max_abs_diff}`).join(', ');
      return { ...(await openCpu(`the WebGPU kernels failed the start-up self-test (${why})`)), adapter, selfcheck };
    }
  }
  return { device: 'webgpu', reason: null, adapter, selfcheck, limits: engine.info() };
}

/** Fetches a URL into bytes, reporting {file, loaded, total} as it arrives. */
async function download(url, file, id) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${file}: HTTP ${res.status} from ${url}`);
  const total = Number(res.headers.get('content-length')) || null;
  if (!res.body) {
    const b = new Uint8Array(await res.arrayBuffer());
    post({ id, progress: { file, loaded: b.length, total: b.length } });
    return b;
  }
  const reader = res.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    post({ id, progress: { file, loaded, total } });
  }
  if (total !== null && loaded !== total) throw new Error(`${file}: the download stopped at ${loaded} of ${total} bytes`);
  const out = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

const utf8 = (b) => new TextDecoder().decode(b);

/** The files of a model: {gguf} or {config, generationConfig, preprocessorConfig, tokenizer, weights}. */
async function fetchModel(source, id) {
  if (source.files) return readLocalFiles(source.files);
  if (source.catalog) {
    const catalogUrl = new URL(source.catalogUrl, self.location.href);
    const catalog = JSON.parse(utf8(await download(catalogUrl, 'catalog.json', id)));
    const entry = catalog.models.find((m) => m.id === source.catalog);
    if (!entry) throw new Error(`the catalog has no model ${source.catalog} (it has ${catalog.models.map((m) => m.id).join(', ')})`);
    const files = entry.files.map((f) => ({ ...f, href: new URL(f.url, catalogUrl).href }));
    const pick = (n) => files.find((f) => f.name === n);
    if (source.preferGguf && files.some((f) => f.name.endsWith('.gguf'))) {
      const g = files.find((f) => f.name.endsWith('.gguf'));
      return { gguf: await download(g.href, g.name, id) };
    }
    const get = async (n, optional = false) => {
      const f = pick(n);
      if (!f) {
        if (optional) return null;
        throw new Error(`catalog entry ${entry.id} lists no ${n}`);
      }
      return download(f.href, n, id);
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

function model(id) {
  const m = models.get(id);
  if (!m) throw new Error(`no loaded model ${id} (it was disposed?)`);
  return m.model;
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
    backend = await openEngine(device);
    return backend;
  },

  async load({ id, source, dtype = 'f32' }) {
    if (!engine) throw new Error('the worker has no engine yet (init first)');
    const t0 = performance.now();
    const files = await fetchModel(source, id);
    const t1 = performance.now();
    const m = files.gguf ? engine.loadGguf(files.gguf, dtype) : engine.loadModel(files, dtype);
    const handle = nextModel++;
    const info = {
      handle,
      architecture: m.architecture,
      task: m.task,
      bytes: files.gguf ? files.gguf.length : files.weights.reduce((n, w) => n + w.length, 0),
      timings: { downloadMs: t1 - t0, loadMs: performance.now() - t1 },
    };
    models.set(handle, { model: m, info });
    return info;
  },

  async prepare({ model: h, bytes }) {
    const t0 = performance.now();
    const image = model(h).prepareImage(bytes);
    return { image, ms: performance.now() - t0 };
  },

  async release({ model: h, image }) {
    models.get(h)?.model.releaseImage(image);
    return true;
  },

  async caption(msg) {
    return generate(msg, (cb) => model(msg.model).caption(msg.image, msg.options ?? {}, cb));
  },

  async ask(msg) {
    return generate(msg, (cb) => model(msg.model).ask(msg.image, msg.question, msg.options ?? {}, cb));
  },

  async match({ model: h, image, texts }) {
    return Array.from(await model(h).matchTexts(image, texts));
  },

  async dispose({ model: h }) {
    const m = models.get(h);
    models.delete(h);
    m?.model.free?.();
    return true;
  },

  async scene({ seed, size = 64 }) {
    await init();
    return wasm.sampleScene(seed, size);
  },
};
