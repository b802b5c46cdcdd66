#!/usr/bin/env bash
# Installs every Debian package nbdring needs to build, test and benchmark.
# Idempotent: packages already present are skipped, so a second run costs a dpkg query.
# Runs as root (or with sudo available) on Debian 12.
set -euo pipefail

packages=(
  # Build toolchain and libraries (all wired into Bazel from /usr, see WORKSPACE).
  bazel-bootstrap g++ liburing-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev pkg-config libgnutls28-dev
  # TLS test credentials: certtool and psktool.
  gnutls-bin
  # Fuzzing: clang with libFuzzer and the sanitizer runtimes.
  clang libclang-rt-14-dev
  # Real NBD peers the tests start themselves, and the reference client we measure against.
  nbdkit qemu-utils nbd-server libnbd-dev libnbd-bin fio
  # Comparing JSON output in the tools tests.
  jq
  # nbd-bench --plot draws sweeps (throughput and p99 against iodepth) with gnuplot; -nox has
  # the svg and pngcairo terminals without pulling in X11/Qt.
  gnuplot-nox
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup.sh: not root and no sudo; install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "setup.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
