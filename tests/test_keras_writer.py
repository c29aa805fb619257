"""Keras files that covidx writes (model.save to .keras / .h5, save_weights, ModelCheckpoint,
to_json, the input layers written back), checked by the real Keras reading them (test-only
dependencies: Keras 3 on its torch backend, PyTorch, h5py), and the choice of format by the
file's extension. The reference networks: tests/framework_files.py."""
import json
import os
import pickle
import zipfile

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

import covidx  # noqa: E402
from covidx.applications.resnet50 import ResNet50  # noqa: E402
from covidx.data import sample_files  # noqa: E402
from covidx.formats import ModelFileError  # noqa: E402
from covidx.preprocessing.image import img_to_array, load_img  # noqa: E402
from framework_files import (ARTICLES, CLASSES, articles_head, assert_matches, input_norm_model,  # noqa: E402
                             keras_articles_model, keras_model_with_head, keras_predict)


def covidx_articles(articles, **kwargs):
    """The articles' model in covidx with the Keras model's weights."""
    model = ResNet50(weights=None, class_names=CLASSES, **dict(ARTICLES, **kwargs))
    model.set_weights(list(articles["weights"].values()))
    return model


def keras_config(path):
    """The model config in a Keras file."""
    if str(path).endswith(".keras"):
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("config.json"))
    with h5py.File(path) as f:
        return json.loads(f.attrs["model_config"])


def keras_layers(path):
    """[(name, class)] of a Keras file's model config."""
    return [(layer["name"], layer["class_name"]) for layer in keras_config(path)["config"]["layers"]]


def keras_config_of(path, name):
    """One layer's config in a Keras file."""
    return next(layer["config"] for layer in keras_config(path)["config"]["layers"] if layer["name"] == name)


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_covidx_writes_keras_files_that_keras_loads(articles, tmp_path, ext):
    """model.save('x.keras' / 'x.h5') writes the real Keras format: keras.models.load_model reads it
    with the same outputs and compile settings; saved again by Keras, covidx reads it back."""
    model = covidx_articles(articles, preprocessing={"rescale": 1 / 255})
    model.compile(optimizer=covidx.optimizers.SGD(learning_rate=0.02, momentum=0.9), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    assert_matches(model.predict(articles["x"], verbose=0), articles["want"])
    path = tmp_path / ("covidx" + ext)
    model.save(path)
    assert path.read_bytes()[:4] == (b"PK\x03\x04" if ext == ".keras" else b"\x89HDF")
    loaded = keras.models.load_model(path)
    assert len(loaded.layers) == 175 + 6
    assert_matches(keras_predict(loaded, articles["x"]), articles["want"])
    assert type(loaded.optimizer).__name__ == "SGD"
    assert float(keras.ops.convert_to_numpy(loaded.optimizer.learning_rate)) == pytest.approx(0.02)
    assert float(loaded.optimizer.momentum) == pytest.approx(0.9)
    assert loaded.evaluate(articles["x"], np.eye(2)[[0] * 4 + [1] * 4], verbose=0)[1] == pytest.approx(
        model.evaluate(articles["x"], np.eye(2)[[0] * 4 + [1] * 4], verbose=0)[1])
    back = covidx.load_model(path)  # covidx's extras (class names, preprocessing) survive
    assert back.class_names == CLASSES and back.preprocessing == {"rescale": 1 / 255}
    assert back.architecture == model.architecture and back.metrics_names == ["loss", "accuracy"]
    assert type(back.optimizer).__name__ == "SGD" and back.optimizer.get_config()["momentum"] == pytest.approx(0.9)
    assert back.optimizer.learning_rate == pytest.approx(0.02)
    assert_matches(back.predict(articles["x"], verbose=0), articles["want"])
    again = tmp_path / ("keras" + ext)  # covidx -> Keras -> covidx
    loaded.save(again)
    twice = covidx.load_model(again)
    assert twice.architecture == model.architecture and twice.class_names is None
    assert_matches(twice.predict(articles["x"], verbose=0), articles["want"])


def test_save_weights_and_load_weights_with_keras(articles, tmp_path):
    model = covidx_articles(articles)
    model.save_weights(tmp_path / "covidx.weights.h5")
    target = keras_articles_model({k: np.zeros_like(v) for k, v in articles["weights"].items()})
    target.load_weights(tmp_path / "covidx.weights.h5")
    assert_matches(keras_predict(target, articles["x"]), articles["want"])
    fresh = ResNet50(weights=None, seed=9, **ARTICLES)
    fresh.load_weights(articles["paths"][".weights.h5"])  # written by Keras
    assert_matches(fresh.predict(articles["x"], verbose=0), articles["want"])
    fresh = ResNet50(weights=None, seed=9, **ARTICLES)
    fresh.load_weights(tmp_path / "covidx.weights.h5")
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"must end in `\.weights\.h5`"):
        model.save_weights(tmp_path / "w.h5")
    with pytest.raises(ModelFileError, match="articles"):
        ResNet50(weights=None, classes=2, head=(1024, 512)).load_weights(articles["paths"][".keras"])


def test_save_chooses_the_format_by_extension(articles, tmp_path):
    model = covidx_articles(articles)
    for name in ("m.safetensors", "m.covidx"):
        model.save(tmp_path / name)
        assert covidx.safetensors_io.looks_like_safetensors(str(tmp_path / name))
        assert covidx.load_model(tmp_path / name).class_names == CLASSES
    for name in ("m.pt", "m", "m.onnx"):
        with pytest.raises(ValueError, match=r"\.keras.*\.h5.*\.safetensors"):
            model.save(tmp_path / name)
    with pytest.raises(ValueError, match="float32"):
        model.save(tmp_path / "m.keras", dtype="float16")
    torchvision_style = ResNet50(weights=None, variant="v1.5", classes=2, seed=1)
    with pytest.raises(ValueError, match=r"v1\.5.*safetensors"):
        torchvision_style.save(tmp_path / "v15.keras")


def test_safetensors_whose_header_length_starts_like_a_pickle(articles, tmp_path):
    """A safetensors file starts with its header's length (8 bytes, little-endian); for one length
    in 256 the first byte is 0x80, a pickle's first byte. Such a file is still read as safetensors
    (the header padded with spaces, as the format allows, to such a length)."""
    import struct

    model = covidx_articles(articles)
    model.save(tmp_path / "m.safetensors")
    raw = (tmp_path / "m.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    pad = (0x80 - n) % 256
    padded = struct.pack("<Q", n + pad) + raw[8:8 + n] + b" " * pad + raw[8 + n:]
    assert padded[:1] == b"\x80"
    (tmp_path / "padded.safetensors").write_bytes(padded)
    assert covidx.formats.sniff(str(tmp_path / "padded.safetensors")) == "safetensors"
    back = covidx.load_model(tmp_path / "padded.safetensors")
    for a, b in zip(back.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    backbone = ResNet50(weights=str(tmp_path / "padded.safetensors"), include_top=False)
    for a, b in zip(backbone.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # a pickle is still a pickle
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert covidx.formats.sniff(str(tmp_path / "p.pt")) == "pickle"


def test_model_checkpoint_writes_keras_files(articles, tmp_path):
    from covidx.keras.callbacks import ModelCheckpoint
    from covidx import training

    model = covidx_articles(articles)
    for layer in model.layers[:175]:
        layer.trainable = False
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    feats = model.features(articles["x"], batch_size=8)
    y = np.eye(2, dtype=np.float32)[[0] * 4 + [1] * 4]
    checkpoints = [ModelCheckpoint(str(tmp_path / "best.keras"), monitor="loss", save_best_only=True),
                   ModelCheckpoint(str(tmp_path / "last.h5")),
                   ModelCheckpoint(str(tmp_path / "w.weights.h5"), save_weights_only=True)]
    training.fit_features(model, feats, y, epochs=1, verbose=0, callbacks=checkpoints)
    want = model.predict(articles["x"], verbose=0)
    for name in ("best.keras", "last.h5"):
        assert_matches(keras_predict(keras.models.load_model(tmp_path / name), articles["x"]), want)
    target = keras_articles_model({k: np.zeros_like(v) for k, v in articles["weights"].items()})
    target.load_weights(tmp_path / "w.weights.h5")
    assert_matches(keras_predict(target, articles["x"]), want)


def test_to_json_builds_the_same_model_in_keras(articles):
    model = covidx_articles(articles)
    rebuilt = keras.models.model_from_json(model.to_json())
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    rebuilt.set_weights(model.get_weights())
    assert_matches(keras_predict(rebuilt, articles["x"]), articles["want"])
    config = model.get_config()
    assert config["name"] == model.name and len(config["layers"]) == 181
    assert config["output_layers"] == ["dense_4", 0, 0]


def test_rescaling_at_the_input(articles, tmp_path):
    """keras.layers.Rescaling at the input: covidx applies it inside the model as Keras does
    (predict takes the raw images), and writes it back."""
    head, set_head = articles_head(articles["weights"])
    model = keras_model_with_head(articles["weights"], head, [keras.layers.Rescaling(2.0, offset=-50.0,
                                                                                     name="scale_in")])
    set_head()
    raw = np.ascontiguousarray((articles["x"] + 50.0) / 2.0, np.float32)  # rescaled: the test images again
    want = keras_predict(model, raw)
    assert np.abs(want - articles["want"]).max() < 1e-4
    for name in ("rescaled.keras", "rescaled.h5"):
        model.save(tmp_path / name)
        loaded = covidx.load_model(tmp_path / name)
        assert loaded.architecture["rescaling"] == {"name": "scale_in", "scale": 2.0, "offset": -50.0}
        assert loaded.preprocessing is None
        assert_matches(loaded.predict(raw, verbose=0), want)
    loaded.save(tmp_path / "back.h5")
    assert keras_layers(tmp_path / "back.h5")[:3] == [("input_layer", "InputLayer"), ("scale_in", "Rescaling"),
                                                     ("conv1_pad", "ZeroPadding2D")]
    assert_matches(keras_predict(keras.models.load_model(tmp_path / "back.h5"), raw), want)


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_input_norm_layer_is_read_and_written(articles, tmp_path, ext):
    """The configs only: covidx recognises the layer, sets architecture['input_norm'], and writes
    the same layer back where Keras reads it."""
    model = input_norm_model(articles["weights"])
    model.save(tmp_path / ("norm" + ext))
    loaded = covidx.load_model(tmp_path / ("norm" + ext))
    assert loaded.architecture["input_norm"] == {"name": "input_norm", "epsilon": 1e-5}
    loaded.save(tmp_path / ("back" + ext))
    assert keras_layers(tmp_path / ("back" + ext))[:3] == [
        ("input_layer", "InputLayer"), ("input_norm", "LayerNormalization" if ext == ".keras" else "GroupNormalization"),
        ("conv1_pad", "ZeroPadding2D")]
    written = keras_config_of(tmp_path / ("back" + ext), "input_norm")
    layer = keras.models.load_model(tmp_path / ("back" + ext)).get_layer("input_norm")
    assert (written["center"], written["scale"], written["epsilon"]) == (False, False, 1e-5)
    assert not layer.center and not layer.scale and layer.epsilon == 1e-5
    if ext == ".keras":
        assert written["axis"] == [1, 2, 3] and list(layer.axis) == [1, 2, 3]
    else:  # Keras's legacy .h5 reader turns a LayerNormalization's axis list into -1 (its own files too):
        # the same standardisation is written as GroupNormalization with one group, which it keeps
        assert keras_layers(tmp_path / "back.h5")[1] == ("input_norm", "GroupNormalization")
        assert (written["groups"], written["axis"]) == (1, -1)
        assert type(layer).__name__ == "GroupNormalization" and layer.groups == 1 and layer.axis == -1
    assert "input_norm" not in covidx_articles(articles).architecture  # absent: no such layer written
    assert "LayerNormalization" not in dict(keras_layers(articles["paths"][".h5"])).values()


def sample_images(size=224):
    """The 8 bundled X-rays as raw 0..255 RGB, float32."""
    return np.stack([img_to_array(load_img(p, target_size=(size, size))) for p, _ in sample_files()])


@pytest.mark.parametrize("ext", [".h5", ".keras"])
def test_shipped_model_saved_as_keras_scores_the_same_in_keras(tmp_path, ext):
    """The shipped model (input standardisation in front of ResNet50) saved as a Keras file: Keras 3
    loads it with covidx's outputs, and covidx reads back both that file and Keras's own save of it."""
    if covidx.model.default_model_path() is None:
        pytest.skip("no shipped model in this installation")
    model = covidx.load_model()
    assert model.architecture.get("input_norm")
    x = model.preprocess(sample_images())
    want = model.predict(x, verbose=0)
    path = tmp_path / ("shipped" + ext)
    model.save(path)
    loaded = keras.models.load_model(path)
    assert_matches(keras_predict(loaded, x), want)
    back = covidx.load_model(path)
    assert back.architecture == model.architecture and back.class_names == model.class_names
    assert_matches(back.predict(x, verbose=0), want)
    again = tmp_path / ("resaved" + ext)
    loaded.save(again)  # Keras's own file of it: no covidx entry
    twice = covidx.load_model(again)
    assert twice.architecture["input_norm"] == model.architecture["input_norm"]
    assert_matches(twice.predict(x, verbose=0), want)
