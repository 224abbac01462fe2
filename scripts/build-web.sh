#!/usr/bin/env bash
# Builds the wasm packages: pkg/ (single thread) and pkg/threads/ (the CPU path on a pool of Web
# Workers: wasm threads, shared memory), each cargo (wasm32, release, simd128) then wasm-bindgen
# then wasm-opt. The page takes pkg/threads/ where it is cross-origin isolated (www/worker.js).
#
# The threaded build needs the nightly toolchain with rust-src (`-Z build-std`: the standard
# library rebuilt with atomics; scripts/setup.sh installs it) and its own target folder
# (target/threads/): its first build takes ~7 minutes on 2 cores, and wasm-opt ~3 more.
# GLIMPSE_THREADS=0 skips it (the page then always runs the single-thread build).
set -euo pipefail
cd "$(dirname "$0")/.."

# wasm-opt (binaryen 132 from npm, `npm install`; Debian's v108 breaks wasm-bindgen 0.2.130
# modules): a smaller download and faster start. Skipped with a note when it is not installed
# (scripts/setup.sh web does not install npm packages); GLIMPSE_WASM_OPT=0 skips it too.
optimize() {
  if [ "${GLIMPSE_WASM_OPT:-1}" != 0 ] && [ -x node_modules/.bin/wasm-opt ]; then
    node_modules/.bin/wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
      --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
      "$@"
  elif [ "${GLIMPSE_WASM_OPT:-1}" != 0 ]; then
    echo "build-web: node_modules/.bin/wasm-opt is missing (npm install): the wasm is not size-optimized"
  fi
}

cargo build --lib --release --target wasm32-unknown-unknown
wasm-bindgen --target web --out-dir pkg --out-name glimpse \
  target/wasm32-unknown-unknown/release/glimpse.wasm
optimize pkg/glimpse_bg.wasm -o pkg/glimpse_bg.wasm
echo "build-web: pkg/glimpse_bg.wasm $(du -h pkg/glimpse_bg.wasm | cut -f1)"

if [ "${GLIMPSE_THREADS:-1}" = 0 ]; then
  rm -rf pkg/threads
  echo "build-web: GLIMPSE_THREADS=0: no threaded build (pkg/threads/ removed)"
  exit 0
fi
# RUSTFLAGS replaces .cargo/config.toml's flags for this build. rustc links wasm32-unknown-unknown
# with atomics but without shared memory: the linker is told (an imported shared memory, and the
# thread-local-storage symbols wasm-bindgen's thread support needs). It may grow to 4 GiB (a
# base-size f32 model needs more than the 1 GiB usual for shared memory). Nightly warns once per
# build that `atomics` is an unstable target feature: that is the point of this build.
THREAD_FLAGS=(
  -C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128
  -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296
  -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size
  -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base
  --cfg 'getrandom_backend="wasm_js"'
)
RUSTFLAGS="${THREAD_FLAGS[*]}" \
  CARGO_TARGET_DIR=target/threads \
  cargo +nightly build --lib --release --target wasm32-unknown-unknown -Z build-std=std,panic_abort
wasm-bindgen --target web --out-dir pkg/threads --out-name glimpse \
  target/threads/wasm32-unknown-unknown/release/glimpse.wasm
optimize --enable-threads pkg/threads/glimpse_bg.wasm -o pkg/threads/glimpse_bg.wasm
echo "build-web: pkg/threads/glimpse_bg.wasm $(du -h pkg/threads/glimpse_bg.wasm | cut -f1)"
