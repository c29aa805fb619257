"""The README's Keras notebook example, run as written (taken from README.md) on a fresh
installation's data, the bundled samples: its printed lines are the ones the README shows."""
import contextlib
import io
import os
import re

import numpy as np
import pytest

import covidx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def readme_blocks(section):
    """The fenced blocks of a README section, in order, as (language, text)."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    part = text.split("## " + section + "\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w*)\n(.*?)```", part, re.S)


def test_keras_notebook_example_runs_as_shown(monkeypatch, tmp_path):
    if covidx.model.default_model_path() is None:
        pytest.skip("this installation has no shipped model (the example loads it)")
    blocks = readme_blocks("A Keras notebook, on covidx")
    code, shown = blocks[0][1], blocks[1][1]
    assert blocks[0][0] == "python" and "../shared" not in code
    monkeypatch.delenv("COVIDX_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no data beside the working directory
    out, scope = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), scope)
    printed = ANSI.sub("", out.getvalue())
    lines = [part.rstrip(" ") for line in printed.split("\n") for part in [line.replace("\b", "").split("\r")[-1]]]
    lines = [line for line in lines if line]
    expected = shown.strip("\n").split("\n")
    assert len(lines) == len(expected), (lines, expected)
    for got, want in zip(lines, expected):
        pattern = re.escape(want).replace(r"\.\.\.", ".+?")
        assert re.fullmatch(pattern, got), (got, want)
    loss, acc = scope["Testresults2"]
    model, it = scope["model"], scope["test_generator2"]
    ordered = it.image_data_generator.flow_from_directory(it.directory, target_size=(224, 224), shuffle=False,
                                                          class_mode=None)
    p = model.predict(ordered, verbose=0)
    labels = np.array([0 if "COVID" in f else 1 for f in ordered.filenames])  # COVID-19 -> COV19, Normal -> Normal
    assert acc == pytest.approx(float(np.mean(np.argmax(p, axis=1) == labels)), abs=1e-6)
