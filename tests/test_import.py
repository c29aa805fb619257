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
