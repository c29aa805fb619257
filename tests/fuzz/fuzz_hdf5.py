"""Fuzzing of covidx's Keras HDF5 reader (.h5 and .weights.h5, through h5py and libhdf5).

    python tests/fuzz/make_seeds.py hdf5 CORPUS
    python tests/fuzz/fuzz_hdf5.py CORPUS -atheris_runs=20000 -timeout=10 -rss_limit_mb=1536"""
import atheris

with atheris.instrument_imports(include=["covidx"]):
    from covidx.formats import ModelFileError, hdf5, keras_files

import harness

harness.read_hdf5_in_this_process_too(hdf5)


def load(path, data):
    keras_files.read_h5(path, path)


if __name__ == "__main__":
    harness.main(harness.target(load, ModelFileError))
