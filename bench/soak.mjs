#!/usr/bin/env node
// The browser soak (issue 11): many captions and questions in a row through glimpse.js and its
// worker, each on a new synthetic scene (so the worker's prepared-image LRU keeps evicting), with
// the worker's wasm memory, GPU buffers (held / pool free) and JS heap (after a full collection,
// through the DevTools protocol) sampled every
// N requests. After the warm-up every column must stay flat.
//
//   node bench/soak.mjs [--requests 300] [--every 25] [--devices cpu,webgpu] [--json out/soak.json]
//
// Prints a table per device. tests/browser/soak.test.mjs runs a short one with assertions. Needs
// pkg/ and the CLI built (scripts/build-web.sh; cargo build --bin glimpse). SwiftShader is CPU
// emulation of a GPU: its ms/request is not GPU speed.

import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { BASE_ARGS, WEBGPU_ARGS, launch, blankPage, startServer, stopAll } from '../tests/browser/harness.mjs';

/** In the page: loads the model once (kept on `window`). */
const SETUP = async ({ device }) => {
  const glimpse = await import('/www/glimpse.js');
  window.soakModel = await glimpse.load('scenes-git', { device, store: false });
  window.soakClient = glimpse.worker();
  return window.soakModel.backend.device;
};

/** In the page: requests `from..to`, each on a new scene; returns ms per request. */
const RUN = async ({ from, to, seed }) => {
  const glimpse = await import('/www/glimpse.js');
  const t0 = performance.now();
  for (let i = from; i < to; i += 1) {
    const scene = await glimpse.sampleScene(seed + i);
    const image = new Blob([scene.png], { type: 'image/png' });
    if (i % 2 === 1) await window.soakModel.ask(image, scene.questions[0].question);
    else await window.soakModel.caption(image);
  }
  return to > from ? (performance.now() - t0) / (to - from) : 0;
};

/**
 * The worker's JS heap after a full collection, through the DevTools protocol (a worker has no
 * performance.memory): attach to the glimpse worker's target, HeapProfiler.collectGarbage, then
 * Runtime.getHeapUsage.
 */
async function workerHeap(browser) {
  const cdp = await browser.newBrowserCDPSession();
  try {
    const { targetInfos } = await cdp.send('Target.getTargets');
    const target = targetInfos.find((t) => t.type === 'worker' && /\/www\/worker\.js/.test(t.url));
    if (!target) return null;
    const { sessionId } = await cdp.send('Target.attachToTarget', { targetId: target.targetId, flatten: false });
    let next = 0;
    const waiting = new Map();
    cdp.on('Target.receivedMessageFromTarget', (ev) => {
      if (ev.sessionId !== sessionId) return;
      const m = JSON.parse(ev.message);
      waiting.get(m.id)?.(m);
    });
    const call = (method, params = {}) => new Promise((resolve) => {
      next += 1;
      waiting.set(next, resolve);
      cdp.send('Target.sendMessageToTarget', { sessionId, message: JSON.stringify({ id: next, method, params }) });
    });
    await call('HeapProfiler.enable');
    await call('HeapProfiler.collectGarbage');
    const r = await call('Runtime.getHeapUsage');
    await cdp.send('Target.detachFromTarget', { sessionId });
    return r.result?.usedSize ?? null;
  } finally {
    await cdp.detach();
  }
}

/** Runs the soak on `device` ('cpu' or 'webgpu') in a fresh Chromium; returns {backend, samples}. */
export async function soak({ device, requests, every, seed = 88_000_000 }) {
  const browser = await launch(device === 'cpu' ? BASE_ARGS : WEBGPU_ARGS);
  const { page, problems } = await blankPage(browser);
  const backend = await page.evaluate(`(${SETUP})(${JSON.stringify({ device })})`);
  const samples = [];
  const sample = async (request, msPerRequest) => {
    const stats = await page.evaluate(() => window.soakClient.request('stats'));
    samples.push({ request, ...stats, jsHeapBytes: await workerHeap(browser), msPerRequest });
  };
  await sample(0, 0);
  for (let from = 0; from < requests; from += every) {
    const to = Math.min(requests, from + every);
    const ms = await page.evaluate(`(${RUN})(${JSON.stringify({ from, to, seed })})`);
    await sample(to, ms);
  }
  await browser.close();
  return { backend, samples, problems };
}

const mib = (b) => (b === null || b === undefined ? '-' : (b / (1 << 20)).toFixed(1));

export function table(device, samples) {
  const rows = [`${device}:`, '| requests | wasm MiB | GPU held MiB | GPU pool free MiB | JS heap MiB | prepared images | ms/request |', '|---:|---:|---:|---:|---:|---:|---:|'];
  for (const s of samples) {
    rows.push(`| ${s.request} | ${mib(s.wasmBytes)} | ${mib(s.gpu?.heldBytes)} | ${mib(s.gpu?.poolFreeBytes)} | ${mib(s.jsHeapBytes)} | ${s.preparedImages} | ${s.msPerRequest.toFixed(0)} |`);
  }
  return rows.join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  const requests = Number(arg('requests', '300'));
  const every = Number(arg('every', '25'));
  const out = {};
  await startServer();
  try {
    for (const device of arg('devices', 'cpu,webgpu').split(',')) {
      const r = await soak({ device, requests, every });
      out[device] = r;
      console.log(table(`${device} (${r.backend})`, r.samples));
      if (r.problems.length) console.log(`console errors: ${r.problems.join('\n')}`);
    }
  } finally {
    await stopAll();
  }
  const json = arg('json', null);
  if (json) writeFileSync(json, JSON.stringify(out, null, 1));
}
