"""Scoring image files by path, the part `covidx predict` (__main__.py) and Dask's predict_files
(distributed.py) share: which files a list of paths and folders names, reading a batch of them
into arrays with each unreadable file's error recorded (one bad file costs only its own result),
and the names of the model's outputs and of the result columns. Needs neither Dask nor pandas."""
from __future__ import annotations

import os
from collections import namedtuple

import numpy as np

from .errors import ImageFileError
from .preprocessing.arrays import img_to_array
from .preprocessing.reader import load_img

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".dcm")
# The columns of a result table besides one probability column per class.
RESULT_COLUMNS = ("path", "predicted", "unfamiliar", "unfamiliar_score", "error")

Batch = namedtuple("Batch", "arrays errors images")
Batch.__doc__ = """read_batch's result: arrays {path: float32 (h, w, 3) array of 0..255 pixels},
errors {path: why the file could not be read}, images {path: PIL image} (keep_images only)."""


def image_files(paths):
    """The files to score: paths as given, with folders searched recursively (sorted) for files with
    an image or DICOM extension."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        else:
            out.append(p)
    return out


def read_batch(paths, target_size=(224, 224), *, keep_images=False, every_error=False):
    """Each file read with load_img at target_size (RGB) and made an array: a Batch. A file that
    cannot be read (an ImageFileError, or an OSError) is recorded in errors and the others are read.

    every_error: record any exception as its file's error, a missing optional package (pydicom)
    too: Dask's workers, whose every row must come back. Otherwise those raise, so that the
    command line says what to install, and a fault in covidx is not passed off as a bad file.
    keep_images: also keep the PIL images (Grad-CAM overlays are drawn on them)."""
    arrays, errors, images = {}, {}, {}
    for path in paths:
        try:
            img = load_img(path, target_size=target_size)
            arrays[path] = img_to_array(img)
        except (ImageFileError, OSError) as e:
            errors[path] = str(e)
            continue
        except ImportError as e:
            if not every_error:
                raise
            errors[path] = str(e)
            continue
        except Exception as e:
            if not every_error:
                raise
            errors[path] = "%s: %s" % (type(e).__name__, e)  # a damaged file must not cost the others
            continue
        if keep_images:
            images[path] = img
    return Batch(arrays, errors, images)


def output_names(model):
    """A name per output unit: the model's class names, else '0', '1', ... (a lone sigmoid unit
    gives P(class 1), so it is '1')."""
    units = model.output_shape[-1]
    if model.class_names:
        return list(model.class_names)
    return [str(i) for i in range(units)] if units > 1 else ["1"]


def predicted_name(probs, names):
    """The predicted class; a lone sigmoid unit above 0.5 calls its class, else the other one."""
    if len(probs) == 1:
        if probs[0] > 0.5:
            return names[0]
        return "0" if names[0] == "1" else "not " + names[0]
    return names[int(np.argmax(probs))]


def probability_columns(names):
    """A probability column per class, named by the class (prefixed 'p_' if a name is taken)."""
    return ["p_" + n if n in RESULT_COLUMNS else n for n in names]
