#!/bin/bash
# Runs each example program against a real nbdkit (memory 64M, multi-conn) on a private Unix
# socket and checks that it succeeded and said what it did.
set -euo pipefail
dir="$(dirname "$0")"
find_binary() {
  local name="$1"
  for candidate in "$TEST_SRCDIR/$TEST_WORKSPACE/examples/$name" "$dir/../../examples/$name"; do
    [ -x "$candidate" ] && { echo "$candidate"; return; }
  done
  echo "example $name not found" >&2
  exit 1
}
c_epoll="$(find_binary c_epoll_polled)"
cpp_threads="$(find_binary cpp_threads)"
out="$(nbdkit -U - memory 64M --run "'$c_epoll' \"\$uri\"")"
echo "$out"
grep -q "no threads" <<<"$out"
out="$(nbdkit -U - memory 64M --run "'$cpp_threads' \"\$uri\"")"
echo "$out"
grep -q "4 threads wrote and read back 16 MiB over 2 connection" <<<"$out"
# A bad URI: a clear error and a non-zero exit, not a crash.
if "$c_epoll" "nbd+unix:///?socket=/nonexistent/sock" 2>err.txt; then
  echo "c_epoll_polled succeeded against a missing socket" >&2
  exit 1
fi
grep -q "/nonexistent/sock" err.txt
echo PASS
