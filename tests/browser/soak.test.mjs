// A short browser soak (bench/soak.mjs runs the long one, 300 requests): captions and questions
// in a row through the worker, each on a new image (the worker keeps at most 8 prepared images),
// on the CPU path. After the warm-up the worker's wasm memory does not grow at all and its JS heap
// (after a full collection) stays within a small margin.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { startServer, stopAll } from './harness.mjs';
import { soak, table } from '../../bench/soak.mjs';

before(startServer);
after(stopAll);

// WebGPU (SwiftShader, ~10 s a request here) reaches its plateau only after tens of requests: CI
// runs the CPU path; tests/soak.rs checks the GPU buffers natively on lavapipe, and
// `node bench/soak.mjs --devices webgpu` runs the long WebGPU soak (docs/hardening.md has a run).
for (const [device, requests, every] of [['cpu', 60, 10]]) {
  test(`soak on ${device}: memory flat after warm-up`, { timeout: 600_000 }, async () => {
    const { backend, samples, problems } = await soak({ device, requests, every });
    console.log(table(`${device} (${backend})`, samples));
    assert.deepEqual(problems, []);
    assert.equal(backend, device);
    const warm = samples[2]; // after 2 × `every` requests: every size class and image slot exists
    const last = samples[samples.length - 1];
    assert.equal(last.request, requests);
    // wasm memory only grows, and only when the allocator runs out: any growth after the
    // warm-up would be a leak (one leaked 64×64 image tensor per request is 48 KiB)
    assert.equal(last.wasmBytes, warm.wasmBytes, 'wasm memory grew after warm-up');
    assert.ok(samples.every((s) => s.preparedImages <= 8), 'the prepared-image LRU keeps at most 8');
    if (device === 'webgpu') assert.equal(last.gpu.heldBytes, warm.gpu.heldBytes, 'GPU buffers grew after warm-up');
    assert.ok(samples.every((s) => s.jsHeapBytes > 0), 'the worker heap was sampled');
    {
      // after a full collection: V8's heap moves by a few hundred KiB between samples (compiled code, IC
      // feedback); a leak of one message or image per request (≥ 5 KiB) would add more than
      // 1 MiB over these requests
      const growth = (last.jsHeapBytes - warm.jsHeapBytes) / (1 << 20);
      assert.ok(growth < 1, `the worker's JS heap grew ${growth.toFixed(2)} MiB after warm-up`);
    }
  });
}
