// Page open → first caption: the app (www/) as a person opens it, with the default model
// (models/scenes-git), until the first sample scene's caption is done. Prints a table and writes JSON.
//
//   node bench/first-caption.mjs [--paths cpu,webgpu] [--runs 3] [--json bench/out/first-caption.json]
//
// Per path, one Chromium profile: a cold visit (empty Cache Storage: the model is downloaded, the
// WebGPU self-test runs) and then `runs` warm visits in new tabs of the same profile (the model and a
// passing self-test come from Cache Storage — what a returning visitor gets). The time is from the
// navigation's start (performance.timeOrigin) to the caption's `done` state, so it includes the
// HTML, the wasm download and compile, the worker, the model load, the self-test and the caption.
// `cpu` = ?device=cpu in a Chromium without WebGPU; `webgpu` = ?device=webgpu on SwiftShader
// (CPU emulation here: not GPU speed).

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { chromium } from 'playwright-core';

import { FLAGS, WEBGPU, arg, serve } from './lib.mjs';

const PATHS = arg('paths', 'cpu,webgpu').split(',');
const RUNS = Number(arg('runs', '3'));
const JSON_OUT = arg('json', 'bench/out/first-caption.json');
const SCENE = 9000000;

/** One visit in a new tab: ms from navigation start to the caption, and what the page says. */
async function visit(context, url) {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') process.stderr.write(`  [page] ${m.text()}\n`); });
  // milestones: every change of the model status and the caption's state, with its time
  await page.addInitScript(() => {
    window.__marks = [];
    const seen = new Map();
    const watch = () => {
      for (const [id, what] of [['model-status', 'text'], ['caption-text', 'state']]) {
        const el = document.getElementById(id);
        if (!el) continue;
        const v = what === 'text' ? el.textContent : el.dataset.state;
        if (seen.get(id) !== v) {
          seen.set(id, v);
          window.__marks.push([Math.round(performance.now()), id, String(v).slice(0, 90)]);
        }
      }
    };
    new MutationObserver(watch).observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
  });
  try {
    await page.goto(url);
    await page.waitForFunction(
      () => ['done', 'error'].includes(document.getElementById('caption-text')?.dataset.state)
        || !document.getElementById('caption-error').hidden,
      null,
      { timeout: 600_000, polling: 10 },
    );
    return await page.evaluate(() => ({
      ms: performance.now(),
      state: document.getElementById('caption-text').dataset.state,
      caption: document.getElementById('caption-text').textContent,
      error: document.getElementById('caption-error').textContent,
      device: document.getElementById('model-status')?.textContent ?? '',
      captionTime: document.getElementById('caption-time')?.textContent ?? '',
      marks: window.__marks,
      wasm: performance.getEntriesByType('resource').filter((e) => e.name.endsWith('.wasm'))
        .map((e) => ({ start: Math.round(e.startTime), end: Math.round(e.responseEnd) })),
    }));
  } finally {
    await page.close();
  }
}

const { child, base } = await serve();
const rows = [];
try {
  for (const path of PATHS) {
    const dir = mkdtempSync(join(tmpdir(), 'glimpse-first-caption-'));
    const context = await chromium.launchPersistentContext(dir, {
      executablePath: '/usr/bin/chromium', headless: true, args: path === 'webgpu' ? WEBGPU : FLAGS,
    });
    try {
      const url = `${base}/www/?device=${path}&scene=${SCENE}`;
      const cold = await visit(context, url);
      const warm = [];
      for (let i = 0; i < RUNS; i++) warm.push(await visit(context, url));
      for (const r of [cold, ...warm]) {
        if (r.state !== 'done') throw new Error(`${path}: no caption: ${r.error || r.state}`);
      }
      const ms = warm.map((r) => r.ms).sort((a, b) => a - b);
      if (process.env.VERBOSE) for (const r of [cold, warm.at(-1)]) console.error(path, JSON.stringify(r.wasm), JSON.stringify(r.marks, null, 0));
      rows.push({
        path, coldMs: cold.ms, warmMs: ms, warmMedianMs: ms[Math.floor(ms.length / 2)],
        caption: cold.caption, device: cold.device, captionTime: warm.at(-1).captionTime,
      });
    } finally {
      await context.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
} finally {
  child.kill();
}

const fmt = (x) => x.toFixed(0);
console.log('\n| path | first visit ms | returning visit ms (median) | caption | device |');
console.log('|---|---:|---:|---|---|');
for (const r of rows) console.log(`| ${r.path} | ${fmt(r.coldMs)} | ${fmt(r.warmMedianMs)} (${r.warmMs.map(fmt).join(', ')}) | ${r.caption} | ${r.device} |`);
mkdirSync(dirname(JSON_OUT), { recursive: true });
writeFileSync(JSON_OUT, JSON.stringify({ date: new Date().toISOString(), rows }, null, 2));
console.log(`\nwrote ${JSON_OUT}`);
