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
is not something covidx can guess."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
    from .preprocessing.image import ImageFileError

    return ImageFileError(name, reason)


def dicom_to_pil(data, name):
    """A DICOM file (io.BytesIO) as an 8-bit PIL image ('L', or 'RGB' for colour files).

    Raises covidx.ImageFileError (a ValueError) naming the file and the reason when the file
    cannot be shown as one image, and ImportError when pydicom is not installed."""
    from PIL import Image

    ds = read_dataset(data, name)
    pixels = stored_pixels(ds, name)
    if ds.PhotometricInterpretation in MONOCHROME:
        return Image.fromarray(to_uint8(display_values(pixels, ds, name)), "L")
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def read_dataset(data, name):
    """The parsed dataset, with the checks that need no pixel decoding."""
    pydicom = _pydicom()
    data.seek(0)
    try:
        ds = pydicom.dcmread(data)
    except Exception as e:  # pydicom raises InvalidDicomError, EOFError, struct errors...
        raise _error(name, "not a readable DICOM file: %s: %s" % (type(e).__name__, e)) from None
    if "PixelData" not in ds:
        raise _error(name, "the DICOM file holds no image (no Pixel Data; SOP class %s)"
                     % ds.get("SOPClassUID", "unknown"))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise _error(name, "a multi-frame DICOM file (%d frames); covidx reads single radiographs" % frames)
    photometric = ds.get("PhotometricInterpretation", "")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    colour = samples == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
    if photometric not in MONOCHROME and not colour:
        raise _error(name, "photometric interpretation %r (%d samples per pixel) is not supported; "
                     "expected MONOCHROME1, MONOCHROME2 or RGB" % (photometric, samples))
    if colour and int(ds.get("BitsAllocated", 8)) != 8:
        raise _error(name, "colour DICOM with %s bits per sample; only 8-bit colour is supported"
                     % ds.get("BitsAllocated"))
    return ds


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


def display_values(pixels, ds, name):
    """Stored values -> display values in [0, 1] (Modality LUT, VOI, MONOCHROME1 inversion)."""
    apply_modality_lut, _ = _lut_functions()
    try:
        values = apply_modality_lut(pixels, ds)
        if ds.get("VOILUTSequence"):
            shown = voi_lut(values, ds)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            shown = window(values, first_value(ds.WindowCenter), first_value(ds.WindowWidth),
                           str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper())
        else:
            shown = full_range(values)
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


def full_range(values):
    """Without a window: the image's own min..max becomes black..white."""
    x = np.asarray(values, np.float64)
    lo, hi = float(x.min()), float(x.max())
    return np.zeros(x.shape) if hi <= lo else (x - lo) / (hi - lo)


def to_uint8(shown):
    return np.floor(np.clip(shown, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
