"""The one error type model-file readers raise: a ValueError whose message starts with the file."""
from __future__ import annotations


class ModelFileError(ValueError):
    """A model file covidx cannot use: truncated, corrupted, hostile, of the wrong shape, or holding a
    network other than ResNet50 + a Dense head. The message names the file and the problem."""


def fail(where, why):
    raise ModelFileError("%s: %s" % (where, why))
