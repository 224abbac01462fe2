// The service worker: the app shell, the wasm package and the default model work offline.
//
// - install: caches the shell and pkg/, then the catalog's default model; each model file is
//   checked against the catalog's sha256 and byte count before it is cached, so a partial or
//   altered download is never stored as if complete.
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

/** Downloads the files of a catalog entry; each is cached only once it is whole and verified. */
async function cacheModel(catalogUrl, entry) {
  const cache = await caches.open(MODELS);
  for (const f of entry.files) {
    const url = new URL(f.url, catalogUrl).href;
    if (await cache.match(url)) continue;
    const res = await fetch(url);
    if (!res.ok) throw new Error(`${f.name}: HTTP ${res.status}`);
    const buf = await res.arrayBuffer();
    if (f.bytes !== undefined && buf.byteLength !== f.bytes) throw new Error(`${f.name}: ${buf.byteLength} bytes, the catalog says ${f.bytes}`);
    if (f.sha256 && (await sha256(buf)) !== f.sha256) throw new Error(`${f.name}: sha256 differs from the catalog`);
    await cache.put(url, new Response(buf, { headers: res.headers }));
  }
}

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const shell = await caches.open(SHELL);
    await shell.addAll(SHELL_FILES);
    const catalogUrl = new URL('../models/catalog.json', HERE).href;
    const catalog = await (await shell.match(catalogUrl)).json();
    const entry = catalog.models.find((m) => m.id === catalog.default);
    if (entry) await cacheModel(catalogUrl, entry);
    await self.skipWaiting();
  })());
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
