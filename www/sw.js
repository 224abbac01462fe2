// The service worker: the app shell, the wasm package and the default model work offline.
//
// - install: caches the shell and pkg/, then the catalog's default model; each model file is
//   checked against the catalog's sha256 and byte count before it is cached, so a partial or
//   altered download is never stored as if complete. If storing fails (quota), the model's
//   files are removed again and the page is told why (a 'glimpse-storage-error' message).
// - fetch (same origin, GET): the shell and pkg/ go to the network first (so an update shows up
//   when online) and fall back to the cache; model files come from the cache first.
// Nothing here contacts another origin.

const VERSION = 'glimpse-v1';
const SHELL = 'shell-' + VERSION;
const MODELS = 'models-' + VERSION;
const HERE = new URL('./', self.location.href);
const SHELL_FILES = ['./', 'index.html', 'app.js', 'engine.js', 'glimpse.js', 'worker.js', 'widget.js', 'style.css',
  '../pkg/glimpse.js', '../pkg/glimpse_bg.wasm', '../models/catalog.json'].map((p) => new URL(p, HERE).href);

async function sha256(buf) {
  const d = await crypto.subtle.digest('SHA-256', buf);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Downloads the files of a catalog entry; each is cached only once it is whole and verified. If
 * any file cannot be stored (a full quota), the files already stored are removed again, so the
 * model is either stored whole or not at all.
 */
async function cacheModel(catalogUrl, entry) {
  const cache = await caches.open(MODELS);
  const stored = [];
  try {
    for (const f of entry.files) {
      const url = new URL(f.url, catalogUrl).href;
      if (await cache.match(url)) continue;
      const res = await fetch(url);
      if (!res.ok) throw new Error(`${f.name}: HTTP ${res.status}`);
      const buf = await res.arrayBuffer();
      if (f.bytes !== undefined && buf.byteLength !== f.bytes) throw new Error(`${f.name}: ${buf.byteLength} bytes, the catalog says ${f.bytes}`);
      if (f.sha256 && (await sha256(buf)) !== f.sha256) throw new Error(`${f.name}: sha256 differs from the catalog`);
      await cache.put(url, new Response(buf, { headers: res.headers }));
      stored.push(url);
    }
  } catch (e) {
    for (const url of stored) await cache.delete(url).catch(() => {});
    throw e;
  }
}

let storageError = null; // what went wrong storing the default model, for the page

function describe(e) {
  const quota = e?.name === 'QuotaExceededError' || /quota/i.test(String(e?.message ?? e));
  return quota ? 'the browser\'s storage quota for this site is full, so the model could not be stored for offline use'
    : `the model could not be stored for offline use: ${e?.message ?? e}`;
}

async function tell(message) {
  for (const c of await self.clients.matchAll({ includeUncontrolled: true, type: 'window' })) c.postMessage(message);
}

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const shell = await caches.open(SHELL);
    try {
      await shell.addAll(SHELL_FILES);
    } catch (e) {
      // without the shell nothing works offline: the install fails, and the page is told why
      await caches.delete(SHELL).catch(() => {});
      await tell({ type: 'glimpse-storage-error', error: describe(e).replace('the model', 'the app') });
      throw e;
    }
    const catalogUrl = new URL('../models/catalog.json', HERE).href;
    const catalog = await (await shell.match(catalogUrl)).json();
    const entry = catalog.models.find((m) => m.id === catalog.default);
    // the shell works without the model in the cache (it is then fetched when online); a failure
    // to store it is reported to the page instead of failing the install
    if (entry) {
      try {
        await cacheModel(catalogUrl, entry);
      } catch (e) {
        storageError = describe(e);
        await tell({ type: 'glimpse-storage-error', error: storageError });
      }
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
  if (url.pathname.startsWith('/models/') && !url.pathname.endsWith('catalog.json')) {
    event.respondWith((async () => (await caches.match(req, { ignoreSearch: true })) ?? fetch(req))());
    return;
  }
  event.respondWith((async () => {
    try {
      const res = await fetch(req);
      if (res.ok && SHELL_FILES.includes(url.origin + url.pathname)) {
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
