#!/usr/bin/env bash
# valgrind memcheck of a small predict on the C core (run after tests/run.sh, which makes the venv).
# Errors inside the C core (csrc/) fail the run; CPython's and OpenBLAS's own pool allocations are
# not errors. Needs valgrind (apt-get install valgrind).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/tests/env.sh"
if ! command -v valgrind > /dev/null; then
    (apt-get update -qq && apt-get install -y -qq valgrind) > /dev/null 2>&1 || { echo "valgrind: not installed, skipped"; exit 0; }
fi
log=$(mktemp)
cd "$(mktemp -d)"
PYTHONMALLOC=malloc valgrind --tool=memcheck --error-exitcode=0 --leak-check=full --show-leak-kinds=definite \
    --errors-for-leak-kinds=definite --num-callers=30 --log-file="$log" \
    "$venv/bin/python" "$root/tests/tools/valgrind_predict.py"
errors=$(grep -E "ERROR SUMMARY" "$log" | tail -1)
echo "$errors"
# Any invalid read/write, uninitialised use or definite leak whose stack passes through the C core:
if grep -B2 -A30 -E "Invalid (read|write)|uninitialised|definitely lost" "$log" | grep -q "_core\."; then
    grep -B2 -A30 -E "Invalid (read|write)|uninitialised|definitely lost" "$log" | head -80
    echo "valgrind: errors in covidx's C core" >&2
    exit 1
fi
echo "valgrind: no errors in covidx's C core"
