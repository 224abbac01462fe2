//! The threaded build's thread pool (wasm32 with `+atomics`: one shared memory, built into
//! `pkg/threads/` by scripts/build-web.sh). rayon's threads are Web Workers (`www/thread.js`)
//! that instantiate this same module on the same memory; `www/worker.js` starts them:
//!
//! 1. `threadPoolHandles()` → `[module, memory]`, and the queue rayon's threads will wait in;
//! 2. each pool worker instantiates the module with them, answers that it is ready, and calls
//!    `threadPoolWorker()`, which blocks until the pool is built and then runs one of rayon's
//!    threads for the life of the worker;
//! 3. once every worker is waiting, `threadPoolBuild(n)` builds rayon's global pool, whose spawn
//!    hands each thread to a waiting worker (building blocks until all of them run, so it must
//!    not happen before they are ready: the calling thread's event loop is what starts them).
//!
//! Only the CPU path's matmuls and dequantization run on the pool (`cpu::linear_f32`,
//! `tensor::quant`): code that does not panic on checked shapes and allocates no more than a run's
//! output. A trap on a pool thread (running out of memory) would still
//! leave the engine's thread waiting for it forever, so `www/thread.js` reports one on the
//! BroadcastChannel the page named (the glimpse worker's name) and the page replaces the worker.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use wasm_bindgen::prelude::*;

struct Queue {
    tx: Mutex<Option<Sender<rayon::ThreadBuilder>>>,
    rx: Mutex<Receiver<rayon::ThreadBuilder>>,
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

fn queue() -> &'static Queue {
    QUEUE.get_or_init(|| {
        let (tx, rx) = channel();
        Queue {
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(rx),
        }
    })
}

/// `[module, memory]`: what a pool worker instantiates this module with.
#[wasm_bindgen(js_name = threadPoolHandles)]
pub fn thread_pool_handles() -> js_sys::Array {
    queue();
    js_sys::Array::of2(&wasm_bindgen::module(), &wasm_bindgen::memory())
}

/// Runs one of rayon's threads on the calling pool worker; returns only if the pool is dropped.
#[wasm_bindgen(js_name = threadPoolWorker)]
pub fn thread_pool_worker() {
    let builder = match queue().rx.lock() {
        Ok(rx) => rx.recv(),
        Err(_) => return,
    };
    if let Ok(builder) = builder {
        builder.run();
    }
}

/// Builds the pool of `threads` threads once that many workers wait in `threadPoolWorker`; from
/// then on the CPU path's matmuls split over it. An error if a pool exists already.
#[wasm_bindgen(js_name = threadPoolBuild)]
pub fn thread_pool_build(threads: usize) -> Result<(), JsValue> {
    let tx = queue()
        .tx
        .lock()
        .ok()
        .and_then(|mut t| t.take())
        .ok_or_else(|| super::invalid("the thread pool was built already"))?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .spawn_handler(move |thread| {
            tx.send(thread)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .build_global()
        .map_err(|e| super::invalid(&format!("the thread pool: {e}")))?;
    crate::cpu::set_pool_threads(threads);
    Ok(())
}

/// Threads the CPU path splits its matmuls over (0: none, the single-thread build or no pool).
#[wasm_bindgen(js_name = threadPoolSize)]
pub fn thread_pool_size() -> usize {
    crate::cpu::pool_threads()
}

/// Panics on purpose on one of the pool's threads (tests of the page's recovery from a pool
/// thread that traps, www/thread.js). Never called by the page or API.
#[wasm_bindgen(js_name = debugPanicPool)]
pub fn debug_panic_pool(message: String) {
    rayon::scope(|s| s.spawn(move |_| panic!("{message}")));
}
