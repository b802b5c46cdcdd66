#!/bin/bash
# nbd-info against libnbd's nbdinfo on the same exports: --size, every --can/--is exit code,
# --map (text and JSON, with and without --totals) byte for byte, and --json's nbdinfo keys.
# The servers (nbdkit, qemu-nbd on Unix sockets) are started here and killed on exit.
set -uo pipefail
nbd_info="$TEST_SRCDIR/$TEST_WORKSPACE/tools/nbd-info"
for tool in nbdinfo nbdkit qemu-nbd qemu-img qemu-io jq psktool; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is not installed"; exit 1; }
done

dir=$(mktemp -d /tmp/nbdr-XXXXXX)
cleanup() {
  local pid_file
  for pid_file in "$dir"/*.pid; do
    [ -f "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null
  done
  rm -rf "$dir"
}
trap cleanup EXIT

# wait_for_socket PATH: the servers fork once listening, but bound the wait all the same.
wait_for_socket() {
  local deadline=$((SECONDS + 20))
  until [ -S "$1" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "FAIL: no server socket at $1 after 20 s"
      exit 1
    fi
    sleep 0.05
  done
}
# start_nbdkit NAME ARGS...: an nbdkit on $dir/NAME.sock; prints its URI.
start_nbdkit() {
  local name=$1
  shift
  nbdkit -U "$dir/$name.sock" -P "$dir/$name.pid" "$@" >&2 || { echo "FAIL: nbdkit $*" >&2; exit 1; }
  wait_for_socket "$dir/$name.sock"
  echo "nbd+unix:///?socket=$dir/$name.sock"
}
start_qemu_nbd() {  # start_qemu_nbd NAME ARGS...
  local name=$1
  shift
  qemu-nbd -t -k "$dir/$name.sock" --fork --pid-file="$dir/$name.pid" "$@" >&2 ||
    { echo "FAIL: qemu-nbd $*" >&2; exit 1; }
  wait_for_socket "$dir/$name.sock"
  echo "nbd+unix:///?socket=$dir/$name.sock"
}

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# same_output DESCRIPTION URI ARGS...: both tools print the same stdout and exit alike.
same_output() {
  local description=$1 uri=$2
  shift 2
  local theirs ours their_status our_status
  theirs=$(nbdinfo "$@" "$uri")
  their_status=$?
  ours=$("$nbd_info" "$@" "$uri")
  our_status=$?
  if [ "$their_status" != "$our_status" ] || [ "$theirs" != "$ours" ]; then
    fail "$description: $* differs (nbdinfo exit $their_status, nbd-info exit $our_status)"
    diff <(echo "$theirs") <(echo "$ours") | head -10
  fi
}

# compare_export DESCRIPTION URI [nbd-info flags...]: everything both tools answer.
compare_export() {
  local description=$1 uri=$2
  shift 2
  local name their_status our_status
  same_output "$description" "$uri" --size
  for name in connect read write cache df fast-zero flush fua multi-conn trim zero \
      structured-reply read-only rotational tls; do
    nbdinfo --can "$name" "$uri" 2>/dev/null
    their_status=$?
    "$nbd_info" --can "$name" "$uri" 2>/dev/null
    our_status=$?
    [ "$their_status" = "$our_status" ] ||
      fail "$description: --can $name: nbdinfo exit $their_status, nbd-info exit $our_status"
  done
  for name in read-only rotational tls; do
    nbdinfo --is "$name" "$uri" 2>/dev/null
    their_status=$?
    "$nbd_info" --is "$name" "$uri" 2>/dev/null
    our_status=$?
    [ "$their_status" = "$our_status" ] ||
      fail "$description: --is $name: nbdinfo exit $their_status, nbd-info exit $our_status"
  done
  same_output "$description" "$uri" --map
  same_output "$description" "$uri" --map --totals
  same_output "$description" "$uri" --map --json
  same_output "$description" "$uri" --map --totals --json
  # --json: every key nbdinfo prints (but its file(1) "content" and the URI it rebuilds) has
  # the same value in nbd-info's document.
  local theirs ours
  theirs=$(nbdinfo --json --no-content "$uri" |
    jq -S '{protocol, TLS, structured, export: (.exports[0] | del(.content, .uri))}')
  ours=$("$nbd_info" --json "$@" "$uri" |
    jq -S --argjson keys "$(nbdinfo --json --no-content "$uri" | jq '.exports[0] | keys')" \
      '{protocol, TLS, structured,
        export: (.exports[0] | with_entries(select(.key as $k | $keys | index($k))) | del(.uri))}')
  if [ -z "$theirs" ] || [ "$theirs" != "$ours" ]; then
    fail "$description: --json differs"
    diff <(echo "$theirs") <(echo "$ours") | head -20
  fi
}

# 1. Writable, all flags, data and holes at known places.
data=$(start_nbdkit data data 'data=@4096 1 2 3 @131072 "hello" @524288 0' size=1M) || exit 1
compare_export "nbdkit data" "$data"
expected_map=$(printf '%10u  %10u  %3u  %s\n' 0 32768 0 data 32768 98304 3 hole,zero \
  131072 32768 0 data 163840 360448 3 hole,zero 524288 32768 2 zero 557056 491520 3 hole,zero)
[ "$("$nbd_info" --map "$data")" = "$expected_map" ] || fail "nbdkit data: --map is not the layout written"
[ "$("$nbd_info" --size "$data")" = 1048576 ] || fail "nbdkit data: --size is not 1048576"

# 2. Read-only, many extents (16 MiB of pseudo-random runs).
sparse=$(start_nbdkit sparse -r sparse-random 16M seed=7 percent=30 runlength=300000) || exit 1
compare_export "nbdkit -r sparse-random" "$sparse"
[ "$("$nbd_info" --map "$sparse" | wc -l)" -gt 10 ] || fail "sparse-random: expected many runs"

# 3. Flags switched one by one: rotational, no trim, no cache, no extents.
mixed=$(start_nbdkit mixed eval get_size='echo 1048576' \
  pread='dd if=/dev/zero count=$3 iflag=count_bytes status=none' \
  is_rotational='exit 0' can_write='exit 0' pwrite='cat >/dev/null' can_flush='exit 0' \
  flush='exit 0' can_fua='echo native' can_cache='echo none' can_multi_conn='exit 3' \
  can_trim='exit 3' can_extents='exit 3') || exit 1
compare_export "nbdkit eval" "$mixed"
"$nbd_info" --is rotational "$mixed"; [ $? = 0 ] || fail "eval: --is rotational should be true"
"$nbd_info" --can trim "$mixed"; [ $? = 2 ] || fail "eval: --can trim should be false (2)"

# 4. qemu-nbd: multi-conn with -e, and qemu:allocation-depth as a second map.
qemu-img create -q -f qcow2 "$dir/disk.qcow2" 4M || exit 1
qemu-io -f qcow2 -c 'write 64k 64k' "$dir/disk.qcow2" >/dev/null || exit 1
cp "$dir/disk.qcow2" "$dir/readonly.qcow2" || exit 1  # qemu-nbd locks the image it serves
qemu=$(start_qemu_nbd qemu -e 4 -A -f qcow2 "$dir/disk.qcow2") || exit 1
compare_export "qemu-nbd -e 4 -A" "$qemu" --meta-context=base:allocation,qemu:allocation-depth
same_output "qemu-nbd" "$qemu" --map=qemu:allocation-depth
same_output "qemu-nbd" "$qemu" --map=qemu:allocation-depth --totals --json
"$nbd_info" --can multi-conn "$qemu"; [ $? = 0 ] || fail "qemu-nbd -e 4: --can multi-conn should be true"
readonly_qemu=$(start_qemu_nbd ro -r -f qcow2 "$dir/readonly.qcow2") || exit 1
compare_export "qemu-nbd -r" "$readonly_qemu"

# 5. TLS (a pre-shared key made here): --is tls true, everything else as in plain text.
psktool -u alice -p "$dir/keys.psk" >/dev/null || { echo "FAIL: psktool (gnutls-bin)"; exit 1; }
tls=$(start_nbdkit tls --tls=require --tls-psk="$dir/keys.psk" memory 1M) || exit 1
tls="nbds+unix://alice@/?socket=$dir/tls.sock&tls-psk-file=$dir/keys.psk"
compare_export "nbdkit --tls=require (PSK)" "$tls"
"$nbd_info" --is tls "$tls"; [ $? = 0 ] || fail "TLS export: --is tls should be true"
"$nbd_info" --is tls "$data"; [ $? = 2 ] || fail "plain export: --is tls should be false (2)"

# 6. nbd-info's own names: block-status and extended-headers (not in nbdinfo 1.14).
"$nbd_info" --can block-status "$data"; [ $? = 0 ] || fail "--can block-status on nbdkit"
"$nbd_info" --can extended-headers "$data"
status=$?
# nbdkit learned NBD_OPT_EXTENDED_HEADERS in 1.36.
if nbdkit --dump-config | grep -qx 'version_minor=3[0-5]'; then
  [ "$status" = 2 ] || fail "--can extended-headers on an nbdkit without them: exit $status"
fi

# 7. --list: the same export names, and their details as --json gives them.
list=$(start_nbdkit list --filter=exportname memory 1M exportname=alpha exportname=beta \
  exportname-list=explicit exportdesc=fixed:Test) || exit 1
[ "$(nbdinfo --list --json "$list" | jq -c '[.exports[] | .["export-name"], .description]')" = \
  "$("$nbd_info" --list --json "$list" | jq -c '[.exports[] | .["export-name"], .description]')" ] ||
  fail "--list --json: export names or descriptions differ"
[ "$("$nbd_info" --list --json "$list" | jq -c '[.exports[] | .["export-size"]]')" = "[1048576,1048576]" ] ||
  fail "--list --json: each export's size"

# 8. Errors: exit codes as nbdinfo's, one line naming the bad value.
check_error() {  # check_error DESCRIPTION PATTERN ARGS...
  local description=$1 pattern=$2
  shift 2
  local their_status our_status output
  nbdinfo "$@" >/dev/null 2>&1
  their_status=$?
  output=$("$nbd_info" "$@" 2>&1 >/dev/null)
  our_status=$?
  [ "$their_status" = "$our_status" ] ||
    fail "$description: nbdinfo exit $their_status, nbd-info exit $our_status"
  grep -q -- "$pattern" <<<"$output" || fail "$description: message '$output' lacks '$pattern'"
}
check_error "unknown --can name" "unknown --can or --is option: bogus" --can bogus "$data"
check_error "unknown --is name" "unknown --can or --is option: sideways" --is sideways "$data"
check_error "--map of a context the server lacks" 'metadata context "qemu:nope"' \
  --map=qemu:nope "$data"
check_error "--totals without --map" "--totals" --totals "$data"
check_error "--size with --map" "together" --size --map "$data"
check_error "--can with no server" "nobody.sock" --can connect "nbd+unix:///?socket=$dir/nobody.sock"

[ "$failures" = 0 ] && echo "nbd-info and nbdinfo agree"
exit "$failures"
