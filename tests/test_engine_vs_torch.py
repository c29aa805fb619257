"""covidx against an independent PyTorch ResNet50 with identical random weights.

The reference runs in float64, so it is exact to about 1e-12 and the tolerances measure covidx's
own float32 error (PyTorch's float32 result itself differs from exact by up to 2e-5)."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import covidx  # noqa: E402
from conftest import ARTICLES_HEAD, SIGMOID_HEAD  # noqa: E402
from covidx.applications.resnet50 import ResNet50, preprocess_input  # noqa: E402
from covidx.data import sample_files  # noqa: E402
from covidx.preprocessing.image import img_to_array, load_img  # noqa: E402
from torch_resnet50 import calibrated_model  # noqa: E402

torch.set_num_threads(2)
CASES = [("v1", "articles"), ("v1", "sigmoid"), ("v1.5", "articles"), ("v1.5", "sigmoid")]


def build_pair(variant, head_kind, seed, size=(224, 224)):
    """The torch reference (batchnorm statistics from the mirrored X-rays) and covidx, same weights."""
    head = ARTICLES_HEAD if head_kind == "articles" else SIGMOID_HEAD
    ref = calibrated_model(variant, head, seed, torch.from_numpy(np.ascontiguousarray(xrays(*size, flip=True))))
    if head_kind == "articles":
        model = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512), variant=variant)
        names = ["dense", "dense_1", "dense_2", "dense_3", "dense_4"]
    else:
        model = ResNet50(weights=None, classes=1, classifier_activation="sigmoid", variant=variant)
        names = ["predictions"]
    weights = ref.keras_weights(names)
    model.set_weights([weights[k] for k in model._weight_keys()])
    return ref, model


def xrays(h, w, flip=False):
    """The 8 bundled sample chest X-rays at h x w (nearest resizing, as Keras), caffe-preprocessed."""
    x = np.stack([img_to_array(load_img(p, target_size=(h, w))) for p, _ in sample_files()])
    return np.ascontiguousarray(preprocess_input(x[:, :, ::-1] if flip else x))


@pytest.mark.parametrize("variant,head_kind", CASES)
@pytest.mark.parametrize("size", [(224, 224), (97, 131)])
def test_matches_torch(variant, head_kind, size):
    ref, model = build_pair(variant, head_kind, seed=CASES.index((variant, head_kind)), size=size)
    x = xrays(*size)
    ref64 = copy.deepcopy(ref).double()
    with torch.no_grad():
        want = ref64(torch.from_numpy(x).double()).numpy()
        want_feat = ref64.features(torch.from_numpy(x).double()).numpy()
    # the reference must be far from saturation and its outputs must vary, or the comparison
    # would prove little
    assert 0.02 < want.min() and want.max() < 0.98, want
    assert want[:, 0].std() > 0.02, want
    for batch in (1, 3, 8):
        got = model.predict(x[:batch])
        assert got.shape == want[:batch].shape
        assert np.abs(got - want[:batch]).max() <= 1e-5
        feat = model.features(x[:batch])
        scale = np.abs(want_feat[:batch]).max()
        assert np.abs(feat - want_feat[:batch]).max() <= 1e-4 * scale


def test_thread_counts_give_identical_outputs():
    _, model = build_pair("v1", "articles", seed=3)
    x = xrays(224, 224)[:3]
    covidx.set_num_threads(1)
    one = model.predict(x)
    covidx.set_num_threads(2)
    two = model.predict(x)
    np.testing.assert_array_equal(one, two)


def test_issue_example_runs_and_round_trips(tmp_path):
    model = ResNet50(include_top=True, weights=None, classes=2, classifier_activation="softmax",
                     head=(1024, 1024, 1024, 512))
    model.set_weights(model.get_weights())
    x = preprocess_input(np.random.rand(8, 224, 224, 3).astype("float32") * 255)
    before = model.predict(x)
    model.save(tmp_path / "m.safetensors")
    loaded = covidx.load_model(tmp_path / "m.safetensors")
    probs = loaded.predict(x)
    np.testing.assert_array_equal(before, probs)
    assert probs.shape == (8, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("size", [(224, 224), (97, 131)])
def test_descriptor_matches_torch(size):
    """The descriptor the out-of-distribution statistics read (pooled features; each channel's
    mean and std after the stem and at the end of each stage; the last feature map on a 3x3 grid;
    the input's 8x8 thumbnail), fast and plain, against the float64 torch reference with the same
    weights (at 97x131 the grid's cells overlap unevenly)."""
    from covidx.unfamiliar import FEATURE_SETS

    ref, model = build_pair("v1", "articles", seed=3, size=size)
    x = xrays(*size)
    with torch.no_grad():
        want = copy.deepcopy(ref).double().descriptor(torch.from_numpy(x).double()).numpy()
    assert want.shape == (8, covidx._core.DESCRIPTOR_FLOATS)
    for batch in (1, 5, 8):
        got = model.descriptors(x[:batch])
        for name, (off, size_) in FEATURE_SETS.items():  # each set to its own scale
            w, g = want[:batch, off:off + size_], got[:, off:off + size_]
            assert w.std() > 0, name  # the reference varies, so a match proves something
            assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max(), name
    plain = model._engine.forward(x[:2], output=3, reference=True)
    assert np.abs(plain - want[:2]).max() <= 1e-4 * np.abs(want[:2]).max()


@pytest.mark.parametrize("size", [(224, 224), (97, 131)])
def test_input_standardisation_matches_torch(size):
    """A network that standardises each image first (Keras's LayerNormalization over height, width
    and channels): covidx against the float64 torch reference with the same layer, and the
    outputs the same whatever brightness and contrast the image has."""
    rng = np.random.default_rng(5)
    x = xrays(*size) / 255.0 + 0.5  # a different range from the reference's calibration images
    calib = np.ascontiguousarray(xrays(*size, flip=True) / 255.0 + 0.5)
    ref = calibrated_model("v1", ARTICLES_HEAD, 11, torch.from_numpy(calib), input_norm_eps=1e-5)
    model = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512), input_norm=1e-5)
    weights = ref.keras_weights(["dense", "dense_1", "dense_2", "dense_3", "dense_4"])
    model.set_weights([weights[k] for k in model._weight_keys()])
    with torch.no_grad():
        want = copy.deepcopy(ref).double()(torch.from_numpy(x).double()).numpy()
    assert 0.02 < want.min() and want.max() < 0.98, want
    assert want[:, 0].std() > 0.02, want
    for batch in (1, 3, 8):
        assert np.abs(model.predict(x[:batch]) - want[:batch]).max() <= 1e-5
    np.testing.assert_allclose(model.predict_reference(x[:2]), want[:2], rtol=0, atol=1e-5)
    # other brightness and contrast: still the reference's answer; a brightness change alone does
    # not change it (a contrast change does slightly, through epsilon)
    a, b = rng.uniform(0.3, 3.0, (len(x), 1, 1, 1)), rng.uniform(-2, 2, (len(x), 1, 1, 1))
    for changed in ((x * a + b).astype(np.float32), (x + b).astype(np.float32)):
        with torch.no_grad():
            want_changed = copy.deepcopy(ref).double()(torch.from_numpy(changed).double()).numpy()
        assert np.abs(model.predict(changed) - want_changed).max() <= 1e-5
    assert np.abs(model.predict((x + b).astype(np.float32)) - want).max() <= 1e-5
    # and the layer is there: without it the outputs differ
    plain = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512))
    plain.set_weights(model.get_weights())
    assert np.abs(plain.predict(x) - want).max() > 1e-2
