#!/usr/bin/env bash
# Builds the wasm package into pkg/: cargo (wasm32, release, simd128) then wasm-bindgen.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --lib --release --target wasm32-unknown-unknown
wasm-bindgen --target web --out-dir pkg --out-name glimpse \
  target/wasm32-unknown-unknown/release/glimpse.wasm
echo "build-web: pkg/glimpse_bg.wasm $(du -h pkg/glimpse_bg.wasm | cut -f1)"
