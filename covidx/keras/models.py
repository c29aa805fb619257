"""keras.models: load_model, Model (Model(inputs=..., outputs=...) builds a functional model; every
covidx model is an instance of it) and Sequential."""
from ..functional import Sequential  # noqa: F401
from ..model import Model  # noqa: F401
from ..saving import load_model  # noqa: F401
