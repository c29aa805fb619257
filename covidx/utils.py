"""keras.utils helpers that notebooks call beside the model: to_categorical and set_random_seed."""
from __future__ import annotations

import random

import numpy as np


def to_categorical(x, num_classes=None):
    """Keras's to_categorical: integer labels as one-hot rows (float64, as Keras returns them); a
    trailing axis of size 1 is dropped first; num_classes defaults to max(x) + 1."""
    x = np.array(x, dtype="int64")
    input_shape = x.shape
    if input_shape and input_shape[-1] == 1 and len(input_shape) > 1:
        input_shape = tuple(input_shape[:-1])
    x = x.reshape(-1)
    if not num_classes:
        num_classes = np.max(x) + 1
    categorical = np.zeros((x.shape[0], num_classes))
    categorical[np.arange(x.shape[0]), x] = 1
    return np.reshape(categorical, input_shape + (num_classes,))


def set_random_seed(seed):
    """Keras's set_random_seed: seeds Python's and NumPy's global generators, which are all that
    covidx draws from (initial weights, Dropout, shuffling, augmentation)."""
    if not isinstance(seed, int):
        raise ValueError("Expected `seed` argument to be an integer. Received: seed=%s (of type %s)"
                         % (seed, type(seed)))
    random.seed(seed)
    np.random.seed(seed)
