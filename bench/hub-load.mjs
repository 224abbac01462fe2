#!/usr/bin/env node
// The catalog's models at their real shapes in the browser (issue 10): for each hub entry a local
// mirror (tests/browser/mirror.mjs: the repo's real metadata and tokenizer, random weights at the
// real shape written as the repo's pytorch_model.bin or model.safetensors) is loaded through
// glimpse.js in headless Chromium, on WebGPU (SwiftShader here) and on the CPU path (wasm):
//
//   file MB · download to first caption (load + image + 16 tokens; CLIP: 5 labels) · peak wasm
//   memory while loading · stored GGUF MB · second visit (load from the store) · and the native
//   CLI's peak RSS for the same load and caption (/usr/bin/time).
//
//   node bench/hub-load.mjs [--ids git-base-coco,clip-vit-base-patch32] [--devices webgpu,cpu]
//                           [--dtype q8_0] [--layers N] [--native cpu,gpu] [--json out/hub-load.json]
//
// --layers N cuts every tower to N layers (real widths, vocabulary and image size): a full-depth
// caption on SwiftShader takes ~11 minutes on 2 cores. --native picks the devices of the CLI's
// RSS column (default cpu; lavapipe at full depth takes minutes per model).
//
// Prints a table; --json writes the rows. Timings on SwiftShader and lavapipe are CPU emulation
// of a GPU: compare them side by side, never read them as GPU speed. Needs pkg/ and the CLI built
// (scripts/build-web.sh; cargo build --release --bin glimpse).

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

import { ROOT, BIN, arg, serve, WEBGPU, FLAGS } from './lib.mjs';

import { buildMirror } from '../tests/browser/mirror.mjs';

const IDS = arg('ids', 'clip-vit-base-patch32,git-base-coco,git-base-vqav2,vit-gpt2-image-captioning,blip-image-captioning-base,blip-vqa-base').split(',');
const DEVICES = arg('devices', 'cpu,webgpu').split(',');
const DTYPE = arg('dtype', 'q8_0');
const JSON_OUT = arg('json', null);
const LAYERS = arg('layers', null) === null ? null : Number(arg('layers'));
const NATIVE = arg('native', 'cpu').split(',').filter(Boolean);
const MB = 1e6;
const MiB = 1 << 20;


/** One load and first caption in the page; then a second visit's load from the store. */
async function browserRun(base, catalog, id, device, png) {
  const dir = mkdtempSync(join(tmpdir(), 'glimpse-bench-'));
  const context = await chromium.launchPersistentContext(dir, { executablePath: '/usr/bin/chromium', headless: true, args: device === 'webgpu' ? WEBGPU : FLAGS });
  try {
    const page = context.pages()[0];
    page.setDefaultTimeout(3_600_000);
    // a blank document on the server's origin (a secure context), nothing else loaded
    const blank = `${base}/__glimpse_bench_blank__`;
    await page.route(blank, (route) => route.fulfill({ contentType: 'text/html', body: '<!doctype html><title>bench</title>' }));
    await page.goto(blank);
    const task = async (second) => page.evaluate(async ({ id, device, dtype, png, second, catalog }) => {
      const glimpse = await import('/www/glimpse.js');
      const t0 = performance.now();
      const m = await glimpse.load(id, { device, dtype, catalog });
      const loadMs = performance.now() - t0;
      let out = null;
      if (!second) {
        const img = new Uint8Array(png);
        if (m.task === 'match') out = (await m.match(img, ['a cat', 'a dog', 'a red circle', 'a blue square', 'a diagram']))[0].label;
        else if (m.task === 'answer') out = (await m.ask(img, 'what is in the picture?', { maxNewTokens: 16, minNewTokens: 16 })).text;
        else out = (await m.caption(img, { maxNewTokens: 16, minNewTokens: 16 })).text;
      }
      const firstMs = performance.now() - t0;
      const r = { from: m.from, loadMs, firstMs, out, peak: m.peakWasmBytes, stored: m.storedBytes, downloaded: m.downloadedBytes, params: m.params, backend: m.backend.device };
      await m.dispose();
      return r;
    }, { id, device, dtype: DTYPE, png, second, catalog });
    const first = await task(false);
    await page.reload();
    const second = await task(true);
    return { first, second };
  } finally {
    await context.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The CLI's peak resident memory for the same load and one caption (GNU time), per device. */
function rss(id, model, pngPath) {
  const entry = JSON.parse(readFileSync(join(ROOT, 'models/catalog.json'), 'utf8')).models.find((m) => m.id === id);
  const args = entry.tasks.includes('match') ? ['match', pngPath, 'a cat', 'a dog'] : entry.tasks.includes('caption')
    ? ['caption', pngPath, '--max-new-tokens', '16'] : ['ask', pngPath, 'what is in the picture?', '--max-new-tokens', '16'];
  const r = {};
  for (const device of NATIVE) {
    const run = spawnSync('/usr/bin/time', ['-v', BIN, ...args, '--model', model, '--dtype', DTYPE, '--device', device],
      { encoding: 'utf8', maxBuffer: 1 << 26, env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? tmpdir() } });
    const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(run.stderr ?? '');
    r[device] = m ? Number(m[1]) * 1024 : null;
  }
  return r;
}

async function main() {
  const tmp = mkdtempSync(join(tmpdir(), 'glimpse-bench-scene-'));
  execFileSync(BIN, ['scenes', '--seed', '9000003', '--count', '1', '--size', '64', '--out', tmp]);
  const pngPath = join(tmp, 'scene-9000003.png');
  const png = [...readFileSync(pngPath)];
  const { entries, catalogUrl, modelDir } = await buildMirror({ root: ROOT, bin: BIN, ids: IDS, layers: LAYERS });
  const { child, base } = await serve();
  const rows = [];
  try {
    for (const id of IDS) {
      const entry = entries.find((e) => e.id === id);
      const weights = entry.files.find((f) => /\.(bin|safetensors)$/.test(f.name));
      const native = rss(id, modelDir(id), pngPath);
      for (const device of DEVICES) {
        process.stderr.write(`${id} on ${device}…\n`);
        const r = await browserRun(base, catalogUrl, id, device, png);
        rows.push({ id, device: r.first.backend, weights: weights.name, fileMB: weights.bytes / MB, params: r.first.params,
          firstMs: r.first.firstMs, loadMs: r.first.loadMs, peakWasmMiB: r.first.peak / MiB, storedMB: r.first.stored / MB,
          secondLoadMs: r.second.loadMs, secondFrom: r.second.from, nativeRssCpuMiB: native.cpu ? native.cpu / MiB : null, nativeRssGpuMiB: native.gpu ? native.gpu / MiB : null,
          output: r.first.out });
        process.stderr.write(`${JSON.stringify(rows.at(-1))}\n`);
      }
    }
  } finally {
    child.kill();
    rmSync(tmp, { recursive: true, force: true });
  }
  const depth = LAYERS === null ? 'full depth' : `${LAYERS} layer(s) per tower, real widths`;
  console.log(`${DTYPE}, ${depth}, 16 new tokens (CLIP: 5 labels)`);
  const head = '| model | device | weights | file MB | download → first caption | peak wasm MiB (load) | stored GGUF MB | second visit load | native RSS MiB (cpu / lavapipe) |';
  const lines = [head, '|---|---|---|---:|---:|---:|---:|---:|---:|'];
  for (const r of rows) {
    lines.push(`| ${r.id} | ${r.device === 'webgpu' ? 'WebGPU (SwiftShader)' : 'CPU (wasm)'} | ${r.weights} | ${r.fileMB.toFixed(0)} | ${(r.firstMs / 1000).toFixed(1)} s (load ${(r.loadMs / 1000).toFixed(1)} s) | ${r.peakWasmMiB.toFixed(0)} | ${r.storedMB.toFixed(0)} | ${(r.secondLoadMs / 1000).toFixed(1)} s (${r.secondFrom}) | ${r.nativeRssCpuMiB?.toFixed(0) ?? '–'} / ${r.nativeRssGpuMiB?.toFixed(0) ?? '–'} |`);
  }
  console.log(lines.join('\n'));
  if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify(rows, null, 2));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
