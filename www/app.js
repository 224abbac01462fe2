// The app a person opens. Everything heavy runs in glimpse's worker (glimpse.js → worker.js):
// this file only wires the page to it.
//
// - Model: the catalog's default (models/scenes-git) loads at start; the picker loads any catalog
//   entry, a URL (folder or .gguf) or local files, with a progress bar per file.
// - Image: file picker, drag-and-drop, paste, camera, or a sample scene from the default model's
//   world; the caption streams in token by token; questions stream too and are kept per image
//   (the encoded image is reused across its questions); CLIP models score labels instead.
// - Device: what the worker chose (WebGPU after its kernel self-test, else the CPU and why).
//
// URL parameters: ?device=cpu|webgpu|auto, ?model=<catalog id>, ?dtype=f32|q8_0|q4_0 (the
// first load's weights), ?catalog=<catalog.json URL>, ?scene=N (the first sample scene; default
// 9000000, the first held-out scene of the model's evaluation).

import * as glimpse from './glimpse.js';
import { formatBytes, messageOf } from './engine.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const device = params.get('device') ?? 'auto';
const catalogUrl = new URL(params.get('catalog') ?? glimpse.CATALOG_URL, location.href).href;
const MAX_RECENT = 8;
// ?max_new_tokens=N: shorter (or longer) captions and answers than the model's default
const maxNewTokens = (() => {
  const n = Number(params.get('max_new_tokens'));
  return Number.isInteger(n) && n > 0 ? n : undefined;
})();

const state = {
  catalog: null,
  model: null, // glimpse Model
  modelLabel: '',
  backend: null,
  images: [], // {id, blob, url, alt, seed?, expected?, questions, caption?, captionTime?, history: []}
  current: null,
  busy: new Set(), // AbortControllers of the captions/answers in flight (the Stop button)
};
let nextImageId = 1;

// ---------------------------------------------------------------- small helpers

function show(el, text) {
  el.textContent = text;
  el.hidden = !text;
}

const ms = (x) => (x === undefined || x === null ? '–' : x < 10 ? `${x.toFixed(1)} ms` : x < 10_000 ? `${Math.round(x)} ms` : `${(x / 1000).toFixed(1)} s`);
const where = () => (state.backend?.device === 'webgpu' ? 'on WebGPU' : 'on the CPU');

/** "preprocess 1.2 ms · image encode 30 ms · first token 9 ms · 20 tokens in 188 ms (106 tokens/s) on the CPU" */
function describeTimings(t, tokens) {
  const parts = [];
  if (t.imageReused) parts.push('image encoding reused');
  else {
    parts.push(`preprocess ${ms((t.readMs ?? 0) + (t.preprocessMs ?? 0))}`);
    parts.push(`image encode ${ms(t.encodeMs)}`);
  }
  if (t.firstTokenMs !== undefined) parts.push(`first token ${ms(t.firstTokenMs)}`);
  if (t.totalMs !== undefined) parts.push(`${tokens} tokens in ${ms(t.totalMs)} (${t.tokensPerSecond.toFixed(1)} tokens/s)`);
  if (t.matchMs !== undefined) parts.push(`scoring ${ms(t.matchMs)}`);
  return `${parts.join(' · ')} ${where()}`;
}

// ---------------------------------------------------------------- device

function addRow(dl, term, value) {
  const dt = document.createElement('dt');
  dt.textContent = term;
  const dd = document.createElement('dd');
  dd.textContent = value;
  dl.append(dt, dd);
}

function showBackend(b) {
  state.backend = b;
  const el = $('backend');
  const dl = $('adapter');
  dl.replaceChildren();
  el.dataset.device = b.device;
  el.classList.toggle('warn', b.device !== 'webgpu');
  const a = b.adapter;
  if (b.device === 'webgpu') {
    let text = `WebGPU: ${a?.label || b.limits?.name || 'adapter'}`;
    if (a?.emulated) text += ' — a software adapter (the GPU emulated on the CPU): results are real, speed is not GPU speed.';
    if (b.recoveredFrom) text += ` (the previous device was lost: ${b.recoveredFrom}; this is a new one)`;
    el.textContent = text;
  } else if (device === 'cpu') {
    el.textContent = 'glimpse runs on the CPU (wasm), as asked (?device=cpu).';
  } else {
    el.textContent = `WebGPU is not available here, so glimpse runs on the CPU (wasm). Reason: ${b.reason}`;
  }
  if (a?.available) {
    if (a.vendor) addRow(dl, 'vendor', a.vendor);
    if (a.architecture) addRow(dl, 'architecture', a.architecture);
    if (a.description || a.device) addRow(dl, 'adapter', a.description || a.device);
    if (a.fallback) addRow(dl, 'fallback adapter', 'yes (software)');
  }
  const t = b.threads;
  if (t) addRow(dl, 'CPU threads', t.count > 1 ? `${t.count} (threaded build)` : `1${t.reason ? ` — ${t.reason}` : ''}`);
  const l = b.limits;
  if (l) {
    addRow(dl, 'shader-f16', l.shader_f16 ? 'yes' : 'no');
    addRow(dl, 'max storage binding', formatBytes(l.max_storage_buffer_binding_size));
    addRow(dl, 'max buffer', formatBytes(l.max_buffer_size));
    addRow(dl, 'invocations / workgroup', String(l.max_compute_invocations_per_workgroup));
    addRow(dl, 'storage buffers / stage', String(l.max_storage_buffers_per_shader_stage));
    addRow(dl, 'workgroup storage', formatBytes(l.max_compute_workgroup_storage_size));
  }
  showSelfcheck(b);
}

const fmtDiff = (x) => (typeof x !== 'number' || !Number.isFinite(x) ? String(x) : x === 0 ? '0' : x.toExponential(2));

function showSelfcheck(b) {
  const status = $('selfcheck-status');
  const s = b.selfcheck;
  const tbody = $('selfcheck-table').tBodies[0];
  tbody.replaceChildren();
  if (!s) {
    status.dataset.state = 'skipped';
    status.textContent = b.device === 'cpu' ? 'not run (no WebGPU device to check)' : 'not run (WebGPU was asked for)';
    $('selfcheck-time').textContent = '';
    return;
  }
  for (const r of s.results ?? []) {
    const tr = document.createElement('tr');
    [r.case, fmtDiff(r.max_abs_diff), fmtDiff(r.tolerance), r.pass ? 'ok' : 'FAIL'].forEach((text, i) => {
      const cell = document.createElement(i === 0 ? 'th' : 'td');
      if (i === 0) cell.scope = 'row';
      if (i === 1 || i === 2) cell.className = 'num';
      if (i === 3) cell.className = r.pass ? 'ok' : 'fail';
      cell.textContent = text;
      tr.append(cell);
    });
    tbody.append(tr);
  }
  status.dataset.state = s.pass ? 'pass' : 'fail';
  status.textContent = s.pass ? 'pass' : 'FAIL — fell back to the CPU';
  $('selfcheck-time').textContent = s.cached
    ? `(${s.cases} kernels, passed on this adapter before: kept, not rerun; ?selfcheck=always reruns it)`
    : `(${s.cases} kernels, ${(s.ms / 1000).toFixed(1)} s)`;
  if (!s.pass) $('selfcheck-details').open = true;
}

// ---------------------------------------------------------------- model

function progressRow(file) {
  const id = `progress-${file.replace(/[^\w-]/g, '_')}`;
  let li = document.getElementById(id);
  if (!li) {
    li = document.createElement('li');
    li.id = id;
    const name = document.createElement('span');
    name.className = 'file';
    name.textContent = file;
    const bar = document.createElement('progress');
    bar.max = 1;
    bar.value = 0;
    bar.setAttribute('aria-label', `${file} download`);
    const size = document.createElement('span');
    size.className = 'size muted';
    li.append(name, bar, size);
    $('progress').append(li);
  }
  return li;
}

function onProgress({ file, loaded, total, cached, stored }) {
  const li = progressRow(file);
  const bar = li.querySelector('progress');
  if (total) {
    bar.max = total;
    bar.value = loaded;
  } else {
    bar.removeAttribute('value'); // indeterminate
  }
  li.querySelector('.size').textContent = cached || stored
    ? `${formatBytes(loaded)} (kept in this browser)`
    : total ? `${formatBytes(loaded)} of ${formatBytes(total)}` : formatBytes(loaded);
  li.dataset.done = String(total !== null && loaded === total);
}

function catalogEntry(id) {
  return state.catalog?.models.find((m) => m.id === id);
}

function entrySize(m) {
  const files = m.files?.filter((f) => !f.name.endsWith('.gguf')) ?? [];
  if (files.length && files.every((f) => f.bytes)) return formatBytes(files.reduce((n, f) => n + f.bytes, 0));
  return m.approx_mb ? `≈${m.approx_mb} MB` : 'size unknown';
}

async function fillCatalog() {
  const res = await fetch(catalogUrl);
  if (!res.ok) throw new Error(`models/catalog.json: HTTP ${res.status}`);
  state.catalog = await res.json();
  const select = $('model-select');
  select.replaceChildren();
  for (const m of state.catalog.models) {
    const o = document.createElement('option');
    o.value = m.id;
    o.textContent = `${m.name} — ${(m.tasks ?? []).join(', ')} — ${entrySize(m)}`;
    select.append(o);
  }
  select.value = params.get('model') ?? state.catalog.default;
  describeEntry();
}

function describeEntry() {
  const m = catalogEntry($('model-select').value);
  if (!m) return;
  const remote = m.files.some((f) => /^https?:/.test(f.url));
  $('model-about').textContent = `${m.architecture}; license ${m.license}.`
    + (remote ? ` Downloads from ${new URL(m.files[0].url).host} (the only request that leaves this page) once; it is kept in this browser in the weights you choose.` : ' Served with this page.')
    + (m.note ? ` ${m.note}.` : '');
}

/** Loads a model (catalog id, URL or Files) in the worker and makes it the page's model. */
async function loadModel(what, label, dtype = 'f32') {
  const status = $('model-status');
  status.dataset.state = 'loading';
  status.textContent = `loading ${label}…`;
  show($('model-error'), '');
  show($('model-warning'), '');
  $('progress').replaceChildren();
  setBusyControls(true);
  try {
    const t0 = performance.now();
    const m = await glimpse.load(what, { device, dtype, onProgress, catalog: catalogUrl });
    const old = state.model;
    state.model = m;
    state.modelLabel = label;
    if (old) old.dispose().catch(() => {});
    $('model-name').textContent = label;
    status.dataset.state = 'ready';
    status.dataset.from = m.from;
    status.dataset.downloadedBytes = String(m.downloadedBytes);
    status.dataset.storedBytes = String(m.storedBytes);
    const source = m.from === 'store' ? `read ${formatBytes(m.storedBytes)} kept in this browser`
      : m.from === 'network' ? `downloaded ${formatBytes(m.downloadedBytes)}${m.storedBytes ? `, stored ${formatBytes(m.storedBytes)}` : ''}`
        : `read ${formatBytes(m.bytes)} from your files`;
    status.textContent = `ready: ${m.architecture}, ${(m.params / 1e6).toFixed(1)} M parameters as ${dtype}; ${source}; `
      + `loaded in ${ms(performance.now() - t0)} ${where()}`;
    const mem = $('model-memory');
    mem.dataset.peakWasm = String(m.peakWasmBytes);
    mem.textContent = `wasm memory at its peak during the load: ${formatBytes(m.peakWasmBytes)} (before: ${formatBytes(m.wasmBytesBefore ?? 0)})`;
    if (m.warnings.length) show($('model-warning'), m.warnings.join(' '));
    refreshStored().catch(() => {});
    applyTask();
    for (const img of state.images) { // a new model sees the images afresh
      img.caption = undefined;
      img.history = [];
      img.labels = undefined;
    }
    if (state.current) await runImage(state.current);
    return m;
  } catch (e) {
    status.dataset.state = 'error';
    status.textContent = '';
    show($('model-error'), `Could not load ${label}: ${messageOf(e)}`);
    throw e;
  } finally {
    setBusyControls(false);
  }
}

const canCaption = () => ['caption', 'chat'].includes(state.model?.task);
const canAsk = () => ['caption', 'answer', 'chat'].includes(state.model?.task);
const canChat = () => state.model?.task === 'chat';
const canMatch = () => state.model?.task === 'match';

function applyTask() {
  const ask = canAsk();
  // an instruction model holds a conversation: each question follows the earlier turns
  $('ask-heading').textContent = canChat() ? 'Talk about the image' : 'Ask about the image';
  $('history-heading').textContent = canChat() ? 'Conversation about this image' : 'Questions about this image';
  $('question').placeholder = canChat() ? 'What is in this picture?' : 'what color is the star?';
  $('new-chat').hidden = !canChat();
  renderHistory();
  $('question').disabled = !ask;
  $('ask-button').disabled = !ask;
  show($('ask-note'), ask ? '' : `${state.modelLabel} does not answer questions (it is a ${state.model?.task} model).`);
  const match = canMatch();
  $('labels-button').disabled = !match;
  $('labels-note').hidden = match;
  $('labels-section').classList.toggle('inactive', !match);
  if (!canCaption()) {
    const c = $('caption-text');
    c.dataset.state = 'idle';
    c.textContent = state.model?.task === 'answer' ? '(this model answers questions; it does not caption)' : '(this model scores labels; it does not caption)';
  }
}

function setBusyControls(loading) {
  for (const id of ['model-load', 'model-select', 'model-dtype', 'model-url', 'model-files']) $(id).disabled = loading;
}

// ---------------------------------------------------------------- images

function showError(e) {
  console.warn(e);
  show($('caption-error'), messageOf(e));
}

/** Adds an image (a Blob of encoded bytes) to the page and runs the model on it. */
async function addImage(blob, info) {
  const img = { id: nextImageId++, blob, url: URL.createObjectURL(blob), history: [], questions: [], ...info };
  state.images.unshift(img);
  while (state.images.length > MAX_RECENT) drop(state.images.at(-1));
  try {
    await selectImage(img);
  } catch (e) {
    // an image the model could not read is not kept in the list of earlier images
    if (img.caption === undefined && !img.labels) {
      drop(img);
      renderRecent();
    }
    throw e;
  }
}

function drop(img) {
  state.images = state.images.filter((x) => x !== img);
  URL.revokeObjectURL(img.url);
  state.model?.forget(img.blob).catch(() => {});
}

async function selectImage(img) {
  state.current = img;
  show($('caption-error'), '');
  const el = $('scene-image');
  el.src = img.url;
  el.alt = img.caption ? `${img.alt}: ${img.caption}` : img.alt;
  if (img.seed === undefined) delete el.dataset.seed;
  else el.dataset.seed = String(img.seed);
  $('caption-expected').textContent = img.expected ?? '';
  if (img.questions[0]) $('question').value = img.questions[0].question;
  renderRecent();
  renderHistory();
  await runImage(img);
}

function renderRecent() {
  const ul = $('recent');
  ul.replaceChildren();
  for (const img of state.images) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'thumb';
    b.setAttribute('aria-pressed', String(img === state.current));
    b.title = img.caption ?? img.alt;
    b.setAttribute('aria-label', `show ${img.alt}${img.caption ? `: ${img.caption}` : ''}`);
    const t = document.createElement('img');
    t.src = img.url;
    t.alt = img.caption ? `${img.alt}: ${img.caption}` : img.alt;
    b.append(t);
    b.addEventListener('click', () => selectImage(img).catch(showError));
    li.append(b);
    ul.append(li);
  }
  $('recent-wrap').hidden = state.images.length < 2;
}

/** Caption (or labels) for the current image; cached per image and model. */
async function runImage(img) {
  const caption = $('caption-text');
  if (!state.model) {
    caption.textContent = 'waiting for the model…';
    return;
  }
  if (canMatch()) {
    if (img.labels) renderLabels(img.labels);
    else await scoreLabels();
    return;
  }
  if (!canCaption()) {
    $('caption-time').textContent = '';
    return;
  }
  if (img.caption !== undefined) {
    caption.textContent = img.caption;
    caption.dataset.state = 'done';
    $('caption-time').textContent = img.captionTime;
    return;
  }
  const out = await stream(caption, (opts) => state.model.caption(img.blob, opts));
  if (!out) return;
  img.caption = out.text;
  img.captionTime = describeTimings(out.timings, out.new_tokens);
  if (state.current === img) {
    $('caption-time').textContent = img.captionTime;
    $('scene-image').alt = `${img.alt}: ${img.caption}`;
  }
  renderRecent();
}

/**
 * Streams a generation into `el`: data-state running → done (or error/cancelled), and
 * data-pieces = how many pieces arrived. Returns the result, or null when stopped.
 */
async function stream(el, run) {
  const ctl = new AbortController();
  state.busy.add(ctl);
  $('stop-button').disabled = false;
  el.dataset.state = 'running';
  el.dataset.pieces = '0';
  el.textContent = '…';
  try {
    const out = await run({
      ...(maxNewTokens ? { maxNewTokens } : {}),
      signal: ctl.signal,
      onToken: ({ text }) => {
        el.textContent = text;
        el.dataset.pieces = String(Number(el.dataset.pieces) + 1);
      },
    });
    el.textContent = out.text;
    el.dataset.state = 'done';
    return out;
  } catch (e) {
    if (e.name === 'AbortError') {
      el.dataset.state = 'cancelled';
      el.textContent += ' (stopped)';
      return null;
    }
    el.dataset.state = 'error';
    el.textContent = '';
    throw e;
  } finally {
    state.busy.delete(ctl);
    $('stop-button').disabled = state.busy.size === 0;
  }
}

async function showScene(seed) {
  const s = await glimpse.sampleScene(seed, 64);
  await addImage(new Blob([s.png], { type: 'image/png' }), {
    alt: `sample scene ${seed}`, seed, expected: `The scene generator's caption: ${s.caption}`, questions: s.questions,
  });
}

function showFile(file) {
  return addImage(file, { alt: file.name ? `your image ${file.name}` : 'your image', expected: '' });
}

// ---------------------------------------------------------------- questions

function renderHistory() {
  const ol = $('history');
  ol.replaceChildren();
  const img = state.current;
  // an instruction model shows the conversation it is having; other models every question
  const entries = img ? (canChat() ? chatTurns(img) : img.history) : [];
  for (const h of entries) {
    const li = document.createElement('li');
    const q = document.createElement('span');
    q.className = 'q';
    q.textContent = h.question;
    const a = document.createElement('strong');
    a.className = 'a';
    a.textContent = h.answer;
    li.append(q, ' → ', a);
    if (h.expected !== undefined) {
      const x = document.createElement('span');
      x.className = 'muted';
      x.textContent = ` (the generator's answer: ${h.expected})`;
      li.append(x);
    }
    const t = document.createElement('span');
    t.className = 'muted small timings';
    t.textContent = ` — ${h.time}`;
    li.append(t);
    ol.append(li);
  }
  $('answer-text').textContent = entries.at(-1)?.answer ?? '';
  $('answer-text').dataset.state = entries.length ? 'done' : 'idle';
  $('answer-expected').textContent = '';
  $('answer-time').textContent = entries.at(-1)?.time ?? '';
  // in a conversation the list holds every reply (with its time): the answer line only streams
  // the turn in progress, so it is not shown again above the list once the turn is in it
  const chatting = Boolean(img) && canChat();
  $('answer-line').hidden = chatting && entries.length > 0;
  $('answer-time').hidden = chatting && entries.length > 0;
}

/** The turns of the conversation with the loaded model about `img` (since its last reset). */
function chatTurns(img) {
  return img.history.filter((h) => h.chatWith === state.model && h.chatRound === (img.chatRound ?? 0));
}

/** The whole conversation for model.chat: earlier turns, then `question`; the image in the first. */
function chatMessages(img, question) {
  const messages = [];
  const user = (text, first) => ({ role: 'user', content: first ? [{ type: 'image', image: img.blob }, { type: 'text', text }] : [{ type: 'text', text }] });
  chatTurns(img).forEach((h, i) => messages.push(user(h.question, i === 0), { role: 'assistant', content: [{ type: 'text', text: h.answer }] }));
  messages.push(user(question, messages.length === 0));
  return messages;
}

async function ask(question) {
  const img = state.current;
  if (!img || !question.trim() || !canAsk()) return;
  const el = $('answer-text');
  $('answer-expected').textContent = '';
  const chat = canChat();
  $('answer-line').hidden = false;
  $('answer-time').hidden = false;
  const out = await stream(el, (opts) => (chat ? state.model.chat(chatMessages(img, question.trim()), opts) : state.model.ask(img.blob, question, opts)));
  if (!out) return;
  const known = img.questions.find((x) => x.question === question.trim());
  const entry = { question: question.trim(), answer: out.text, expected: known?.answer, time: describeTimings(out.timings, out.new_tokens) };
  if (chat) {
    Object.assign(entry, { chatWith: state.model, chatRound: img.chatRound ?? 0 });
    if (state.current === img) $('question').value = '';
  }
  img.history.push(entry);
  if (state.current !== img) return;
  renderHistory();
  if (known) $('answer-expected').textContent = `(the generator's answer: ${known.answer})`;
}

// ---------------------------------------------------------------- labels (CLIP)

function labelList() {
  return $('labels-input').value.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
}

async function scoreLabels() {
  const img = state.current;
  if (!img || !canMatch()) return;
  const table = $('labels-table');
  table.dataset.state = 'running';
  const texts = labelList();
  if (!texts.length) throw new Error('write at least one label');
  const out = await state.model.match(img.blob, texts);
  img.labels = { rows: [...out], time: describeTimings(out.timings, 0) };
  if (state.current === img) renderLabels(img.labels);
}

function renderLabels({ rows, time }) {
  const table = $('labels-table');
  const tbody = table.tBodies[0];
  tbody.replaceChildren();
  for (const { label, score } of rows) {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = label;
    const td = document.createElement('td');
    td.className = 'num';
    td.textContent = score.toFixed(4);
    const bar = document.createElement('td');
    const m = document.createElement('meter');
    m.min = 0;
    m.max = 1;
    m.value = score;
    m.setAttribute('aria-label', `${label}: ${(score * 100).toFixed(1)}%`);
    bar.append(m);
    tr.append(th, td, bar);
    tbody.append(tr);
  }
  table.hidden = false;
  table.dataset.state = 'done';
  $('labels-time').textContent = time;
  $('caption-time').textContent = time;
  const c = $('caption-text');
  c.textContent = `best label: ${rows[0].label} (${(rows[0].score * 100).toFixed(1)}%)`;
  c.dataset.state = 'done';
}

// ---------------------------------------------------------------- camera

let cameraStream = null;

async function openCamera() {
  show($('camera-error'), '');
  if (!navigator.mediaDevices?.getUserMedia) throw new Error('this browser gives no camera access here (it needs https or localhost)');
  try {
    cameraStream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'environment' }, audio: false });
  } catch (e) {
    throw new Error(`the camera could not be opened: ${e.name === 'NotAllowedError' ? 'permission was refused' : e.name === 'NotFoundError' ? 'no camera was found' : messageOf(e)}`);
  }
  const video = $('camera-video');
  video.srcObject = cameraStream;
  $('camera-panel').hidden = false;
  await video.play();
  $('camera-snap').focus();
}

function closeCamera() {
  cameraStream?.getTracks().forEach((t) => t.stop());
  cameraStream = null;
  $('camera-video').srcObject = null;
  $('camera-panel').hidden = true;
}

async function snapPhoto() {
  const video = $('camera-video');
  if (!video.videoWidth) throw new Error('the camera has not delivered a picture yet');
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext('2d').drawImage(video, 0, 0);
  const blob = await new Promise((r) => canvas.toBlob(r, 'image/png'));
  closeCamera();
  await addImage(blob, { alt: `camera photo ${new Date().toLocaleTimeString()}`, expected: '' });
}

// ---------------------------------------------------------------- stored models

async function refreshStored() {
  const list = await glimpse.storedModels();
  const ul = $('stored-list');
  ul.replaceChildren();
  $('stored-summary').textContent = list.length
    ? `${list.length}, ${formatBytes(list.reduce((n, e) => n + e.bytes, 0))}` : 'none';
  for (const e of list) {
    const li = document.createElement('li');
    li.dataset.key = e.key;
    const text = document.createElement('span');
    text.textContent = `${e.name} — ${e.dtype}: stored ${formatBytes(e.bytes)}`
      + (e.downloadedBytes ? ` (downloaded ${formatBytes(e.downloadedBytes)})` : '');
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = 'Forget';
    b.setAttribute('aria-label', `forget ${e.name} (${e.dtype})`);
    b.addEventListener('click', async () => {
      b.disabled = true;
      await glimpse.forgetModel(e.key).catch(showError);
      await refreshStored();
    });
    li.append(text, ' ', b);
    ul.append(li);
  }
}

// ---------------------------------------------------------------- offline

async function offlineStatus() {
  const el = $('offline-status');
  const root = document.documentElement;
  if (!('serviceWorker' in navigator)) {
    root.dataset.offline = 'unavailable: no service workers here';
    el.textContent = 'Offline use: not available in this browser (no service workers).';
    return;
  }
  let swError = null;
  navigator.serviceWorker.addEventListener('message', (ev) => {
    if (ev.data?.type === 'glimpse-storage-error') {
      swError = ev.data.error;
      el.textContent = `Offline use: not available — ${swError}`;
      el.classList.add('warn-box');
      root.dataset.offline = `unavailable: ${swError}`;
    }
  });
  try {
    await navigator.serviceWorker.register('sw.js');
    const reg = await navigator.serviceWorker.ready;
    reg.active?.postMessage({ type: 'glimpse-status' });
    // the app shell comes from the service worker's cache; the model from the worker's store
    await state.modelLoaded;
    if (swError) return;
    if (state.model?.from === 'files') {
      root.dataset.offline = 'ready';
      el.textContent = 'Offline use: ready — this page and the engine are stored in this browser; the model came from your files.';
      return;
    }
    const kept = (await glimpse.storedModels()).find((e) => e.key === state.model?.storeKey);
    if (!kept) {
      const why = state.model?.warnings?.join(' ') || 'the model in use is not kept in this browser';
      root.dataset.offline = `unavailable: ${why}`;
      el.textContent = `Offline use: not available — ${why}`;
      el.classList.add('warn-box');
      return;
    }
    root.dataset.offline = 'ready';
    el.textContent = `Offline use: ready — this page, the engine and the model (${formatBytes(kept.bytes)}) are stored in this browser.`;
  } catch (e) {
    root.dataset.offline = `unavailable: ${messageOf(e)}`;
    el.textContent = `Offline use: not available — ${messageOf(e)}`;
    el.classList.add('warn-box');
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  const run = (f) => (...args) => Promise.resolve().then(() => f(...args)).catch(showError);

  $('image-file').addEventListener('change', run((ev) => {
    const f = ev.target.files?.[0];
    ev.target.value = ''; // the same file may be picked again
    if (f) return showFile(f);
  }));
  const zone = $('drop-zone');
  zone.addEventListener('dragover', (ev) => {
    ev.preventDefault();
    zone.classList.add('dragging');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
  zone.addEventListener('drop', run((ev) => {
    ev.preventDefault();
    zone.classList.remove('dragging');
    const f = ev.dataTransfer?.files?.[0];
    if (f) return showFile(f);
  }));
  document.addEventListener('paste', run((ev) => {
    const f = [...(ev.clipboardData?.files ?? [])][0];
    if (f) return showFile(f);
  }));
  $('new-scene').addEventListener('click', run(() => showScene(9000000 + Math.floor(Math.random() * 1000000))));
  $('camera-button').addEventListener('click', () => openCamera().catch((e) => {
    closeCamera();
    show($('camera-error'), messageOf(e));
  }));
  $('camera-close').addEventListener('click', closeCamera);
  $('camera-snap').addEventListener('click', run(snapPhoto));

  $('ask-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    run(ask)($('question').value);
  });
  $('stop-button').addEventListener('click', () => state.busy.forEach((c) => c.abort()));
  $('new-chat').addEventListener('click', () => {
    const img = state.current;
    if (!img) return;
    img.chatRound = (img.chatRound ?? 0) + 1;
    renderHistory();
    $('question').focus();
  });
  $('labels-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    run(scoreLabels)();
  });

  $('model-select').addEventListener('change', describeEntry);
  $('model-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = $('model-select').value;
    const dtype = $('model-dtype').value;
    const e = catalogEntry(id);
    loadModel(id, `${e?.name ?? id} (${dtype})`, dtype).catch(() => {});
  });
  $('url-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const url = $('model-url').value.trim();
    if (url) loadModel(url, url, $('model-dtype').value).catch(() => {});
  });
  $('model-files').addEventListener('change', (ev) => {
    const files = [...(ev.target.files ?? [])];
    if (files.length) loadModel(files, files.map((f) => f.name).join(', '), $('model-dtype').value).catch(() => {});
  });
}

async function main() {
  wire();
  const client = glimpse.worker();
  client.onBackendChange(showBackend);
  const catalogReady = fillCatalog().catch((e) => show($('model-error'), `The model catalog could not be read: ${messageOf(e)}`));
  let backend;
  try {
    backend = await client.init(device, { selfcheck: params.get('selfcheck') ?? 'cached', threads: params.get('threads') ?? 'auto' });
  } catch (e) {
    $('backend').textContent = `glimpse could not start: ${messageOf(e)}`;
    $('selfcheck-status').dataset.state = 'error';
    $('selfcheck-status').textContent = 'error';
    show($('selfcheck-error'), messageOf(e));
    $('caption-text').dataset.state = 'error';
    show($('caption-error'), messageOf(e));
    return;
  }
  showBackend(backend);
  await catalogReady;
  let loaded;
  state.modelLoaded = new Promise((r) => { loaded = r; });
  offlineStatus();
  const id = params.get('model') ?? state.catalog?.default ?? glimpse.DEFAULT_MODEL;
  const dtype = params.get('dtype') ?? 'f32';
  $('model-dtype').value = dtype;
  const firstScene = showScene(Number(params.get('scene') ?? 9000000));
  try {
    await loadModel(id, `${catalogEntry(id)?.name ?? id} (${dtype})`, dtype);
  } catch (e) {
    $('caption-text').dataset.state = 'error';
    show($('caption-error'), `The model could not be loaded: ${messageOf(e)}`);
  } finally {
    loaded();
  }
  await firstScene.catch(showError);
}

main().catch((e) => {
  console.error(e);
  show($('caption-error'), messageOf(e));
});
