// Offline and privacy on the page: after one visit the service worker (www/sw.js) has the shell
// and the wasm package, and the worker kept the default model (downloaded once, checked against
// the catalog's sha256) as one GGUF file in OPFS, so with the network cut the reloaded page still
// captions the sample scene; and no request of the visit leaves the page's origin.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { WEBGPU_ARGS, launch, newPage, assertNoProblems, startServer, stopAll, waitForCaption } from './harness.mjs';

let base;
before(async () => {
  base = await startServer();
});
after(stopAll);


test('the page works offline after one visit and talks only to its own origin', { timeout: 600_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await newPage(browser);
  const requests = [];
  page.context().on('request', (r) => requests.push(r.url()));

  await page.goto(`${base}/www/?scene=9000003`);
  await waitForCaption(page);
  const online = await page.evaluate(() => document.getElementById('caption-text').textContent);
  await page.waitForFunction(() => document.documentElement.dataset.offline === 'ready', null, { timeout: 120_000 });
  const cached = await page.evaluate(async () => {
    const names = [];
    for (const key of await caches.keys()) for (const r of await (await caches.open(key)).keys()) names.push(new URL(r.url).pathname);
    return names;
  });
  for (const want of ['/pkg/glimpse_bg.wasm', '/www/index.html', '/www/store.js']) {
    assert.ok(cached.includes(want), `${want} is not cached: ${cached.join(', ')}`);
  }
  const kept = await page.evaluate(async () => (await import('/www/glimpse.js')).storedModels());
  assert.equal(kept.length, 1, 'the default model is kept once');
  assert.match(kept[0].key, /#scenes-git@f32$/);
  // the model was downloaded once: the service worker no longer fetches it too
  const downloads = requests.filter((u) => u.endsWith('/models/scenes-git/model.safetensors'));
  assert.equal(downloads.length, 1, `model.safetensors requested ${downloads.length} times`);

  await page.context().setOffline(true);
  await page.reload();
  await waitForCaption(page);
  const offline = await page.evaluate(() => ({
    caption: document.getElementById('caption-text').textContent,
    error: document.getElementById('caption-error').textContent,
    selfcheck: document.getElementById('selfcheck-status').dataset.state,
    from: document.getElementById('model-status').dataset.from,
  }));
  console.log(`online: "${online}", offline: ${JSON.stringify(offline)}`);
  assert.equal(offline.error, '');
  assert.equal(offline.caption, online);
  assert.equal(offline.from, 'store', 'offline, the model comes from the store');
  assert.equal(offline.selfcheck, 'pass');

  const foreign = requests.filter((u) => !u.startsWith(base) && !u.startsWith('data:') && !u.startsWith('blob:'));
  assert.deepEqual(foreign, [], 'every request stays on the page\'s origin');
  assertNoProblems(problems);
});
