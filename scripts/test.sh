#!/usr/bin/env bash
# The README's test command (and CI's): native tests (CPU and lavapipe), the wasm build, and the
# browser tests in headless Chromium on SwiftShader WebGPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# Mesa's Vulkan loader complains on every start without a runtime dir (headless machines).
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR=$(mktemp -d)
  export XDG_RUNTIME_DIR
fi
echo "== native tests (CPU + lavapipe) =="
cargo test
echo "== wasm build =="
scripts/build-web.sh
cargo build --bin glimpse
echo "== browser tests (Chromium, SwiftShader WebGPU) =="
GLIMPSE_BIN=target/debug/glimpse npm run --silent test:browser
