#!/usr/bin/env node
// glimpse vs transformers.js, same weights, one headless Chromium session (issue 12).
//
//   node bench/compare.mjs [--models vit-gpt2,clip] [--paths cpu-f32,cpu-q8,webgpu]
//                          [--runs 3] [--gpu-layers 2] [--cpu-layers 0] [--json bench/out/compare.json]
//
// Models: the catalog's local mirrors at their real shapes (tests/browser/mirror.mjs: the repo's real
// config and tokenizer, seeded random weights written by `glimpse checkpoint`), and the same
// checkpoint exported to ONNX for transformers.js by bench/compare/export.py (optimum-onnx; q8 =
// onnxruntime's dynamic int8 quantization, as transformers.js ships its *_quantized.onnx):
//   vit-gpt2  nlpconnect/vit-gpt2-image-captioning (239 M parameters): preprocess + image encode +
//             exactly 16 greedy tokens (min = max = 16 new tokens) per caption
//   clip      openai/clip-vit-base-patch32: preprocess + image encode + 5 texts per match
//   smolvlm   HuggingFaceTB/SmolVLM-256M-Instruct (256.5 M parameters): one chat turn about a wide
//             picture (1 × 4 tiles + the global view = 320 image tokens, a 340-token prompt), preprocess
//             + image encode + prefill + exactly 16 greedy tokens. Its folder and ONNX graphs come from
//             bench/compare/smolvlm.py (run with .venv: transformers 5 + onnx + onnxruntime; optimum has
//             no Idefics3 exporter): one folder both runtimes load, bf16 weights as on the hub. CPU paths
//             only by default: on SwiftShader one full-depth request takes over 5 minutes per runtime.
// Paths (each runs glimpse, then transformers.js 4.3.2, in a new page of the same browser):
//   cpu-f32   glimpse CPU (candle in wasm), f32  vs transformers.js device 'wasm', dtype 'fp32'
//   cpu-q8    glimpse CPU, q8_0                  vs transformers.js 'wasm', 'q8'
//   webgpu    glimpse WebGPU, f32                vs transformers.js 'webgpu', 'fp32'
// On SwiftShader a full-depth WebGPU caption takes many minutes per runtime, so the webgpu path uses
// --gpu-layers N layers per tower (real widths, vocabulary and image size); --gpu-layers 0 keeps the
// full depth (a real GPU). CPU paths always run at full depth.
//
// Per path: every runtime's model loaded in its own page (download from the local server to
// ready; glimpse does not store, and transformers.js's browser cache is off), one warm-up request
// each, then --runs rounds of one request per runtime, interleaved (median reported), the generated ids of both runtimes (they must agree in f32; q8 quantizes differently
// in each runtime) and CLIP's best label. Prints a table; --json writes the rows.
// The pages are cross-origin isolated, as `glimpse serve` sends them (--isolated 0: not): each
// runtime runs with its default threading there — glimpse's threaded build takes every core (at
// most 8), onnxruntime-web min(4, cores / 2) threads (one here, 2 cores); not isolated, both
// run one thread. The header of the table says which.
//
// Needs: pkg/ (scripts/build-web.sh), the CLI (cargo build --release --bin glimpse), and once:
//   (cd bench/compare && ONNXRUNTIME_NODE_INSTALL=skip npm install)
//   python3 -m venv .venv-onnx && .venv-onnx/bin/pip install "optimum-onnx[onnxruntime]==0.1.0"
// (with torch from .venv, see bench/README.md). Timings on SwiftShader are CPU emulation of a GPU:
// compare them side by side, never read them as GPU speed.

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

import { ROOT, BIN, arg, serve, WEBGPU } from './lib.mjs';
import { buildMirror } from '../tests/browser/mirror.mjs';

const MODELS = arg('models', 'vit-gpt2,clip').split(',');
const PATHS = arg('paths', 'cpu-f32,cpu-q8,webgpu').split(',');
const RUNS = Number(arg('runs', '3'));
const GPU_LAYERS = Number(arg('gpu-layers', '2'));
// a smoke test of the script itself: cut the CPU paths too (not for the table)
const CPU_LAYERS = Number(arg('cpu-layers', '0'));
const JSON_OUT = arg('json', null);
const ISOLATED = arg('isolated', '1') !== '0';
const ISOLATION_HEADERS = ISOLATED ? { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' } : {};
// another build of glimpse's page to time (a folder under the repo with www/ and pkg/, e.g. a
// copy of an earlier commit's): before/after comparisons in the same conditions
const GLIMPSE_ROOT = arg('glimpse-root', '');
// 'before': glimpse's page from --before-root (default out/baseline: an earlier build's www/ and
// pkg/), timed in the same session as the current one — the machine's speed drifts by tens of
// percent over minutes here, so before/after comparisons are made side by side
const BEFORE_ROOT = arg('before-root', 'out/baseline');
// quick experiments: time only some runtimes, e.g. --runtimes before,glimpse
const RUNTIMES = arg('runtimes', 'glimpse,tjs').split(',');
const ARGS = WEBGPU;
const CATALOG_ID = { 'vit-gpt2': 'vit-gpt2-image-captioning', clip: 'clip-vit-base-patch32' };
const SMOLVLM = 'smolvlm-256m-instruct';
const QUESTION = 'Can you describe this image?';
const LABELS = ['a cat', 'a dog', 'a red circle', 'a blue square', 'a diagram'];
const PATH = {
  'cpu-f32': { glimpse: { device: 'cpu', dtype: 'f32' }, tjs: { device: 'wasm', dtype: 'fp32' }, label: 'CPU (wasm), f32' },
  'cpu-q8': { glimpse: { device: 'cpu', dtype: 'q8_0' }, tjs: { device: 'wasm', dtype: 'q8' }, label: 'CPU (wasm), q8' },
  webgpu: { glimpse: { device: 'webgpu', dtype: 'f32' }, tjs: { device: 'webgpu', dtype: 'fp32' }, label: 'WebGPU, f32' },
};


/** The mirror (glimpse's files) and its ONNX export (transformers.js's) at `layers` (null: full). */
async function prepare(model, layers) {
  if (model === 'smolvlm') {
    if (layers !== null) throw new Error('smolvlm runs at full depth only (bench/compare/smolvlm.py writes no cut model)');
    const dir = join(ROOT, 'out/bench-onnx', SMOLVLM);
    const py = join(ROOT, '.venv/bin/python');
    if (!existsSync(py)) throw new Error('no .venv: see bench/README.md (compare) for the one-time setup');
    const r = spawnSync(py, [join(ROOT, 'bench/compare/smolvlm.py'), dir], { encoding: 'utf8', maxBuffer: 1 << 26 });
    if (r.status !== 0) throw new Error(`smolvlm.py failed:\n${r.stdout}\n${r.stderr}`);
    process.stderr.write(r.stdout);
    // reference.json: transformers' 16 greedy ids for the same image and question (f32)
    const reference = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8'));
    return { id: null, folder: `/out/bench-onnx/${SMOLVLM}/`, onnxName: SMOLVLM, task: 'chat', image: join(dir, 'bench-image.png'), reference };
  }
  const id = CATALOG_ID[model];
  const mirror = await buildMirror({ root: ROOT, bin: BIN, ids: [id], layers });
  const suffix = layers === null ? '' : `-l${layers}`;
  const onnxName = `${id}${suffix}`;
  const venv = join(ROOT, '.venv-onnx/bin/python');
  if (!existsSync(venv)) throw new Error('no .venv-onnx: see bench/README.md (compare) for the one-time setup');
  const r = spawnSync(venv, [join(ROOT, 'bench/compare/export.py'), mirror.modelDir(id), join(ROOT, 'out/bench-onnx', onnxName)], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`export.py failed:\n${r.stdout}\n${r.stderr}`);
  process.stderr.write(r.stdout);
  return { id, catalogUrl: mirror.catalogUrl, onnxName, task: model === 'clip' ? 'match' : 'caption' };
}

/**
 * One runtime on one path in a new page: loads the model and leaves `window.__request` in the page
 * (one request: {ms, out}). Returns {page, loadMs, backend, isolated, threads}.
 */
async function openRuntime(context, base, runtime, m, path, png) {
  const page = await context.newPage();
  page.setDefaultTimeout(3_600_000);
  page.on('console', (msg) => { if (msg.type() === 'error') process.stderr.write(`  [page] ${msg.text()}\n`); });
  const blank = `${base}/__glimpse_compare_blank__`;
  await page.route(blank, (route) => route.fulfill({ contentType: 'text/html', headers: ISOLATION_HEADERS, body: '<!doctype html><title>compare</title>' }));
  await page.goto(blank);
  const opts = { ...PATH[path][runtime === 'tjs' ? 'tjs' : 'glimpse'], png: [...png], labels: LABELS, task: m.task, question: QUESTION };
  if (runtime === 'glimpse' || runtime === 'before') {
    const root = runtime === 'before' ? BEFORE_ROOT : GLIMPSE_ROOT;
    const info = await page.evaluate(async ({ id, folder, catalog, device, dtype, png, labels, task, question, root }) => {
      const glimpse = await import(`${root}/www/glimpse.js`);
      const t0 = performance.now();
      const model = await glimpse.load(id ?? new URL(folder, location.href).href, { device, dtype, catalog, store: false });
      const loadMs = performance.now() - t0;
      window.__request = async () => {
        const img = new Uint8Array(png); // a new object: encoded again, not reused
        const t = performance.now();
        let out;
        if (task === 'chat') {
          const messages = [{ role: 'user', content: [{ type: 'image', image: img }, { type: 'text', text: question }] }];
          const r = await model.chat(messages, { maxNewTokens: 16, minNewTokens: 16 });
          out = { ids: r.ids.slice(-16), text: r.text, timings: r.timings };
        } else if (task === 'match') {
          const r = await model.match(img, labels);
          out = { best: r[0].label, scores: labels.map((l) => r.find((x) => x.label === l).score), timings: r.timings };
        } else {
          const r = await model.caption(img, { maxNewTokens: 16, minNewTokens: 16 });
          out = { ids: r.ids.slice(-16), text: r.text, timings: r.timings }; // the 16 new tokens (ids starts with the decoder's start)
        }
        const ms = performance.now() - t;
        await model.forget(img);
        return { ms, out };
      };
      return { loadMs, backend: model.backend.device, isolated: self.crossOriginIsolated, threads: model.backend.threads?.count ?? 1 };
    }, { id: m.id, folder: m.folder, catalog: m.catalogUrl, ...opts, root: root ? `/${root.replace(/^\/+|\/+$/g, '')}` : '' });
    return { page, ...info };
  }
  const info = await page.evaluate(async ({ name, device, dtype, png, labels, task, question }) => {
    const T = await import('/bench/compare/node_modules/@huggingface/transformers/dist/transformers.js');
    T.env.allowRemoteModels = false;
    T.env.allowLocalModels = true;
    T.env.localModelPath = '/out/bench-onnx/';
    T.env.useBrowserCache = false;
    T.env.backends.onnx.wasm.wasmPaths = '/bench/compare/node_modules/onnxruntime-web/dist/';
    const t0 = performance.now();
    let run;
    if (task === 'chat') {
      // Idefics3ForConditionalGeneration: vision_encoder + embed_tokens + decoder_model_merged
      const processor = await T.AutoProcessor.from_pretrained(name);
      const model = await T.AutoModelForVision2Seq.from_pretrained(name, { device, dtype });
      run = async (image) => {
        const messages = [{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: question }] }];
        const prompt = processor.apply_chat_template(messages, { add_generation_prompt: true });
        const inputs = await processor(prompt, [image]);
        const out = await model.generate({ ...inputs, max_new_tokens: 16, min_new_tokens: 16, do_sample: false, num_beams: 1 });
        const ids = Array.from(out.tolist()[0], Number);
        return { ids: ids.slice(-16), prompt_tokens: inputs.input_ids.dims[1], text: processor.tokenizer.decode(ids.slice(inputs.input_ids.dims[1]), { skip_special_tokens: true }) };
      };
    } else if (task === 'match') {
      const classify = await T.pipeline('zero-shot-image-classification', name, { device, dtype });
      run = async (image) => {
        const r = await classify(image, labels, { hypothesis_template: '{}' });
        return { best: r[0].label, scores: labels.map((l) => r.find((x) => x.label === l).score) };
      };
    } else {
      const processor = await T.AutoProcessor.from_pretrained(name);
      const tokenizer = await T.AutoTokenizer.from_pretrained(name);
      const model = await T.AutoModelForVision2Seq.from_pretrained(name, { device, dtype });
      run = async (image) => {
        const inputs = await processor(image);
        const out = await model.generate({ ...inputs, max_new_tokens: 16, min_new_tokens: 16, do_sample: false, num_beams: 1 });
        const ids = Array.from(out.tolist()[0], Number);
        return { ids: ids.slice(-16), text: tokenizer.decode(ids, { skip_special_tokens: true }).trim() };
      };
    }
    const loadMs = performance.now() - t0;
    window.__request = async () => {
      const t = performance.now();
      const image = await T.RawImage.fromBlob(new Blob([new Uint8Array(png)], { type: 'image/png' }));
      const out = await run(image);
      return { ms: performance.now() - t, out };
    };
    const w = T.env.backends.onnx.wasm;
    return { loadMs, backend: device, isolated: self.crossOriginIsolated, threads: w.numThreads ?? null };
  }, { name: m.onnxName, ...opts });
  return { page, ...info };
}

/**
 * The runtimes of one (model, path), each in its own page with its model loaded: one warm-up
 * request each, then `RUNS` rounds of one request per runtime, the order rotating every round.
 * Interleaved, a drift of the machine's speed (up to 40% within minutes here) falls on every
 * runtime alike instead of on whichever ran last. Returns {runtime: {loadMs, times, out, …}}.
 */
async function runInterleaved(context, base, m, path, png) {
  const open = {};
  try {
    for (const runtime of RUNTIMES) {
      process.stderr.write(`  ${runtime}: loading…\n`);
      open[runtime] = await openRuntime(context, base, runtime, m, path, png);
      process.stderr.write(`  ${runtime}: loaded in ${(open[runtime].loadMs / 1000).toFixed(1)} s\n`);
    }
    const request = (runtime) => open[runtime].page.evaluate(() => window.__request());
    const res = {};
    for (const runtime of RUNTIMES) {
      await request(runtime); // warm-up
      res[runtime] = { ...open[runtime], page: undefined, times: [], out: null };
    }
    for (let i = 0; i < RUNS; i++) {
      const order = RUNTIMES.map((_, j) => RUNTIMES[(i + j) % RUNTIMES.length]);
      for (const runtime of order) {
        const { ms, out } = await request(runtime);
        res[runtime].times.push(ms);
        res[runtime].out = out;
      }
    }
    return res;
  } finally {
    for (const o of Object.values(open)) await o.page.close();
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function agree(a, b, reference) {
  const same = (x, y) => x.length === y.length && x.every((v, i) => v === y[i]);
  if (reference) {
    const r = reference.new_ids;
    return `ids vs transformers: glimpse ${same(a.ids, r) ? 'same' : 'differ'}, transformers.js ${same(b.ids, r) ? 'same' : 'differ'}`;
  }
  if (a.ids) return a.ids.length === b.ids.length && a.ids.every((x, i) => x === b.ids[i]) ? 'same ids' : 'ids differ';
  const d = Math.max(...a.scores.map((s, i) => Math.abs(s - b.scores[i])));
  return `${a.best === b.best ? 'same' : 'different'} best label, max |Δscore| ${d.toExponential(1)}`;
}

async function main() {
  const tmp = mkdtempSync(join(tmpdir(), 'glimpse-compare-'));
  execFileSync(BIN, ['scenes', '--seed', '9000003', '--count', '1', '--size', '224', '--out', tmp]);
  const scene = readFileSync(join(tmp, 'scene-9000003.png'));
  rmSync(tmp, { recursive: true, force: true });
  const { child, base } = await serve();
  const userDir = mkdtempSync(join(tmpdir(), 'glimpse-compare-profile-'));
  const context = await chromium.launchPersistentContext(userDir, { executablePath: '/usr/bin/chromium', headless: true, args: ARGS });
  const rows = [];
  try {
    const adapter = await (async () => {
      const p = context.pages()[0];
      const blank = `${base}/__glimpse_compare_adapter__`;
      await p.route(blank, (route) => route.fulfill({ contentType: 'text/html', body: '<!doctype html><title>adapter</title>' }));
      await p.goto(blank);
      return p.evaluate(async () => {
        const a = await navigator.gpu?.requestAdapter();
        return a ? `${a.info.vendor} ${a.info.architecture}${a.info.isFallbackAdapter ? ' (fallback)' : ''}` : 'none';
      });
    })();
    process.stderr.write(`WebGPU adapter: ${adapter}\n`);
    for (const model of MODELS) {
      for (const path of PATHS) {
        const cut = path === 'webgpu' ? GPU_LAYERS : CPU_LAYERS;
        const layers = cut > 0 ? cut : null;
        if (model === 'smolvlm' && layers !== null && path === 'webgpu') {
          process.stderr.write('smolvlm webgpu: skipped (full depth only; pass --gpu-layers 0 on a real GPU)\n');
          continue;
        }
        const m = await prepare(model, layers);
        const png = m.image ? readFileSync(m.image) : scene;
        process.stderr.write(`${model} ${path}${layers ? ` (${layers} layers)` : ''}: ${RUNTIMES.join(', ')}, interleaved\n`);
        const res = await runInterleaved(context, base, m, path, png);
        for (const runtime of RUNTIMES) {
          const { timings, ...out } = res[runtime].out;
          process.stderr.write(`  ${runtime}: `);
          process.stderr.write(`  load ${(res[runtime].loadMs / 1000).toFixed(1)} s, runs ${res[runtime].times.map((t) => t.toFixed(0)).join(' ')} ms, ${JSON.stringify(out).slice(0, 160)}\n`);
          if (timings) process.stderr.write(`  last run's timings: ${JSON.stringify(timings)}\n`);
        }
        if (res.before && res.glimpse) {
          process.stderr.write(`  before → now: ${median(res.before.times).toFixed(0)} → ${median(res.glimpse.times).toFixed(0)} ms (${(median(res.glimpse.times) / median(res.before.times)).toFixed(2)}×)\n`);
        }
        if (!res.glimpse || !res.tjs) continue;
        const g = median(res.glimpse.times);
        const t = median(res.tjs.times);
        rows.push({ model, path, label: PATH[path].label, layers: layers ?? 'full', adapter,
          glimpseMs: g, tjsMs: t, ratio: g / t, glimpseLoadMs: res.glimpse.loadMs, tjsLoadMs: res.tjs.loadMs,
          glimpseTimes: res.glimpse.times, tjsTimes: res.tjs.times, agreement: agree(res.glimpse.out, res.tjs.out, m.reference),
          glimpseOut: res.glimpse.out, tjsOut: res.tjs.out, tjsThreads: res.tjs.threads, glimpseThreads: res.glimpse.threads, isolated: res.tjs.isolated });
      }
    }
  } finally {
    await context.close();
    child.kill();
    rmSync(userDir, { recursive: true, force: true });
  }
  const r0 = rows[0];
  console.log(`glimpse vs transformers.js 4.3.2 — ${new Date().toISOString().slice(0, 10)}, headless Chromium, WebGPU adapter: ${r0?.adapter}; ` +
    `cross-origin isolated: ${r0?.isolated}, glimpse CPU threads: ${r0?.glimpseThreads ?? '?'}, onnxruntime-web threads: ${r0?.tjsThreads ?? 'default'}; median of ${RUNS} after a warm-up`);
  const lines = ['| model | path | depth | glimpse ms | transformers.js ms | ratio | glimpse load s | transformers.js load s | outputs |', '|---|---|---|---:|---:|---:|---:|---:|---|'];
  for (const r of rows) {
    lines.push(`| ${r.model} | ${r.label} | ${r.layers === 'full' ? 'full' : `${r.layers} layers/tower`} | ${r.glimpseMs.toFixed(0)} | ${r.tjsMs.toFixed(0)} | ${r.ratio.toFixed(2)} | ${(r.glimpseLoadMs / 1000).toFixed(1)} | ${(r.tjsLoadMs / 1000).toFixed(1)} | ${r.agreement} |`);
  }
  console.log(lines.join('\n'));
  if (JSON_OUT) {
    mkdirSync(dirname(resolve(JSON_OUT)), { recursive: true });
    writeFileSync(JSON_OUT, JSON.stringify(rows, null, 2));
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
