"""Broken, hostile and unusual image files: each gives a correct image or a clear error naming the
file, and a folder evaluation keeps the results of every good file."""
import io
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

import covidx
from covidx.applications.resnet50 import ResNet50
from covidx.data import sample_files
from covidx.preprocessing.image import ImageDataGenerator, ImageFileError, img_to_array, load_img


def xray(path=None):
    return Image.open(path or sample_files()[0][0]).convert("L")


def write_cases(d):
    """{file name: expected outcome}; outcome 'ok' or an error type."""
    d.mkdir(parents=True, exist_ok=True)
    good = xray()
    png = io.BytesIO()
    good.save(png, "PNG")
    data = png.getvalue()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    (d / "zero.png").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    good.convert("RGB").save(d / "jpeg_named.png", "JPEG")
    Image.fromarray((np.asarray(good, np.uint16) * 257)).save(d / "sixteen.png")
    good.convert("RGB").convert("CMYK").save(d / "cmyk.jpg", "JPEG")
    good.convert("RGB").quantize(64).save(d / "palette_t.png", transparency=0)
    good.convert("RGBA").save(d / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    good.convert("RGB").save(d / "exif_rotated.jpg", "JPEG", exif=exif.tobytes())
    return {"truncated.png": ImageFileError, "zero.png": ImageFileError, "text.jpg": ImageFileError,
            "jpeg_named.png": "ok", "sixteen.png": "ok", "cmyk.jpg": "ok", "palette_t.png": "ok", "rgba.png": "ok",
            "exif_rotated.jpg": "ok"}


def test_each_file_reads_or_names_itself(tmp_path):
    cases = write_cases(tmp_path)
    for name, outcome in cases.items():
        path = str(tmp_path / name)
        if outcome == "ok":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = load_img(path, target_size=(64, 64))
            assert img.mode == "RGB" and img.size == (64, 64)
        else:
            with pytest.raises(outcome) as e:
                load_img(path)
            assert path in str(e.value) and e.value.path == path


def test_sixteen_bit_clipped_by_default_scaled_with_xray(tmp_path):
    a = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    Image.fromarray(a).save(tmp_path / "x16.png")
    keras_like = img_to_array(load_img(str(tmp_path / "x16.png")))
    # Keras parity: Pillow's 16->8 bit conversion saturates (everything >= 256 becomes 255).
    assert np.all(keras_like[a >= 256] == 255)
    scaled = img_to_array(load_img(str(tmp_path / "x16.png"), xray=True))[:, :, 0]
    want = np.floor((a.astype(np.float64) - a.min()) * 255.0 / (a.max() - a.min()) + 0.5)
    np.testing.assert_array_equal(scaled, want)


def test_exif_orientation_only_with_xray(tmp_path):
    write_cases(tmp_path)
    plain = load_img(str(tmp_path / "exif_rotated.jpg"))
    upright = load_img(str(tmp_path / "exif_rotated.jpg"), xray=True)
    assert plain.size == xray().size  # Keras ignores EXIF orientation
    assert upright.size == xray().size[::-1]


def test_decompression_bomb_refused(tmp_path):
    # A tiny file that declares 40000 x 40000 pixels (Pillow's bomb limit is about 179M pixels).
    img = Image.new("1", (40000, 40000))
    img.save(tmp_path / "bomb.png", optimize=True)
    assert os.path.getsize(tmp_path / "bomb.png") < 1_000_000
    with pytest.raises(ImageFileError, match="decompression bomb"):
        load_img(str(tmp_path / "bomb.png"))


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    p = tmp_path / "locked.png"
    xray().save(p)
    real_open = open

    def deny(path, *a, **k):  # the suite may run as root, where chmod 000 does not deny reads
        if os.fspath(path) == str(p):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(PermissionError, match="locked.png"):
        load_img(str(p))


def test_folder_with_bad_files_keeps_every_good_result(tmp_path):
    cases = write_cases(tmp_path / "data" / "COVID-19")
    model = ResNet50(weights=None, classes=2, head=(8,), seed=0, class_names=["COV19", "Normal"])
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(str(tmp_path / "data"), target_size=(64, 64),
                                                                 batch_size=4, shuffle=False, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = model.predict(it, verbose=0)
    bad = sorted(n for n, o in cases.items() if o != "ok")
    assert sorted(os.path.basename(f) for f, _ in it.skipped) == bad
    assert all(reason for _, reason in it.skipped)
    rows = {os.path.basename(f): r for f, r in zip(it.filenames, p)}
    for name, outcome in cases.items():
        assert np.isnan(rows[name]).all() == (outcome != "ok"), name


def test_symlink_loop_walked_once(tmp_path):
    d = tmp_path / "root" / "a"
    d.mkdir(parents=True)
    xray().save(d / "x.png")
    os.symlink(str(d), str(d / "loop"))
    for follow in (False, True):
        it = ImageDataGenerator().flow_from_directory(str(tmp_path / "root"), follow_links=follow)
        assert it.filenames == ["a/x.png"]


def test_many_files_listed_quickly(tmp_path):
    d = tmp_path / "big" / "cls"
    d.mkdir(parents=True)
    for i in range(20000):
        (d / ("%05d.png" % i)).touch()
    t = time.perf_counter()
    it = ImageDataGenerator().flow_from_directory(str(tmp_path / "big"), batch_size=64)
    assert it.samples == 20000 and it.filenames[0] == "cls/00000.png" and len(it) == 313
    assert time.perf_counter() - t < 10  # listing only; no file is opened


def test_ctrl_c_during_evaluate_stops_quickly_and_model_still_works(tmp_path):
    d = tmp_path / "many" / "COVID-19"
    d.mkdir(parents=True)
    img = xray().resize((128, 128))
    for i in range(300):  # long enough (several seconds) to be interrupted mid-way
        img.save(d / ("%03d.png" % i))
    model = ResNet50(weights=None, classes=2, head=(8,), seed=0, class_names=["COV19", "Normal"])
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(str(tmp_path / "many"), target_size=(128, 128),
                                                                 batch_size=2)
    main = threading.main_thread().ident
    sent = []

    def interrupt():
        time.sleep(0.3)
        sent.append(time.perf_counter())
        signal.pthread_kill(main, signal.SIGINT)

    # Python's own Ctrl-C handler, as in a terminal or Jupyter (a job started in the background by a
    # shell inherits SIGINT ignored, and Python then leaves it ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt).start()
        with pytest.raises(KeyboardInterrupt):
            model.evaluate(it, verbose=0)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - sent[0] < 1.5
    x = np.stack([img_to_array(load_img(str(d / "000.png"), target_size=(128, 128)))]) / 255
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
    assert len(model.evaluate(it, steps=3, verbose=0)) == 2
    assert not [t for t in threading.enumerate() if t.name == "covidx-prefetch"]


# --- files that are not files, and every other per-file failure --------------------------------------


def special_files(d):
    """{name: words of its reason}: a FIFO, a link to /dev/zero, a link to nothing, a directory
    named like an image."""
    d.mkdir(parents=True, exist_ok=True)
    os.mkfifo(d / "fifo.png")
    os.symlink("/dev/zero", d / "zero_device.png")
    os.symlink(str(d / "gone.png"), d / "dangling.png")
    (d / "folder.png").mkdir()
    return {"fifo.png": "named pipe", "zero_device.png": "character device", "dangling.png": "no such image file",
            "folder.png": "directory"}


def test_fifos_devices_and_dangling_links_are_named_at_once(tmp_path):
    import bounded

    for name, words in special_files(tmp_path).items():
        path = str(tmp_path / name)
        outcome = bounded.run(lambda: load_img(path))
        assert isinstance(outcome.error, ImageFileError), (name, outcome)
        assert path in str(outcome.error) and words in str(outcome.error)
    with pytest.raises(FileNotFoundError):  # still what Keras raises for a missing file
        load_img(str(tmp_path / "dangling.png"))


def test_folder_with_special_files_keeps_every_good_result(tmp_path):
    """A FIFO among the images used to block flow_from_directory and evaluate for ever."""
    import bounded

    d = tmp_path / "data" / "COVID-19"
    reasons = special_files(d)
    del reasons["folder.png"]  # a folder is not listed as a file
    xray().resize((64, 64)).save(d / "good.png")

    def run():
        model = ResNet50(weights=None, classes=2, head=(8,), seed=0, class_names=["COV19", "Normal"])
        it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(str(tmp_path / "data"), target_size=(64, 64),
                                                                     batch_size=4, shuffle=False, on_error="skip")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = model.predict(it, verbose=0)
        return it.filenames, p, it.skipped

    outcome = bounded.run(run)
    assert outcome.error is None, outcome
    filenames, p, skipped = outcome.value
    rows = {os.path.basename(f): r for f, r in zip(filenames, p)}
    assert sorted(rows) == sorted(list(reasons) + ["good.png"])
    assert np.isfinite(rows["good.png"]).all()
    for name in reasons:
        assert np.isnan(rows[name]).all()
    assert sorted(os.path.basename(f) for f, _ in skipped) == sorted(reasons)
    for f, why in skipped:
        assert reasons[os.path.basename(f)] in why, (f, why)


def test_unreadable_file_in_a_folder_is_skipped(tmp_path, monkeypatch):
    d = tmp_path / "data" / "Normal"
    d.mkdir(parents=True)
    for name in ("a.png", "locked.png", "b.png"):
        xray().resize((64, 64)).save(d / name)
    real_open = open

    def deny(path, *a, **k):
        if os.fspath(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    it = ImageDataGenerator().flow_from_directory(str(tmp_path / "data"), target_size=(64, 64), shuffle=False,
                                                  on_error="skip")
    with pytest.warns(UserWarning, match="locked.png"):
        batch, _ = next(it)
    assert len(batch) == 2 and [os.path.basename(p) for p, _ in it.skipped] == ["locked.png"]
    it = ImageDataGenerator().flow_from_directory(str(tmp_path / "data"), target_size=(64, 64), shuffle=False)
    with pytest.raises(ImageFileError, match="locked.png.*permission denied"):
        next(it)


def test_non_finite_values_after_preprocessing_are_not_scored(tmp_path):
    """A preprocessing_function dividing by an image's spread gives NaN for a blank image: the file
    is named (raise) or left out with NaN rows (skip), never given a diagnosis."""
    d = tmp_path / "data" / "COVID-19"
    d.mkdir(parents=True)
    xray().resize((64, 64)).save(d / "a.png")
    Image.new("L", (64, 64), 128).save(d / "blank.png")
    model = ResNet50(weights=None, classes=2, head=(8,), seed=0, class_names=["COV19", "Normal"])
    gen = ImageDataGenerator(preprocessing_function=lambda x: (x - x.mean()) / (x.max() - x.min()))
    with np.errstate(invalid="ignore", divide="ignore"):
        it = gen.flow_from_directory(str(tmp_path / "data"), target_size=(64, 64), shuffle=False)
        with pytest.raises(ImageFileError, match="blank.png.*NaN or infinite"):
            model.predict(it, verbose=0)
        it = gen.flow_from_directory(str(tmp_path / "data"), target_size=(64, 64), shuffle=False, on_error="skip")
        with pytest.warns(UserWarning, match="blank.png"):
            p = model.predict(it, verbose=0)
    assert np.isfinite(p[0]).all() and np.isnan(p[1]).all()
