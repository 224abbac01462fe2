// Shared helpers. The worker (worker.js) uses describeAdapter and messageOf; the app page uses
// formatBytes and messageOf; the benchmark page, which runs engines on its own main thread,
// uses loadWasm and openEngine (WebGPU with the CPU as the fallback).

let ready = null;

/**
 * Loads pkg/glimpse.js and instantiates its wasm once; resolves to the module's exports.
 * A dynamic import, so that a missing or broken pkg/ becomes an error the page can show.
 */
export function loadWasm() {
  ready ??= (async () => {
    const glimpse = await import('/pkg/glimpse.js');
    await glimpse.default();
    return glimpse;
  })();
  return ready;
}

/**
 * What the browser says about its WebGPU adapter. wgpu's AdapterInfo is empty in browsers, so
 * the page asks navigator.gpu itself. Returns {available: false, reason} when there is none.
 */
export async function describeAdapter() {
  if (!('gpu' in navigator) || !navigator.gpu) {
    return { available: false, reason: 'this browser exposes no navigator.gpu (WebGPU is off or not supported here)' };
  }
  let adapter;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (e) {
    return { available: false, reason: `navigator.gpu.requestAdapter() failed: ${messageOf(e)}` };
  }
  if (!adapter) {
    return { available: false, reason: 'navigator.gpu.requestAdapter() found no WebGPU adapter' };
  }
  const info = adapter.info ?? (adapter.requestAdapterInfo ? await adapter.requestAdapterInfo() : {});
  const fallback = Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter);
  const vendor = info.vendor || '';
  const architecture = info.architecture || '';
  const description = info.description || '';
  const device = info.device || '';
  const emulated = fallback || /swiftshader|llvmpipe|lavapipe/i.test(`${vendor} ${architecture} ${description}`);
  const label = [vendor, architecture, description || device].filter(Boolean).join(' · ') || 'unnamed adapter';
  return { available: true, vendor, architecture, description, device, fallback, emulated, label };
}

/** The message of anything thrown (wasm-bindgen's JsError arrives as an Error). */
export function messageOf(e) {
  if (e instanceof Error) return e.message;
  return String(e);
}

/**
 * Opens the WebGPU engine, or the CPU engine when WebGPU is missing or refuses.
 * Returns {engine, gpuError}: gpuError is the reason WebGPU was not used (null when it was).
 */
export async function openEngine({ preferCpu = false } = {}) {
  const { Engine } = await loadWasm();
  if (preferCpu) {
    return { engine: await Engine.create({ device: 'cpu' }), gpuError: 'the CPU was asked for (?device=cpu)' };
  }
  if (!('gpu' in navigator) || !navigator.gpu) {
    return {
      engine: await Engine.create({ device: 'cpu' }),
      gpuError: 'this browser exposes no navigator.gpu (WebGPU is off or not supported here)',
    };
  }
  try {
    return { engine: await Engine.create({ device: 'webgpu' }), gpuError: null };
  } catch (e) {
    return { engine: await Engine.create({ device: 'cpu' }), gpuError: messageOf(e) };
  }
}

/** Bytes as a short human string: 134217728 → "128 MiB", 4294967292 → "4 GiB" (rounded). */
export function formatBytes(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return String(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(1).replace(/\.0$/, '')} ${units[i]}`;
}
