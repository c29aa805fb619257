"""The Keras functional API on a covidx backbone: the articles' part 3 cells verbatim (summary,
the layer loop, freezing model.layers[:175]), Keras's layer names, and the folding of
BatchNormalization/Dropout/Activation into the engine's Dense-only head."""
import contextlib
import io
import re

import numpy as np
import pytest

import covidx
from covidx import functional
from covidx.applications.resnet50 import ResNet50
from covidx.keras.layers import (Activation, BatchNormalization, Dense, Dropout, Flatten, GlobalAveragePooling2D,
                                 GlobalMaxPooling2D)
from covidx.keras.models import Model

IMAGES = np.random.default_rng(0).random((3, 64, 64, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def base():
    return ResNet50(include_top=False, weights=None, seed=0)


@pytest.fixture(autouse=True)
def _unfrozen(base):
    """Tests share the backbone's layers (as Keras models share layers): start each unfrozen."""
    for layer in base.layers:
        layer.trainable = True
    yield
    base.__dict__.pop("trainable", None)


def unfolded(model, images):
    """The head's own NumPy forward pass (inference mode) on the backbone's pooled features."""
    x = model.features(images)
    for layer in model.head_layers:
        x, _ = layer.forward(x, training=False)
    return x


def test_articles_part3_cells_verbatim(base):
    import covidx as tf

    base_model = base
    functional.clear_session()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # --- "Restructuring the Base Model", verbatim ---
        x = base_model.output
        x = tf.keras.layers.GlobalAveragePooling2D()(x)
        x = tf.keras.layers.Dense(1024, activation='relu')(x)
        x = tf.keras.layers.Dense(1024, activation='relu')(x)
        x = tf.keras.layers.Dense(1024, activation='relu')(x)
        x = tf.keras.layers.Dense(512, activation='relu')(x)
        preds = tf.keras.layers.Dense(2, activation ='softmax')(x)  # noqa: E251
        model = tf.keras.models.Model(inputs=base_model.input, outputs=preds)
        print(model.summary())
        # --- "Freezing the Weights" ---
        for i, layer in enumerate(model.layers):
            print(i, layer.name)
        for layer in model.layers[:175]:
            layer.trainable = False
        for layer in model.layers[175:]:
            layer.trainable = True
    lines = out.getvalue().splitlines()
    assert lines[0] == 'Model: "functional"'
    assert " Total params: 28,310,914 (108.00 MB)" in lines
    assert lines[lines.index(" Non-trainable params: 53,120 (207.50 KB)") + 1] == "None"
    table = "\n".join(lines)
    assert re.search(r"│ dense_4 \(Dense\) +│ \(None, 2\) +│ +1,026 │ dense_3\[0\]\[0\]", table)
    loop = lines[-181:]
    assert loop[0] == "0 input_layer" and loop[1] == "1 conv1_pad" and loop[174] == "174 conv5_block3_out"
    assert loop[175:] == ["175 global_average_pooling2d", "176 dense", "177 dense_1", "178 dense_2", "179 dense_3",
                          "180 dense_4"]
    # model.layers[:175] is exactly the backbone: Keras's names and order, the backbone's own layers
    assert len(model.layers) == 181
    assert [l.name for l in model.layers[:175]] == [l.name for l in base_model.layers]
    assert all(a is b for a, b in zip(model.layers[:175], base_model.layers))
    assert not any(l.trainable for l in model.layers[:175]) and all(l.trainable for l in model.layers[175:])
    out = io.StringIO()
    model.summary(print_fn=lambda line: out.write(line + "\n"))
    assert " Trainable params: 4,723,202 (18.02 MB)" in out.getvalue()
    assert model.count_params() == 28310914 and model.output_shape == (None, 2)
    assert model.input is base_model.input and model.output is preds
    assert isinstance(model, covidx.Model)
    # the same model through the tf.keras.Model alias
    assert tf.keras.Model is tf.keras.models.Model


def test_automatic_names_count_per_session(base):
    functional.clear_session()
    first = [Dense(2), Dense(2), Dropout(0.1), BatchNormalization(), GlobalAveragePooling2D()]
    assert [l.name for l in first] == ["dense", "dense_1", "dropout", "batch_normalization",
                                       "global_average_pooling2d"]
    assert Dense(2).name == "dense_2" and Dense(2, name="mine").name == "mine"
    functional.clear_session()
    assert Dense(2).name == "dense"


def test_folded_engine_predicts_like_the_unfolded_head(base):
    """BatchNormalization before and after activations, Dropout, Activation and Flatten layers:
    the engine's Dense-only head gives the head's own (unfolded) outputs."""
    np.random.seed(7)
    x = GlobalAveragePooling2D()(base.output)
    x = Flatten()(x)
    x = BatchNormalization()(x)                # folded forward into the next Dense
    x = Dense(64, activation="relu")(x)
    x = Dropout(0.5)(x)                        # the identity in predict
    x = Dense(32)(x)
    x = BatchNormalization(epsilon=1e-2)(x)    # folded into the Dense before it (no activation yet)
    x = Activation("relu")(x)                  # becomes that Dense's activation
    x = Dense(16, activation="relu")(x)
    x = BatchNormalization(center=False)(x)    # after an activation: folded into the next Dense
    preds = Dense(2, activation="softmax")(x)
    model = Model(inputs=base.input, outputs=preds)
    rng = np.random.default_rng(1)
    for layer in model.head_layers:
        if isinstance(layer, BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 2, w.shape) if i != 1 or not layer.center else rng.normal(size=w.shape)
                               for i, w in enumerate(layer.get_weights())])
    assert [d["units"] for d in model.architecture["head"]] == [64, 32, 16, 2]
    assert [d["activation"] for d in model.architecture["head"]] == ["relu", "relu", "relu", "softmax"]
    expected = unfolded(model, IMAGES)
    np.testing.assert_allclose(model.predict(IMAGES, verbose=0), expected, rtol=1e-4, atol=1e-6)
    # changing a head weight refolds the engine
    dense = model.head_layers[-1]
    dense.set_weights([dense.get_weights()[0] * 3, dense.get_weights()[1]])
    np.testing.assert_allclose(model.predict(IMAGES, verbose=0), unfolded(model, IMAGES), rtol=1e-4, atol=1e-6)
    assert not np.allclose(model.predict(IMAGES, verbose=0), expected)


def test_heads_that_cannot_run_in_the_engine_are_clear_errors(base):
    pooled = GlobalAveragePooling2D()(base.output)
    with pytest.raises(ValueError, match="GlobalAveragePooling2D"):
        Dense(2)(base.output)
    with pytest.raises(ValueError, match="Flatten of the"):
        Flatten()(base.output)
    with pytest.raises(ValueError, match="global pooling only"):
        GlobalAveragePooling2D()(pooled)
    with pytest.raises(ValueError, match="activation"):
        Dense(2, activation="tanh")
    with pytest.raises(TypeError, match="symbolic"):
        Dense(2)(np.zeros((1, 2048), np.float32))
    x = Dense(8, activation="relu")(pooled)
    with pytest.raises(ValueError, match="cannot be folded"):
        Model(inputs=base.input, outputs=BatchNormalization()(x))
    with pytest.raises(ValueError, match="must start with"):
        Model(inputs=base.input, outputs=base.output)
    layer = Dense(2)
    layer(x)
    with pytest.raises(ValueError, match="already called"):
        layer(x)
    other = ResNet50(include_top=False, weights=None, seed=1)
    with pytest.raises(ValueError, match="inputs"):
        Model(inputs=other.input, outputs=Dense(2)(x))
    with pytest.raises(ValueError, match="unique"):
        Model(inputs=base.input, outputs=Dense(2, name="conv1_conv")(GlobalAveragePooling2D()(base.output)))


def test_weights_in_keras_order_and_saved_models(base, tmp_path):
    np.random.seed(2)
    x = GlobalAveragePooling2D()(base.output)
    x = Dense(16, activation="relu")(x)
    x = BatchNormalization()(x)
    preds = Dense(2, activation="softmax")(x)
    model = Model(inputs=base.input, outputs=preds)
    weights = model.get_weights()
    assert len(weights) == len(base.get_weights()) + 2 + 4 + 2
    assert [w.shape for w in weights[-8:]] == [(2048, 16), (16,), (16,), (16,), (16,), (16,), (16, 2), (2,)]
    weights[-2] = weights[-2] * -1
    weights[-5] = weights[-5] + 0.5  # BN moving_mean
    model.set_weights(weights)
    np.testing.assert_array_equal(model.head_layers[-1].get_weights()[0], weights[-2])
    expected = unfolded(model, IMAGES)
    np.testing.assert_allclose(model.predict(IMAGES, verbose=0), expected, rtol=1e-4, atol=1e-6)
    path = str(tmp_path / "folded.safetensors")
    model.save(path)
    reloaded = covidx.load_model(path)
    assert type(reloaded) is covidx.Model and [d["name"] for d in reloaded.architecture["head"]] == [
        model.head_layers[0].name, model.head_layers[2].name]
    np.testing.assert_allclose(reloaded.predict(IMAGES, verbose=0), expected, rtol=1e-4, atol=1e-6)


def test_backbone_with_pooling_and_global_max_pooling(base):
    pooled = ResNet50(include_top=False, weights=None, pooling="avg", seed=0)
    assert pooled.output.shape == (None, 2048)
    model = Model(inputs=pooled.input, outputs=Dense(2, activation="softmax")(pooled.output))
    assert len(model.layers) == 177 and model.layers[175].name == "avg_pool"
    np.testing.assert_allclose(model.predict(IMAGES, verbose=0), unfolded(model, IMAGES), rtol=1e-4, atol=1e-6)
    model = Model(inputs=base.input, outputs=Dense(3)(GlobalMaxPooling2D()(base.output)))
    np.testing.assert_allclose(model.features(IMAGES), base.feature_map(IMAGES).max(axis=(1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match="without top"):
        headed = ResNet50(weights=None, classes=2, seed=0)
        Model(inputs=headed.input, outputs=Dense(2)(headed.output))


def test_symbolic_tensors_and_plain_models_through_keras_models(base):
    assert base.input.shape == (None, None, None, 3) and base.output.shape == (None, None, None, 2048)
    assert base.input is base.input and "KerasTensor shape=(None, None, None, 2048)" in repr(base.output)
    arch = ResNet50(include_top=False, weights=None, seed=0).architecture
    plain = Model(arch, dict(base.named_weights), name="plain")
    assert type(plain) is covidx.Model and plain.name == "plain"


def test_base_model_trainable_false_freezes_its_layers(base):
    model = Model(inputs=base.input, outputs=Dense(2, activation="softmax")(GlobalAveragePooling2D()(base.output)))
    base.trainable = False
    assert not any(l.trainable for l in model.layers[:175]) and all(l.trainable for l in model.layers[175:])
    out = io.StringIO()
    model.summary(print_fn=lambda line: out.write(line + "\n"))
    assert " Trainable params: 4,098 (16.01 KB)" in out.getvalue()
    model.trainable = False
    assert not any(l.trainable for l in model.layers)


def test_dropout_in_training_and_in_predict():
    layer = Dropout(0.25, seed=0)
    x = np.ones((400, 50), np.float32)
    y, mask = layer.forward(x, training=True)
    dropped = np.mean(y == 0)
    assert 0.2 < dropped < 0.3 and np.allclose(y[y != 0], 1 / 0.75)
    grad, _ = layer.backward(np.ones_like(x), mask)
    np.testing.assert_array_equal(grad, y)  # the same mask and scale on the way back
    same, _ = layer.forward(x, training=False)
    assert same is x


def _articles_head_on(base):
    return Model(inputs=base.input, outputs=Dense(2, activation="softmax")(GlobalAveragePooling2D()(base.output)))


def test_functional_model_keeps_bf16_when_its_head_changes(monkeypatch):
    """set_precision('bf16') lasts through set_weights and fit on the head: the engine rebuilt for
    the new head packs its weights for bf16 again (it ran fp32, bit for bit, while precision_info
    said bf16). Reference: a fresh model of the same weights set to bf16 on the emulated kernel."""
    monkeypatch.setenv("COVIDX_GEMM", "amx-emu")
    x = np.random.default_rng(4).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    fp32 = ResNet50(include_top=False, weights=None, seed=0).features(x)
    bf16 = ResNet50(include_top=False, weights=None, seed=0).set_precision("bf16").features(x)
    assert not np.array_equal(bf16, fp32)  # bf16 really differs from fp32 here
    backbone = ResNet50(include_top=False, weights=None, seed=0)
    backbone.trainable = False
    m = _articles_head_on(backbone)
    m.set_precision("bf16")
    k, b = m.layers[-1].get_weights()
    m.layers[-1].set_weights([k + 0.01, b])
    assert m.precision_info()["running"] == "bf16"
    np.testing.assert_array_equal(m.features(x), bf16)
    m.compile(optimizer="sgd", loss="categorical_crossentropy")
    m.fit(x, np.eye(2, dtype=np.float32), epochs=1, batch_size=2, verbose=0)
    assert not np.array_equal(m.layers[-1].get_weights()[0], k + 0.01)  # fit changed the head
    np.testing.assert_array_equal(m.features(x), bf16)


def test_functional_model_keeps_its_unfamiliar_statistics_when_its_head_changes():
    """fit_unfamiliar's statistics (of the backbone's features) survive a change of the head alone,
    and their scores are the same as before it; a change of the backbone drops them, with a warning."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (96, 64, 64, 3)).astype(np.float32)
    x[:48] *= np.linspace(0.3, 1, 64, dtype=np.float32)[None, :, None, None]  # two kinds of image
    y = np.repeat([0, 1], 48)
    backbone = ResNet50(include_top=False, weights=None, seed=0, input_norm=1e-5)
    backbone.trainable = False
    m = _articles_head_on(backbone)
    covidx.fit_unfamiliar(m, (x[::2], y[::2]), holdout=(x[1::2], y[1::2]))
    _, before = m.predict(x[:8], verbose=0, return_unfamiliar=True)
    k, b = m.layers[-1].get_weights()
    m.layers[-1].set_weights([k + 0.01, b])
    assert m.unfamiliar is not None
    _, after = m.predict(x[:8], verbose=0, return_unfamiliar=True)
    np.testing.assert_array_equal(after, before)
    weights = backbone.get_weights()
    weights[0] = weights[0] * 1.01
    backbone.set_weights(weights)
    with pytest.warns(UserWarning, match="out-of-distribution statistics were dropped"):
        m.predict(x[:2], verbose=0)
    assert m.unfamiliar is None


def test_every_covidx_model_is_a_keras_model_and_trainable_is_a_property():
    """As in Keras: keras.Model(inputs=..., outputs=...) builds a functional model, every model
    (ResNet50's too) is an instance of keras.Model, and model.trainable is an attribute whose
    setting sets every layer's flag, while setting a layer's flag leaves the model's as it is."""
    base = ResNet50(include_top=False, weights=None, seed=0)
    assert isinstance(base, covidx.keras.Model) and covidx.keras.Model is covidx.Model is Model
    assert base.trainable is True and all(layer.trainable for layer in base.layers)
    base.trainable = False
    assert base.trainable is False and not any(layer.trainable for layer in base.layers)
    base.layers[-1].trainable = True
    assert base.trainable is False
    model = Model(inputs=base.input, outputs=Dense(2, activation="softmax")(GlobalAveragePooling2D()(base.output)))
    assert type(model) is functional.Model and isinstance(model, covidx.keras.Model)
    assert model.trainable is True and model.layers[-1].trainable and not model.layers[0].trainable
    model.trainable = False
    assert not any(layer.trainable for layer in model.layers) and base.trainable is False
    with pytest.raises(TypeError):
        covidx.Model()  # the plain model needs an architecture and weights
