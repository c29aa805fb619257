"""Image files to arrays, as keras.preprocessing.image does it: Pillow decodes and converts,
nearest-neighbour resizing by default, no EXIF rotation, 16-bit grey clipped when converted to RGB.

`xray=True` is covidx's opt-in for radiographs: EXIF orientation is applied and 16-bit greyscale
images are scaled from their full value range to 8 bits instead of being clipped."""
from __future__ import annotations

import io
import os
import pathlib
import stat
import warnings

import numpy as np

# Pillow's filter constants by Keras's names (Pillow < 9.1 has them on Image itself).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")
COLOR_MODES = ("grayscale", "rgb", "rgba")
# The most bytes read for one image file: an uncompressed 16-bit radiograph of Pillow's largest
# allowed size is about 360 MB.
MAX_FILE_BYTES = 512 << 20


class ImageFileError(ValueError):
    """An image file that cannot be read or decoded. `.path` names the file and `.reason` says why.
    Every per-file failure is one (a missing file is also a FileNotFoundError, a file that may
    not be read also a PermissionError), so that on_error='skip' can leave the file out."""

    def __init__(self, path, reason):
        self.path, self.reason = path, reason
        super().__init__("%s: cannot read image (%s)" % (path, reason))

    def __reduce__(self):
        return type(self), (self.path, self.reason)


class ImageFileNotFoundError(ImageFileError, FileNotFoundError):
    """No file at the path (or a symbolic link to nothing)."""


class ImageFilePermissionError(ImageFileError, PermissionError):
    """The file may not be read."""


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


def _resample(interpolation):
    from PIL import Image

    if interpolation not in INTERPOLATIONS:
        raise ValueError("Invalid interpolation method %s specified. Supported methods are %s"
                         % (interpolation, ", ".join(INTERPOLATIONS)))
    return getattr(getattr(Image, "Resampling", Image), interpolation.upper())


def _open(path):
    """(PIL image, display name); the file is read whole first, as Keras does."""
    from PIL import Image

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
        from ..dicom import dicom_to_pil  # pydicom, an optional extra

        return dicom_to_pil(data, name), name
    try:
        img = Image.open(data)
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageFileError(name, "decompression bomb refused: %s" % e) from None
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError, struct.error...)
        if isinstance(e, MemoryError):
            raise
        reason = "zero-byte file" if data.getbuffer().nbytes == 0 else "%s: %s" % (type(e).__name__, e)
        raise ImageFileError(name, reason) from None
    return img, name


def is_dicom(data):
    """True for a DICOM Part 10 file ('DICM' after the 128-byte preamble)."""
    buf = data.getbuffer()
    return len(buf) >= 132 and bytes(buf[128:132]) == b"DICM"


def _sixteen_bit_to_8(img):
    """A 16-bit (or 32-bit integer) greyscale image scaled from its own min..max to 8 bits."""
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    scaled = np.zeros(a.shape, np.uint8) if hi <= lo else np.floor((a - lo) * (255.0 / (hi - lo)) + 0.5)
    return Image.fromarray(np.asarray(scaled, dtype=np.uint8), "L")


class _as_image_file_error:
    """Turns what a decoder raises after load() (on conversion or resizing) into an ImageFileError
    naming the file."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if kind is None or not issubclass(kind, Exception) or issubclass(kind, (ImageFileError, MemoryError)):
            return False
        raise ImageFileError(self.name, "%s: %s" % (kind.__name__, e)) from None


def _converted(img, color_mode, xray):
    if xray:
        from PIL import ImageOps

        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I") and color_mode != "grayscale":
            img = _sixteen_bit_to_8(img)
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
    img, name = _open(path)
    with _as_image_file_error(name):
        img = _converted(img, color_mode, xray)
    if target_size is not None:
        size = (int(target_size[1]), int(target_size[0]))  # PIL wants (width, height)
        if img.size != size:
            resample = _resample(interpolation)  # a bad name is the caller's error (as in Keras), not the file's
            with _as_image_file_error(name):
                if keep_aspect_ratio:
                    w, h = img.size
                    crop_h = min(h, (w * size[1]) // size[0])
                    crop_w = min(w, (h * size[0]) // size[1])
                    top, left = (h - crop_h) // 2, (w - crop_w) // 2
                    img = img.resize(size, resample, box=[left, top, left + crop_w, top + crop_h])
                else:
                    img = img.resize(size, resample)
    return img


def img_to_array(img, data_format=None, dtype=None):
    """A PIL image as a float32 (height, width, channels) array (channels first if asked); values
    are not scaled."""
    x = np.asarray(img, dtype=dtype or "float32")
    if x.ndim == 3:
        if data_format == "channels_first":
            x = x.transpose(2, 0, 1)
    elif x.ndim == 2:
        x = x.reshape((1,) + x.shape) if data_format == "channels_first" else x.reshape(x.shape + (1,))
    else:
        raise ValueError("Unsupported image shape: %s" % (x.shape,))
    return x


def array_to_img(x, data_format=None, scale=True, dtype=None):
    """A (height, width, channels) array as a PIL image; scale=True maps its min..max to 0..255."""
    from PIL import Image

    x = np.asarray(x, dtype=dtype or "float32")
    if x.ndim != 3:
        raise ValueError("Expected image array to have rank 3 (single image). Got array with shape: %s" % (x.shape,))
    if data_format == "channels_first":
        x = x.transpose(1, 2, 0)
    if scale:
        x = x - np.min(x)
        x_max = np.max(x)
        if x_max != 0:
            x /= x_max
        x *= 255
    channels = x.shape[2]
    if channels == 4:
        return Image.fromarray(x.astype("uint8"), "RGBA")
    if channels == 3:
        return Image.fromarray(x.astype("uint8"), "RGB")
    if channels == 1:
        if np.max(x) > 255:
            return Image.fromarray(x[:, :, 0].astype("int32"), "I")
        return Image.fromarray(x[:, :, 0].astype("uint8"), "L")
    raise ValueError("Unsupported channel number: %d" % channels)


def save_img(path, x, data_format=None, file_format=None, scale=True, **kwargs):
    """Saves an image array to a file (Pillow picks the format from the name unless given)."""
    img = array_to_img(x, data_format=data_format, scale=scale)
    if img.mode == "RGBA" and (file_format == "jpg" or file_format == "jpeg"):
        warnings.warn("The JPG format does not support RGBA images, converting to RGB.")
        img = img.convert("RGB")
    img.save(path, format=file_format, **kwargs)


from .generator import ImageDataGenerator, apply_affine_transform, apply_brightness_shift, apply_channel_shift  # noqa: E402,F401
from .iterators import DataFrameIterator, DirectoryIterator, Iterator, NumpyArrayIterator  # noqa: E402,F401
