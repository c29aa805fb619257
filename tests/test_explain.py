"""Grad-CAM and CAM against PyTorch autograd on an independent ResNet50 with identical weights.

The reference takes torch's gradient of the class logit with respect to the last block's output
(through torch's own pooling and Linear layers) in float64 and builds the Grad-CAM map from it.
The 1e-4 tolerance is near float32's own limit for these maps: Grad-CAM sums 2048 terms of both
signs that largely cancel, so the feature map's float32 rounding shows up amplified (PyTorch in
float32 is itself up to 1.5e-4 off the float64 map on some of the sample images)."""
import copy
import io
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import covidx  # noqa: E402
from conftest import ARTICLES_HEAD, SIGMOID_HEAD  # noqa: E402
from covidx import explain  # noqa: E402
from covidx.applications.resnet50 import ResNet50, preprocess_input  # noqa: E402
from covidx.data import sample_files  # noqa: E402
from covidx.preprocessing.image import img_to_array, load_img  # noqa: E402
from torch_resnet50 import calibrated_model  # noqa: E402

torch.set_num_threads(2)
SIZE = (128, 160)  # a 4 x 5 heatmap: small enough to be fast, not square so axes cannot be swapped
ARTICLES_NAMES = ["dense", "dense_1", "dense_2", "dense_3", "dense_4"]


def xrays(h, w, flip=False):
    x = np.stack([img_to_array(load_img(p, target_size=(h, w))) for p, _ in sample_files()])
    return np.ascontiguousarray(preprocess_input(x[:, :, ::-1] if flip else x))


X = xrays(*SIZE)


def build_pair(head_kind, seed, pooling="avg"):
    """The torch reference and a covidx model with the same weights."""
    head = ARTICLES_HEAD if head_kind == "articles" else SIGMOID_HEAD
    ref = calibrated_model("v1", head, seed, torch.from_numpy(np.ascontiguousarray(xrays(*SIZE, flip=True))))
    if head_kind == "articles":
        model = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512), class_names=["COV19", "Normal"])
        names = ARTICLES_NAMES
    else:
        model = ResNet50(weights=None, classes=1, classifier_activation="sigmoid", class_names=["COV19"])
        names = ["predictions"]
    if pooling == "max":
        arch = dict(model.architecture, pooling="max", pooling_name="max_pool")
        model = covidx.Model(arch, model.named_weights, class_names=model.class_names)
    decide_relus(ref, X, pooling)
    weights = ref.keras_weights(names)
    model.set_weights([weights[k] for k in model._weight_keys()])
    return copy.deepcopy(ref).double(), model


def decide_relus(ref, images, pooling="avg", margin=1e-3):
    """Moves the hidden Dense biases so that no ReLU of the head is within margin * (the layer's
    spread) of its kink on these images, as a trained head's units are decided. At a kink Grad-CAM
    jumps, and which side float32 lands on (covidx, or torch in float32) is chance: comparing with
    the float64 reference there would measure that chance, not covidx."""
    with torch.no_grad():  # float32 is plenty to find units within 1e-3 of a kink
        a = torch_last_block(ref, torch.from_numpy(images))
        h = a.mean(dim=(2, 3)) if pooling == "avg" else a.flatten(2).max(dim=2).values
        for layer in ref.head[:-1]:
            z = layer(h)
            tol = margin * float(z.std())
            for unit in range(z.shape[1]):
                layer.bias[unit] += next(d for d in (0.0, 2 * tol, -2 * tol, 3 * tol, -3 * tol, 5 * tol, 8 * tol)
                                         if float((z[:, unit] + d).abs().min()) >= tol)
            h = torch.relu(layer(h))


def torch_last_block(ref, x):
    y = x.permute(0, 3, 1, 2)
    y = torch.relu(ref.bn1(ref.conv1(y)))
    y = torch.nn.functional.max_pool2d(y, 3, 2, padding=1)
    for stage in ref.stages:
        for block in stage:
            y = block(y)
    return y


def torch_gradcams(ref, image, pooling="avg"):
    """{class index: (Grad-CAM map, class score)} by autograd: d logit / d A, averaged over
    positions, weighs A; ReLU; divided by the maximum."""
    with torch.no_grad():
        block_out = torch_last_block(ref, torch.from_numpy(image[None]).double())
    maps = {}
    for class_index in (0, 1):
        a = block_out.clone().requires_grad_(True)
        h = a.mean(dim=(2, 3)) if pooling == "avg" else a.flatten(2).max(dim=2).values
        for i, layer in enumerate(ref.head):
            h = layer(h)
            if i < len(ref.head) - 1:
                h = torch.relu(h)
        score = h[0, class_index] if h.shape[1] > 1 else (h[0, 0] if class_index == 1 else -h[0, 0])
        score.backward()
        alpha = a.grad.mean(dim=(2, 3))[0]
        cam = torch.relu((alpha[:, None, None] * block_out[0]).sum(dim=0)).numpy()
        maps[class_index] = (cam / cam.max() if cam.max() > 0 else cam, float(score.detach()))
    return maps


@pytest.fixture(scope="module")
def articles_pair():
    return build_pair("articles", seed=11)


@pytest.fixture(scope="module")
def sigmoid_pair():
    return build_pair("sigmoid", seed=12)


def assert_maps_close(got, want):
    assert got.shape == want.shape
    assert want.max() == 1.0 and want.std() > 0.05  # a map with structure, so the comparison proves something
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("image_index", [0, 5])
def test_gradcam_matches_torch_autograd_multilayer_head(articles_pair, image_index):
    ref, model = articles_pair
    for class_index, (want, score) in torch_gradcams(ref, X[image_index]).items():
        got = explain.gradcam(model, X[image_index], class_index)
        assert got.heatmap.shape == (4, 5) and got.method == "gradcam"
        assert_maps_close(got.heatmap, want)
        assert got.score == pytest.approx(score, abs=1e-4)
        np.testing.assert_allclose(got.probabilities, model.predict(X[image_index][None], verbose=0)[0], atol=1e-5)


def test_gradcam_and_cam_match_torch_sigmoid_head(sigmoid_pair):
    ref, model = sigmoid_pair
    for class_index, (want, _) in torch_gradcams(ref, X[2]).items():
        got = explain.gradcam(model, X[2], class_index)
        assert_maps_close(got.heatmap, want)
        assert got.class_name == ["not COV19", "COV19"][class_index]
        # one Dense layer after average pooling: CAM and Grad-CAM are the same map
        np.testing.assert_allclose(explain.cam(model, X[2], class_index).heatmap, got.heatmap, atol=1e-12)


def test_gradcam_matches_torch_with_max_pooling():
    ref, model = build_pair("articles", seed=13, pooling="max")
    for class_index, (want, _) in torch_gradcams(ref, X[3], pooling="max").items():
        assert_maps_close(explain.gradcam(model, X[3], class_index).heatmap, want)


def test_saturated_softmax_does_not_flatten_the_map(articles_pair):
    _, model = articles_pair
    before = explain.gradcam(model, X[1], 0)
    w = dict(model.named_weights)
    w["dense_4/kernel"], w["dense_4/bias"] = w["dense_4/kernel"] * 1e4, w["dense_4/bias"] * 1e4
    saturated = covidx.Model(model.architecture, w, class_names=model.class_names)
    p = saturated.predict(X[1][None], verbose=0)[0]
    assert sorted(p.tolist()) == [0.0, 1.0]  # the probability's gradient is exactly zero here
    after = explain.gradcam(saturated, X[1], 0)
    np.testing.assert_allclose(after.heatmap, before.heatmap, atol=1e-6)
    assert after.heatmap.max() == 1.0


def test_default_class_is_the_predicted_one(articles_pair):
    _, model = articles_pair
    for i in range(3):
        p = model.predict(X[i][None], verbose=0)[0]
        got = explain.gradcam(model, X[i])
        assert got.class_index == int(np.argmax(p)) and got.class_name == model.class_names[got.class_index]
    assert explain.gradcam(model, X[0], "Normal").class_index == 1


def test_no_positive_evidence_gives_an_all_zero_map(sigmoid_pair):
    _, model = sigmoid_pair
    w = dict(model.named_weights)
    w["predictions/kernel"] = -np.abs(w["predictions/kernel"])  # every feature (>= 0) argues against class 1
    negative = covidx.Model(model.architecture, w, class_names=model.class_names)
    against = explain.gradcam(negative, X[0], 1)
    assert against.heatmap.shape == (4, 5) and not against.heatmap.any()
    assert explain.gradcam(negative, X[0], 0).heatmap.max() == 1.0


def test_file_path_input_uses_the_models_preprocessing(articles_pair):
    _, model = articles_pair
    path = sample_files()[4][0]
    got = explain.gradcam(model, path, 1, target_size=SIZE)
    x = model.preprocess(img_to_array(load_img(path, target_size=SIZE))[None])
    np.testing.assert_array_equal(got.heatmap, explain.gradcam(model, x, 1).heatmap)
    assert got.overlay.mode == "RGB" and got.overlay.size == (SIZE[1], SIZE[0])
    assert got.image.size == got.overlay.size
    np.testing.assert_array_equal(np.asarray(got.image), np.asarray(load_img(path, target_size=SIZE)))
    up = got.upsampled()
    assert up.shape == SIZE and 0 <= up.min() and up.max() <= 1


def test_overlay_colours_follow_the_heatmap(articles_pair, tmp_path):
    _, model = articles_pair
    got = explain.gradcam(model, sample_files()[0][0], 0, target_size=SIZE)
    overlay = np.asarray(got.overlay, np.float64)
    up = got.upsampled()
    hot, cold = up > 0.9, up < 0.1
    assert hot.any() and cold.any()
    red_minus_blue = overlay[..., 0] - overlay[..., 2]
    assert red_minus_blue[hot].mean() > red_minus_blue[cold].mean() + 40
    got.save(tmp_path / "overlay.png")
    assert (tmp_path / "overlay.png").stat().st_size > 1000


def test_jet_colour_map_end_points():
    np.testing.assert_array_equal(explain.jet(np.array([0.0, 0.5, 1.0])),
                                  [[0, 0, 128], [128, 255, 128], [128, 0, 0]])


def test_clear_errors(articles_pair):
    _, model = articles_pair
    with pytest.raises(ValueError, match="class_index"):
        explain.gradcam(model, X[0], 2)
    with pytest.raises(ValueError, match="class_index.*'Flu'"):
        explain.gradcam(model, X[0], "Flu")
    with pytest.raises(ValueError, match="CAM needs a single Dense layer"):
        explain.cam(model, X[0])
    with pytest.raises(ValueError, match="image"):
        explain.gradcam(model, X[:2])
    backbone = ResNet50(include_top=False, weights=None, pooling="avg")
    with pytest.raises(ValueError, match="no Dense head"):
        explain.gradcam(backbone, X[0])
    for value in (np.nan, np.inf):  # a heatmap of an image the model cannot diagnose
        bad = X[0].copy()
        bad[5, 7, 1] = value
        with pytest.raises(ValueError, match=r"image: NaN or infinite pixel values \(1 of"):
            explain.gradcam(model, bad)


# --- covidx predict --gradcam --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    ResNet50(weights=None, classes=2, class_names=["COV19", "Normal"], seed=7).save(path, dtype="float16")
    return str(path)


def test_cli_predict_json_with_gradcam(tmp_path, small_model_file, capsys):
    import json

    from covidx import __main__ as cli

    files = [p for p, _ in sample_files()[:3]]
    out_dir = tmp_path / "heatmaps"
    code = cli.main(["predict", *files, str(tmp_path / "missing.png"), "--json", "--gradcam", str(out_dir),
                     "--model", small_model_file, "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 1  # the missing file
    records = json.loads(captured.out)  # stdout holds only JSON
    assert [r["path"] for r in records] == files + [str(tmp_path / "missing.png")]
    assert "no such image file" in records[-1]["error"] and "gradcam" not in records[-1]
    assert "3/4" in captured.err or "4/4" in captured.err  # the progress bar went to stderr
    model = covidx.load_model(small_model_file)
    from PIL import Image

    for r in records[:3]:
        assert r["gradcam"] == str(out_dir / (os.path.splitext(os.path.basename(r["path"]))[0] + ".gradcam.png"))
        img = Image.open(r["gradcam"])
        assert img.size == (224, 224) and img.mode == "RGB"
        want = explain.gradcam(model, r["path"], model.class_names.index(r["predicted"]))
        np.testing.assert_array_equal(np.asarray(img), np.asarray(want.overlay))


def test_cli_predict_csv_gradcam_column_and_name_clashes(tmp_path, small_model_file, capsys):
    import csv

    from covidx import __main__ as cli

    src = sample_files()[0][0]
    for d in ("a", "b"):
        os.makedirs(tmp_path / d)
        shutil.copy(src, tmp_path / d / "same.png")
    code = cli.main(["predict", str(tmp_path / "a"), str(tmp_path / "b"), "--csv", "--gradcam", str(tmp_path / "h"),
                     "--model", small_model_file])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert code == 0 and [os.path.basename(r["gradcam"]) for r in rows] == ["same.gradcam.png", "same-2.gradcam.png"]
