"""covidx: ResNet50 chest X-ray diagnosis on ordinary CPUs, with a Keras-compatible front.

A first example: the shipped model on the sample X-rays bundled with covidx, as a Keras notebook
would run it (research use only; not for clinical decisions)::

    import covidx
    from covidx.data import SAMPLES_DIR
    from covidx.preprocessing.image import ImageDataGenerator

    model = covidx.load_model()            # the shipped model (class names COV19, Normal)
    it = ImageDataGenerator(rescale=1. / 255).flow_from_directory(
        SAMPLES_DIR, target_size=(224, 224), shuffle=False)
    loss, accuracy = model.evaluate(it)
    probabilities = model.predict(it)      # (8, 2): P(COV19), P(Normal) per image

Keras files (.keras, .h5) and PyTorch ResNet50 state_dicts load the same way:
covidx.load_model('model.keras'). From a shell: `covidx evaluate FOLDER`, `covidx predict FILES`."""
from ._version import __version__  # noqa: E402

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
from .model import Model  # noqa: E402
from .saving import load_model  # noqa: E402
from ._settings import settings  # noqa: E402
from .preprocessing.image import ImageFileError  # noqa: E402
from .formats import ModelFileError  # noqa: E402
from .unfamiliar import fit_unfamiliar  # noqa: E402
from .evaluation import true_labels  # noqa: E402
from . import keras, metrics, losses, optimizers, callbacks  # noqa: E402,F401

set_num_threads(min(64, _default_threads()))

__all__ = ["Model", "load_model", "ImageFileError", "ModelFileError", "settings", "keras", "metrics", "losses", "optimizers", "callbacks", "set_num_threads", "get_num_threads", "show_config", "config", "fit_unfamiliar", "true_labels", "__version__"]
