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
