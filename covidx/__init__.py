"""covidx: ResNet50 chest X-ray diagnosis on ordinary CPUs, with a Keras-compatible front."""
__version__ = "0.1.0"

try:
    from . import _core  # noqa: E402  (the C engine; loads the bundled OpenBLAS)
except ImportError as exc:  # a source checkout shadowing the installed package is the usual cause
    import os as _os

    _here = _os.path.dirname(_os.path.abspath(__file__))
    if _os.path.exists(_os.path.join(_here, "..", "setup.py")):
        raise ImportError(
            f"covidx was imported from its source tree {_here}, which has no built C engine "
            f"({exc}). Python finds this folder first because the current directory is the "
            f"checkout: change to another directory to use the installed covidx, or build the "
            f"engine in place with `python setup.py build_ext --inplace`") from exc
    raise
from ._config import _default_threads, config, get_num_threads, set_num_threads, show_config  # noqa: E402
from .model import Model, load_model  # noqa: E402
from ._settings import settings  # noqa: E402
from .preprocessing.image import ImageFileError  # noqa: E402
from .formats import ModelFileError  # noqa: E402
from .unfamiliar import fit_unfamiliar  # noqa: E402
from . import keras, metrics, losses, optimizers, callbacks  # noqa: E402,F401

set_num_threads(min(64, _default_threads()))

__all__ = ["Model", "load_model", "ImageFileError", "ModelFileError", "settings", "keras", "metrics", "losses", "optimizers", "callbacks", "set_num_threads", "get_num_threads", "show_config", "config", "fit_unfamiliar", "__version__"]
