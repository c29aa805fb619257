"""keras.preprocessing: image."""
from . import image  # noqa: F401
