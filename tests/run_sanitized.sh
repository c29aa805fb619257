#!/usr/bin/env bash
# Builds the C core with AddressSanitizer + UndefinedBehaviorSanitizer (any UB aborts) and runs
# the engine tests that need no PyTorch against it. Uses the environment made by tests/run.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${COVIDX_TEST_VENV:-$root/.venv-test}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$venv/bin/pip" install -q --disable-pip-version-check 'setuptools>=77' numpy 'scipy-openblas32==0.3.34.481.3'
cp -r "$root/setup.py" "$root/pyproject.toml" "$root/README.md" "$root/LICENSE" "$root/csrc" "$root/covidx" "$work/"
rm -rf "$work"/covidx/*.so "$work/covidx/_libs"
# the packed GEMM kernel on its own, against plain loops
gcc -O1 -g -std=c11 -Wall -Wextra -Werror -fsanitize=address,undefined -fno-sanitize-recover=all -I "$root/csrc" \
    "$root/tests/gemm_check.c" "$root/csrc/gemm.c" -lm -o "$work/gemm_check"
ASAN_OPTIONS=detect_leaks=1 "$work/gemm_check"
(cd "$work" && COVIDX_SANITIZE=1 "$venv/bin/python" setup.py -q build_ext --inplace >/dev/null)
cd "$work"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
PYTHONPATH="$work" "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests/test_engine.py" "$root/tests/test_model_files.py" \
    "$root/tests/test_modes.py" "$root/tests/test_unfamiliar.py" -k "not benchmark and not shipped"
