"""Fuzzing of covidx's PyTorch file reader (the restricted unpickler, both torch.save layouts).

    python tests/fuzz/make_seeds.py torch CORPUS
    python tests/fuzz/fuzz_torch_files.py CORPUS -atheris_runs=20000 -timeout=10 -rss_limit_mb=1536"""
import atheris

with atheris.instrument_imports(include=["covidx"]):
    from covidx.formats import ModelFileError, torch_files

import harness


def load(path, data):
    torch_files.read(path, "zip" if data[:4] == b"PK\x03\x04" else "pickle")


if __name__ == "__main__":
    harness.main(harness.target(load, ModelFileError))
