"""keras.losses."""
from ..losses import (BinaryCrossentropy, CategoricalCrossentropy, Loss, SparseCategoricalCrossentropy,  # noqa: F401
                      binary_crossentropy, categorical_crossentropy, get, sparse_categorical_crossentropy)
