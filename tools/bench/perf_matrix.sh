#!/bin/bash
# tools/bench/perf_matrix.sh — runs the docs/performance.md matrix: `nbd-bench --compare`
# (nbdring against libnbd, alternating, medians) for every server × workload, and prints one
# Markdown table row per run.
#
# Each server is started here, pinned to CPU 0; the client is pinned to CPU 1, because
# unpinned runs on a 2-core machine vary by 15-100 %. The raw JSON of every run is kept in
# $OUT (default /tmp/nbdring-perf) so a row can be re-read later.
#
#   tools/bench/perf_matrix.sh                 # everything (about 25 minutes)
#   SERVERS="memory-unix null-unix" WORKLOADS="randread:4k:16:4" tools/bench/perf_matrix.sh
#
# SERVERS may also name null-unix-shared (nbdkit on CPUs 0 and 1, the client on 1),
# fastsrv-unix (../shared/tools/fastsrv.c, or FASTSRV_SOURCE: a minimal in-memory server with
# headroom, for nbdring's own ceiling), and memory-tls-x509-unix / memory-tls-psk-unix /
# memory-tls-x509-tcp (nbdkit --tls=require with credentials made here by certtool/psktool).
# WORKLOADS entries are rw:bs:iodepth:connections. ROUNDS, RUNTIME and RAMP pass through.
set -euo pipefail

cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/nbdring-perf}
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-2s}
RAMP=${RAMP:-0.5s}
SERVERS=${SERVERS:-"memory-unix null-unix memory-tcp null-tcp qemu-nbd-unix"}
DEFAULT_WORKLOADS=""
for rw in randread randwrite; do
  for depth in 1 16 64; do
    for connections in 1 4; do
      DEFAULT_WORKLOADS+=" $rw:4k:$depth:$connections"
    done
  done
done
DEFAULT_WORKLOADS+=" read:1m:4:4 write:1m:4:4 read:1m:4:1 write:1m:4:1"
WORKLOADS=${WORKLOADS:-$DEFAULT_WORKLOADS}
PORT=${PORT:-10819}

mkdir -p "$OUT"
bazel build //tools:nbd-bench >&2
BENCH="$OUT/nbd-bench"
# A private copy: bazel-bin is shared with other builds (sanitizer configs) that may run later.
install -m 0755 bazel-bin/tools/nbd-bench "$BENCH"

server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT

# A CA, a server certificate for localhost and a client certificate (the layout nbdkit and
# libnbd share), and a PSK for user "bench", in $OUT/tls.
make_tls_credentials() {
  local dir="$OUT/tls"
  [ -f "$dir/keys.psk" ] && return
  mkdir -p "$dir"
  (
    cd "$dir"
    certtool --generate-privkey --key-type=ecdsa --outfile ca-key.pem 2>/dev/null
    printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 30\n' >ca.info
    certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info --outfile ca-cert.pem 2>/dev/null
    for side in server client; do
      certtool --generate-privkey --key-type=ecdsa --outfile "$side-key.pem" 2>/dev/null
      printf 'cn = localhost\ndns_name = localhost\ntls_www_%s\nsigning_key\nencryption_key\nexpiration_days = 30\n' "$side" >"$side.info"
      certtool --generate-certificate --load-ca-certificate ca-cert.pem --load-ca-privkey ca-key.pem \
        --load-privkey "$side-key.pem" --template "$side.info" --outfile "$side-cert.pem" 2>/dev/null
    done
    psktool -u bench -p keys.psk >/dev/null
  )
}

# Starts server $1 and sets URI.
start_server() {
  local socket="$OUT/$1.sock"
  rm -f "$socket"
  case "$1" in
    memory-unix) taskset -c 0 nbdkit -f -U "$socket" memory 1G & URI="nbd+unix:///?socket=$socket" ;;
    null-unix) taskset -c 0 nbdkit -f -U "$socket" null 1G & URI="nbd+unix:///?socket=$socket" ;;
    # The server may also use what the client leaves of CPU 1: client efficiency shows as
    # server headroom, as on a machine where both share the cores.
    null-unix-shared) taskset -c 0,1 nbdkit -f -U "$socket" null 1G & URI="nbd+unix:///?socket=$socket" ;;
    memory-tcp) taskset -c 0 nbdkit -f -i 127.0.0.1 -p "$PORT" memory 1G & URI="nbd://127.0.0.1:$PORT/" ;;
    null-tcp) taskset -c 0 nbdkit -f -i 127.0.0.1 -p "$PORT" null 1G & URI="nbd://127.0.0.1:$PORT/" ;;
    qemu-nbd-unix)
      # A raw image in tmpfs: the server's page cache, not a disk, is what is measured.
      rm -f /dev/shm/nbdring-perf.img
      truncate -s 1G /dev/shm/nbdring-perf.img
      taskset -c 0 qemu-nbd -t -f raw -k "$socket" --shared=8 /dev/shm/nbdring-perf.img &
      URI="nbd+unix:///?socket=$socket" ;;
    # A server with headroom (no file system, no threads per request): what nbdring itself
    # can do. Built from the shared benchmark tools when they are there (not in CI).
    fastsrv-unix)
      gcc -O2 -Wall -o "$OUT/fastsrv" "${FASTSRV_SOURCE:-../shared/tools/fastsrv.c}" -lpthread
      taskset -c 0 "$OUT/fastsrv" -U "$socket" -s 1g -P &
      URI="nbd+unix:///?socket=$socket" ;;
    memory-tls-x509-unix)
      make_tls_credentials
      taskset -c 0 nbdkit -f -U "$socket" --tls=require --tls-certificates="$OUT/tls" memory 1G &
      URI="nbds+unix:///?socket=$socket&tls-certificates=$OUT/tls&tls-hostname=localhost" ;;
    memory-tls-x509-tcp)
      make_tls_credentials
      taskset -c 0 nbdkit -f -i 127.0.0.1 -p "$PORT" --tls=require --tls-certificates="$OUT/tls" memory 1G &
      URI="nbds://localhost:$PORT/?tls-certificates=$OUT/tls" ;;
    memory-tls-psk-unix)
      make_tls_credentials
      taskset -c 0 nbdkit -f -U "$socket" --tls=require --tls-psk="$OUT/tls/keys.psk" memory 1G &
      URI="nbds+unix://bench@/?socket=$socket&tls-psk-file=$OUT/tls/keys.psk" ;;
    *) echo "unknown server $1" >&2; exit 2 ;;
  esac
  server_pid=$!
  for _ in $(seq 100); do
    if "$BENCH" "$URI" --runtime=0 --size=4k --ramp=0 >/dev/null 2>&1; then return; fi
    sleep 0.1
  done
  echo "server $1 did not come up" >&2
  exit 1
}

echo "| server | rw | bs | QD | conns | nbdring IOPS | libnbd IOPS | nbdring CPU-µs/IO | libnbd CPU-µs/IO | IOPS ratio | CPU ratio | nbdring enters/IO | nbdring p99 µs | libnbd p99 µs |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for server in $SERVERS; do
  start_server "$server"
  for workload in $WORKLOADS; do
    IFS=: read -r rw bs depth connections <<<"$workload"
    json="$OUT/$server-$rw-$bs-qd$depth-c$connections.json"
    taskset -c 1 "$BENCH" "$URI" --rw="$rw" --bs="$bs" --iodepth="$depth" \
      --connections="$connections" --compare --rounds="$ROUNDS" --runtime="$RUNTIME" \
      --ramp="$RAMP" --prefill --range=256m --json >"$json"
    python3 - "$server" "$json" <<'EOF'
import json, statistics, sys
server, path = sys.argv[1], sys.argv[2]
data = json.load(open(path))
rounds = data["rounds"]
def med(engine, key):
    return statistics.median(r[engine][key] for r in rounds)
def med_p99(engine):
    return statistics.median(r[engine]["lat_us"]["p99"] for r in rounds)
first = rounds[0]["nbdring"]
bs = first["bs"]
bs_text = f"{bs // 1048576}M" if bs >= 1048576 else f"{bs // 1024}K"
def rate(engine):
    if bs >= 1048576:
        return f"{med(engine, 'mib_per_s') / 1024:.2f} GiB/s"
    return f"{med(engine, 'iops') / 1000:.1f}K"
enters = med("nbdring", "enters_per_io")
print(f"| {server} | {first['rw']} | {bs_text} | {first['iodepth']} | {first['connections']} "
      f"| {rate('nbdring')} | {rate('libnbd')} "
      f"| {med('nbdring', 'cpu_us_per_io'):.2f} | {med('libnbd', 'cpu_us_per_io'):.2f} "
      f"| ×{data['median_ratio']['iops']:.2f} | ×{data['median_ratio']['cpu_us_per_io']:.3f} "
      f"| {enters:.3f} | {med_p99('nbdring'):.0f} | {med_p99('libnbd'):.0f} |")
EOF
  done
  stop_server
done
