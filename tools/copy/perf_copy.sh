#!/bin/bash
# tools/copy/perf_copy.sh — the nbd-copy rows of docs/performance.md: nbd-copy against
# libnbd's nbdcopy, both with their defaults, alternating, ROUNDS times each, on
#   1. a fully written 1 GiB nbdkit memory export -> null:   (reading)
#   2. a 1 GiB file in tmpfs -> the nbdkit memory export       (writing)
# nbdkit runs on CPU 0, the copy tool on CPU 1. Prints one line per run: tool, job, wall
# seconds, user+sys seconds, GiB/s.
set -euo pipefail

cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/nbdring-perf}
ROUNDS=${ROUNDS:-3}
mkdir -p "$OUT"
bazel build //tools:nbd-copy >&2
COPY="$OUT/nbd-copy"
install -m 0755 bazel-bin/tools/nbd-copy "$COPY"

socket="$OUT/copy-memory.sock"
file=/dev/shm/nbdring-copy-source.img
rm -f "$socket"
taskset -c 0 nbdkit -f -U "$socket" memory 1G &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$file"' EXIT
uri="nbd+unix:///?socket=$socket"
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done

# Both tools skip unallocated ranges, so the export is written completely first.
nbdkit -U - pattern 1G --run "nbdcopy \"\$uri\" \"$uri\""
head -c 1G /dev/urandom >"$file"

run() {  # run TOOL JOB command...
  local tool=$1 job=$2
  shift 2
  /usr/bin/time -o "$OUT/time.txt" -f "%e %U %S" taskset -c 1 "$@" >/dev/null
  read -r wall user system <"$OUT/time.txt"
  awk -v t="$tool" -v j="$job" -v w="$wall" -v u="$user" -v s="$system" \
    'BEGIN { printf "%-9s %-14s %6.2f s wall %6.2f s cpu %6.2f GiB/s\n", t, j, w, u + s, 1 / w }'
}

for round in $(seq "$ROUNDS"); do
  run nbd-copy "memory->null:" "$COPY" "$uri" null:
  run nbdcopy "memory->null:" nbdcopy "$uri" null:
  run nbd-copy "file->memory" "$COPY" "$file" "$uri"
  run nbdcopy "file->memory" nbdcopy "$file" "$uri"
done
