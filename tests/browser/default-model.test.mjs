// The page a person opens: after the kernel self-check it loads the default model
// (models/scenes-git) and captions a sample scene, on WebGPU (SwiftShader). The caption and an
// answer asked through the form must be what the native CLI gives for the same scene on the CPU.

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
let native; // {caption, question, answer} from the CLI with the embedded default model

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'glimpse-default-'));
  await run(BIN, ['scenes', '--seed', String(SCENE), '--count', '1', '--size', '64', '--out', tmp]);
  const png = join(tmp, `scene-${SCENE}.png`);
  const cap = JSON.parse((await run(BIN, ['caption', png, '--device', 'cpu', '--json'])).stdout);
  const jsonl = readFileSync(join(tmp, 'scenes.jsonl'), 'utf8');
  const question = JSON.parse(jsonl.trim().split('\n')[0]).qa[0].question;
  const ans = JSON.parse((await run(BIN, ['ask', png, question, '--device', 'cpu', '--json'])).stdout);
  native = { caption: cap[0].caption, question, answer: ans.answer };
  base = await startServer();
});

after(async () => {
  await stopAll();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('the page captions a sample scene with the default model on WebGPU', { timeout: 400_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await newPage(browser);
  await page.goto(`${base}/www/?scene=${SCENE}`);
  await waitForCaption(page);
  const shown = await page.evaluate(() => ({
    caption: document.getElementById('caption-text').textContent,
    expected: document.getElementById('caption-expected').textContent,
    question: document.getElementById('question').value,
    seed: document.getElementById('scene-image').dataset.seed,
    error: document.getElementById('caption-error').textContent,
    time: document.getElementById('caption-time').textContent,
  }));
  console.log(`page: "${shown.caption}" (generator: "${shown.expected}"; ${shown.time}); native CLI: "${native.caption}"`);
  assert.equal(shown.error, '');
  assert.equal(shown.seed, String(SCENE));
  assert.equal(shown.caption, native.caption, 'WebGPU in the page and the native CPU path caption alike');
  assert.equal(shown.question, native.question, "the form starts with the scene's first question");

  await page.click('#ask-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('answer-text').dataset.state === 'done', null, { timeout: 120_000 });
  const answer = await page.evaluate(() => document.getElementById('answer-text').textContent);
  console.log(`Q: ${native.question} page: "${answer}", native: "${native.answer}"`);
  assert.equal(answer, native.answer);
  await page.screenshot({ path: join(SCREENSHOTS, 'default-model.png'), fullPage: true });
  assertNoProblems(problems);
});

test('without WebGPU the page says so and captions on the CPU alike', { timeout: 400_000 }, async () => {
  const browser = await launch(BASE_ARGS); // no --enable-unsafe-webgpu
  const { page, problems } = await newPage(browser);
  await page.goto(`${base}/www/?scene=${SCENE}`);
  await waitForCaption(page);
  const shown = await page.evaluate(() => ({
    backend: document.getElementById('backend').textContent,
    device: document.getElementById('backend').dataset.device,
    caption: document.getElementById('caption-text').textContent,
    time: document.getElementById('caption-time').textContent,
    error: document.getElementById('caption-error').textContent,
  }));
  console.log(`CPU page: "${shown.caption}" (${shown.time}); ${shown.backend}`);
  assert.equal(shown.error, '');
  assert.equal(shown.device, 'cpu');
  assert.match(shown.backend, /runs on the CPU .*Reason: \S/);
  assert.equal(shown.caption, native.caption);
  assert.match(shown.time, /on the CPU/);
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
