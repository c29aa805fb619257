"""Coverage-guided fuzzing of covidx.load_model (atheris, libFuzzer's engine for Python).

Every input is written to a file and loaded. The only acceptable outcomes are a model or a
ValueError/TypeError whose message names the file; any other exception, a crash or a hang is a
bug. Seeds are real model files (covidx safetensors headers and, where the other loaders are
installed, Keras HDF5/.keras and PyTorch files), made by make_seeds.py.

    python tests/fuzz/make_seeds.py CORPUS
    python tests/fuzz/fuzz_model_files.py CORPUS -atheris_runs=20000 -max_len=65536
"""
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import covidx
    from covidx import formats, model, safetensors_io  # noqa: F401

PATH = os.path.join(tempfile.mkdtemp(prefix="covidx-fuzz-"), "input.bin")


def one_input(data):
    with open(PATH, "wb") as f:
        f.write(data)
    try:
        covidx.load_model(PATH)
    except (ValueError, TypeError) as e:
        if PATH not in str(e):
            raise AssertionError("error does not name the file: %r" % (e,)) from e
    except ImportError:
        pass  # an optional reader (h5py, ...) is not installed


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
