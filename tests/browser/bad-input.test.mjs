// Bad input through the page's file picker: a text file, a 0-byte file, a corrupt JPEG and an
// image over the size limit each give a visible error, and the next good image is captioned
// as the native CLI captions it.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { ROOT, BIN, WEBGPU_ARGS, launch, newPage, assertNoProblems, startServer, stopAll } from './harness.mjs';

const GOOD = join(ROOT, 'www/demo/scene-9000013.png');
let base;
let native;
before(async () => {
  native = JSON.parse((await promisify(execFile)(BIN, ['caption', GOOD, '--device', 'cpu', '--json'])).stdout)[0].caption;
  base = await startServer();
});
after(stopAll);

test('bad files give visible errors and the next good image works', { timeout: 600_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await newPage(browser, { allowConsole: /not an image|empty|damaged|too large|decode/i });
  await page.goto(`${base}/www/`);
  await page.waitForFunction(() => document.getElementById('caption-text').dataset.state === 'done', null, { timeout: 300_000 });

  const huge = Buffer.from(await page.evaluate(async () => {
    const c = new OffscreenCanvas(17000, 8);
    c.getContext('2d').fillRect(0, 0, 10, 8);
    return [...new Uint8Array(await (await c.convertToBlob({ type: 'image/png' })).arrayBuffer())];
  }));
  const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 16, 0x4a, 0x46, 0x49, 0x46, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0xff, 0xdb, 0, 67, 0, 9, 9, 9]);
  const cases = [
    { file: { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('not a picture at all') }, want: /not an image/i },
    { file: { name: 'empty.png', mimeType: 'image/png', buffer: Buffer.alloc(0) }, want: /empty/i },
    { file: { name: 'broken.jpg', mimeType: 'image/jpeg', buffer: jpeg }, want: /damaged|truncated|decode/i },
    { file: { name: 'huge.png', mimeType: 'image/png', buffer: huge }, want: /too large/i },
  ];
  for (const { file, want } of cases) {
    await page.setInputFiles('#image-file', file);
    await page.waitForFunction(() => !document.getElementById('caption-error').hidden, null, { timeout: 60_000 });
    const msg = await page.evaluate(() => document.getElementById('caption-error').textContent);
    console.log(`${file.name}: ${msg}`);
    assert.match(msg, want, file.name);
  }
  await page.setInputFiles('#image-file', { name: 'good.png', mimeType: 'image/png', buffer: readFileSync(GOOD) });
  await page.waitForFunction(() => document.getElementById('caption-text').dataset.state === 'done'
    && document.getElementById('caption-error').hidden, null, { timeout: 120_000 });
  assert.equal(await page.evaluate(() => document.getElementById('caption-text').textContent), native);
  assertNoProblems(problems);
});
