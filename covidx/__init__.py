"""covidx: ResNet50 chest X-ray diagnosis on ordinary CPUs, with a Keras-compatible front."""
__version__ = "0.1.0"

from . import _core  # noqa: E402  (the C engine; loads the bundled OpenBLAS)
from ._config import _default_threads, config, get_num_threads, set_num_threads, show_config  # noqa: E402
from .model import Model, load_model  # noqa: E402

set_num_threads(min(64, _default_threads()))

__all__ = ["Model", "load_model", "set_num_threads", "get_num_threads", "show_config", "config", "__version__"]
