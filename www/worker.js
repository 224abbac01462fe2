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
// Loading streams: the model's small files are fetched and checked first (config, image
// processor, tokenizer, generation config: a broken one fails before any weight is requested),
// then the weights are read as a stream (a fetch body, or File.stream() for picked files; for a
// pytorch_model.bin its zip directory and state dict are read first with Range requests or
// File.slice) and pushed into the wasm loader, which sends every tensor to the GPU or the CPU as
// its bytes arrive. The wasm heap never holds the checkpoint; the load reports the wasm memory it
// peaked at. A model from a catalog entry or a URL is written on the way to a GGUF file in the
// Origin Private File System (store.js): the next load of it reads that file, quantized once, with
// no download, also offline. Storage errors (a full quota) come back as warnings, never failures.
//
// Errors carry a `code` besides the message ({id, error, code}): the engine's codes
// (Error::code in src/error.rs: 'image', 'config', 'weights', 'tokenizer', 'invalid', 'gpu' …)
// and the worker's: 'cancelled', 'device-lost', 'trap', 'network', 'not-found', 'http', 'error'.
//
// A wasm trap (a Rust panic, whose message the panic hook hands to globalThis.glimpsePanic, or
// any WebAssembly.RuntimeError such as running out of memory) leaves the instance unusable: the
// request that hit it fails with code 'trap', the worker answers {event: 'trapped', reason} and
// refuses further requests, and glimpse.js replaces the whole worker (a new module and memory)
// and reloads every model from its source. A trap inside an async export never settles its
// promise: the worker's global error handler takes it and fails the running request instead.
//
// WebGPU device loss: before each request and after each failed one the worker asks the engine
// whether its device was lost. If so it opens a new device (or falls back to the CPU), reloads
// every model from its source and re-encodes the prepared images, keeping their handles; the
// request that hit the loss fails with a message that says so, and the next one runs.

import { describeAdapter, messageOf } from './engine.js';
import * as store from './store.js';

// The wasm package: the threaded build (pkg/threads/: the CPU path's matmuls split over a pool of
// Web Workers, www/thread.js, on one shared memory) where this page is cross-origin isolated —
// SharedArrayBuffer needs it; `glimpse serve` sends the COOP/COEP headers — and the single-thread
// build (pkg/) otherwise, or when the threaded one is missing or will not start. `threads` (init's
// option): 'auto' (navigator.hardwareConcurrency, at most 8) or a number; 1 takes the
// single-thread build.
let wasm = null;
let pkgLoading = null;
/** {count, build: 'threads' | 'single', reason}: what the CPU path runs on (the backend says it). */
let threadInfo = null;

// A pool thread that traps reports it on the BroadcastChannel the page gave this worker as its
// name (www/glimpse.js), since this worker waits for the pool with no event loop running.
const trapChannel = self.name || null;

const init = (opts = {}) => (pkgLoading ??= loadPackage(opts));

async function loadPackage({ threads = 'auto' }) {
  const wanted = threads === 'auto' || threads == null
    ? Math.min(Math.max(1, navigator.hardwareConcurrency || 1), 8)
    : Math.max(1, Math.floor(Number(threads)) || 1);
  let reason = null;
  if (wanted < 2) {
    reason = threads === 'auto' ? 'this device reports one core' : 'one thread was asked for';
  } else if (!self.crossOriginIsolated || typeof SharedArrayBuffer !== 'function') {
    reason = 'the page is not cross-origin isolated (no COOP/COEP headers), so it cannot share memory between threads';
  } else {
    try {
      const url = new URL('../pkg/threads/glimpse.js', import.meta.url).href;
      const m = await import(url);
      await m.default();
      await startPool(m, url, wanted);
      wasm = m;
      threadInfo = { count: wanted, build: 'threads', reason: null };
      return;
    } catch (e) {
      reason = `the threaded build did not start (${messageOf(e)})`;
    }
  }
  const m = await import('../pkg/glimpse.js');
  await m.default();
  wasm = m;
  threadInfo = { count: 1, build: 'single', reason };
}

/** Starts `n` pool threads (www/thread.js) and builds the pool once all of them wait. */
async function startPool(m, url, n) {
  const [module, memory] = m.threadPoolHandles();
  await Promise.all(Array.from({ length: n }, () => new Promise((resolve, reject) => {
    const w = new Worker(new URL('./thread.js', import.meta.url), { type: 'module' });
    w.onmessage = ({ data }) => (data?.ready ? resolve() : reject(new Error(data?.error ?? 'no answer')));
    w.onerror = (ev) => reject(new Error(ev.message || 'www/thread.js failed to load'));
    w.postMessage({ pkg: url, module, memory, trapChannel });
  })));
  m.threadPoolBuild(n);
}

let engine = null; // wasm Engine
let backend = null; // {device, reason, adapter, selfcheck, threads}
let requestedDevice = 'auto';
const models = new Map(); // handle -> {model, info, source, dtype, images: Map<handle, {bytes, inner}>}
/** Prepared images kept per model; the least recently used one is released past this. */
const MAX_IMAGES = 8;
let nextModel = 1;
let nextImage = 1;
const cancelled = new Set();
let queue = Promise.resolve();

const post = (m) => self.postMessage(m);
/** An Error with a `code` (the protocol's error codes, above). */
const fail = (code, message) => Object.assign(new Error(message), { code });

// traps: the last Rust panic message, the running request's trap reject, whether it happened
let lastPanic = null;
let onTrap = null;
let trapped = null;
self.glimpsePanic = (message) => { lastPanic = message; };
const isTrap = (e) => e instanceof WebAssembly.RuntimeError;
self.addEventListener('error', (ev) => {
  if (isTrap(ev.error)) {
    ev.preventDefault();
    onTrap?.(ev.error);
  }
});
self.addEventListener('unhandledrejection', (ev) => {
  if (isTrap(ev.reason)) {
    ev.preventDefault();
    onTrap?.(ev.reason);
  }
});

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
    if (trapped) throw fail('trap', `the glimpse engine stopped after an internal error (${trapped}); it is being restarted`);
    if (cancelled.has(id)) throw Object.assign(fail('cancelled', 'cancelled'), { cancelled: true });
    const handler = HANDLERS[msg.type];
    if (!handler) throw fail('invalid', `unknown request ${msg.type}`);
    if (msg.type !== 'init' && lostReason()) await recover(lostReason());
    const trap = new Promise((_, reject) => { onTrap = reject; });
    post({ id, result: await Promise.race([handler(msg), trap]) });
  } catch (e) {
    if (!trapped && (isTrap(e) || lastPanic)) {
      trapped = lastPanic ?? `${e.name}: ${e.message}`;
      // the event first: the page starts its restart before this request's caller sees the error
      post({ event: 'trapped', reason: trapped });
      post({ id, code: 'trap', error: `glimpse hit an internal error (${trapped}); its engine is restarted and the models reloaded: run the request again` });
      return;
    }
    let error = messageOf(e);
    let code = e?.code ?? 'error';
    const lost = trapped ? null : await waitForLoss();
    if (lost) {
      code = 'device-lost';
      try {
        const b = await recover(lost);
        error = `the WebGPU device was lost (${lost}) during this request; glimpse opened ${b.device === 'webgpu' ? 'a new WebGPU device' : 'the CPU'} and reloaded the model: run the request again`;
      } catch (r) {
        error = `the WebGPU device was lost (${lost}) and could not be reopened: ${messageOf(r)}`;
      }
    }
    const wasCancelled = Boolean(e?.cancelled) || cancelled.has(id);
    post({ id, error, code: wasCancelled ? 'cancelled' : code, cancelled: wasCancelled });
  } finally {
    onTrap = null;
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
  backend = { ...(await openEngine(requestedDevice === 'cpu' ? 'cpu' : 'auto')), threads: threadInfo };
  backend.recoveredFrom = reason;
  if (previous?.device === 'webgpu' && backend.device === 'cpu') backend.reason = `the WebGPU device was lost (${reason}) and could not be reopened; ${backend.reason}`;
  for (const [, rec] of models) {
    try { rec.model?.free?.(); } catch { /* belonged to the lost device */ }
    rec.model = null;
    try {
      rec.model = (await loadModel(rec.source, rec.dtype, null, rec.store)).model;
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

// A passing self-test is kept per adapter and build (Cache Storage), so it runs once rather than
// at every page load and holds back no first caption; a failing one is never kept (it runs again).
// `?selfcheck=always` on the page, or clearing site data, runs it again.
const SELFCHECK_CACHE = 'glimpse-selfcheck';
let alwaysSelfcheck = false;
const selfcheckKey = (a) => `/__glimpse_selfcheck__/${wasm.Engine.selfcheckFingerprint()}/${encodeURIComponent([a.vendor, a.architecture, a.device, a.description].join('|'))}`;

async function keptSelfcheck(key) {
  try {
    if (!self.caches || alwaysSelfcheck) return null;
    const hit = await (await caches.open(SELFCHECK_CACHE)).match(key);
    return hit ? await hit.json() : null;
  } catch {
    return null; // storage unavailable (private mode, quota): run the test
  }
}

async function keepSelfcheck(key, results) {
  try {
    if (!self.caches) return;
    await (await caches.open(SELFCHECK_CACHE)).put(key, new Response(JSON.stringify(results), { headers: { 'content-type': 'application/json' } }));
  } catch {
    // not kept: the next page load runs the test again
  }
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
    if (device === 'webgpu') throw fail('no-adapter', `WebGPU is not available: ${adapter.reason}`);
    return { ...(await openCpu(adapter.reason)), adapter };
  }
  try {
    // a software adapter (SwiftShader) gets glimpse's barrier-free kernel variants
    engine = await wasm.Engine.create({ device: 'webgpu', software: Boolean(adapter.emulated) });
  } catch (e) {
    if (device === 'webgpu') throw e;
    return { ...(await openCpu(`WebGPU refused: ${messageOf(e)}`)), adapter };
  }
  let selfcheck = null;
  if (device === 'auto') {
    const t0 = performance.now();
    const key = selfcheckKey(adapter);
    const kept = await keptSelfcheck(key);
    const results = kept ?? (await engine.selfcheck(1));
    const failed = results.filter((r) => !r.pass);
    selfcheck = { pass: failed.length === 0, ms: performance.now() - t0, cases: results.length, results, cached: Boolean(kept) };
    if (!kept && !failed.length) await keepSelfcheck(key, results);
    if (failed.length) {
      engine.free?.();
      const why = failed.map((r) => `${r.case} off by ${r.max_abs_diff}`).join(', ');
      return { ...(await openCpu(`the WebGPU kernels failed the start-up self-test (${why})`)), adapter, selfcheck };
    }
  }
  return { device: 'webgpu', reason: null, adapter, selfcheck, limits: engine.info() };
}

const warnings = new Map(); // request id -> [warning]
const warn = (id, text) => {
  if (id === null) return;
  if (!warnings.has(id)) warnings.set(id, []);
  warnings.get(id).push(text);
};

const SMALL = ['config.json', 'generation_config.json', 'preprocessor_config.json', 'tokenizer.json',
  'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json', 'vocab.txt', 'vocab.json', 'merges.txt',
  'chat_template.json', 'chat_template.jinja', 'processor_config.json'];
// a folder's weights, in the CLI's order of preference
const WEIGHT_FILES = ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json'];
const isWeights = (n) => /\.(safetensors|bin|gguf)$/.test(n);
const reporter = (id) => (p) => id !== null && post({ id, progress: p });
const catalogKey = (catalogUrl, id, dtype) => `catalog:${catalogUrl.href}#${id}@${dtype}`;

/**
 * A file at `href`: fetched whole (`get`; `optional`: only a 404 means absent), streamed, or read
 * in ranges. `expect`: the catalog's {bytes, sha256}, checked as the bytes arrive.
 */
function remoteFile(href, name, report, { expect = {}, optional = false } = {}) {
  return {
    name,
    size: expect.bytes ?? null,
    sha256: expect.sha256 ?? null,
    get: () => store.fetchBytes(href, name, { expect, optional, onProgress: report }),
    stream: () => store.openStream(href, name, expect),
    range: (start, end) => store.fetchRange(href, name, start, end),
  };
}

/**
 * What a source is made of: {key, fingerprint, small: [{name, get}], weights: [{name, size,
 * sha256, stream, range}], shardIndex}. `key` and `fingerprint` identify a stored copy (null:
 * never stored, e.g. picked files). Nothing big is fetched here.
 */
async function describe(source, dtype, id) {
  const report = reporter(id);
  // a catalog lists only files its repo has: each must arrive
  const remote = (href, name, expect = {}) => remoteFile(href, name, report, { expect });
  if (source.files) {
    const files = Array.from(source.files);
    const local = (f) => ({
      name: f.name,
      size: f.size,
      sha256: null,
      get: async () => {
        const b = new Uint8Array(await f.arrayBuffer());
        report({ file: f.name, loaded: b.length, total: b.length });
        return b;
      },
      stream: async () => ({ reader: f.stream().getReader(), size: f.size }),
      range: async (start, end) => {
        const s = start < 0 ? Math.max(0, f.size + start) : start;
        const e = end === null ? f.size : end;
        return { bytes: new Uint8Array(await f.slice(s, e).arrayBuffer()), offset: s, size: f.size };
      },
    });
    const byName = new Map(files.map((f) => [f.name, f]));
    const gguf = files.length === 1 && files[0].name.endsWith('.gguf');
    const lacking = gguf ? [] : ['config.json', 'preprocessor_config.json'].filter((n) => !byName.has(n));
    if (lacking.length) throw fail('invalid', `the chosen files lack ${lacking.join(' and ')} (pick the model folder's files: config.json, preprocessor_config.json, a tokenizer and the weights, or one .gguf)`);
    const weights = pickWeights(files.map((f) => f.name));
    const index = weights.index ? await local(byName.get(weights.index)).get() : null;
    const names = index ? shardsOf(index) : weights.files;
    const missing = names.filter((n) => !byName.has(n));
    if (missing.length) throw fail('invalid', `the chosen files lack ${missing.join(', ')} (pick the model folder's files: config.json, preprocessor_config.json, a tokenizer and the weights, or one .gguf)`);
    return {
      key: null,
      small: files.filter((f) => SMALL.includes(f.name)).map(local),
      weights: names.map((n) => local(byName.get(n))),
      shardIndex: index,
    };
  }
  if (source.catalog) {
    const catalogUrl = new URL(source.catalogUrl, self.location.href);
    let res;
    try {
      res = await fetch(catalogUrl);
    } catch (e) {
      // offline, with a catalog the service worker does not hold: a kept copy of the model
      // serves without checking it against the catalog
      const key = catalogKey(catalogUrl, source.catalog, dtype);
      return { key, anyFingerprint: true, offline: `catalog.json could not be fetched (${messageOf(e)})` };
    }
    if (!res.ok) throw fail(res.status === 404 ? 'not-found' : 'http', `catalog.json: HTTP ${res.status} from ${catalogUrl}`);
    const catalog = await res.json();
    const entry = catalog.models.find((m) => m.id === source.catalog);
    if (!entry) throw fail('not-found', `the catalog has no model ${source.catalog} (it has ${catalog.models.map((m) => m.id).join(', ')})`);
    const files = entry.files.map((f) => ({ ...f, href: new URL(f.url, catalogUrl).href }));
    const gguf = source.preferGguf ? files.find((f) => f.name.endsWith('.gguf')) : null;
    const wanted = gguf ? [gguf] : files.filter((f) => !f.name.endsWith('.gguf'));
    const fingerprint = await store.sha256Hex(new TextEncoder().encode(JSON.stringify(wanted)));
    return {
      key: catalogKey(catalogUrl, entry.id, dtype),
      name: entry.name ?? entry.id,
      fingerprint,
      small: wanted.filter((f) => SMALL.includes(f.name)).map((f) => remote(f.href, f.name, f)),
      weights: wanted.filter((f) => isWeights(f.name)).map((f) => remote(f.href, f.name, f)),
      shardIndex: null,
    };
  }
  const url = new URL(source.url, self.location.href);
  const name = url.pathname.split('/').pop() || url.href;
  if (url.pathname.endsWith('.gguf')) {
    return { key: `url:${url.href}@${dtype}`, name, fingerprint: url.href, small: [], weights: [remote(url.href, name)], shardIndex: null, lazy: true };
  }
  const base = url.href.endsWith('/') ? url.href : `${url.href}/`;
  return { key: `url:${base}@${dtype}`, name: base, fingerprint: base, base, lazy: true };
}

/** For a folder URL: its small files (404 = absent, anything else is an error), then which weights it has. */
async function probeFolder(d, id) {
  const report = reporter(id);
  // only config.json and preprocessor_config.json must exist; for the others only a 404 means
  // "absent" (any other failure is an error that says so)
  d.small = SMALL.map((name) => remoteFile(new URL(name, d.base).href, name, report,
    { optional: name !== 'config.json' && name !== 'preprocessor_config.json' }));
  return d;
}

async function probeWeights(d, id) {
  const report = reporter(id);
  const at = (n) => new URL(n, d.base).href;
  const remote = (name) => remoteFile(at(name), name, report);
  for (const w of WEIGHT_FILES) {
    if (await store.exists(at(w))) {
      if (w.endsWith('.index.json')) {
        d.shardIndex = await store.fetchBytes(at(w), w, { onProgress: report });
        d.weights = shardsOf(d.shardIndex).map(remote);
      } else {
        d.weights = [remote(w)];
      }
      return d;
    }
  }
  throw fail('not-found', `${d.base} has no model.safetensors, pytorch_model.bin (or their sharded indexes)`);
}

/** Which of `names` are the weights (the same order of preference as glimpse's CLI). */
function pickWeights(names) {
  for (const w of WEIGHT_FILES) {
    if (names.includes(w)) return w.endsWith('.index.json') ? { index: w } : { files: [w] };
  }
  const ggufs = names.filter((n) => n.endsWith('.gguf'));
  if (ggufs.length === 1) return { files: ggufs };
  throw fail('invalid', 'the chosen files hold no weights: model.safetensors, pytorch_model.bin (or a sharded index with its shards), or one .gguf');
}

function shardsOf(indexBytes) {
  const map = JSON.parse(new TextDecoder().decode(indexBytes)).weight_map ?? {};
  return [...new Set(Object.values(map))].sort();
}

const memoryBytes = () => wasm.memoryBytes();

/**
 * Loads `source` as `dtype`: from the store when it holds it, else by streaming the files (and
 * storing the GGUF on the way unless `keep` is false). Returns {model, info}.
 */
async function loadModel(source, dtype, id, keep = true) {
  const t0 = performance.now();
  const wasmBefore = memoryBytes();
  let d = await describe(source, dtype, id);
  const report = reporter(id);
  let downloaded = 0;
  let from = source.files ? 'files' : 'network';
  let stored = null;
  if (d.key && keep) {
    try {
      stored = await store.open(d.key, d.anyFingerprint ? undefined : d.fingerprint);
    } catch (e) {
      warn(id, `the model store cannot be read (${messageOf(e)})`);
    }
  }
  if (d.offline && !stored) throw fail('network', `${d.offline}, and this browser keeps no copy of the model`);
  let loader;
  let writer = null;
  if (stored) {
    // the GGUF written at an earlier load: no download, no conversion
    from = 'store';
    loader = engine.beginLoad({ weights: [{ name: 'model.gguf', size: stored.file.size }], dtype });
    await pump(loader, await stored.file.stream().getReader(), 'stored model (GGUF)', stored.file.size, report, null);
    loader.endFile();
  } else {
    if (d.lazy && d.base) d = await probeFolder(d, id);
    // 1. the small files, parsed and checked before any weight is requested
    const files = {};
    for (const f of d.small) {
      const b = await f.get();
      if (b) {
        files[f.name] = b;
        downloaded += b.length;
      }
    }
    if (d.small.length && !files['config.json']) throw fail('config', 'the model has no config.json');
    if (d.lazy && d.base) d = await probeWeights(d, id);
    const storeGguf = Boolean(d.key && keep);
    loader = engine.beginLoad({
      files,
      weights: d.weights.map((w) => ({ name: w.name, size: w.size ?? undefined, sha256: w.sha256 ?? undefined })),
      dtype,
      storeGguf,
      shardIndex: d.shardIndex ? new TextDecoder().decode(d.shardIndex) : undefined,
    });
    if (storeGguf) {
      try {
        writer = await store.Writer.create(d.key);
      } catch (e) {
        warn(id, `The model will not be stored for offline use: ${store.describeStorageError(e)}.`);
      }
    }
    const write = () => {
      if (!writer) return;
      const ws = loader.takeWrites();
      try {
        for (const [at, bytes] of ws) writer.write(at, bytes);
      } catch (e) {
        warn(id, `The model was not stored for offline use: ${store.describeStorageError(e)}. It works now, and will be downloaded again next time.`);
        const w = writer;
        writer = null;
        w.abort();
      }
    };
    // 2. the weights, streamed
    try {
      for (const [i, w] of d.weights.entries()) {
        if (w.name.endsWith('.bin')) await readTorchDirectory(loader, i, w);
        const { reader, size } = await w.stream();
        downloaded += await pump(loader, reader, w.name, size ?? w.size, report, write);
        loader.endFile();
        write();
      }
    } catch (e) {
      await writer?.abort();
      throw e;
    }
  }
  // the GGUF header is final once every file ended: take it before the loader becomes the model
  const header = writer ? loader.ggufHeader() : null;
  const model = loader.finish();
  const stats = model.stats();
  let storedBytes = stored ? stored.file.size : 0;
  if (writer) {
    try {
      const h = header;
      await writer.commit(h.header, h.length, { name: d.name, dtype, fingerprint: d.fingerprint, downloadedBytes: downloaded, architecture: model.architecture });
      storedBytes = h.length;
    } catch (e) {
      await writer.abort();
      warn(id, `The model was not stored for offline use: ${store.describeStorageError(e)}. It works now, and will be downloaded again next time.`);
    }
  }
  loader.free?.();
  const ms = performance.now() - t0;
  const info = {
    architecture: model.architecture,
    task: model.task,
    from,
    storeKey: d.key,
    bytes: stats.bytes,
    params: stats.params,
    downloadedBytes: from === 'network' ? downloaded : 0,
    storedBytes,
    wasmBytesBefore: wasmBefore,
    peakWasmBytes: memoryBytes(),
    timings: { loadMs: ms },
  };
  return { model, info };
}

/** Reads a pytorch_model.bin's zip directory (its last bytes) and its state dict first. */
async function readTorchDirectory(loader, i, w) {
  let tail = await w.range(-65536, null);
  const size = tail.size ?? w.size;
  if (!size) throw fail('http', `${w.name}: the server did not say how long the file is`);
  let at = loader.torchDirectory(i, tail.bytes, tail.offset, size);
  if (at.needFrom !== undefined && at.needFrom !== null) {
    tail = await w.range(at.needFrom, null);
    at = loader.torchDirectory(i, tail.bytes, tail.offset, size);
  }
  if (at.pickleAt === undefined || at.pickleAt === null) throw fail('weights', `${w.name}: its zip directory cannot be read`);
  const pkl = await w.range(at.pickleAt, Math.min(size, at.pickleAt + at.pickleMax));
  loader.torchPickle(i, pkl.bytes);
  w.size ??= size;
}

/** Pushes a stream into the loader; returns the bytes read. */
async function pump(loader, reader, file, total, report, write) {
  let loaded = 0;
  let last = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    loader.push(value);
    loaded += value.length;
    write?.();
    const now = performance.now();
    if (now - last > 100 || loaded === total) {
      last = now;
      report({ file, loaded, total: total ?? null, stored: file.startsWith('stored') });
    }
  }
  report({ file, loaded, total: total ?? loaded, stored: file.startsWith('stored') });
  return loaded;
}

function record(h) {
  const m = models.get(h);
  if (!m) throw fail('invalid', `no loaded model ${h} (it was disposed?)`);
  if (m.broken) throw fail('device-lost', `the model cannot run: ${m.broken}; load it again`);
  return m;
}

/** The wasm model and the wasm handle of a prepared image. */
function modelImage(h, image) {
  const rec = record(h);
  const img = rec.images.get(image);
  if (!img) throw fail('invalid', `no prepared image ${image} (it was released, or evicted after ${MAX_IMAGES} newer ones)`);
  // most recently used goes last
  rec.images.delete(image);
  rec.images.set(image, img);
  return [rec.model, img.inner];
}

/** Runs a generation, posting each text so far and stopping when the request is cancelled. */
async function generate(msg, run) {
  const t0 = performance.now();
  let first = null;
  let pieces = 0;
  const out = await run((text) => {
    if (cancelled.has(msg.id) || trapped) return false;
    if (first === null) first = performance.now() - t0;
    pieces += 1;
    post({ id: msg.id, text });
    return true;
  });
  const ms = performance.now() - t0;
  if (cancelled.has(msg.id)) throw Object.assign(fail('cancelled', 'cancelled'), { cancelled: true });
  return { ...out, timings: { firstTokenMs: first, totalMs: ms, tokensPerSecond: out.new_tokens / (ms / 1000), pieces } };
}

const HANDLERS = {
  async init({ device = 'auto', selfcheck = 'cached', threads = 'auto' }) {
    await init({ threads });
    if (engine && backend) return backend;
    requestedDevice = device;
    alwaysSelfcheck = selfcheck === 'always';
    try {
      backend = { ...(await openEngine(device)), threads: threadInfo };
    } catch (e) {
      // nothing half-open stays behind: the next init tries again
      try { engine?.free?.(); } catch { /* never opened */ }
      engine = null;
      backend = null;
      throw e;
    }
    return backend;
  },

  async load({ id, source, dtype = 'f32', store: keep = true }) {
    if (!engine) throw fail('invalid', 'the worker has no engine yet (init first)');
    try {
      const { model: m, info } = await loadModel(source, dtype, id, keep);
      const handle = nextModel++;
      info.handle = handle;
      info.warnings = warnings.get(id) ?? [];
      models.set(handle, { model: m, info, source, dtype, store: keep, images: new Map() });
      return info;
    } finally {
      warnings.delete(id);
    }
  },

  /** The models kept in this browser: [{key, name, dtype, bytes, downloadedBytes, storedAt}]. */
  async stored() {
    return store.list();
  },

  /** Removes a stored model (it stays loaded if it is). */
  async forget({ key }) {
    return store.forget(key);
  },

  async prepare({ model: h, bytes }) {
    const rec = record(h);
    const { handle: inner, preprocessMs, encodeMs } = rec.model.prepareImageTimed(bytes);
    const image = nextImage++;
    rec.images.set(image, { bytes, inner });
    // least recently used first: past MAX_IMAGES the oldest is released
    while (rec.images.size > MAX_IMAGES) {
      const [oldest, img] = rec.images.entries().next().value;
      rec.images.delete(oldest);
      rec.model?.releaseImage(img.inner);
    }
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

  /**
   * What the worker holds now: wasm memory, GPU buffers ({heldBytes, poolFreeBytes}), the JS
   * heap where the browser tells it (bench/soak.mjs reads it through the DevTools protocol) and
   * the prepared images kept per model. The soak run samples it.
   */
  async stats() {
    return {
      wasmBytes: memoryBytes(),
      gpu: engine?.memoryStats?.() ?? null,
      jsHeapBytes: self.performance?.memory?.usedJSHeapSize ?? null,
      preparedImages: [...models.values()].reduce((n, m) => n + m.images.size, 0),
      models: models.size,
      // the CPU path's pool as the wasm side sees it (0: the single-thread build)
      poolThreads: wasm?.threadPoolSize?.() ?? 0,
    };
  },

  /** Panics inside wasm on purpose: tests use it to check trap recovery. */
  async debugPanic({ message = 'a panic on purpose (debugPanic)', inAsync = false, inPool = false }) {
    if (inPool) {
      if (!wasm.debugPanicPool || threadInfo?.build !== 'threads') throw fail('invalid', 'no CPU thread pool runs here');
      wasm.debugPanicPool(message);
    }
    if (inAsync) await wasm.debugPanicAsync(message);
    else wasm.debugPanic(message);
    return null;
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

  /** The assistant's next message (instruction models); the image's caches carry over turns. */
  async chat(msg) {
    const [m, image] = modelImage(msg.model, msg.image);
    return generate(msg, (cb) => m.chat(image, msg.messages, msg.options ?? {}, cb));
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
