"""The GEMM dispatch table (csrc/gemm_dispatch.c) is the only list of kernels: Python's view of it
(covidx._config) is what _core reports, row for row, and what the table says agrees with what
COVIDX_GEMM and the engine do. Quick: small models on 32x32 images, the emulated kernels at most."""
import os
import subprocess
import sys

import numpy as np
import pytest

import covidx
from covidx import _config, _core
from covidx.applications.resnet50 import ResNet50

ROWS = _core.gemm_kernel_table()
NAMES = [r["name"] for r in ROWS]


def test_python_reads_the_c_table():
    assert _config.kernel_table() == ROWS
    assert len(set(NAMES)) == len(NAMES) and "openblas" in NAMES
    for r in ROWS:
        assert set(r) == {"name", "precision", "about", "emulated", "runs", "covidx_gemm"}
        assert _config.kernel_precision(r["name"]) == r["precision"]
        assert _config.kernel_description(r["name"]) == r["about"]
        if r["emulated"]:  # plain C: runs on every CPU, and COVIDX_GEMM can select it
            assert r["runs"] and r["covidx_gemm"] and r["name"].endswith("-emu")
    assert _config.kernel_precision("no-such-kernel") is None
    precisions = _config.precisions()
    assert precisions[0] == "fp32" and set(precisions) == {r["precision"] for r in ROWS}
    assert _config.gemm_choices() == ("auto",) + tuple(r["name"] for r in ROWS if r["covidx_gemm"])


def test_every_precision_has_a_kernel_choice_and_fp32_runs_here(monkeypatch):
    monkeypatch.delenv("COVIDX_GEMM", raising=False)
    chosen = _core.gemm_kernels()
    for p in _config.precisions():
        assert p in chosen, "gemm_kernels() names no kernel for precision %r" % p
        assert chosen[p] in NAMES and next(r for r in ROWS if r["name"] == chosen[p])["runs"]
    assert _config.kernel_precision(chosen["fp32"]) == "fp32"


@pytest.mark.parametrize("row", [r for r in ROWS if r["emulated"]], ids=lambda r: r["name"])
def test_covidx_gemm_selects_each_emulated_kernel_for_its_precision(monkeypatch, row):
    monkeypatch.setenv("COVIDX_GEMM", row["name"])
    assert _core.gemm_kernels()[row["precision"]] == row["name"]
    assert covidx.config()["warning"] is None or "COVIDX_GEMM" not in covidx.config()["warning"]


def test_covidx_gemm_names_a_ceiling_for_the_real_kernels(monkeypatch):
    monkeypatch.delenv("COVIDX_GEMM", raising=False)
    unlimited = _core.gemm_kernels()
    for r in ROWS:
        if r["emulated"]:
            continue
        monkeypatch.setenv("COVIDX_GEMM", r["name"])
        chosen = _core.gemm_kernels()
        if not r["covidx_gemm"]:  # not a COVIDX_GEMM value: ignored, with a warning
            assert chosen == unlimited and "is not one of" in covidx.config()["warning"]
        elif r["precision"] == "fp32" and r["runs"]:  # the fastest fp32 kernel it allows is itself
            assert chosen["fp32"] == r["name"]
        elif r["precision"] != "fp32":  # a ceiling above every fp32 kernel
            assert chosen["fp32"] == unlimited["fp32"]
    monkeypatch.setenv("COVIDX_GEMM", "fastest")
    assert _core.gemm_kernels() == unlimited and "'fastest' is not one of" in covidx.config()["warning"]


def test_a_kernel_that_does_not_run_here_is_never_chosen(monkeypatch):
    for r in ROWS:
        if not r["runs"]:
            monkeypatch.setenv("COVIDX_GEMM", r["name"])
            assert r["name"] not in _core.gemm_kernels().values()


def test_model_precisions_follow_the_table(monkeypatch):
    """Each precision of the table is accepted by set_precision and, on its emulated kernel, runs
    in that precision (precision_info reads the table), with outputs that are not fp32's bits;
    anything else is refused, naming the accepted ones."""
    x = np.random.default_rng(0).normal(0, 60, (1, 32, 32, 3)).astype(np.float32)
    m = ResNet50(weights=None, include_top=False, pooling="avg", seed=2)
    fp32 = m.features(x)
    for p in _config.precisions():
        emulated = [r["name"] for r in ROWS if r["emulated"] and r["precision"] == p]
        if not emulated:
            continue
        monkeypatch.setenv("COVIDX_GEMM", emulated[0])
        if p == "int8" and m.int8_calibration is None:  # int8 needs its input scales first
            m.calibrate_int8(x)
        m.set_precision(p)
        info = m.precision_info()
        assert info == {"precision": p, "running": p, "kernel": emulated[0], "note": None}
        out = m.features(x)
        if p == "fp32":
            np.testing.assert_allclose(out, fp32, rtol=1e-5, atol=1e-5 * np.abs(fp32).max())
        else:
            assert not np.array_equal(out, fp32)
            assert np.abs(out - fp32).max() < 0.05 * np.abs(fp32).max()
    with pytest.raises(ValueError) as e:
        m.set_precision("fp8")
    for p in _config.precisions():
        assert repr(p) in str(e.value)


def test_cli_offers_the_tables_precisions():
    run = subprocess.run([sys.executable, "-m", "covidx", "predict", "--help"], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "{%s}" % ",".join(_config.precisions()) in run.stdout.replace("\n", "").replace(" ", "")
