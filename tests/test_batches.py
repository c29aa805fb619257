"""covidx's iterators offer their batches publicly (batch_indices, load_batch), the way evaluate,
predict, fit and fit_unfamiliar read them: checked against the files read one by one, the
iterator's own Keras-style indexing, and an unreadable file's mask."""
import os
import shutil
import warnings

import numpy as np
import pytest

from covidx.data import samples_dir
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
