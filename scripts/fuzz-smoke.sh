#!/usr/bin/env bash
# Builds every fuzz target (fuzz/, cargo-fuzz) and runs each for FUZZ_SECONDS (default 30) from
# its checked-in seeds. Exits non-zero when a target crashed, hung or allocated past the limits
# below; the input that did it is left in fuzz/artifacts/<target>/: commit it there, and
# engine/src/fuzz/corpus.rs replays it in every `cargo test` from then on.
# Usage: scripts/fuzz-smoke.sh [TARGET...]   (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
seconds=${FUZZ_SECONDS:-30}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz hands rustc `-Zsanitizer=address`; this lets the stable toolchain accept it.
export RUSTC_BOOTSTRAP=1
# FUZZ_C_COVERAGE=1: build the C libraries (zstd above all) with clang's coverage and ASan too, so
# the decompress target sees inside zstd (needs clang-14; a separate, slower build).
if [ "${FUZZ_C_COVERAGE:-0}" = 1 ]; then
  export CC=clang-14 CFLAGS="-fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp -fsanitize=address"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-fuzz/target}/c-coverage"
fi

if (($#)); then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
cargo fuzz build

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${targets[@]}"; do
  echo "fuzz-smoke: $target for ${seconds}s" >&2
  mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
  # Inputs the fuzzer finds go to the scratch folder (the first one); the seeds are only read.
  # -malloc_limit_mb: no decoder may allocate 32 MiB at once (frames are capped at 4 MiB, chunks
  # at 1 MiB); -timeout: an input that takes 10 s is a hang.
  if ! cargo fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -malloc_limit_mb=32 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1; then
    failed+=("$target")
  fi
done
echo "fuzz-smoke: ${#targets[@]} targets, ${seconds}s each"
echo "fuzz-smoke: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if ((${#failed[@]})); then
  echo "fuzz-smoke: FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
  exit 1
fi
