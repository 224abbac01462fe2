#!/usr/bin/env node
// Where the time of one request goes inside the worker: Chromium's sampling profiler (DevTools
// protocol) over one caption or match through glimpse.js, the worker's functions (wasm functions
// by their Rust names) ranked by self time.
//
//   node bench/profile.mjs [--model vit-gpt2-image-captioning] [--device cpu] [--dtype f32]
//                          [--layers N] [--top 40] [--isolated 0|1] [--threads auto|N]
//
// The model is the catalog's local mirror (tests/browser/mirror.mjs, as bench/compare.mjs uses).
// A development tool: the numbers are samples of one run, not a benchmark. wasm-opt drops the
// function names: build with `GLIMPSE_WASM_OPT=0 scripts/build-web.sh` to see Rust names.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

import { ROOT, BIN, arg, serve, WEBGPU } from './lib.mjs';

import { buildMirror } from '../tests/browser/mirror.mjs';

const ID = arg('model', 'vit-gpt2-image-captioning');
const DEVICE = arg('device', 'cpu');
const DTYPE = arg('dtype', 'f32');
const LAYERS = arg('layers', null) === null ? null : Number(arg('layers'));
const TOP = Number(arg('top', '40'));
const ARGS = WEBGPU;
// cross-origin isolated as `glimpse serve` sends pages, so the worker takes the threaded build
// where there is one (--isolated 0: the single-thread build). Only the glimpse worker's own
// thread is sampled: time it spends waiting for the pool shows as the wait's functions.
const ISOLATED = arg('isolated', '1') !== '0';
const THREADS = arg('threads', 'auto');
const ISOLATION_HEADERS = ISOLATED ? { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' } : {};


async function main() {
  const tmp = mkdtempSync(join(tmpdir(), 'glimpse-profile-'));
  execFileSync(BIN, ['scenes', '--seed', '9000003', '--count', '1', '--size', '224', '--out', tmp]);
  const png = [...readFileSync(join(tmp, 'scene-9000003.png'))];
  rmSync(tmp, { recursive: true, force: true });
  const mirror = await buildMirror({ root: ROOT, bin: BIN, ids: [ID], layers: LAYERS });
  const { child, base } = await serve();
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ARGS });
  try {
    const context = await browser.newContext();
    // the worker's target, attached when it starts
    const cdp = await context.newCDPSession(await context.newPage());
    const page = context.pages()[0];
    const blank = `${base}/__glimpse_profile__`;
    await page.route(blank, (route) => route.fulfill({ contentType: 'text/html', headers: ISOLATION_HEADERS, body: '<!doctype html><title>profile</title>' }));
    await page.goto(blank);
    await page.evaluate(async ({ id, device, dtype, catalog, threads }) => {
      const glimpse = await import('/www/glimpse.js');
      self.model = await glimpse.load(id, { device, dtype, catalog, store: false, threads });
    }, { id: ID, device: DEVICE, dtype: DTYPE, catalog: mirror.catalogUrl, threads: THREADS === 'auto' ? 'auto' : Number(THREADS) });
    const worker = page.workers()[0];
    if (!worker) throw new Error('no worker');
    // a CDP session on the worker's target
    const { targetInfos } = await cdp.send('Target.getTargets');
    const target = targetInfos.find((t) => t.type === 'worker' && t.url.endsWith(process.env.PROFILE_TARGET ?? '/worker.js'));
    const { sessionId } = await cdp.send('Target.attachToTarget', { targetId: target.targetId, flatten: false });
    const send = (method, params = {}) => cdp.send('Target.sendMessageToTarget', { sessionId, message: JSON.stringify({ id: ++send.id, method, params }) });
    send.id = 0;
    const replies = new Map();
    cdp.on('Target.receivedMessageFromTarget', (e) => {
      const m = JSON.parse(e.message);
      if (m.id && replies.has(m.id)) replies.get(m.id)(m);
    });
    const call = (method, params) => new Promise((res) => {
      replies.set(send.id + 1, res);
      send(method, params);
    });
    await call('Profiler.enable');
    await call('Profiler.setSamplingInterval', { interval: 200 });
    // warm-up outside the profile
    const request = async (png) => {
      const img = new Uint8Array(png);
      const r = self.model.task === 'match'
        ? await self.model.match(img, ['a cat', 'a dog', 'a red circle', 'a blue square', 'a diagram'])
        : await self.model.caption(img, { maxNewTokens: 16, minNewTokens: 16 });
      await self.model.forget(img);
      return r.timings;
    };
    await page.evaluate(`self.request = ${request.toString()}`);
    await page.evaluate((png) => self.request(png), png);
    await call('Profiler.start');
    const out = await page.evaluate((png) => self.request(png), png);
    const { result } = await call('Profiler.stop');
    const profile = result.profile;
    const self_ = new Map();
    const dt = profile.timeDeltas;
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    const counts = new Map();
    profile.samples.forEach((id, i) => counts.set(id, (counts.get(id) ?? 0) + (dt[i] ?? 0)));
    let total = 0;
    for (const [id, us] of counts) {
      const n = byId.get(id);
      const name = n.callFrame.functionName || `(${n.callFrame.url.split('/').pop() || 'anonymous'})`;
      self_.set(name, (self_.get(name) ?? 0) + us);
      total += us;
    }
    const threads = await page.evaluate(() => self.model.backend.threads?.count ?? 1);
    console.log(`${ID} ${DEVICE} ${DTYPE}${LAYERS ? ` (${LAYERS} layers)` : ''}, ${threads} CPU thread(s): timings ${JSON.stringify(out)}`);
    console.log(`self time of ${(total / 1000).toFixed(0)} ms sampled in the worker`);
    console.log('| ms | % | function |\n|---:|---:|---|');
    for (const [name, us] of [...self_].sort((a, b) => b[1] - a[1]).slice(0, TOP)) {
      console.log(`| ${(us / 1000).toFixed(1)} | ${(100 * us / total).toFixed(1)} | ${name.slice(0, 140)} |`);
    }
  } finally {
    await browser.close();
    child.kill();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
