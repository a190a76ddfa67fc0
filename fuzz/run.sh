#!/usr/bin/env bash
# Coverage-guided fuzzing of tidegate's parsers with cargo-fuzz (libFuzzer + AddressSanitizer).
#
#   fuzz/run.sh [SECONDS] [TARGET...]      default: 60 seconds for each of the four targets
#
# Needs `cargo install cargo-fuzz`. On a stable toolchain RUSTC_BOOTSTRAP=1 unlocks the
# sanitizer flags cargo-fuzz passes; a nightly toolchain works as it is. New inputs go to
# fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET (both ignored by git); the seeds and
# dictionaries under fuzz/ are the ones `cargo test` mutates.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(retry_after state_file parse_iso prefers_html)
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    log="fuzz/corpus/$target.log"
    cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -dict="fuzz/dicts/$target.dict" -max_total_time="$seconds" -print_final_stats=1 \
        >"$log" 2>&1 || { tail -40 "$log"; echo "$target: FAILED (log: $log)"; exit 1; }
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "$target: ${runs:-?} executions in ${seconds}s, no failure"
done
