#!/usr/bin/env bash
# Coverage-guided fuzzing of covidx.load_model (atheris) in the test venv made by tests/run.sh.
# Usage: bash tests/run_fuzz.sh [RUNS] [-- extra libFuzzer flags]; CI runs a short session.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${COVIDX_TEST_VENV:-$root/.venv-test}
runs=${1:-5000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$venv/bin/pip" install -q --disable-pip-version-check atheris
"$venv/bin/python" "$root/tests/fuzz/make_seeds.py" "$work/corpus" > /dev/null
cd "$work"
"$venv/bin/python" "$root/tests/fuzz/fuzz_model_files.py" "$work/corpus" -atheris_runs="$runs" -max_len=65536 \
    -timeout=20 -rss_limit_mb=4096 2>&1 | tail -4
echo "fuzz: $runs runs, no crash"
