#!/usr/bin/env bash
# Installs what glimpse needs on a fresh Debian machine; skips whatever is already there.
#   scripts/setup.sh web    the wasm target, nightly's rust-src (the threaded build) and
#                           wasm-bindgen-cli (enough to build and serve the page)
#   scripts/setup.sh test   also lavapipe (Vulkan on the CPU), Chromium and playwright-core
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-test}

# wasm-bindgen-cli must match the wasm-bindgen crate exactly (Cargo.toml pins it).
WASM_BINDGEN_VERSION=$(sed -n 's/^wasm-bindgen = "=\([0-9.]*\)"/\1/p' Cargo.toml)

need_apt=()
if [ "$what" = test ]; then
  for pkg in mesa-vulkan-drivers libvulkan1 chromium; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
  done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  echo "setup: rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# the threaded wasm build (scripts/build-web.sh, pkg/threads/) rebuilds the standard library
# with atomics: the nightly toolchain and its rust-src (GLIMPSE_THREADS=0 skips both)
if [ "${GLIMPSE_THREADS:-1}" != 0 ]; then
  if ! rustup toolchain list | grep -q '^nightly'; then
    echo "setup: rustup toolchain install nightly (minimal, with rust-src)"
    rustup toolchain install nightly --profile minimal --component rust-src
  elif ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    echo "setup: rustup component add rust-src --toolchain nightly"
    rustup component add rust-src --toolchain nightly
  fi
fi

if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
  echo "setup: cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION (about 5 minutes on 2 cores)"
  # --locked fails here: its lock file pins a webpki-roots version crates.io no longer has
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

if [ "$what" = test ] && { [ ! -d node_modules/playwright-core ] || [ ! -x node_modules/.bin/wasm-opt ]; }; then
  echo "setup: npm install (playwright-core, which drives the system's /usr/bin/chromium; binaryen's wasm-opt)"
  npm install --no-audit --no-fund
fi
