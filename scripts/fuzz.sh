#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (libFuzzer, nightly toolchain, AddressSanitizer, debug
# assertions) for a bounded time each, and fails if any of them crashes, times out on one input
# or allocates out of bounds. Prints one summary line per target. Slow, so not part of
# scripts/test.sh; docs/fuzzing.md says what each target checks and records the latest result.
#
#   FUZZ_SECONDS  seconds per target (default 60)
#   FUZZ_TARGETS  targets to run, space-separated (default: all of `cargo fuzz list`)
#   FUZZ_ARGS     extra libFuzzer arguments for every target (e.g. `-seed=1234`)
#   CARGO_TARGET_DIR  where to build (default fuzz/target)
#
# Each target starts from its seeds in fuzz/corpus/<target>/ and from what earlier runs found
# in fuzz/work/corpus/<target>/ (kept between runs, ignored by git). A crashing input is saved
# in fuzz/artifacts/<target>/; replay it with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
toolchain=+nightly
# Per input: a search that does not end is a failure (libFuzzer's default is 20 minutes).
timeout_secs=10
# One allocation above this, or a process above the RSS limit, is a failure.
malloc_limit_mb=256
rss_limit_mb=2048
max_len=4096

if ! cargo "$toolchain" --version >/dev/null 2>&1; then
  echo "the nightly toolchain is missing: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo "$toolchain" fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (crates.io)"
  cargo install cargo-fuzz --locked
fi

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo "$toolchain" fuzz list | tr '\n' ' ')}"
target_dir_args=()
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
  target_dir_args=(--target-dir "$CARGO_TARGET_DIR")
fi

echo "==> building ${targets[*]}"
for target in "${targets[@]}"; do
  cargo "$toolchain" fuzz build "${target_dir_args[@]}" "$target"
done

read -r -a extra <<<"${FUZZ_ARGS:-}"
summaries=()
failed=()
for target in "${targets[@]}"; do
  work="fuzz/work/corpus/$target"
  log="fuzz/work/$target.log"
  mkdir -p "$work" "fuzz/artifacts/$target"
  echo "==> fuzzing $target for ${seconds}s (log: $log)"
  status=0
  cargo "$toolchain" fuzz run "${target_dir_args[@]}" "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout="$timeout_secs" -malloc_limit_mb="$malloc_limit_mb" \
    -rss_limit_mb="$rss_limit_mb" -max_len="$max_len" -dict="fuzz/dicts/$target.dict" \
    -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  # "Done N runs in S second(s)" ends a run that was not stopped by a failure.
  elapsed=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1s/p' "$log" | tail -n 1)
  last=$(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -n 1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  features=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corpus=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
  if [[ $status -eq 0 ]]; then
    verdict="ok"
  else
    verdict="FAILED (exit $status)"
    failed+=("$target")
    grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY|Test unit written to' "$log" >&2 || tail -n 30 "$log" >&2
  fi
  summaries+=("$(printf '%-18s %s: %s runs in %s, cov %s, ft %s, corpus %s units/bytes' "$target" "$verdict" \
    "${runs:-?}" "${elapsed:-less than ${seconds}s}" "${cov:-?}" "${features:-?}" "${corpus:-?}")")
done

echo "==> summary"
printf '%s\n' "${summaries[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
