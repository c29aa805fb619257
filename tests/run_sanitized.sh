#!/usr/bin/env bash
# Builds the C core with AddressSanitizer + UndefinedBehaviorSanitizer (any UB aborts) and runs
# the engine tests that need no PyTorch against it. Uses the environment made by tests/run.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/tests/env.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$venv/bin/pip" install -q --disable-pip-version-check 'setuptools>=77' numpy 'scipy-openblas32==0.3.34.481.3'
cp -r "$root/setup.py" "$root/pyproject.toml" "$root/README.md" "$root/LICENSE" "$root/csrc" "$root/covidx" "$work/"
rm -rf "$work"/covidx/*.so "$work/covidx/_libs"
# the packed GEMM kernels on their own, against plain loops: the emulated AVX-512, AVX512_BF16,
# AMX and int8 builds always, the real ones where this CPU has them (gemm_check says "skip" otherwise)
mapfile -t gemm_sources < <("$venv/bin/python" "$root/tests/c_sources.py" GEMM_SOURCES)  # setup.py's list
gcc -O1 -g -std=c11 -Wall -Wextra -Werror -fsanitize=address,undefined -fno-sanitize-recover=all -I "$root/csrc" \
    "$root/tests/gemm_check.c" "${gemm_sources[@]}" -lm -pthread -o "$work/gemm_check"
for kernel in $("$work/gemm_check" --list); do
    out=$(ASAN_OPTIONS=detect_leaks=1 "$work/gemm_check" "$kernel") || { echo "gemm_check $kernel: $out"; exit 1; }
    echo "gemm_check $kernel: $out"
done
# the Winograd transforms (AVX2 / baseline, AVX-512 where this CPU has it, the emulated build)
# against a plain loop and each other, several chunks of tiles
mapfile -t wino_sources < <("$venv/bin/python" "$root/tests/c_sources.py" WINOGRAD_SOURCES)
gcc -O1 -g -std=c11 -Wall -Wextra -Werror -fsanitize=address,undefined -fno-sanitize-recover=all -DWINO_CHUNK_BYTES=65536 \
    -I "$root/csrc" "$root/tests/winograd_check.c" "${wino_sources[@]}" "${gemm_sources[@]}" -lm -pthread -o "$work/winograd_check"
out=$(ASAN_OPTIONS=detect_leaks=1 "$work/winograd_check") || { echo "winograd_check: $out"; exit 1; }
echo "winograd_check: $out"
(cd "$work" && COVIDX_SANITIZE=1 "$venv/bin/python" setup.py -q build_ext --inplace >/dev/null)
cd "$work"
# libstdc++ too: a wheel that links it statically (matplotlib's ft2font) throws C++ exceptions that
# ASan's __cxa_throw interceptor cannot forward unless the shared libstdc++ is loaded first
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
PYTHONPATH="$work" "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests/test_engine.py" "$root/tests/test_model_files.py" \
    "$root/tests/test_modes.py" "$root/tests/test_unfamiliar.py" -k "not benchmark and not shipped"
