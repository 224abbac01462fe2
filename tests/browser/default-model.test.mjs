// The page a person opens loads the default model (models/scenes-git) in glimpse's worker and
// captions a sample scene, on WebGPU (SwiftShader, after the worker's kernel self-test) and on
// the CPU fallback. The streamed caption and two answers asked through the form must be what the
// native CLI gives for the same scene on the CPU.

import { after, before, test } from 'node:test';
import { createHash } from 'node:crypto';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { ROOT, BIN, SCREENSHOTS, BASE_ARGS, WEBGPU_ARGS, launch, newPage, assertNoProblems, startServer, stopAll, waitForCaption } from './harness.mjs';

const run = promisify(execFile);
const SCENE = 9000003;
let base;
let tmp;
let native; // {caption, qa: [{question, answer}]} from the CLI with the embedded default model

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'glimpse-default-'));
  await run(BIN, ['scenes', '--seed', String(SCENE), '--count', '1', '--size', '64', '--out', tmp]);
  const png = join(tmp, `scene-${SCENE}.png`);
  const cap = JSON.parse((await run(BIN, ['caption', png, '--device', 'cpu', '--json'])).stdout);
  const jsonl = readFileSync(join(tmp, 'scenes.jsonl'), 'utf8');
  // the scene's first question (the form's prefill) and one typed in by hand
  const questions = [JSON.parse(jsonl.trim().split('\n')[0]).qa[0].question, 'how many shapes are there?'];
  const qa = [];
  for (const question of questions) {
    const ans = JSON.parse((await run(BIN, ['ask', png, question, '--device', 'cpu', '--json'])).stdout);
    qa.push({ question, answer: ans.answer });
  }
  native = { caption: cap[0].caption, qa };
  base = await startServer();
});

after(async () => {
  await stopAll();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** The page's caption of the sample scene, then the two questions through the form. */
async function captionAndAsk(page) {
  await page.goto(`${base}/www/?scene=${SCENE}`);
  await waitForCaption(page);
  const shown = await page.evaluate(() => ({
    caption: document.getElementById('caption-text').textContent,
    pieces: Number(document.getElementById('caption-text').dataset.pieces),
    expected: document.getElementById('caption-expected').textContent,
    question: document.getElementById('question').value,
    seed: document.getElementById('scene-image').dataset.seed,
    error: document.getElementById('caption-error').textContent,
    time: document.getElementById('caption-time').textContent,
    backend: document.getElementById('backend').textContent,
    device: document.getElementById('backend').dataset.device,
  }));
  console.log(`page: "${shown.caption}" in ${shown.pieces} pieces (${shown.expected}; ${shown.time}); native CLI: "${native.caption}"`);
  assert.equal(shown.error, '');
  assert.equal(shown.seed, String(SCENE));
  assert.equal(shown.question, native.qa[0].question, "the form starts with the scene's first question");
  shown.answers = [];
  for (const [i, { question }] of native.qa.entries()) {
    await page.fill('#question', question);
    await page.press('#question', 'Enter'); // the keyboard path
    await page.waitForFunction((n) => document.querySelectorAll('#history li').length === n, i + 1, { timeout: 120_000 });
    shown.answers.push(await page.evaluate(() => ({
      text: document.getElementById('answer-text').textContent,
      time: document.getElementById('answer-time').textContent,
    })));
    console.log(`Q: ${question} page: "${shown.answers[i].text}" (${shown.answers[i].time}), native: "${native.qa[i].answer}"`);
  }
  shown.history = await page.evaluate(() => document.getElementById('history').innerText);
  return shown;
}

test('the page captions a sample scene and answers two questions on WebGPU as the CLI does', { timeout: 400_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await newPage(browser);
  const shown = await captionAndAsk(page);
  assert.equal(shown.device, 'webgpu');
  assert.equal(shown.caption, native.caption, 'WebGPU in the page and the native CPU path caption alike');
  assert.ok(shown.pieces > 1, `the caption streamed in ${shown.pieces} piece(s); it should arrive token by token`);
  assert.match(shown.time, /preprocess .* image encode .* first token .* tokens\/s\) on WebGPU/);
  assert.deepEqual(shown.answers.map((a) => a.text), native.qa.map((q) => q.answer));
  assert.match(shown.answers[1].time, /image encoding reused/, 'the second question reuses the encoded image');
  for (const { question } of native.qa) assert.ok(shown.history.includes(question), `the history lists "${question}"`);
  await page.screenshot({ path: join(SCREENSHOTS, 'default-model.png'), fullPage: true });
  assertNoProblems(problems);
});

test('without WebGPU the page says so and captions and answers on the CPU alike', { timeout: 400_000 }, async () => {
  const browser = await launch(BASE_ARGS); // no --enable-unsafe-webgpu
  const { page, problems } = await newPage(browser);
  const shown = await captionAndAsk(page);
  console.log(`CPU page: ${shown.backend}`);
  assert.equal(shown.device, 'cpu');
  assert.match(shown.backend, /runs on the CPU .*Reason: \S/);
  assert.equal(shown.caption, native.caption);
  assert.ok(shown.pieces > 1, `the caption streamed in ${shown.pieces} piece(s)`);
  assert.match(shown.time, /on the CPU$/);
  assert.deepEqual(shown.answers.map((a) => a.text), native.qa.map((q) => q.answer));
  assertNoProblems(problems);
});

test('models/catalog.json lists the default model with its real sizes and sha256', () => {
  const catalog = JSON.parse(readFileSync(join(ROOT, 'models/catalog.json'), 'utf8'));
  const entry = catalog.models.find((m) => m.id === catalog.default);
  assert.ok(entry, `the catalog has no entry for its default ${catalog.default}`);
  assert.ok(entry.files.some((f) => f.name === 'model.safetensors'));
  for (const f of entry.files) {
    const bytes = readFileSync(join(ROOT, 'models', f.url));
    assert.equal(bytes.length, f.bytes, f.name);
    assert.equal(createHash('sha256').update(bytes).digest('hex'), f.sha256, f.name);
  }
  const total = entry.files.reduce((n, f) => n + f.bytes, 0);
  assert.ok(total <= 10 * 1024 * 1024, `the default model is ${total} bytes; it must stay within 10 MB`);
  for (const id of ['git-base-coco', 'git-base-vqav2', 'vit-gpt2-image-captioning', 'blip-image-captioning-base', 'blip-vqa-base', 'clip-vit-base-patch32']) {
    const m = catalog.models.find((x) => x.id === id);
    assert.ok(m && m.repo && m.license && m.files.every((f) => f.url.startsWith(`https://huggingface.co/${m.repo}/`)), id);
  }
});
