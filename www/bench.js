// Kernel benchmark page: `benchKernels` on the WebGPU engine (when there is one) and on the CPU
// engine, shown as the CLI's table (with CPU ratios) and as JSON.
// `?maxN=3072` keeps shapes with N ≤ 3072; `?samples=3` is the number of samples per row.

import { describeAdapter, loadWasm, messageOf } from './engine.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ALL_SHAPES = 0xffffffff; // u32::MAX: no limit on N
const maxN = params.has('maxN') ? Number(params.get('maxN')) : ALL_SHAPES;
const samples = params.has('samples') ? Number(params.get('samples')) : 3;

function progress(text) {
  $('bench-status').textContent = text;
}

async function main() {
  if (!Number.isInteger(maxN) || maxN <= 0) throw new Error(`?maxN must be a positive integer, got ${params.get('maxN')}`);
  if (!Number.isInteger(samples) || samples <= 0) throw new Error(`?samples must be a positive integer, got ${params.get('samples')}`);

  const glimpse = await loadWasm();
  const { Engine, formatBenchTable } = glimpse;
  const adapter = await describeAdapter();

  const engines = [];
  let gpuError = null;
  if (adapter.available) {
    try {
      engines.push(await Engine.create({ device: 'webgpu' }));
    } catch (e) {
      gpuError = messageOf(e);
    }
  } else {
    gpuError = adapter.reason;
  }
  engines.push(await Engine.create({ device: 'cpu' }));

  const backend = $('backend');
  if (gpuError) {
    backend.textContent = `WebGPU is not available, so only the CPU (wasm) is timed. Reason: ${gpuError}`;
    backend.classList.add('warn');
  } else {
    backend.textContent = `WebGPU: ${adapter.label}, and the CPU (candle in wasm).`;
  }
  if (adapter.emulated && !gpuError) {
    const note = $('bench-note');
    note.textContent = 'This adapter is a software one (e.g. SwiftShader): the GPU is emulated on the CPU, so its timings are not GPU speed. Compare rows side by side only.';
    note.hidden = false;
  }

  const rows = [];
  for (const [i, engine] of engines.entries()) {
    progress(`timing ${engine.device} (${i + 1} of ${engines.length})… the page may not respond while the CPU runs`);
    // let the progress text paint before the CPU engine blocks the main thread
    await new Promise((r) => setTimeout(r, 30));
    const t0 = performance.now();
    const got = await engine.benchKernels(samples, maxN);
    rows.push(...got);
    console.info(`glimpse bench: ${engine.device} took ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    $('bench-table').textContent = formatBenchTable(rows);
  }
  $('bench-json').textContent = JSON.stringify(rows, null, 2);
  $('bench-table').dataset.state = 'done';
  progress(`done: ${rows.length} rows`);
}

main().catch((e) => {
  console.error(e);
  $('bench-table').dataset.state = 'error';
  const el = $('bench-error');
  el.textContent = messageOf(e);
  el.hidden = false;
  progress('failed');
});
