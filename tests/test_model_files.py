"""covidx's native model files: round trips and refusal of broken files."""
import json
import os
import struct

import numpy as np
import pytest

import covidx
from covidx import safetensors_io
from covidx.applications.resnet50 import ResNet50


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = ResNet50(weights=None, classes=2, head=(32,), class_names=["COV19", "Normal"],
                     preprocessing={"rescale": 1 / 255}, seed=5)
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    model.save(path)
    return model, path


def x():
    return np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)


def test_round_trip_keeps_everything(saved):
    model, path = saved
    loaded = covidx.load_model(path)
    assert loaded.class_names == ["COV19", "Normal"]
    assert loaded.preprocessing == {"rescale": 1 / 255}
    assert loaded.architecture == model.architecture
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(x()), model.predict(x()))
    tensors, meta = safetensors_io.load(path)
    assert meta["format"] == "covidx" and meta["format_version"] == "1"
    assert tensors["conv1_conv/kernel"].shape == (7, 7, 3, 64)


def test_float16_files(saved, tmp_path):
    model, _ = saved
    model.save(tmp_path / "h.safetensors", dtype="float16")
    loaded = covidx.load_model(tmp_path / "h.safetensors")
    want = [w.astype(np.float16).astype(np.float32) for w in model.get_weights()]
    for a, b in zip(want, loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_truncated_file_is_refused(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        bad = tmp_path / ("cut%d.safetensors" % cut)
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="cut%d.safetensors" % cut):
            covidx.load_model(bad)


def write_raw(path, header, payload=b""):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + payload)


@pytest.mark.parametrize("header,payload,words", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "bytes for shape"),
    ({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "unsupported dtype"),
    ({"a": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4]}}, b"\0" * 4, "bad shape"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 8, "overlap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "not a covidx model"),
    ({"__metadata__": {"format": "covidx", "format_version": "1", "architecture": "{"}}, b"", "not valid JSON"),
    ({"__metadata__": {"format": "covidx", "format_version": "9"}}, b"", "newer"),
    ({"__metadata__": {"format": "covidx", "format_version": "1",
                       "architecture": json.dumps({"family": "vgg16"})}}, b"", "only 'resnet50'"),
])
def test_inconsistent_files_are_refused(tmp_path, header, payload, words):
    path = tmp_path / "bad.safetensors"
    write_raw(path, header, payload)
    with pytest.raises(ValueError, match=words):
        covidx.load_model(path)


def test_missing_weights_are_named(saved, tmp_path):
    model, path = saved
    tensors, meta = safetensors_io.load(path)
    del tensors["conv3_block2_2_bn/gamma"]
    safetensors_io.save(tmp_path / "missing.safetensors", tensors, meta)
    with pytest.raises(ValueError, match="conv3_block2_2_bn/gamma"):
        covidx.load_model(tmp_path / "missing.safetensors")


def test_header_length_beyond_file(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(ValueError, match="does not fit"):
        covidx.load_model(path)


def test_not_a_file():
    with pytest.raises(FileNotFoundError, match="no such file"):
        covidx.load_model("/nonexistent/model.safetensors")
    if covidx.model.default_model_path() is None:  # an installation without the shipped model
        with pytest.raises(FileNotFoundError):
            covidx.load_model()


def test_no_argument_loads_the_shipped_model():
    path = covidx.model.default_model_path()
    if path is None:
        pytest.skip("this installation has no shipped model")
    model = covidx.load_model()
    assert model.class_names == ["COV19", "Normal"] and model.output_shape == (None, 2)
    assert model.preprocessing == {"rescale": 1 / 255} and model.metrics_names == ["loss", "accuracy"]
    assert [d["units"] for d in model.architecture["head"]] == [1024, 1024, 1024, 512, 2]
    assert os.path.getsize(path) < 64 * 2**20


def test_recorded_preprocessing_is_applied(saved):
    model, _ = saved
    raw = np.full((1, 2, 2, 3), 255.0, np.float32)
    np.testing.assert_allclose(model.preprocess(raw), 1.0, rtol=1e-6)
    caffe = ResNet50(weights=None, include_top=False, pooling="avg", seed=0)  # default: 'caffe'
    np.testing.assert_allclose(caffe.preprocess(raw)[0, 0, 0], [255 - 103.939, 255 - 116.779, 255 - 123.68],
                               rtol=1e-6)
    assert raw[0, 0, 0, 0] == 255.0  # the caller's array is left alone
    caffe.preprocessing = "imagenet?"
    with pytest.raises(ValueError, match="unknown preprocessing"):
        caffe.preprocess(raw)


def test_backbone_of_a_model_file_keeps_its_input_standardisation(tmp_path):
    """ResNet50(weights=<covidx file>, include_top=False) is that model's backbone, input layers
    included: its features are the ones the model's head sees (the fine-tuning notebook's base)."""
    model = ResNet50(weights=None, classes=2, head=(32,), class_names=["COV19", "Normal"],
                     preprocessing={"rescale": 1 / 255}, seed=7, input_norm=1e-5)
    path = tmp_path / "standardised.safetensors"
    model.save(path)
    base = ResNet50(weights=str(path), include_top=False, pooling="avg")
    assert base.architecture["input_norm"] == model.architecture["input_norm"]
    assert base.preprocessing == {"rescale": 1 / 255}
    xs = x() * 3 + 0.5
    np.testing.assert_allclose(base.predict(xs), model.features(xs), rtol=1e-5, atol=1e-6)
    # Reference: the standardisation done in NumPy, into the same weights without the layer.
    plain = ResNet50(weights=None, include_top=False, pooling="avg", seed=0)
    plain.set_weights(base.get_weights())
    x64 = xs.astype(np.float64)
    mean = x64.mean(axis=(1, 2, 3), keepdims=True)
    std = np.sqrt(x64.var(axis=(1, 2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(base.predict(xs), plain.predict(((x64 - mean) / std).astype(np.float32)),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="input_norm"):
        ResNet50(weights=str(path), include_top=False, pooling="avg", input_norm=1e-3)


def test_formats_return_plain_parts_and_saving_builds_the_model(saved, tmp_path):
    """Every reader gives data, not a model: the covidx file's and a Keras file's parts hold the
    saved weights, class names and preprocessing; load_model is those parts made a model."""
    from covidx import formats, saving

    model, path = saved
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    keras_path = str(tmp_path / "m.keras")
    model.save(keras_path)
    want = dict(model.named_weights)
    for p, kind in ((str(path), "covidx"), (keras_path, "keras")):
        parts = formats.read(p)
        assert type(parts) is formats.Parts and parts.kind == kind and formats.sniff(p) in ("safetensors", "zip")
        assert parts.arch == model.architecture and parts.class_names == ["COV19", "Normal"]
        assert parts.preprocessing == {"rescale": 1 / 255}
        assert set(parts.weights) == set(want)
        for k, v in want.items():
            np.testing.assert_array_equal(np.asarray(parts.weights[k], np.float32), v)
        built = saving.model_from_parts(parts, p)
        np.testing.assert_array_equal(built.predict(x()), model.predict(x()))
    assert formats.read(keras_path).compile_config["loss"] == "categorical_crossentropy"
    assert covidx.load_model is saving.load_model
