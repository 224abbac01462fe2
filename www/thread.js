// One thread of the CPU path's pool, in the threaded build only (pkg/threads/; src/web/threads.rs
// says how the pool starts). worker.js creates these: each instantiates the same wasm module on
// the same shared memory, says it is ready, and then runs one of rayon's threads until the glimpse
// worker that created it is terminated.
//
// A trap here (a Rust panic, running out of memory) would leave the glimpse worker waiting for
// this thread forever, with no event loop to notice: it is reported on the BroadcastChannel the
// page named, and the page replaces the glimpse worker (which ends this one too).

// the panic hook (src/web/mod.rs) hands a Rust panic's message here before the trap
let lastPanic = null;
self.glimpsePanic = (message) => { lastPanic = message; };

self.onmessage = async ({ data: { pkg, module, memory, trapChannel } }) => {
  let m;
  try {
    m = await import(pkg);
    await m.default({ module_or_path: module, memory });
  } catch (e) {
    self.postMessage({ error: `a thread of the CPU pool could not start: ${e?.message ?? e}` });
    return;
  }
  self.postMessage({ ready: true });
  try {
    m.threadPoolWorker();
  } catch (e) {
    if (trapChannel) {
      const ch = new BroadcastChannel(trapChannel);
      ch.postMessage({ reason: `a thread of the CPU pool trapped: ${lastPanic ?? e?.message ?? e}` });
      ch.close();
    }
    // reported: not thrown on as well (it would surface as an uncaught error of the page)
    self.close();
  }
};
