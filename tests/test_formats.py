"""Model files from other frameworks, made by the real frameworks (test-only dependencies: Keras 3
on its torch backend, PyTorch, h5py, onnx, onnxruntime): covidx's predictions must match the
framework's own within 1e-5, and broken or hostile files must give clear errors.

The test networks have random weights, conditioned like trained ones so that the comparison means
something: batchnorm statistics measured on real X-rays, small gains on the last batchnorm of each
residual branch (float32 error then stays ~1e-6 instead of growing through 50 layers), and a last
layer scaled so probabilities spread over roughly 0.1-0.9."""
import collections
import copy
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
from torch import nn  # noqa: E402

import covidx  # noqa: E402
from conftest import ARTICLES_HEAD  # noqa: E402
from covidx.applications.resnet50 import ResNet50, preprocess_input  # noqa: E402
from covidx.data import sample_files  # noqa: E402
from covidx.formats import ModelFileError  # noqa: E402
from covidx.preprocessing.image import img_to_array, load_img  # noqa: E402
from torch_reference import TorchResNet50  # noqa: E402

torch.set_num_threads(2)
SIZE = 128
TOLERANCE = 1e-5
HEAD_NAMES = ["dense", "dense_1", "dense_2", "dense_3", "dense_4"]
CLASSES = ["COVID-19", "Normal"]


def xrays(size, flip=False):
    """The 8 bundled chest X-rays at size x size, caffe-preprocessed."""
    x = np.stack([img_to_array(load_img(p, target_size=(size, size))) for p, _ in sample_files()])
    return np.ascontiguousarray(preprocess_input(x[:, :, ::-1] if flip else x))


def conditioned_reference(variant, head, seed):
    """A TorchResNet50 with random weights conditioned like a trained network (see the module
    docstring); batchnorm statistics come from the mirrored X-rays, not the test inputs."""
    torch.manual_seed(seed)
    model = TorchResNet50(variant, head)
    calibration = torch.from_numpy(xrays(SIZE, flip=True))
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                if name.endswith("bn3"):
                    m.weight.mul_(0.2)
                m.bias.normal_(0.0, 0.2)
                m.momentum = None
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)
        model.train()
        model(calibration)
        model.eval()
        for layer in model.head:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            layer.bias.zero_()
        inputs = model.features(calibration)
        for layer in model.head[:-1]:
            inputs = torch.relu(layer(inputs))
        last = model.head[-1]
        mu = inputs.mean(dim=0)
        last.weight -= torch.outer(last.weight @ mu, mu) / (mu @ mu)
        logits = inputs @ last.weight.T
        scale = 2.0 * float(logits.std()) + 1e-6
        last.weight /= scale
        last.bias.copy_(-logits.mean(dim=0) / scale)
    return model


def assert_meaningful(probs):
    """Outputs far from saturation and varying between images, or a match would prove little."""
    assert 0.02 < probs.min() and probs.max() < 0.98, probs
    assert probs[:, 0].std() > 0.05, probs


def assert_matches(got, want):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE, np.abs(got - want).max()


# --- Keras models ------------------------------------------------------------------------------


def keras_articles_model(weights, size=SIZE):
    """The articles' model in Keras 3: ResNet50 without top, GAP, Dense(1024, relu) x3,
    Dense(512, relu), Dense(2, softmax); weights {'layer/weight': array}."""
    base = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(size, size, 3))
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(base.output)
    for name, (units, activation) in zip(HEAD_NAMES, ARTICLES_HEAD):
        x = keras.layers.Dense(units, activation=activation, name=name)(x)
    model = keras.Model(base.input, x, name="articles")
    assert [v.path for v in model.weights] == list(weights)  # Keras's order is covidx's
    model.set_weights(list(weights.values()))
    return model


def keras_predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def covidx_order(weights, arch_kwargs):
    model = ResNet50(weights=None, **arch_kwargs)
    return {k: weights[k] for k in model._weight_keys()}


def save_legacy_weights(model, path):
    """save_weights in the legacy HDF5 layout (Keras 2's model.save_weights('x.h5'))."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


ARTICLES = dict(classes=2, head=(1024, 1024, 1024, 512))


@pytest.fixture(scope="module")
def articles(tmp_path_factory):
    """The articles' Keras model, its predictions, and the files Keras writes of it."""
    ref = conditioned_reference("v1", ARTICLES_HEAD, seed=0)
    weights = covidx_order(ref.keras_weights(HEAD_NAMES), ARTICLES)
    model = keras_articles_model(weights)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    x = xrays(SIZE)
    want = keras_predict(model, x)
    assert_meaningful(want)
    folder = tmp_path_factory.mktemp("keras")
    paths = {kind: folder / ("articles" + kind) for kind in (".h5", ".keras", ".weights.h5")}
    for path in paths.values():
        model.save_weights(path) if path.name.endswith(".weights.h5") else model.save(path)
    paths["legacy_weights.h5"] = folder / "articles_legacy_weights.h5"
    save_legacy_weights(model, paths["legacy_weights.h5"])
    return {"x": x, "want": want, "paths": paths, "weights": weights}


@pytest.mark.parametrize("kind", [".h5", ".keras", ".weights.h5", "legacy_weights.h5"])
def test_keras_files_match_keras(articles, kind):
    model = covidx.load_model(articles["paths"][kind], class_names=CLASSES)
    assert_matches(model.predict(articles["x"], verbose=0), articles["want"])
    assert model.class_names == CLASSES
    assert [d["units"] for d in model.architecture["head"]] == [1024, 1024, 1024, 512, 2]
    assert model.architecture["head"][-1]["activation"] == "softmax"
    for key, array in articles["weights"].items():
        np.testing.assert_array_equal(model.named_weights[key], array)
    if kind in (".h5", ".keras"):  # full models keep their name and compile settings
        assert model.name == "articles"
        assert model.metrics_names == ["loss", "accuracy"]


@pytest.mark.parametrize("kind", [".h5", ".keras", ".weights.h5", "legacy_weights.h5"])
def test_keras_files_load_into_an_architecture(articles, kind):
    model = ResNet50(weights=str(articles["paths"][kind]), class_names=CLASSES, **ARTICLES)
    assert_matches(model.predict(articles["x"], verbose=0), articles["want"])
    with pytest.raises(ModelFileError, match="articles"):
        ResNet50(weights=str(articles["paths"][kind]), classes=2, head=(1024, 512))


def test_content_decides_not_the_extension(articles, tmp_path):
    for kind, disguise in [(".keras", "model.h5"), (".h5", "model.pt"), ("legacy_weights.h5", "model")]:
        path = tmp_path / disguise
        shutil.copy(articles["paths"][kind], path)
        assert_matches(covidx.load_model(path).predict(articles["x"], verbose=0), articles["want"])


def test_nested_and_partly_frozen_sequential(tmp_path):
    """Sequential([ResNet50, GAP, Dropout, Dense(1, sigmoid)]) with the first stages frozen: a
    legacy .h5 then lists the nested model's trainable tensors before the frozen ones."""
    ref = conditioned_reference("v1", [(1, "sigmoid")], seed=1)
    weights = covidx_order(ref.keras_weights(["dense"]), dict(classes=1, classifier_activation="sigmoid", head=()))
    base = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dropout(0.5), keras.layers.Dense(1, activation="sigmoid", name="dense")])
    model.set_weights(list(weights.values()))
    for layer in base.layers[:40]:
        layer.trainable = False
    x = xrays(SIZE)
    want = keras_predict(model, x)
    assert_meaningful(np.concatenate([want, 1 - want], axis=1))
    for name in ("nested.h5", "nested.keras"):
        model.save(tmp_path / name)
        loaded = covidx.load_model(tmp_path / name)
        assert loaded.architecture["head"] == [{"name": "dense", "units": 1, "activation": "sigmoid"}]
        assert_matches(loaded.predict(x, verbose=0), want)
    with h5py.File(tmp_path / "nested.h5") as f:  # the order that makes this case hard
        names = [n.decode() if isinstance(n, bytes) else n for n in f["model_weights/resnet50"].attrs["weight_names"]]
    assert names.index("conv2_block1_1_bn/moving_mean") > names.index("conv5_block3_3_conv/kernel")


def tf2_spelling(src, dst):
    """Rewrites a Keras 3 legacy .h5 the way TF 2.x's Keras wrote it: class 'Model', inbound
    nodes as [[name, 0, 0, {}]], batch_input_shape, plain dtype strings, an input named
    input_1, weight names ending in ':0', byte-string attributes."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        # Keras 3 numbers its input layers per process (input_layer, input_layer_1, ...)
        keras3_input = [layer["name"] for layer in config["config"]["layers"] if layer["class_name"] == "InputLayer"][0]
        rename = {keras3_input: "input_1"}
        for layer in config["config"]["layers"]:
            layer["name"] = layer["config"]["name"] = rename.get(layer["name"], layer["name"])
            layer["config"].pop("optional", None)
            if "batch_shape" in layer["config"]:
                layer["config"]["batch_input_shape"] = layer["config"].pop("batch_shape")
            if isinstance(layer["config"].get("dtype"), dict):
                layer["config"]["dtype"] = "float32"
            sources = []
            for node in layer["inbound_nodes"]:
                args = node["args"][0]
                for t in args if isinstance(args, list) else [args]:
                    sources.append([rename.get(t["config"]["keras_history"][0], t["config"]["keras_history"][0]),
                                    0, 0, {}])
            layer["inbound_nodes"] = [sources] if sources else []
        config["class_name"] = "Model"
        config["config"]["input_layers"] = [["input_1", 0, 0]]
        config["config"]["output_layers"] = [config["config"]["output_layers"]]
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"], f.attrs["backend"] = b"2.4.0", b"tensorflow"
        weights = f["model_weights"]
        weights.move(keras3_input, "input_1")
        layer_names = [rename.get(n, n) for n in weights.attrs["layer_names"]]
        weights.attrs["layer_names"] = [n.encode() for n in layer_names]
        for layer in layer_names:
            group = weights[layer]
            names = list(group.attrs["weight_names"])
            for name in names:
                group.move(name, name + ":0")
            group.attrs["weight_names"] = [(n + ":0").encode() for n in names] if names else np.zeros(0)


def test_tf2_era_h5(articles, tmp_path):
    path = tmp_path / "covid_resnet50.h5"
    tf2_spelling(articles["paths"][".h5"], path)
    with h5py.File(path) as f:
        config = json.loads(f.attrs["model_config"])
    assert config["config"]["layers"][1]["inbound_nodes"] == [[["input_1", 0, 0, {}]]]
    model = covidx.load_model(path)
    assert_matches(model.predict(articles["x"], verbose=0), articles["want"])
    assert type(model.optimizer).__name__ == "Adam"  # the fixture's compile(optimizer="adam")
    with h5py.File(path, "r+") as f:  # TF 2.11-2.15's spelling of the optimizer
        training = json.loads(f.attrs["training_config"])
        training["optimizer_config"] = {"class_name": "Custom>Adam", "config": {
            "name": "Adam", "learning_rate": 0.002, "decay": 0.0, "beta_1": 0.8, "beta_2": 0.999, "epsilon": 1e-07,
            "amsgrad": False, "jit_compile": True, "is_legacy_optimizer": False}}
        f.attrs["training_config"] = json.dumps(training).encode()
    optimizer = covidx.load_model(path).optimizer
    assert type(optimizer).__name__ == "Adam" and optimizer.learning_rate == pytest.approx(0.002)
    assert optimizer.get_config()["beta_1"] == pytest.approx(0.8)


# --- Keras files that covidx writes ------------------------------------------------------------


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


def keras_model_with_head(weights, head_layers, pre_layers=()):
    """Keras's ResNet50 (with `weights` for its layers) behind pre_layers at the input, then GAP
    and head_layers."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for layer in pre_layers:
        x = layer(x)
    base = keras.applications.ResNet50(weights=None, include_top=False, input_tensor=x)
    base.set_weights([weights[v.path] for v in base.weights])
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    for layer in head_layers:
        x = layer(x)
    return keras.Model(inputs, x)


def articles_head(weights):
    """The articles' Dense layers (Keras), with their weights set once built."""
    layers = [keras.layers.Dense(units, activation=activation, name=name)
              for name, (units, activation) in zip(HEAD_NAMES, ARTICLES_HEAD)]
    return layers, lambda: [layer.set_weights([weights[layer.name + "/kernel"], weights[layer.name + "/bias"]])
                            for layer in layers]


def test_keras_heads_with_batchnorm_and_dropout_load(articles, tmp_path):
    """Dense -> BatchNormalization -> Dropout -> Activation -> Dense, with trained-looking batchnorm
    statistics: covidx folds the batchnorm into the Dense layers and matches Keras."""
    rng = np.random.default_rng(4)
    head = [keras.layers.Dense(64, name="fc"), keras.layers.BatchNormalization(name="fc_bn"),
            keras.layers.Dropout(0.4), keras.layers.Activation("relu"),
            keras.layers.BatchNormalization(center=False, name="bn2"),
            keras.layers.Dense(2, activation="softmax", name="out")]
    model = keras_model_with_head(articles["weights"], head)
    fc = model.get_layer("fc")
    fc.set_weights([rng.normal(0, 0.05, (2048, 64)).astype("f4"), rng.normal(0, 0.1, 64).astype("f4")])
    model.get_layer("fc_bn").set_weights([rng.uniform(0.5, 1.5, 64), rng.normal(0, 0.2, 64), rng.normal(0, 0.3, 64),
                                          rng.uniform(0.3, 2.0, 64)])
    model.get_layer("bn2").set_weights([rng.uniform(0.5, 1.5, 64), rng.normal(0.5, 0.1, 64),
                                        rng.uniform(0.5, 2.0, 64)])
    model.get_layer("out").set_weights([rng.normal(0, 0.3, (64, 2)).astype("f4"), np.zeros(2, "f4")])
    want = keras_predict(model, articles["x"])
    assert want[:, 0].std() > 0.01, want
    for name in ("bn_head.keras", "bn_head.h5"):
        model.save(tmp_path / name)
        loaded = covidx.load_model(tmp_path / name)
        assert [(d["name"], d["units"], d["activation"]) for d in loaded.architecture["head"]] == [
            ("fc", 64, "relu"), ("out", 2, "softmax")]
        assert_matches(loaded.predict(articles["x"], verbose=0), want)
    bad = keras_model_with_head(articles["weights"], [keras.layers.Dense(4, activation="relu"),
                                                      keras.layers.BatchNormalization(name="last_bn")])
    bad.save(tmp_path / "bn_last.keras")
    with pytest.raises(ModelFileError, match="bn_last.keras.*end the head with a Dense layer"):
        covidx.load_model(tmp_path / "bn_last.keras")


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


def input_norm_model(weights):
    """The articles' model behind LayerNormalization(axis=[1, 2, 3], center=False, scale=False), the
    input normalisation covidx's architecture records as "input_norm"."""
    head, set_head = articles_head(weights)
    norm = keras.layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False, epsilon=1e-5,
                                           name="input_norm")
    model = keras_model_with_head(weights, head, [norm])
    set_head()
    return model


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


def test_input_norm_outputs_match_keras(articles, tmp_path):
    """Needs the engine to run architecture['input_norm'] (the per-image LayerNormalization)."""
    model = input_norm_model(articles["weights"])
    model.save(tmp_path / "norm.keras")
    loaded = covidx.load_model(tmp_path / "norm.keras")
    raw = np.ascontiguousarray(articles["x"] * 3.0 + 40.0, np.float32)  # the layer makes the scale irrelevant
    want = keras_predict(model, raw)
    assert want[:, 0].std() > 1e-3, want  # the images still differ after the normalisation
    assert_matches(loaded.predict(raw, verbose=0), want)


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


def test_cli_scores_a_keras_file_as_the_articles_cell(articles, tmp_path, capsys):
    """A model trained and saved in Keras (which records no input scaling): `covidx evaluate
    --rescale 1/255` prints the accuracy and loss of the articles' cell in Keras,
    ImageDataGenerator(rescale=1./255).flow_from_directory + model.evaluate, on the same file;
    without --rescale it refuses before scoring, saying how."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator as KerasGenerator

    from covidx import __main__ as cli

    data = tmp_path / "data"
    for path, label in sample_files():
        os.makedirs(data / label, exist_ok=True)
        shutil.copy(path, data / label)
    model = keras_articles_model(articles["weights"], size=224)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.save(tmp_path / "m.keras")
    model = keras.models.load_model(tmp_path / "m.keras")
    it = KerasGenerator(rescale=1. / 255).flow_from_directory(data, target_size=(224, 224), shuffle=False)
    loss, accuracy = model.evaluate(it, verbose=0)
    raw_loss, raw_accuracy = model.evaluate(
        KerasGenerator().flow_from_directory(data, target_size=(224, 224), shuffle=False), verbose=0)
    assert abs(raw_loss - loss) > 1e-3  # the scaling matters for this model
    capsys.readouterr()
    assert cli.main(["evaluate", str(data), "--model", str(tmp_path / "m.keras")]) == 2
    captured = capsys.readouterr()
    assert "--rescale 1/255" in captured.err and "accuracy" not in captured.out
    assert cli.main(["evaluate", str(data), "--model", str(tmp_path / "m.keras"), "--rescale", "1/255"]) == 0
    out = capsys.readouterr().out
    assert "input scaling: rescale=1/255 (--rescale)" in out
    assert "8 images - accuracy: %.4f - loss: %.4f" % (accuracy, loss) in out, out
    assert cli.main(["evaluate", str(data), "--model", str(tmp_path / "m.keras"), "--rescale", "1"]) == 0
    assert "accuracy: %.4f - loss: %.4f" % (raw_accuracy, raw_loss) in capsys.readouterr().out


@pytest.mark.parametrize("ext", [".h5", ".keras"])
def test_compiled_keras_files_keep_trainable_flags_and_optimizer(articles, tmp_path, ext):
    """A Keras model saved with its backbone frozen and compiled with SGD(0.01, momentum=0.9):
    covidx restores each layer's trainable flag and the optimizer as Keras does when it loads
    the file (Keras 3.15 writes no optimizer into a .keras file's compile_config, and gives
    rmsprop for it), and summary() counts Keras's trainable parameters."""
    model = keras_articles_model(articles["weights"])
    for layer in model.layers[:175]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    path = tmp_path / ("frozen" + ext)
    model.save(path)
    ref = keras.models.load_model(path)
    got = covidx.load_model(path)
    want_flags = {layer.name: layer.trainable for layer in ref.layers if layer.count_params()}
    assert {layer.name: layer.trainable for layer in got.layers if layer.count_params()} == want_flags
    trainable = sum(int(np.prod(w.shape)) for w in ref.trainable_weights)
    assert trainable == 4723202 and sum(a.size for a in got.trainable_weights) == trainable
    lines = []
    got.summary(print_fn=lambda line, **kwargs: lines.append(line))
    assert " Trainable params: {:,} ".format(trainable) in "\n".join(lines) + " "
    assert type(got.optimizer).__name__ == type(ref.optimizer).__name__
    assert got.optimizer.learning_rate == pytest.approx(float(keras.ops.convert_to_numpy(ref.optimizer.learning_rate)))
    assert got.optimizer.get_config().get("momentum", 0.0) == pytest.approx(float(getattr(ref.optimizer, "momentum",
                                                                                           0.0)))
    if ext == ".h5":
        assert type(got.optimizer).__name__ == "SGD" and got.optimizer.momentum == pytest.approx(0.9)
    history = got.fit(articles["x"], np.eye(2)[[0] * 4 + [1] * 4], epochs=1, verbose=0)  # the backbone is frozen
    assert np.isfinite(history.history["loss"][0])


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


def test_unsupported_input_layers_are_named(articles, tmp_path):
    model = keras_model_with_head(articles["weights"], [keras.layers.Dense(2, activation="softmax")],
                                  [keras.layers.LayerNormalization(axis=-1, center=False, scale=False,
                                                                   name="channel_norm")])
    model.save(tmp_path / "channel_norm.keras")
    with pytest.raises(ModelFileError, match=r"channel_norm.keras.*'channel_norm' \(LayerNormalization\).*axis"):
        covidx.load_model(tmp_path / "channel_norm.keras")


def test_compile_false_gives_an_uncompiled_model(articles):
    for kind in (".h5", ".keras"):
        assert covidx.load_model(articles["paths"][kind]).metrics_names == ["loss", "accuracy"]
        model = covidx.load_model(articles["paths"][kind], compile=False)
        assert model.metrics_names == [] and model.optimizer is None
        with pytest.raises(ValueError, match=r"must call `compile\(\)`"):
            model.evaluate(articles["x"], np.eye(2)[[0] * 8], verbose=0)
        with pytest.raises((AttributeError, ValueError, RuntimeError)):  # Keras refuses too (less clearly)
            keras.models.load_model(articles["paths"][kind], compile=False).evaluate(
                articles["x"], np.eye(2)[[0] * 8], verbose=0)


# --- graphs covidx does not run ----------------------------------------------------------------


def test_other_networks_name_their_first_unsupported_layer(tmp_path):
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(8, 3, name="my_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    small = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    for name in ("small.keras", "small.h5"):
        small.save(tmp_path / name)
        with pytest.raises(ModelFileError, match=r"%s.*layer 'my_conv' \(Conv2D\).*ResNet50" % name):
            covidx.load_model(tmp_path / name)


def test_a_deeper_resnet_is_named_as_another_architecture(tmp_path):
    """Keras's ResNet101 matches ResNet50 up to conv4_block6: the first layer that differs is named,
    with ResNet50's layer at that point, as another architecture."""
    resnet101 = keras.applications.ResNet101(weights=None, include_top=False, input_shape=(64, 64, 3))
    with zipfile.ZipFile(tmp_path / "resnet101.keras", "w") as z:  # the real config; no weights are reached
        z.writestr("config.json", resnet101.to_json())
        z.writestr("model.weights.h5", b"")
    with pytest.raises(ModelFileError, match=r"layer 'conv4_block7_1_conv' is where ResNet50 has "
                       r"'conv5_block1_1_conv': the file holds another architecture .*ResNet101") as e:
        covidx.load_model(tmp_path / "resnet101.keras")
    assert "filters" not in str(e.value)


def edit_config(src, dst, change):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        change(config["config"]["layers"])
        f.attrs["model_config"] = json.dumps(config)


def _tanh(layers):
    next(layer for layer in layers if layer["name"] == "dense_1")["config"]["activation"] = "tanh"


def _head_layernorm(layers):
    dense = next(layer for layer in layers if layer["name"] == "dense_2")
    layers.insert(layers.index(dense), {**copy.deepcopy(dense), "class_name": "LayerNormalization",
                                        "name": "head_ln"})


def _dilated(layers):
    next(layer for layer in layers if layer["name"] == "conv3_block2_2_conv")["config"]["dilation_rate"] = [2, 2]


@pytest.mark.parametrize("change,words", [
    (_tanh, r"layer 'dense_1' \(Dense\).*activation 'tanh'"),
    (_head_layernorm, r"layer 'head_ln' \(LayerNormalization\).*no such layer"),
    (_dilated, r"layer 'conv3_block2_2_conv' \(Conv2D\).*dilation_rate"),
])
def test_changed_graphs_are_refused_by_layer(articles, tmp_path, change, words):
    path = tmp_path / "changed.h5"
    edit_config(articles["paths"][".h5"], path, change)
    with pytest.raises(ModelFileError, match=words):
        covidx.load_model(path)


# --- PyTorch state_dicts -----------------------------------------------------------------------


def torchvision_state_dict(ref, fc_keys):
    """ref's weights under torchvision's ResNet50 keys (fc_keys: the head's Linear layers)."""
    sd = collections.OrderedDict()

    def put(prefix, module):
        if isinstance(module, nn.Conv2d):
            sd[prefix + ".weight"] = module.weight.detach().clone()
        else:
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                sd["%s.%s" % (prefix, name)] = getattr(module, name).detach().clone()

    put("conv1", ref.conv1)
    put("bn1", ref.bn1)
    for s, stage in enumerate(ref.stages):
        for b, block in enumerate(stage):
            p = "layer%d.%d" % (s + 1, b)
            for i in (1, 2, 3):
                put("%s.conv%d" % (p, i), getattr(block, "conv%d" % i))
                put("%s.bn%d" % (p, i), getattr(block, "bn%d" % i))
            if block.downsample is not None:
                put(p + ".downsample.0", block.downsample[0])
                put(p + ".downsample.1", block.downsample[1])
    for key, layer in zip(fc_keys, ref.head):
        sd[key + ".weight"] = layer.weight.detach().clone()
        sd[key + ".bias"] = layer.bias.detach().clone()
    return sd


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory):
    """A torchvision-layout ResNet50 with a replaced head (fc = Sequential(Linear, ReLU, Linear)),
    its predictions (softmax of its logits), and torch.save files of its state_dict."""
    ref = conditioned_reference("v1.5", [(256, "relu"), (2, "softmax")], seed=2)
    x = xrays(SIZE)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    assert_meaningful(want)
    sd = torchvision_state_dict(ref, ["fc.0", "fc.2"])
    folder = tmp_path_factory.mktemp("torch")
    paths = {"zip": folder / "resnet50.pt", "legacy": folder / "resnet50_legacy.pth",
             "checkpoint": folder / "checkpoint.pth.tar"}
    torch.save(sd, paths["zip"])
    torch.save(sd, paths["legacy"], _use_new_zipfile_serialization=False)
    wrapped = collections.OrderedDict(("module." + k, v) for k, v in sd.items())  # nn.DataParallel
    torch.save({"epoch": 7, "state_dict": wrapped, "class_names": CLASSES, "best_acc": 0.9}, paths["checkpoint"])
    return {"x": x, "want": want, "paths": paths, "sd": sd, "ref": ref}


@pytest.mark.parametrize("kind", ["zip", "legacy", "checkpoint"])
def test_torchvision_state_dicts_match_torch(torchvision_files, kind):
    model = covidx.load_model(torchvision_files["paths"][kind])
    assert model.architecture["variant"] == "v1.5"
    assert [(d["units"], d["activation"]) for d in model.architecture["head"]] == [(256, "relu"), (2, "softmax")]
    assert model.class_names == (CLASSES if kind == "checkpoint" else None)
    assert model.preprocessing == "torch"
    assert_matches(model.predict(torchvision_files["x"], verbose=0), torchvision_files["want"])


def test_torchvision_state_dict_into_an_architecture(torchvision_files):
    path = str(torchvision_files["paths"]["zip"])
    model = ResNet50(weights=path, variant="v1.5", classes=2, head=(256,), class_names=CLASSES)
    assert_matches(model.predict(torchvision_files["x"], verbose=0), torchvision_files["want"])
    logits = ResNet50(weights=path, variant="v1.5", classes=2, head=(256,), classifier_activation=None)
    with torch.no_grad():
        want, _ = torchvision_files["ref"].logits_and_output(torch.from_numpy(torchvision_files["x"]))
    assert np.abs(logits.predict(torchvision_files["x"], verbose=0) - want.numpy()).max() <= 1e-4
    with pytest.raises(ModelFileError, match="variant='v1.5'"):
        ResNet50(weights=path, classes=2, head=(256,))


def test_plain_torchvision_fc_and_no_fc(torchvision_files, tmp_path):
    sd = {k: v for k, v in torchvision_files["sd"].items() if not k.startswith("fc.")}
    torch.save(dict(sd, **{"fc.weight": torch.zeros(5, 2048), "fc.bias": torch.zeros(5)}), tmp_path / "fc.pt")
    model = covidx.load_model(tmp_path / "fc.pt", class_names=list("abcde"))
    assert model.architecture["head"] == [{"name": "fc", "units": 5, "activation": "softmax"}]
    assert model.class_names == list("abcde")
    torch.save(sd, tmp_path / "features.pt")  # fc replaced by nn.Identity: pooled features
    features = covidx.load_model(tmp_path / "features.pt")
    assert features.output_shape == (None, 2048)


# --- ONNX --------------------------------------------------------------------------------------


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


# --- broken and hostile files ------------------------------------------------------------------


def cut(src, dst, size):
    dst.write_bytes(src.read_bytes()[:size])
    return dst


@pytest.mark.parametrize("kind", [".h5", ".keras", ".weights.h5"])
def test_truncated_keras_files(articles, tmp_path, kind):
    src = articles["paths"][kind]
    for size in (10, 3000, src.stat().st_size // 2, src.stat().st_size - 1):
        path = cut(src, tmp_path / ("cut%d%s" % (size, kind)), size)
        with pytest.raises(ModelFileError, match="cut%d" % size):
            covidx.load_model(path)


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_truncated_torch_files(torchvision_files, tmp_path, kind):
    src = torchvision_files["paths"][kind]
    for size in (1, 200, src.stat().st_size // 2, src.stat().st_size - 1):
        path = cut(src, tmp_path / ("cut%d.pt" % size), size)
        with pytest.raises(ModelFileError, match="cut%d" % size):
            covidx.load_model(path)


def test_empty_and_unknown_files(tmp_path):
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "notes.h5").write_text("not a model\n")
    for name in ("empty.h5", "notes.h5"):
        with pytest.raises(ModelFileError, match=name):
            covidx.load_model(tmp_path / name)


def corrupt(src, dst, offset, data):
    raw = bytearray(src.read_bytes())
    raw[offset:offset + len(data)] = data
    dst.write_bytes(bytes(raw))
    return dst


def test_corrupted_hdf5_metadata(articles, tmp_path):
    src = articles["paths"]["legacy_weights.h5"]
    raw = src.read_bytes()
    # damage the superblock's version and end-of-file address, the first B-tree node's type and
    # entry count, and the first local heap's sizes and address
    cases = [(8, b"\x05"), (40, b"\xff" * 8), (raw.index(b"TREE") + 4, b"\x07\x09\xff\xff"),
             (raw.index(b"HEAP") + 8, b"\xee" * 24)]
    for i, (offset, data) in enumerate(cases):
        path = corrupt(src, tmp_path / ("bad%d.h5" % i), offset, data)
        with pytest.raises(ModelFileError, match="bad%d.h5" % i):
            covidx.load_model(path)


FUZZ_SCRIPT = r"""
import random, re, sys
import covidx
from covidx.formats import ModelFileError
path, cases, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "rb") as f:
    raw = f.read()
structures = [m.start() for sig in (b"TREE", b"HEAP", b"SNOD") for m in re.finditer(sig, raw)]
rng = random.Random(seed)
outcomes = []
for case in range(cases):
    base = rng.choice(structures[:40] + structures[-20:])
    edits = [(base + rng.randrange(-300, 500), rng.randrange(256)) for _ in range(rng.randint(1, 6))]
    with open(path, "r+b") as f:
        for offset, value in edits:
            f.seek(offset)
            f.write(bytes([value]))
    try:
        covidx.load_model(path)
        outcomes.append("loaded")
    except ModelFileError as e:
        assert path in str(e), e
        outcomes.append("refused")
    with open(path, "r+b") as f:  # undo
        for offset, _ in edits:
            f.seek(offset)
            f.write(raw[offset:offset + 1])
print(" ".join(outcomes))
"""


def test_randomly_damaged_hdf5_never_crashes(articles, tmp_path):
    """Bytes changed around the B-trees, heaps and symbol tables of a Keras file: every load either
    succeeds (damage where nothing is read) or raises ModelFileError naming the file. Run in a
    child process, so that a crash of libhdf5 would show as a failure here."""
    path = tmp_path / "fuzzed.h5"
    shutil.copy(articles["paths"]["legacy_weights.h5"], path)
    result = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, str(path), "12", "7"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes = result.stdout.split()
    assert len(outcomes) == 12 and "refused" in outcomes, outcomes


def test_corrupted_configs_and_values(articles, tmp_path):
    path = tmp_path / "json.h5"
    shutil.copy(articles["paths"][".h5"], path)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = '{"class_name": "Functional", "config": {'
    with pytest.raises(ModelFileError, match="json.h5: model_config is not valid JSON"):
        covidx.load_model(path)
    path = tmp_path / "nan.weights.h5"
    shutil.copy(articles["paths"]["legacy_weights.h5"], path)
    with h5py.File(path, "r+") as f:
        f["conv2_block1_2_bn/conv2_block1_2_bn/moving_variance"][3] = np.nan
    with pytest.raises(ModelFileError, match="nan.weights.h5.*conv2_block1_2_bn.*NaN"):
        covidx.load_model(path)


def test_corrupted_keras_archive(articles, tmp_path):
    src = articles["paths"][".keras"]
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("model.weights.h5")
        header = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    path = corrupt(src, tmp_path / "crc.keras", header + info.file_size // 2, b"\x00\x01\x02\x03")
    with pytest.raises(ModelFileError, match="crc.keras.*(CRC|damaged)"):
        covidx.load_model(path)
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(tmp_path / "config.keras", "w") as out:
        for item in z.infolist():
            out.writestr(item, b"{not json" if item.filename == "config.json" else z.read(item))
    with pytest.raises(ModelFileError, match="config.keras: config.json is not valid JSON"):
        covidx.load_model(tmp_path / "config.keras")


def test_keras_archive_bomb_is_refused(articles, tmp_path):
    """The articles' .keras file with its weights member replaced by 1 GiB of zeros deflated to
    1 MB: refused before it is inflated (it was read whole into memory), within 10 s and 1 GB."""
    import bounded
    import hostile_files

    with zipfile.ZipFile(articles["paths"][".keras"]) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist() if i.filename != "model.weights.h5"]
    size = 1 << 30
    stream, crc = hostile_files.deflated_zeros(size)
    path = hostile_files.write(tmp_path / "bomb.keras", members + [("model.weights.h5", (stream, crc, size))])
    assert os.path.getsize(path) < 2 << 20
    outcome = bounded.run(lambda: covidx.load_model(path))
    assert isinstance(outcome.error, ModelFileError), outcome
    assert "bomb.keras: model.weights.h5" in str(outcome.error)
    assert "more than a model file needs" in str(outcome.error) or "compression bomb" in str(outcome.error)


@pytest.mark.parametrize("kind", [".keras", ".weights.h5"])
def test_bytes_paths_are_paths(articles, kind):
    """load_model(b'x.keras') raised AttributeError; b'x.weights.h5' was parsed as the file's content."""
    path = os.fsencode(str(articles["paths"][kind]))
    assert_matches(covidx.load_model(path).predict(articles["x"], verbose=0), articles["want"])


def test_wrong_shapes(articles, torchvision_files, tmp_path):
    path = tmp_path / "shape.h5"
    shutil.copy(articles["paths"]["legacy_weights.h5"], path)
    with h5py.File(path, "r+") as f:
        del f["conv3_block1_2_conv/conv3_block1_2_conv/kernel"]
        f["conv3_block1_2_conv/conv3_block1_2_conv/kernel"] = np.zeros((5, 5, 128, 128), np.float32)
    with pytest.raises(ModelFileError, match=r"shape.h5.*conv3_block1_2_conv.*\(3, 3, 128, 128\).*\(5, 5, 128, 128\)"):
        covidx.load_model(path)
    with pytest.raises(ModelFileError, match=r"shape.h5.*\(3, 3, 128, 128\)"):
        ResNet50(weights=str(path), **ARTICLES)
    sd = dict(torchvision_files["sd"])
    sd["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(sd, tmp_path / "conv1.pt")
    with pytest.raises(ModelFileError, match=r"conv1.pt: conv1.weight: expected shape \(64, 3, 7, 7\), the file has "
                                             r"\(64, 3, 5, 5\)"):
        covidx.load_model(tmp_path / "conv1.pt")
    sd = dict(torchvision_files["sd"], **{"fc.2.weight": torch.zeros(2, 300)})
    torch.save(sd, tmp_path / "fc.pt")
    with pytest.raises(ModelFileError, match=r"fc.pt: fc.2.weight: shape \(2, 300\) does not continue"):
        covidx.load_model(tmp_path / "fc.pt")
    torch.save(dict(torchvision_files["sd"], **{"layer1.0.se.fc.weight": torch.zeros(4, 4)}), tmp_path / "se.pt")
    with pytest.raises(ModelFileError, match="se.pt: unexpected key 'layer1.0.se.fc.weight'"):
        covidx.load_model(tmp_path / "se.pt")


class Payload:
    """Unpickling this runs a shell command (what a hostile model file does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


@pytest.mark.parametrize("zip_format", [True, False])
def test_hostile_pickle_is_refused_and_never_runs(torchvision_files, tmp_path, zip_format):
    marker = tmp_path / "pwned"
    sd = dict(torchvision_files["sd"])
    sd["fc.0.bias"] = Payload(marker)
    path = tmp_path / "hostile.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ModelFileError, match=r"hostile.pt: refused: .*(posix|os)\.system"):
        covidx.load_model(path)
    with pytest.raises(ModelFileError, match="refused"):
        ResNet50(weights=str(path), variant="v1.5", classes=2, head=(256,))
    assert not marker.exists()
    # the payload is real: an unrestricted unpickler runs it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_pickled_modules_and_objects_are_refused(tmp_path):
    torch.save(TorchResNet50("v1.5"), tmp_path / "module.pt")
    with pytest.raises(ModelFileError, match=r"module.pt: refused: .*torch_reference.TorchResNet50.*state_dict"):
        covidx.load_model(tmp_path / "module.pt")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"a": np.zeros(3)}, f, protocol=2)
    with pytest.raises(ModelFileError, match="plain.pkl"):
        covidx.load_model(tmp_path / "plain.pkl")


def test_tensor_outside_its_storage_is_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(4)}, tmp_path / "view.pt")
    with zipfile.ZipFile(tmp_path / "view.pt") as z:
        items = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(tmp_path / "bad_view.pt", "w") as out:
        for item, data in items:
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"K\x04\x85", b"M\x00\x04\x85")  # sizes (4,) -> (1024,)
                assert b"M\x00\x04" in data
            out.writestr(item, data)
    with pytest.raises(ModelFileError, match="bad_view.pt: a tensor reaches past the end of its storage"):
        covidx.load_model(tmp_path / "bad_view.pt")


def test_h5_links_and_storage_outside_the_file_are_refused(articles, tmp_path):
    path = tmp_path / "link.h5"
    shutil.copy(articles["paths"]["legacy_weights.h5"], path)
    with h5py.File(path, "r+") as f:
        group = f["conv1_conv/conv1_conv"]
        del group["kernel"]
        group["kernel"] = h5py.ExternalLink("/etc/passwd", "/data")
    with pytest.raises(ModelFileError, match="link.h5.*ExternalLink.*outside the file"):
        covidx.load_model(path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(7 * 7 * 3 * 64, np.float32).tobytes())
    path = tmp_path / "external.h5"
    shutil.copy(articles["paths"]["legacy_weights.h5"], path)
    with h5py.File(path, "r+") as f:
        group = f["conv1_conv/conv1_conv"]
        del group["kernel"]
        group.create_dataset("kernel", shape=(7, 7, 3, 64), dtype="f4",
                             external=[(str(secret), 0, secret.stat().st_size)])
    with pytest.raises(ModelFileError, match="external.h5.*stored outside the file"):
        covidx.load_model(path)


def test_missing_h5py_says_how_to_get_it(articles, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_h5py(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_h5py)
    with pytest.raises(ModelFileError, match="needs the h5py package: pip install h5py"):
        covidx.load_model(articles["paths"][".h5"])


def test_hdf5_that_hangs_libhdf5_is_refused_in_time(monkeypatch):
    """A file found by fuzzing (tests/fuzz): libhdf5 loops on its metadata. covidx parses HDF5
    metadata in a child process first and gives up after PROBE_SECONDS."""
    from covidx.formats import hdf5

    monkeypatch.setattr(hdf5, "PROBE_SECONDS", 3.0)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hdf5_libhdf5_hang.h5")
    start = time.monotonic()
    with pytest.raises(ValueError, match="did not finish reading"):
        covidx.load_model(path)
    assert time.monotonic() - start < 30


def test_hdf5_that_makes_libhdf5_allocate_gigabytes_costs_this_process_nothing():
    """A file found by fuzzing (tests/fuzz): libhdf5 allocates gigabytes reading its chunks and then
    fails. The whole read runs first in a child process whose memory is capped; its error is raised
    here and libhdf5 never reads the file in the loading process, whose peak memory stays small."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("reads the peak memory from Linux's /proc")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hdf5_libhdf5_memory.h5")
    # VmHWM, the peak resident memory of this process's own address space (ru_maxrss would count
    # the forking pytest's too: Linux keeps the larger across exec)
    script = ("import sys, covidx\n"
              "try:\n"
              "    covidx.load_model(sys.argv[1])\n"
              "except ValueError as e:\n"
              "    print(e)\n"
              "status = open('/proc/self/status').read()\n"
              "print(int(status.split('VmHWM:')[1].split()[0]) >> 10)\n")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    message, peak_mb = out.stdout.strip().rsplit("\n", 1)
    assert message.startswith(path) and "HDF5" in message
    assert int(peak_mb) < 600  # numpy and covidx take ~100 MB; reading this file unguarded takes >1.5 GB
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("raised, expected, match", [
    (ModelFileError("input.h5: a message from the child"), ModelFileError, "^input.h5: a message from the child$"),
    (MemoryError(), ModelFileError, "^input.h5: reading this file needs more than"),
    (KeyError("bug"), RuntimeError, "^input.h5: covidx's HDF5 reader failed .*KeyError"),
])
def test_hdf5_child_process_reports_how_the_read_ended(raised, expected, match):
    """An error met by the reading child is raised in the parent without reading the file again:
    the child's own message, a memory failure named as such, and anything else as a bug (not
    disguised as a damaged file)."""
    from covidx.formats import hdf5

    def action():
        raise raised

    with pytest.raises(expected, match=match) as info:
        hdf5.probe_in_child(action, "input.h5")
    assert type(info.value) is expected


def test_hdf5_child_process_memory_is_capped():
    """The child's address space is capped at what it inherits plus the budget: an allocation
    past it fails there (MemoryError) instead of taking the machine's memory."""
    from covidx.formats import hdf5

    def action():
        np.ones((hdf5.PROBE_MEMORY_BYTES + (1 << 30)) // 8)

    with pytest.raises(ModelFileError, match="needs more than"):
        hdf5.probe_in_child(action, "input.h5")
    hdf5.probe_in_child(lambda: np.ones((64 << 20) // 8), "input.h5")  # within the budget: no error


def test_zip_of_unsupported_version_is_a_model_file_error():
    """A file found by fuzzing: zipfile raises NotImplementedError on its version field."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "zip_unsupported_version.keras")
    with pytest.raises(ValueError, match="not a readable zip archive"):
        covidx.load_model(path)


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
