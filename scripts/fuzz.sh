#!/usr/bin/env bash
# Fuzzes glimpse's readers of untrusted files (docs/hardening.md, "Fuzzing"): builds the targets
# of fuzz/ with cargo-fuzz on the nightly toolchain (installing both if missing) and runs each
# for SECONDS (default 600), one after the other, in a single process each. A target's working
# corpus is fuzz/corpus/<target>, seeded from the committed fuzz/seeds/<target>; crashes land in
# fuzz/artifacts/<target>/, logs in fuzz/logs/<target>.log. Prints a table at the end.
#
# usage: scripts/fuzz.sh [SECONDS] [TARGET...]     (targets: all of them by default)
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-600}
shift || true
all=(safetensors gguf torch pickle config tokenizer image)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# no sanitizer: glimpse is safe Rust; the fuzzers look for panics (overflow checks on),
# allocations past the limits below and hangs. -s none also builds much faster.
build=(-s none --debug-assertions)
cargo +nightly fuzz build "${build[@]}"

# the largest input each target gets: the seeds are at most ~45 KiB
max_len() {
  case $1 in
    config) echo 16384 ;;
    pickle | tokenizer) echo 32768 ;;
    *) echo 65536 ;;
  esac
}

mkdir -p fuzz/logs
rows=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="fuzz/logs/$t.log"
  echo "== $t: ${secs} s (log: $log) =="
  status=ok
  # a single allocation over 1 GiB, 2 GiB resident or 10 s on one input is a bug
  cargo +nightly fuzz run "${build[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
    -max_len="$(max_len "$t")" -dict="fuzz/dicts/$t.dict" -print_final_stats=1 \
    >"$log" 2>&1 || status=crash
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
  runs=$(echo "$done_line" | awk '{print $2}')
  s=$(echo "$done_line" | awk '{print $5}')
  if [ -z "$runs" ]; then
    # stopped by a crash: libFuzzer's last status line has the count
    runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    s="-"
  fi
  artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | awk '{print $5}' || true)
  rows+=("$(printf '%-12s %-6s %12s %8s  %s' "$t" "$status" "${runs:-?}" "$s" "$artifact")")
done

printf '\n%-12s %-6s %12s %8s  %s\n' target status executions seconds artifact
printf '%s\n' "${rows[@]}"
