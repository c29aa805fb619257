"""Image files to PIL images, as keras.preprocessing.image does it: Pillow decodes and converts,
nearest-neighbour resizing by default, no EXIF rotation, 16-bit grey clipped when converted to RGB.

`xray=True` is covidx's opt-in for radiographs: EXIF orientation is applied and 16-bit greyscale
images are scaled from their full value range to 8 bits instead of being clipped.

The image pipeline's reader (load_img, and the target_size check the iterators share): the file
checks (a regular file, at most MAX_FILE_BYTES), the decoders (Pillow's in-process plugins, and
dicom.py for DICOM), and the memory budget every decoding thread shares (MAX_DECODE_BYTES).
It imports only the errors module and dicom.py; the public names are in image.py, Keras's
import path, which also reads and sets these limits."""
from __future__ import annotations

import ctypes
import io
import os
import pathlib
import stat
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageFileError, ImageFileNotFoundError, ImageFilePermissionError
from .dicom import dicom_to_pil  # reads pydicom only for a DICOM file (an optional extra)

# Pillow's filter constants by Keras's names (Pillow < 9.1 has them on Image itself).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")
COLOR_MODES = ("grayscale", "rgb", "rgba")
# The most bytes read for one image file: an uncompressed 16-bit radiograph of Pillow's largest
# allowed size is about 360 MB.
MAX_FILE_BYTES = 512 << 20
# The formats covidx decodes, each by a Pillow plugin that decodes in this process: Keras's (PNG,
# JPEG, BMP, PPM, TIFF), GIF and WebP. Image.open() without a list tries every plugin, and Pillow's
# EPS plugin runs Ghostscript (`gs` from PATH) on the file: a file's content must never start a
# program. DICOM is read by dicom.py.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "PPM")
# Memory for decoding. Each image's peak (its decoded pixels, conversion and resizing) is estimated
# from its header before a pixel is decoded: an image that needs more than this is refused, and the
# images being decoded at once, in every thread of the process, together reserve at most this much.
MAX_DECODE_BYTES = 640 << 20
BLOCK_PIXELS = 1 << 20  # 16-bit images are scaled to 8 bits this many pixels at a time


def _nonblocking(path, flags):
    # a FIFO opened for reading would wait for a writer; opened non-blocking it is seen and refused
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _file_kind(mode):
    for test, kind in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _read_file(path, name):
    """The bytes of a regular file (after following links), at most MAX_FILE_BYTES."""
    try:
        with open(path, "rb", opener=_nonblocking) as f:
            mode, size = os.fstat(f.fileno())[stat.ST_MODE], os.fstat(f.fileno()).st_size
            if stat.S_ISDIR(mode):
                raise ImageFileError(name, "it is a directory")
            if not stat.S_ISREG(mode):
                raise ImageFileError(name, "%s, not a regular file; covidx reads only files" % _file_kind(mode))
            if size > MAX_FILE_BYTES:
                raise ImageFileError(name, "%d bytes, more than covidx reads for one image (%d)" % (size, MAX_FILE_BYTES))
            data = f.read(size + 1)  # read(n) reserves n bytes: the file's size, not the 512 MB limit
    except IsADirectoryError:
        raise ImageFileError(name, "it is a directory") from None
    except FileNotFoundError:
        reason = "no such image file" + (" (a symbolic link to nothing)" if os.path.islink(path) else "")
        raise ImageFileNotFoundError(name, reason) from None
    except PermissionError:
        raise ImageFilePermissionError(name, "permission denied") from None
    except OSError as e:
        raise ImageFileError(name, e.strerror or str(e)) from None
    if len(data) > size:
        raise ImageFileError(name, "the file grew while it was read (from %d bytes)" % size)
    return data


class _ArgumentError(ValueError):
    """The caller's argument is wrong, not the file: never an ImageFileError."""


def _resample(interpolation):
    if interpolation not in INTERPOLATIONS:
        raise _ArgumentError("Invalid interpolation method %s specified. Supported methods are %s"
                         % (interpolation, ", ".join(INTERPOLATIONS)))
    return getattr(getattr(Image, "Resampling", Image), interpolation.upper())


def _open(path, decoding=None):
    """(PIL image, display name); the file is read whole first, as Keras does. decoding (a
    _Decoding) plans and reserves the image's memory from its header, before it is decoded."""
    if isinstance(path, io.BytesIO):
        name, data = "<BytesIO>", path
    elif isinstance(path, (str, bytes, pathlib.Path)):
        if isinstance(path, pathlib.Path):
            path = str(path.resolve())
        name = os.fsdecode(path)
        data = io.BytesIO(_read_file(path, name))
    else:
        raise TypeError("path should be path-like or io.BytesIO, not %s" % type(path))
    if is_dicom(data):
        return dicom_to_pil(data, name, decoding and decoding.plan), name
    try:
        img = Image.open(data, formats=_pil_formats())
        if decoding is not None:
            decoding.plan(name, img.size, img.mode, img)
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageFileError(name, "decompression bomb refused: %s" % e) from None
    except Image.UnidentifiedImageError:
        reason = ("zero-byte file" if data.getbuffer().nbytes == 0 else
                  "not an image covidx reads: it reads %s and DICOM files" % ", ".join(PIL_FORMATS))
        raise ImageFileError(name, reason) from None
    except ImageFileError:
        raise
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError, struct.error...)
        if isinstance(e, MemoryError):
            raise ImageFileError(name, "out of memory decoding it") from None
        reason = "zero-byte file" if data.getbuffer().nbytes == 0 else "%s: %s" % (type(e).__name__, e)
        raise ImageFileError(name, reason) from None
    return img, name


def _pil_formats():
    Image.init()  # registers the plugins (opens nothing): WebP is there only where Pillow was built with it
    return [f for f in PIL_FORMATS if f in Image.OPEN]


def _bytes_per_pixel(mode):
    """What Pillow stores per pixel: one byte for 1, L and P, two for 16-bit grey, four otherwise
    (multi-band images are stored four bytes a pixel)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def check_target_size(target_size, argument="target_size"):
    """(width, height) for PIL, or None; a target_size that cannot be an image size is the caller's
    ValueError, named as such (not an IndexError, a MemoryError or every file's fault)."""
    if target_size is None:
        return None
    try:
        h, w = target_size
    except (TypeError, ValueError):
        raise ValueError("%s: expected (height, width), got %r" % (argument, target_size)) from None
    for v in (h, w):
        if (isinstance(v, bool) or not isinstance(v, (int, np.integer, float, np.floating))
                or not (1 <= v < 1 << 31 and v == int(v))):
            raise ValueError("%s: expected two positive integers (height, width), got %r" % (argument, target_size))
    h, w = int(h), int(w)
    if int(h) * int(w) * 16 > MAX_DECODE_BYTES:  # the image as float32 RGBA
        raise ValueError("%s: %d x %d images need %d MB each as arrays, more than covidx's per-image memory "
                         "budget of %d MB" % (argument, h, w, int(h) * int(w) * 16 >> 20, MAX_DECODE_BYTES >> 20))
    return int(w), int(h)


class _Memory:
    """Bytes reserved by the images being decoded now, in every thread of this process."""

    def __init__(self):
        self.used, self.cond = 0, threading.Condition()

    def reserve(self, nbytes):
        with self.cond:
            while self.used and self.used + nbytes > MAX_DECODE_BYTES:
                self.cond.wait(0.1)  # short waits keep Ctrl-C responsive
            self.used += nbytes

    def release(self, nbytes):
        with self.cond:
            self.used -= nbytes
            self.cond.notify_all()


_memory = _Memory()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: globals().__setitem__("_memory", _Memory()))


def _resize_first(mode, size, interpolation):
    """Resizing before the colour conversion gives the same pixels when the resampling picks
    pixels (nearest) or the image is plain grey, and then converts only the small image."""
    return size is not None and (interpolation == "nearest" or mode == "L")


class _Decoding:
    """One image's decoding: its peak memory planned from its header (JPEG decoded at a reduced
    scale where the full one would not fit: draft), refused past MAX_DECODE_BYTES, and reserved
    from what the process's decoding threads share until the image is done."""

    def __init__(self, color_mode, size, xray, interpolation):
        self.color_mode, self.size, self.xray, self.interpolation = color_mode, size, xray, interpolation
        self.held, self.name = 0, None
        self.turned = xray  # an EXIF orientation to apply, as far as the header tells

    def need(self, size, mode, decoder_bytes=0):
        """Peak bytes of decoding, correcting, converting and resizing a size (w, h) image of this
        mode; decoder_bytes: what the decoder holds besides the image while it decodes."""
        w, h = size
        pixels = w * h
        now = pixels * _bytes_per_pixel(mode)
        peak = now + decoder_bytes
        if self.xray:
            if self.turned:  # EXIF orientation: a transposed copy
                peak = max(peak, 2 * now)
            if mode in ("I;16", "I;16B", "I;16L", "I") and self.color_mode != "grayscale":  # to 8 bits, in blocks
                peak = max(peak, now + pixels + 16 * BLOCK_PIXELS)
                now, mode = pixels, "L"
        if self.size is None or not _resize_first(mode, self.size, self.interpolation):
            target = {"grayscale": ("L", "I;16", "I"), "rgb": ("RGB",), "rgba": ("RGBA",)}[self.color_mode]
            if mode not in target:
                out = _bytes_per_pixel(target[0])
                wide = mode in ("I", "F") or mode.startswith("I;16")  # converted through a 32-bit image
                peak = max(peak, now + pixels * (out + (4 if wide and out > 1 else 0)))
                now = pixels * out
        if self.size is not None:
            tw, th = self.size
            peak = max(peak, now + 4 * (tw * h + tw * th))  # resizing: one pass per direction
        return peak

    def plan(self, name, size, mode, img=None, decoder_bytes=0):
        self.name = name
        if self.xray:  # a DICOM file (no img) has no EXIF orientation
            self.turned = img is not None and _orientation(img, before_decoding=True) not in (None, 1)
        need = self.need(size, mode, decoder_bytes)
        if need > MAX_DECODE_BYTES and img is not None and self.size is not None and img.format in ("JPEG", "MPO"):
            img.draft(None, self.size)  # DCT scaling while decoding: 1/2, 1/4 or 1/8, never below the target
            size, mode = img.size, img.mode
            need = self.need(size, mode)
        if need > MAX_DECODE_BYTES:
            raise ImageFileError(name, "decoding this %d x %d %s image needs about %d MB, more than covidx's "
                                       "per-image memory budget of %d MB" % (size[0], size[1], mode, need >> 20,
                                                                            MAX_DECODE_BYTES >> 20))
        _memory.reserve(need)
        self.held = need

    def release(self):
        if self.held:
            _memory.release(self.held)
            if self.held >= TRIM_BYTES:
                _return_freed_memory()
            self.held = 0


TRIM_BYTES = 64 << 20
_malloc_trim = None


def _return_freed_memory():
    """glibc keeps freed memory in the arena of the thread that freed it: without this, every
    decoding thread would go on holding the largest image it has decoded."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


def is_dicom(data):
    """True for a DICOM Part 10 file ('DICM' after the 128-byte preamble)."""
    buf = data.getbuffer()
    return len(buf) >= 132 and bytes(buf[128:132]) == b"DICM"


def _sixteen_bit_to_8(img):
    """A 16-bit (or 32-bit integer) greyscale image scaled from its own min..max to 8 bits, a block of
    rows at a time (float64 for one block, never for the whole image)."""
    w, h = img.size
    step = max(1, BLOCK_PIXELS // max(1, w))
    blocks = [(r, min(h, r + step)) for r in range(0, h, step)]

    def block(r0, r1, dtype=None):
        return np.asarray(img.crop((0, r0, w, r1)), dtype=dtype)

    lo = min(float(block(*b).min()) for b in blocks)
    hi = max(float(block(*b).max()) for b in blocks)
    out = np.zeros((h, w), np.uint8)
    if hi > lo:
        for r0, r1 in blocks:
            out[r0:r1] = np.floor((block(r0, r1, np.float64) - lo) * (255.0 / (hi - lo)) + 0.5)
    return Image.fromarray(out, "L")


class _as_image_file_error:
    """Turns what a decoder raises after load() (on conversion or resizing) into an ImageFileError
    naming the file."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if kind is None or not issubclass(kind, Exception) or issubclass(kind, (ImageFileError, _ArgumentError)):
            return False
        if issubclass(kind, MemoryError):  # one image's failure, like any other: the other files go on
            raise ImageFileError(self.name, "out of memory decoding it") from None
        raise ImageFileError(self.name, "%s: %s" % (kind.__name__, e)) from None


def _orientation(img, before_decoding=False):
    """The EXIF orientation (1: upright). Before decoding, a PNG tells it only if its eXIf chunk
    comes before the pixels (Pillow would decode the image to look further): None if it does not."""
    if before_decoding and img.format == "PNG" and "exif" not in img.info:
        return None
    return img.getexif().get(0x0112, 1)


def _xray_corrected(img, color_mode, decoding=None):
    """xray=True: EXIF orientation applied; 16/32-bit grey scaled from its full range to 8 bits."""
    if _orientation(img) not in (None, 1):  # exif_transpose copies even an upright image
        if decoding is not None and not decoding.turned:  # an orientation found only after the pixels
            decoding.turned = True
            need = decoding.need(img.size, img.mode)
            if need > MAX_DECODE_BYTES:
                raise ImageFileError(decoding.name, "applying its EXIF orientation needs about %d MB, more than "
                                                    "covidx's per-image memory budget of %d MB"
                                     % (need >> 20, MAX_DECODE_BYTES >> 20))
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I") and color_mode != "grayscale":
        img = _sixteen_bit_to_8(img)
    return img


def _converted(img, color_mode):
    if color_mode == "grayscale":
        if img.mode not in ("L", "I;16", "I"):
            img = img.convert("L")
    elif color_mode == "rgba":
        if img.mode != "RGBA":
            img = img.convert("RGBA")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return img


def load_img(path, color_mode="rgb", target_size=None, interpolation="nearest", keep_aspect_ratio=False, *,
             grayscale=False, xray=False):
    """Loads an image file (path or io.BytesIO) into a PIL image, as keras.utils.load_img.

    color_mode: 'grayscale' (L, or 16/32-bit grey kept as it is), 'rgb' or 'rgba'.
    target_size: (height, width) or None; interpolation: a Keras/Pillow filter name.
    keep_aspect_ratio: centre-crop to the target aspect ratio before resizing.
    grayscale: the old Keras spelling of color_mode='grayscale'.
    xray: covidx's opt-in corrections for radiographs (EXIF orientation; 16-bit grey scaled from its
        full range instead of clipped). Off by default, for parity with Keras."""
    if grayscale:
        warnings.warn("grayscale is deprecated. Please use color_mode = 'grayscale'")
        color_mode = "grayscale"
    if color_mode not in COLOR_MODES:
        raise ValueError('color_mode must be "grayscale", "rgb", or "rgba"')
    size = check_target_size(target_size)
    decoding = _Decoding(color_mode, size, xray, interpolation)
    try:
        img, name = _open(path, decoding)
        with _as_image_file_error(name):
            if xray:
                img = _xray_corrected(img, color_mode, decoding)
            early = _resize_first(img.mode, size, interpolation)
            if not early:
                img = _converted(img, color_mode)
            if size is not None and img.size != size:
                resample = _resample(interpolation)  # a bad name is the caller's error (as in Keras), when resizing
                if keep_aspect_ratio:
                    w, h = img.size
                    crop_h = min(h, (w * size[1]) // size[0])
                    crop_w = min(w, (h * size[0]) // size[1])
                    top, left = (h - crop_h) // 2, (w - crop_w) // 2
                    img = img.resize(size, resample, box=[left, top, left + crop_w, top + crop_h])
                else:
                    img = img.resize(size, resample)
            if early:
                img = _converted(img, color_mode)
    finally:
        decoding.release()
    return img
