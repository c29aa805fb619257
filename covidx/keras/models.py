"""keras.models: load_model, Model."""
from ..model import Model, load_model  # noqa: F401
