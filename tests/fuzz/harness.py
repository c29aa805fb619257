"""What the fuzz targets share: each input is written to one file and handed to a loader; the only
acceptable outcomes are a result or the loader's own error naming the file. Anything else (another
exception, a crash, a hang past libFuzzer's -timeout, memory past -rss_limit_mb) is a finding."""
import os
import sys
import tempfile

import atheris

PATH = os.path.join(tempfile.mkdtemp(prefix="covidx-fuzz-"), "input.bin")


def target(load, errors):
    """A libFuzzer callback: writes the input to PATH, calls load(PATH, data); an exception of a
    type in `errors` must name PATH."""

    def one_input(data):
        with open(PATH, "wb") as f:
            f.write(data)
        try:
            load(PATH, data)
        except errors as e:
            if PATH not in str(e):
                raise AssertionError("error does not name the file: %r" % (e,)) from e
        except ImportError:
            pass  # an optional reader (h5py, pydicom) is not installed

    return one_input


def main(one_input):
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
