#!/bin/bash
# tools/copy/perf_copy.sh — the nbd-copy rows of docs/performance.md: nbd-copy against
# libnbd's nbdcopy, both with their defaults, alternating, ROUNDS times each, on
#   1. a 1 GiB nbdkit memory export holding 256 MiB of random data (64 extents of 4 MiB,
#      one every 16 MiB) and holes elsewhere -> null:                      (reading)
#   2. the same layout as a sparse 1 GiB file in tmpfs -> the nbdkit export (writing)
# nbdkit runs on CPU 0, the copy tool on CPU 1. Prints one line per run: tool, job, wall
# seconds, user+sys seconds. Then checks that nbd-copy's output is identical to its input
# (file -> a fresh export -> file, and export -> file), and fails if it is not.
set -euo pipefail

cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/nbdring-perf}
ROUNDS=${ROUNDS:-3}
mkdir -p "$OUT"
bazel build //tools:nbd-copy >&2
COPY="$OUT/nbd-copy"
install -m 0755 bazel-bin/tools/nbd-copy "$COPY"

socket="$OUT/copy-memory.sock"
source=/dev/shm/nbdring-copy-source.img
back=/dev/shm/nbdring-copy-back.img
rm -f "$socket" "$source" "$back"
taskset -c 0 nbdkit -f -U "$socket" memory 1G &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$source" "$back"' EXIT
uri="nbd+unix:///?socket=$socket"
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done

truncate -s 1G "$source"
for i in $(seq 0 63); do
  dd if=/dev/urandom of="$source" bs=4M count=1 seek=$((i * 4)) conv=notrunc status=none
done
nbdcopy "$source" "$uri"  # the export: the same data, holes left unallocated

run() {  # run TOOL JOB command...
  local tool=$1 job=$2
  shift 2
  /usr/bin/time -o "$OUT/time.txt" -f "%e %U %S" taskset -c 1 "$@" >/dev/null
  read -r wall user system <"$OUT/time.txt"
  awk -v t="$tool" -v j="$job" -v w="$wall" -v u="$user" -v s="$system" \
    'BEGIN { printf "%-9s %-14s %6.2f s wall %6.2f s cpu\n", t, j, w, u + s }'
}

for round in $(seq "$ROUNDS"); do
  run nbd-copy "memory->null:" "$COPY" "$uri" null:
  run nbdcopy "memory->null:" nbdcopy "$uri" null:
  run nbd-copy "file->memory" "$COPY" "$source" "$uri"
  run nbdcopy "file->memory" nbdcopy "$source" "$uri"
done

# Identical output: through a fresh export and back, and from the export to a file.
nbdkit -U - memory 1G --run "'$COPY' '$source' \"\$uri\" && nbdcopy \"\$uri\" '$back'"
cmp "$source" "$back"
"$COPY" "$uri" "$back"
cmp "$source" "$back"
echo "nbd-copy output identical to its input (file -> nbd -> file, nbd -> file)"
