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


def read_hdf5_in_this_process_too(hdf5):
    """covidx reads an HDF5 file first in a forked child (killed after PROBE_SECONDS, its memory
    capped), and then reads it itself only if the child succeeded. Coverage is counted in this
    process alone, so for guidance the reader's error paths must run here too: a read that failed
    in the child is repeated here (hdf5.REPEAT_FAILURES), under the same absolute address-space
    cap as the child's (1 GB more than this process has now), so that what a file makes libhdf5
    allocate here mirrors what it did there and stays under -rss_limit_mb."""
    hdf5.PROBE_SECONDS = 3.0  # a file libhdf5 loops on is refused before libFuzzer's -timeout (10 s)
    hdf5.REPEAT_FAILURES = True
    hdf5.limit_memory(1 << 30)


def main(one_input):
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
