"""The one batch pipeline (covidx.batches) and the iterators' public batch methods it reads
(batch_indices, load_batch): the iterators' batches checked against the files read one by one,
their own Keras-style indexing and an unreadable file's mask; the pipeline's batches against
NumPy slices and permutations, the Sequence's and generator's own objects and the iterator's
Keras indexing; fit's feature cache against the order the iterator yields; and every entry point
that walks data in batches (evaluate, predict, the features methods, fit, fit_unfamiliar,
calibrate_int8) seen reading the pipeline."""
import ast
import os
import random
import shutil
import warnings

import numpy as np
import pytest

import covidx
from covidx import batches, training
from covidx.applications.resnet50 import ResNet50
from covidx.data import SAMPLES_DIR, samples_dir
from covidx.preprocessing.image import ImageDataGenerator, img_to_array, load_img
from covidx.keras.utils import image_dataset_from_directory

SIZE = (40, 40)


def folder(tmp_path, broken=False):
    for name in sorted(os.listdir(samples_dir())):
        src = os.path.join(samples_dir(), name)
        if os.path.isdir(src):
            shutil.copytree(src, tmp_path / name)
    if broken:
        (tmp_path / "Normal" / "0broken.png").write_bytes(b"not a png")
    return tmp_path


def test_directory_iterator_batches_are_its_files_in_its_order(tmp_path):
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(str(folder(tmp_path)), target_size=SIZE,
                                                                 batch_size=3, shuffle=False)
    seen = []
    for i in range(len(it)):
        idx = it.batch_indices(i)
        x, y, w, ok = it.load_batch(idx)
        assert w is None and ok.all() and len(x) == len(idx) == len(y)
        for row, label, j in zip(x, y, idx):
            want = img_to_array(load_img(it.filepaths[j], target_size=SIZE)) * np.float32(1 / 255)
            np.testing.assert_allclose(row, want, rtol=1e-6)
            assert label.argmax() == it.classes[j]
        seen += list(idx)
    assert seen == list(range(it.n))
    xs, ys = it[1]  # Keras's indexing: the same batch, from the same public pieces
    x, y, _, _ = it.load_batch(it.batch_indices(1))
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)


def test_an_unreadable_file_is_masked_not_dropped(tmp_path):
    it = ImageDataGenerator().flow_from_directory(str(folder(tmp_path, broken=True)), target_size=SIZE,
                                                  batch_size=32, shuffle=False, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y, w, ok = it.load_batch(it.batch_indices(0))
    bad = [i for i, f in enumerate(it.filepaths) if f.endswith("0broken.png")]
    assert len(x) == it.n and list(np.flatnonzero(~ok)) == bad
    assert not x[bad[0]].any() and it.skipped and it.skipped[0][0].endswith("0broken.png")


def test_flow_batches_keep_labels_and_weights():
    rng = np.random.default_rng(0)
    x = rng.random((7, 32, 32, 3)).astype(np.float32)
    y, sw = np.arange(7), rng.random(7)
    it = ImageDataGenerator().flow(x, y, sample_weight=sw, batch_size=4, shuffle=False)
    bx, by, bw, ok = it.load_batch(it.batch_indices(1))
    assert ok is None
    np.testing.assert_array_equal(bx, x[4:])
    np.testing.assert_array_equal(by, y[4:])
    np.testing.assert_array_equal(bw, sw[4:])
    assert it.load_batch(it.batch_indices(0))[0].shape == (4, 32, 32, 3)
    bare = ImageDataGenerator().flow(x, batch_size=4, shuffle=False)
    bx, by, bw, ok = bare.load_batch(bare.batch_indices(0))
    assert by is None and bw is None and ok is None
    np.testing.assert_array_equal(bx, x[:4])


def test_image_dataset_batches(tmp_path):
    ds = image_dataset_from_directory(str(folder(tmp_path)), image_size=SIZE, batch_size=5, shuffle=False)
    x, y, w, ok = ds.load_batch(ds.batch_indices(0))
    assert ok.all() and w is None and len(x) == 5
    images, labels = ds[0]
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)
    with pytest.raises(IndexError):
        ds.batch_indices(len(ds))


# --- the pipeline ----------------------------------------------------------------------------------

def arrays(n=10, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, size, size, 3)).astype(np.float32), rng.integers(0, 2, n),
            rng.random(n).astype(np.float32))


def test_array_batches_are_numpy_slices():
    x, y, w = arrays()
    for batch_size, steps, size, count in [(None, None, 32, 1), (4, None, 4, 3), (3, 2, 3, 2), (4, 9, 4, 3),
                                           (np.int64(10), None, 10, 1)]:
        source, stream, target = batches.one_pass(x, y, w, batch_size, steps)
        got = list(stream)
        assert source.kind == "array" and target == len(got) == count
        for i, b in enumerate(got):
            part = slice(i * size, (i + 1) * size)
            np.testing.assert_array_equal(b.x, x[part])
            np.testing.assert_array_equal(b.y, y[part])
            np.testing.assert_array_equal(b.w, w[part])
            np.testing.assert_array_equal(b.indices, np.arange(10)[part])
            assert b.ok is None and b.loaded is None
        assert np.shares_memory(got[0].x, x)  # unshuffled: views, a batch at a time
    for bad in (0, -1, True, 2.5, "4"):
        with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
            batches.adapter(x, batch_size=bad)
    with pytest.raises(ValueError, match="x and y: 10 samples but 9 labels"):
        batches.adapter(x, y[:9])
    with pytest.raises(ValueError, match="x and sample_weight: 10 samples but 3 weights"):
        batches.adapter(x, y, w[:3])


def test_shuffled_array_batches_follow_numpys_permutation():
    """fit's shuffle: each pass permutes the samples with NumPy's global random state, as Keras."""
    x, y, _ = arrays()
    source = batches.adapter(x, y, batch_size=4)
    for seed in (5, 6):
        np.random.seed(seed)
        got = list(source.epoch(shuffle=True))
        perm = np.random.RandomState(seed).permutation(10)
        assert [len(b.x) for b in got] == [4, 4, 2]
        np.testing.assert_array_equal(np.concatenate([b.indices for b in got]), perm)
        np.testing.assert_array_equal(np.concatenate([b.x for b in got]), x[perm])
        np.testing.assert_array_equal(np.concatenate([b.y for b in got]), y[perm])


def test_sequence_and_generator_batches_pass_through():
    x, y, w = arrays()

    class Sequence:  # a Keras Sequence: len, [i] and on_epoch_end
        def __init__(self):
            self.items = [(x[:3], y[:3]), (x[3:5],), x[5:8], [x[8:], y[8:], w[8:]]]
            self.ended = 0

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

        def on_epoch_end(self):
            self.ended += 1

    seq = Sequence()
    source, stream, target = batches.one_pass(seq)
    got = list(stream)
    assert source.kind == "sequence" and source.iterator is seq and target == 4 and len(got) == 4
    assert got[0].x is seq.items[0][0] and got[0].y is seq.items[0][1] and got[0].w is None
    assert got[1].x is seq.items[1][0] and got[1].y is None
    assert got[2].x is seq.items[2] and got[2].y is None
    assert (got[3].x, got[3].y, got[3].w) == tuple(seq.items[3])  # a list is read as a tuple, as in Keras 3
    assert all(b.ok is None and b.indices is None for b in got)
    source.on_epoch_end()
    assert seq.ended == 1
    with pytest.warns(UserWarning, match="ran out of data"):
        source, stream, target = batches.one_pass(seq, steps=6)
        assert len(list(stream)) == 4 and target == 6
    random.seed(3)
    got = list(batches.adapter(seq).epoch(shuffle=True))  # fit's shuffle: the order of the batches
    order = list(range(4))
    random.Random(3).shuffle(order)
    firsts = [item if isinstance(item, np.ndarray) else item[0] for item in seq.items]
    assert [next(i for i, first in enumerate(firsts) if b.x is first) for b in got] == order

    def generator():
        for i in range(5):
            yield x[i:i + 2], y[i:i + 2]

    gen = generator()
    source = batches.adapter(gen)
    assert source.kind == "generator" and source.iterator is None and source.num_batches is None
    first, rest = list(source.epoch(steps=2)), list(source.epoch())  # the next pass goes on from there
    assert len(first) == 2 and len(rest) == 3
    for i, b in enumerate(first + rest):
        np.testing.assert_array_equal(b.x, x[i:i + 2])
        np.testing.assert_array_equal(b.y, y[i:i + 2])
    with pytest.raises(ValueError, match="`y` argument is not supported when using a Python generator"):
        batches.adapter(generator(), y)
    with pytest.raises(ValueError, match="`y` argument is not supported when using a data generator"):
        batches.adapter(seq, y)


def test_iterator_batches_are_its_keras_batches():
    def make():
        return ImageDataGenerator(rescale=1 / 255).flow_from_directory(SAMPLES_DIR, target_size=SIZE, batch_size=3,
                                                                       shuffle=True, seed=4)

    it, ref = make(), make()
    source, stream, target = batches.one_pass(it)
    got = list(stream)
    assert source.kind == "iterator" and source.iterator is it and target == len(got) == len(ref) == 3
    for i, b in enumerate(got):
        rx, ry = ref[i]  # Keras's indexing: its seeding and shuffling
        np.testing.assert_array_equal(b.x, rx)
        np.testing.assert_array_equal(b.y, ry)
        assert b.ok.all() and b.w is None
    np.testing.assert_array_equal(np.concatenate([b.indices for b in got]), ref.index_array)


def frozen_model(seed=5):
    model = ResNet50(weights=None, classes=2, head=(4,), seed=seed)
    for layer in model.layers[:175]:
        layer.trainable = False
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["acc"])
    return model


def record_features(monkeypatch):
    seen = []
    original = training.Trainer.image_features

    def recording(self, x):
        seen.append(np.array(x))
        return original(self, x)

    monkeypatch.setattr(training.Trainer, "image_features", recording)
    return seen


def test_fit_feature_cache_sees_each_image_once_in_the_iterators_order(monkeypatch):
    model = frozen_model()

    def make():
        return ImageDataGenerator(rescale=1 / 255).flow_from_directory(SAMPLES_DIR, target_size=(32, 32),
                                                                       batch_size=3, shuffle=True, seed=11)

    it, ref = make(), make()
    seen = record_features(monkeypatch)
    model.fit(it, epochs=3, verbose=0, shuffle=False)
    want = np.concatenate([ref[i][0] for i in range(len(ref))])  # the images in the order the iterator yields
    assert [len(x) for x in seen] == [3, 3, 2]  # the first epoch only: later ones read the cache
    np.testing.assert_array_equal(np.concatenate(seen), want)

    # fit's shuffle: the iterator's batches in the order of Python's random.shuffle, each read once
    it, ref = make(), make()
    seen.clear()
    random.seed(8)
    model.fit(it, epochs=2, verbose=0, shuffle=True)
    order = list(range(len(ref)))
    random.Random(8).shuffle(order)
    want = np.concatenate([ref[i][0] for i in range(len(ref))])
    sizes = [3, 3, 2]
    starts = np.cumsum([0] + sizes)
    np.testing.assert_array_equal(np.concatenate(seen), np.concatenate([want[starts[b]:starts[b] + sizes[b]]
                                                                        for b in order]))

    # arrays: the samples in NumPy's permutation, each once
    x, _, _ = arrays(7)
    y = np.eye(2, dtype=np.float32)[np.arange(7) % 2]
    seen.clear()
    np.random.seed(2)
    model.fit(x, y, batch_size=3, epochs=2, verbose=0)
    assert [len(v) for v in seen] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(seen), x[np.random.RandomState(2).permutation(7)])


def test_every_entry_point_reads_the_one_pipeline(monkeypatch, tmp_path):
    kinds = []
    original = batches.Source.epoch

    def epoch(self, *args, **kwargs):
        kinds.append(self.kind)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(batches.Source, "epoch", epoch)
    model = frozen_model()
    x, labels, _ = arrays(12, size=64, seed=3)
    y = np.eye(2, dtype=np.float32)[labels]
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(SAMPLES_DIR, target_size=(64, 64), batch_size=4,
                                                                 shuffle=False)

    class Sequence:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[i * 6:(i + 1) * 6], y[i * 6:(i + 1) * 6]

    calls = [("predict(array)", lambda: model.predict(x, verbose=0), ["array"]),
             ("predict(array, steps)", lambda: model.predict(x, batch_size=5, steps=2, verbose=0), ["array"]),
             ("predict(iterator)", lambda: model.predict(it, verbose=0), ["iterator"]),
             ("predict(generator)", lambda: model.predict(iter([x[:2], x[2:4]]), verbose=0), ["generator"]),
             ("evaluate(array)", lambda: model.evaluate(x, y, verbose=0), ["array"]),
             ("evaluate(Sequence)", lambda: model.evaluate(Sequence(), verbose=0), ["sequence"]),
             ("test_on_batch", lambda: model.test_on_batch(x[:2], y[:2]), ["array"]),
             ("features", lambda: model.features(x), ["array"]),
             ("descriptors", lambda: model.descriptors(x, batch_size=4), ["array"]),
             ("feature_map", lambda: model.feature_map(x), ["array"]),
             ("fit(array)", lambda: model.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x, y)),
              ["array", "array", "array", "array"]),
             ("fit(iterator)", lambda: model.fit(it, epochs=1, verbose=0), ["iterator"]),
             ("fit(Sequence)", lambda: model.fit(Sequence(), epochs=1, verbose=0), ["sequence"]),
             ("fit_unfamiliar(arrays)", lambda: covidx.fit_unfamiliar(model, (x, labels), holdout=(x, labels)),
              ["array", "array"]),
             ("fit_unfamiliar(iterator)", lambda: covidx.fit_unfamiliar(model, it, holdout=(x, labels)),
              ["iterator", "array"]),
             ("calibrate_int8(array)", lambda: model.calibrate_int8(x, batch_size=6), ["array"]),
             ("calibrate_int8(generator)", lambda: model.calibrate_int8(iter([x[:3]]), steps=1), ["generator"])]
    for name, call, want in calls:
        kinds.clear()
        call()
        assert kinds == want, name


def test_only_the_pipeline_reads_batches():
    """The iterators' batch methods are called, and batches are prefetched, in covidx.batches only
    (the iterators themselves and the datasets built on them aside)."""
    root = os.path.dirname(os.path.abspath(covidx.__file__))
    readers = []
    for folder_, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder_, f)
            rel = os.path.relpath(path, root)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                called = node.func.attr if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    else node.id if isinstance(node, ast.Name) else None
                if called in ("load_batch", "batch_indices", "Prefetcher", "Thread", "Queue"):
                    readers.append((rel, called))
    assert readers and {rel for rel, _ in readers} <= {"batches.py", os.path.join("preprocessing", "iterators.py")}
