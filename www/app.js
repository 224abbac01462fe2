// The page a person opens: shows the WebGPU adapter and its limits, then runs the kernel
// self-check on WebGPU (or, without WebGPU, a CPU smoke run) and shows the result per kernel.
// Then it loads the default model (models/scenes-git) and captions a sample scene.
// `?device=cpu` forces the CPU; `?seed=N` changes the self-check inputs; `?scene=N` picks the
// sample scene (default: the first held-out scene of the model's evaluation, 9000000).

import { describeAdapter, formatBytes, loadWasm, messageOf, openEngine } from './engine.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const seed = Number(params.get('seed') ?? 1);

function setStatus(state, text = state) {
  const el = $('selfcheck-status');
  el.dataset.state = state;
  el.textContent = text;
}

function addRow(dl, term, value) {
  const dt = document.createElement('dt');
  dt.textContent = term;
  const dd = document.createElement('dd');
  dd.textContent = value;
  dl.append(dt, dd);
}

function showAdapter(adapter, info) {
  const dl = $('adapter');
  dl.replaceChildren();
  if (adapter?.available) {
    addRow(dl, 'adapter', adapter.label);
    if (adapter.fallback) addRow(dl, 'fallback adapter', 'yes (software)');
  }
  if (!info) return;
  addRow(dl, 'backend', `${info.backend} (${info.device_type})`);
  if (info.name) addRow(dl, 'wgpu name', info.name);
  if (info.driver) addRow(dl, 'driver', info.driver);
  addRow(dl, 'shader-f16', info.shader_f16 ? 'yes' : 'no');
  addRow(dl, 'max storage binding', formatBytes(info.max_storage_buffer_binding_size));
  addRow(dl, 'max buffer', formatBytes(info.max_buffer_size));
  addRow(dl, 'invocations / workgroup', String(info.max_compute_invocations_per_workgroup));
  addRow(dl, 'storage buffers / stage', String(info.max_storage_buffers_per_shader_stage));
  addRow(dl, 'workgroup storage', formatBytes(info.max_compute_workgroup_storage_size));
}

function formatDiff(x) {
  if (typeof x !== 'number') return String(x);
  if (!Number.isFinite(x)) return String(x);
  return x === 0 ? '0' : x.toExponential(2);
}

function showResults(results) {
  const tbody = $('selfcheck-table').tBodies[0];
  tbody.replaceChildren();
  for (const r of results) {
    const tr = document.createElement('tr');
    const cells = [r.case, formatDiff(r.max_abs_diff), formatDiff(r.tolerance), r.pass ? 'ok' : 'FAIL'];
    cells.forEach((text, i) => {
      const cell = document.createElement(i === 0 ? 'th' : 'td');
      if (i === 0) cell.scope = 'row';
      if (i === 1 || i === 2) cell.className = 'num';
      if (i === 3) cell.className = r.pass ? 'ok' : 'fail';
      cell.textContent = text;
      tr.append(cell);
    });
    tbody.append(tr);
  }
}

function showError(e) {
  const el = $('selfcheck-error');
  el.textContent = messageOf(e);
  el.hidden = false;
  setStatus('error');
}

async function main() {
  setStatus('running', 'running…');
  const adapter = await describeAdapter();
  const { engine, gpuError } = await openEngine({ preferCpu: params.get('device') === 'cpu' });
  const backend = $('backend');

  if (engine.device === 'webgpu') {
    const info = engine.info();
    showAdapter(adapter, info);
    let text = `WebGPU: ${adapter.available ? adapter.label : info?.name || 'adapter'}`;
    if (adapter.emulated) text += ' — a software adapter (GPU emulated on the CPU): results are real, speed is not GPU speed.';
    backend.textContent = text;
    backend.dataset.device = 'webgpu';
  } else {
    showAdapter(adapter, null);
    backend.textContent = `WebGPU is not available here, so glimpse runs on the CPU (wasm). Reason: ${gpuError}`;
    backend.dataset.device = 'cpu';
    backend.classList.add('warn');
    $('selfcheck-about').textContent =
      'CPU smoke run: without WebGPU the CPU path is compared with itself, so this checks that the wasm engine runs every kernel, not GPU correctness.';
  }

  const t0 = performance.now();
  const results = await engine.selfcheck(seed);
  const ms = performance.now() - t0;
  showResults(results);
  $('selfcheck-time').textContent = `(${results.length} kernels, ${(ms / 1000).toFixed(1)} s${engine.device === 'cpu' ? ', CPU smoke run' : ''})`;
  const pass = results.length > 0 && results.every((r) => r.pass);
  setStatus(pass ? 'pass' : 'fail');
  await captionScenes(engine);
}

/** Fetches the default model's files (served beside www/) and loads them. */
async function loadDefaultModel(engine) {
  const base = new URL('../models/scenes-git/', location.href);
  const get = async (name) => {
    const res = await fetch(new URL(name, base));
    if (!res.ok) throw new Error(`${name}: HTTP ${res.status} from ${res.url}`);
    return res;
  };
  const [config, generationConfig, preprocessorConfig, tokenizer, weights] = await Promise.all([
    get('config.json').then((r) => r.text()),
    get('generation_config.json').then((r) => r.text()),
    get('preprocessor_config.json').then((r) => r.text()),
    get('tokenizer.json').then((r) => r.arrayBuffer()),
    get('model.safetensors').then((r) => r.arrayBuffer()),
  ]);
  return engine.loadModel({
    config, generationConfig, preprocessorConfig,
    tokenizer: new Uint8Array(tokenizer), weights: [new Uint8Array(weights)],
  }, 'f32');
}

function showCaptionError(e) {
  const el = $('caption-error');
  el.textContent = messageOf(e);
  el.hidden = false;
}

/** Streams a generation into `el` (data-state running → done) and returns its result. */
async function stream(el, run) {
  el.dataset.state = 'running';
  el.textContent = '…';
  const out = await run((text) => { el.textContent = text; return true; });
  el.textContent = out.text;
  el.dataset.state = 'done';
  return out;
}

async function captionScenes(engine) {
  const glimpse = await loadWasm();
  const caption = $('caption-text');
  let model;
  try {
    caption.textContent = 'loading the default model…';
    model = await loadDefaultModel(engine);
  } catch (e) {
    caption.dataset.state = 'error';
    caption.textContent = '';
    showCaptionError(e);
    return;
  }
  let handle = null;
  let scene = null;

  /**
   * Shows and captions one image: `blob` (encoded bytes), `info` = {alt, seed, expected,
   * questions} where the generator knows the answers (sample scenes).
   */
  const showImage = async (blob, info) => {
    $('caption-error').hidden = true;
    scene = info;
    const img = $('scene-image');
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(blob);
    img.alt = info.alt;
    if (info.seed === undefined) delete img.dataset.seed;
    else img.dataset.seed = String(info.seed);
    $('caption-expected').textContent = info.expected;
    $('question').value = info.questions[0]?.question ?? $('question').value;
    $('answer-text').textContent = '';
    $('answer-text').dataset.state = 'idle';
    $('answer-expected').textContent = '';
    if (handle !== null) model.releaseImage(handle);
    handle = null;
    caption.dataset.state = 'running';
    caption.textContent = '…';
    const t0 = performance.now();
    handle = model.prepareImage(new Uint8Array(await blob.arrayBuffer()));
    const out = await stream(caption, (cb) => model.caption(handle, {}, cb));
    $('caption-time').textContent = `${out.new_tokens} tokens in ${((performance.now() - t0) / 1000).toFixed(2)} s on ${engine.device === 'webgpu' ? 'WebGPU' : 'the CPU'}`;
  };

  const show = (seed) => {
    const s = glimpse.sampleScene(seed, 64);
    return showImage(new Blob([s.png], { type: 'image/png' }),
      { alt: `sample scene ${seed}`, seed, expected: s.caption, questions: s.questions });
  };

  const run = (f) => f().catch((e) => {
    console.warn(e);
    if (caption.dataset.state === 'running') caption.dataset.state = 'error';
    showCaptionError(e);
  });

  // a person's own image: file picker, drop or paste. A broken file is a visible error and the
  // next image works.
  const showFile = (blob) => showImage(blob, {
    alt: blob.name ? `your image ${blob.name}` : 'your image',
    expected: '(your image: no reference caption)',
    questions: [],
  });
  $('image-file').addEventListener('change', (ev) => {
    const f = ev.target.files?.[0];
    if (f) run(() => showFile(f));
  });
  const zone = $('drop-zone');
  zone.addEventListener('dragover', (ev) => ev.preventDefault());
  zone.addEventListener('drop', (ev) => {
    ev.preventDefault();
    const f = ev.dataTransfer?.files?.[0];
    if (f) run(() => showFile(f));
  });
  document.addEventListener('paste', (ev) => {
    const f = [...(ev.clipboardData?.files ?? [])][0];
    if (f) run(() => showFile(f));
  });

  $('ask-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = $('question').value;
    run(async () => {
      const known = scene.questions.find((x) => x.question === q.trim());
      $('answer-expected').textContent = '';
      await stream($('answer-text'), (cb) => model.ask(handle, q, {}, cb));
      if (known) $('answer-expected').textContent = `(the generator's answer: ${known.answer})`;
    });
  });
  $('new-scene').addEventListener('click', () => run(() => show(9000000 + Math.floor(Math.random() * 1000000))));
  await run(() => show(Number(params.get('scene') ?? 9000000)));
}

// offline: the service worker caches the shell, the wasm package and the default model
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('sw.js')
    .then(() => navigator.serviceWorker.ready)
    .then(() => { document.documentElement.dataset.offline = 'ready'; })
    .catch((e) => { document.documentElement.dataset.offline = `unavailable: ${messageOf(e)}`; });
}

main().catch((e) => {
  console.error(e);
  showError(e);
});
