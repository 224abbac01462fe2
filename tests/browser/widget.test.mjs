// The embeddable widget (www/widget.js) on its demo article (www/widget-demo.html), in
// headless Chromium with SwiftShader's WebGPU: images without alt text get the native CLI's
// caption as alt, the one with authored alt text is left alone, the visible caption and the
// <glimpse-caption> element show their text, and an image far below the fold waits until it is
// scrolled near.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { ROOT, BIN, SCREENSHOTS, WEBGPU_ARGS, launch, newPage, assertNoProblems, startServer, stopAll } from './harness.mjs';

const run = promisify(execFile);
let base;
const native = {}; // scene file -> the CLI's caption on the CPU

before(async () => {
  for (const seed of [9000010, 9000011, 9000012, 9000013]) {
    const png = join(ROOT, 'www/demo', `scene-${seed}.png`);
    native[seed] = JSON.parse((await run(BIN, ['caption', png, '--device', 'cpu', '--json'])).stdout)[0].caption;
  }
  base = await startServer();
});
after(stopAll);

const state = (page, id) => page.evaluate((i) => document.getElementById(i).dataset.glimpseState, id);

test('the widget fills missing alt text on an ordinary article', { timeout: 400_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await newPage(browser, { viewport: { width: 1000, height: 1500 } });
  await page.goto(`${base}/www/widget-demo.html`);
  await page.waitForFunction(
    () => ['first', 'second', 'element'].every((i) => ['done', 'error'].includes(document.getElementById(i).dataset.glimpseState)),
    null,
    { timeout: 300_000 },
  );
  const got = await page.evaluate(() => ({
    first: document.getElementById('first').alt,
    second: document.getElementById('second').alt,
    secondVisible: document.getElementById('second').nextElementSibling?.textContent,
    authored: document.getElementById('authored').alt,
    authoredState: document.getElementById('authored').dataset.glimpseState,
    element: document.querySelector('#element img').alt,
    elementVisible: document.querySelector('#element .glimpse-caption-text')?.textContent,
    errors: [...document.querySelectorAll('[data-glimpse-error]')].map((e) => e.dataset.glimpseError),
  }));
  console.log(JSON.stringify(got));
  assert.deepEqual(got.errors, []);
  assert.equal(got.first, native[9000010]);
  assert.equal(got.second, native[9000011]);
  assert.equal(got.secondVisible, native[9000011]);
  assert.equal(got.authored, 'Four big shapes, written by the author');
  assert.equal(got.authoredState, 'skipped');
  assert.equal(got.element, native[9000013]);
  assert.equal(got.elementVisible, native[9000013]);

  // lazy: the image 2400 px below has not been touched until it is scrolled near
  assert.equal(await state(page, 'below'), 'pending');
  await page.evaluate(() => document.getElementById('below').scrollIntoView());
  await page.waitForFunction(() => document.getElementById('below').dataset.glimpseState === 'done', null, { timeout: 120_000 });
  assert.equal(await page.evaluate(() => document.getElementById('below').alt), native[9000010]);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(SCREENSHOTS, 'widget-demo.png') });
  assertNoProblems(problems);
});
