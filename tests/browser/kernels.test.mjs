// Browser tests: the wasm engine in headless Chromium on SwiftShader's WebGPU, compared with the
// native CPU path (candle), plus the page, clear errors, the CPU fallback and the benchmark page.
// Needs target/debug/glimpse (or $GLIMPSE_BIN), pkg/ built by wasm-bindgen and /usr/bin/chromium
// (or $CHROMIUM). Run with `npm run test:browser`. See docs/browser.md.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { ROOT, BIN, SCREENSHOTS, SEED, BASE_ARGS, WEBGPU_ARGS, TRAP, launch, newPage, blankPage, assertNoProblems, startServer, stopAll } from './harness.mjs';

let base; // http://127.0.0.1:PORT
let reference; // {case: [values]} from `glimpse cases --device cpu`
let tmp;

/** Waits until the page's self-check is no longer running; returns its state and the visible text. */
async function waitForSelfcheck(page, timeout = 120_000) {
  const states = ['pass', 'fail', 'error', 'skipped'];
  await page.waitForFunction(
    (s) => s.includes(document.getElementById('selfcheck-status')?.dataset.state),
    states,
    { timeout },
  );
  return page.evaluate(() => ({
    state: document.getElementById('selfcheck-status').dataset.state,
    status: document.getElementById('selfcheck-status').textContent,
    backend: document.getElementById('backend').textContent,
    adapter: document.getElementById('adapter').innerText.replace(/\n+/g, ' | '),
    table: document.getElementById('selfcheck-table').innerText.replace(/\t/g, '  '),
    error: document.getElementById('selfcheck-error').textContent,
  }));
}

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'glimpse-browser-'));
  const refPath = join(tmp, 'cases-cpu.json');
  await promisify(execFile)(BIN, ['cases', '--device', 'cpu', '--seed', String(SEED), '--json', refPath], {
    timeout: 300_000,
  });
  reference = JSON.parse(readFileSync(refPath, 'utf8'));
  base = await startServer();
  mkdirSync(SCREENSHOTS, { recursive: true });
});

after(async () => {
  await stopAll();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('WebGPU kernels match the native CPU path', { timeout: 300_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await blankPage(browser);
  const got = await page.evaluate(async (seed) => {
    const glimpse = await import('/pkg/glimpse.js');
    await glimpse.default();
    const engine = await glimpse.Engine.create({ device: 'webgpu' });
    const cases = {};
    for (const name of glimpse.caseNames()) {
      const values = await engine.runCase(name, seed);
      cases[name] = { values: Array.from(values), tolerance: glimpse.caseTolerance(name) };
    }
    return { device: engine.device, info: engine.info(), names: glimpse.caseNames(), cases };
  }, SEED);

  assert.equal(got.device, 'webgpu');
  for (const needed of ['matmul', 'linear_q8_0_gemv', 'softmax', 'attention']) {
    assert.ok(got.names.includes(needed), `caseNames() lacks ${needed}: ${got.names.join(', ')}`);
  }

  const rows = [];
  const failures = [];
  for (const name of got.names) {
    const ref = reference[name];
    const { values, tolerance } = got.cases[name];
    if (!Array.isArray(ref)) {
      failures.push(`${name}: the native reference has no such case (it has ${Object.keys(reference).join(', ')})`);
      continue;
    }
    if (ref.length !== values.length) {
      failures.push(`${name}: ${values.length} values in the browser, ${ref.length} natively`);
      continue;
    }
    let maxDiff = 0;
    let at = -1;
    for (let i = 0; i < values.length; i++) {
      // JSON writes NaN/inf as null; a non-finite value on either side is a failure
      const d = Number.isFinite(values[i]) && typeof ref[i] === 'number' && Number.isFinite(ref[i]) ? Math.abs(values[i] - ref[i]) : Infinity;
      if (d > maxDiff || at < 0) {
        maxDiff = d;
        at = i;
      }
    }
    const ok = maxDiff <= tolerance;
    rows.push({ case: name, values: values.length, 'max |Δ|': maxDiff.toExponential(2), tolerance: tolerance.toExponential(2), ok });
    if (!ok) failures.push(`${name}: max |Δ| ${maxDiff} > tolerance ${tolerance} at index ${at} (browser ${values[at]}, native ${ref[at]})`);
  }
  console.log(`WebGPU (${got.info?.backend ?? '?'}) vs native CPU, seed ${SEED}:`);
  console.table(rows);
  assert.deepEqual(failures, [], failures.join('\n'));
  assertNoProblems(problems);
});

test("the page's self-check passes on WebGPU", { timeout: 300_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await newPage(browser, { viewport: { width: 1280, height: 900 } });
  await page.goto(`${base}/`); // the server redirects / to /www/
  assert.match(page.url(), /\/www\/$/);
  const r = await waitForSelfcheck(page);
  console.log(`backend: ${r.backend}\nadapter: ${r.adapter}\n${r.table}`);
  assert.equal(r.state, 'pass', `self-check ended as ${r.state}: ${r.error}\n${r.table}`);
  assert.equal(r.status.trim(), 'pass');
  assert.match(`${r.backend} ${r.adapter}`, /swiftshader/i, 'the page should name the SwiftShader adapter');
  await page.screenshot({ path: join(SCREENSHOTS, 'index-desktop.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(SCREENSHOTS, 'index-phone.png'), fullPage: true });
  const overflow = await page.evaluate(() => ({
    page: document.documentElement.scrollWidth - window.innerWidth,
    table: document.querySelector('.table-wrap').scrollWidth - document.querySelector('.table-wrap').clientWidth,
  }));
  assert.ok(overflow.page <= 0, `the page is ${overflow.page}px wider than a 390px phone screen`);
  assert.ok(overflow.table <= 0, `the self-check table needs ${overflow.table}px of sideways scrolling on a 390px phone`);
  assertNoProblems(problems);
});

test('a passing self-test is kept per adapter and build, and ?selfcheck=always reruns it', { timeout: 300_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await blankPage(browser);
  // each call is a fresh page load (a new worker) in the same browser profile
  const init = async (selfcheck) => {
    await page.reload();
    return page.evaluate(async (selfcheck) => {
      const glimpse = await import('/www/glimpse.js');
      const b = await glimpse.worker().init('auto', { selfcheck });
      const s = b.selfcheck;
      return { device: b.device, pass: s?.pass, cached: s?.cached, cases: s?.cases, ms: s?.ms, rows: s?.results?.length };
    }, selfcheck);
  };
  const first = await init('cached');
  const second = await init('cached');
  const forced = await init('always');
  console.log(JSON.stringify({ first, second, forced }));
  assert.equal(first.device, 'webgpu');
  assert.equal(first.pass, true);
  assert.equal(first.cached, false, 'the first load on this adapter runs the self-test');
  assert.equal(second.device, 'webgpu');
  assert.equal(second.pass, true);
  assert.equal(second.cached, true, 'the next load takes the kept result');
  assert.equal(second.rows, first.rows, 'the kept result has every case');
  assert.equal(forced.cached, false, "selfcheck: 'always' runs it again");
  assert.equal(forced.pass, true);
  assertNoProblems(problems);
});

test('errors are clear', { timeout: 300_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await blankPage(browser);
  const r = await page.evaluate(async () => {
    const glimpse = await import('/pkg/glimpse.js');
    await glimpse.default();
    const caught = (f) => {
      try {
        f();
        return null;
      } catch (e) {
        return { isError: e instanceof Error, message: e instanceof Error ? e.message : String(e) };
      }
    };
    const engine = await glimpse.Engine.create({ device: 'webgpu' });
    const matmul = caught(() =>
      engine.tensor([1, 2, 3, 4, 5, 6], [2, 3]).matmul(engine.tensor([1, 2, 3, 4, 5, 6, 7, 8], [4, 2])),
    );
    // act like a phone: 1 MiB per storage binding
    const small = await glimpse.Engine.create({ device: 'webgpu', maxStorageBufferBindingSize: 1 << 20 });
    const n = (1 << 18) + 1; // one f32 more than 1 MiB
    const big = caught(() => small.weight('big', new Float32Array(n), [n, 1], 'f32'));
    // the engine still works after the error
    const softmax = Array.from(await small.tensor([1, 2, 3, 0, 0, 0], [2, 3]).softmax().toArray());
    return { matmul, big, softmax, info: small.info() };
  });

  assert.ok(r.matmul, 'a [2,3]·[4,2] matmul should throw');
  assert.ok(r.matmul.isError, `it should throw an Error, not ${r.matmul.message}`);
  assert.doesNotMatch(r.matmul.message, TRAP);
  assert.match(r.matmul.message, /inner dimensions/);
  console.log(`mismatched matmul: ${r.matmul.message}`);

  assert.ok(r.big, `a ${(1 << 18) + 1}-float weight should not fit a 1 MiB binding (engine info: ${JSON.stringify(r.info)})`);
  assert.ok(r.big.isError, `it should throw an Error, not ${r.big.message}`);
  assert.doesNotMatch(r.big.message, TRAP);
  assert.match(r.big.message, /per storage binding/);
  console.log(`too big for the binding: ${r.big.message}`);

  const e = [Math.E ** 1, Math.E ** 2, Math.E ** 3];
  const sum = e[0] + e[1] + e[2];
  const expected = [e[0] / sum, e[1] / sum, e[2] / sum, 1 / 3, 1 / 3, 1 / 3];
  assert.equal(r.softmax.length, 6);
  r.softmax.forEach((v, i) => {
    // f32 exp and division: a few ulps of values ≤ 1
    assert.ok(Math.abs(v - expected[i]) <= 1e-6, `softmax after the error: [${r.softmax}] vs [${expected}]`);
  });
  assertNoProblems(problems);
});

test('without WebGPU', { timeout: 600_000 }, async () => {
  const browser = await launch(BASE_ARGS);
  // Chromium may report its missing adapter on the console; that is the point of this test
  const allowConsole = /adapter|webgpu|gpu/i;
  {
    const { page, problems } = await blankPage(browser, { allowConsole });
    const r = await page.evaluate(async () => {
      const glimpse = await import('/pkg/glimpse.js');
      await glimpse.default();
      const hasGpu = 'gpu' in navigator && Boolean(navigator.gpu);
      try {
        const engine = await glimpse.Engine.create({ device: 'webgpu' });
        return { hasGpu, created: engine.device };
      } catch (e) {
        return { hasGpu, isError: e instanceof Error, message: e instanceof Error ? e.message : String(e) };
      }
    });
    console.log(`navigator.gpu present: ${r.hasGpu}; Engine.create({device:'webgpu'}) → ${r.created ?? `rejected: ${r.message}`}`);
    assert.equal(r.created, undefined, 'Engine.create should reject without WebGPU');
    assert.doesNotMatch(r.message, TRAP, `the wasm trapped or panicked instead of rejecting: ${r.message}`);
    assert.ok(r.isError, `it should reject with an Error, not ${r.message}`);
    assert.match(r.message, /adapter|webgpu/i);
    assertNoProblems(problems);
  }
  {
    const { page, problems } = await newPage(browser, { allowConsole });
    await page.goto(`${base}/www/`);
    const r = await waitForSelfcheck(page, 300_000);
    console.log(`backend: ${r.backend}\nself-test: ${r.status}`);
    // the worker found no adapter, so there is no GPU to test: it runs on the CPU and says why
    assert.equal(r.state, 'skipped', `the self-test ended as ${r.state}: ${r.error}`);
    assert.match(r.status, /no WebGPU/);
    assert.match(r.backend, /CPU/);
    assert.match(r.backend, /reason/i);
    assert.match(r.backend, /adapter|webgpu|navigator\.gpu/i);
    await page.screenshot({ path: join(SCREENSHOTS, 'index-cpu-fallback.png'), fullPage: true });
    assertNoProblems(problems);
  }
});

test('without navigator.gpu (browsers with no WebGPU at all)', { timeout: 300_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const hideGpu = () => Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined, configurable: true });
  {
    const { page, problems } = await blankPage(browser);
    await page.addInitScript(hideGpu);
    await page.reload();
    const r = await page.evaluate(async () => {
      const glimpse = await import('/pkg/glimpse.js');
      await glimpse.default();
      try {
        const engine = await glimpse.Engine.create({ device: 'webgpu' });
        return { hasGpu: Boolean(navigator.gpu), created: engine.device };
      } catch (e) {
        return { hasGpu: Boolean(navigator.gpu), isError: e instanceof Error, message: e instanceof Error ? e.message : String(e) };
      }
    });
    assert.equal(r.hasGpu, false, 'navigator.gpu should be hidden');
    assert.equal(r.created, undefined, 'Engine.create should reject without navigator.gpu');
    assert.doesNotMatch(r.message, TRAP, `the wasm trapped or panicked instead of rejecting: ${r.message}`);
    assert.ok(r.isError);
    assert.match(r.message, /adapter|webgpu/i);
    assertNoProblems(problems);
  }
  {
    const { page, problems } = await newPage(browser);
    // the page's computations run in glimpse's worker, where init scripts do not reach: start
    // every worker through a module that hides its navigator.gpu first (and holds the messages
    // that arrive before the real worker module has set its handler)
    await page.addInitScript(() => {
      const Original = window.Worker;
      window.Worker = class extends Original {
        constructor(url, opts) {
          const src = `Object.defineProperty(WorkerNavigator.prototype, 'gpu', { get: () => undefined, configurable: true });\nconst early = []; self.onmessage = (e) => early.push(e);\nawait import(${JSON.stringify(new URL(url, location.href).href)});\nfor (const e of early) self.onmessage(e);`;
          super(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })), opts);
        }
      };
    });
    await page.addInitScript(hideGpu);
    await page.goto(`${base}/www/`);
    const r = await waitForSelfcheck(page, 300_000);
    assert.equal(r.state, 'skipped', `the self-test ended as ${r.state}: ${r.error}`);
    assert.match(r.backend, /CPU/);
    assert.match(r.backend, /navigator\.gpu/);
    assertNoProblems(problems);
  }
});

test('benchmark page runs', { timeout: 600_000 }, async () => {
  const browser = await launch(WEBGPU_ARGS);
  const { page, problems } = await newPage(browser);
  await page.goto(`${base}/www/bench.html?maxN=768&samples=1`);
  await page.waitForSelector('#bench-table[data-state="done"], #bench-table[data-state="error"]', { timeout: 540_000 });
  const r = await page.evaluate(() => ({
    state: document.getElementById('bench-table').dataset.state,
    table: document.getElementById('bench-table').textContent,
    json: document.getElementById('bench-json').textContent,
    error: document.getElementById('bench-error').textContent,
    backend: document.getElementById('backend').textContent,
  }));
  console.log(`${r.backend}\n${r.table}`);
  await page.screenshot({ path: join(SCREENSHOTS, 'bench-desktop.png'), fullPage: true });
  assert.equal(r.state, 'done', `benchmark failed: ${r.error}`);
  const rows = JSON.parse(r.json);
  const devices = new Set(rows.map((row) => row.device));
  assert.ok(devices.has('webgpu') && devices.has('cpu'), `rows from both engines expected, got ${[...devices]}`);
  assert.ok(rows.every((row) => row.n <= 768 && row.median_ms > 0), 'every row within maxN and timed');
  assertNoProblems(problems);
});
