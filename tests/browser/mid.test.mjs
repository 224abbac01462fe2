// The mid-size GIT parity fixture (tests/fixtures/git-mid, tools/make_mid_fixture.py) in
// Chromium, on WebGPU (SwiftShader) and on the CPU path: head_dim 64, 101 image tokens and the
// real 30522-token vocabulary reach kernel paths the tiny fixtures never do. The model folder is
// written by the test setup (its weights from the fixture's seed by `glimpse checkpoint`, as the
// reference was made) and loaded by URL through glimpse.js; greedy captions and VQA answers must
// be transformers' ids.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { ROOT, BIN, BASE_ARGS, WEBGPU_ARGS, launch, blankPage, assertNoProblems, startServer, stopAll } from './harness.mjs';

const run = promisify(execFile);
const FIX = join(ROOT, 'tests/fixtures/git-mid');
const OUT = join(ROOT, 'out/git-mid');
const ref = JSON.parse(readFileSync(join(FIX, 'reference.json'), 'utf8'));
let base;

before(async () => {
  mkdirSync(OUT, { recursive: true });
  for (const f of ['config.json', 'preprocessor_config.json', 'generation_config.json']) copyFileSync(join(FIX, f), join(OUT, f));
  copyFileSync(join(ROOT, 'tests/hub/tokenizers/bert-base-uncased/vocab.txt'), join(OUT, 'vocab.txt'));
  for (const f of ['tokenizer_config.json', 'special_tokens_map.json']) {
    copyFileSync(join(ROOT, 'tests/hub/configs/microsoft__git-base-coco/_reconstructed', f), join(OUT, f));
  }
  await run(BIN, ['checkpoint', '--config', join(OUT, 'config.json'), '--out', OUT, '--seed', String(ref.seed),
    '--scale', String(ref.scale), '--format', 'safetensors']);
  base = await startServer();
});
after(stopAll);

async function check(args, device, names = Object.keys(ref.images)) {
  const browser = await launch(args);
  const { page, problems } = await blankPage(browser);
  const images = {};
  for (const name of names) images[name] = [...readFileSync(join(ROOT, 'tests/fixtures/images', `${name}.png`))];
  const got = await page.evaluate(async ({ images, questions, device }) => {
    const glimpse = await import('/www/glimpse.js');
    const m = await glimpse.load('/out/git-mid/', { device, store: false });
    const out = { backend: m.backend.device, images: {} };
    for (const [name, bytes] of Object.entries(images)) {
      const img = new Uint8Array(bytes);
      const c = await m.caption(img, { maxNewTokens: 12 });
      const answers = [];
      for (const q of questions) answers.push((await m.ask(img, q, { maxNewTokens: 6 })).ids);
      out.images[name] = { greedy: c.ids, answers };
    }
    return out;
  }, { images, questions: ref.questions, device });
  console.log(`${device}: ${JSON.stringify(got)}`);
  assert.equal(got.backend, device === 'cpu' ? 'cpu' : 'webgpu');
  for (const name of names) {
    const e = ref.images[name];
    assert.deepEqual(got.images[name].greedy, e.greedy_ids, `${name}: greedy ids on ${device}`);
    assert.deepEqual(got.images[name].answers, e.vqa.map((a) => a.ids), `${name}: answers on ${device}`);
  }
  assertNoProblems(problems);
}

// SwiftShader takes ~70 s per image here: one image (the one resized in both directions) on
// WebGPU, all three on the CPU path; tests/models_git_mid.rs runs all of them on lavapipe
test('the mid-size GIT gives transformers\' ids on WebGPU (SwiftShader)', { timeout: 900_000 }, async () => {
  await check(WEBGPU_ARGS, 'webgpu', ['big_100x75']);
});

test('the mid-size GIT gives transformers\' ids on the CPU path (wasm)', { timeout: 600_000 }, async () => {
  await check(BASE_ARGS, 'cpu');
});
