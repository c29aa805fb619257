"""keras.models: load_model, Model (functional: Model(inputs=..., outputs=...))."""
from ..functional import Model  # noqa: F401
from ..model import load_model  # noqa: F401
