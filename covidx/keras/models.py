"""keras.models: load_model, Model (Model(inputs=..., outputs=...) builds a functional model; every
covidx model is an instance of it) and Sequential."""
from ..functional import Sequential  # noqa: F401
from ..model import Model, load_model  # noqa: F401
