"""Image files to arrays, as keras.preprocessing.image does it (PIL; nearest-neighbour resizing
by default)."""
from __future__ import annotations

import os

import numpy as np

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")


def load_img(path, color_mode="rgb", target_size=None, interpolation="nearest", keep_aspect_ratio=False):
    """Loads an image file as a PIL image: color_mode 'rgb', 'rgba' or 'grayscale'; target_size
    (height, width) resizes with the named PIL filter."""
    from PIL import Image, UnidentifiedImageError

    if color_mode not in ("rgb", "rgba", "grayscale"):
        raise ValueError("color_mode: expected 'rgb', 'rgba' or 'grayscale', got %r" % (color_mode,))
    if interpolation not in INTERPOLATIONS:
        raise ValueError("interpolation: expected one of %s, got %r" % (", ".join(INTERPOLATIONS), interpolation))
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError("%s: cannot read image (%s)" % (path, e)) from None
    mode = {"rgb": "RGB", "rgba": "RGBA", "grayscale": "L"}[color_mode]
    if img.mode != mode:
        img = img.convert(mode)
    if target_size is not None:
        height, width = target_size
        if (img.width, img.height) != (width, height):
            if keep_aspect_ratio:
                crop_h = min(img.height, int(img.width * height / width))
                crop_w = min(img.width, int(img.height * width / height))
                top, left = (img.height - crop_h) // 2, (img.width - crop_w) // 2
                img = img.crop((left, top, left + crop_w, top + crop_h))
            filters = getattr(Image, "Resampling", Image)  # Pillow < 9.1 has the names on Image
            img = img.resize((width, height), getattr(filters, interpolation.upper()))
    return img


def img_to_array(img, data_format=None, dtype="float32"):
    """A PIL image as a (height, width, channels) array."""
    x = np.asarray(img, dtype=dtype)
    if x.ndim == 2:
        x = x[:, :, None]
    if data_format == "channels_first":
        x = x.transpose(2, 0, 1)
    return x
