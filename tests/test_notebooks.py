"""Executes the notebooks in notebooks/ (nbclient, a test-only dependency): against ../shared when
it is beside the checkout, else on a stand-in tree of the bundled sample X-rays."""
import os
import shutil

import pytest

import covidx
from covidx.data import sample_files

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "data", "cxr")
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, "notebooks")) if f.endswith(".ipynb"))


def stand_in_root(tmp_path):
    """<tmp>/work with <tmp>/shared/data/cxr laid out like ../shared, filled with the samples."""
    cxr = tmp_path / "shared" / "data" / "cxr"
    dirs = {"COVID-19": [cxr / "ieee8023-covid" / "COVID-19"] + [cxr / "covid19-radiography" / s / "COV19"
                                                                 for s in ("train", "test")],
            "Normal": [cxr / "covid19-radiography" / s / "Normal" for s in ("train", "test")]}
    for path, label in sample_files():
        for d in dirs[label]:
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, d / os.path.basename(path))
    (tmp_path / "work").mkdir()
    return str(tmp_path / "work")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    if covidx.model.default_model_path() is None:
        pytest.skip("no shipped model in this installation")
    root = REPO if os.path.isdir(SHARED) else stand_in_root(tmp_path)
    monkeypatch.setenv("COVIDX_NOTEBOOK_ROOT", root)
    nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
    nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
