// The service worker: the app shell and the wasm package work offline.
//
// - install: caches the shell and pkg/. If they cannot be stored (a full quota), the install
//   fails and the page is told why (a 'glimpse-storage-error' message).
// - fetch (same origin, GET): the shell and pkg/ go to the network first (so an update shows up
//   when online) and fall back to the cache.
// Models are not this worker's: the page's glimpse worker keeps each model it loads as one
// GGUF file in the Origin Private File System (www/store.js) and reads it from there, online or
// offline. So the default model is downloaded once, by the one component that uses it.
// Nothing here contacts another origin.

const VERSION = 'glimpse-v3';
const SHELL = 'shell-' + VERSION;
const HERE = new URL('./', self.location.href);
const SHELL_FILES = ['./', 'index.html', 'app.js', 'engine.js', 'glimpse.js', 'worker.js', 'thread.js', 'store.js', 'widget.js',
  'style.css', '../pkg/glimpse.js', '../pkg/glimpse_bg.wasm', '../models/catalog.json'].map((p) => new URL(p, HERE).href);
// the threaded build, where one was built: kept when present, its absence is no install failure
const OPTIONAL_FILES = ['../pkg/threads/glimpse.js', '../pkg/threads/glimpse_bg.wasm'].map((p) => new URL(p, HERE).href);
const CACHED = new Set([...SHELL_FILES, ...OPTIONAL_FILES]);

let storageError = null; // what went wrong storing the shell, for the page

function describe(e) {
  const quota = e?.name === 'QuotaExceededError' || /quota/i.test(String(e?.message ?? e));
  return quota ? 'the browser\'s storage quota for this site is full, so the app could not be stored for offline use'
    : `the app could not be stored for offline use: ${e?.message ?? e}`;
}

async function tell(message) {
  for (const c of await self.clients.matchAll({ includeUncontrolled: true, type: 'window' })) c.postMessage(message);
}

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const shell = await caches.open(SHELL);
    try {
      await shell.addAll(SHELL_FILES);
      await Promise.all(OPTIONAL_FILES.map((f) => shell.add(f).catch(() => {})));
    } catch (e) {
      // without the shell nothing works offline: the install fails, and the page is told why
      await caches.delete(SHELL).catch(() => {});
      storageError = describe(e);
      await tell({ type: 'glimpse-storage-error', error: storageError });
      throw e;
    }
    await self.skipWaiting();
  })());
});

self.addEventListener('message', (event) => {
  if (event.data?.type === 'glimpse-status' && storageError) {
    event.source?.postMessage({ type: 'glimpse-storage-error', error: storageError });
  }
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) if (!key.endsWith(VERSION)) await caches.delete(key);
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== 'GET' || url.origin !== self.location.origin) return;
  // ranges (a checkpoint's directory) and model files pass straight through
  if (req.headers.has('range') || !CACHED.has(url.origin + url.pathname)) return;
  event.respondWith((async () => {
    try {
      const res = await fetch(req);
      if (res.ok) {
        const copy = res.clone();
        caches.open(SHELL).then((c) => c.put(url.origin + url.pathname, copy)).catch(() => {});
      }
      return res;
    } catch (e) {
      const hit = await caches.match(url.origin + url.pathname);
      if (hit) return hit;
      throw e;
    }
  })());
});
