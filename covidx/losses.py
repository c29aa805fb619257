"""Keras's probability-space losses (Keras 3 semantics on its NumPy/JAX/torch backends): outputs
clipped to [1e-7, 1 - 1e-7], per-sample values, then the batch mean ('sum_over_batch_size')."""
from __future__ import annotations

import numpy as np

EPSILON = 1e-7


def binary_crossentropy(y_true, y_pred):
    """Per-sample binary cross-entropy (mean over the last axis). y_true (b,) is matched to (b, 1)."""
    y_true, y_pred = _align_binary(y_true, y_pred)
    p = np.clip(y_pred, EPSILON, 1 - EPSILON)
    return np.mean(-(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)), axis=-1)


def categorical_crossentropy(y_true, y_pred):
    """Per-sample categorical cross-entropy of one-hot (or soft) labels."""
    y_true, y_pred = np.asarray(y_true, np.float32), np.asarray(y_pred, np.float32)
    if y_true.shape != y_pred.shape:
        raise ValueError("categorical_crossentropy: labels of shape %s do not match outputs of shape %s "
                         "(integer labels need sparse_categorical_crossentropy)" % (y_true.shape, y_pred.shape))
    p = y_pred / np.sum(y_pred, axis=-1, keepdims=True)
    p = np.clip(p, EPSILON, 1 - EPSILON)
    return -np.sum(y_true * np.log(p), axis=-1)


def sparse_categorical_crossentropy(y_true, y_pred):
    """Per-sample cross-entropy of integer labels (b,) or (b, 1) against (b, classes) outputs."""
    y_pred = np.asarray(y_pred, np.float32)
    labels = _sparse_labels(y_true, y_pred)
    p = y_pred / np.sum(y_pred, axis=-1, keepdims=True)
    p = np.clip(p, EPSILON, 1 - EPSILON)
    return -np.log(p[np.arange(len(labels)), labels])


def _align_binary(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true, np.float32), np.asarray(y_pred, np.float32)
    if y_true.ndim == y_pred.ndim - 1 and y_pred.shape[-1] == 1:
        y_true = y_true[..., None]
    if y_true.shape != y_pred.shape:
        raise ValueError("binary_crossentropy: labels of shape %s do not match outputs of shape %s"
                         % (y_true.shape, y_pred.shape))
    return y_true, y_pred


def _sparse_labels(y_true, y_pred):
    y = np.asarray(y_true)
    if y.ndim == y_pred.ndim and y.shape[-1] == 1:
        y = y[..., 0]
    if y.ndim != 1 or len(y) != len(y_pred):
        raise ValueError("sparse labels of shape %s do not match outputs of shape %s" % (y.shape, y_pred.shape))
    labels = y.astype(np.int64)
    if np.any(labels != y) or np.any(labels < 0) or np.any(labels >= y_pred.shape[-1]):
        raise ValueError("sparse labels must be integers in [0, %d), got %s" % (y_pred.shape[-1], np.unique(y)[:10]))
    return labels


LOSSES = {
    "binary_crossentropy": binary_crossentropy,
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
}
ALIASES = {"bce": "binary_crossentropy", "cce": "categorical_crossentropy",
           "scce": "sparse_categorical_crossentropy"}


class Loss:
    """A named loss; calling it gives the batch mean, as a Keras loss object does."""

    def __init__(self, fn, name):
        self.fn, self.name = fn, name

    def per_sample(self, y_true, y_pred):
        return self.fn(y_true, y_pred)

    def __call__(self, y_true, y_pred):
        return float(np.mean(self.fn(y_true, y_pred), dtype=np.float32))


class BinaryCrossentropy(Loss):
    def __init__(self, from_logits=False, name="binary_crossentropy"):
        if from_logits:
            raise ValueError("from_logits=True: covidx models output probabilities; use from_logits=False")
        super().__init__(binary_crossentropy, name)


class CategoricalCrossentropy(Loss):
    def __init__(self, from_logits=False, name="categorical_crossentropy"):
        if from_logits:
            raise ValueError("from_logits=True: covidx models output probabilities; use from_logits=False")
        super().__init__(categorical_crossentropy, name)


class SparseCategoricalCrossentropy(Loss):
    def __init__(self, from_logits=False, name="sparse_categorical_crossentropy"):
        if from_logits:
            raise ValueError("from_logits=True: covidx models output probabilities; use from_logits=False")
        super().__init__(sparse_categorical_crossentropy, name)


def get(loss):
    """A Loss from a name ('categorical_crossentropy', 'binary_crossentropy', ...), a Loss, or a
    function (y_true, y_pred) -> per-sample values."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        key = ALIASES.get(loss.lower(), loss.lower())
        if key not in LOSSES:
            raise ValueError("loss: unknown loss %r (known: %s)" % (loss, ", ".join(sorted(LOSSES))))
        return Loss(LOSSES[key], key)
    if callable(loss):
        return Loss(loss, getattr(loss, "__name__", "loss"))
    raise TypeError("loss: expected a name, a covidx loss or a function, got %r" % (loss,))
