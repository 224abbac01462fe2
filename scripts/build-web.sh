#!/usr/bin/env bash
# Builds the wasm package into pkg/: cargo (wasm32, release, simd128) then wasm-bindgen.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --lib --release --target wasm32-unknown-unknown
wasm-bindgen --target web --out-dir pkg --out-name glimpse \
  target/wasm32-unknown-unknown/release/glimpse.wasm
# wasm-opt (binaryen 132 from npm, `npm install`; Debian's v108 breaks wasm-bindgen 0.2.130
# modules): a smaller download and faster start. Skipped with a note when it is not installed
# (scripts/setup.sh web does not install npm packages); GLIMPSE_WASM_OPT=0 skips it too.
if [ "${GLIMPSE_WASM_OPT:-1}" != 0 ] && [ -x node_modules/.bin/wasm-opt ]; then
  node_modules/.bin/wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    pkg/glimpse_bg.wasm -o pkg/glimpse_bg.wasm
elif [ "${GLIMPSE_WASM_OPT:-1}" != 0 ]; then
  echo "build-web: node_modules/.bin/wasm-opt is missing (npm install): pkg/glimpse_bg.wasm is not size-optimized"
fi
echo "build-web: pkg/glimpse_bg.wasm $(du -h pkg/glimpse_bg.wasm | cut -f1)"
