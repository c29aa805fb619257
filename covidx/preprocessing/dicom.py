"""DICOM files as images (pydicom, an optional extra: pip install covidx[dicom]).

A radiograph's stored values become display greys the way a DICOM viewer makes them:

1. the Modality LUT: Rescale Slope/Intercept (or a Modality LUT Sequence) turns stored values
   into modality units;
2. the VOI LUT: a VOI LUT Sequence if the file has one, else its first Window Center/Width
   (LINEAR, LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2), else the image's own min..max range;
3. MONOCHROME1 (white = low values) is inverted so bone is always bright;
4. the result, in [0, 1], is scaled to 0..255 with rounding: an 8-bit greyscale ('L') image.

Colour files (RGB, or YBR that pydicom converts to RGB) with 8 bits per sample give an 'RGB' image.
Compressed transfer syntaxes work where pydicom has a decoder for them (RLE always; JPEG and
JPEG 2000 with Pillow or pylibjpeg). Multi-frame files are refused: which frame is the radiograph
is not something covidx can guess.

Sizes are checked before decoding: Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)
applies to DICOM as to PNG, a deflated file is inflated with a running limit set by the image
size its header declares, and grey levels are computed a block of rows at a time, so a large
radiograph never needs float64 copies of itself. Whatever else goes wrong reading a file is an
ImageFileError naming it.

Grey-level tags that are not finite numbers are never used: a non-finite Rescale Slope or
Intercept is an error (the stored values mean nothing without them), a non-finite window is
ignored with a warning (a file without a window is shown over its own range, as DICOM allows).
Values that overflow, and tags that turn an image with detail into one flat grey, are errors
naming the tags: a blank image is never given to the model."""
from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..errors import ImageFileError

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
PIXEL_DATA = 0x7FE00010
HEADER_BYTES = 1 << 20  # inflated first, to read the image size before the rest
BLOCK_PIXELS = 1 << 20  # grey levels are computed this many pixels at a time

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
DECODER_HINT = ("another decoder may read it: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg "
                "(JPEG, JPEG-LS, JPEG 2000), or python-gdcm")


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImportError("reading DICOM files needs pydicom: pip install pydicom "
                          "(or pip install covidx[dicom])") from None
    return pydicom


def _error(name, reason):
    return ImageFileError(name, reason)


def dicom_to_pil(data, name, plan=None):
    """A DICOM file (io.BytesIO) as an 8-bit PIL image ('L', or 'RGB' for colour files).
    plan(name, (width, height), mode, decoder_bytes=n), if given, is told the image's size before
    its pixels are decoded (load_img's memory budget; it raises to refuse).

    Raises covidx.ImageFileError (a ValueError) naming the file and the reason when the file
    cannot be shown as one image, and ImportError when pydicom is not installed."""
    try:
        ds = read_dataset(data, name)
        check_grey_level_tags(ds, name)
        if plan is not None:
            rows, cols = _integer(ds, "Rows", 0, name), _integer(ds, "Columns", 0, name)
            stored = rows * cols * _integer(ds, "SamplesPerPixel", 1, name) * -(-_integer(ds, "BitsAllocated", 8, name) // 8)
            # while decoding: the stored array, pydicom's copy of it, the 8-bit result, blocks in float64
            plan(name, (cols, rows), "L" if ds.PhotometricInterpretation in MONOCHROME else "RGB",
                 decoder_bytes=2 * stored + rows * cols + 32 * BLOCK_PIXELS)
        pixels = stored_pixels(ds, name)
        colour = ds.PhotometricInterpretation not in MONOCHROME
        if pixels.shape[:2] != (ds.Rows, ds.Columns) or pixels.ndim != (3 if colour else 2):
            raise _error(name, "the pixel data holds an array of shape %s for one %dx%d image (more frames than "
                               "Number of Frames says?); covidx reads single radiographs"
                         % (pixels.shape, ds.Rows, ds.Columns))
        if not colour:
            return Image.fromarray(display_uint8(pixels, ds, name), "L")
        return Image.fromarray(np.asarray(pixels, np.uint8), "RGB")
    except (ImageFileError, ImportError):
        raise
    except MemoryError:
        raise _error(name, "out of memory decoding it") from None
    except Exception as e:  # pydicom and Pillow raise many types on odd files: the file's fault, said so
        raise _error(name, "cannot read this DICOM file: %s: %s" % (type(e).__name__, e)) from None


def _integer(ds, keyword, default, name):
    value = ds.get(keyword, default)
    try:
        return int(value or default)
    except (TypeError, ValueError):
        raise _error(name, "bad %s %r (expected an integer)" % (keyword, value)) from None


def check_pixel_count(ds, name):
    """Pillow's decompression-bomb rule, from the header: a warning past Image.MAX_IMAGE_PIXELS,
    an ImageFileError past twice that, before anything is decoded."""
    pixels = _integer(ds, "Rows", 0, name) * _integer(ds, "Columns", 0, name) * \
        _integer(ds, "NumberOfFrames", 1, name)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and pixels > 2 * limit:
        raise _error(name, "decompression bomb refused: the DICOM image has %d pixels, more than twice Pillow's "
                           "limit of %d (Image.MAX_IMAGE_PIXELS)" % (pixels, limit))
    if limit and pixels > limit:
        warnings.warn("%s: the DICOM image has %d pixels, more than Pillow's limit of %d: it could be a "
                      "decompression bomb" % (name, pixels, limit), Image.DecompressionBombWarning)
    return pixels


def _inflated(pydicom, raw, name):
    """(preamble, file meta, data set) of a Deflated Explicit VR Little Endian file, inflating its
    data set with a running limit: the first HEADER_BYTES give the image size, and the rest may
    be no larger than that image needs (pydicom would inflate everything first, whatever the size).
    None for other transfer syntaxes."""
    from pydicom import filereader
    from pydicom.filebase import DicomBytesIO

    if not hasattr(filereader, "_read_file_meta_info"):
        return None
    fp = io.BytesIO(raw)
    preamble = filereader.read_preamble(fp, False)
    meta = filereader._read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DEFLATED:
        return None
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = inflater.decompress(memoryview(raw)[fp.tell():], HEADER_BYTES)
        first = filereader.read_dataset(DicomBytesIO(head), False, True, stop_when=lambda tag, vr, n: tag == PIXEL_DATA)
        pixels = check_pixel_count(first, name)
        samples = _integer(first, "SamplesPerPixel", 1, name)
        bits = _integer(first, "BitsAllocated", 16, name)
        budget = pixels * samples * max(1, -(-bits // 8)) + len(head) + HEADER_BYTES
        rest = inflater.decompress(inflater.unconsumed_tail, budget + 1 - len(head)) if not inflater.eof else b""
    except zlib.error as e:
        raise _error(name, "damaged deflated data set: %s" % e) from None
    if len(head) + len(rest) > budget:
        raise _error(name, "the deflated data set inflates to more than its %dx%d image needs (%d bytes): a "
                           "decompression bomb" % (first.get("Rows", 0), first.get("Columns", 0), budget))
    stream = DicomBytesIO(head + rest)
    del head, rest
    return preamble, meta, filereader.read_dataset(stream, False, True)


def read_dataset(data, name):
    """The parsed dataset, with the checks that need no pixel decoding."""
    pydicom = _pydicom()
    data.seek(0)
    try:
        parts = _inflated(pydicom, data.getbuffer(), name)
        if parts is None:
            data.seek(0)
            ds = pydicom.dcmread(data)
        else:
            from pydicom.dataset import FileDataset

            ds = FileDataset(name, parts[2], parts[0], parts[1], False, True)
    except Exception as e:  # pydicom raises InvalidDicomError, EOFError, struct errors...
        if isinstance(e, ImageFileError):
            raise
        raise _error(name, "not a readable DICOM file: %s: %s" % (type(e).__name__, e)) from None
    if "PixelData" not in ds:
        raise _error(name, "the DICOM file holds no image (no Pixel Data; SOP class %s)"
                     % ds.get("SOPClassUID", "unknown"))
    frames = _integer(ds, "NumberOfFrames", 1, name)
    if frames > 1:
        raise _error(name, "a multi-frame DICOM file (%d frames); covidx reads single radiographs" % frames)
    check_pixel_count(ds, name)
    photometric = ds.get("PhotometricInterpretation", "")
    samples = _integer(ds, "SamplesPerPixel", 1, name)
    colour = samples == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
    if photometric not in MONOCHROME and not colour:
        raise _error(name, "photometric interpretation %r (%d samples per pixel) is not supported; "
                     "expected MONOCHROME1, MONOCHROME2 or RGB" % (photometric, samples))
    if colour and _integer(ds, "BitsAllocated", 8, name) != 8:
        raise _error(name, "colour DICOM with %s bits per sample; only 8-bit colour is supported"
                     % ds.get("BitsAllocated"))
    return ds


GREY_LEVEL_TAGS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")


def _values(ds, keyword):
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]


def check_grey_level_tags(ds, name):
    """Non-finite grey-level tags: Rescale Slope/Intercept refused (ImageFileError naming the tag),
    a window ignored with a warning (the image is then shown over its own range)."""
    def finite(keyword):
        try:
            return all(np.isfinite(float(v)) for v in _values(ds, keyword))
        except (TypeError, ValueError, OverflowError):
            return True  # not a number at all: the VOI/Modality LUT code names it

    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if not finite(keyword):
            raise _error(name, "bad %s %r (not a finite number); without it the stored values cannot be turned "
                               "into grey levels" % (keyword, str(ds.get(keyword))))
    if "WindowCenter" in ds and "WindowWidth" in ds and not (finite("WindowCenter") and finite("WindowWidth")):
        warnings.warn("%s: Window Center %r / Width %r are not finite numbers: ignored, the image is shown over its "
                      "own range" % (name, str(ds.WindowCenter), str(ds.WindowWidth)), RuntimeWarning)
        del ds.WindowCenter
        del ds.WindowWidth


def _tags_said(ds):
    said = ["%s %s" % (k, ds.get(k)) for k in GREY_LEVEL_TAGS if k in ds]
    if ds.get("VOILUTSequence"):
        said.append("a VOI LUT Sequence")
    return ", ".join(said) or "no rescale or window tags"


def stored_pixels(ds, name):
    """The decoded stored values (rows, columns) or (rows, columns, 3)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    syntax_name = "%s, %s" % (syntax.name, syntax) if syntax is not None else "unknown"
    try:
        return ds.pixel_array
    except Exception as e:  # a missing decoder (NotImplementedError, RuntimeError) or corrupt data
        if isinstance(e, MemoryError):
            raise
        hint = "; " + DECODER_HINT if syntax is not None and syntax.is_compressed else ""
        raise _error(name, "cannot decode the pixel data (transfer syntax %s): %s%s"
                     % (syntax_name, " ".join(str(e).split()), hint)) from None


def _lut_functions():
    """(apply_modality_lut, apply_voi): pydicom 3's names, or pydicom 2's."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi
    except ImportError:
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi
    return apply_modality_lut, apply_voi


def display_uint8(pixels, ds, name):
    """Stored values (rows, columns) -> 8-bit display greys, BLOCK_PIXELS at a time: each block
    goes through display_values in float64, and the image's own range (used without a window) is
    taken over all blocks first. Grey levels that overflow, or that make an image with detail one
    flat grey, are an ImageFileError naming the tags."""
    out = np.empty(pixels.shape, np.uint8)
    step = max(1, BLOCK_PIXELS // max(1, pixels.shape[1]))
    blocks = [slice(r, r + step) for r in range(0, pixels.shape[0], step)]
    value_range = None
    if not ds.get("VOILUTSequence") and not ("WindowCenter" in ds and "WindowWidth" in ds):
        apply_modality_lut, _ = _lut_functions()
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                ranges = [(float(np.min(v)), float(np.max(v))) for v in (apply_modality_lut(pixels[b], ds) for b in blocks)]
        except (ValueError, TypeError, NotImplementedError, IndexError, KeyError) as e:
            raise _error(name, "bad grey-level tags (Modality LUT): %s" % e) from None
        value_range = (min(lo for lo, _ in ranges), max(hi for _, hi in ranges))
        if not all(np.isfinite(value_range)):
            raise _error(name, "the grey-level tags (%s) give values that are not finite numbers (range %s .. %s)"
                         % (_tags_said(ds), value_range[0], value_range[1]))
    for b in blocks:
        with np.errstate(over="ignore", invalid="ignore"):
            shown = display_values(pixels[b], ds, name, value_range)
        if not np.isfinite(shown).all():
            raise _error(name, "the grey-level tags (%s) give values that are not finite numbers" % _tags_said(ds))
        out[b] = to_uint8(shown)
    lo, hi = int(out.min()), int(out.max())
    if lo == hi and pixels.size and np.min(pixels) != np.max(pixels):
        raise _error(name, "the grey-level tags (%s) turn an image with detail into one flat grey (%d): nothing "
                           "for a diagnosis" % (_tags_said(ds), lo))
    return out


def display_values(pixels, ds, name, value_range=None):
    """Stored values -> display values in [0, 1] (Modality LUT, VOI, MONOCHROME1 inversion).
    value_range: the (min, max) modality values of the whole image, for images without a window
    (default: those of `pixels`)."""
    apply_modality_lut, _ = _lut_functions()
    try:
        values = apply_modality_lut(pixels, ds)
        if not np.isfinite(values).all():  # e.g. a Rescale Slope of 1e308: every grey past the window
            raise _error(name, "the grey-level tags (%s) give modality values that are not finite numbers"
                         % _tags_said(ds))
        if ds.get("VOILUTSequence"):
            shown = voi_lut(values, ds)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            shown = window(values, first_value(ds.WindowCenter), first_value(ds.WindowWidth),
                           str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper())
        else:
            shown = full_range(values, value_range)
    except ImageFileError:
        raise
    except (ValueError, TypeError, NotImplementedError, IndexError, KeyError) as e:
        raise _error(name, "bad grey-level tags (Modality LUT / VOI LUT / window): %s" % e) from None
    if ds.PhotometricInterpretation == "MONOCHROME1":
        shown = 1.0 - shown
    return shown


def first_value(element_value):
    """Window Center/Width may hold several alternatives (multi-valued DS): the first is the default."""
    if isinstance(element_value, Sequence) and not isinstance(element_value, str):
        return float(element_value[0])
    return float(element_value)


def window(values, centre, width, function="LINEAR"):
    """PS3.3 C.11.2.1.2-3: modality values -> [0, 1] through a window."""
    x = np.asarray(values, np.float64)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError("Window Width %g must be positive" % width)
        return 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError("Window Width %g must be positive" % width)
        low, high, c, w = centre - width / 2, centre + width / 2, centre, width
    elif function == "LINEAR":
        if width < 1:
            raise ValueError("Window Width %g must be at least 1 for a LINEAR window" % width)
        c, w = centre - 0.5, width - 1.0
        low, high = c - w / 2, c + w / 2
    else:
        raise ValueError("VOI LUT Function %r is not one of LINEAR, LINEAR_EXACT, SIGMOID" % function)
    ramp = (x - c) / w + 0.5 if w > 0 else np.zeros_like(x)
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, ramp))


def voi_lut(values, ds):
    """The first VOI LUT Sequence item applied; its output scaled by the LUT's bit depth. Encoders
    often declare 16 bits for 12-bit tables, so the depth the entries actually use wins when smaller."""
    _, apply_voi = _lut_functions()
    if not np.issubdtype(np.asarray(values).dtype, np.integer):
        values = np.rint(values).astype(np.int64)  # the table is indexed by integer modality values
    out = np.asarray(apply_voi(values, ds), np.float64)
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    declared = int(descriptor[2])
    entries = np.arange(int(descriptor[1]), int(descriptor[1]) + (int(descriptor[0]) or 1 << 16))
    table = np.asarray(apply_voi(entries, ds))  # every entry the LUT can give
    used = max(8, int(np.ceil(np.log2(float(table.max()) + 1))))
    return out / float((1 << min(declared, used)) - 1)


def full_range(values, value_range=None):
    """Without a window: the image's own min..max (value_range, or that of values) becomes black..white."""
    x = np.asarray(values, np.float64)
    lo, hi = value_range if value_range is not None else (float(x.min()), float(x.max()))
    return np.zeros(x.shape) if hi <= lo else (x - lo) / (hi - lo)


def to_uint8(shown):
    return np.floor(np.clip(shown, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
