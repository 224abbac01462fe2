// Shared by the browser tests: the `glimpse serve` child, Chromium launches (with and without
// WebGPU on SwiftShader) and pages that record console errors, page errors and crashes.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = process.env.GLIMPSE_BIN ?? join(ROOT, 'target/debug/glimpse');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const SCREENSHOTS = join(ROOT, 'out/screenshots');
export const SEED = 1;

export const BASE_ARGS = [
  '--no-sandbox',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--enable-features=Vulkan',
];
// --enable-unsafe-webgpu is the flag that matters on Linux; SwiftShader is Chromium's CPU
// implementation of the GPU, so this runs the real WGSL kernels without a GPU.
export const WEBGPU_ARGS = [...BASE_ARGS, '--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader'];

// A wasm trap or Rust panic must never pass as an ordinary error message.
export const TRAP = /unreachable|panicked|RuntimeError|memory access out of bounds/i;

let server; // the `glimpse serve` child process
let base; // http://127.0.0.1:PORT
const browsers = [];
/** Every request the server saw, in order: "GET /path [bytes=…]" (`glimpse serve --log`). */
export const served = [];

for (const [what, path] of [['glimpse binary', BIN], ['wasm package', join(ROOT, 'pkg/glimpse_bg.wasm')], ['Chromium', CHROMIUM]]) {
  if (!existsSync(path)) throw new Error(`${what} not found at ${path}: build it first (see docs/browser.md)`);
}

/** Starts `glimpse serve` on a free port; resolves to its base URL once it prints the serving line. */
function startServerProcess() {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(BIN, ['serve', '--port', '0', '--root', ROOT, '--log'], { stdio: ['ignore', 'pipe', 'pipe'] });
    server = child;
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => reject(new Error(`glimpse serve printed no serving line in 30 s\nstdout: ${stdout}\nstderr: ${stderr}`)), 30_000);
    child.stdout.on('data', (d) => {
      stdout += d;
      const m = stdout.match(/glimpse is serving (http:\/\/127\.0\.0\.1:\d+)\//);
      if (m) {
        clearTimeout(timer);
        resolvePromise(m[1]);
      }
    });
    let partial = '';
    child.stderr.on('data', (d) => {
      stderr += d;
      if (stderr.length > 100_000) stderr = stderr.slice(-50_000);
      partial += d;
      const lines = partial.split('\n');
      partial = lines.pop();
      for (const l of lines) {
        const m = l.match(/^glimpse serve: (.*)$/);
        if (m) served.push(m[1]);
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`glimpse serve exited (code ${code}, signal ${signal})\nstderr: ${stderr}`));
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/**
 * A Chromium with a profile on disk (a temporary user-data dir), as a person's browser has: the
 * origin gets the normal storage quota (an incognito context keeps OPFS in memory, with a small
 * quota). Returns {context, page, problems}.
 */
export async function launchPersistent(args, { viewport = { width: 1280, height: 900 }, allowConsole = null } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'glimpse-profile-'));
  const context = await chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args, viewport });
  browsers.push({ close: async () => { await context.close(); rmSync(dir, { recursive: true, force: true }); } });
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = watch(page, allowConsole);
  return { context, page, problems };
}

/**
 * Records a page's console errors, uncaught errors and crashes. `allowConsole` matches console
 * errors a test expects; anything that looks like a trap or panic is never allowed.
 */
function watch(page, allowConsole) {
  const problems = [];
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    if (allowConsole && allowConsole.test(text) && !TRAP.test(text)) return;
    problems.push(`console.error: ${text}`);
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('crash', () => problems.push('the page crashed'));
  return problems;
}

export async function launch(args) {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args });
  browsers.push(browser);
  return browser;
}

/**
 * A new page that records console errors and uncaught page errors. `allowConsole` matches
 * console errors that a test expects (e.g. the browser's own note that it has no adapter);
 * anything that looks like a trap or panic is never allowed.
 */
export async function newPage(browser, { viewport = { width: 1280, height: 900 }, allowConsole = null } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = watch(page, allowConsole);
  return { page, problems, context };
}

/** The headers `glimpse serve` sends so that its pages are cross-origin isolated. */
export const ISOLATION_HEADERS = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' };

/**
 * Opens an empty document on the server's origin (a secure context), for page.evaluate. Like
 * every page `glimpse serve` sends it is cross-origin isolated (the worker then runs the threaded
 * CPU build) unless `isolated: false` (the single-thread build, as on a host without COOP/COEP).
 */
export async function blankPage(browser, { isolated = true, ...opts } = {}) {
  const p = await newPage(browser, opts);
  const url = `${base}/__glimpse_test_blank__`;
  const headers = isolated ? ISOLATION_HEADERS : {};
  await p.page.route(url, (route) => route.fulfill({ contentType: 'text/html', headers, body: '<!doctype html><title>blank</title>' }));
  await p.page.goto(url);
  return p;
}

export function assertNoProblems(problems) {
  assert.deepEqual(problems, [], `unexpected errors in the page:\n${problems.join('\n')}`);
}


/** Starts the server once; resolves to its base URL. */
export async function startServer() {
  base = await startServerProcess();
  return base;
}

/** Closes every browser and stops the server. */
export async function stopAll() {
  for (const b of browsers) await b.close().catch(() => {});
  if (server && server.exitCode === null) {
    server.removeAllListeners('exit');
    server.kill('SIGTERM');
  }
}

/** Waits until the page's caption of its sample scene is done, failed, or an error is shown. */
export function waitForCaption(page, timeout = 300_000) {
  return page.waitForFunction(
    () => ['done', 'error'].includes(document.getElementById('caption-text')?.dataset.state)
      || !document.getElementById('caption-error').hidden,
    null,
    { timeout },
  );
}
