"""Differential tests of covidx's image pipeline against real Keras 3 (test-only dependency, run on
its torch backend): load_img, ImageDataGenerator, flow_from_directory and flow must give identical
arrays, labels, file lists and shuffles."""
import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

keras = pytest.importorskip("keras")
pytest.importorskip("scipy")
from keras.src.legacy.preprocessing import image as kimage  # noqa: E402

from covidx.preprocessing import image as cimage  # noqa: E402

INTERPOLATIONS = ["nearest", "bilinear", "bicubic", "hamming", "box", "lanczos"]


def _noise(rng, h, w, c):
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A class tree with every kind of file Keras meets: several formats and modes, nested
    folders, upper/lower case names, non-image files, an empty class."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    layout = {
        "COVID": ["b.png", "a.jpg", "sub/z.png", "sub/deeper/y.bmp", "C.PNG", "notes.txt", "anim.gif"],
        "Normal": ["n1.png", "n2.tif", "n3.jpeg", "n0_rgba.png", "n4_pal.png", "n5_16.png", "n6_l.png"],
        "aux": ["x.ppm"],
        "empty": [],
    }
    for cls, files in layout.items():
        (root / cls).mkdir()
        for f in files:
            p = root / cls / f
            p.parent.mkdir(parents=True, exist_ok=True)
            h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            if f.endswith((".txt", ".gif")):
                p.write_text("not an image")
            elif "rgba" in f:
                Image.fromarray(_noise(rng, h, w, 4), "RGBA").save(p)
            elif "pal" in f:
                img = Image.fromarray(_noise(rng, h, w, 3), "RGB").quantize(16)
                img.info["transparency"] = 3
                img.save(p, transparency=3)
            elif "_16" in f:
                a = rng.integers(0, 4096, size=(h, w)).astype(np.uint16)
                a[0, 0] = 200  # some pixels below 256 too
                Image.fromarray(a).save(p)
            elif "_l" in f:
                Image.fromarray(_noise(rng, h, w, 1)[:, :, 0], "L").save(p)
            else:
                Image.fromarray(_noise(rng, h, w, 3), "RGB").save(p)
    return str(root)


def _both(directory, gen_kwargs=None, **kwargs):
    gen_kwargs = gen_kwargs or {}
    k = kimage.ImageDataGenerator(**gen_kwargs).flow_from_directory(directory, **kwargs)
    c = cimage.ImageDataGenerator(**gen_kwargs).flow_from_directory(directory, **kwargs)
    return k, c


def _assert_batches_equal(kb, cb):
    if isinstance(kb, tuple):
        assert isinstance(cb, tuple) and len(kb) == len(cb)
        for a, b in zip(kb, cb):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert np.asarray(a).dtype == np.asarray(b).dtype
    else:
        assert not isinstance(cb, tuple)
        np.testing.assert_array_equal(kb, cb)
        assert kb.dtype == cb.dtype


@pytest.mark.parametrize("class_mode", ["categorical", "binary", "sparse", "input", None])
@pytest.mark.parametrize("color_mode", ["rgb", "rgba", "grayscale"])
def test_directory_iterator_matches_keras(tree, class_mode, color_mode, capsys):
    k, c = _both(tree, {"rescale": 1.0 / 255}, target_size=(24, 32), color_mode=color_mode, class_mode=class_mode,
                 batch_size=4, shuffle=False)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == out[1] == "Found %d images belonging to 4 classes." % k.samples
    assert c.class_indices == k.class_indices
    assert c.filenames == k.filenames
    assert c.filepaths == k.filepaths
    np.testing.assert_array_equal(c.classes, k.classes)
    assert c.classes.dtype == k.classes.dtype
    assert (c.samples, c.n, len(c), c.num_classes, c.image_shape) == (k.samples, k.n, len(k), k.num_classes,
                                                                        k.image_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow may warn about the palette image with transparency
        batches = [(k[i], c[i]) for i in range(len(k))]
    for kb, cb in batches:
        _assert_batches_equal(kb, cb)


def test_uppercase_class_mode_is_binary(tree):
    k = kimage.ImageDataGenerator().flow_from_directory(tree, target_size=(8, 8), class_mode="binary", shuffle=False)
    c = cimage.ImageDataGenerator().flow_from_directory(tree, target_size=(8, 8), class_mode="Binary", shuffle=False)
    assert c.class_mode == "binary"
    with pytest.raises(ValueError, match="Invalid class_mode"):
        kimage.ImageDataGenerator().flow_from_directory(tree, class_mode="Binary")
    _assert_batches_equal(k[0], c[0])


@pytest.mark.parametrize("seed", [None, 7])
def test_shuffled_order_matches_keras(tree, seed):
    """Same seed (or same global NumPy state) -> same permutations through indexing, epochs and next()."""
    kw = dict(target_size=(16, 16), class_mode="sparse", batch_size=3, shuffle=True, seed=seed)
    np.random.seed(123)
    k = kimage.ImageDataGenerator().flow_from_directory(tree, **kw)
    k_seq = [k[i][1] for i in range(len(k))]
    k.on_epoch_end()
    k_seq += [k[i][1] for i in range(len(k))]
    k_next = [next(k)[1] for _ in range(2 * len(k) + 1)]
    np.random.seed(123)
    c = cimage.ImageDataGenerator().flow_from_directory(tree, **kw)
    c_seq = [c[i][1] for i in range(len(c))]
    c.on_epoch_end()
    c_seq += [c[i][1] for i in range(len(c))]
    c_next = [next(c)[1] for _ in range(2 * len(c) + 1)]
    for a, b in zip(k_seq + k_next, c_seq + c_next):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("subset", ["training", "validation"])
def test_validation_split_matches_keras(tree, subset):
    k, c = _both(tree, {"validation_split": 0.3}, target_size=(8, 8), subset=subset, shuffle=False)
    assert c.filenames == k.filenames
    np.testing.assert_array_equal(c.classes, k.classes)


def test_named_classes_and_keep_aspect_ratio_match_keras(tree):
    k, c = _both(tree, None, target_size=(20, 40), classes=["Normal", "COVID", "missing"], keep_aspect_ratio=True,
                 interpolation="bilinear", shuffle=False, batch_size=50)
    assert c.class_indices == k.class_indices
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _assert_batches_equal(k[0], c[0])


def test_augmented_batches_match_keras(tree):
    aug = dict(rotation_range=30, width_shift_range=0.2, height_shift_range=3, shear_range=10, zoom_range=0.2,
               channel_shift_range=20.0, brightness_range=(0.5, 1.5), horizontal_flip=True, vertical_flip=True,
               fill_mode="reflect", rescale=1.0 / 255, samplewise_center=True, samplewise_std_normalization=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k, c = _both(tree, aug, target_size=(24, 24), batch_size=5, seed=3, class_mode="categorical")
        for i in range(len(k)):
            _assert_batches_equal(k[i], c[i])


@pytest.mark.parametrize("fill_mode", ["constant", "nearest", "reflect", "wrap"])
def test_apply_transform_matches_keras(fill_mode):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, size=(17, 23, 3)).astype(np.float32)
    params = {"theta": 17.0, "tx": 2.5, "ty": -4.0, "shear": 8.0, "zx": 0.9, "zy": 1.2, "flip_horizontal": True,
              "flip_vertical": False, "channel_shift_intensity": 12.0, "brightness": 1.3}
    kg = kimage.ImageDataGenerator(fill_mode=fill_mode, cval=9.0)
    cg = cimage.ImageDataGenerator(fill_mode=fill_mode, cval=9.0)
    np.testing.assert_array_equal(kg.apply_transform(x.copy(), params), cg.apply_transform(x.copy(), params))
    for key in params:  # each transform alone, too
        one = {key: params[key]}
        np.testing.assert_array_equal(kg.apply_transform(x.copy(), one), cg.apply_transform(x.copy(), one))


def test_random_transform_parameters_match_keras():
    kw = dict(rotation_range=10, width_shift_range=[1, 2, 3], height_shift_range=0.1, shear_range=5,
              zoom_range=[0.8, 1.1], channel_shift_range=3.0, brightness_range=[0.9, 1.1], horizontal_flip=True)
    for seed in range(5):
        kp = kimage.ImageDataGenerator(**kw).get_random_transform((30, 40, 3), seed=seed)
        cp = cimage.ImageDataGenerator(**kw).get_random_transform((30, 40, 3), seed=seed)
        assert kp.keys() == cp.keys()
        for key in kp:
            assert kp[key] == cp[key], key


def test_fit_and_featurewise_standardize_match_keras():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 255, size=(6, 5, 4, 3)).astype(np.float32)
    for kw in [dict(featurewise_center=True, featurewise_std_normalization=True, rescale=0.5),
               dict(zca_whitening=True)]:
        with pytest.warns(UserWarning) if "zca_whitening" in kw else _no_warning():
            kg, cg = kimage.ImageDataGenerator(**kw), cimage.ImageDataGenerator(**kw)
        kg.fit(x)
        cg.fit(x)
        for attr in ("mean", "std", "zca_whitening_matrix"):
            a, b = getattr(kg, attr), getattr(cg, attr)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(cg.standardize(x[0].copy()), kg.standardize(x[0].copy()), rtol=1e-5, atol=1e-5)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_flow_matches_keras():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 255, size=(11, 8, 9, 3)).astype(np.float32)
    y = np.arange(11) % 3
    w = rng.uniform(size=11)
    kw = dict(rotation_range=5, horizontal_flip=True, validation_split=0.4)
    for flow_kw in [dict(batch_size=4, seed=5), dict(batch_size=3, shuffle=False, sample_weight=w),
                    dict(batch_size=2, seed=1, subset="training", ignore_class_split=True)]:
        np.random.seed(11)  # unseeded flows draw from the global state: start both from the same
        k = kimage.ImageDataGenerator(**kw).flow(x, y, **flow_kw)
        kb = [k[i] for i in range(len(k))]
        np.random.seed(11)
        c = cimage.ImageDataGenerator(**kw).flow(x, y, **flow_kw)
        cb = [c[i] for i in range(len(c))]
        assert len(kb) == len(cb)
        for a, b in zip(kb, cb):
            _assert_batches_equal(a, b)
    k = kimage.ImageDataGenerator().flow(x, batch_size=5, shuffle=False)
    c = cimage.ImageDataGenerator().flow(x, batch_size=5, shuffle=False)
    _assert_batches_equal(k[2], c[2])


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("kind", ["rgb", "grey", "rgba", "palette", "16bit", "cmyk_jpeg", "bilevel"])
def test_load_img_matches_keras(tmp_path, interpolation, kind):
    rng = np.random.default_rng(4)
    p = tmp_path / ("img.jpg" if "jpeg" in kind else "img.png")
    if kind == "rgb":
        Image.fromarray(_noise(rng, 37, 51, 3), "RGB").save(p)
    elif kind == "grey":
        Image.fromarray(_noise(rng, 37, 51, 1)[:, :, 0], "L").save(p)
    elif kind == "rgba":
        Image.fromarray(_noise(rng, 37, 51, 4), "RGBA").save(p)
    elif kind == "palette":
        Image.fromarray(_noise(rng, 37, 51, 3), "RGB").quantize(20).save(p, transparency=5)
    elif kind == "16bit":
        Image.fromarray(rng.integers(0, 65535, size=(37, 51)).astype(np.uint16)).save(p)
    elif kind == "cmyk_jpeg":
        Image.fromarray(_noise(rng, 37, 51, 4), "CMYK").save(p, quality=95)
    else:
        Image.fromarray(_noise(rng, 37, 51, 1)[:, :, 0] > 128).save(p)
    for color_mode in ("rgb", "rgba", "grayscale"):
        for target, keep in [(None, False), ((20, 30), False), ((64, 40), True), ((37, 51), False)]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = keras.utils.load_img(str(p), color_mode=color_mode, target_size=target,
                                         interpolation=interpolation, keep_aspect_ratio=keep)
                b = cimage.load_img(str(p), color_mode=color_mode, target_size=target, interpolation=interpolation,
                                    keep_aspect_ratio=keep)
            assert a.mode == b.mode and a.size == b.size
            np.testing.assert_array_equal(keras.utils.img_to_array(a), cimage.img_to_array(b))


def test_array_to_img_matches_keras():
    rng = np.random.default_rng(5)
    for shape in [(6, 7, 3), (6, 7, 4), (6, 7, 1)]:
        x = rng.uniform(-3, 900, size=shape).astype(np.float32)
        for scale in (True, False):
            a, b = keras.utils.array_to_img(x, scale=scale), cimage.array_to_img(x, scale=scale)
            assert a.mode == b.mode
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- flow_from_dataframe ----------------------------------------------------------------------


DATAFRAME_CASES = [(mode, extra) for mode in ["categorical", "binary", "sparse", "raw", None, "input"]
                   for extra in [{}, {"weight_col": "w"}, {"classes": ["Normal", "COVID"]}, {"subset": "training"}]
                   if not ("classes" in extra and mode in ("raw", None, "input"))]


@pytest.mark.parametrize("class_mode,extra", DATAFRAME_CASES)
def test_flow_from_dataframe_matches_keras(tree, class_mode, extra):
    """File names, missing and non-image rows filtered out (with Keras's warning), classes,
    labels, sample weights, order and seeded shuffles: the same batches as Keras."""
    pd = pytest.importorskip("pandas")
    rows = []
    for cls in ("COVID", "Normal"):
        for f in sorted(os.listdir(os.path.join(tree, cls))):
            rows.append((os.path.join(cls, f), cls))
    rows += [("COVID/missing.png", "COVID"), ("Normal/sub", "Normal")]
    df = pd.DataFrame(rows, columns=["filename", "class"])
    df["w"] = np.arange(len(df), dtype=np.float64) / 4
    if class_mode == "raw":
        df["class"] = np.arange(len(df), dtype=np.float64)
    gen_kwargs = {"rescale": 1 / 255, "validation_split": 0.25} if "subset" in extra else {"rescale": 1 / 255}
    kwargs = dict(directory=tree, class_mode=class_mode, target_size=(24, 24), batch_size=4, seed=5, **extra)
    iterators = []
    for module in (kimage, cimage):
        np.random.seed(3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            iterators.append(module.ImageDataGenerator(**gen_kwargs).flow_from_dataframe(df, **kwargs))
        assert any("invalid image filename" in str(w.message) for w in caught)
    k, c = iterators
    assert k.filenames == c.filenames and k.n == c.n
    if class_mode in ("categorical", "binary", "sparse"):
        assert k.class_indices == c.class_indices and list(k.classes) == list(c.classes)
    for i in range(len(k)):
        _assert_batches_equal(k[i], c[i])
    _assert_batches_equal(next(k), next(c))
