#!/usr/bin/env bash
# Runs every test: installs what is missing (tools/setup.sh), then the whole suite with the
# normal build, under AddressSanitizer+UBSan, under ThreadSanitizer, and finally each libFuzzer
# target for a bounded time (clang, in its own Bazel output base so the gcc builds stay cached).
# NBDRING_TEST_CONFIGS="default asan" limits the stages (default: all four);
# NBDRING_FUZZ_SECONDS sets the time per fuzz target (default: 30).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
configs=${NBDRING_TEST_CONFIGS:-"default asan tsan fuzz"}
fuzz_seconds=${NBDRING_FUZZ_SECONDS:-30}
for config in $configs; do
  echo "=== ${config} ==="
  case $config in
    default) bazel test //... ;;
    asan | tsan) bazel test --config="$config" //... ;;
    fuzz)
      fuzz_base=/tmp/nbdring-bazel-fuzz
      for target in handshake reply_parser client; do
        work=$(mktemp -d /tmp/nbdr-fuzz-XXXXXX)
        cp tests/fuzz/corpus/"$target"/* "$work"/  # the committed corpus stays untouched
        # libFuzzer exits non-zero on a crash, leak or timeout.
        status=0
        bazel --output_base="$fuzz_base" run --symlink_prefix=/ --config=fuzz \
          //tests/fuzz:"${target}_fuzzer" -- -max_total_time="$fuzz_seconds" \
          -print_final_stats=1 "$work" > "$work.log" 2>&1 || status=$?
        grep -E "stat::|Done|ERROR|SUMMARY|crash|leak|deadly" "$work.log" || true
        rm -rf "$work" "$work.log"
        if [[ $status -ne 0 ]]; then
          echo "fuzz target ${target}_fuzzer failed (exit $status)" >&2
          exit 1
        fi
      done
      bazel --output_base="$fuzz_base" shutdown
      ;;
    *) echo "unknown stage '$config'" >&2; exit 2 ;;
  esac
done
