// The worker protocol under failure, in headless Chromium on the CPU path (the protocol is the
// same on WebGPU): errors carry a `code`; an exception thrown by onToken ends the request with
// that error; abort listeners are removed when requests end; a failed init can be retried; beam
// search streams its best beam and cancels like greedy; and after a wasm trap (a Rust panic on
// purpose, synchronous or inside an async export whose promise never settles) the request fails
// with code 'trap', the worker is replaced, the model is reloaded and the next caption equals the
// one before; in the threaded build a panic on a thread of the CPU pool, too.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { BASE_ARGS, launch, blankPage, startServer, stopAll, TRAP } from './harness.mjs';

let base;
before(async () => {
  base = await startServer();
});
after(stopAll);

const SCRIPT = async () => {
  const glimpse = await import('/www/glimpse.js');
  const out = {};
  const codeOf = async (p) => {
    try {
      await p;
      return 'resolved';
    } catch (e) {
      return `${e.code}: ${e.message}`;
    }
  };
  // no WebGPU in this browser: asking for it fails, and the failed init is not kept
  out.webgpuInit = await codeOf(glimpse.load('scenes-git', { device: 'webgpu' }));
  const model = await glimpse.load('scenes-git', { device: 'cpu' });
  out.backend = model.backend.device;
  const scene = await glimpse.sampleScene(9000004);
  const image = new Blob([scene.png], { type: 'image/png' });
  out.caption = (await model.caption(image)).text;

  // codes
  out.brokenImage = await codeOf(model.caption(new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3])));
  out.beams = await codeOf(model.caption(image, { numBeams: 100000 }));
  out.badOption = await codeOf(model.caption(image, { maxNewTokens: 'many' }));
  out.missing = await codeOf(glimpse.load('/no/such/model/'));

  // onToken throws: the request ends with that very error, the worker goes on
  const boom = new Error('onToken blew up');
  try {
    await model.caption(image, { onToken: () => { throw boom; } });
    out.thrown = 'resolved';
  } catch (e) {
    out.thrown = { same: e === boom, code: e.code, message: e.message };
  }
  out.afterThrow = (await model.caption(image)).text;

  // abort listeners: one signal for several requests, none left when they have ended
  const ctl = new AbortController();
  let live = 0;
  const add = ctl.signal.addEventListener.bind(ctl.signal);
  const remove = ctl.signal.removeEventListener.bind(ctl.signal);
  ctl.signal.addEventListener = (...a) => { live += 1; add(...a); };
  ctl.signal.removeEventListener = (...a) => { live -= 1; remove(...a); };
  for (let i = 0; i < 3; i += 1) await model.caption(image, { signal: ctl.signal });
  await codeOf(model.caption(new Uint8Array([1, 2, 3]), { signal: ctl.signal }));
  out.listenersLeft = live;

  // beam search streams (its best running beam each step) and cancels at the first token
  const beamPieces = [];
  const beam = await model.caption(image, { numBeams: 3, onToken: ({ text }) => beamPieces.push(text) });
  out.beam = { text: beam.text, pieces: beamPieces.length, last: beamPieces[beamPieces.length - 1] };
  const stop = new AbortController();
  let stopPieces = 0;
  out.beamCancel = await codeOf(model.caption(image, {
    numBeams: 3, signal: stop.signal, onToken: () => { stopPieces += 1; stop.abort(); },
  }));
  out.beamCancelPieces = stopPieces;

  // a trap: synchronous panic, then a panic inside an async export
  const client = glimpse.worker();
  for (const inAsync of [false, true]) {
    const t0 = performance.now();
    const r = await codeOf(client.request('debugPanic', { message: `a panic on purpose (async: ${inAsync})`, inAsync }));
    const next = await model.caption(image);
    out[inAsync ? 'asyncTrap' : 'syncTrap'] = { error: r, next: next.text, ms: performance.now() - t0 };
  }
  // a panic on a thread of the CPU pool (the threaded build): the worker's own thread waits for
  // it forever, so the pool thread reports it and the page replaces the worker
  out.threads = model.backend.threads;
  if (out.threads?.build === 'threads') {
    const t0 = performance.now();
    const r = await codeOf(client.request('debugPanic', { message: 'a panic on purpose (pool)', inPool: true }));
    const next = await model.caption(image);
    out.poolTrap = { error: r, next: next.text, ms: performance.now() - t0 };
  }
  out.restarts = client.restarts;
  return out;
};

test('errors carry codes, callbacks and traps end their request, the worker serves on', { timeout: 300_000 }, async () => {
  const browser = await launch(BASE_ARGS);
  const { page, problems } = await blankPage(browser);
  const got = await page.evaluate(`(${SCRIPT})()`);
  console.log(JSON.stringify(got, null, 1));
  assert.match(got.webgpuInit, /^no-adapter: WebGPU is not available/);
  assert.equal(got.backend, 'cpu', 'a failed init is retried with the next load');
  assert.ok(got.caption.length > 0);
  assert.match(got.brokenImage, /^image: /);
  assert.match(got.beams, /^invalid: invalid argument: num_beams = 100000 must be between 1 and 16/);
  assert.match(got.badOption, /^invalid: options: invalid type: string "many"/);
  assert.match(got.missing, /^not-found: config\.json: HTTP 404/);
  assert.deepEqual(got.thrown, { same: true, code: 'callback', message: 'onToken blew up' });
  assert.equal(got.afterThrow, got.caption);
  assert.equal(got.listenersLeft, 0, 'every request removed its abort listener');
  assert.ok(got.beam.pieces > 1, `beam search streams: ${JSON.stringify(got.beam)}`);
  assert.equal(got.beam.last.trim(), got.beam.text, 'the last streamed text is the chosen beam');
  assert.match(got.beamCancel, /^cancelled: /);
  // the cancel crosses from the page while the worker computes the next step: it stops there
  assert.ok(got.beamCancelPieces < got.beam.pieces, `the cancelled beam search stopped early (${got.beamCancelPieces} of ${got.beam.pieces})`);
  for (const k of ['syncTrap', 'asyncTrap']) {
    assert.match(got[k].error, /^trap: glimpse hit an internal error \(glimpse panicked: .*a panic on purpose/s, k);
    assert.equal(got[k].next, got.caption, `${k}: the next caption after the restart`);
  }
  // blankPage is cross-origin isolated: the threaded build with a pool thread per core
  assert.equal(got.threads?.build, 'threads', JSON.stringify(got.threads));
  assert.match(got.poolTrap.error, /^trap: glimpse hit an internal error \(a thread of the CPU pool trapped: glimpse panicked: .*a panic on purpose \(pool\)/s);
  assert.equal(got.poolTrap.next, got.caption, 'poolTrap: the next caption after the restart');
  assert.equal(got.restarts, 3);
  // the only console errors are the panic hook's own reports of the two panics on purpose
  const unexpected = problems.filter((p) => !/a panic on purpose/.test(p));
  assert.deepEqual(unexpected, []);
  assert.ok(problems.every((p) => !TRAP.test(p) || /glimpse panicked: .*a panic on purpose/s.test(p)), problems.join('\n'));
});
