"""Sample chest X-rays bundled with covidx (permissive licences; see samples/ATTRIBUTION.csv), and
the data folder the examples and notebooks read.

    from covidx.data import data_dir, samples_dir
    samples_dir()                        # the 8 bundled X-rays: COVID-19/ and Normal/ (flow_from_directory reads it)
    data_dir("covid19-radiography", "test")   # $COVIDX_DATA/covid19-radiography/test, else samples_dir()

Set COVIDX_DATA to your data folder (for the articles' data: the folder holding
covid19-radiography/{train,test}/{COV19,Normal} and ieee8023-covid/COVID-19); without it the
examples run on the bundled samples."""
import csv
import os

SAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")
DATA_ENV = "COVIDX_DATA"


def samples_dir():
    """The folder of the bundled sample X-rays, one sub-folder per class (COVID-19, Normal)."""
    return SAMPLES_DIR


def data_dir(*parts):
    """The data folder `parts` under $COVIDX_DATA when that variable is set (an error naming the
    folder when it is not there), else the bundled samples (samples_dir(); `parts` are then not
    used), so that examples written against real data run on any installation."""
    root = os.environ.get(DATA_ENV)
    if not root:
        return SAMPLES_DIR
    path = os.path.join(os.path.expanduser(root), *parts)
    if not os.path.isdir(path):
        raise FileNotFoundError("%s=%s, but it has no folder %s (unset %s to use the bundled samples)"
                                % (DATA_ENV, root, os.path.join(*parts) if parts else ".", DATA_ENV))
    return path


def sample_files():
    """[(path, label)] for the bundled sample X-rays, sorted by path."""
    with open(os.path.join(SAMPLES_DIR, "ATTRIBUTION.csv"), newline="") as f:
        rows = [(os.path.join(SAMPLES_DIR, r["path"]), r["label"]) for r in csv.DictReader(f)]
    return sorted(rows)
