"""Keras-compatible preprocessing: covidx.preprocessing.image."""
from . import image  # noqa: F401
