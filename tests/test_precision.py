"""The GEMM kernel dispatch and the bf16 mode, through the engine (the kernels on their own are
checked by tests/test_gemm.py):

- which kernel each precision uses, and COVIDX_GEMM forcing a lower one;
- the AVX-512 fp32 kernel, real and emulated, against the plain C layers and, bit for bit, the
  AVX2 kernel;
- the bf16 mode on the emulated AMX kernel (and AVX512_BF16, real and emulated) close to fp32 on
  random weights and inputs, bitwise the same for any thread count, with a clear fallback to fp32
  (a warning, precision_info, show_config) where no bf16 kernel runs;
- load_model / ResNet50 / set_precision / the CLI's --precision.

The emulated kernels are slow (plain C), so their shapes are small: 32x32 and 48x48 images."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import covidx
from covidx import _core
from covidx.applications.resnet50 import ResNet50

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = _core.cpu_info()


def images(n, size, seed=0):
    return np.random.default_rng(seed).normal(0, 60, (n, size, size, 3)).astype(np.float32)


def backbone(seed=3):
    return ResNet50(weights=None, include_top=False, pooling=None, seed=seed)


def test_kernels_per_precision_and_forcing(monkeypatch):
    monkeypatch.delenv("COVIDX_GEMM", raising=False)
    k = _core.gemm_kernels()
    want = "avx512" if CPU["avx512f"] else "avx2" if CPU["avx2"] and CPU["fma"] else "openblas"
    assert k["fp32"] == want
    if CPU["amx_bf16"] and CPU["amx_tile"] and CPU["amx_palette"] and CPU["avx512f"]:
        assert k["bf16"] == "amx" and k["bf16_note"] is None
    elif CPU["avx512_bf16"]:
        assert k["bf16"] == "avx512bf16" and "AMX" in k["bf16_note"]
    else:
        assert k["bf16"] == want and "fp32" in k["bf16_note"]
    monkeypatch.setenv("COVIDX_GEMM", "openblas")
    assert _core.gemm_kernels()["fp32"] == "openblas" and not _core.blas_info()["packed_gemm"]
    if CPU["avx2"] and CPU["fma"]:
        monkeypatch.setenv("COVIDX_GEMM", "avx2")
        k = _core.gemm_kernels()
        assert k["fp32"] == "avx2" and k["bf16"] == "avx2" and "fp32" in k["bf16_note"]
    if CPU["avx512f"]:
        monkeypatch.setenv("COVIDX_GEMM", "avx512")
        k = _core.gemm_kernels()
        assert k["fp32"] == "avx512" and k["bf16"] in ("avx512bf16", "avx512")
    monkeypatch.setenv("COVIDX_GEMM", "amx-emu")
    assert _core.gemm_kernels()["bf16"] == "amx-emu"
    monkeypatch.setenv("COVIDX_GEMM", "avx512-emu")
    assert _core.gemm_kernels()["fp32"] == "avx512-emu"


def test_show_config_names_the_kernel_of_each_precision(monkeypatch, capsys):
    monkeypatch.setenv("COVIDX_GEMM", "avx2")
    covidx.show_config()
    out = capsys.readouterr().out
    assert "fp32: " in out and "bf16 (precision='bf16')" in out and "COVIDX_GEMM:  avx2" in out
    c = covidx.config()
    assert set(c["kernels"]) == {"fp32", "bf16", "int8"} and c["covidx_gemm"] == "avx2"
    monkeypatch.setenv("COVIDX_GEMM", "fastest")
    assert "COVIDX_GEMM='fastest' is not one of" in covidx.config()["warning"]


def test_avx512_kernel_matches_avx2_and_plain_loops(monkeypatch):
    x = images(2, 48)
    monkeypatch.setenv("COVIDX_GEMM", "avx512-emu")
    emu = backbone()
    fe = emu.feature_map(x)
    ref = emu._engine.forward(x, output=2, reference=True)
    scale = np.abs(ref).max()
    assert np.abs(fe - ref).max() / scale < 2e-6
    if CPU["avx2"] and CPU["fma"]:
        # each element is one chain of FMAs over k in the same order in both kernels (the blocks
        # of k only pass partial sums through C, exactly), then the same epilogue: the same bits
        monkeypatch.setenv("COVIDX_GEMM", "avx2")
        assert _core.gemm_kernels()["fp32"] == "avx2"
        fa = backbone().feature_map(x)
        np.testing.assert_array_equal(fa, fe)
    if not CPU["avx512f"]:
        pytest.skip("this CPU has no AVX-512F: the real AVX-512 kernel was not run (its emulated build was)")
    monkeypatch.delenv("COVIDX_GEMM")
    assert _core.gemm_kernels()["fp32"] == "avx512"
    fn = backbone().feature_map(x)
    np.testing.assert_array_equal(fn, fe)  # the real kernel and its emulated build: the same bits


def feature_maps_on_1_and_2_threads(m, x):
    """m's feature maps of x computed with 1 engine thread, then with 2 (the count restored after)."""
    try:
        covidx.set_num_threads(1)
        one = m.feature_map(x)
        covidx.set_num_threads(2)
        return one, m.feature_map(x)
    finally:
        covidx.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def test_fp32_results_do_not_depend_on_threads():
    x = images(2, 64, seed=4)
    m = backbone()
    np.testing.assert_array_equal(*feature_maps_on_1_and_2_threads(m, x))


def test_bf16_on_emulated_amx_is_close_to_fp32(monkeypatch):
    """The shipped accuracy bar (README) is measured on real X-rays by benchmarks/precision_accuracy.py;
    here random weights and inputs: the feature map within 2% of its scale, probabilities within
    0.02, the same predicted class for every image."""
    x = images(3, 32, seed=1)
    model = ResNet50(weights=None, classes=3, seed=11, input_shape=(32, 32, 3))
    p32 = model.predict(x, verbose=0)
    f32 = model.feature_map(x)
    ref = model._engine.forward(x, output=2, reference=True)
    monkeypatch.setenv("COVIDX_GEMM", "amx-emu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the emulated AMX kernel is a bf16 kernel: no fallback warning
        model.set_precision("bf16")
    info = model.precision_info()
    assert info == {"precision": "bf16", "running": "bf16", "kernel": "amx-emu", "note": None}
    p16 = model.predict(x, verbose=0)
    f16 = model._engine.forward(x, output=2)
    scale = np.abs(ref).max()
    err = np.abs(f16 - ref).max() / scale
    assert 0 < err < 0.02  # bf16 really ran (not bitwise fp32), and stayed close
    assert np.abs(f32 - ref).max() / scale < 2e-6
    assert np.abs(p16 - p32).max() < 0.02
    assert (p16.argmax(axis=1) == p32.argmax(axis=1)).all()
    model.set_precision("fp32")  # back: exactly the fp32 results again
    assert model.precision_info()["running"] == "fp32"
    np.testing.assert_array_equal(model.predict(x, verbose=0), p32)


def test_bf16_kernels_agree(monkeypatch):
    """AVX512_BF16 (its emulated build, and the real one where the CPU has it) sums in another
    order than AMX: close to the emulated AMX kernel, and real = emulated bit for bit."""
    x = images(1, 32, seed=2)
    m = backbone(seed=5)
    ref = m._engine.forward(x, output=2, reference=True)
    out = {}
    for kernel in ("amx-emu", "avx512bf16-emu"):
        monkeypatch.setenv("COVIDX_GEMM", kernel)
        m.set_precision("bf16")
        assert m.precision_info()["kernel"] == kernel
        out[kernel] = m.feature_map(x)
    scale = np.abs(ref).max()
    for v in out.values():
        assert np.abs(v - ref).max() / scale < 0.02
    assert np.abs(out["amx-emu"] - out["avx512bf16-emu"]).max() / scale < 0.02
    if not CPU["avx512_bf16"]:
        pytest.skip("this CPU has no AVX512_BF16: the real kernel was not run (its emulated build was)")
    monkeypatch.delenv("COVIDX_GEMM")
    m.set_precision("bf16")
    if m.precision_info()["kernel"] != "avx512bf16":
        pytest.skip("bf16 runs on %s here" % m.precision_info()["kernel"])
    np.testing.assert_array_equal(m.feature_map(x), out["avx512bf16-emu"])


def test_bf16_results_do_not_depend_on_threads(monkeypatch):
    fast = CPU["avx512_bf16"] or (CPU["amx_bf16"] and CPU["amx_tile"])
    if not fast:
        monkeypatch.setenv("COVIDX_GEMM", "amx-emu")
    x = images(2, 32 if not fast else 64, seed=6)
    m = backbone(seed=6)
    m.set_precision("bf16")
    assert m.precision_info()["running"] == "bf16"
    np.testing.assert_array_equal(*feature_maps_on_1_and_2_threads(m, x))


def test_bf16_without_a_bf16_kernel_warns_and_runs_fp32(monkeypatch):
    monkeypatch.setenv("COVIDX_GEMM", "avx2" if CPU["avx2"] and CPU["fma"] else "openblas")
    x = images(1, 32, seed=3)
    m = backbone(seed=8)
    want = m.feature_map(x)
    with pytest.warns(RuntimeWarning, match="runs in fp32"):
        m.set_precision("bf16")
    info = m.precision_info()
    assert info["precision"] == "bf16" and info["running"] == "fp32" and "fp32" in info["note"]
    np.testing.assert_array_equal(m.feature_map(x), want)


def test_precision_arguments(monkeypatch, tmp_path):
    monkeypatch.setenv("COVIDX_GEMM", "amx-emu")
    m = ResNet50(weights=None, classes=2, seed=1, precision="bf16")
    assert m.precision == "bf16" and m.precision_info()["kernel"] == "amx-emu"
    m.set_weights(m.get_weights())  # a rebuilt engine keeps the precision
    assert m.precision_info()["kernel"] == "amx-emu" and m._engine.set_precision("bf16")[0] == "amx-emu"
    path = str(tmp_path / "m.safetensors")
    m.save(path)
    loaded = covidx.load_model(path, precision="bf16")
    assert loaded.precision == "bf16" and loaded.precision_info()["running"] == "bf16"
    assert covidx.load_model(path).precision == "fp32"
    for bad in ("fp16", "BF16", None, 16):
        with pytest.raises(ValueError, match="precision"):
            m.set_precision(bad)
        with pytest.raises(ValueError, match="precision"):
            covidx.load_model(path, precision=bad)
        with pytest.raises(ValueError, match="precision"):
            ResNet50(weights=None, classes=2, precision=bad)
    with pytest.raises(ValueError):
        m._engine.set_precision("int8")
    with pytest.raises(TypeError):
        m._engine.set_precision(16)


def test_cli_precision_flag_and_info():
    env = dict(os.environ, COVIDX_GEMM="avx2" if CPU["avx2"] and CPU["fma"] else "openblas")
    run = subprocess.run([sys.executable, "-m", "covidx", "info"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "bf16 (precision='bf16')" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "covidx", "predict", "--precision", "fp16", "x.png"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and "--precision" in bad.stderr
