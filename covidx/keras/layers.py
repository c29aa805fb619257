"""keras.layers: the layers of a transfer-learning head on a covidx ResNet50 backbone, and Input."""
from ..functional import Input  # noqa: F401
from ..head import (Activation, BatchNormalization, Dense, Dropout, Flatten, GlobalAveragePooling2D,  # noqa: F401
                    GlobalMaxPooling2D, Layer)
