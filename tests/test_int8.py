"""The int8 mode (precision='int8', Model.calibrate_int8) against an independent NumPy model of
its arithmetic, bit for bit, on every int8 kernel (the emulated builds always, the real ones where
the CPU has them), and its calibration, files and errors.

The NumPy model (int8_reference below) is written from the mode's definition, not from the C
code: batchnorm folded in float64, weights quantised per output channel (scale max|w| / 127,
round half to even), each convolution's input quantised to rint(clip(x / s, 0, 127)) with the
calibrated s, exact integer sums, then float32 float(sum) * (s * wscale) + bias (+ residual),
ReLU, one rounding per step. The stem stays fp32: its weights and the input are chosen so that
every fp32 sum is exact (multiples of 1/4, small integers), whatever order the engine sums in.
Quick: 64x64 images, batch 2; the emulated kernels run a ResNet50 at that size in a second."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import covidx
from covidx import _config, _core
from covidx.applications.resnet50 import ResNet50

INT8_KERNELS = [r for r in _core.gemm_kernel_table() if r["precision"] == "int8"]
STAGES = [(2, 3, 1), (3, 4, 2), (4, 6, 2), (5, 3, 2)]  # stage, blocks, stride of its first block (v1)


def exact_stem_model(seed=3, classes=3):
    """A random ResNet50 (v1) whose stem computes exactly in fp32: conv1's folded weights are
    multiples of 1/4 in [-1, 1] (its batchnorm an identity up to 1e-8, which folding rounds away)."""
    m = ResNet50(weights=None, classes=classes, seed=seed, input_shape=(64, 64, 3))
    w = dict(m.named_weights)
    rng = np.random.default_rng(seed)
    eps = m.architecture["bn_epsilon"]
    w["conv1_conv/kernel"] = (rng.integers(-4, 5, (7, 7, 3, 64)) / 4).astype(np.float32)
    w["conv1_conv/bias"] = np.zeros(64, np.float32)
    w["conv1_bn/gamma"], w["conv1_bn/beta"] = np.ones(64, np.float32), np.zeros(64, np.float32)
    w["conv1_bn/moving_mean"] = np.zeros(64, np.float32)
    w["conv1_bn/moving_variance"] = np.full(64, 1 - eps, np.float32)
    m.set_weights([w[k] for k in m._weight_keys()])
    return m


def images(n=2, size=64, seed=0):
    """Small integers: the stem's sums stay exact."""
    return np.random.default_rng(seed).integers(-4, 5, (n, size, size, 3)).astype(np.float32)


# --- the NumPy model ---------------------------------------------------------------------------------

def fold(w, name, eps):
    k, g = w[name + "_conv/kernel"].astype(np.float64), w[name + "_bn/gamma"].astype(np.float64)
    var, mean = w[name + "_bn/moving_variance"].astype(np.float64), w[name + "_bn/moving_mean"].astype(np.float64)
    scale = g / np.sqrt(var + eps)
    bias = w.get(name + "_conv/bias")
    b = ((bias.astype(np.float64) if bias is not None else 0.0) - mean) * scale + w[name + "_bn/beta"].astype(np.float64)
    return (k * scale).astype(np.float32), b.astype(np.float32)


def patches(x, k, stride, pad):
    """(n, h, w, c) -> (n * ho * wo, k * k * c), rows of (ky, kx, c), zero padding."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    cols = [xp[:, ky:ky + stride * ho:stride, kx:kx + stride * wo:stride, :] for ky in range(k) for kx in range(k)]
    return np.concatenate(cols, axis=3).reshape(n * ho * wo, k * k * c), (n, ho, wo)


def conv_fp32_exact(x, kernel, bias, stride, pad):
    a, (n, ho, wo) = patches(x.astype(np.float64), kernel.shape[0], stride, pad)
    out = a @ kernel.reshape(-1, kernel.shape[3]).astype(np.float64) + bias
    return np.maximum(out, 0).astype(np.float32).reshape(n, ho, wo, -1)


def conv_int8(x, kernel, bias, s, stride, pad, relu, residual=None):
    f32 = np.float32
    wmat = kernel.reshape(-1, kernel.shape[3])
    wscale = np.abs(wmat).max(axis=0) / f32(127)
    with np.errstate(invalid="ignore", divide="ignore"):
        wq = np.where(wscale > 0, np.clip(np.rint(wmat / wscale), -127, 127), 0).astype(np.int64)
    inv = f32(1) / f32(s)
    q = np.rint(np.clip(x * inv, f32(0), f32(127)))
    a, (n, ho, wo) = patches(q.astype(np.int64), kernel.shape[0], stride, pad)
    acc = a @ wq
    v = acc.astype(np.float32) * (f32(s) * wscale) + bias
    if residual is not None:
        v = v + residual.reshape(v.shape)
    if relu:
        v = np.where(v > 0, v, f32(0))
    return v.astype(np.float32).reshape(n, ho, wo, -1)


def maxpool(x):
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return np.max([xp[:, ky:ky + 2 * ho:2, kx:kx + 2 * wo:2, :] for ky in range(3) for kx in range(3)], axis=0)


def int8_reference(weights, scales, eps, x):
    """The last feature map of ResNet50 v1 in the int8 mode. scales: {conv layer: s}."""
    k, b = fold(weights, "conv1", eps)
    y = maxpool(conv_fp32_exact(x, k, b, 2, 3))
    for stage, blocks, stride in STAGES:
        for blk in range(1, blocks + 1):
            p = "conv%d_block%d" % (stage, blk)
            s = stride if blk == 1 else 1

            def conv(name, inp, st, pad, relu, residual=None):
                kk, bb = fold(weights, name, eps)
                return conv_int8(inp, kk, bb, scales[name + "_conv"], st, pad, relu, residual)

            t = conv(p + "_1", y, s, 0, True)
            t = conv(p + "_2", t, 1, 1, True)
            shortcut = conv(p + "_0", y, s, 0, False) if blk == 1 else y
            y = conv(p + "_3", t, 1, 0, True, shortcut)
    return y


@pytest.fixture(scope="module")
def calibrated():
    """Every convolution after the stem in int8 (keep_fp32=()), as the NumPy model computes it."""
    m = exact_stem_model()
    cal = m.calibrate_int8(images(4, seed=9), batch_size=2, keep_fp32=())
    return m, cal


@pytest.mark.parametrize("kernel", [r["name"] for r in INT8_KERNELS])
def test_network_matches_numpy_model_bit_for_bit(monkeypatch, calibrated, kernel):
    m, cal = calibrated
    row = next(r for r in INT8_KERNELS if r["name"] == kernel)
    if not row["runs"]:
        pytest.skip("this CPU has no %s: its emulated build was run instead" % kernel)
    # a real kernel is reached by capping COVIDX_GEMM below the better ones; an emulated one by name
    monkeypatch.setenv("COVIDX_GEMM", kernel if row["emulated"] else "avx2" if kernel != "avx512vnni" else "auto")
    m.set_precision("int8")
    if m.precision_info()["kernel"] != kernel:
        pytest.skip("int8 runs on %s here, not %s" % (m.precision_info()["kernel"], kernel))
    x = images()
    got = m.feature_map(x)
    want = int8_reference(dict(m.named_weights), cal["scales"], m.architecture["bn_epsilon"], x)
    assert np.abs(want).max() > 0
    np.testing.assert_array_equal(got, want)
    m.set_precision("fp32")


def test_projection_with_a_scale_of_its_own_matches_numpy_model(calibrated):
    """A block's projection reads the block's input as its conv1 does: calibrated on the same
    values, the two get the same scale and read the input quantised once (the test above). Given a
    scale of its own, the projection quantises the input itself: the same NumPy model, bit for bit."""
    m, cal = calibrated
    projections = [k for k in cal["scales"] if k.endswith("_0_conv")]
    assert len(projections) == 4
    for k in projections:  # the premise of the shared path
        assert cal["scales"][k] == cal["scales"][k.replace("_0_conv", "_1_conv")]
    own = dict(cal, scales={k: v * 1.37 if k in projections else v for k, v in cal["scales"].items()})
    m._set_int8_calibration(own)
    try:
        m.set_precision("int8")
        x = images(seed=3)
        got = m.feature_map(x)
        want = int8_reference(dict(m.named_weights), own["scales"], m.architecture["bn_epsilon"], x)
        np.testing.assert_array_equal(got, want)
        shared = int8_reference(dict(m.named_weights), cal["scales"], m.architecture["bn_epsilon"], x)
        assert not np.array_equal(got, shared)  # the projections' own scales were used
    finally:
        m.set_precision("fp32")
        m._set_int8_calibration(cal)


def test_int8_is_close_to_fp32_and_does_not_depend_on_threads(calibrated):
    m, _ = calibrated
    x = images(seed=5)
    f32 = m.feature_map(x)
    m.set_precision("int8")
    try:
        covidx.set_num_threads(1)
        one = m.feature_map(x)
        covidx.set_num_threads(2)
        two = m.feature_map(x)
    finally:
        covidx.set_num_threads(max(1, len(os.sched_getaffinity(0))))
        m.set_precision("fp32")
    np.testing.assert_array_equal(one, two)
    err = np.abs(one - f32).max() / np.abs(f32).max()
    assert 0 < err < 0.1  # int8 really ran, and stayed near fp32


def test_calibration_scales():
    """'max' puts the largest value seen at 127; 'mse' clips a rare outlier (here 1 value in 2e8,
    whose clipping costs less than the coarser steps would cost the bulk), not the bulk."""
    from covidx import int8

    counts = np.zeros(int8.BINS, np.uint64)
    bulk = (np.float32(np.linspace(0.01, 1.0, 200)).view(np.uint32) >> 16).astype(np.int64)
    np.add.at(counts, bulk, 1000000)
    outlier = int(np.float32(50.0).view(np.uint32) >> 16)
    counts[outlier] = 1
    assert abs(int8.scale_from_histogram(counts, "max") * 127 / 50.0 - 1) < 0.01
    t = int8.scale_from_histogram(counts, "mse") * 127
    assert 0.9 < t < 50.0 / 4
    assert int8.scale_from_histogram(np.zeros(int8.BINS, np.uint64), "mse") == 1.0  # inputs always 0


@pytest.mark.parametrize("method,weight", [("mse", 1.0), ("clip-weighted", 10.0)])
def test_clipping_point_against_its_closed_form(method, weight):
    """n0 values at 1 and one at V: for 1 < T < V the expected error is weight * (V - T)^2 (the
    clipped value) + n0 * (T / 127)^2 / 12 (the bulk's rounding), least at T = weight * V /
    (weight + n0 / (12 * 127^2)) (derivative zero); T below 1 clips the bulk and costs far more.
    With n0 = 1e6 and V = 50: T = 8.1 counted once, 33.0 counted ten times ('clip-weighted' is the
    default)."""
    from covidx import int8

    counts = np.zeros(int8.BINS, np.uint64)
    one, big = (int(np.float32(v).view(np.uint32) >> 16) for v in (1.0, 50.0))
    counts[one], counts[big] = 1000000, 1
    vbig = int8._MIDDLES[big]  # the histogram knows each value as its bin's middle
    rounding = 1000000 / (12 * 127.0 ** 2)  # n0 / (12 * 127^2): the bulk errs by (T / 127)^2 / 12 each
    expected = weight * vbig / (weight + rounding)
    got = (int8.scale_from_histogram(counts) if method == "clip-weighted"
           else int8.scale_from_histogram(counts, method)) * 127
    assert abs(got / expected - 1) < 0.02  # the candidates are 1.5 % apart


def test_scales_survive_save_and_load(calibrated, tmp_path):
    m, cal = calibrated
    x = images(seed=7)
    m.set_precision("int8")
    want = m.predict(x, verbose=0)
    m.set_precision("fp32")
    for dtype in ("float32", "float16"):
        path = str(tmp_path / ("m-%s.safetensors" % dtype))
        m.save(path, dtype=dtype)
        loaded = covidx.load_model(path, precision="int8")
        assert loaded.int8_calibration == json.loads(json.dumps(cal))
        assert loaded.precision_info()["running"] == "int8"
        if dtype == "float32":
            np.testing.assert_array_equal(loaded.predict(x, verbose=0), want)
    assert covidx.load_model(path).precision == "fp32"  # kept, not switched on


def test_calibrate_int8_takes_iterators_and_keeps_the_precision(calibrated):
    m, cal = calibrated
    x = images(4, seed=9)
    m.set_precision("int8")
    again = m.calibrate_int8(iter([x[:2], (x[2:], None)]), steps=2, keep_fp32=())
    assert again["scales"] == cal["scales"] and again["images"] == 4
    assert m.precision_info()["running"] == "int8"  # calibrated in fp32, then back to int8
    m.set_precision("fp32")


def test_errors(tmp_path):
    m = exact_stem_model(seed=4, classes=2)
    with pytest.raises(ValueError, match="calibrate_int8"):
        m.set_precision("int8")
    assert m.precision == "fp32"
    path = str(tmp_path / "plain.safetensors")
    m.save(path)
    with pytest.raises(ValueError, match="no int8 calibration"):
        covidx.load_model(path, precision="int8")
    for bad in ("int4", "INT8", None):
        with pytest.raises(ValueError, match="precision"):
            m.set_precision(bad)
    with pytest.raises(ValueError, match="method"):
        m.calibrate_int8(images(), method="percentile")
    with pytest.raises(ValueError, match="keep_fp32.*'conv1_conv' is not a convolution after the stem"):
        m.calibrate_int8(images(), keep_fp32=["conv1_conv"])
    for bad in ("conv2_block1_1_conv", None, [3]):
        with pytest.raises(ValueError, match="keep_fp32: expected a list"):
            m.calibrate_int8(images(), keep_fp32=bad)
    with pytest.raises(ValueError, match="int8 scales"):
        m._engine.set_int8_scales(np.full(53, -1.0, np.float32))
    with pytest.raises(ValueError, match="53 values"):
        m._engine.set_int8_scales(np.ones(52, np.float32))
    with pytest.raises(ValueError):
        m._engine.set_precision("int8")  # the engine alone: no scales either
    # a file whose calibration names a layer that is not there
    cal = m.calibrate_int8(images(2))
    cal["scales"]["conv9_block1_1_conv"] = cal["scales"].pop("conv2_block1_1_conv")
    m.int8_calibration = cal
    bad = str(tmp_path / "bad.safetensors")
    m.save(bad)
    with pytest.raises(ValueError, match="bad.safetensors.*int8_calibration"):
        covidx.load_model(bad)


def test_new_backbone_weights_drop_the_calibration():
    m = exact_stem_model(seed=5, classes=2)
    m.calibrate_int8(images(2))
    m.set_precision("int8")
    w = m.get_weights()
    w[2] = w[2] * 2  # the stem's batchnorm gamma
    with pytest.warns(UserWarning, match="int8 calibration was dropped"):
        m.set_weights(w)
    assert m.int8_calibration is None and m.precision_info()["running"] == "fp32"
    head = m.get_weights()
    head[-1] = head[-1] + 1  # the Dense bias: the backbone is unchanged, the scales stay
    m.calibrate_int8(images(2))
    m.set_weights(head)
    assert m.int8_calibration is not None


def test_default_keeps_the_stem_readers_in_fp32(calibrated):
    """By default the two convolutions that read the stem's max-pooled output stay fp32 (None), and
    only they: every other scale is the one the all-int8 calibration finds on the same images."""
    from covidx import int8

    m, every = calibrated
    try:
        default = m.calibrate_int8(images(4, seed=9), batch_size=2)
        assert sorted(k for k, v in default["scales"].items() if v is None) == sorted(int8.STEM_READERS)
        assert {k: v for k, v in every["scales"].items() if k not in int8.STEM_READERS} == \
            {k: v for k, v in default["scales"].items() if k not in int8.STEM_READERS}
    finally:
        m._set_int8_calibration(every)


def test_layers_kept_in_fp32():
    """A scale of None keeps that convolution in fp32: with all of them None, int8 gives fp32's bits."""
    m = exact_stem_model(seed=6, classes=2)
    cal = m.calibrate_int8(images(2))
    x = images(seed=1)
    f32 = m.feature_map(x)
    m._set_int8_calibration(dict(cal, scales={k: None for k in cal["scales"]}))
    m.set_precision("int8")
    np.testing.assert_array_equal(m.feature_map(x), f32)


def test_config_and_cli(calibrated, tmp_path, monkeypatch):
    monkeypatch.delenv("COVIDX_GEMM", raising=False)
    c = covidx.config()
    assert _config.kernel_precision(c["kernels"]["int8"]) in ("int8", "fp32")
    m, _ = calibrated
    path = str(tmp_path / "c.safetensors")
    m.save(path)
    png = str(tmp_path / "x.png")
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)).save(png)
    env = dict(os.environ, COVIDX_GEMM="avx2int8-emu")
    run = subprocess.run([sys.executable, "-m", "covidx", "predict", "--model", path, "--precision", "int8", png],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    info = subprocess.run([sys.executable, "-m", "covidx", "info"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert "int8 (precision='int8'" in info.stdout and "avx2int8-emu" not in info.stderr
