#!/usr/bin/env bash
# The test command: builds covidx's wheel, installs it into a fresh virtual environment with the
# test dependencies, and runs the suite from outside the checkout, so what is tested is what users
# install. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${COVIDX_TEST_VENV:-$root/.venv-test}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv --clear "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check wheel
"$venv/bin/pip" wheel -q --no-deps -w "$work/dist" "$root"
"$venv/bin/pip" install -q --disable-pip-version-check "$work"/dist/covidx-*.whl 'torch==2.13.0' 'keras==3.15.1' scipy pytest h5py onnx onnxruntime pydicom 'dask[distributed]' pandas matplotlib nbclient nbformat ipykernel scikit-image
cd "$work"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests" "$@"
