"""Every compute mode gives the same answers: Winograd F(2x2,3x3) against im2col + SGEMM, the packed
GEMM kernel against OpenBLAS, and both against the plain C loops, on real X-rays; and a benchmark
smoke run (outputs only, no timing)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from covidx.applications.resnet50 import ResNet50, preprocess_input
from covidx.data import sample_files
from covidx.preprocessing.image import img_to_array, load_img

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def xrays(size):
    return preprocess_input(np.stack([img_to_array(load_img(p, target_size=size)) for p, _ in sample_files()]))


def build(monkeypatch, winograd):
    monkeypatch.setenv("COVIDX_WINOGRAD", "1" if winograd else "0")
    return ResNet50(weights=None, include_top=False, pooling=None, seed=5)


@pytest.mark.parametrize("size", [(96, 96), (67, 75), (224, 224)])
def test_winograd_matches_im2col_and_plain_loops(monkeypatch, size):
    x = xrays(size)[:4 if size[0] < 200 else 2]
    wino, im2col = build(monkeypatch, True), build(monkeypatch, False)
    fw, fi = wino.feature_map(x), im2col.feature_map(x)
    ref = wino._engine.forward(np.ascontiguousarray(x, np.float32), output=2, reference=True)
    scale = np.abs(ref).max()
    assert np.abs(fw - ref).max() / scale < 2e-6
    assert np.abs(fi - ref).max() / scale < 2e-6
    assert not np.array_equal(fw, fi)  # the two paths really differ in how they compute


@pytest.mark.parametrize("size", [(96, 96), (67, 75), (224, 224)])
def test_packed_gemm_matches_openblas_and_plain_loops(monkeypatch, size):
    from covidx import _core

    x = xrays(size)[:3 if size[0] < 200 else 1]
    monkeypatch.setenv("COVIDX_GEMM", "openblas")
    assert not _core.blas_info()["packed_gemm"]
    openblas = ResNet50(weights=None, include_top=False, pooling=None, seed=7)
    monkeypatch.delenv("COVIDX_GEMM")
    if not _core.blas_info()["packed_gemm"]:
        pytest.skip("the packed kernel needs AVX2 and FMA")
    packed = ResNet50(weights=None, include_top=False, pooling=None, seed=7)
    fp, fo = packed.feature_map(x), openblas.feature_map(x)
    ref = packed._engine.forward(np.ascontiguousarray(x, np.float32), output=2, reference=True)
    scale = np.abs(ref).max()
    assert np.abs(fp - ref).max() / scale < 2e-6
    assert np.abs(fo - ref).max() / scale < 2e-6
    assert not np.array_equal(fp, fo)  # really two different GEMMs


def test_benchmark_smoke_outputs_agree(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")  # noqa: F841
    script = os.path.join(REPO, "benchmarks", "bench_engines.py")
    out = subprocess.run([sys.executable, script, "--batches", "1", "--threads", "1", "--seconds", "0.01", "--rounds", "1",
                          "--engines", "covidx", "onnxruntime"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    row = [line for line in out.stdout.splitlines() if line.startswith("onnxruntime")][0]
    assert float(row.split()[-1]) < 1e-4  # max |p_ort - p_covidx| on identical weights


def test_large_batches_run_in_slices_of_thirty_two():
    # The engine runs a batch 32 images at a time: a batch of 70 gives exactly what its slices
    # 0-31, 32-63 and 64-69 give on their own, and every slice matches the plain loops.
    model = ResNet50(weights=None, classes=2, head=(64,), seed=11)
    x = preprocess_input(np.random.RandomState(2).uniform(0, 255, (70, 32, 32, 3)).astype(np.float32))
    whole = model.predict(x, batch_size=70, verbose=0)
    parts = np.concatenate([model.predict(x[a:b], batch_size=70, verbose=0) for a, b in ((0, 32), (32, 64), (64, 70))])
    assert np.array_equal(whole, parts)
    ref = model._engine.forward(np.ascontiguousarray(x, np.float32), output=0, reference=True)
    np.testing.assert_allclose(whole, ref, rtol=0, atol=1e-5)
