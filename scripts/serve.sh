#!/usr/bin/env bash
# The README's run command: installs the toolchain pieces, builds the wasm package and the CLI,
# and serves the page on http://127.0.0.1:${PORT:-8080}/ (open it in a browser with WebGPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh web
scripts/build-web.sh
cargo build --bin glimpse
exec target/debug/glimpse serve --port "${PORT:-8080}" --root .
