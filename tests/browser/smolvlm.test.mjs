// SmolVLM (Idefics3) in headless Chromium: the tiny checkpoint of tests/fixtures/smolvlm (made
// with transformers, tools/make_smolvlm_fixture.py) through the wasm package on WebGPU
// (SwiftShader) and on the CPU path: a two-turn conversation whose greedy ids must equal
// transformers'; then the page holding a two-turn conversation about an image, its answers equal
// to the native CLI's `glimpse chat`, with a screenshot.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { ROOT, BIN, SCREENSHOTS, WEBGPU_ARGS, launch, blankPage, newPage, assertNoProblems, startServer, stopAll, waitForCaption } from './harness.mjs';

const run = promisify(execFile);
const ref = JSON.parse(readFileSync(join(ROOT, 'tests/fixtures/smolvlm/reference.json'), 'utf8'));
const NAMES = ['wide_40x64', 'tall_57x23'];
let base;

before(async () => {
  base = await startServer();
});
after(stopAll);

/** In the page: loads the fixture folder over HTTP into an engine on `device`. */
const LOAD = async (dir, device) => {
  const glimpse = await import('/pkg/glimpse.js');
  await glimpse.default();
  const get = async (f) => new Uint8Array(await (await fetch(`${dir}/${f}`)).arrayBuffer());
  const engine = await glimpse.Engine.create({ device });
  const files = {};
  for (const f of ['config.json', 'generation_config.json', 'preprocessor_config.json', 'processor_config.json',
    'chat_template.json', 'tokenizer.json', 'tokenizer_config.json']) files[f] = await get(f);
  const weights = await get('model.safetensors');
  const loader = engine.beginLoad({ files, weights: [{ name: 'model.safetensors', size: weights.length }], dtype: 'f32' });
  for (let at = 0; at < weights.length; at += 4096) loader.push(weights.subarray(at, at + 4096));
  loader.endFile();
  return loader.finish();
};

for (const device of ['webgpu', 'cpu']) {
  test(`SmolVLM in the browser on ${device}: two turns with the transformers ids`, { timeout: 300_000 }, async () => {
    const browser = await launch(WEBGPU_ARGS);
    const { page, problems } = await blankPage(browser);
    const cases = NAMES.map((name) => ({ name, question: ref.question, turn2: ref.images[name].turn2.messages }));
    const got = await page.evaluate(async ({ load, device, cases }) => {
      const model = await eval(`(${load})`)('/tests/fixtures/smolvlm', device);
      const out = {};
      for (const c of cases) {
        const png = new Uint8Array(await (await fetch(`/tests/fixtures/images/${c.name}.png`)).arrayBuffer());
        const image = model.prepareImage(png);
        const pieces = [];
        const first = await model.chat(image, [{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: c.question }] }],
          { maxNewTokens: 12 }, (t) => { pieces.push(t); });
        // the second turn as transformers rendered it (its assistant text is turn 1's answer)
        const second = await model.chat(image, c.turn2, { maxNewTokens: 12 });
        model.releaseImage(image);
        out[c.name] = { first: first.ids, second: second.ids, text: first.text, pieces };
      }
      return { task: model.task, out };
    }, { load: LOAD.toString(), device, cases });

    assert.equal(got.task, 'chat');
    for (const name of NAMES) {
      const r = ref.images[name];
      const g = got.out[name];
      assert.deepEqual(g.first.slice(r.turn1.input_ids.length), r.turn1.greedy_ids, `${name}: turn 1 ids`);
      assert.equal(g.text, r.turn1.answer, `${name}: turn 1 text`);
      assert.deepEqual(g.second.slice(r.turn2.input_ids.length), r.turn2.greedy_ids, `${name}: turn 2 ids`);
      assert.ok(g.pieces.length > 1, `${name}: the answer streams`);
    }
    console.log(`SmolVLM on ${device}: ${NAMES.length} images × 2 turns, ids equal to transformers`);
    assertNoProblems(problems);
    await browser.close();
  });
}

test('the page holds a two-turn conversation about an image, as the CLI does', { timeout: 600_000 }, async () => {
  const png = join(ROOT, 'tests/fixtures/images/big_100x75.png');
  const questions = ['What is in the picture?', 'And the color?'];
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await newPage(browser);
  await page.goto(`${base}/www/`);
  await waitForCaption(page);
  await page.click('#model-more summary');
  await page.fill('#model-url', `${base}/tests/fixtures/smolvlm/`);
  await page.click('#url-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('model-status').dataset.state !== 'loading', null, { timeout: 300_000 });
  const status = await page.evaluate(() => document.getElementById('model-status').dataset.state);
  assert.equal(status, 'ready', await page.evaluate(() => document.getElementById('model-error').textContent));
  assert.equal(await page.evaluate(() => document.getElementById('ask-heading').textContent), 'Talk about the image');
  await page.setInputFiles('#image-file', png);
  await page.waitForFunction(() => document.getElementById('caption-text').dataset.state === 'done', null, { timeout: 120_000 });
  const answers = [];
  for (const q of questions) {
    await page.fill('#question', q);
    await page.click('#ask-button');
    await page.waitForFunction((n) => document.querySelectorAll('#history li').length === n
      && document.getElementById('answer-text').dataset.state === 'done', answers.length + 1, { timeout: 120_000 });
    // the reply is the conversation's last turn; the answer line that streamed it is hidden once
    // the turn is in the list (not shown twice)
    const { reply, streamed, lineHidden } = await page.evaluate(() => ({
      reply: document.querySelector('#history li:last-child .a').textContent,
      streamed: document.getElementById('answer-text').textContent,
      lineHidden: document.getElementById('answer-line').hidden,
    }));
    assert.equal(reply, streamed);
    assert.ok(lineHidden, 'the finished reply is shown once, in the conversation');
    answers.push(reply);
  }
  const turns = await page.evaluate(() => [...document.querySelectorAll('#history li')].map((li) => li.querySelector('.q').textContent));
  assert.deepEqual(turns, questions, 'the conversation keeps both turns');
  assert.equal(await page.evaluate(() => document.getElementById('question').value), '', 'the box is cleared for the next turn');
  await page.screenshot({ path: join(SCREENSHOTS, 'app-smolvlm-chat.png'), fullPage: true });

  // the CLI's conversation on the same image and questions (f32 on the CPU; the page runs WebGPU)
  const { stdout } = await run('bash', ['-c', `printf '%s\\n' "${questions[1]}" | "${BIN}" chat "${png}" --say "${questions[0]}" --model "${join(ROOT, 'tests/fixtures/smolvlm')}" --device cpu --json`]);
  const native = JSON.parse(stdout).messages.filter((m) => m.role === 'assistant').map((m) => m.content[0].text);
  assert.deepEqual(answers, native, 'the page answers as the CLI does');

  // a new conversation forgets the turns
  await page.click('#new-chat');
  assert.equal(await page.evaluate(() => document.querySelectorAll('#history li').length), 0);
  assert.equal(await page.evaluate(() => document.getElementById('answer-line').hidden), false, 'a new conversation shows the answer line again');
  assertNoProblems(problems);
  await browser.close();
});
