#!/bin/bash
# tools/bench/limit_sweep.sh — fixed in-flight limits against --inflight_limit=auto, on four
# servers (docs/performance.md, "Choosing the in-flight limit"):
#
#   memory   nbdkit memory 1G over a Unix socket (CPU-bound)
#   delay    nbdkit memory 1G --filter=delay rdelay=1ms wdelay=1ms (latency-bound, 16 threads)
#   rate     nbdkit memory 1G --filter=rate rate=200M (bandwidth-bound: 200 Mbit/s)
#   qemu     qemu-nbd on a 1 GiB file in /dev/shm
#
# All four are started here, pinned to CPU 0, and stay up for every round; the client runs on
# CPU 1. Per server and round: one nbd-bench sweep over fixed depths 1..256 (the limit is the
# depth: --iodepth=N), then one run of --iodepth=256 --inflight_limit=auto (the benchmark keeps
# 256 outstanding, the client decides how many are in flight). 4 KiB randread on one
# connection everywhere, and 1 MiB sequential reads on the rate server too. The JSON of every
# run is kept in $OUT; tools/bench/limit_sweep_summary.py prints the medians over the rounds.
#
#   tools/bench/limit_sweep.sh                   # 3 rounds, about 9 minutes
#   ROUNDS=1 SERVERS="memory rate" tools/bench/limit_sweep.sh
#   BASELINE=/tmp/old/nbd-bench tools/bench/limit_sweep.sh   # auto of another build too
#
# BASELINE: an nbd-bench built from another commit; each round then also runs its auto right
# after this build's, against the same servers, so the two limiters compare within one run.
set -euo pipefail

cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/nbdring-limit}
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-2s}
RAMP=${RAMP:-1s}
DEPTHS=${DEPTHS:-1,2,4,8,16,32,64,128,256}
SERVERS=${SERVERS:-"memory delay rate qemu"}
RANGE=${RANGE:-256m}

mkdir -p "$OUT"
bazel build //tools:nbd-bench >&2
BENCH="$OUT/nbd-bench"
install -m 0755 bazel-bin/tools/nbd-bench "$BENCH"
BASELINE=${BASELINE:-}

SOCKETS=$(mktemp -d /tmp/nbdr-limit-XXXXXX)
IMAGE=/dev/shm/nbdring-limit-sweep.img
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$SOCKETS" "$IMAGE"
}
trap cleanup EXIT

start() {  # name, command...
  local name=$1
  shift
  taskset -c 0 "$@" >"$OUT/$name.log" 2>&1 &
  pids+=($!)
}
start memory nbdkit -f -U "$SOCKETS/memory.sock" memory 1G
start delay nbdkit -f -U "$SOCKETS/delay.sock" --filter=delay memory 1G rdelay=1ms wdelay=1ms
start rate nbdkit -f -U "$SOCKETS/rate.sock" --filter=rate memory 1G rate=200M
truncate -s 1G "$IMAGE"
start qemu qemu-nbd -t -f raw -k "$SOCKETS/qemu.sock" --shared=8 "$IMAGE"
for name in memory delay rate qemu; do
  for _ in $(seq 100); do [ -S "$SOCKETS/$name.sock" ] && break; sleep 0.1; done
done

uri() { echo "nbd+unix:///?socket=$SOCKETS/$1.sock"; }
# The rate server moves 25 MB/s: its region is smaller, so prefilling it takes 3 s, not 10.
range_of() { if [ "$1" = rate ]; then echo 64m; else echo "$RANGE"; fi; }

bench() {  # server, output file, nbd-bench flags...
  local server=$1 out=$2
  shift 2
  taskset -c 1 "${BINARY:-$BENCH}" "$(uri "$server")" --range="$(range_of "$server")" \
    --runtime="$RUNTIME" --ramp="$RAMP" --json "$@" >"$out" 2>>"$OUT/nbd-bench.log"
}

# Reads of never-written areas of nbdkit memory are cheaper than real ones: write each
# region once.
for server in $SERVERS; do
  echo "prefill $server" >&2
  bench "$server" "$OUT/prefill-$server.json" --rw=read --bs=1m --iodepth=4 --runtime=0.1s \
    --ramp=0s --prefill
done

workloads_of() {
  echo "randread:4k"
  if [ "$1" = rate ]; then echo "read:1m"; fi
}

for round in $(seq "$ROUNDS"); do
  for server in $SERVERS; do
    for workload in $(workloads_of "$server"); do
      rw=${workload%%:*}
      bs=${workload##*:}
      name="$server-$rw-$bs-r$round"
      echo "$(date +%T) $name" >&2
      bench "$server" "$OUT/$name-fixed.json" --rw="$rw" --bs="$bs" --iodepth="$DEPTHS"
      bench "$server" "$OUT/$name-auto.json" --rw="$rw" --bs="$bs" --iodepth=256 \
        --inflight_limit=auto
      if [ -n "$BASELINE" ]; then
        BINARY=$BASELINE bench "$server" "$OUT/$name-baseline.json" --rw="$rw" --bs="$bs" \
          --iodepth=256 --inflight_limit=auto
      fi
    done
  done
done
python3 tools/bench/limit_sweep_summary.py "$OUT"
