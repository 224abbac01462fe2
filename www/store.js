// glimpse's model store and downloads, used by the worker (worker.js); the page reaches it through
// the worker (glimpse.js: storedModels, forget).
//
// Store: a model loaded from a catalog entry or a URL is kept as one GGUF file in the Origin
// Private File System, written while the model loads (the weights as the model holds them:
// quantized once, on this device), plus a manifest. The next load of the same source and dtype
// reads that file, with no download and no conversion; it works offline. Files are written to a
// `.partial` name and renamed only when the model loaded and every tensor was written, so a
// stored file is always whole. A full quota (or any storage error) never fails a load: the file
// is removed and the load returns a warning.
//
// Downloads: small files are fetched whole and checked against the catalog's size and sha256;
// weights are streamed (the byte count and sha256 are checked by the wasm loader as they pass).
// A size from Content-Length is used only when the response is not content-encoded (gzip'd
// JSON says the compressed length). `fetchRange` reads part of a file (a pytorch_model.bin's
// zip directory, at its end).

const DIR = 'glimpse-models';
const MANIFEST = 'manifest.json';

export async function sha256Hex(bytes) {
  const d = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

const text = (s) => new TextEncoder().encode(s);

/** Whether this browser can keep models (OPFS with synchronous access handles, in a worker). */
export async function available() {
  try {
    if (!navigator.storage?.getDirectory) return false;
    const root = await navigator.storage.getDirectory();
    const dir = await root.getDirectoryHandle(DIR, { create: true });
    return typeof (await dir.getFileHandle(MANIFEST, { create: true })).createSyncAccessHandle === 'function';
  } catch {
    return false;
  }
}

async function dir() {
  const root = await navigator.storage.getDirectory();
  return root.getDirectoryHandle(DIR, { create: true });
}

async function readManifest(d) {
  try {
    const f = await (await d.getFileHandle(MANIFEST)).getFile();
    const m = JSON.parse(await f.text());
    return m && typeof m === 'object' && m.entries ? m : { entries: {} };
  } catch {
    return { entries: {} };
  }
}

async function writeManifest(d, m) {
  const h = await (await d.getFileHandle(MANIFEST, { create: true })).createSyncAccessHandle();
  try {
    const b = text(JSON.stringify(m));
    h.truncate(0);
    h.write(b, { at: 0 });
    h.flush();
  } finally {
    h.close();
  }
}

/** The stored models: [{key, name, dtype, bytes, downloadedBytes, storedAt}]. */
export async function list() {
  if (!(await available())) return [];
  const m = await readManifest(await dir());
  return Object.entries(m.entries).map(([key, e]) => ({ key, ...e }));
}

/**
 * A stored model's GGUF file, if `key` was stored with this `fingerprint` (undefined: any, when
 * the source cannot be checked, e.g. offline).
 */
export async function open(key, fingerprint) {
  if (!(await available())) return null;
  const d = await dir();
  const e = (await readManifest(d)).entries[key];
  if (!e || (fingerprint !== undefined && e.fingerprint !== fingerprint)) return null;
  try {
    const file = await (await d.getFileHandle(e.file)).getFile();
    if (file.size !== e.bytes) return null; // never use a file that is not what was written
    return { file, entry: e };
  } catch {
    return null;
  }
}

/** Removes a stored model; returns whether there was one. */
export async function forget(key) {
  if (!(await available())) return false;
  const d = await dir();
  const m = await readManifest(d);
  const e = m.entries[key];
  if (!e) return false;
  delete m.entries[key];
  await writeManifest(d, m);
  await d.removeEntry(e.file).catch(() => {});
  return true;
}

/**
 * A GGUF file being written while a model loads: `write(at, bytes)` as the loader produces them,
 * then `commit(header, length, entry)` or `abort()`.
 */
export class Writer {
  static async create(key) {
    const d = await dir();
    const file = `${(await sha256Hex(text(key))).slice(0, 32)}.gguf`;
    const fh = await d.getFileHandle(`${file}.partial`, { create: true });
    const handle = await fh.createSyncAccessHandle();
    handle.truncate(0);
    return new Writer(d, key, file, fh, handle);
  }

  constructor(d, key, file, fh, handle) {
    Object.assign(this, { d, key, file, fh, handle, written: 0 });
  }

  write(at, bytes) {
    const n = this.handle.write(bytes, { at });
    if (n !== bytes.length) throw new DOMException(`only ${n} of ${bytes.length} bytes were written`, 'QuotaExceededError');
    this.written += n;
  }

  async commit(header, length, entry) {
    this.write(0, header);
    this.handle.truncate(length);
    this.handle.flush();
    this.handle.close();
    this.handle = null;
    // replace an earlier file of the same key whole
    await this.d.removeEntry(this.file).catch(() => {});
    await this.fh.move(this.file);
    const m = await readManifest(this.d);
    m.entries[this.key] = { ...entry, file: this.file, bytes: length, storedAt: new Date().toISOString() };
    await writeManifest(this.d, m);
  }

  async abort() {
    try {
      this.handle?.close();
    } catch {
      /* already closed */
    }
    this.handle = null;
    await this.d.removeEntry(`${this.file}.partial`).catch(() => {});
  }
}

/** An Error with a protocol `code` (see worker.js). */
const coded = (code, message) => Object.assign(new Error(message), { code });
const httpError = (res, message) => coded(res.status === 404 ? 'not-found' : 'http', message);

/** Why storing failed, for the person: a full quota is named as such. */
export function describeStorageError(e) {
  const msg = String(e?.message ?? e);
  const quota = e?.name === 'QuotaExceededError' || /quota/i.test(msg);
  return quota ? 'the browser\'s storage quota for this site is full' : msg;
}

/** The byte count a response says, unless it is content-encoded (then Content-Length is not the file's). */
export function declaredSize(res) {
  const enc = res.headers.get('content-encoding');
  if (enc && enc !== 'identity') return null;
  const n = Number(res.headers.get('content-length'));
  return Number.isFinite(n) && n > 0 ? n : null;
}

/** Why `bytes` are not the file `expect` ({bytes, sha256}) describes, or null. */
export async function mismatch(bytes, expect = {}) {
  if (expect.bytes !== undefined && bytes.length !== expect.bytes) return `${bytes.length} bytes arrived, the catalog says ${expect.bytes}`;
  if (expect.sha256 && (await sha256Hex(bytes)) !== expect.sha256) return 'its sha256 differs from the catalog\'s';
  return null;
}

/**
 * A small file, whole: `null` on 404 when `optional` (only a 404 means absent: any other status
 * or a network error is an error that says so).
 */
export async function fetchBytes(url, file, { expect = {}, optional = false, onProgress } = {}) {
  let res;
  try {
    res = await fetch(url);
  } catch (e) {
    throw coded('network', `${file}: the request to ${url} failed (${e?.message ?? e})`);
  }
  if (res.status === 404 && optional) return null;
  if (!res.ok) throw httpError(res, `${file}: HTTP ${res.status} from ${url}`);
  const b = new Uint8Array(await res.arrayBuffer());
  const why = await mismatch(b, expect);
  if (why) throw new Error(`${file}: ${why}; it was not used`);
  onProgress?.({ file, loaded: b.length, total: b.length });
  return b;
}

/** A streamed response body for a weight file, with its size when known. */
export async function openStream(url, file, expect = {}) {
  let res;
  try {
    res = await fetch(url);
  } catch (e) {
    throw coded('network', `${file}: the request to ${url} failed (${e?.message ?? e})`);
  }
  if (!res.ok) throw httpError(res, `${file}: HTTP ${res.status} from ${url}`);
  const size = expect.bytes ?? declaredSize(res);
  return { reader: res.body.getReader(), size };
}

/** Whether `url` exists (HEAD; a server without HEAD is asked with GET, its body dropped). */
export async function exists(url) {
  let res = await fetch(url, { method: 'HEAD' }).catch(() => null);
  if (!res || res.status === 405 || res.status === 501) {
    res = await fetch(url).catch(() => null);
    res?.body?.cancel().catch(() => {});
  }
  if (!res) throw coded('network', `the request to ${url} failed`);
  if (res.status === 404) return false;
  if (!res.ok) throw httpError(res, `HTTP ${res.status} from ${url}`);
  return true;
}

/**
 * Bytes `[start, end)` of `url` (end = null: to the end; start < 0: the last -start bytes), and
 * the file's size from Content-Range. A server that ignores Range is an error that says so.
 */
export async function fetchRange(url, file, start, end = null) {
  const spec = start < 0 ? `bytes=${start}` : `bytes=${start}-${end === null ? '' : end - 1}`;
  let res;
  try {
    res = await fetch(url, { headers: { Range: spec } });
  } catch (e) {
    throw coded('network', `${file}: the request to ${url} failed (${e?.message ?? e})`);
  }
  if (res.status !== 206) {
    res.body?.cancel().catch(() => {});
    if (!res.ok) throw httpError(res, `${file}: HTTP ${res.status} from ${url}`);
    throw new Error(`${file}: the server ignores Range requests, which reading a pytorch_model.bin needs (its directory is at the end)`);
  }
  const m = /bytes (\d+)-(\d+)\/(\d+)/.exec(res.headers.get('content-range') ?? '');
  const bytes = new Uint8Array(await res.arrayBuffer());
  return { bytes, offset: m ? Number(m[1]) : 0, size: m ? Number(m[3]) : null };
}
