"""The engine without PyTorch: fast path against the plain C layers, input handling, threads.
(Also run under AddressSanitizer + UBSan by tests/run_sanitized.sh.)"""
import math
import threading

import numpy as np
import pytest

import covidx
from covidx.applications.resnet50 import ResNet50, preprocess_input


@pytest.fixture(scope="module")
def model():
    return ResNet50(weights=None, classes=2, head=(64, 32), seed=0)


def noise(n, h, w, seed=0):
    return np.random.default_rng(seed).uniform(-100, 100, size=(n, h, w, 3)).astype(np.float32)


def numpy_head(features, model):
    """The Dense head in float64 NumPy from Keras-layout weights."""
    w = model.named_weights
    x = features.astype(np.float64)
    for layer in model.architecture["head"]:
        x = x @ w[layer["name"] + "/kernel"].astype(np.float64) + w[layer["name"] + "/bias"]
        if layer["activation"] == "relu":
            x = np.maximum(x, 0)
        elif layer["activation"] == "softmax":
            e = np.exp(x - x.max(axis=1, keepdims=True))
            x = e / e.sum(axis=1, keepdims=True)
    return x


@pytest.mark.parametrize("variant", ["v1", "v1.5"])
@pytest.mark.parametrize("shape", [(2, 32, 32), (1, 45, 61), (3, 64, 48)])
def test_fast_path_matches_plain_layers(variant, shape):
    m = ResNet50(weights=None, include_top=False, pooling=None, variant=variant, seed=1)
    x = noise(*shape)
    fast = m.feature_map(x)
    plain = m._engine.forward(x, output=2, reference=True)
    assert fast.shape == plain.shape
    assert fast.shape[1:3] == (-(-(-(-shape[1] // 2) // 2) // 8), -(-(-(-shape[2] // 2) // 2) // 8))
    assert np.abs(fast - plain).max() <= 1e-4 * np.abs(plain).max()


def test_head_matches_numpy(model):
    x = noise(3, 64, 64)
    feats = model.features(x)
    np.testing.assert_allclose(model.predict(x), numpy_head(feats, model), atol=1e-6)
    np.testing.assert_allclose(model.predict_reference(x), model.predict(x), atol=1e-5)


def test_pooling_variants():
    x = noise(2, 64, 64)
    fmap = ResNet50(weights=None, include_top=False, pooling=None, seed=3).feature_map(x)
    avg = ResNet50(weights=None, include_top=False, pooling="avg", seed=3).predict(x)
    mx = ResNet50(weights=None, include_top=False, pooling="max", seed=3).predict(x)
    np.testing.assert_allclose(avg, fmap.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6 * np.abs(avg).max())
    np.testing.assert_array_equal(mx, fmap.max(axis=(1, 2)))


def test_batches_are_independent(model):
    # Images do not influence each other; GEMM blocking depends on the batch size, so results
    # agree to float32 rounding rather than bitwise.
    x = noise(5, 40, 40)
    whole = model.predict(x)
    np.testing.assert_allclose(whole[2:3], model.predict(x[2:3]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(whole, model.predict(x, batch_size=2), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(whole, model.predict(x))  # same shapes: bitwise the same


def test_inputs_are_converted(model):
    x = noise(2, 48, 48)
    want = model.predict(x)
    np.testing.assert_array_equal(model.predict(x.astype(np.float64)), want)
    big = np.zeros((2, 48, 96, 3), np.float32)
    big[:, :, ::2] = x
    np.testing.assert_array_equal(model.predict(big[:, :, ::2]), want)  # non-contiguous
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(model.predict(ro), want)
    xi = np.round(x).astype(np.int16)
    np.testing.assert_array_equal(model.predict(xi), model.predict(xi.astype(np.float32)))


@pytest.mark.parametrize("bad,error,words", [
    (np.zeros((48, 48, 3), np.float32), ValueError, "4 dimensions"),
    (np.zeros((1, 48, 48, 1), np.float32), ValueError, "3 channels"),
    (np.zeros((0, 48, 48, 3), np.float32), ValueError, "empty batch"),
    (np.zeros((1, 16, 48, 3), np.float32), ValueError, "at least 32x32"),
    (np.full((1, 48, 48, 3), "a"), TypeError, "numeric"),
    (np.zeros((1, 48, 48, 3), object), TypeError, "numeric"),
    ("an image", TypeError, "numpy array"),
])
def test_bad_inputs_raise_clear_errors(model, bad, error, words):
    with pytest.raises(error, match=words):
        model.predict(bad)


def test_engine_checks_its_own_inputs(model):
    with pytest.raises(ValueError, match="input"):
        model._engine.forward(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="numeric"):
        model._engine.forward([[1.0]])


def test_nan_weights_are_refused(model):
    weights = model.get_weights()
    weights[3][:] = np.nan  # conv1_bn/beta
    with pytest.raises(ValueError, match="conv1_conv"):
        model.set_weights(weights)
    weights = model.get_weights()
    weights[-2][0, 0] = np.inf
    with pytest.raises(ValueError, match="dense_2"):
        model.set_weights(weights)


def test_set_weights_checks_count_and_shapes(model):
    weights = model.get_weights()
    with pytest.raises(ValueError, match="expected a list of"):
        model.set_weights(weights[:-1])
    weights[0] = weights[0][:, :, :, :32]
    with pytest.raises(ValueError, match="conv1_conv/kernel"):
        model.set_weights(weights)


def test_weights_in_keras_order():
    m = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512))
    names = m.layer_names
    assert names[:4] == ["conv1_conv", "conv1_bn", "conv2_block1_1_conv", "conv2_block1_1_bn"]
    # Keras puts the shortcut conv between _2_relu and _3_conv, its BN after _3_conv
    i = names.index("conv2_block1_0_conv")
    assert names[i - 1:i + 4] == ["conv2_block1_2_bn", "conv2_block1_0_conv", "conv2_block1_3_conv",
                                  "conv2_block1_0_bn", "conv2_block1_3_bn"]
    assert names[-6:] == ["conv5_block3_3_bn", "dense", "dense_1", "dense_2", "dense_3", "dense_4"]
    weights = m.get_weights()
    assert weights[18].shape == (1, 1, 64, 256)  # conv2_block1_0_conv/kernel, as in Keras
    assert sum(w.size for w in weights) == 23587712 + 2048 * 1024 + 1024 + 2 * (1024 * 1024 + 1024) + 1024 * 512 + 512 + 512 * 2 + 2
    top = ResNet50(weights=None, classes=1000)
    assert top.count_params() == 25636712  # Keras's ResNet50 total
    assert top.layer_names[-1] == "predictions"


def test_concurrent_predict_matches_serial(model):
    xs = [noise(2, 64, 64, seed=s) for s in range(4)]
    serial = [model.predict(x) for x in xs]
    results = [None] * 4

    def work(i):
        for _ in range(3):
            results[i] = model.predict(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        np.testing.assert_array_equal(got, want)


def test_threads_setting():
    covidx.set_num_threads(1)
    assert covidx.get_num_threads() == 1
    with pytest.raises(ValueError):
        covidx.set_num_threads(0)
    with pytest.raises(TypeError):
        covidx.set_num_threads(1.5)


def test_preprocess_input_caffe_in_place():
    x = np.full((1, 2, 2, 3), [10.0, 20.0, 30.0], np.float32)
    y = preprocess_input(x)
    np.testing.assert_allclose(y[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
    assert np.shares_memory(x, y)  # float arrays are changed in place, as in Keras


def test_show_config_reports_kernel(capsys):
    covidx.show_config()
    out = capsys.readouterr().out
    assert "OpenBLAS" in out and "kernel:" in out
    assert covidx.config()["openblas_corename"]


def test_kernel_warning_rules():
    from covidx._config import kernel_warning

    spr = {"avx512f": True, "avx2": True}
    zen = {"avx512f": False, "avx2": True}
    assert "Prescott" in kernel_warning("Prescott", spr)
    assert kernel_warning("Haswell", spr) is not None
    assert kernel_warning("SkylakeX", spr) is None
    assert kernel_warning("Haswell", zen) is None
    assert kernel_warning("Prescott", zen) is not None


def test_model_works_after_fork(model):
    import io
    import os

    x = noise(2, 48, 48)
    want = model.predict(x)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the engine's threads are gone after fork and must start anew
        code = 1
        try:
            buf = io.BytesIO()
            np.save(buf, model.predict(x))
            os.write(write, buf.getvalue())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    np.testing.assert_array_equal(np.load(io.BytesIO(data)), want)


# --- hostile inputs: non-finite images and weights, a broken engine, Ctrl-C --------------------------


@pytest.mark.parametrize("where", ["all", "one pixel", "infinity"])
def test_non_finite_images_get_no_diagnosis(model, where):
    """The C ReLU and max pool drop NaN (max(NaN, 0) is 0), so an all-NaN image would get a confident
    answer: covidx refuses it, naming the argument and the image."""
    x = noise(3, 64, 64)
    if where == "all":
        x[2] = np.nan
    elif where == "one pixel":
        x[2, 10, 20, 1] = np.nan
    else:
        x[2, 0, 0, 0] = -np.inf
    for call in (model.predict, model.predict_on_batch, model.features, model.feature_map):
        with pytest.raises(ValueError, match=r"x: NaN or infinite .* 1 of 3 images \(first: image 2\)"):
            call(x)
    np.testing.assert_array_equal(model.predict(x[:2]), model.predict(noise(3, 64, 64)[:2]))


def test_batchnorm_folding_beyond_float32_is_refused(model):
    """gamma = 3e38 with variance 0 folds to a scale of ~1e41: finite in double precision, infinite
    as the float32 weights the engine runs."""
    before = model.get_weights()
    weights = model.get_weights()
    gamma, var = weights[2], weights[5]  # conv1_bn/gamma, conv1_bn/moving_variance
    gamma[:] = 3e38
    var[:] = 0.0
    eps = model.architecture["bn_epsilon"]
    assert np.isfinite(3e38 / np.sqrt(0.0 + eps)) and 3e38 / np.sqrt(eps) > np.finfo(np.float32).max
    with pytest.raises(ValueError, match="conv1_conv: weights contain NaN or infinity"):
        model.set_weights(weights)
    for kept, was in zip(model.get_weights(), before):  # the model is unchanged
        np.testing.assert_array_equal(kept, was)
    assert np.isfinite(model.predict(noise(1, 32, 32))).all()


def test_forward_after_a_failed_init_is_an_error():
    """Engine.__init__ failing half-way used to leave a half-built engine whose forward divided by
    zero (SIGFPE, the process killed): run in a child, so that a crash fails the test."""
    import bounded

    def call():
        engine = covidx._core.Engine.__new__(covidx._core.Engine)
        try:
            engine.__init__(1, 1, 1e-5, [("x",)] * 53, [])
        except TypeError:
            pass
        engine.forward(np.zeros((1, 32, 32, 3), np.float32))

    outcome = bounded.run(call)
    assert isinstance(outcome.error, RuntimeError) and "not built" in str(outcome.error)


def test_numpy_integers_and_bad_steps():
    model = ResNet50(weights=None, classes=2, head=(4,), seed=1)
    x = noise(3, 32, 32)
    np.testing.assert_array_equal(model.predict(x, batch_size=np.int64(1)), model.predict(x, batch_size=1))
    assert model.predict(x, batch_size=np.int32(2), steps=np.int64(1)).shape == (2, 2)
    for steps in (-1, 0, 1.5):
        with pytest.raises(ValueError, match="steps: expected a positive integer"):
            model.predict(x, steps=steps)
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        model.predict(x, batch_size=0)
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    y = np.eye(2, dtype=np.float32)[[0, 1, 0]]
    with pytest.raises(ValueError, match="steps: expected a positive integer"):
        model.evaluate(x, y, steps=-1, verbose=0)
    assert model.evaluate(x, y, batch_size=np.int64(2), verbose=0) == model.evaluate(x, y, batch_size=2, verbose=0)


def _interrupt_main_thread_after(seconds, sent):
    import signal
    import time

    main = threading.main_thread().ident

    def send():
        time.sleep(seconds)
        sent.append(time.perf_counter())
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=send).start()


def test_ctrl_c_stops_a_forward_pass_between_layers():
    """Ctrl-C during a long forward pass (a batch at 224x224 sized to take seconds) raises
    KeyboardInterrupt within about a layer's time, and the model computes as before afterwards;
    a SIGINT handler that raises nothing lets the pass finish."""
    import signal
    import time

    model = ResNet50(weights=None, classes=2, head=(8,), seed=0)
    start = time.perf_counter()
    model.predict(noise(4, 224, 224), verbose=0)
    per_image = (time.perf_counter() - start) / 4
    x = noise(int(min(256, max(16, math.ceil(3.0 / per_image)))), 224, 224)  # about 3 s on any CPU
    start = time.perf_counter()
    want = model.predict(x, verbose=0)
    whole = time.perf_counter() - start
    assert whole > 1.0  # long enough to be interrupted mid-way
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal or Jupyter
    try:
        sent = []
        _interrupt_main_thread_after(0.2, sent)
        with pytest.raises(KeyboardInterrupt):
            model.predict(x, verbose=0)
        latency = time.perf_counter() - sent[0]
        assert latency < min(1.0, whole / 3), (latency, whole)
        np.testing.assert_array_equal(model.predict(x, verbose=0), want)

        seen = []
        signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
        _interrupt_main_thread_after(0.2, [])
        np.testing.assert_array_equal(model.predict(x, verbose=0), want)
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
