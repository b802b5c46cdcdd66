#!/usr/bin/env bash
# Installs nbdring for embedders who build outside Bazel:
#
#   bazel run //:install -- PREFIX
#
# puts PREFIX/include/nbdring.h (the C API), PREFIX/include/nbdring/*.h (the C++ API) and the
# protocol headers they include (PREFIX/include/nbd/), PREFIX/lib/libnbdring.a, and
# PREFIX/lib/pkgconfig/nbdring.pc, so that
#
#   cc  -std=c11   app.c  $(pkg-config --cflags --libs nbdring)
#   c++ -std=c++20 app.cc $(pkg-config --cflags --libs nbdring)
#
# link (with PKG_CONFIG_PATH=PREFIX/lib/pkgconfig when PREFIX is not a system prefix).
# A relative PREFIX is taken from the directory `bazel run` was called in.
set -euo pipefail
prefix=${1:?usage: bazel run //:install -- PREFIX}
case "$prefix" in
  /*) ;;
  *) prefix="${BUILD_WORKING_DIRECTORY:-$PWD}/$prefix" ;;
esac
# The built files: this script's runfiles (bazel run, or a test that lists //:install as data).
if [ -n "${TEST_SRCDIR:-}" ]; then
  root="$TEST_SRCDIR/${TEST_WORKSPACE:-nbdring}"
elif [ -d "$0.runfiles/nbdring" ]; then
  root="$0.runfiles/nbdring"
else
  root="$PWD"
fi
[ -f "$root/libnbdring.a" ] || { echo "install: libnbdring.a not found under $root" >&2; exit 1; }

# mkdir and cp, not install(1): under `bazel run //:install` this very script is named
# "install", which a PATH with an empty entry would find first.
mkdir -p "$prefix/include/nbdring" "$prefix/include/nbd" "$prefix/lib/pkgconfig"
cp -f "$root/capi/include/nbdring.h" "$prefix/include/"
cp -f "$root"/runtime/include/nbdring/*.h "$prefix/include/nbdring/"
cp -f "$root"/nbd/{export_info,uri,wire}.h "$prefix/include/nbd/"
cp -f "$root/libnbdring.a" "$prefix/lib/"
chmod 0644 "$prefix"/include/nbdring.h "$prefix"/include/nbdring/*.h "$prefix"/include/nbd/*.h \
  "$prefix/lib/libnbdring.a"
# The archive is static, so what it links against is listed in Requires/Libs (not the
# .private fields): a plain `pkg-config --libs nbdring` is enough. The C++ runtime is named
# for C programs.
cat >"$prefix/lib/pkgconfig/nbdring.pc" <<PC
prefix=$prefix
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: nbdring
Description: NBD client runtime on io_uring (C and C++ APIs)
Version: 0.1.0
Requires: liburing gnutls absl_statusor absl_status absl_strings absl_str_format absl_time absl_cord absl_synchronization absl_hash absl_raw_hash_set
Cflags: -I\${includedir}
Libs: -L\${libdir} -lnbdring -lstdc++ -lm -pthread
PC
echo "installed nbdring into $prefix (pkg-config: $prefix/lib/pkgconfig/nbdring.pc)"
