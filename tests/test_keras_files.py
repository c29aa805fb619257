"""Keras 3 and TF 2.x Keras files (.h5, .keras, .weights.h5, legacy weights) read by covidx,
made by the real Keras (test-only dependencies: Keras 3 on its torch backend, PyTorch, h5py):
covidx's predictions must match Keras's own within 1e-5, and graphs covidx does not run are
refused by their first unsupported layer. The reference networks: tests/framework_files.py."""
import copy
import json
import os
import shutil
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
from framework_files import (ARTICLES, CLASSES, SIZE, assert_matches, assert_meaningful,  # noqa: E402
                             conditioned_reference, covidx_order, input_norm_model, keras_articles_model,
                             keras_model_with_head, keras_predict, xrays)


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


def test_input_norm_outputs_match_keras(articles, tmp_path):
    """Needs the engine to run architecture['input_norm'] (the per-image LayerNormalization)."""
    model = input_norm_model(articles["weights"])
    model.save(tmp_path / "norm.keras")
    loaded = covidx.load_model(tmp_path / "norm.keras")
    raw = np.ascontiguousarray(articles["x"] * 3.0 + 40.0, np.float32)  # the layer makes the scale irrelevant
    want = keras_predict(model, raw)
    assert want[:, 0].std() > 1e-3, want  # the images still differ after the normalisation
    assert_matches(loaded.predict(raw, verbose=0), want)


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
