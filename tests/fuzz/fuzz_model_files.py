"""Coverage-guided fuzzing of covidx.load_model (atheris, libFuzzer's engine for Python).

Every input is written to a file and loaded. The only acceptable outcomes are a model or a
ValueError/TypeError whose message names the file; any other exception, a crash, a hang or memory
past -rss_limit_mb is a bug. Seeds are real model files (covidx safetensors headers and, where the
other loaders are installed, Keras HDF5/.keras and PyTorch files), made by make_seeds.py.

    python tests/fuzz/make_seeds.py model_files CORPUS
    python tests/fuzz/fuzz_model_files.py CORPUS -atheris_runs=20000 -max_len=65536 -timeout=10 -rss_limit_mb=1536
"""
import atheris

with atheris.instrument_imports(include=["covidx"]):
    import covidx
    from covidx import formats, model, safetensors_io  # noqa: F401
    from covidx.formats import hdf5

import harness

harness.read_hdf5_in_this_process_too(hdf5)


def load(path, data):
    covidx.load_model(path)


if __name__ == "__main__":
    harness.main(harness.target(load, (ValueError, TypeError)))
