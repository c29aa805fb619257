"""keras.models: load_model, Model (functional: Model(inputs=..., outputs=...)) and Sequential."""
from ..functional import Model, Sequential  # noqa: F401
from ..model import load_model  # noqa: F401
