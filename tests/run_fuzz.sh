#!/usr/bin/env bash
# Coverage-guided fuzzing (atheris) of covidx's loaders, in the test venv made by tests/run.sh:
# model files through load_model, PyTorch files, Keras HDF5, and image and DICOM files through
# load_img. Every input has a time limit (-timeout) and a memory limit (-rss_limit_mb), so that slow
# paths and unbounded allocations are findings, as crashes and unexpected exceptions are.
# Usage: bash tests/run_fuzz.sh [SECONDS per target] [extra libFuzzer flags]; CI runs a short session.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/tests/env.sh"
python=${COVIDX_FUZZ_PYTHON:-$venv/bin/python}
seconds=${1:-60}
shift || true
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -n "${COVIDX_FUZZ_PYTHON:-}" ] || "$venv/bin/pip" install -q --disable-pip-version-check atheris
cd "$work"

fuzz() {  # fuzz TARGET CORPUS [libFuzzer flags]
    local target=$1 corpus=$2
    shift 2
    "$python" "$root/tests/fuzz/make_seeds.py" "$corpus" "$work/$corpus" > /dev/null
    if ! "$python" "$root/tests/fuzz/$target" "$work/$corpus" -max_total_time="$seconds" -max_len=65536 \
            -timeout=10 -rss_limit_mb=1536 "$@" > "$work/$corpus.log" 2>&1; then
        tail -60 "$work/$corpus.log"
        # the input itself, so that a finding in a throw-away checkout can be replayed elsewhere
        for f in "$work"/crash-* "$work"/oom-* "$work"/timeout-* "$work"/leak-* "$work"/slow-unit-*; do
            [ -f "$f" ] && echo "fuzz: input $(basename "$f") (base64): $(base64 -w0 "$f")"
        done
        echo "fuzz: $target on the $corpus corpus: FINDING (above)"
        return 1
    fi
    echo "fuzz: $target on the $corpus corpus: $(grep -Eo 'Done [0-9]+ runs' "$work/$corpus.log" | tail -1)" \
         "in $seconds s, no finding"
}

fuzz fuzz_model_files.py model_files "$@"
fuzz fuzz_torch_files.py torch "$@"
fuzz fuzz_hdf5.py hdf5 "$@"
fuzz fuzz_images.py images "$@"
fuzz fuzz_images.py dicom "$@"
