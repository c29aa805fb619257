"""compile / evaluate / predict on generators and arrays: losses and metrics checked against values
computed by hand from predict(), and against Keras 3's own metric and loss objects."""
import os
import re
import shutil

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import covidx  # noqa: E402
from covidx.applications.resnet50 import ResNet50  # noqa: E402
from covidx.data import sample_files, samples_dir  # noqa: E402
from covidx.preprocessing.image import ImageDataGenerator, img_to_array, load_img  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SIZE = (64, 64)


def spread_model(head_units, activation, seed):
    """A random model whose last layer is rescaled so its outputs spread over the bundled X-rays
    (a random network's raw outputs sit close together)."""
    model = ResNet50(weights=None, classes=head_units, classifier_activation=activation, head=(16,), seed=seed)
    x = images_of([p for p, _ in sample_files()])
    h = np.maximum(model.features(x) @ model.named_weights["dense/kernel"] + model.named_weights["dense/bias"], 0)
    w = model.get_weights()
    last_k, last_b = w[-2], w[-1]
    z = h @ last_k
    scale = 1.0 / (z.std(axis=0) + 1e-9)
    w[-2] = (last_k * scale).astype(np.float32)
    w[-1] = (-(z.mean(axis=0)) * scale).astype(np.float32)
    model.set_weights(w)
    return model


def images_of(paths):
    return np.stack([img_to_array(load_img(p, target_size=SIZE)) for p in paths]) * np.float32(1 / 255)


@pytest.fixture(scope="module")
def shuffled_tree(tmp_path_factory):
    """The 8 bundled X-rays, each copied twice into classes 'a'/'b' at random: labels unrelated to
    the images, so accuracies land strictly between 0 and 1."""
    root = tmp_path_factory.mktemp("xrays")
    rng = np.random.default_rng(0)
    for cls in "ab":
        (root / cls).mkdir()
    for i, (p, _) in enumerate(sample_files() * 2):
        shutil.copy(p, root / rng.choice(["a", "b"]) / ("%02d.png" % i))
    return str(root)


def flow(tree, class_mode, one=False, **kw):
    return ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(tree, target_size=SIZE, class_mode=class_mode,
                                                                     batch_size=1 if one else 5, shuffle=False, **kw)


def hand_values(model, it, loss):
    x = images_of(it.filepaths)
    p = model.predict(x, verbose=0).astype(np.float64)
    y = it.classes
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    if p.shape[1] == 1:
        lv = -(y * np.log(pc[:, 0]) + (1 - y) * np.log(1 - pc[:, 0]))
        acc = np.mean((p[:, 0] > 0.5) == y)
    else:
        pn = np.clip(p / p.sum(1, keepdims=True), 1e-7, 1 - 1e-7)
        lv = -np.log(pn[np.arange(len(y)), y])
        acc = np.mean(np.argmax(p, 1) == y)
    assert 0 < acc < 1 and 1e-3 < p.min() and p.max() < 1 - 1e-3, "the fixture must give unclipped, mixed outputs"
    return float(np.mean(lv)), float(acc)


CASES = [(2, "softmax", "categorical", "categorical_crossentropy"),
         (2, "softmax", "sparse", "sparse_categorical_crossentropy"),
         (2, "softmax", "binary", "categorical_crossentropy"),  # integer labels scored as sparse
         (2, "softmax", "Binary", "sparse_categorical_crossentropy"),
         (1, "sigmoid", "binary", "binary_crossentropy"),
         (1, "sigmoid", "sparse", "binary_crossentropy")]


@pytest.mark.parametrize("units,activation,class_mode,loss", CASES)
def test_evaluate_matches_hand_computation(shuffled_tree, units, activation, class_mode, loss):
    model = spread_model(units, activation, seed=units)
    model.compile(optimizer="sgd", loss=loss, metrics=["accuracy"])
    it = flow(shuffled_tree, class_mode)
    want_loss, want_acc = hand_values(model, it, loss)
    got = model.evaluate(it, verbose=0)
    assert isinstance(got, list) and len(got) == 2
    assert got[0] == pytest.approx(want_loss, rel=1e-5)
    assert got[1] == pytest.approx(want_acc, abs=1e-7)
    # Shuffled and in another batch size: the same per-sample averages.
    it2 = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(shuffled_tree, target_size=SIZE,
                                                                    class_mode=class_mode, batch_size=3, seed=4)
    got2 = model.evaluate(it2, verbose=0, return_dict=True)
    assert list(got2) == ["accuracy", "loss"]
    assert got2["loss"] == pytest.approx(want_loss, rel=1e-5) and got2["accuracy"] == pytest.approx(want_acc)


def test_evaluate_arrays_steps_and_scalar_result(shuffled_tree):
    model = spread_model(2, "softmax", seed=5)
    it = flow(shuffled_tree, "categorical")
    x, y = images_of(it.filepaths), np.eye(2, dtype=np.float32)[it.classes]
    model.compile(loss="categorical_crossentropy")
    whole = model.evaluate(x, y, batch_size=4, verbose=0)
    assert isinstance(whole, float)
    p = np.clip(model.predict(x, verbose=0).astype(np.float64), 1e-7, 1 - 1e-7)
    assert whole == pytest.approx(float(np.mean(-np.log(p[np.arange(len(y)), it.classes]))), rel=1e-5)
    # steps: only the first batches; a loss averaged per sample over them
    first = model.evaluate(x, y, batch_size=4, steps=2, verbose=0)
    assert first == pytest.approx(float(np.mean(-np.log(p[np.arange(8), it.classes[:8]]))), rel=1e-5)


def test_metrics_match_keras():
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    p1 = rng.uniform(size=(50, 1)).astype(np.float32)
    y1 = (rng.uniform(size=50) < 0.4).astype(np.float32)
    p2 = rng.dirichlet([1, 1], size=50).astype(np.float32)
    y2 = (rng.uniform(size=50) < 0.5).astype(np.int64)
    onehot = np.eye(2, dtype=np.float32)[y2]
    pairs = [(covidx.metrics.AUC(), keras.metrics.AUC(), y1[:, None], p1),
             (covidx.metrics.AUC(curve="PR"), keras.metrics.AUC(curve="PR"), y1[:, None], p1),
             (covidx.metrics.AUC(), keras.metrics.AUC(), onehot, p2),
             (covidx.metrics.Precision(), keras.metrics.Precision(), y1[:, None], p1),
             (covidx.metrics.Recall(), keras.metrics.Recall(), onehot, p2),
             (covidx.metrics.BinaryAccuracy(), keras.metrics.BinaryAccuracy(), y1, p1),
             (covidx.metrics.CategoricalAccuracy(), keras.metrics.CategoricalAccuracy(), onehot, p2),
             (covidx.metrics.SparseCategoricalAccuracy(), keras.metrics.SparseCategoricalAccuracy(), y2, p2)]
    for ours, theirs, y, p in pairs:
        for s in (slice(0, 20), slice(20, 50)):  # two batches: running state
            ours.update_state(y[s], p[s])
            theirs.update_state(y[s], p[s])
        assert float(ours.result()) == pytest.approx(float(theirs.result()), rel=1e-5, abs=1e-6), type(ours)
    for ours, theirs, y, p in [(covidx.losses.binary_crossentropy, keras.losses.binary_crossentropy, y1, p1),
                               (covidx.losses.categorical_crossentropy, keras.losses.categorical_crossentropy,
                                onehot, p2),
                               (covidx.losses.sparse_categorical_crossentropy,
                                keras.losses.sparse_categorical_crossentropy, y2, p2)]:
        theirs_v = np.asarray(theirs(y[:, None] if y.ndim == 1 and p.shape[1] == 1 else y, p).cpu())
        np.testing.assert_allclose(ours(y, p), theirs_v, rtol=1e-5, atol=1e-7)


def test_auc_precision_recall_by_hand(shuffled_tree):
    model = spread_model(2, "softmax", seed=7)
    model.compile(loss="categorical_crossentropy", metrics=["accuracy", "AUC", "precision", "recall"])
    it = flow(shuffled_tree, "categorical")
    res = model.evaluate(it, verbose=0, return_dict=True)
    p = model.predict(images_of(it.filepaths), verbose=0)
    truth = np.eye(2)[it.classes].astype(bool).ravel()
    flat = p.ravel()
    tp = np.sum((flat > 0.5) & truth)
    assert res["precision"] == pytest.approx(tp / np.sum(flat > 0.5))
    assert res["recall"] == pytest.approx(tp / truth.sum())
    # Keras's ROC AUC uses 200 thresholds; its trapezoids equal the Mann-Whitney statistic (ties
    # counted half) of the scores quantised to those thresholds.
    thresholds = np.array([-1e-7] + [(i + 1) / 199 for i in range(198)] + [1 + 1e-7], np.float32)
    q = np.searchsorted(thresholds, flat.astype(np.float32), side="left")
    pos, neg = q[truth], q[~truth]
    mann_whitney = np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :])
    assert res["auc"] == pytest.approx(mann_whitney, rel=1e-6)


def test_progress_bar_formats(shuffled_tree, capsys):
    model = spread_model(2, "softmax", seed=2)
    model.compile(loss="categorical_crossentropy", metrics=["acc"])
    it = flow(shuffled_tree, "categorical")
    model.evaluate(it, verbose=1)
    out = ANSI.sub("", capsys.readouterr().out)
    last = out.replace("\b", "").split("\r")[-1].strip()
    assert re.fullmatch(r"4/4 ━{20} \d+s \d+m?s/step - acc: \d\.\d{4} - loss: \d\.\d{4}", last), last
    model.evaluate(it, verbose=2)
    assert re.fullmatch(r"4/4 - \d+s - \d+m?s/step - acc: \d\.\d{4} - loss: \d\.\d{4}\n", capsys.readouterr().out)
    model.evaluate(it, verbose=0)
    assert capsys.readouterr().out == ""
    covidx.settings.progress_style = "tf2"
    try:
        model.evaluate(it, verbose=1)
    finally:
        covidx.settings.progress_style = "keras3"
    last = capsys.readouterr().out.replace("\b", "").split("\r")[-1].strip()
    assert re.fullmatch(r"4/4 \[={30}\] - \d+s \d+m?s/step - loss: \d\.\d{4} - acc: \d\.\d{4}", last), last


def test_progress_bar_pads_a_shorter_redraw():
    """keras-compat 4.6: a redraw shorter than the previous one is padded with spaces, so no
    characters of the old line are left on screen."""
    import io

    from covidx.progbar import Progbar

    stream = io.StringIO()
    bar = Progbar(target=2, stream=stream)
    bar.update(1, [("loss", 1e-4)])  # " - loss: 1.0000e-04"
    bar.update(2, [("loss", 0.5)])  # " - loss: 0.5000", four characters shorter
    out = stream.getvalue()
    # dynamic: every draw starts with backspaces over the previous one and "\r"; else with "\n"
    first, second = out.split("\r")[1:] if bar.dynamic else out.split("\n", 1)
    first = first.rstrip("\b")
    assert first.endswith("loss: 1.0000e-04") and second.endswith("\n")
    second = second[:-1]
    drawn = second.rstrip(" ")
    assert drawn.endswith("loss: 0.5000")
    assert len(second) == max(len(first), len(drawn))


def test_one_class_folder_aligned_by_name(tmp_path, capsys):
    (tmp_path / "COVID-19").mkdir()
    for p, label in sample_files():
        shutil.copy(p, tmp_path / "COVID-19" / os.path.basename(p))
    model = spread_model(2, "softmax", seed=3)
    model.class_names = ["COV19", "Normal"]
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    for mode in ("Binary", "categorical"):
        it = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(str(tmp_path), target_size=SIZE, batch_size=3,
                                                                       class_mode=mode, shuffle=True)
        loss, acc = model.evaluate(it, verbose=0)
        model.evaluate(it, verbose=0)
        out = capsys.readouterr().out
        assert out.count("'COVID-19' -> 'COV19'") == 1  # said once
        p = model.predict(images_of(it.filepaths), verbose=0)
        assert acc == pytest.approx(np.mean(np.argmax(p, 1) == 0))
        assert loss == pytest.approx(float(np.mean(-np.log(np.clip(p[:, 0] / p.sum(1), 1e-7, 1)))), rel=1e-5)


def test_alignment_by_index_when_names_differ(tmp_path, capsys):
    for cls in ("x", "y"):
        (tmp_path / cls).mkdir()
    files = sample_files()
    for i, (p, _) in enumerate(files):
        shutil.copy(p, tmp_path / ("x" if i % 2 else "y") / ("%d.png" % i))
    model = spread_model(2, "softmax", seed=4)
    model.class_names = ["COV19", "Normal"]
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    it = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(str(tmp_path), target_size=SIZE,
                                                                   class_mode="categorical", shuffle=False)
    _, acc = model.evaluate(it, verbose=0)
    assert "aligned by index" in capsys.readouterr().out
    p = model.predict(images_of(it.filepaths), verbose=0)
    assert acc == pytest.approx(np.mean(np.argmax(p, 1) == it.classes))


def one_class_folder(tmp_path, name, label):
    (tmp_path / name).mkdir()
    for p, sample_label in sample_files():
        if sample_label == label:
            shutil.copy(p, tmp_path / name / os.path.basename(p))
    return str(tmp_path)


def test_one_class_folder_without_names_to_match_is_refused(tmp_path):
    """A Normal-only folder for a model without class names (every Keras file) was scored as
    class 0 and reported accuracy 0.0; there is nothing to say which output it is: refuse, and say
    how to tell covidx."""
    model = spread_model(2, "softmax", seed=5)
    assert model.class_names is None
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    root = one_class_folder(tmp_path, "Normal", "Normal")
    gen = ImageDataGenerator(rescale=1.0 / 255)
    it = gen.flow_from_directory(root, target_size=SIZE, class_mode="categorical", shuffle=False)
    with pytest.raises(ValueError, match=r"1 class \['Normal'\].*no class names.*class_names=.*classes="):
        model.evaluate(it, verbose=0)
    for layer in model.layers[:175]:
        layer.trainable = False
    with pytest.raises(ValueError, match="class_names="):
        model.fit(it, epochs=1, verbose=0)
    # either way of saying it gives the right labels
    named = gen.flow_from_directory(root, target_size=SIZE, class_mode="categorical", shuffle=False,
                                    classes=["COV19", "Normal"])
    p = model.predict(images_of(named.filepaths), verbose=0)
    _, acc = model.evaluate(named, verbose=0)
    assert acc == pytest.approx(np.mean(np.argmax(p, 1) == 1))
    model.class_names = ["COV19", "Normal"]
    _, acc = model.evaluate(it, verbose=0)
    assert acc == pytest.approx(np.mean(np.argmax(p, 1) == 1))
    # names that match none of the model's are refused too, rather than taken by position
    model.class_names = ["cats", "dogs"]
    with pytest.raises(ValueError, match=r"none of its names matches the model's classes \['cats', 'dogs'\]"):
        model.evaluate(it, verbose=0)


def test_unscaled_images_warn_once(recwarn):
    model = spread_model(2, "softmax", seed=6)
    model.preprocessing = {"rescale": 1 / 255}
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    x = images_of([p for p, _ in sample_files()])
    y = np.eye(2, dtype=np.float32)[[0] * 4 + [1] * 4]
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert not [w for w in recwarn if "rescale" in str(w.message)]
    raw = x * 255
    with pytest.warns(UserWarning, match=r"reach 255.*rescale=0.00392157.*0\.\.1.*meaningless"):
        model.evaluate(raw, y, verbose=0)
    recwarn.clear()
    model.predict(raw, verbose=0)
    model.evaluate(raw, y, verbose=0)
    assert not [w for w in recwarn if "rescale" in str(w.message)]  # once per model
    other = spread_model(2, "softmax", seed=6)
    other.preprocessing = {"rescale": 1 / 255}
    it = ImageDataGenerator().flow_from_directory(samples_dir(), target_size=SIZE,
                                                  class_mode=None, shuffle=False)
    with pytest.warns(UserWarning, match="reach"):
        other.predict(it, verbose=0)


def test_no_unscaled_warning_where_the_model_standardises_each_image(recwarn):
    """A model whose first layer standardises each image (the shipped model's input_norm) gives
    the same outputs for 0..255 and 0..1 images (up to the epsilon): no warning about scale."""
    model = ResNet50(weights=None, classes=2, head=(8,), seed=6, input_norm=1e-5, preprocessing={"rescale": 1 / 255})
    x = images_of([p for p, _ in sample_files()])
    raw = model.predict(x * 255, verbose=0)
    scaled = model.predict(x, verbose=0)
    assert np.abs(raw - scaled).max() < 1e-3 and scaled[:, 0].std() > 1e-3  # scale changes nothing that matters
    assert not [w for w in recwarn if "rescale" in str(w.message)]
    plain = ResNet50(weights=None, classes=2, head=(8,), seed=6, preprocessing={"rescale": 1 / 255})
    with pytest.warns(UserWarning, match="reach 255"):  # without the standardisation the scale matters
        plain.predict(x * 255, verbose=0)


def test_predict_over_a_shuffling_iterator_warns(shuffled_tree, recwarn):
    model = spread_model(2, "softmax", seed=7)
    it = flow(shuffled_tree, "categorical")  # shuffle=False
    model.predict(it, verbose=0)
    assert not [w for w in recwarn if "shuffle" in str(w.message)]
    shuffled = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(shuffled_tree, target_size=SIZE, seed=1)
    with pytest.warns(UserWarning, match=r"shuffle=True.*\.classes"):
        model.predict(shuffled, verbose=0)
    recwarn.clear()
    model.predict(shuffled, verbose=0)
    assert not [w for w in recwarn if "shuffle" in str(w.message)]


def test_bad_files_skipped_and_reported(shuffled_tree, tmp_path, capsys):
    tree = tmp_path / "t"
    shutil.copytree(shuffled_tree, tree)
    (tree / "a" / "00_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tree / "b" / "zero.jpg").write_bytes(b"")
    model = spread_model(2, "softmax", seed=6)
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    with pytest.raises(covidx.ImageFileError, match="00_broken.png"):
        model.evaluate(flow(str(tree), "categorical"), verbose=0)
    # One image per batch, so that leaving files out changes no other image's computation.
    good = model.evaluate(flow(shuffled_tree, "categorical", one=True), verbose=0)
    it = flow(str(tree), "categorical", on_error="skip", one=True)
    with pytest.warns(UserWarning, match="skipped unreadable image"):
        got = model.evaluate(it, verbose=0)
    assert got == good
    assert sorted(os.path.basename(p) for p, _ in it.skipped) == ["00_broken.png", "zero.jpg"]
    assert "2 file(s) could not be read" in capsys.readouterr().out
    # predict keeps rows aligned with the files: NaN for the unreadable ones.
    it = flow(str(tree), "categorical", on_error="skip")
    with pytest.warns(UserWarning):
        p = model.predict(it, verbose=0)
    bad = [i for i, f in enumerate(it.filenames) if f.endswith(("00_broken.png", "zero.jpg"))]
    assert p.shape == (18, 2) and np.isnan(p[bad]).all() and not np.isnan(np.delete(p, bad, 0)).any()
    # (other batch compositions: equal up to float32 rounding of differently blocked GEMMs)
    np.testing.assert_allclose(np.delete(p, bad, 0), model.predict(flow(shuffled_tree, "categorical"), verbose=0),
                               atol=1e-5)


def test_predict_generator_equals_array_predict(shuffled_tree):
    model = spread_model(2, "softmax", seed=8)
    it = flow(shuffled_tree, None)
    # Same batches (5 images) as the iterator: bitwise the same outputs.
    np.testing.assert_array_equal(model.predict(it, verbose=0),
                                  model.predict(images_of(it.filepaths), batch_size=5, verbose=0))
    np.testing.assert_array_equal(model.predict_generator(it), model.predict(it, verbose=0))

    def gen():
        while True:
            for i in range(len(it)):
                yield it[i]

    assert model.predict(gen(), steps=2, verbose=0).shape == (10, 2)


def test_evaluate_needs_compile_and_rejects_y_with_generator(shuffled_tree):
    model = spread_model(2, "softmax", seed=9)
    with pytest.raises(ValueError, match="compile"):
        model.evaluate(flow(shuffled_tree, "categorical"), verbose=0)
    model.compile(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="y"):
        model.evaluate(flow(shuffled_tree, "categorical"), np.zeros(16), verbose=0)
    with pytest.raises(ValueError, match="unknown metric"):
        model.compile(loss="categorical_crossentropy", metrics=["f1_scorez"])


def test_summary_and_layers_match_keras(capsys):
    keras = pytest.importorskip("keras")
    ours = ResNet50(weights=None, include_top=False)
    # Keras numbers a layer name again once it is taken in the process ('input_layer_1'): its
    # names as a fresh process makes them, whatever other tests built before
    keras.backend.clear_session()
    theirs = keras.applications.ResNet50(weights=None, include_top=False)
    assert [layer.name for layer in ours.layers] == [layer.name for layer in theirs.layers]
    assert [layer.count_params() for layer in ours.layers] == [layer.count_params() for layer in theirs.layers]
    assert [type(layer).__name__ for layer in theirs.layers] == [layer.class_name for layer in ours.layers]
    assert len(ours.layers) == 175 and ours.layers[174].name == "conv5_block3_out"
    ours.summary()
    out = capsys.readouterr().out
    assert " Total params: 23,587,712 (89.98 MB)" in out
    assert " Trainable params: 23,534,592 (89.78 MB)" in out and " Non-trainable params: 53,120 (207.50 KB)" in out
    top = ResNet50(weights=None)
    assert top.summary() is None and "Total params: 25,636,712" in capsys.readouterr().out
    for layer in top.layers[:175]:
        layer.trainable = False
    top.summary()
    assert "Trainable params: 2,049,000" in capsys.readouterr().out


def test_keras_import_paths():
    import covidx as tf

    from covidx.keras.applications.resnet50 import ResNet50 as R
    from covidx.keras.models import load_model  # noqa: F401
    from covidx.keras.preprocessing.image import ImageDataGenerator as G

    assert R is ResNet50 and G is ImageDataGenerator
    assert tf.keras.applications.ResNet50 is ResNet50 and tf.keras.applications.resnet.ResNet50 is ResNet50
    assert tf.keras.preprocessing.image.ImageDataGenerator is ImageDataGenerator
    import importlib.util

    for name in ("tensorflow",):
        spec = importlib.util.find_spec(name)
        assert spec is None or "covidx" not in (spec.origin or "")


# --- nothing to score ------------------------------------------------------------------------------


def compiled(seed=0):
    model = ResNet50(weights=None, classes=2, head=(4,), seed=seed, class_names=["COV19", "Normal"])
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("verbose", [0, 1])
def test_folder_without_class_folders_says_so(tmp_path, verbose):
    """Images straight in the folder (no class sub-folders): Keras finds 0 images, and then fails
    with errors about None inputs; covidx says what flow_from_directory expects, never [0.0, 0.0]."""
    for p, _ in sample_files()[:2]:
        shutil.copy(p, tmp_path)
    it = flow(str(tmp_path), "categorical")
    assert it.samples == 0
    model = compiled()
    for call in (lambda: model.evaluate(it, verbose=verbose), lambda: model.predict(it, verbose=verbose)):
        with pytest.raises(ValueError, match="found no images in .*: flow_from_directory expects one sub-folder "
                                             "per class"):
            call()


def test_empty_generator_and_arrays_are_refused():
    model = compiled()

    def empty():
        return
        yield

    with pytest.raises(ValueError, match="generator must yield at least one batch"):  # Keras's words
        model.evaluate(empty(), verbose=0)
    with pytest.raises(ValueError, match="no images in x"):
        model.evaluate(np.zeros((0, 32, 32, 3), np.float32), np.zeros((0, 2), np.float32), verbose=0)


def test_all_unreadable_folder_has_nothing_to_score(tmp_path):
    for cls in ("COVID-19", "Normal"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    model = compiled()
    it = flow(str(tmp_path), "categorical", on_error="skip")
    with pytest.warns(UserWarning):
        with pytest.raises(ValueError, match="nothing to score: none of the 2 images could be read.*broken.png"):
            model.evaluate(it, verbose=0)
    with pytest.warns(UserWarning):
        p = model.predict(flow(str(tmp_path), "categorical", on_error="skip"), verbose=0)
    assert p.shape == (2, 2) and np.isnan(p).all()  # rows stay aligned with the files, as documented


@pytest.mark.parametrize("folders", [("Positive", "Negative"), ("1_covid", "0_normal"), ("covid-positive", "covid-negative")])
def test_common_class_folder_names_are_matched_by_name(tmp_path, capsys, folders):
    """Positive/Negative and 1_covid/0_normal were aligned by folder order, so Negative was
    scored as COV19 (accuracy 0.125 instead of 0.875)."""
    covid_dir, normal_dir = folders
    for name in folders:
        (tmp_path / name).mkdir()
    for p, label in sample_files():
        shutil.copy(p, tmp_path / (covid_dir if label == "COVID-19" else normal_dir) / os.path.basename(p))
    model = spread_model(2, "softmax", seed=3)
    model.class_names = ["COV19", "Normal"]
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    it = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(str(tmp_path), target_size=SIZE,
                                                                   class_mode="categorical", shuffle=False)
    loss, acc = model.evaluate(it, verbose=0)
    assert "matched the folder's classes to the model's by name" in capsys.readouterr().out
    p = model.predict(images_of(it.filepaths), verbose=0)
    truth = np.array([0 if f.startswith(covid_dir + os.sep) else 1 for f in it.filenames])
    assert sorted(set(truth)) == [0, 1]
    assert acc == pytest.approx(np.mean(np.argmax(p, 1) == truth))
    by_name = float(np.mean(-np.log(np.clip(p[np.arange(len(p)), truth], 1e-7, 1))))
    by_folder_order = float(np.mean(-np.log(np.clip(p[np.arange(len(p)), it.classes], 1e-7, 1))))
    assert loss == pytest.approx(by_name, rel=1e-5) and abs(by_name - by_folder_order) > 0.01


def test_alignment_by_index_refused_when_a_name_says_otherwise(tmp_path):
    """Only one folder name matches, at another position than the model's: by position that
    folder would be scored as the other class. Refused, with the classes= that says it."""
    for name in ("Negative", "Other"):
        (tmp_path / name).mkdir()
        shutil.copy(sample_files()[0][0], tmp_path / name / "a.png")
    model = spread_model(2, "softmax", seed=3)
    model.class_names = ["COV19", "Normal"]
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    it = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(str(tmp_path), target_size=SIZE,
                                                                   class_mode="categorical", shuffle=False)
    with pytest.raises(ValueError, match=r"'Negative' \(folder class 0\) would be scored as 'COV19'.*classes="):
        model.evaluate(it, verbose=0)


def test_arguments_that_cannot_be_right_are_named(tmp_path):
    """predict(dict) raised KeyError: 0; batch_size=True was taken as 1; target_size=(224,) was an
    IndexError, a huge size a bare MemoryError, (0, 0) an error blamed on every file."""
    model = compiled()
    x = images_of([p for p, _ in sample_files()[:2]])
    with pytest.raises(ValueError, match="x: a dict of inputs"):
        model.predict({"input_1": x}, verbose=0)
    with pytest.raises(ValueError, match="x: a dict of inputs"):
        model.evaluate({"input_1": x}, np.zeros(2), verbose=0)
    gen = ImageDataGenerator()
    with pytest.raises(ValueError, match="batch_size: expected a positive integer, got True"):
        gen.flow_from_directory(samples_dir(), target_size=SIZE, batch_size=True)
    for bad, words in [((224,), r"expected \(height, width\)"), ((0, 0), "two positive integers"),
                       ((224, -1), "two positive integers"), ((224, 2.5), "two positive integers"),
                       ((100000, 100000), "per-image memory budget"), ("224", r"expected \(height, width\)"),
                       (224, r"expected \(height, width\)")]:
        with pytest.raises(ValueError, match="target_size: .*" + words):
            gen.flow_from_directory(samples_dir(), target_size=bad)
        with pytest.raises(ValueError, match="target_size: .*" + words):
            load_img(sample_files()[0][0], target_size=bad)
    assert load_img(sample_files()[0][0], target_size=(32.0, np.int64(48))).size == (48, 32)


def test_true_labels_follow_the_model_classes():
    """covidx.true_labels: each image's class as an index into the model's classes, from the folder
    it is in (hand-computed from the file names), whatever order the model lists its classes in."""
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(samples_dir(), target_size=(32, 32), shuffle=False)
    covid = np.array([f.startswith("COVID-19") for f in it.filenames])
    assert covid.sum() == 4 and (~covid).sum() == 4
    for names in (["COV19", "Normal"], ["Normal", "COV19"]):
        model = ResNet50(weights=None, classes=2, head=(8,), class_names=names, seed=0)
        labels = covidx.true_labels(model, it)
        np.testing.assert_array_equal(labels, np.where(covid, names.index("COV19"), names.index("Normal")))
    with pytest.raises(TypeError, match="flow_from_directory iterator"):
        covidx.true_labels(model, np.zeros((2, 32, 32, 3)))
