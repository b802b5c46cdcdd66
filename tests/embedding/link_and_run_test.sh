#!/usr/bin/env bash
# Installs nbdring into a fresh prefix with the install script (what `bazel run //:install --
# PREFIX` runs), then builds a C++ program (tests/embedding/app.cc) and a C11 program
# (tests/capi/c_program.c) outside Bazel with nothing but the compiler and
# `pkg-config --cflags --libs nbdring`, and runs both against a captive nbdkit.
# Arguments are extra compiler flags (the sanitizer the archive was built with).
set -euo pipefail
root="${TEST_SRCDIR}/${TEST_WORKSPACE}"
work=$(mktemp -d /tmp/nbdr-embed-XXXXXX)
trap 'rm -rf "$work"' EXIT
"$root/tools/install.sh" "$work/prefix" >/dev/null
export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig"
flags=$(pkg-config --cflags --libs nbdring)
g++ -std=c++20 -O2 "$@" "$root/tests/embedding/app.cc" $flags -o "$work/app_cc"
gcc -std=c11 -D_POSIX_C_SOURCE=200809L -O2 "$@" "$root/tests/capi/c_program.c" $flags \
  -o "$work/app_c"
nbdkit -U "$work/cc.sock" memory 4M --run "'$work/app_cc' \"\$uri\""
nbdkit -U "$work/c.sock" memory 64M --run "'$work/app_c' \"\$uri\""
echo "C++ and C programs built with pkg-config against the installed prefix ran"
