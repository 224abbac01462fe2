// The JS API (www/glimpse.js) and its worker (www/worker.js) in headless Chromium: the default
// model from the catalog with progress, streamed captions and answers equal to the native CLI,
// WebGPU chosen by 'auto' after its self-test, the CPU path, per-request errors after which the
// worker keeps serving, cancellation, and several requests in flight served in order.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { BIN, BASE_ARGS, WEBGPU_ARGS, launch, blankPage, assertNoProblems, startServer, stopAll } from './harness.mjs';

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
  };
};

for (const [device, args] of [['auto', WEBGPU_ARGS], ['cpu', BASE_ARGS]]) {
  test(`glimpse.js with device '${device}': streamed captions and answers equal the CLI's`, { timeout: 400_000 }, async () => {
    const browser = await launch(args);
    const { page, problems } = await blankPage(browser);
    const got = await page.evaluate(`(${SCRIPT})(${JSON.stringify({ device, seed: SCENE, questions: native.qa.map((q) => q.question) })})`);
    console.log(JSON.stringify({ device, backend: got.backend, caption: got.caption, pieces: got.pieces.length, timings: got.timings, brokenError: got.brokenError }));
    if (device === 'auto') {
      assert.equal(got.backend.device, 'webgpu', `auto should pick SwiftShader's WebGPU: ${got.backend.reason}`);
      assert.equal(got.backend.selfcheck?.pass, true, 'the start-up self-test ran and passed');
    } else {
      assert.equal(got.backend.device, 'cpu');
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
