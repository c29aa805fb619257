#!/usr/bin/env bash
# The test command: builds covidx's wheel, installs it into a fresh virtual environment with the
# test dependencies, and runs the suite from outside the checkout, so what is tested is what users
# install. The environment lives outside the checkout (tests/env.sh). Extra arguments go to pytest.
#
#   bash tests/run.sh            the full suite (what CI runs)
#   bash tests/run.sh --quick    the quick tier for an edit-test loop: reuses the environment when
#                                it exists (only covidx's wheel is reinstalled) and leaves out the
#                                tests marked slow (tests/conftest.py lists them)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/tests/env.sh"
quick=0
if [ "${1:-}" = "--quick" ]; then
    quick=1
    shift
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ $quick = 0 ] || [ ! -x "$venv/bin/python" ]; then
    python3 -m venv --clear "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check wheel
    fresh=1
else
    fresh=0
fi
"$venv/bin/pip" wheel -q --no-deps -w "$work/dist" "$root"
if [ $fresh = 1 ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check "$work"/dist/covidx-*.whl 'torch==2.13.0' 'keras==3.15.1' scipy pytest h5py onnx onnxruntime pydicom 'dask[distributed]' pandas matplotlib nbclient nbformat ipykernel scikit-image
else
    "$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$work"/dist/covidx-*.whl
fi
cd "$work"
if [ $quick = 1 ]; then
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" "$root/tests" "$@"
else
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests" "$@"
fi
