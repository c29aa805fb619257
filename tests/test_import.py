"""Importing covidx from a source checkout that has no built engine (the checkout is the current
directory, so it shadows the installed package) fails with a message that says so and what to do."""
import os
import shutil
import subprocess
import sys

import covidx


def test_source_tree_without_engine_says_why(tmp_path):
    installed = os.path.dirname(covidx.__file__)
    checkout = tmp_path / "checkout"
    shutil.copytree(installed, checkout / "covidx",
                    ignore=shutil.ignore_patterns("_core*", "_libs", "weights", "__pycache__"))
    (checkout / "setup.py").write_text("# stand-in for the checkout's setup.py\n")
    run = subprocess.run([sys.executable, "-c", "import covidx"], cwd=checkout, capture_output=True, text=True)
    assert run.returncode != 0
    assert "ImportError: covidx was imported from its source tree" in run.stderr
    assert str(checkout / "covidx") in run.stderr
    assert "change to another directory" in run.stderr


def test_installed_package_imports_from_elsewhere(tmp_path):
    # The same command from a folder without a covidx/ in it finds the installed engine.
    run = subprocess.run([sys.executable, "-c", "import covidx, sys; print(covidx._core.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(os.path.dirname(covidx.__file__))


def test_the_package_docstring_example_runs():
    """The first example in help(covidx) runs as written (the shipped model on the bundled samples)."""
    if covidx.model.default_model_path() is None:
        import pytest

        pytest.skip("no shipped model in this installation")
    lines = covidx.__doc__.split("::\n", 1)[1].split("\n\n")
    code = "\n".join(line[4:] for line in "\n\n".join(lines[:2]).splitlines())
    scope = {}
    exec(compile(code, "covidx.__doc__", "exec"), scope)
    assert scope["probabilities"].shape == (8, 2) and 0.5 < scope["accuracy"] <= 1.0
    assert "(path None) loads the shipped model" in covidx.load_model.__doc__
    for method in ("predict_on_batch", "set_weights", "count_params", "get_layer"):
        assert getattr(covidx.Model, method).__doc__, method
