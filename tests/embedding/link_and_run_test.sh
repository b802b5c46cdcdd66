#!/usr/bin/env bash
# Links tests/embedding/app.cc against libnbdring.a with plain g++ (the line
# docs/embedding.md shows), then runs it against a captive nbdkit. Arguments are extra
# compiler flags (the sanitizer the archive was built with).
set -euo pipefail
root="${TEST_SRCDIR}/${TEST_WORKSPACE}"
work=$(mktemp -d /tmp/nbdr-embed-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/include/nbdring" "$work/include/nbd"
cp "$root"/runtime/include/nbdring/*.h "$work/include/nbdring/"
cp "$root"/nbd/{export_info,uri,wire}.h "$work/include/nbd/"
absl_libs="-labsl_statusor -labsl_status -labsl_cord -labsl_cordz_info -labsl_cord_internal \
  -labsl_cordz_functions -labsl_cordz_handle -labsl_str_format_internal -labsl_strings \
  -labsl_strings_internal -labsl_time -labsl_time_zone -labsl_int128 -labsl_raw_logging_internal \
  -labsl_throw_delegate -labsl_base -labsl_spinlock_wait -labsl_bad_optional_access"
g++ -std=c++20 -O2 "$@" -I"$work/include" "$root/tests/embedding/app.cc" "$root/libnbdring.a" \
  -luring $absl_libs -pthread -o "$work/app"
nbdkit -U "$work/sock" memory 4M --run "'$work/app' \"\$uri\""
