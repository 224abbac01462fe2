// A whole model at a real shape (seeded random weights) through the wasm package in headless
// Chromium, as `glimpse bench model` does natively: load, image encode, first token, tokens/s,
// and the page's wasm memory afterwards (wasm memory only grows: that is its peak). Prints a
// table and writes JSON.
//
//   node bench/model-browser.mjs [--arch smolvlm] [--size base] [--dtype q8_0] [--paths cpu,webgpu]
//                                [--new-tokens 16] [--json bench/out/model-browser.json]
//
// `cpu` is the wasm CPU path of the single-thread package (pkg/glimpse.js imported by the page
// itself, as the engine-level browser tests do; the app's worker would run pkg/threads/ on every
// core); `webgpu` runs on SwiftShader, CPU emulation on this machine: never GPU speed.
// `--size base-global` encodes SmolVLM's global view only (1 tile instead of 5), for SwiftShader.

import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { chromium } from 'playwright-core';

import { FLAGS, WEBGPU, arg, serve } from './lib.mjs';

const ARCH = arg('arch', 'smolvlm');
const SIZE = arg('size', 'base');
const DTYPE = arg('dtype', 'q8_0');
const PATHS = arg('paths', 'cpu,webgpu').split(',');
const NEW = Number(arg('new-tokens', '16'));
const JSON_OUT = arg('json', 'bench/out/model-browser.json');

const { child, base } = await serve();
const rows = [];
try {
  for (const path of PATHS) {
    const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: path === 'webgpu' ? WEBGPU : FLAGS });
    const page = await browser.newPage();
    page.on('console', (m) => { if (m.type() === 'error') process.stderr.write(`  [page] ${m.text()}\n`); });
    await page.goto(`${base}/www/bench.html`);
    process.stderr.write(`${ARCH} ${SIZE} ${DTYPE} on ${path} …\n`);
    const t0 = Date.now();
    const r = await page.evaluate(async ({ arch, size, dtype, device, n }) => {
      const glimpse = await import('/pkg/glimpse.js');
      const wasm = await glimpse.default();
      const engine = await glimpse.Engine.create({ device });
      const before = wasm.memory.buffer.byteLength;
      const row = await engine.benchModel(arch, size, dtype, n);
      return { ...row, wasm_before_mib: before / 2 ** 20, wasm_peak_mib: wasm.memory.buffer.byteLength / 2 ** 20 };
    }, { arch: ARCH, size: SIZE, dtype: DTYPE, device: path, n: NEW });
    r.wall_s = (Date.now() - t0) / 1000;
    rows.push({ path, ...r });
    await browser.close();
  }
} finally {
  child.kill();
}
const head = '| path | arch | size | dtype | params M | load ms | image encode ms | first token ms | tokens/s | wasm peak MiB |';
console.log(`${head}\n|---|---|---|---|---:|---:|---:|---:|---:|---:|`);
for (const r of rows) {
  console.log(`| ${r.path} | ${r.arch} | ${r.size} | ${r.dtype} | ${r.params_m.toFixed(1)} | ${r.load_ms.toFixed(0)} | ${r.image_encode_ms.toFixed(0)} | ${r.first_token_ms.toFixed(0)} | ${r.tokens_per_s.toFixed(2)} | ${r.wasm_peak_mib.toFixed(0)} |`);
}
mkdirSync(dirname(JSON_OUT), { recursive: true });
writeFileSync(JSON_OUT, JSON.stringify(rows, null, 2));
