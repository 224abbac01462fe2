// The bad-input corpus (tests/bad-inputs/cases.json, made by tools/make_bad_inputs.py) through
// the page's worker, as tests/bad_inputs.rs runs it through the CLI: every image, question and
// model folder gives its documented error code and message (or works, for unusual but valid
// inputs), and after each case a good caption is the native CLI's caption of the good image.
// The CPU path: the worker protocol and the loaders are the same on WebGPU.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { ROOT, BIN, BASE_ARGS, launch, blankPage, assertNoProblems, startServer, stopAll } from './harness.mjs';

const CORPUS = join(ROOT, 'tests/bad-inputs');
const cases = JSON.parse(readFileSync(join(CORPUS, 'cases.json'), 'utf8'));
const b64 = (path) => readFileSync(path).toString('base64');
let base;
let native;

before(async () => {
  const good = join(CORPUS, cases.good_image);
  native = JSON.parse((await promisify(execFile)(BIN, ['caption', good, '--device', 'cpu', '--json'])).stdout)[0].caption;
  base = await startServer();
});
after(stopAll);

/** In the page: every case, each followed by a good caption. */
const SCRIPT = async ({ good, images, prompts, models }) => {
  const glimpse = await import('/www/glimpse.js');
  const bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const model = await glimpse.load('scenes-git', { device: 'cpu' });
  const goodImage = bytes(good);
  const outcome = async (p) => {
    try {
      const r = await p;
      return { ok: true, text: r.text ?? null };
    } catch (e) {
      return { ok: false, code: e.code, message: e.message, name: e.name };
    }
  };
  const after = async () => (await model.caption(goodImage)).text;
  const out = { images: [], prompts: [], models: [] };
  for (const c of images) {
    out.images.push({ ...(await outcome(model.caption(bytes(c.data)))), after: await after() });
  }
  for (const c of prompts) {
    // eslint-disable-next-line no-eval
    const q = c.js ? (0, eval)(c.js) : c.question.repeat(c.repeat ?? 1);
    out.prompts.push({ ...(await outcome(model.ask(goodImage, q))), after: await after() });
  }
  for (const c of models) {
    const files = c.files.map((f) => new File([bytes(f.data)], f.name));
    out.models.push({ ...(await outcome(glimpse.load(files, { device: 'cpu' }))), after: await after() });
  }
  return out;
};

test('the bad-input corpus through the page: documented errors, and the worker serves on', { timeout: 600_000 }, async () => {
  const browser = await launch(BASE_ARGS);
  const { page, problems } = await blankPage(browser);
  const modelFiles = (dir) => readdirSync(join(CORPUS, dir)).map((name) => ({ name, data: b64(join(CORPUS, dir, name)) }));
  const input = {
    good: b64(join(CORPUS, cases.good_image)),
    images: cases.images.map((c) => ({ data: b64(join(CORPUS, c.file)) })),
    prompts: cases.prompts,
    models: cases.models.map((c) => ({ files: modelFiles(c.dir) })),
  };
  const got = await page.evaluate(`(${SCRIPT})(${JSON.stringify(input)})`);
  const rows = [];
  const check = (kind, c, r, label) => {
    assert.equal(r.after, native, `${label}: the good caption after it`);
    if (c.expect === 'ok') {
      assert.ok(r.ok, `${label} should work: ${r.message}`);
      rows.push(`${kind} ${label}: ok`);
    } else {
      assert.ok(!r.ok, `${label} should fail`);
      assert.equal(r.code, c.code, `${label}: ${r.message}`);
      assert.match(r.message, new RegExp(c.error), label);
      rows.push(`${kind} ${label}: ${r.code}: ${r.message}`);
    }
  };
  cases.images.forEach((c, i) => check('image', c, got.images[i], c.file));
  cases.prompts.forEach((c, i) => check('prompt', c, got.prompts[i], c.name));
  cases.models.forEach((c, i) => check('model', c, got.models[i], c.dir));
  console.log(rows.join('\n'));
  assertNoProblems(problems);
});
