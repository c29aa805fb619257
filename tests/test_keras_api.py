"""The everyday Keras API that notebooks use beside the articles' code, against Keras 3 itself
(test-only dependency, torch backend): to_categorical, set_random_seed, clear_session,
keras.Input and Sequential heads, weights / trainable_weights / non_trainable_weights,
train_on_batch / test_on_batch, CSVLogger, LearningRateScheduler, TensorBoard,
image_dataset_from_directory, and the fine-tuning refusal."""
import os
import random
import shutil
import types
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

import covidx  # noqa: E402
import covidx as tf  # noqa: E402
from covidx import training  # noqa: E402
from covidx.applications.resnet50 import ResNet50  # noqa: E402
from covidx.data import SAMPLES_DIR, sample_files  # noqa: E402

SIZE = 64


# --- utilities ------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels,num_classes", [([0, 2, 1, 2], None), ([[1], [0], [3]], 5), (np.array([[0, 1], [2, 1]]),
                                                                                             None), (3, 4)])
def test_to_categorical_matches_keras(labels, num_classes):
    want = keras.utils.to_categorical(labels, num_classes)
    got = tf.keras.utils.to_categorical(labels, num_classes)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype and got.shape == want.shape


def test_set_random_seed_matches_keras():
    keras.utils.set_random_seed(1234)
    want = (random.random(), np.random.rand(3).tolist(), np.random.permutation(6).tolist())
    tf.keras.utils.set_random_seed(1234)
    got = (random.random(), np.random.rand(3).tolist(), np.random.permutation(6).tolist())
    assert got == want
    with pytest.raises(ValueError, match="integer"):
        tf.keras.utils.set_random_seed(1.5)
    # covidx's initial weights come from these generators: a seed makes them reproducible
    tf.keras.utils.set_random_seed(5)
    first = tf.keras.layers.Dense(4)
    first.build((None, 8))
    tf.keras.utils.set_random_seed(5)
    second = tf.keras.layers.Dense(4)
    second.build((None, 8))
    np.testing.assert_array_equal(first.kernel, second.kernel)


def test_clear_session_restarts_layer_names_as_keras():
    keras.backend.clear_session()
    tf.keras.backend.clear_session()
    want = [keras.layers.Dense(2).name, keras.layers.Dense(2).name]
    got = [tf.keras.layers.Dense(2).name, tf.keras.layers.Dense(2).name]
    assert got == want == ["dense", "dense_1"]
    keras.backend.clear_session()
    tf.keras.backend.clear_session()
    assert tf.keras.layers.Dense(2).name == keras.layers.Dense(2).name == "dense"


# --- heads, weights and single batches, against the same network in Keras ---------------------------


@pytest.fixture(scope="module")
def backbone():
    """A covidx ResNet50 without top and the same network in Keras (with its weights)."""
    base = ResNet50(weights=None, include_top=False, seed=11)
    kbase = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    kbase.set_weights(base.get_weights())
    return base, kbase


def images(n=6, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32) * 40


def head_values(seed, units=(16, 2), scale=0.05):
    rng = np.random.default_rng(seed)
    values, units_in = [], 2048
    for u in units:
        values += [rng.normal(0, scale, (units_in, u)).astype(np.float32), rng.normal(0, 0.1, u).astype(np.float32)]
        units_in = u
    return values


def keras_head_model(kbase, head_weights, trainable_from=None):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = kbase(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    out = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, out)
    model.layers[-2].set_weights(head_weights[:2])
    model.layers[-1].set_weights(head_weights[2:])
    return model


def test_input_and_sequential_heads_match_keras(backbone):
    """The Keras 3 transfer-learning pattern (keras.Input, base_model(inputs, training=False)) and
    keras.Sequential: the same outputs as Keras's model with the same weights."""
    base, kbase = backbone
    weights = head_values(1)
    kmodel = keras_head_model(kbase, weights)
    x = images()
    want = keras.ops.convert_to_numpy(kmodel(x, training=False))
    assert want[:, 0].std() > 1e-3

    inputs = tf.keras.Input(shape=(SIZE, SIZE, 3))
    h = base(inputs, training=False)
    h = tf.keras.layers.GlobalAveragePooling2D()(h)
    h = tf.keras.layers.Dense(16, activation="relu")(h)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2, activation="softmax")(h))
    model.set_weights(base.get_weights() + weights)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-5)

    seq = tf.keras.Sequential([base, tf.keras.layers.GlobalAveragePooling2D()])
    seq.add(tf.keras.layers.Dense(16, activation="relu"))
    seq.add(tf.keras.layers.Dense(2, activation="softmax"))
    seq.set_weights(base.get_weights() + weights)
    np.testing.assert_allclose(seq.predict(x, verbose=0), want, atol=1e-5)
    assert [layer.name for layer in seq.layers[-3:]][0].startswith("global_average_pooling2d")

    with pytest.raises(ValueError, match="RGB images"):  # heads alone on features are not covidx models
        tf.keras.Input(shape=(2048,))
    with pytest.raises(ValueError, match="backbone"):
        tf.keras.layers.GlobalAveragePooling2D()(tf.keras.Input(shape=(SIZE, SIZE, 3)))
    with pytest.raises(ValueError, match="ResNet50 backbone"):
        tf.keras.Sequential([tf.keras.layers.Dense(2)])
    with pytest.raises(AttributeError, match="no backbone yet"):
        tf.keras.Sequential().predict(x)


def test_trainable_weights_match_keras(backbone):
    base, kbase = backbone
    weights = head_values(2)
    kmodel = keras_head_model(kbase, weights)
    inputs = tf.keras.Input(shape=(SIZE, SIZE, 3))
    h = tf.keras.layers.GlobalAveragePooling2D()(base(inputs))
    h = tf.keras.layers.Dense(16, activation="relu")(h)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2, activation="softmax")(h))
    model.set_weights(base.get_weights() + weights)
    try:
        for trainable_from in (None, "conv5_block3_1_conv"):
            # Keras nests the backbone as one layer: freeze its layers the same way
            on = trainable_from is None
            for klayer, layer in zip(kbase.layers, base.layers):
                on = on or klayer.name == trainable_from
                klayer.trainable = layer.trainable = on if trainable_from else True
            for kind in ("weights", "trainable_weights", "non_trainable_weights"):
                want = [keras.ops.convert_to_numpy(v) for v in getattr(kmodel, kind)]
                got = getattr(model, kind)
                assert [w.shape for w in got] == [w.shape for w in want], kind
                for a, b in zip(got, want):
                    np.testing.assert_array_equal(a, b)
            assert len(model.trainable_weights) + len(model.non_trainable_weights) == len(model.weights)
    finally:
        for layer in list(kbase.layers) + list(base.layers):
            layer.trainable = True
    assert len(base.trainable_weights) == 212 and len(base.non_trainable_weights) == 106


def test_train_on_batch_and_test_on_batch_match_keras(backbone):
    """One SGD step on one batch: the loss and accuracy Keras reports (those of the forward pass
    before the step), and the head's weights after it."""
    base, kbase = backbone
    weights = head_values(3)
    kmodel = keras_head_model(kbase, weights)
    kbase.trainable = False
    inputs = tf.keras.Input(shape=(SIZE, SIZE, 3))
    h = tf.keras.layers.GlobalAveragePooling2D()(base(inputs))
    h = tf.keras.layers.Dense(16, activation="relu")(h)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2, activation="softmax")(h))
    model.set_weights(base.get_weights() + weights)
    for layer in model.layers[:175]:
        layer.trainable = False
    try:
        x, y = images(8, seed=4), np.eye(2, dtype=np.float32)[[0, 1, 1, 0, 1, 0, 0, 1]]
        kmodel.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5, momentum=0.9),
                       loss="categorical_crossentropy", metrics=["accuracy"])
        model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=0.5, momentum=0.9),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        for step in range(3):
            want = kmodel.train_on_batch(x, y)
            got = model.train_on_batch(x, y)
            np.testing.assert_allclose(got, want, rtol=1e-5)
        for a, b in zip([w for layer in model.head_layers for w in layer.get_weights()],
                        [keras.ops.convert_to_numpy(v) for v in kmodel.trainable_weights]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(model.test_on_batch(x, y), kmodel.test_on_batch(x, y), rtol=1e-5)
        assert model.test_on_batch(x, y, return_dict=True) == pytest.approx(
            kmodel.test_on_batch(x, y, return_dict=True), rel=1e-5)
    finally:
        kbase.trainable = True
        for layer in base.layers:
            layer.trainable = True


def test_fine_tuning_the_last_block_is_refused_with_a_way_out(backbone):
    base, _ = backbone
    x = tf.keras.layers.GlobalAveragePooling2D()(base.output)
    model = tf.keras.models.Model(base.input, tf.keras.layers.Dense(2, activation="softmax")(x))
    for layer in model.layers:
        layer.trainable = layer.name.startswith("conv5_") or layer in model.head_layers
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    try:
        with pytest.raises(ValueError, match=r"(?s)conv5_block1_1_conv.*conv5_\*.*out of covidx's scope.*Keras or "
                                             r"PyTorch.*m\.keras"):
            model.fit(images(4), np.eye(2)[[0, 1, 0, 1]], verbose=0)
    finally:
        for layer in base.layers:
            layer.trainable = True


# --- callbacks ----------------------------------------------------------------------------------


EPOCH_LOGS = [{"loss": 0.9, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.25},
              {"loss": 0.7, "accuracy": 0.625, "val_loss": 0.95, "val_accuracy": 0.5, "learning_rate": 0.01},
              {"loss": 0.5, "accuracy": np.float32(0.75), "val_loss": 0.9, "val_accuracy": 0.75}]


def drive(callback, logs_per_epoch, model=None):
    callback.set_model(model)
    callback.on_train_begin({})
    for epoch, logs in enumerate(logs_per_epoch):
        callback.on_epoch_begin(epoch, {})
        callback.on_epoch_end(epoch, dict(logs))
    callback.on_train_end({})


@pytest.mark.parametrize("separator,append", [(",", False), (";", True)])
def test_csv_logger_writes_what_keras_writes(tmp_path, separator, append):
    for name, module in (("keras.csv", keras.callbacks), ("covidx.csv", tf.keras.callbacks)):
        path = tmp_path / name
        drive(module.CSVLogger(str(path), separator=separator, append=append), EPOCH_LOGS[:2])
        if append:  # a second fit() continues the file
            drive(module.CSVLogger(str(path), separator=separator, append=True), EPOCH_LOGS[2:])
    assert (tmp_path / "covidx.csv").read_text() == (tmp_path / "keras.csv").read_text()
    assert (tmp_path / "covidx.csv").read_text().startswith("epoch%saccuracy" % separator)


def test_csv_logger_in_fit(backbone, tmp_path):
    base, _ = backbone
    x = tf.keras.layers.GlobalAveragePooling2D()(base.output)
    model = tf.keras.models.Model(base.input, tf.keras.layers.Dense(2, activation="softmax")(x))
    for layer in model.layers[:175]:
        layer.trainable = False
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    feats = np.abs(np.random.default_rng(0).normal(size=(8, 2048))).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[[0, 1] * 4]
    log = tf.keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))
    history = training.fit_features(model, feats, y, epochs=2, verbose=0, validation_data=(feats, y), callbacks=[log])
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0] == "epoch,accuracy,loss,val_accuracy,val_loss"
    assert [float(v) for v in rows[2].split(",")[1:]] == pytest.approx(
        [history.history[k][1] for k in ("accuracy", "loss", "val_accuracy", "val_loss")])
    for layer in base.layers:
        layer.trainable = True


def test_learning_rate_scheduler_sets_what_keras_sets(backbone):
    def schedule(epoch, lr):
        return lr if epoch < 2 else lr * 0.5

    rates = {}
    for name, module, optimizer in (("keras", keras.callbacks, keras.optimizers.SGD(learning_rate=0.1)),
                                    ("covidx", tf.keras.callbacks, tf.keras.optimizers.SGD(learning_rate=0.1))):
        seen = []
        model = types.SimpleNamespace(optimizer=optimizer)
        callback = module.LearningRateScheduler(schedule)
        callback.set_model(model)
        for epoch in range(5):
            callback.on_epoch_begin(epoch)
            logs = {"loss": 1.0}  # (Keras replaces an empty dict of logs with its own)
            callback.on_epoch_end(epoch, logs)
            seen.append(logs["learning_rate"])
        rates[name] = seen
    assert rates["covidx"] == pytest.approx(rates["keras"], rel=1e-6)
    assert rates["covidx"] == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.0125])
    # in fit, the rate changes the steps and is logged
    base, _ = backbone
    x = tf.keras.layers.GlobalAveragePooling2D()(base.output)
    model = tf.keras.models.Model(base.input, tf.keras.layers.Dense(2, activation="softmax")(x))
    for layer in model.layers[:175]:
        layer.trainable = False
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=0.1), loss="categorical_crossentropy")
    feats = np.abs(np.random.default_rng(0).normal(size=(8, 2048))).astype(np.float32)
    history = training.fit_features(model, feats, np.eye(2)[[0, 1] * 4], epochs=3, verbose=0,
                                    callbacks=[tf.keras.callbacks.LearningRateScheduler(lambda e: 0.1 / (e + 1))])
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    for layer in base.layers:
        layer.trainable = True


def test_tensorboard_says_it_records_nothing(tmp_path):
    with pytest.warns(UserWarning, match="no TensorFlow.*CSVLogger"):
        board = tf.keras.callbacks.TensorBoard(log_dir=str(tmp_path / "logs"), histogram_freq=1)
    drive(board, EPOCH_LOGS)
    assert not (tmp_path / "logs").exists()


# --- image_dataset_from_directory ---------------------------------------------------------------


@pytest.fixture(scope="module")
def class_tree(tmp_path_factory):
    """The samples in three class folders, one nested, with a non-image file and a hidden folder."""
    root = tmp_path_factory.mktemp("classes")
    for i, (path, label) in enumerate(sample_files()):
        folder = root / (label if i % 3 else "Other") / ("deep" if i == 4 else "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / ("%d_%s" % (i, os.path.basename(path))))
    (root / "Normal" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return str(root)


def keras_listing(directory, validation_split=None, subset=None, seed=None, shuffle=True, class_names=None):
    from keras.src.utils import dataset_utils, image_dataset_utils

    paths, labels, names = dataset_utils.index_directory(directory, "inferred",
                                                         formats=image_dataset_utils.ALLOWLIST_FORMATS,
                                                         class_names=class_names, shuffle=shuffle, seed=seed)
    if validation_split:
        paths, labels = dataset_utils.get_training_or_validation_split(paths, labels, validation_split, subset)
    return paths, list(labels), names


@pytest.mark.parametrize("kwargs", [dict(seed=3), dict(shuffle=False), dict(seed=8, validation_split=0.25,
                                                                          subset="training"),
                                    dict(seed=8, validation_split=0.25, subset="validation"),
                                    dict(seed=1, class_names=["Normal", "COVID-19"])])
def test_image_dataset_lists_files_as_keras(class_tree, kwargs):
    ds = tf.keras.utils.image_dataset_from_directory(class_tree, image_size=(SIZE, SIZE), batch_size=3, **kwargs)
    paths, labels, names = keras_listing(class_tree, **kwargs)
    assert ds.file_paths == paths and ds.class_names == names
    assert ds.classes.tolist() == labels


def test_image_dataset_batches_and_label_modes(class_tree):
    from covidx.preprocessing.image import img_to_array, load_img

    ds = tf.keras.utils.image_dataset_from_directory(class_tree, image_size=(SIZE, SIZE), batch_size=3, shuffle=False)
    batches = list(ds)
    assert len(batches) == len(ds) == 3 and [len(b[0]) for b in batches] == [3, 3, 2]
    x, y = batches[0]
    assert x.shape == (3, SIZE, SIZE, 3) and x.dtype == np.float32 and y.dtype == np.int32
    want = img_to_array(load_img(ds.file_paths[0], target_size=(SIZE, SIZE), interpolation="bilinear"))
    np.testing.assert_array_equal(x[0], want)  # 0..255 values, as Keras gives them
    assert len(ds.take(2)) == 2 and ds.prefetch(8) is ds and ds.cache() is ds
    with pytest.raises(AttributeError, match="not tf.data"):
        ds.map(lambda a, b: (a, b))
    cat = tf.keras.utils.image_dataset_from_directory(class_tree, image_size=(SIZE, SIZE), label_mode="categorical",
                                                      shuffle=False)
    np.testing.assert_array_equal(cat[0][1], np.eye(3, dtype=np.float32)[ds.classes])
    only = tf.keras.utils.image_dataset_from_directory(class_tree, image_size=(SIZE, SIZE), labels=None, shuffle=False)
    assert not isinstance(only[0], tuple)
    with pytest.raises(ValueError, match="seed"):
        tf.keras.utils.image_dataset_from_directory(class_tree, validation_split=0.2, subset="training")
    with pytest.raises(ValueError, match="exactly 2"):
        tf.keras.utils.image_dataset_from_directory(class_tree, label_mode="binary")


def test_image_dataset_in_fit_evaluate_and_predict():
    base = ResNet50(weights=None, include_top=False, seed=3)
    x = tf.keras.layers.GlobalAveragePooling2D()(base.output)
    model = tf.keras.models.Model(base.input, tf.keras.layers.Dense(2, activation="softmax")(x))
    for layer in model.layers[:175]:
        layer.trainable = False
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    ds = tf.keras.utils.image_dataset_from_directory(SAMPLES_DIR, image_size=(SIZE, SIZE), batch_size=3,
                                                     shuffle=False)
    history = model.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    arrays = np.concatenate([b[0] for b in ds])
    labels = np.concatenate([b[1] for b in ds])
    np.testing.assert_array_equal(model.predict(ds, verbose=0), model.predict(arrays, verbose=0))
    assert model.evaluate(ds, verbose=0) == pytest.approx(model.evaluate(arrays, labels, verbose=0), rel=1e-6)
    shuffled = tf.keras.utils.image_dataset_from_directory(SAMPLES_DIR, image_size=(SIZE, SIZE), seed=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(shuffled, verbose=0)
    assert any("shuffle=True" in str(w.message) for w in caught)
