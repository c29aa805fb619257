"""Broken, hostile and unusual image files: each gives a correct image or a clear error naming the
file, and a folder evaluation keeps the results of every good file."""
import io
import re
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


# --- no program started by a file; near-limit images in bounded memory -------------------------------

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 64 64
0 0 moveto 64 64 lineto stroke
showpage
%%EOF
"""


def stub_program(tmp_path, monkeypatch, name):
    """A `name` program first on PATH that records each run in a log: the log's path."""
    bin_dir, log = tmp_path / "bin", tmp_path / ("%s-ran.log" % name)
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/sh\necho \"$@\" >> '%s'\nexit 1\n" % log)
    os.chmod(bin_dir / name, 0o755)
    monkeypatch.setenv("PATH", "%s%s%s" % (bin_dir, os.pathsep, os.environ.get("PATH", "")))
    return log


def test_no_program_is_started_by_an_image_file(tmp_path, monkeypatch):
    """EPS content named x.png made Pillow run Ghostscript (`gs` from PATH) on it: covidx opens only
    the formats it reads, with plugins that decode in-process, in load_img, flow_from_directory,
    evaluate and `covidx predict`."""
    import contextlib
    import io as io_mod
    import json

    from PIL import EpsImagePlugin

    from covidx import __main__ as cli

    log = stub_program(tmp_path, monkeypatch, "gs")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # found again, on this PATH
    d = tmp_path / "data" / "COVID-19"
    d.mkdir(parents=True)
    for name in ("x.png", "y.jpg", "z.tif"):
        (d / name).write_bytes(EPS)
    xray().resize((64, 64)).save(d / "good.png")
    for name in ("x.png", "y.jpg", "z.tif"):
        with pytest.raises(ImageFileError, match="not an image covidx reads") as e:
            load_img(str(d / name))
        assert e.value.path == str(d / name)

    model = ResNet50(weights=None, classes=2, head=(4,), seed=0, class_names=["COV19", "Normal"],
                     preprocessing={"rescale": 1 / 255})
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(str(tmp_path / "data"), target_size=(64, 64),
                                                                 shuffle=False, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, acc = model.evaluate(it, verbose=0)
    assert sorted(os.path.basename(p) for p, _ in it.skipped) == ["x.png", "y.jpg", "z.tif"]
    want = model.predict(img_to_array(load_img(str(d / "good.png"), target_size=(64, 64)))[None] / 255, verbose=0)
    assert acc == float(np.argmax(want[0]) == 0)

    model_path = tmp_path / "m.safetensors"
    model.save(model_path, dtype="float16")
    out = io_mod.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(["predict", str(d / "x.png"), str(d / "good.png"), "--json", "--model", str(model_path)])
    records = {os.path.basename(r["path"]): r for r in json.loads(out.getvalue())}
    assert code == 1 and "probabilities" in records["good.png"]
    assert "x.png" in records["x.png"]["error"] and "not an image covidx reads" in records["x.png"]["error"]
    assert not log.exists(), log.read_text()

    # the stub is one Pillow runs: opened without covidx's list of formats, the file starts it
    with pytest.raises(Exception):
        Image.open(str(d / "x.png")).load()
    assert log.exists()


def test_no_image_reader_starts_a_process(tmp_path, monkeypatch):
    """The general rule, whatever the plugin: reading any of these files starts no process."""
    import subprocess

    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError("a process was started: %r" % (args,))

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)
    monkeypatch.setattr(os, "system", refuse)
    samples = {"eps.png": EPS, "pdf.png": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
               "ps.jpg": b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"}
    buf = io.BytesIO()
    xray().resize((16, 16)).save(buf, "PSD") if "PSD" in Image.SAVE else None
    for fmt in ("PCX", "TGA", "SGI", "IM", "ICO", "PDF", "EPS"):  # formats Pillow has, covidx does not read
        buf = io.BytesIO()
        try:
            xray().resize((16, 16)).convert("RGB").save(buf, fmt)
        except Exception:  # a writer missing here: not needed
            continue
        samples["%s.png" % fmt.lower()] = buf.getvalue()
    for name, data in samples.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageFileError, match="not an image covidx reads"):
            load_img(str(tmp_path / name))
    assert not started


def near_limit_files(d):
    """{name: path}: 13000 x 13000 (just under twice Pillow's bomb limit, where Pillow only warns)
    RGBA PNG of 670 KB (676 MB decoded: more than covidx's per-image budget of 640 MB) and 16-bit
    grey PNG of 330 KB (338 MB decoded)."""
    import hostile_files

    d.mkdir(parents=True, exist_ok=True)
    return {"rgba.png": hostile_files.blank_png(d / "rgba.png", 13000, 13000, 6, 8),
            "grey16.png": hostile_files.blank_png(d / "grey16.png", 13000, 13000, 0, 16)}


def test_near_limit_images_are_read_in_bounded_memory_or_named(tmp_path):
    """load_img took 1,323 MB for the RGBA file, and with xray=True 2,290 MB for the 16-bit one
    (float64 copies): each is now read in under 1 GB, or refused before decoding, naming the
    file and the per-image memory budget."""
    import bounded
    import hostile_files

    files = near_limit_files(tmp_path)
    files["rgba12k.png"] = hostile_files.blank_png(tmp_path / "rgba12k.png", 12000, 12000, 6, 8)  # 576 MB decoded
    cases = [("rgba12k.png", {}), ("grey16.png", {"xray": True}), ("grey16.png", {})]
    for name, kw in cases:
        def read(path=files[name], kw=kw):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning
                return np.asarray(load_img(path, target_size=(224, 224), **kw))

        outcome = bounded.run(read)
        assert outcome.error is None, (name, kw, outcome)
        np.testing.assert_array_equal(outcome.value, np.zeros((224, 224, 3), np.uint8))
    # larger than the budget; converting the whole RGBA image before resizing (what bilinear
    # resampling needs) does not fit either: refused from the header
    for name, kw in [("rgba.png", {}), ("rgba12k.png", {"interpolation": "bilinear"})]:
        outcome = bounded.run(lambda: load_img(files[name], target_size=(224, 224), **kw))
        assert isinstance(outcome.error, ImageFileError), outcome
        assert outcome.error.path == files[name] and "per-image memory budget of 640 MB" in str(outcome.error)
        assert outcome.extra_mb < 100


def test_folder_with_near_limit_images_scores_every_good_image(tmp_path):
    """predict over good X-rays and near-limit images, on the decoding threads: within 1 GB extra,
    every good image scored, the same as alone, and the image past the budget named."""
    import bounded

    good_dir = tmp_path / "good" / "COVID-19"
    good_dir.mkdir(parents=True)
    for i, (p, _) in enumerate(sample_files()):
        Image.open(p).save(good_dir / ("%d.png" % i))
    mixed = tmp_path / "mixed" / "COVID-19"
    near_limit_files(mixed)
    for f in os.listdir(good_dir):
        os.link(good_dir / f, mixed / f)

    def scores(folder, **kw):
        model = ResNet50(weights=None, classes=2, head=(8,), seed=0, class_names=["COV19", "Normal"])
        it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(str(folder), target_size=(64, 64),
                                                                     batch_size=16, shuffle=False, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return it.filenames, model.predict(it, verbose=0), it.skipped

    names, want, _ = scores(tmp_path / "good", xray=True, interpolation="bilinear")
    outcome = bounded.run(lambda: scores(tmp_path / "mixed", on_error="skip", xray=True, interpolation="bilinear"),
                          seconds=40)
    assert outcome.error is None, outcome
    got_names, got, skipped = outcome.value
    rows = dict(zip(got_names, got))
    assert len(got_names) == len(names) + 2
    np.testing.assert_allclose(np.stack([rows[n] for n in names]), want, rtol=1e-5, atol=1e-6)
    # the RGBA image does not fit the budget, the 16-bit one does
    assert [os.path.basename(p) for p, _ in skipped] == ["rgba.png"]
    assert all("per-image memory budget" in why for _, why in skipped)
    assert np.isfinite(rows[os.path.join("COVID-19", "grey16.png")]).all()


def test_memory_error_on_one_file_is_a_skipped_file(tmp_path, monkeypatch):
    """on_error='skip' re-raised MemoryError, so one image lost the whole run."""
    d = tmp_path / "data" / "COVID-19"
    d.mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        xray().resize((64, 64)).save(d / name)
    real_resize = Image.Image.resize

    def resize(self, *a, **k):
        if self.filename_for_test == "b.png":
            raise MemoryError()
        return real_resize(self, *a, **k)

    real_open = Image.open

    def open_(fp, *a, **k):
        img = real_open(fp, *a, **k)
        img.filename_for_test = "b.png" if bytes(fp.getbuffer()) == (d / "b.png").read_bytes() else None
        return img

    (d / "b.png").write_bytes((d / "b.png").read_bytes() + b"\0")  # a different file from the other two
    monkeypatch.setattr(Image, "open", open_)
    monkeypatch.setattr(Image.Image, "resize", resize)
    monkeypatch.setattr(Image.Image, "filename_for_test", None, raising=False)
    with pytest.raises(ImageFileError, match="out of memory") as e:
        load_img(str(d / "b.png"), target_size=(32, 32))
    assert e.value.path == str(d / "b.png")
    model = ResNet50(weights=None, classes=2, head=(8,), seed=0, class_names=["COV19", "Normal"])
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(str(tmp_path / "data"), target_size=(32, 32),
                                                                 shuffle=False, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = model.predict(it, verbose=0)
        model.evaluate(it, verbose=0)
    assert [os.path.basename(f) for f, _ in it.skipped] == ["b.png"]
    assert np.isnan(p[1]).all() and np.isfinite(p[[0, 2]]).all()


def test_decoding_threads_share_one_memory_budget(tmp_path, monkeypatch):
    """Images decoded at once, in any number of threads, together reserve at most the budget."""
    from concurrent.futures import ThreadPoolExecutor

    from covidx.preprocessing import image as image_mod

    for i in range(12):
        Image.new("RGB", (1000, 1000), (i, 0, 0)).save(tmp_path / ("%d.png" % i))
    monkeypatch.setattr(image_mod, "MAX_DECODE_BYTES", 9 << 20)  # room for two of these at a time
    most, real_reserve = [0], image_mod._memory.reserve

    def reserve(nbytes):
        real_reserve(nbytes)
        most[0] = max(most[0], image_mod._memory.used)
        time.sleep(0.01)

    monkeypatch.setattr(image_mod._memory, "reserve", reserve)
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda i: np.asarray(load_img(str(tmp_path / ("%d.png" % i)), target_size=(8, 8))),
                            range(12)))
    assert [int(a[0, 0, 0]) for a in out] == list(range(12))
    assert 0 < most[0] <= 9 << 20 and image_mod._memory.used == 0
    with pytest.raises(ImageFileError, match="per-image memory budget"):
        monkeypatch.setattr(image_mod, "MAX_DECODE_BYTES", 1 << 20)
        load_img(str(tmp_path / "0.png"), target_size=(8, 8))
    assert image_mod._memory.used == 0


def test_large_jpeg_is_decoded_at_a_reduced_scale_within_the_budget(tmp_path, monkeypatch):
    """A JPEG too large to decode whole within the budget is decoded at 1/2..1/8 scale (Pillow's
    draft), never below the target size; one within the budget is decoded whole, as Keras does."""
    from covidx.preprocessing import image as image_mod

    big = xray().resize((2400, 2000))
    big.convert("RGB").save(tmp_path / "big.jpg", quality=95)
    whole = np.asarray(load_img(str(tmp_path / "big.jpg"), target_size=(224, 224)), np.float64)
    want = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize((224, 224), Image.NEAREST), np.float64)
    np.testing.assert_array_equal(whole, want)
    monkeypatch.setattr(image_mod, "MAX_DECODE_BYTES", 4 << 20)  # the whole image needs 19 MB
    reduced = np.asarray(load_img(str(tmp_path / "big.jpg"), target_size=(224, 224), interpolation="bilinear"),
                         np.float64)
    ref = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize((224, 224), Image.BILINEAR), np.float64)
    assert reduced.shape == ref.shape and np.abs(reduced - ref).mean() < 4
    big.convert("RGB").save(tmp_path / "big.png")
    with pytest.raises(ImageFileError, match="per-image memory budget"):
        load_img(str(tmp_path / "big.png"), target_size=(224, 224))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16", "1"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "lanczos"])
def test_conversion_and_resizing_give_pillows_pixels(tmp_path, mode, interpolation):
    """covidx resizes before converting where that gives the same pixels (nearest, or plain grey),
    to convert only the small image: the result is Pillow's convert-then-resize, as in Keras."""
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, (151, 203, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (151, 203), dtype=np.uint16))
    elif mode == "P":
        img = src.quantize(64)
    else:
        img = src.convert(mode)
    img.save(tmp_path / "x.tif") if mode in ("CMYK", "LA") else img.save(tmp_path / "x.png")
    path = str(tmp_path / ("x.tif" if mode in ("CMYK", "LA") else "x.png"))
    for color_mode in ("rgb", "rgba", "grayscale"):
        pil_mode = {"rgb": "RGB", "rgba": "RGBA", "grayscale": "L"}[color_mode]
        ref = Image.open(path)
        if not (color_mode == "grayscale" and ref.mode in ("L", "I;16", "I")):
            ref = ref.convert(pil_mode)
        ref = ref.resize((64, 48), getattr(Image.Resampling, interpolation.upper()))
        got = load_img(path, color_mode=color_mode, target_size=(48, 64), interpolation=interpolation)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref), err_msg="%s %s" % (mode, color_mode))


def test_sixteen_bit_scaled_in_blocks_matches_the_whole_image(tmp_path, monkeypatch):
    from covidx.preprocessing import image as image_mod

    rng = np.random.default_rng(1)
    a = rng.integers(300, 40000, (97, 131)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "x16.png")
    monkeypatch.setattr(image_mod, "BLOCK_PIXELS", 131 * 3 + 5)  # blocks of 3 rows, the last one shorter
    got = img_to_array(load_img(str(tmp_path / "x16.png"), xray=True))[:, :, 0]
    want = np.floor((a.astype(np.float64) - a.min()) * 255.0 / (a.max() - a.min()) + 0.5)
    np.testing.assert_array_equal(got, want)


def test_cli_scores_every_good_image_beside_near_limit_images(tmp_path):
    """`covidx evaluate` on 8 X-rays + 2 near-limit PNGs ended in a MemoryError traceback with no
    result (under a 3 GB cap): `covidx predict` and `covidx evaluate` now score every good file
    within 1 GB extra (the X-rays exactly as without the large files), and name the one past the
    per-image memory budget."""
    import contextlib
    import io as io_mod
    import json

    import bounded

    from covidx import __main__ as cli

    data = tmp_path / "data"
    for i, (p, label) in enumerate(sample_files()):
        (data / label).mkdir(parents=True, exist_ok=True)
        Image.open(p).save(data / label / ("%d.png" % i))
    good = sorted(str(p) for p in data.glob("*/*.png"))
    big = near_limit_files(data / "COVID-19" / "big")
    model_path = tmp_path / "m.safetensors"
    model = ResNet50(weights=None, classes=2, head=(4,), class_names=["COV19", "Normal"], seed=3,
                     preprocessing={"rescale": 1 / 255})
    model.save(model_path)

    def run(*args):
        out = io_mod.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io_mod.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = cli.main(list(args) + ["--model", str(model_path), "--batch-size", "4"])
        return code, out.getvalue()

    outcome = bounded.run(lambda: run("predict", *(good[:4] + list(big.values()) + good[4:]), "--json"), seconds=120)
    assert outcome.error is None, outcome
    code, out = outcome.value
    records = {r["path"]: r for r in json.loads(out)}
    assert code == 1 and sorted(records) == sorted(good + list(big.values()))
    assert "per-image memory budget" in records[big["rgba.png"]]["error"]
    assert "probabilities" in records[big["grey16.png"]]
    x = np.stack([img_to_array(load_img(p, target_size=(224, 224))) for p in good]) / 255
    want = covidx.load_model(str(model_path)).predict(x, verbose=0)
    got = np.array([[records[p]["probabilities"][n] for n in ("COV19", "Normal")] for p in good])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

    outcome = bounded.run(lambda: run("evaluate", str(data)), seconds=120)
    assert outcome.error is None, outcome
    code, out = outcome.value
    assert code == 1 and "rgba.png" in out and "grey16.png" not in out, out
    labels = np.array([0 if "/COVID-19/" in p else 1 for p in good] + [0])
    x_all = np.concatenate([x, np.zeros((1,) + x.shape[1:], np.float32)])
    p_all = covidx.load_model(str(model_path)).predict(x_all, verbose=0)
    acc = np.mean(np.argmax(p_all, 1) == labels)
    assert re.search(r"accuracy\W+%.4f" % acc, out) or ("%.4f" % acc) in out, (acc, out)


def test_image_dataset_from_directory_names_impossible_sizes():
    """image_dataset_from_directory, like flow_from_directory: an image_size or batch_size that
    cannot be right is a ValueError naming the argument, before any file is read."""
    from covidx.data import samples_dir
    from covidx.keras.utils import image_dataset_from_directory

    for bad, words in [((0, 0), "image_size: expected two positive integers"),
                       ((100000, 100000), "image_size: .*per-image memory budget"),
                       ((224, 2.5), "image_size: expected two positive integers")]:
        with pytest.raises(ValueError, match=words):
            image_dataset_from_directory(samples_dir(), image_size=bad)
    with pytest.raises(ValueError, match="batch_size: expected a positive integer or None, got True"):
        image_dataset_from_directory(samples_dir(), batch_size=True)
    ds = image_dataset_from_directory(samples_dir(), image_size=(32, 48), batch_size=None, shuffle=False)
    x, _ = ds[0]
    assert x.shape == (8, 32, 48, 3)
