// The app page (www/index.html) as a person uses it, beyond the default model's caption
// (default-model.test.mjs): the model picker (a URL, local files, bad choices), CLIP zero-shot
// labels, the camera, WebGPU device loss, a full storage quota, and screenshots of the whole app
// at desktop and phone width. Every output is compared with the native CLI on the same input.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { ROOT, BIN, SCREENSHOTS, BASE_ARGS, WEBGPU_ARGS, launch, newPage, assertNoProblems, startServer, stopAll, waitForCaption } from './harness.mjs';

const run = promisify(execFile);
const SCENE = 9000003;
const LABELS = ['a red circle', 'a blue square', 'a green triangle', 'a yellow star', 'a photo of a cat'];
let base;
let tmp;
let png; // the sample scene as the CLI writes it (the same pixels the page draws)

const cli = async (...args) => JSON.parse((await run(BIN, [...args, '--device', 'cpu', '--json'])).stdout);

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'glimpse-app-'));
  await run(BIN, ['scenes', '--seed', String(SCENE), '--count', '1', '--size', '64', '--out', tmp]);
  png = join(tmp, `scene-${SCENE}.png`);
  base = await startServer();
});

after(async () => {
  await stopAll();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

const state = (page, id) => page.evaluate((i) => document.getElementById(i).dataset.state, id);
const text = (page, id) => page.evaluate((i) => document.getElementById(i).textContent, id);

/** Waits until the model status leaves 'loading' and returns it with the visible errors. */
async function modelSettled(page) {
  await page.waitForFunction(() => document.getElementById('model-status').dataset.state !== 'loading', null, { timeout: 300_000 });
  return page.evaluate(() => ({
    state: document.getElementById('model-status').dataset.state,
    status: document.getElementById('model-status').textContent,
    name: document.getElementById('model-name').textContent,
    error: document.getElementById('model-error').textContent,
    warning: document.getElementById('model-warning').textContent,
  }));
}

test('the model picker: progress with sizes, a CLIP model from a URL, local GGUF files, bad choices', { timeout: 600_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await newPage(browser, { allowConsole: /404|Not Found/ });
  await page.goto(`${base}/www/?scene=${SCENE}`);
  await waitForCaption(page);
  const first = await text(page, 'caption-text');

  // the default model's download: one finished bar per file, with its size
  const bars = await page.evaluate(() => [...document.querySelectorAll('#progress li')].map((li) => ({
    file: li.querySelector('.file').textContent,
    done: li.dataset.done,
    value: li.querySelector('progress').value,
    max: li.querySelector('progress').max,
    size: li.querySelector('.size').textContent,
  })));
  console.log(bars.map((b) => `${b.file}: ${b.size}`).join('\n'));
  const catalog = JSON.parse(readFileSync(join(ROOT, 'models/catalog.json'), 'utf8'));
  const entry = catalog.models.find((m) => m.id === catalog.default);
  for (const f of entry.files.filter((x) => !x.name.endsWith('.gguf'))) {
    const bar = bars.find((b) => b.file === f.name);
    assert.ok(bar, `a progress bar for ${f.name}`);
    assert.equal(bar.done, 'true', f.name);
    assert.equal(bar.max, f.bytes, `${f.name}: the bar's total is the file's size`);
    assert.equal(bar.value, f.bytes);
    assert.match(bar.size, /\d/, f.name);
  }
  const options = await page.evaluate(() => [...document.querySelectorAll('#model-select option')].map((o) => o.textContent));
  assert.equal(options.length, catalog.models.length, 'every catalog model is offered');
  assert.ok(options.some((o) => /CLIP/i.test(o) && /MB/.test(o)), `the picker shows sizes: ${options.join(' | ')}`);

  // a CLIP checkpoint by URL (a local server with the Hugging Face file layout): zero-shot labels
  await page.click('#model-more summary');
  await page.fill('#model-url', `${base}/tests/fixtures/clip/`);
  await page.click('#url-form button[type=submit]');
  const clip = await modelSettled(page);
  assert.equal(clip.state, 'ready', `${clip.error}`);
  assert.match(clip.status, /CLIPModel/);
  await page.waitForFunction(() => document.getElementById('labels-table').dataset.state === 'done', null, { timeout: 120_000 });
  const rows = await page.evaluate(() => [...document.querySelectorAll('#labels-table tbody tr')].map((tr) => ({
    label: tr.querySelector('th').textContent, shown: tr.querySelector('td').textContent, score: tr.querySelector('meter').value,
  })));
  const native = await cli('match', '--model', join(ROOT, 'tests/fixtures/clip'), png, ...LABELS);
  console.log('page:', rows, '\nCLI:', native);
  assert.deepEqual(rows.map((r) => r.label), native.map((r) => r.text), 'the same labels in the same order');
  for (const [i, r] of rows.entries()) {
    // f32 on WebGPU (SwiftShader) vs candle on the CPU: the same math summed in another order;
    // the kernel self-check bounds matmul differences at 1e-4 relative, far above what shows here
    assert.ok(Math.abs(r.score - native[i].score) <= 1e-5, `${r.label}: page ${r.score}, CLI ${native[i].score}`);
    assert.equal(r.shown, native[i].score.toFixed(4), `${r.label}: the table shows the score to 4 decimals`);
  }
  assert.match(await text(page, 'labels-time'), /preprocess .* image encode .* scoring .* on WebGPU/);
  assert.equal(await page.evaluate(() => document.getElementById('ask-button').disabled), true, 'CLIP does not answer questions');
  await page.screenshot({ path: join(SCREENSHOTS, 'app-clip-labels.png'), fullPage: true });

  // bad choices: a URL with no model, and local files that are not a whole model. The error is
  // visible and the model in use stays in use.
  await page.fill('#model-url', `${base}/no/such/model/`);
  await page.click('#url-form button[type=submit]');
  let bad = await modelSettled(page);
  console.log(`bad URL: ${bad.error}`);
  assert.equal(bad.state, 'error');
  assert.match(bad.error, /config\.json: HTTP 404/);
  await page.setInputFiles('#model-files', [join(ROOT, 'models/scenes-git/config.json')]);
  bad = await modelSettled(page);
  console.log(`lone config.json: ${bad.error}`);
  assert.match(bad.error, /lack preprocessor_config\.json/);
  await page.click('#labels-button');
  await page.waitForFunction(() => document.getElementById('labels-table').dataset.state === 'done', null, { timeout: 120_000 });

  // local files: the q8_0 GGUF (run as f32) captions as the CLI does with the same file
  await page.setInputFiles('#model-files', [join(ROOT, 'models/scenes-git/model-q8_0.gguf')]);
  const gguf = await modelSettled(page);
  assert.equal(gguf.state, 'ready', gguf.error);
  assert.match(gguf.name, /model-q8_0\.gguf/);
  await page.waitForFunction(() => document.getElementById('caption-text').dataset.state === 'done', null, { timeout: 120_000 });
  const ggufNative = await cli('caption', '--model', join(ROOT, 'models/scenes-git/model-q8_0.gguf'), png);
  assert.equal(await text(page, 'caption-text'), ggufNative[0].caption);
  assert.equal(first, ggufNative[0].caption);
  assertNoProblems(problems);
});

test('screenshots of the whole app at desktop and phone width', { timeout: 600_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await newPage(browser);
  await page.goto(`${base}/www/?scene=${SCENE}`);
  await waitForCaption(page);
  for (const q of ['what color is the star?', 'how many shapes are there?']) {
    await page.fill('#question', q);
    await page.press('#question', 'Enter');
    await page.waitForFunction((n) => document.getElementById('history').children.length === n, q.startsWith('what') ? 1 : 2, { timeout: 120_000 });
  }
  await page.click('#new-scene');
  await page.waitForFunction(() => document.getElementById('recent').children.length === 2
    && document.getElementById('caption-text').dataset.state === 'done', null, { timeout: 120_000 });
  // back to the first image: its caption and its two questions come back without new work
  await page.click('#recent li:nth-child(2) button');
  await page.waitForFunction(() => document.getElementById('history').children.length === 2, null, { timeout: 10_000 });
  await page.waitForFunction(() => document.documentElement.dataset.offline === 'ready', null, { timeout: 120_000 });
  await page.screenshot({ path: join(SCREENSHOTS, 'app-desktop.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(SCREENSHOTS, 'app-phone.png'), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the app is ${overflow}px wider than a 390px phone screen`);
  // every image and form control has a name a screen reader can say
  const unnamed = await page.evaluate(() => [...document.querySelectorAll('img, input, select, textarea, button')]
    .filter((el) => !el.closest('[hidden]') && el.type !== 'file')
    .filter((el) => el.tagName === 'IMG' ? !el.alt : !(el.labels?.length || el.getAttribute('aria-label') || el.textContent.trim()))
    .map((el) => el.outerHTML.slice(0, 80)));
  assert.deepEqual(unnamed, []);
  assertNoProblems(problems);
});

test('a photo from the camera is captioned as the CLI captions the same photo', { timeout: 300_000 }, async () => {
  // Chromium's fake camera (a moving test pattern) stands in for a real one; the path through
  // getUserMedia, the video element and the canvas is the real one.
  const browser = await launch([...BASE_ARGS, '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream']);
  const { page, problems } = await newPage(browser);
  await page.goto(`${base}/www/?device=cpu&scene=${SCENE}`);
  await waitForCaption(page);
  await page.click('#camera-button');
  await page.waitForFunction(() => document.getElementById('camera-video').videoWidth > 0, null, { timeout: 30_000 });
  await page.click('#camera-snap');
  await page.waitForFunction(() => /camera photo/.test(document.getElementById('scene-image').alt)
    && document.getElementById('caption-text').dataset.state === 'done', null, { timeout: 60_000 });
  const shot = await page.evaluate(async () => {
    const blob = await (await fetch(document.getElementById('scene-image').src)).blob();
    return [...new Uint8Array(await blob.arrayBuffer())];
  });
  const file = join(tmp, 'camera.png');
  writeFileSync(file, Buffer.from(shot));
  const native = await cli('caption', file);
  const shown = await text(page, 'caption-text');
  console.log(`camera photo ${statSync(file).size} B: page "${shown}", CLI "${native[0].caption}"`);
  assert.equal(shown, native[0].caption);
  assert.equal(await page.evaluate(() => document.getElementById('camera-panel').hidden), true, 'the camera is closed after the photo');
  assertNoProblems(problems);
});

test('after WebGPU device loss the worker opens a new device and goes on answering', { timeout: 600_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await newPage(browser, { allowConsole: /destroyed|lost/i });
  await page.goto(`${base}/www/?scene=${SCENE}`);
  await waitForCaption(page);
  const caption = await text(page, 'caption-text');
  await page.click('#ask-button');
  await page.waitForFunction(() => document.getElementById('answer-text').dataset.state === 'done', null, { timeout: 120_000 });
  const answer = await text(page, 'answer-text');

  // destroy the worker's device, as a driver reset would
  assert.equal(await page.evaluate(async () => (await import('/www/glimpse.js')).worker().request('loseDevice')), 'webgpu');
  const outcomes = [];
  for (let i = 0; i < 2; i += 1) {
    await page.click('#ask-button');
    await page.waitForFunction(() => ['done', 'error'].includes(document.getElementById('answer-text').dataset.state)
      || !document.getElementById('caption-error').hidden, null, { timeout: 300_000 });
    outcomes.push(await page.evaluate(() => ({
      state: document.getElementById('answer-text').dataset.state,
      answer: document.getElementById('answer-text').textContent,
      error: document.getElementById('caption-error').hidden ? '' : document.getElementById('caption-error').textContent,
    })));
    await page.evaluate(() => { document.getElementById('caption-error').hidden = true; });
  }
  const backend = await page.evaluate(() => ({ text: document.getElementById('backend').textContent, device: document.getElementById('backend').dataset.device }));
  console.log(JSON.stringify({ outcomes, backend }, null, 1));
  // the loss surfaces either before a request (which then runs on the new device) or during
  // one (which fails saying so); either way the next request is answered, never a hang
  assert.ok(outcomes[0].state === 'done' ? outcomes[0].answer === answer : /device was lost/.test(outcomes[0].error), JSON.stringify(outcomes[0]));
  assert.equal(outcomes[1].state, 'done');
  assert.equal(outcomes[1].answer, answer);
  assert.match(backend.text, /device was lost/);
  assert.equal(backend.device, 'webgpu', 'SwiftShader gives a new device');
  // the reloaded model captions a new image as the CLI does
  await page.click('#new-scene');
  await page.waitForFunction(() => document.getElementById('recent').children.length === 2
    && document.getElementById('caption-text').dataset.state === 'done', null, { timeout: 300_000 });
  const seed = await page.evaluate(() => document.getElementById('scene-image').dataset.seed);
  await run(BIN, ['scenes', '--seed', seed, '--count', '1', '--size', '64', '--out', tmp]);
  const native = await cli('caption', join(tmp, `scene-${seed}.png`));
  console.log(`before the loss: "${caption}"; scene ${seed} after it: "${await text(page, 'caption-text')}", CLI "${native[0].caption}"`);
  assert.equal(await text(page, 'caption-text'), native[0].caption);
  assertNoProblems(problems);
});

/** Paths of everything in the origin's Cache API. */
const cachedPaths = (page) => page.evaluate(async () => {
  const names = [];
  for (const key of await caches.keys()) for (const r of await (await caches.open(key)).keys()) names.push(new URL(r.url).pathname);
  return names;
});

// Storage.overrideQuotaForOrigin (DevTools protocol) sets the origin's quota, which covers the
// service worker's cache (the shell) and the worker's model store (OPFS). Two cases, each with
// one writer at a time so the outcome does not depend on which of them writes first.
test('a full storage quota is reported, nothing partial is kept, and the page still works', { timeout: 300_000 }, async () => {
  const browser = await launch(BASE_ARGS);
  const native = await cli('caption', png);

  // 1. a 1 MiB quota holds neither the shell (6 MB of wasm) nor the model (4 MB): the worker's
  //    GGUF file fails part way and is removed; the model still works
  {
    const { page, problems, context } = await newPage(browser, { allowConsole: /quota/i });
    const cdp = await context.newCDPSession(page);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: base, quotaSize: 1024 * 1024 });
    await page.goto(`${base}/www/?scene=${SCENE}`);
    await waitForCaption(page);
    assert.equal(await text(page, 'caption-text'), native[0].caption, 'the model works without being stored');
    await page.waitForFunction(() => (document.documentElement.dataset.offline ?? '').startsWith('unavailable'), null, { timeout: 120_000 });
    const shown = await page.evaluate(() => ({
      offline: document.getElementById('offline-status').textContent,
      warning: document.getElementById('model-warning').textContent,
    }));
    const kept = await storedFiles(page);
    console.log(JSON.stringify({ ...shown, kept }));
    assert.match(shown.warning, /not stored for offline use: .*quota/);
    assert.match(shown.offline, /quota/);
    assert.deepEqual(kept.filter((n) => n.endsWith('.gguf') || n.endsWith('.partial')), [], 'no model file stays when it could not be stored whole');
    assertNoProblems(problems);
    await context.close();
  }

  // 2. room for the shell and 1 MiB more: a page that loads no model lets the service worker
  //    store the shell alone; then a model load through the API cannot store its 4 MB and says
  //    so, keeps nothing partial, and captions
  {
    const { page, problems, context } = await newPage(browser, { allowConsole: /quota/i });
    const shell = ['pkg/glimpse_bg.wasm', 'pkg/glimpse.js'].reduce((n, f) => n + statSync(join(ROOT, f)).size, 0);
    const cdp = await context.newCDPSession(page);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: base, quotaSize: shell + 1024 * 1024 });
    await page.goto(`${base}/www/?scene=${SCENE}&model=no-such-model`);
    await page.waitForFunction(() => document.getElementById('model-status').dataset.state === 'error', null, { timeout: 120_000 });
    assert.match(await text(page, 'model-error'), /the catalog has no model no-such-model/);
    // the offline status is set once the service worker is active (its install, which stores
    // the shell, has finished) or has reported that the shell could not be stored
    await page.waitForFunction(() => document.documentElement.dataset.offline, null, { timeout: 120_000 });
    const status = await page.evaluate(() => document.documentElement.dataset.offline);
    const cached = await cachedPaths(page);
    assert.ok(cached.includes('/pkg/glimpse_bg.wasm'), `the shell was stored: [${cached.join(', ')}]; offline status: ${status}`);
    const out = await page.evaluate(async () => {
      const glimpse = await import('/www/glimpse.js');
      const m = await glimpse.load('scenes-git', { device: 'cpu' });
      const scene = await glimpse.sampleScene(9000003, 64);
      const c = await m.caption(new Uint8Array(scene.png));
      return { warnings: m.warnings, caption: c.text, from: m.from, stored: await glimpse.storedModels() };
    });
    const kept = await storedFiles(page);
    console.log(JSON.stringify({ cached: cached.length, out, kept }));
    assert.equal(out.caption, native[0].caption);
    assert.match(out.warnings.join(' '), /not stored for offline use: .*quota/);
    assert.deepEqual(out.stored, []);
    assert.deepEqual(kept.filter((n) => n.endsWith('.gguf') || n.endsWith('.partial')), [], 'nothing partial is kept');
    assertNoProblems(problems);
  }
});

/** Names in the worker's model store (OPFS). */
const storedFiles = (page) => page.evaluate(async () => {
  const root = await navigator.storage.getDirectory();
  const names = [];
  try {
    const dir = await root.getDirectoryHandle('glimpse-models');
    for await (const [name] of dir.entries()) names.push(name);
  } catch { /* no store yet */ }
  return names;
});
