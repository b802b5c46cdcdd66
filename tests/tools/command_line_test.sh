#!/bin/bash
# Every tool: --help lists its flags and exits 0, --version exits 0, an unknown flag or a bad
# value exits 2 with one line naming it (tools/common/command_line.h).
set -uo pipefail
dir="$TEST_SRCDIR/$TEST_WORKSPACE/tools"
failures=0
check() {  # check DESCRIPTION EXPECTED_STATUS PATTERN command...
  local description=$1 expected=$2 pattern=$3
  shift 3
  local output status
  output=$("$@" 2>&1)
  status=$?
  if [ "$status" != "$expected" ] || ! grep -q -- "$pattern" <<<"$output"; then
    echo "FAIL: $description: exit $status (want $expected), output:"
    echo "$output" | head -5
    failures=$((failures + 1))
  fi
}
for tool in nbd-copy nbd-info nbd-bench; do
  check "$tool --help" 0 "usage\|Usage" "$dir/$tool" --help
  check "$tool --version" 0 "$tool (nbdring)" "$dir/$tool" --version
  check "$tool --bogus" 2 "unknown flag" "$dir/$tool" --bogus
done
check "nbd-copy --help lists its flags with defaults" 0 "request_size" "$dir/nbd-copy" --help
check "nbd-info --help lists its flags" 0 "meta_context" "$dir/nbd-info" --help
check "nbd-info --help lists nbdinfo's modes" 0 "--map" "$dir/nbd-info" --help
check "nbd-copy bad value" 2 "requests=abc" "$dir/nbd-copy" --requests=abc a b
check "nbd-copy flag without value" 2 "needs a value" "$dir/nbd-copy" a b --requests
check "nbd-copy one argument" 2 "expected SOURCE and DESTINATION" "$dir/nbd-copy" a
check "nbd-info no URI" 2 "expected exactly one URI" "$dir/nbd-info"
check "nbd-bench bad value" 2 "iodepth" "$dir/nbd-bench" --iodepth=0
[ "$failures" = 0 ] && echo "all command-line checks passed"
exit "$failures"
