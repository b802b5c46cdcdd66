#!/bin/bash
# Runs the C program against a real nbdkit (memory 64M) on a private Unix socket.
set -euo pipefail
program="$(dirname "$0")/c_program"
[ -x "$program" ] || program="$TEST_SRCDIR/$TEST_WORKSPACE/tests/capi/c_program"
nbdkit -U - memory 64M --run "'$program' \"\$uri\""
