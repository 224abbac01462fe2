#!/usr/bin/env bash
# Kernel and model benchmarks on a Linux machine with a real GPU (NVIDIA through Vulkan), in one run of a
# few minutes: builds, checks the kernels against the CPU, times them, prints the table last.
#   bench/gpu.sh            (writes bench/out/kernels-<host>.json too)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvulkan1 >/dev/null
  else
    echo "bench/gpu.sh: the Vulkan loader (libvulkan1) is missing" >&2; exit 1
  fi
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
cargo build --release --bin glimpse
mkdir -p bench/out
target/release/glimpse info
target/release/glimpse selfcheck
target/release/glimpse bench kernels --device all --samples 7 \
  --json "bench/out/kernels-$(hostname).json" | tee "bench/out/kernels-$(hostname).txt"
# whole models at real shapes (random weights): image encode, first token, tokens/s and dispatches
# per decode step (per layer), GPU and CPU side by side
for dtype in f32 q8_0; do
  for arch in vit-gpt2 git clip; do
    target/release/glimpse bench model --arch "$arch" --size base --device all --dtype "$dtype" \
      --new-tokens 16 --json "bench/out/model-$arch-$dtype-$(hostname).json"
  done
done | tee "bench/out/models-$(hostname).txt"
echo
cat "bench/out/kernels-$(hostname).txt"
echo
cat "bench/out/models-$(hostname).txt"
