"""DICOM input: files written with pydicom from real chest X-rays, read back through load_img and
flow_from_directory, and compared with grey levels computed here in NumPy from the source pixels
(the DICOM standard's formulas, PS3.3 C.11), not with covidx's code."""
import io
import os
import re
import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid  # noqa: E402

import covidx  # noqa: E402
from covidx.data import sample_files  # noqa: E402
from covidx.preprocessing.image import ImageDataGenerator, img_to_array, load_img  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_CXR = os.path.join(HERE, "..", "..", "shared", "data", "cxr")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def source_xrays():
    """Grey (h, w) uint8 arrays of real X-rays: two bundled samples and, where ../shared is beside
    the checkout, one from each shared data set."""
    paths = [sample_files()[0][0], sample_files()[-1][0]]
    for folder in (("ieee8023-covid", "COVID-19"), ("covid19-radiography", "test", "Normal")):
        shared = os.path.join(SHARED_CXR, *folder)
        if os.path.isdir(shared):
            paths.append(os.path.join(shared, sorted(os.listdir(shared))[0]))
    from PIL import Image

    return [np.asarray(Image.open(p).convert("L")) for p in paths]


XRAYS = source_xrays()


def write_dicom(path, stored, photometric="MONOCHROME2", bits_stored=None, signed=False, extra=None,
                transfer_syntax=ExplicitVRLittleEndian):
    """A single-frame DICOM file holding `stored` (rows, cols) or (rows, cols, 3) as its pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "DX", "Test^Phantom", "0"
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.SamplesPerPixel = 3 if stored.ndim == 3 else 1
    if stored.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = stored.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = bits, bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def to_uint8(v):
    return np.floor(np.clip(v, 0, 1) * 255 + 0.5).astype(np.uint8)


def linear_window(x, centre, width):
    """PS3.3 C.11.2.1.2.1, written out with its if/else branches, output range 0..1."""
    x = x.astype(np.float64)
    out = ((x - (centre - 0.5)) / (width - 1) + 0.5)
    out[x <= centre - 0.5 - (width - 1) / 2] = 0.0
    out[x > centre - 0.5 + (width - 1) / 2] = 1.0
    return out


def assert_grey_equal(img, want):
    """8-bit greys equal up to a rounding tie (a value landing on .5 may round either way)."""
    got = np.asarray(img)
    assert img.mode == "L" and got.shape == want.shape
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.999, (diff.max(), np.mean(diff == 0))


def grey(path):
    return load_img(path, color_mode="grayscale")


@pytest.mark.parametrize("index", range(len(XRAYS)))
def test_8_bit_without_window_uses_the_full_range(tmp_path, index):
    src = XRAYS[index]
    path = write_dicom(tmp_path / "a.dcm", src)
    lo, hi = float(src.min()), float(src.max())
    assert_grey_equal(grey(path), to_uint8((src - lo) / (hi - lo)))


def twelve_bit(src):
    """An 8-bit X-ray spread over 12 bits, as a detector stores it (uint16 container)."""
    return np.round(src.astype(np.float64) * (4095 / 255)).astype(np.uint16)


@pytest.mark.parametrize("index", range(len(XRAYS)))
def test_16_bit_with_rescale_and_window(tmp_path, index):
    stored = twelve_bit(XRAYS[index])
    slope, intercept, centre, width = 0.5, -1024.0, -300.0, 1400.0
    path = write_dicom(tmp_path / "b.dcm", stored, bits_stored=12,
                       extra={"RescaleSlope": slope, "RescaleIntercept": intercept,
                              "WindowCenter": centre, "WindowWidth": width})
    want = linear_window(stored * slope + intercept, centre, width)
    assert 0.05 < np.mean(want == 0) + np.mean(want == 1) < 0.95  # the window really clips some pixels
    assert_grey_equal(grey(path), to_uint8(want))

    # pydicom's own windowing, scaled from its output range, agrees
    from pydicom.pixels import apply_modality_lut, apply_windowing

    ds = pydicom.dcmread(path)
    y_min, y_max = intercept, 4095 * slope + intercept
    theirs = (apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds) - y_min) / (y_max - y_min)
    assert_grey_equal(grey(path), to_uint8(theirs))


@pytest.mark.parametrize("index", range(len(XRAYS)))
def test_monochrome1_is_inverted(tmp_path, index):
    stored = twelve_bit(XRAYS[index])
    inverted = (4095 - stored).astype(np.uint16)
    mono2 = grey(write_dicom(tmp_path / "m2.dcm", stored, bits_stored=12))
    mono1 = grey(write_dicom(tmp_path / "m1.dcm", inverted, "MONOCHROME1", bits_stored=12))
    assert_grey_equal(mono1, np.asarray(mono2))
    # bone (bright in the PNG) is bright in both
    src = XRAYS[index]
    bright = src > np.percentile(src, 90)
    assert np.asarray(mono1)[bright].mean() > np.asarray(mono1)[~bright].mean() + 50

    # with a window: the window applies to the stored (inverted) values, then white and black swap
    centre, width = 2000.0, 3000.0
    path = write_dicom(tmp_path / "m1w.dcm", inverted, "MONOCHROME1", bits_stored=12,
                       extra={"WindowCenter": centre, "WindowWidth": width})
    assert_grey_equal(grey(path), to_uint8(1.0 - linear_window(inverted, centre, width)))


def test_signed_16_bit_with_intercept(tmp_path):
    stored = (twelve_bit(XRAYS[0]).astype(np.int32) - 2048).astype(np.int16)
    path = write_dicom(tmp_path / "s.dcm", stored, signed=True,
                       extra={"RescaleSlope": 2.0, "RescaleIntercept": 100.0,
                              "WindowCenter": 500.0, "WindowWidth": 6000.0})
    assert_grey_equal(grey(path), to_uint8(linear_window(stored * 2.0 + 100.0, 500.0, 6000.0)))


def test_other_window_functions(tmp_path):
    stored = twelve_bit(XRAYS[0])
    x = stored.astype(np.float64)
    for function, want in [("LINEAR_EXACT", np.clip((x - 2000) / 2500 + 0.5, 0, 1)),
                           ("SIGMOID", 1 / (1 + np.exp(-4 * (x - 2000) / 2500)))]:
        path = write_dicom(tmp_path / ("%s.dcm" % function), stored, bits_stored=12,
                           extra={"WindowCenter": 2000.0, "WindowWidth": 2500.0, "VOILUTFunction": function})
        assert_grey_equal(grey(path), to_uint8(want))


def test_first_of_several_windows(tmp_path):
    stored = twelve_bit(XRAYS[0])
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12,
                       extra={"WindowCenter": [1500.0, 3000.0], "WindowWidth": [1000.0, 500.0]})
    assert_grey_equal(grey(path), to_uint8(linear_window(stored, 1500.0, 1000.0)))


@pytest.mark.parametrize("declared_bits", [16, 12])
def test_voi_lut_sequence(tmp_path, declared_bits):
    stored = twelve_bit(XRAYS[1])
    table = np.round(4095 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint16)  # a 12-bit gamma curve
    item = Dataset()
    item.LUTDescriptor = [4096, 0, declared_bits]  # 16 declared for a 12-bit table: a common encoder habit
    item.LUTData = table.tolist()
    item["LUTData"].VR = "US"
    path = write_dicom(tmp_path / "lut.dcm", stored, bits_stored=12,
                       extra={"VOILUTSequence": [item], "WindowCenter": 100.0, "WindowWidth": 10.0})
    # the LUT wins over the window
    assert_grey_equal(grey(path), to_uint8(table[stored] / 4095))


def test_rle_compressed_16_bit_reads_like_uncompressed(tmp_path):
    stored = twelve_bit(XRAYS[0])
    extra = {"RescaleSlope": 1.0, "RescaleIntercept": 0.0, "WindowCenter": 2048.0, "WindowWidth": 4096.0}
    plain = write_dicom(tmp_path / "plain.dcm", stored, bits_stored=12, extra=extra)
    rle = write_dicom(tmp_path / "rle.dcm", stored, bits_stored=12, extra=extra, transfer_syntax=RLELossless)
    assert pydicom.dcmread(rle).file_meta.TransferSyntaxUID == RLELossless
    assert os.path.getsize(rle) < os.path.getsize(plain)
    np.testing.assert_array_equal(np.asarray(grey(rle)), np.asarray(grey(plain)))
    assert_grey_equal(grey(rle), to_uint8(linear_window(stored, 2048.0, 4096.0)))


def test_rgb_dicom(tmp_path):
    from PIL import Image

    rgb = np.asarray(Image.open(sample_files()[0][0]).convert("RGB"))
    img = load_img(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), rgb)


def test_load_img_resizes_and_converts_like_a_png(tmp_path):
    src = XRAYS[0]
    from PIL import Image

    lo, hi = float(src.min()), float(src.max())
    stretched = to_uint8((src - lo) / (hi - lo))
    Image.fromarray(stretched).save(tmp_path / "same.png")
    path = write_dicom(tmp_path / "a.dcm", src)
    for kwargs in ({}, {"target_size": (64, 64)}, {"target_size": (50, 70), "interpolation": "bilinear"}):
        np.testing.assert_array_equal(img_to_array(load_img(path, **kwargs)),
                                      img_to_array(load_img(tmp_path / "same.png", **kwargs)))
    with open(path, "rb") as f:
        from_bytes = load_img(io.BytesIO(f.read()), target_size=(64, 64))
    np.testing.assert_array_equal(np.asarray(from_bytes), np.asarray(load_img(path, target_size=(64, 64))))


def test_flow_from_directory_reads_dcm_files(tmp_path):
    for cls, index in (("COV19", 0), ("Normal", 1)):
        os.makedirs(tmp_path / cls)
        write_dicom(tmp_path / cls / "a.dcm", twelve_bit(XRAYS[index]), bits_stored=12)
        write_dicom(tmp_path / cls / "b.dcm", (4095 - twelve_bit(XRAYS[index])).astype(np.uint16),
                    "MONOCHROME1", bits_stored=12)
    it = ImageDataGenerator().flow_from_directory(tmp_path, target_size=(64, 64), batch_size=4, shuffle=False)
    assert it.samples == 4 and sorted(it.class_indices) == ["COV19", "Normal"]
    x, y = next(it)
    assert x.shape == (4, 64, 64, 3)
    for i, name in enumerate(it.filenames):
        want = img_to_array(load_img(os.path.join(tmp_path, name), target_size=(64, 64)))
        np.testing.assert_array_equal(x[i], want)
    np.testing.assert_array_equal(x[0], x[1])  # MONOCHROME1 of the inverted values == MONOCHROME2


# --- what covidx cannot read, said clearly ----------------------------------------------------------


def test_multi_frame_is_refused(tmp_path):
    frames = np.stack([XRAYS[0], XRAYS[0]])
    path = write_dicom(tmp_path / "multi.dcm", frames[0], extra={"NumberOfFrames": 2})
    ds = pydicom.dcmread(path)
    ds.PixelData = frames.tobytes()
    ds.save_as(path)
    with pytest.raises(covidx.ImageFileError, match="multi-frame.*2 frames") as e:
        load_img(path)
    assert e.value.path == str(path)


def test_no_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "sr.dcm", XRAYS[0])
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(covidx.ImageFileError, match="no image"):
        load_img(path)


def test_palette_colour_is_refused(tmp_path):
    path = write_dicom(tmp_path / "pal.dcm", XRAYS[0], "PALETTE COLOR")
    with pytest.raises(covidx.ImageFileError, match="PALETTE COLOR"):
        load_img(path)


def test_undecodable_transfer_syntax_names_it(tmp_path):
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "jls.dcm", XRAYS[0])
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"  # JPEG-LS lossless
    ds.PixelData = encapsulate([b"\xff\xd8 not really JPEG-LS \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with pytest.raises(covidx.ImageFileError, match=r"jls\.dcm.*JPEG-LS Lossless.*1\.2\.840\.10008\.1\.2\.4\.80"):
        load_img(path)


def test_truncated_file(tmp_path):
    path = write_dicom(tmp_path / "t.dcm", twelve_bit(XRAYS[0]), bits_stored=12)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(covidx.ImageFileError, match=r"t\.dcm"):
        load_img(path)


def test_flow_from_directory_skips_bad_dicom(tmp_path):
    os.makedirs(tmp_path / "COV19")
    write_dicom(tmp_path / "COV19" / "good.dcm", XRAYS[0])
    write_dicom(tmp_path / "COV19" / "multi.dcm", XRAYS[0], extra={"NumberOfFrames": 2})
    it = ImageDataGenerator().flow_from_directory(tmp_path, target_size=(64, 64), batch_size=2, shuffle=False,
                                                  on_error="skip")
    with pytest.warns(UserWarning):
        next(it)
    assert [os.path.basename(p) for p, _ in it.skipped] == ["multi.dcm"]


def test_without_pydicom_the_error_says_what_to_install(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "a.dcm", XRAYS[0])
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match="pip install pydicom"):
        load_img(path)


# --- covidx predict on DICOM files ----------------------------------------------------------------------


def test_cli_predict_reads_dicom_like_the_same_png(tmp_path, capsys):
    import json

    from PIL import Image

    from covidx import __main__ as cli
    from covidx.applications.resnet50 import ResNet50

    model_path = tmp_path / "m.safetensors"
    ResNet50(weights=None, classes=2, class_names=["COV19", "Normal"], seed=2).save(model_path, dtype="float16")
    src = XRAYS[1]
    lo, hi = float(src.min()), float(src.max())
    os.makedirs(tmp_path / "in")
    Image.fromarray(to_uint8((src - lo) / (hi - lo))).save(tmp_path / "in" / "a.png")
    write_dicom(tmp_path / "in" / "b.dcm", src)
    write_dicom(tmp_path / "in" / "c.dcm", src, extra={"NumberOfFrames": 2})
    code = cli.main(["predict", str(tmp_path / "in"), "--json", "--model", str(model_path)])
    records = {os.path.basename(r["path"]): r for r in json.loads(capsys.readouterr().out)}
    assert code == 1 and sorted(records) == ["a.png", "b.dcm", "c.dcm"]
    np.testing.assert_array_equal(img_to_array(load_img(tmp_path / "in" / "a.png", target_size=(224, 224))),
                                  img_to_array(load_img(tmp_path / "in" / "b.dcm", target_size=(224, 224))))
    for name in ("COV19", "Normal"):  # same pixels, in another row of the batch
        assert records["a.png"]["probabilities"][name] == pytest.approx(records["b.dcm"]["probabilities"][name],
                                                                        abs=1e-6)
    assert "multi-frame" in records["c.dcm"]["error"]

    sys.modules["pydicom"] = None
    try:
        code = cli.main(["predict", str(tmp_path / "in" / "b.dcm"), "--model", str(model_path)])
    finally:
        del sys.modules["pydicom"]
    assert code == 2 and "pip install pydicom" in capsys.readouterr().err


# --- broken and hostile DICOM files --------------------------------------------------------------------


def with_text_tag(path, tag, value):
    """The file with one numeric tag replaced by free text (a writer that ignored the tag's VR)."""
    ds = pydicom.dcmread(path)
    if tag in ds:
        del ds[tag]
    ds.add_new(tag, "LO", value)
    ds.save_as(path)
    return path


def broken_dicoms(d):
    """{name: words of the reason}: tags that are not numbers, and 4 frames of pixel data without
    Number of Frames."""
    os.makedirs(d, exist_ok=True)
    with_text_tag(write_dicom(d / "frames_abc.dcm", XRAYS[0][:64, :64]), 0x00280008, "abc")
    with_text_tag(write_dicom(d / "samples_x.dcm", XRAYS[0][:64, :64]), 0x00280002, "x")
    path = write_dicom(d / "four_frames.dcm", XRAYS[0][:64, :64])
    ds = pydicom.dcmread(path)
    ds.PixelData = np.stack([XRAYS[0][:64, :64]] * 4).tobytes()
    ds.save_as(path)
    return {"frames_abc.dcm": "NumberOfFrames 'abc'", "samples_x.dcm": "SamplesPerPixel 'x'",
            "four_frames.dcm": "shape (4, 64, 64)"}


def test_broken_tags_and_uncounted_frames_name_the_file(tmp_path):
    import warnings

    for name, words in broken_dicoms(tmp_path).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the extra frames
            with pytest.raises(covidx.ImageFileError, match=re.escape(words)) as e:
                load_img(tmp_path / name)
        assert e.value.path == str(tmp_path / name)


def test_folder_with_broken_dicoms_keeps_the_good_results(tmp_path, capsys):
    import json
    import warnings

    from covidx import __main__ as cli
    from covidx.applications.resnet50 import ResNet50

    reasons = broken_dicoms(tmp_path / "data" / "COV19")
    write_dicom(tmp_path / "data" / "COV19" / "good.dcm", XRAYS[0][:64, :64])
    it = ImageDataGenerator().flow_from_directory(tmp_path / "data", target_size=(64, 64), shuffle=False,
                                                  on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, _ = next(it)
    assert len(x) == 1 and sorted(os.path.basename(p) for p, _ in it.skipped) == sorted(reasons)

    model_path = tmp_path / "m.safetensors"
    ResNet50(weights=None, classes=2, class_names=["COV19", "Normal"], seed=2).save(model_path, dtype="float16")
    files = [str(tmp_path / "data" / "COV19" / n) for n in ["good.dcm"] + sorted(reasons)]
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(["predict"] + files + ["--json", "--model", str(model_path)])
    records = {os.path.basename(r["path"]): r for r in json.loads(capsys.readouterr().out)}
    assert code == 1 and "probabilities" in records["good.dcm"]
    for name, words in reasons.items():
        assert words in records[name]["error"]


def write_deflated(path, rows, cols):
    """A Deflated Explicit VR Little Endian file of rows x cols zeros (16-bit): a few hundred KB."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    write_dicom(path, np.zeros((2, 2), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = bytes(rows * cols * 2)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_deflated_dicom_reads_like_the_uncompressed_file(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    src = twelve_bit(XRAYS[0])
    plain = write_dicom(tmp_path / "plain.dcm", src, bits_stored=12,
                        extra={"WindowCenter": 2048, "WindowWidth": 3000, "RescaleSlope": 1, "RescaleIntercept": 0})
    ds = pydicom.dcmread(plain)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    assert os.path.getsize(tmp_path / "deflated.dcm") < os.path.getsize(plain)
    np.testing.assert_array_equal(np.asarray(grey(tmp_path / "deflated.dcm")), np.asarray(grey(plain)))


def test_deflated_8000_square_is_read_in_bounded_memory(tmp_path):
    """125 KB that inflate to a 64-megapixel image: read (as Pillow reads a PNG of that size) in
    under 1 GB extra; float64 copies of the image peaked at 1.4 GB."""
    import bounded

    path = str(write_deflated(tmp_path / "big.dcm", 8000, 8000))
    assert os.path.getsize(path) < 200_000
    outcome = bounded.run(lambda: np.asarray(load_img(path, target_size=(224, 224))))
    assert outcome.error is None, outcome
    np.testing.assert_array_equal(outcome.value, np.zeros((224, 224, 3), np.uint8))  # one grey: black


def test_deflated_dicom_bomb_is_refused_before_inflating(tmp_path):
    """20000 x 20000 (400 megapixels) in 778 KB: refused from the header, as the same PNG is."""
    import bounded

    path = str(write_deflated(tmp_path / "bomb.dcm", 20000, 20000))
    outcome = bounded.run(lambda: load_img(path), extra_mb=200)
    assert isinstance(outcome.error, covidx.ImageFileError), outcome
    assert "decompression bomb" in str(outcome.error) and path in str(outcome.error)


def test_rle_dicom_bomb_is_refused_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "rle.dcm", np.zeros((64, 64), np.uint16), transfer_syntax=RLELossless)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 20000  # the header now declares 400 megapixels
    ds.save_as(path)
    with pytest.raises(covidx.ImageFileError, match="decompression bomb"):
        load_img(path)


def test_grey_levels_computed_in_blocks_match_the_whole_image(tmp_path, monkeypatch):
    """The conversion runs a block of rows at a time; with blocks of a few rows the result is that
    of the formulas on the whole image (the full range is the whole image's)."""
    from covidx import dicom

    monkeypatch.setattr(dicom, "BLOCK_PIXELS", 1000)
    src = twelve_bit(XRAYS[0])
    path = write_dicom(tmp_path / "a.dcm", src, bits_stored=12, photometric="MONOCHROME1",
                       extra={"RescaleSlope": 2, "RescaleIntercept": -100})
    values = src.astype(np.float64) * 2 - 100
    lo, hi = values.min(), values.max()
    assert_grey_equal(grey(path), to_uint8(1.0 - (values - lo) / (hi - lo)))


# --- grey-level tags that are not numbers a viewer could use ---------------------------------------------


def with_ds_tag(path, keyword, value):
    """The file with one decimal-string tag set to `value` as written (pydicom only warns)."""
    import warnings

    ds = pydicom.dcmread(path)
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag in ds:
        del ds[tag]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.add_new(tag, "DS", value)
        ds.save_as(path)
    return path


NON_FINITE_MODALITY = [("RescaleSlope", "NaN"), ("RescaleSlope", "inf"), ("RescaleIntercept", "-inf")]


@pytest.mark.parametrize("keyword,value", NON_FINITE_MODALITY)
def test_non_finite_rescale_is_a_named_error(tmp_path, keyword, value):
    """RescaleSlope='NaN' made the image all black, and it was called COV19 at 0.996."""
    stored = twelve_bit(XRAYS[0])
    path = write_dicom(tmp_path / "a.dcm", stored, bits_stored=12,
                       extra={"RescaleSlope": 1, "RescaleIntercept": 0, "WindowCenter": 2048, "WindowWidth": 4000})
    with_ds_tag(path, keyword, value)
    with pytest.raises(covidx.ImageFileError, match="bad %s .*not a finite number" % keyword) as e:
        load_img(path)
    assert e.value.path == str(path)


def test_overflowing_rescale_is_a_named_error(tmp_path):
    """A slope of 1e308 overflows to infinity: with a window every pixel but 0 came out white."""
    for window in ({"WindowCenter": 2048, "WindowWidth": 4000}, {}):
        path = write_dicom(tmp_path / "a.dcm", twelve_bit(XRAYS[0]), bits_stored=12,
                           extra=dict({"RescaleSlope": 1, "RescaleIntercept": 0}, **window))
        with_ds_tag(path, "RescaleSlope", "1e308")
        with pytest.raises(covidx.ImageFileError, match="RescaleSlope 1e308.*not finite numbers"):
            load_img(path)


@pytest.mark.parametrize("keyword,value", [("WindowCenter", "NaN"), ("WindowWidth", "inf"), ("WindowWidth", "NaN")])
def test_non_finite_window_is_ignored_with_a_warning(tmp_path, keyword, value):
    """A window is optional in DICOM: one that is not a pair of finite numbers is ignored, saying so,
    and the image is shown over its own range (computed here from the stored values)."""
    stored = twelve_bit(XRAYS[0])
    slope, intercept = 0.5, -1024.0
    path = write_dicom(tmp_path / "a.dcm", stored, bits_stored=12,
                       extra={"RescaleSlope": slope, "RescaleIntercept": intercept,
                              "WindowCenter": -300.0, "WindowWidth": 1400.0})
    with_ds_tag(path, keyword, value)
    with pytest.warns(RuntimeWarning, match="not finite numbers: ignored"):
        img = grey(path)
    values = stored * slope + intercept
    assert_grey_equal(img, to_uint8((values - values.min()) / (values.max() - values.min())))


def test_tags_that_make_an_image_one_grey_are_a_named_error(tmp_path):
    """A window far from every value turns a radiograph into one flat grey: not diagnosed."""
    path = write_dicom(tmp_path / "a.dcm", twelve_bit(XRAYS[0]), bits_stored=12,
                       extra={"WindowCenter": 1e30, "WindowWidth": 10})
    with pytest.raises(covidx.ImageFileError, match="one flat grey"):
        load_img(path)
    blank = write_dicom(tmp_path / "blank.dcm", np.full((64, 64), 100, np.uint16), bits_stored=12)
    assert np.ptp(np.asarray(grey(blank))) == 0  # an image that is blank in the file is read as it is


def test_folder_with_non_finite_tags_keeps_the_good_results(tmp_path):
    import warnings

    d = tmp_path / "data" / "COV19"
    d.mkdir(parents=True)
    extra = {"RescaleSlope": 1, "RescaleIntercept": 0, "WindowCenter": 2048, "WindowWidth": 4000}
    write_dicom(d / "good.dcm", twelve_bit(XRAYS[0]), bits_stored=12, extra=extra)
    for i, (keyword, value) in enumerate(NON_FINITE_MODALITY + [("RescaleSlope", "1e308")]):
        with_ds_tag(write_dicom(d / ("bad%d.dcm" % i), twelve_bit(XRAYS[0]), bits_stored=12, extra=extra),
                    keyword, value)
    it = ImageDataGenerator().flow_from_directory(tmp_path / "data", target_size=(64, 64), shuffle=False,
                                                  on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, _ = next(it)
    assert len(x) == 1 and sorted(os.path.basename(p) for p, _ in it.skipped) == ["bad%d.dcm" % i for i in range(4)]
    np.testing.assert_array_equal(x[0], img_to_array(load_img(d / "good.dcm", target_size=(64, 64))))


def test_dicom_decoding_is_held_to_the_memory_budget(tmp_path, monkeypatch):
    """The budget PNG and JPEG files are held to applies to DICOM, from its header, before decoding."""
    from covidx.preprocessing import image as image_mod

    path = write_dicom(tmp_path / "a.dcm", twelve_bit(XRAYS[0]), bits_stored=12)
    rows, cols = XRAYS[0].shape
    assert load_img(path, target_size=(64, 64)).size == (64, 64)
    monkeypatch.setattr(image_mod, "MAX_DECODE_BYTES", rows * cols * 2)  # less than the stored array and its copy
    with pytest.raises(covidx.ImageFileError, match="%d x %d L image needs about .* per-image memory budget"
                       % (cols, rows)):
        load_img(path, target_size=(64, 64))
    assert image_mod._memory.used == 0
