#!/usr/bin/env bash
# Runs every test: installs what is missing (tools/setup.sh), then the whole suite with the
# normal build, then again under AddressSanitizer+UBSan and ThreadSanitizer.
# NBDRING_TEST_CONFIGS="default asan" limits the configurations (default: all three).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
configs=${NBDRING_TEST_CONFIGS:-"default asan tsan"}
for config in $configs; do
  echo "=== bazel test //... (${config}) ==="
  if [[ $config == default ]]; then
    bazel test //...
  else
    bazel test --config="$config" //...
  fi
done
