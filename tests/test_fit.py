"""fit() of the head on a frozen backbone: losses, gradients and optimizer steps against PyTorch
(autograd on the same formulas), callbacks, History, progress output, feature caching, and that
predict() uses the trained head. Backbones are random and images 64x64, to keep the tests fast."""
import contextlib
import io
import os
import re

import numpy as np
import pytest
import torch

import covidx
from covidx import training
from covidx.applications.resnet50 import ResNet50
from covidx.data import SAMPLES_DIR
from covidx.keras.callbacks import EarlyStopping, LambdaCallback, ModelCheckpoint, ReduceLROnPlateau
from covidx.keras.layers import BatchNormalization, Dense, GlobalAveragePooling2D
from covidx.keras.models import Model
from covidx.keras.optimizers import SGD, Adam, RMSprop
from covidx.preprocessing.image import ImageDataGenerator

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SMALL_HEAD = [(64, "relu"), (32, "relu"), (2, "softmax")]
ARTICLES_HEAD = [(1024, "relu"), (1024, "relu"), (1024, "relu"), (512, "relu"), (2, "softmax")]
N = 48


@pytest.fixture(scope="module")
def base():
    torch.set_num_threads(1)
    return ResNet50(include_top=False, weights=None, seed=0)


@pytest.fixture(scope="module")
def data():
    """Pooled features as a backbone gives them (non-negative), one-hot and integer labels."""
    rng = np.random.default_rng(0)
    feats = (0.2 * np.abs(rng.normal(size=(N, 2048)))).astype(np.float32)
    labels = rng.integers(0, 2, N)
    return feats, labels, np.eye(2, dtype=np.float32)[labels]


def build(base, head, seed=1, freeze=True):
    """The Keras way: GAP and Dense layers on base.output, backbone frozen."""
    for layer in base.layers:
        layer.trainable = True
    np.random.seed(seed)
    x = GlobalAveragePooling2D()(base.output)
    for units, activation in head:
        x = Dense(units, activation=activation)(x)
    model = Model(inputs=base.input, outputs=x)
    if freeze:
        for layer in model.layers[:175]:
            layer.trainable = False
    return model


def head_weights(model):
    return [w for layer in model.head_layers for w in layer.get_weights()]


# --- a PyTorch reference: autograd through the same forward pass and Keras's loss formulas ---------

class KerasAdam:
    """Keras 3's Adam step written with torch tensors (torch.optim.Adam adds epsilon after the bias
    correction, Keras before it, which changes the steps of weights with tiny gradients)."""

    def __init__(self, params, lr=0.001, beta_1=0.9, beta_2=0.999, eps=1e-7):
        self.params, self.lr, self.b1, self.b2, self.eps, self.t = params, lr, beta_1, beta_2, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        alpha = self.lr * np.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            m += (p.grad - m) * (1 - self.b1)
            v += (p.grad * p.grad - v) * (1 - self.b2)
            p -= m * alpha / (torch.sqrt(v) + self.eps)


class KerasRMSprop(KerasAdam):
    """Keras 3's RMSprop (epsilon inside the square root; torch.optim.RMSprop adds it outside)."""

    def __init__(self, params, lr=0.001, rho=0.9, eps=1e-7):
        super().__init__(params, lr, eps=eps)
        self.rho = rho

    @torch.no_grad()
    def step(self):
        for p, v in zip(self.params, self.v):
            v.mul_(self.rho).add_((1 - self.rho) * p.grad * p.grad)
            p -= self.lr * p.grad / torch.sqrt(v + self.eps)


def torch_loss(kind, out, y):
    eps = 1e-7
    if kind == "binary":
        p = torch.clamp(out, eps, 1 - eps)
        y = y.reshape(p.shape)
        return (-(y * torch.log(p) + (1 - y) * torch.log(1 - p))).mean(-1)
    if kind == "sparse":
        y = torch.nn.functional.one_hot(y.long(), out.shape[-1]).float()
    q = torch.clamp(out / out.sum(-1, keepdim=True), eps, 1 - eps)
    return -(y * torch.log(q)).sum(-1)


def torch_fit(weights, activations, feats, y, make_optimizer, kind="categorical", epochs=3, batch_size=16,
              sample_weight=None):
    """Per-epoch losses (batch means weighted by batch size) of the same head trained in PyTorch."""
    params = [torch.tensor(w, requires_grad=True) for w in weights]
    optimizer = make_optimizer(params)
    x, y = torch.tensor(feats), torch.tensor(y)
    w = None if sample_weight is None else torch.tensor(sample_weight)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for s in range(0, len(feats), batch_size):
            h = x[s:s + batch_size]
            for i, act in enumerate(activations):
                h = h @ params[2 * i] + params[2 * i + 1]
                h = {"relu": torch.relu, "softmax": lambda z: torch.softmax(z, -1), "sigmoid": torch.sigmoid}[act](h)
            per_sample = torch_loss(kind, h, y[s:s + batch_size])
            if w is not None:
                per_sample = per_sample * w[s:s + batch_size]
            loss = per_sample.sum() / len(per_sample)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(per_sample)
        losses.append(total / len(feats))
    return losses, [p.detach().numpy() for p in params]


def covidx_fit(model, optimizer, feats, y, loss="categorical_crossentropy", **kwargs):
    model.compile(optimizer=optimizer, loss=loss, metrics=["acc"])
    kwargs = dict(dict(batch_size=16, epochs=3, shuffle=False, verbose=0), **kwargs)
    return training.fit_features(model, feats, y, **kwargs).history["loss"]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_pytorch_on_the_articles_head(base, data, nesterov):
    feats, _, y = data
    model = build(base, ARTICLES_HEAD)
    start = head_weights(model)
    ours = covidx_fit(model, SGD(learning_rate=0.01, momentum=0.9, nesterov=nesterov), feats, y)
    theirs, trained = torch_fit(start, [a for _, a in ARTICLES_HEAD], feats, y,
                                lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=nesterov))
    assert np.max(np.abs(np.array(ours) - theirs)) < 1e-4, (ours, theirs)
    assert ours[2] < ours[0]  # it learns
    for a, b in zip(head_weights(model), trained):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_adam_and_rmsprop_match_pytorch(base, data, name):
    feats, _, y = data
    model = build(base, SMALL_HEAD)
    start = head_weights(model)
    optimizer, reference = {"adam": (Adam(learning_rate=0.001), lambda p: KerasAdam(p, lr=0.001)),
                            "rmsprop": (RMSprop(learning_rate=0.001), lambda p: KerasRMSprop(p, lr=0.001))}[name]
    ours = covidx_fit(model, optimizer, feats, y)
    theirs, _ = torch_fit(start, [a for _, a in SMALL_HEAD], feats, y, reference)
    assert np.max(np.abs(np.array(ours) - theirs)) < 1e-4, (ours, theirs)


def test_adam_close_to_torch_optim_adam(base, data):
    """torch.optim.Adam itself: the same steps up to epsilon's placement, whose effect on the loss
    stays at the 1e-3 level here."""
    feats, _, y = data
    model = build(base, SMALL_HEAD)
    start = head_weights(model)
    ours = covidx_fit(model, "adam", feats, y)
    theirs, _ = torch_fit(start, [a for _, a in SMALL_HEAD], feats, y,
                          lambda p: torch.optim.Adam(p, lr=0.001, eps=1e-7))
    assert abs(ours[0] - theirs[0]) < 2e-3 and np.max(np.abs(np.array(ours) - theirs)) < 5e-3


@pytest.mark.parametrize("kind", ["binary", "sparse", "sparse_from_categorical"])
def test_binary_and_sparse_crossentropy_match_pytorch(base, data, kind):
    feats, labels, _ = data
    head = [(32, "relu"), (1, "sigmoid")] if kind == "binary" else SMALL_HEAD
    loss = {"binary": "binary_crossentropy", "sparse": "sparse_categorical_crossentropy",
            # integer labels with categorical_crossentropy: taken as sparse labels, as evaluate does
            "sparse_from_categorical": "categorical_crossentropy"}[kind]
    model = build(base, head)
    start = head_weights(model)
    y = labels.astype(np.float32)
    ours = covidx_fit(model, SGD(learning_rate=0.05, momentum=0.5), feats, y, loss=loss)
    theirs, _ = torch_fit(start, [a for _, a in head], feats, y,
                          lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5),
                          kind="binary" if kind == "binary" else "sparse")
    assert np.max(np.abs(np.array(ours) - theirs)) < 1e-4, (ours, theirs)


def test_class_weight_and_sample_weight_match_pytorch(base, data):
    feats, labels, y = data
    class_weight = {0: 0.25, 1: 2.0}
    weights = np.array([class_weight[c] for c in labels], np.float32)
    model = build(base, SMALL_HEAD)
    start = head_weights(model)
    ours = covidx_fit(model, SGD(learning_rate=0.05), feats, y, class_weight=class_weight)
    theirs, _ = torch_fit(start, [a for _, a in SMALL_HEAD], feats, y, lambda p: torch.optim.SGD(p, lr=0.05),
                          sample_weight=weights)
    assert np.max(np.abs(np.array(ours) - theirs)) < 1e-4
    model.set_weights(model.get_weights()[:-len(start)] + start)
    model.optimizer = None
    again = covidx_fit(model, SGD(learning_rate=0.05), feats, y, sample_weight=weights)
    np.testing.assert_allclose(again, ours, atol=1e-6)


def test_batchnorm_head_trains_like_pytorch(base, data):
    """Dense -> BatchNormalization (batch statistics in training) -> ReLU-free output layer."""
    feats, _, y = data
    for layer in base.layers:
        layer.trainable = True
    np.random.seed(3)
    x = GlobalAveragePooling2D()(base.output)
    x = Dense(32, activation="relu")(x)
    bn = BatchNormalization()
    x = bn(x)
    x = Dense(2, activation="softmax")(x)
    model = Model(inputs=base.input, outputs=x)
    for layer in model.layers[:175]:
        layer.trainable = False
    k1, b1, gamma, beta, mean, var, k2, b2 = [torch.tensor(w, requires_grad=i not in (4, 5))
                                              for i, w in enumerate(head_weights(model))]
    ours = covidx_fit(model, SGD(learning_rate=0.05, momentum=0.9), feats, y)
    params = [k1, b1, gamma, beta, k2, b2]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    torch_bn = torch.nn.BatchNorm1d(32, eps=1e-3, momentum=0.01)
    theirs = []
    for _ in range(3):
        total = 0.0
        for s in range(0, N, 16):
            h = torch.relu(torch.tensor(feats[s:s + 16]) @ k1 + b1)
            h = torch.nn.functional.batch_norm(h, torch_bn.running_mean, torch_bn.running_var, gamma, beta,
                                               training=True, momentum=0.01, eps=1e-3)
            out = torch.softmax(h @ k2 + b2, -1)
            loss = torch_loss("categorical", out, torch.tensor(y[s:s + 16])).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * 16
        theirs.append(total / N)
    assert np.max(np.abs(np.array(ours) - theirs)) < 1e-4, (ours, theirs)
    # Keras updates the moving variance with the biased batch variance (PyTorch: unbiased)
    assert not np.allclose(bn.get_weights()[3], 1.0)


def test_history_keys_follow_metric_names(base, data):
    feats, _, y = data
    model = build(base, SMALL_HEAD)
    for metric in ("acc", "accuracy"):
        model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=[metric])
        history = training.fit_features(model, feats, y, epochs=2, verbose=0, validation_data=(feats[:8], y[:8]))
        assert list(history.history) == ["loss", metric, "val_loss", "val_" + metric]
        assert all(len(v) == 2 and all(isinstance(f, float) for f in v) for v in history.history.values())
        assert history.epoch == [0, 1] and model.history is history
        assert history.params == {"verbose": 0, "epochs": 2, "steps": 2}


def test_validation_split_takes_the_last_samples(base, data):
    feats, _, y = data
    model = build(base, SMALL_HEAD)
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["acc"])
    history = training.fit_features(model, feats, y, epochs=1, verbose=0, validation_split=0.25, shuffle=False)
    head_out, _ = training.Head(model).forward(feats[36:], training=False)
    expected = training.loss_values("categorical", y[36:], head_out).mean()
    assert history.history["val_loss"][0] == pytest.approx(float(expected), abs=1e-6)


def fit_output(model, feats, y, **kwargs):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        training.fit_features(model, feats, y, **kwargs)
    return ANSI.sub("", out.getvalue())


def test_progress_output_per_epoch(base, data):
    feats, _, y = data
    model = build(base, SMALL_HEAD)
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["acc"])
    printed = fit_output(model, feats, y, batch_size=16, epochs=2, validation_data=(feats[:8], y[:8]))
    assert printed.count("Epoch 1/2\n") == 1 and printed.count("Epoch 2/2\n") == 1
    finals = [line.replace("\b", "").split("\r")[-1] for line in printed.split("\n") if "3/3" in line]
    assert len(finals) == 2
    for line in finals:
        assert re.fullmatch(r"3/3 ━{20} \d+s \d+[mu]?s/step - acc: \S+ - loss: \S+ - val_acc: \S+ - val_loss: \S+ *",
                            line), line
    # verbose=2: one line per epoch; verbose=0: nothing; epochs=1: no 'Epoch' line (Keras 3)
    lines = fit_output(model, feats, y, batch_size=16, epochs=2, verbose=2).strip().split("\n")
    assert lines[0] == "Epoch 1/2" and re.fullmatch(r"3/3 - \d+s - \d+[mu]?s/step - acc: \S+ - loss: \S+", lines[1])
    assert fit_output(model, feats, y, epochs=2, verbose=0) == ""
    assert "Epoch" not in fit_output(model, feats, y, epochs=1)


def test_progress_output_tf2_style(base, data):
    feats, _, y = data
    model = build(base, SMALL_HEAD)
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["acc"])
    covidx.settings.progress_style = "tf2"
    try:
        printed = fit_output(model, feats, y, batch_size=16, epochs=1, validation_data=(feats[:8], y[:8]))
    finally:
        covidx.settings.progress_style = "keras3"
    final = printed.replace("\b", "").split("\r")[-1].split("\n")[-2]
    assert re.fullmatch(r"3/3 \[=+\] - \d+s \d+[mu]?s/step - loss: \S+ - acc: \S+ - val_loss: \S+ - val_acc: \S+ *",
                        final), final


def test_early_stopping_stops_and_restores_the_best_weights(base, data):
    feats, _, y = data
    model = build(base, SMALL_HEAD)
    model.compile(optimizer=SGD(learning_rate=0.05), loss="categorical_crossentropy")
    snapshots = []
    keep = LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(head_weights(model)))
    # nothing counts as an improvement after the first epoch: stops at the end of epoch 2 (patience 1)
    stop = EarlyStopping(monitor="loss", min_delta=100, patience=1, restore_best_weights=True, verbose=1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history = training.fit_features(model, feats, y, epochs=5, verbose=0, callbacks=[keep, stop])
    assert len(history.history["loss"]) == 2 and stop.stopped_epoch == 1
    assert "Epoch 2: early stopping" in out.getvalue()
    for a, b in zip(head_weights(model), snapshots[0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(model.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0),
                               training.Head(model).forward(model.features(np.zeros((1, 64, 64, 3), np.float32)),
                                                            False)[0], rtol=1e-4, atol=1e-6)


def test_reduce_lr_on_plateau(base, data):
    feats, _, y = data
    model = build(base, SMALL_HEAD)
    model.compile(optimizer=SGD(learning_rate=0.1), loss="categorical_crossentropy")
    reduce = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=100, min_lr=0.02)
    history = training.fit_features(model, feats, y, epochs=5, verbose=0, callbacks=[reduce])
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.02])  # logged before the cut
    assert model.optimizer.learning_rate == pytest.approx(0.02)


def test_model_checkpoint_writes_covidx_files(base, data, tmp_path):
    feats, _, y = data
    model = build(base, SMALL_HEAD)
    model.compile(optimizer=SGD(learning_rate=0.05), loss="categorical_crossentropy", metrics=["acc"])
    probe = np.random.default_rng(1).random((2, 64, 64, 3)).astype(np.float32)
    predictions = []
    every = ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{loss:.3f}.safetensors"), monitor="loss")
    record = LambdaCallback(on_epoch_end=lambda epoch, logs: predictions.append(model.predict(probe, verbose=0)))
    best = ModelCheckpoint(str(tmp_path / "best.h5"), monitor="val_acc", save_best_only=True)
    history = training.fit_features(model, feats, y, epochs=3, verbose=0, validation_data=(feats, y),
                                    callbacks=[every, record, best])
    files = sorted(f for f in os.listdir(tmp_path) if f.startswith("m-"))
    assert len(files) == 3 and files[0] == "m-01-%.3f.safetensors" % history.history["loss"][0]
    for epoch in range(3):
        name = [f for f in files if f.startswith("m-%02d" % (epoch + 1))][0]
        reloaded = covidx.load_model(str(tmp_path / name))
        np.testing.assert_allclose(reloaded.predict(probe, verbose=0), predictions[epoch], rtol=1e-5, atol=1e-6)
    assert covidx.load_model(str(tmp_path / "best.h5")).output_shape == (None, 2)


def test_predict_after_fit_uses_the_trained_head_and_the_backbone_is_unchanged(base, data):
    feats, _, y = data
    images = np.random.default_rng(2).random((4, 64, 64, 3)).astype(np.float32)
    model = build(base, SMALL_HEAD)
    before = model.predict(images, verbose=0)
    backbone = {k: v.copy() for k, v in base.named_weights.items()}
    model.compile(optimizer=SGD(learning_rate=0.1, momentum=0.9), loss="categorical_crossentropy")
    training.fit_features(model, feats, y, epochs=2, verbose=0)
    after = model.predict(images, verbose=0)
    expected, _ = training.Head(model).forward(model.features(images), training=False)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-6)
    for key, value in base.named_weights.items():
        np.testing.assert_array_equal(value, backbone[key])
    np.testing.assert_array_equal(model.named_weights["conv1_conv/kernel"], backbone["conv1_conv/kernel"])


def test_unfrozen_backbone_is_a_clear_error(base, data):
    feats, _, y = data
    model = build(base, SMALL_HEAD, freeze=False)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    with pytest.raises(ValueError, match=r"(?s)trains only the head.*for layer in model.layers\[:175\]:\n"
                                         r"        layer.trainable = False"):
        training.fit_features(model, feats, y, verbose=0)
    plain = ResNet50(weights=None, classes=2, head=(16,), seed=0)  # all layers trainable, as in Keras
    plain.compile(optimizer="sgd", loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="conv1_conv"):
        plain.fit(np.zeros((2, 64, 64, 3), np.float32), np.eye(2, dtype=np.float32), verbose=0)
    base.trainable = False  # Keras's way of freezing a whole model also works
    try:
        model.compile(optimizer="sgd", loss="categorical_crossentropy")
        training.fit_features(model, feats, y, verbose=0)
        assert not any(layer.trainable for layer in model.layers[:175])
    finally:
        del base.trainable


def test_unsupported_loss_and_uncompiled_model(base, data):
    feats, _, y = data
    model = build(base, SMALL_HEAD)
    with pytest.raises(ValueError, match="compile"):
        training.fit_features(model, feats, y, verbose=0)
    model.compile(optimizer="sgd", loss=lambda t, p: np.mean((t - p) ** 2, axis=-1))
    with pytest.raises(ValueError, match="categorical_crossentropy"):
        training.fit_features(model, feats, y, verbose=0)


def test_optimizers_from_strings_and_the_lr_alias():
    assert isinstance(covidx.optimizers.get("SGD"), SGD) and isinstance(covidx.optimizers.get("sgd"), SGD)
    assert isinstance(covidx.optimizers.get("adam"), Adam) and isinstance(covidx.optimizers.get("RMSprop"), RMSprop)
    with pytest.raises(ValueError, match="unknown optimizer"):
        covidx.optimizers.get("adagrad")
    with pytest.warns(UserWarning, match="lr"):
        opt = RMSprop(lr=1e-4)
    assert opt.learning_rate == pytest.approx(1e-4) and opt.lr == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="not recognized"):
        SGD(learning_rte=0.1)
    # Keras 2's decay: lr / (1 + decay * iterations)
    opt = SGD(learning_rate=0.1, decay=0.5)
    w = np.zeros(3, np.float32)
    opt.apply([("w", np.ones(3, np.float32), w)])
    opt.apply([("w", np.ones(3, np.float32), w)])
    np.testing.assert_allclose(w, -(0.1 + 0.1 / 1.5))


# --- fit on images: arrays and the image iterator ----------------------------------------------

@pytest.fixture(scope="module")
def images_model():
    """A random articles-style model on a 64x64-capable backbone (plain covidx model, head 16/2)."""
    model = ResNet50(weights=None, classes=2, head=(16,), seed=5, preprocessing={"rescale": 1 / 255})
    return model


def count_features(monkeypatch):
    seen = []
    original = training.Trainer.image_features

    def counting(self, x):
        seen.append(len(x))
        return original(self, x)

    monkeypatch.setattr(training.Trainer, "image_features", counting)
    return seen


def test_fit_on_an_iterator_caches_features_without_augmentation(monkeypatch):
    model = ResNet50(weights=None, classes=2, head=(16,), seed=5)
    for layer in model.layers[:175]:
        layer.trainable = False
    model.compile(optimizer=SGD(learning_rate=0.01, momentum=0.9), loss="categorical_crossentropy",
                  metrics=["acc"])
    gen = ImageDataGenerator(rescale=1 / 255)
    train = gen.flow_from_directory(SAMPLES_DIR, target_size=(64, 64), batch_size=3, shuffle=False)
    val = gen.flow_from_directory(SAMPLES_DIR, target_size=(64, 64), batch_size=4, shuffle=False)
    seen = count_features(monkeypatch)
    start = model.get_weights()
    history = model.fit(train, epochs=3, validation_data=val, verbose=0, shuffle=False)
    assert sum(seen) == 8 + 8  # every image once, for training and for validation
    assert list(history.history) == ["loss", "acc", "val_loss", "val_acc"]
    # the same training on the features computed beforehand gives the same losses
    trained = model.get_weights()
    model.set_weights(start)
    model.compile(optimizer=SGD(learning_rate=0.01, momentum=0.9), loss="categorical_crossentropy",
                  metrics=["acc"])
    x = np.concatenate([train[i][0] for i in range(len(train))])
    y = np.concatenate([train[i][1] for i in range(len(train))])
    again = training.fit_features(model, model.features(x), y, batch_size=3, epochs=3, shuffle=False, verbose=0)
    np.testing.assert_allclose(again.history["loss"], history.history["loss"], rtol=1e-5)
    for a, b in zip(model.get_weights()[-4:], trained[-4:]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(trained[0], start[0])  # the backbone did not move


def test_fit_with_augmentation_recomputes_features(monkeypatch, images_model):
    model = images_model
    for layer in model.layers[:175]:
        layer.trainable = False
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    gen = ImageDataGenerator(rescale=1 / 255, horizontal_flip=True)
    train = gen.flow_from_directory(SAMPLES_DIR, target_size=(64, 64), batch_size=4)
    seen = count_features(monkeypatch)
    history = model.fit_generator(train, steps_per_epoch=2, epochs=2, verbose=0)
    assert sum(seen) == 16 and len(history.history["loss"]) == 2
    assert isinstance(model.evaluate_generator(train, steps=1), list)
    assert model.predict_generator(train, steps=1).shape == (4, 2)


def test_fit_on_arrays_and_a_python_generator(images_model):
    model = images_model
    for layer in model.layers[:175]:
        layer.trainable = False
    model.compile(optimizer=Adam(learning_rate=1e-3), loss="sparse_categorical_crossentropy", metrics=["acc"])
    rng = np.random.default_rng(4)
    x = rng.random((10, 64, 64, 3)).astype(np.float32)
    labels = rng.integers(0, 2, 10).astype(np.float32)
    history = model.fit(x, labels, batch_size=4, epochs=2, verbose=0, validation_data=(x[:4], labels[:4]))
    assert len(history.history["val_acc"]) == 2

    def batches():
        while True:
            yield x[:5], labels[:5]

    history = model.fit(batches(), steps_per_epoch=2, epochs=2, verbose=0)
    assert history.params["steps"] == 2 and len(history.history["loss"]) == 2


def test_unreadable_images_are_left_out_and_class_names_adopted(monkeypatch, tmp_path):
    import shutil

    folder = tmp_path / "xrays"
    shutil.copytree(SAMPLES_DIR, folder, ignore=shutil.ignore_patterns("*.csv"))
    (folder / "Normal" / "broken.png").write_bytes(b"not an image")
    model = ResNet50(weights=None, classes=2, head=(8,), seed=6)
    for layer in model.layers[:175]:
        layer.trainable = False
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["acc"])
    gen = ImageDataGenerator(rescale=1 / 255)
    train = gen.flow_from_directory(str(folder), target_size=(64, 64), batch_size=4, on_error="skip")
    seen = count_features(monkeypatch)
    with pytest.warns(UserWarning, match="broken.png"):
        history = model.fit(train, epochs=2, verbose=0)
    assert sum(seen) == 8 and len(history.history["loss"]) == 2
    assert model.class_names == ["COVID-19", "Normal"]
