"""tf.keras's import paths, served by covidx, so that a Keras notebook runs after changing only its
import lines (`from covidx.keras.preprocessing.image import ImageDataGenerator`, or
`import covidx as tf` and then `tf.keras....`). covidx installs no package named tensorflow or keras."""
from . import (applications, backend, callbacks, layers, losses, metrics, models, optimizers,  # noqa: F401
               preprocessing, utils)
from ..functional import Input, Sequential  # noqa: F401
from .models import Model  # noqa: F401  (covidx.Model: Model(inputs=..., outputs=...) is a functional model)
