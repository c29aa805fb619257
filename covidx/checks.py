"""The checks of arguments that several entry points share, each in one place, each raising an
error that names the argument."""
from __future__ import annotations

import numpy as np

from . import _config


def one_of(value, accepted, name):
    """value when it is one of accepted, else a ValueError naming the argument and the choices."""
    if value not in accepted:
        choices = ", ".join(repr(a) for a in accepted[:-1]) + " or " + repr(accepted[-1]) if len(accepted) > 1 \
            else repr(accepted[0])
        raise ValueError("%s: expected %s, got %r" % (name, choices, value))
    return value


def precision(value, name="precision"):
    """A precision the engine's kernels compute in (the C kernel table says which: 'fp32',
    'bf16', ...)."""
    return one_of(value, _config.precisions(), name)


def positive_int(value, name, allow_none=True):
    """value as an int (NumPy integers too), or a ValueError naming the argument."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError("%s: expected a positive integer%s, got %r" % (name, " or None" if allow_none else "", value))
    return int(value)


def images(x, name="x", convert=True):
    """x as a float32 C-contiguous (batch, height, width, 3) array, or a clear error. convert=False:
    x checked but left as it is (a memmap, a broadcast view), for conversion a batch at a time."""
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        else:
            raise TypeError("%s: expected a numpy array of images (batch, height, width, 3), got %s"
                            % (name, type(x).__name__))
    if x.dtype.kind not in "biuf":
        raise TypeError("%s: expected a numeric array, got dtype %s" % (name, x.dtype))
    if x.ndim != 4:
        hint = " (one image? use x[None])" if x.ndim == 3 else ""
        raise ValueError("%s: expected 4 dimensions (batch, height, width, 3), got shape %s%s" % (name, x.shape, hint))
    if x.shape[0] == 0:
        raise ValueError("%s: empty batch (shape %s)" % (name, x.shape))
    if x.shape[3] != 3:
        raise ValueError("%s: expected 3 channels (RGB) in the last axis, got shape %s" % (name, x.shape))
    if x.shape[1] < 32 or x.shape[2] < 32:
        raise ValueError("%s: images must be at least 32x32, got shape %s" % (name, x.shape))
    if x.dtype.kind == "f":  # (integers are always finite in float32) checked in chunks: no float32 copy of x
        with np.errstate(over="ignore"):  # a float64 beyond float32's range is reported as infinite below
            finite = np.concatenate([np.isfinite(x[i:i + 64].astype(np.float32)).all(axis=(1, 2, 3))
                                     for i in range(0, len(x), 64)])
    else:
        finite = np.ones(len(x), bool)
    if convert:
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not finite.all():  # the engine's ReLU and max pool would drop NaN and give a confident answer
        bad = np.flatnonzero(~finite)
        raise ValueError("%s: NaN or infinite pixel values in %d of %d images (first: image %d); covidx gives no "
                         "diagnosis for them" % (name, len(bad), len(x), bad[0]))
    return x
