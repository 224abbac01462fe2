// Models through the wasm package in headless Chromium: the tiny GIT and CLIP checkpoints of
// tests/fixtures (made with Hugging Face transformers), on WebGPU (SwiftShader) and on the CPU
// path (candle in wasm). Captions, beam search, VQA answers and CLIP scores must equal the
// transformers reference, as the native tests require.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, WEBGPU_ARGS, launch, blankPage, assertNoProblems, startServer, stopAll } from './harness.mjs';

let base;
const gitRef = JSON.parse(readFileSync(join(ROOT, 'tests/fixtures/git/reference.json'), 'utf8'));
const clipRef = JSON.parse(readFileSync(join(ROOT, 'tests/fixtures/clip/reference.json'), 'utf8'));

before(async () => {
  base = await startServer();
});
after(stopAll);

/** In the page: loads a fixture model folder over HTTP into an engine on `device`. */
const LOAD = async (dir, device, generation = true) => {
  const glimpse = await import('/pkg/glimpse.js');
  await glimpse.default();
  const text = async (f) => {
    const r = await fetch(`${dir}/${f}`);
    if (!r.ok) throw new Error(`${dir}/${f}: HTTP ${r.status}`);
    return r.text();
  };
  const bytes = async (f) => new Uint8Array(await (await fetch(`${dir}/${f}`)).arrayBuffer());
  const engine = await glimpse.Engine.create({ device });
  const enc = new TextEncoder();
  const files = {
    'config.json': enc.encode(await text('config.json')),
    'preprocessor_config.json': enc.encode(await text('preprocessor_config.json')),
    'tokenizer.json': await bytes('tokenizer.json'),
  };
  if (generation) files['generation_config.json'] = enc.encode(await text('generation_config.json'));
  // the weights go through the streaming loader as the worker feeds it: in pieces
  const weights = await bytes('model.safetensors');
  const loader = engine.beginLoad({ files, weights: [{ name: 'model.safetensors', size: weights.length }], dtype: 'f32' });
  for (let at = 0; at < weights.length; at += 4096) loader.push(weights.subarray(at, at + 4096));
  loader.endFile();
  const model = loader.finish();
  return { glimpse, engine, model, bytes };
};

for (const device of ['webgpu', 'cpu']) {
  test(`GIT in the browser on ${device} gives the transformers ids`, { timeout: 300_000 }, async () => {
    const browser = await launch(WEBGPU_ARGS);
    const { page, problems } = await blankPage(browser);
    const got = await page.evaluate(async ({ load, device, names, questions }) => {
      const { model } = await eval(`(${load})`)('/tests/fixtures/git', device);
      const out = {};
      for (const name of names) {
        const png = new Uint8Array(await (await fetch(`/tests/fixtures/images/${name}.png`)).arrayBuffer());
        const image = model.prepareImage(png);
        const pieces = [];
        const greedy = await model.caption(image, { maxNewTokens: 10 }, (t) => { pieces.push(t); });
        const beam = await model.caption(image, { maxNewTokens: 10, numBeams: 3 });
        const answers = [];
        for (const q of questions) answers.push((await model.ask(image, q, { maxNewTokens: 6 })).ids);
        model.releaseImage(image);
        out[name] = { greedy: greedy.ids, text: greedy.text, pieces, beam: beam.ids, answers };
      }
      return { architecture: model.architecture, task: model.task, out };
    }, { load: LOAD.toString(), device, names: Object.keys(gitRef.images), questions: gitRef.questions });

    assert.equal(got.architecture, 'GitForCausalLM');
    assert.equal(got.task, 'caption');
    for (const [name, ref] of Object.entries(gitRef.images)) {
      const g = got.out[name];
      assert.deepEqual(g.greedy, ref.greedy_ids, `${name}: greedy caption ids`);
      assert.deepEqual(g.beam, ref.beam_ids, `${name}: beam ids`);
      assert.deepEqual(g.answers, ref.vqa.map((a) => a.ids), `${name}: VQA answer ids`);
      assert.ok(g.pieces.length > 1, `${name}: the caption should stream in more than one piece`);
      assert.equal(g.pieces.at(-1), g.text, `${name}: the last streamed text is the caption`);
    }
    console.log(`GIT on ${device}: ${Object.keys(gitRef.images).length} images, captions/beams/answers equal to transformers`);
    assertNoProblems(problems);
  });
}

test('CLIP in the browser on webgpu gives the transformers scores', { timeout: 300_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await blankPage(browser);
  const got = await page.evaluate(async ({ load, names, texts }) => {
    const { model } = await eval(`(${load})`)('/tests/fixtures/clip', 'webgpu', false);
    const out = {};
    for (const name of names) {
      const png = new Uint8Array(await (await fetch(`/tests/fixtures/images/${name}.png`)).arrayBuffer());
      out[name] = Array.from(await model.matchTexts(model.prepareImage(png), texts));
    }
    let error = null;
    try {
      model.prepareImage(new Uint8Array([1, 2, 3]));
    } catch (e) {
      error = e.message;
    }
    return { task: model.task, out, error };
  }, { load: LOAD.toString(), names: Object.keys(clipRef.images), texts: clipRef.texts });

  assert.equal(got.task, 'match');
  for (const [name, ref] of Object.entries(clipRef.images)) {
    const logits = ref.logits_per_image;
    const max = Math.max(...logits);
    const exps = logits.map((l) => Math.exp(l - max));
    const want = exps.map((e) => e / exps.reduce((a, b) => a + b, 0));
    got.out[name].forEach((p, i) => {
      // probabilities from logits that match to ~1e-6 (see tests/models_clip.rs)
      assert.ok(Math.abs(p - want[i]) < 1e-4, `${name}: text ${i}: got ${p}, want ${want[i]}`);
    });
  }
  assert.match(got.error ?? '', /not an image/, 'a broken image is a clear error');
  assertNoProblems(problems);
});
