"""ONNX export (model.to_onnx): ONNX Runtime runs the exported file to covidx's outputs, and to
Keras's for a Keras file with input layers (test-only dependencies: onnx, onnxruntime, Keras 3 on
its torch backend, PyTorch, h5py). The reference networks: tests/framework_files.py."""
import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

import covidx  # noqa: E402
from covidx.applications.resnet50 import ResNet50  # noqa: E402
from framework_files import (CLASSES, articles_head, assert_matches, keras_model_with_head,  # noqa: E402
                             keras_predict, xrays)


def run_onnx(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_onnx_export_matches_covidx(articles, torchvision_files, tmp_path):
    pytest.importorskip("onnx")
    for name, path, x in [("keras", articles["paths"][".keras"], articles["x"]),
                          ("torch", torchvision_files["paths"]["zip"], torchvision_files["x"])]:
        model = covidx.load_model(path, class_names=CLASSES)
        model.to_onnx(tmp_path / (name + ".onnx"))
        assert_matches(run_onnx(tmp_path / (name + ".onnx"), x), model.predict(x, verbose=0))
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "keras.onnx")).metadata_props}
    assert json.loads(meta["class_names"]) == CLASSES


def test_onnx_export_of_a_feature_map_model(tmp_path):
    pytest.importorskip("onnx")
    model = ResNet50(weights=None, include_top=False, pooling=None, seed=3)
    model.to_onnx(tmp_path / "features.onnx", opset=13)
    x = xrays(64)[:2]
    got = run_onnx(tmp_path / "features.onnx", x)
    want = model.predict(x, verbose=0)
    assert got.shape == want.shape == (2, 2, 2, 2048)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    with pytest.raises(ValueError, match="opset"):
        model.to_onnx(tmp_path / "old.onnx", opset=7)


@pytest.mark.parametrize("opset", [17, 18])
def test_onnx_export_of_input_layers_matches_keras(articles, tmp_path, opset):
    """A Keras model with Rescaling and the input LayerNormalization, read by covidx and exported
    to ONNX: ONNX Runtime gives Keras's outputs."""
    pytest.importorskip("onnx")
    head, set_head = articles_head(articles["weights"])
    norm = keras.layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False, epsilon=1e-5,
                                           name="input_norm")
    model = keras_model_with_head(articles["weights"], head, [keras.layers.Rescaling(1 / 255.0), norm])
    set_head()
    model.save(tmp_path / "inputs.keras")
    loaded = covidx.load_model(tmp_path / "inputs.keras")
    loaded.to_onnx(tmp_path / "inputs.onnx", opset=opset)
    raw = np.ascontiguousarray(articles["x"] + 124.0, np.float32)
    want = keras_predict(model, raw)
    assert want[:, 0].std() > 1e-3, want
    assert_matches(run_onnx(tmp_path / "inputs.onnx", raw), want)


@pytest.mark.parametrize("opset", [13, 18])
def test_onnx_export_with_input_standardisation(tmp_path, opset):
    """The input standardisation layer is exported as plain ONNX ops that ONNX Runtime runs to the
    same outputs as covidx (opset 18 takes ReduceMean's axes as an input)."""
    pytest.importorskip("onnx")
    model = ResNet50(weights=None, classes=2, head=(16,), input_norm=1e-5, seed=4)
    x = xrays(64)[:3] * np.float32(1 / 255)
    path = tmp_path / "norm.onnx"
    model.to_onnx(path, opset=opset)
    got, want = run_onnx(path, x), model.predict(x, verbose=0)
    assert np.abs(got - want).max() <= 1e-5
    plain = ResNet50(weights=None, classes=2, head=(16,), seed=4)
    plain.to_onnx(tmp_path / "plain.onnx", opset=opset)
    assert np.abs(run_onnx(tmp_path / "plain.onnx", x) - want).max() > 1e-3  # the layer is really there
