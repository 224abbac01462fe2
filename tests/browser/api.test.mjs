// The JS API (www/glimpse.js) and its worker (www/worker.js) in headless Chromium: the default
// model from the catalog with progress, streamed captions and answers equal to the native CLI,
// WebGPU chosen by 'auto' after its self-test, the CPU path, per-request errors after which the
// worker keeps serving, cancellation, and several requests in flight served in order.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { ROOT, BIN, BASE_ARGS, WEBGPU_ARGS, launch, newPage, blankPage, assertNoProblems, startServer, stopAll } from './harness.mjs';

const run = promisify(execFile);
const SCENE = 9000002;
let base;
let tmp;
let native; // {caption, qa: [{question, answer}]} from the CLI on the CPU

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'glimpse-api-'));
  await run(BIN, ['scenes', '--seed', String(SCENE), '--count', '1', '--out', tmp]);
  const png = join(tmp, `scene-${SCENE}.png`);
  const scene = JSON.parse(readFileSync(join(tmp, 'scenes.jsonl'), 'utf8').trim());
  const caption = JSON.parse((await run(BIN, ['caption', png, '--device', 'cpu', '--json'])).stdout)[0].caption;
  const qa = [];
  for (const { question } of scene.qa.slice(0, 2)) {
    qa.push({ question, answer: JSON.parse((await run(BIN, ['ask', png, question, '--device', 'cpu', '--json'])).stdout).answer });
  }
  native = { caption, qa };
  base = await startServer();
});

after(async () => {
  await stopAll();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** In the page: the API end to end on `device`. */
const SCRIPT = async ({ device, seed, questions }) => {
  const glimpse = await import('/www/glimpse.js');
  const progress = new Set();
  const model = await glimpse.load('scenes-git', { device, onProgress: (p) => progress.add(p.file) });
  const scene = await glimpse.sampleScene(seed);
  const image = new Blob([scene.png], { type: 'image/png' });
  const pieces = [];
  const cap = await model.caption(image, { onToken: ({ delta }) => pieces.push(delta) });
  const answers = [];
  for (const q of questions) answers.push((await model.ask(image, q)).text);

  // a broken image fails its own request; the worker goes on serving
  let brokenError = null;
  try {
    await model.caption(new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]));
  } catch (e) {
    brokenError = e.message;
  }
  const afterError = (await model.caption(image)).text;

  // cancelled at the first token: an AbortError, then the worker still answers
  const ctl = new AbortController();
  let cancelName = null;
  let cancelPieces = 0;
  try {
    await model.caption(image, { onToken: () => { cancelPieces += 1; ctl.abort(); }, signal: ctl.signal });
  } catch (e) {
    cancelName = e.name;
  }
  // several requests in flight: served in order, each with its own answer
  const inFlight = await Promise.all(questions.map((q) => model.ask(image, q)));
  return {
    backend: model.backend, architecture: model.architecture, progress: [...progress],
    caption: cap.text, pieces, timings: cap.timings, answers, brokenError, afterError,
    cancelName, cancelPieces, inFlight: inFlight.map((r) => r.text),
    cores: navigator.hardwareConcurrency, poolThreads: (await glimpse.worker().request('stats')).poolThreads,
  };
};

// the CPU path twice: cross-origin isolated (the threaded build, a pool thread per core) and not
// (the single-thread build, which says why)
for (const [device, args, isolated] of [['auto', WEBGPU_ARGS, true], ['cpu', BASE_ARGS, true], ['cpu', BASE_ARGS, false]]) {
  test(`glimpse.js with device '${device}'${isolated ? '' : ', not cross-origin isolated'}: streamed captions and answers equal the CLI's`, { timeout: 400_000 }, async () => {
    const browser = await launch(args);
    const { page, problems } = await blankPage(browser, { isolated });
    const got = await page.evaluate(`(${SCRIPT})(${JSON.stringify({ device, seed: SCENE, questions: native.qa.map((q) => q.question) })})`);
    console.log(JSON.stringify({ device, backend: got.backend, caption: got.caption, pieces: got.pieces.length, timings: got.timings, brokenError: got.brokenError }));
    if (device === 'auto') {
      assert.equal(got.backend.device, 'webgpu', `auto should pick SwiftShader's WebGPU: ${got.backend.reason}`);
      assert.equal(got.backend.selfcheck?.pass, true, 'the start-up self-test ran and passed');
    } else {
      assert.equal(got.backend.device, 'cpu');
    }
    if (isolated) {
      // headless Chromium reports this machine's cores (2 in CI)
      assert.equal(got.backend.threads.build, 'threads', JSON.stringify(got.backend.threads));
      assert.equal(got.backend.threads.count, Math.min(got.cores, 8));
      assert.equal(got.poolThreads, got.backend.threads.count, 'the wasm side built a pool of that many threads');
    } else {
      assert.deepEqual(got.backend.threads, { count: 1, build: 'single', reason: 'the page is not cross-origin isolated (no COOP/COEP headers), so it cannot share memory between threads' });
    }
    assert.equal(got.architecture, 'GitForCausalLM');
    assert.ok(got.progress.includes('model.safetensors') && got.progress.includes('config.json'), got.progress.join(', '));
    assert.equal(got.caption, native.caption);
    assert.ok(got.pieces.length > 1, `the caption should stream in pieces: ${JSON.stringify(got.pieces)}`);
    assert.equal(got.pieces.join('').trim(), got.caption);
    assert.deepEqual(got.answers, native.qa.map((q) => q.answer));
    assert.match(got.brokenError ?? '', /image|decode|format/i, 'a broken image is a clear error');
    assert.equal(got.afterError, native.caption, 'the worker serves after an error');
    assert.equal(got.cancelName, 'AbortError');
    // the cancel reaches the worker while it computes a following token: it stops there
    assert.ok(got.cancelPieces < got.pieces.length, `the cancelled caption stopped early (${got.cancelPieces} of ${got.pieces.length} pieces)`);
    assert.deepEqual(got.inFlight, native.qa.map((q) => q.answer));
    assertNoProblems(problems);
  });
}

test('glimpse serve isolates its pages (the threaded build runs the app), --no-isolation does not', { timeout: 300_000 }, async () => {
  const headersOf = async (url) => {
    const r = await fetch(url);
    await r.arrayBuffer();
    return { coop: r.headers.get('cross-origin-opener-policy'), coep: r.headers.get('cross-origin-embedder-policy') };
  };
  for (const path of ['/www/', '/pkg/threads/glimpse.js', '/no/such/file']) {
    assert.deepEqual(await headersOf(`${base}${path}`), { coop: 'same-origin', coep: 'require-corp' }, path);
  }
  // the same server without them
  const child = spawn(BIN, ['serve', '--port', '0', '--root', ROOT, '--no-isolation'], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const other = await new Promise((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
        const m = out.match(/glimpse is serving (http:\/\/127\.0\.0\.1:\d+)\//);
        if (m) resolve(m[1]);
      });
      child.on('exit', (code) => reject(new Error(`glimpse serve --no-isolation exited (${code})`)));
    });
    assert.deepEqual(await headersOf(`${other}/www/`), { coop: null, coep: null });
  } finally {
    child.kill();
  }

  // the app page as a person opens it, on the CPU path: isolated, with a pool thread per core
  const browser = await launch(BASE_ARGS);
  const { page, problems } = await newPage(browser);
  await page.goto(`${base}/www/?device=cpu&scene=9000002`);
  await page.waitForFunction(() => document.getElementById('caption-text')?.dataset.state === 'done', null, { timeout: 240_000 });
  const got = await page.evaluate(() => ({
    isolated: self.crossOriginIsolated,
    cores: navigator.hardwareConcurrency,
    adapter: document.getElementById('adapter').innerText.replace(/\s+/g, ' '),
    caption: document.getElementById('caption-text').textContent.trim(),
  }));
  assert.equal(got.isolated, true);
  assert.match(got.adapter, new RegExp(`CPU threads ${Math.min(got.cores, 8)} \\(threaded build\\)`), got.adapter);
  assert.equal(got.caption, native.caption, 'the app page captions as the CLI does');
  assertNoProblems(problems);
});
