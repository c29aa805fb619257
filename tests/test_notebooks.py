"""Executes the notebooks in notebooks/ (nbclient, a test-only dependency) as a fresh clone runs
them: without $COVIDX_DATA, on the sample X-rays bundled with covidx, and without ../shared."""
import os

import pytest

import covidx

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, "notebooks")) if f.endswith(".ipynb"))


def figure_outputs(nb):
    """The outputs of cells whose value is a matplotlib Figure."""
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "execute_result" and
            str(o.get("data", {}).get("text/plain", "")).startswith("<Figure size")]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, monkeypatch):
    if covidx.model.default_model_path() is None:
        pytest.skip("no shipped model in this installation")
    monkeypatch.delenv("COVIDX_DATA", raising=False)  # the bundled samples, as in a fresh clone
    monkeypatch.delenv("COVIDX_NOTEBOOK_ROOT", raising=False)
    nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "../shared" not in source  # the data comes from covidx.data.data_dir
    nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    for output in figure_outputs(nb):  # figures show as pictures, not as '<Figure size ...>'
        assert "image/png" in output["data"], output["data"]["text/plain"]
    if name == "explain_and_report.ipynb":
        assert len(figure_outputs(nb)) == 4


def test_committed_figures_are_pictures():
    """The committed explain_and_report notebook shows its plots (executed with the same code)."""
    nb = nbformat.read(os.path.join(REPO, "notebooks", "explain_and_report.ipynb"), as_version=4)
    figures = figure_outputs(nb)
    assert len(figures) == 4 and all("image/png" in o["data"] for o in figures)
