"""Keras's evaluation metrics with Keras's state and arithmetic: running float32 totals, the
accuracy variant chosen from the label and output shapes, strict 0.5 thresholds.

Metric objects keep state across batches: reset_state(), update_state(y_true, y_pred), result()."""
from __future__ import annotations

import numpy as np

EPSILON = 1e-7


class Metric:
    name = "metric"

    def __init__(self, name=None):
        if name is not None:
            self.name = name
        self.reset_state()

    def reset_state(self):
        raise NotImplementedError

    def update_state(self, y_true, y_pred):
        raise NotImplementedError

    def result(self):
        raise NotImplementedError

    def __repr__(self):
        return "<covidx.metrics.%s name=%r>" % (type(self).__name__, self.name)


class Mean(Metric):
    """Weighted running mean in float32 (Keras's Mean)."""

    name = "mean"

    def reset_state(self):
        self.total, self.count = np.float32(0), np.float32(0)

    def update_state(self, values, sample_weight=None):
        values = np.asarray(values, np.float32)
        if sample_weight is None:
            self.total = np.float32(self.total + np.sum(values, dtype=np.float32))
            self.count = np.float32(self.count + np.float32(values.size))
        else:
            w = np.float32(sample_weight)
            self.total = np.float32(self.total + np.float32(np.sum(values, dtype=np.float32) * w))
            self.count = np.float32(self.count + w * np.float32(max(values.size, 1)))

    def result(self):
        return np.float32(0) if self.count == 0 else np.float32(self.total / self.count)


class _MeanOfSamples(Mean):
    def update_state(self, y_true, y_pred):
        super().update_state(self.per_sample(y_true, y_pred))


def _rank_align(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim == y_pred.ndim - 1 and y_pred.shape[-1] == 1:
        y_true = y_true[..., None]
    return y_true, y_pred


def binary_accuracy(y_true, y_pred, threshold=0.5):
    y_true, y_pred = _rank_align(y_true, y_pred)
    hits = (y_true.astype(np.float32) == (y_pred > threshold).astype(np.float32)).astype(np.float32)
    return np.mean(hits, axis=-1)


def categorical_accuracy(y_true, y_pred):
    return (np.argmax(y_true, axis=-1) == np.argmax(y_pred, axis=-1)).astype(np.float32)


def sparse_categorical_accuracy(y_true, y_pred):
    y_true = np.asarray(y_true)
    if y_true.ndim == np.ndim(y_pred) and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    return (y_true.astype(np.float32) == np.argmax(y_pred, axis=-1).astype(np.float32)).astype(np.float32)


class BinaryAccuracy(_MeanOfSamples):
    name = "binary_accuracy"

    def __init__(self, name=None, threshold=0.5):
        self.threshold = threshold
        super().__init__(name)

    def per_sample(self, y_true, y_pred):
        return binary_accuracy(y_true, y_pred, self.threshold)


class CategoricalAccuracy(_MeanOfSamples):
    name = "categorical_accuracy"
    per_sample = staticmethod(categorical_accuracy)


class SparseCategoricalAccuracy(_MeanOfSamples):
    name = "sparse_categorical_accuracy"
    per_sample = staticmethod(sparse_categorical_accuracy)


class Accuracy(_MeanOfSamples):
    """'accuracy' / 'acc': binary, sparse or categorical accuracy, chosen on the first batch from
    the shapes alone, as Keras 3 and tf.keras >= 2.2 do."""

    name = "accuracy"

    def reset_state(self):
        super().reset_state()
        self.kind = None  # chosen again for each evaluation's data

    def per_sample(self, y_true, y_pred):
        if self.kind is None:
            y_true_a, y_pred_a = np.asarray(y_true), np.asarray(y_pred)
            if y_pred_a.shape[-1] == 1:
                self.kind = "binary"
            elif y_true_a.ndim < y_pred_a.ndim or (y_true_a.shape[-1] == 1 and y_pred_a.shape[-1] > 1):
                self.kind = "sparse_categorical"
            else:
                self.kind = "categorical"
        return {"binary": binary_accuracy, "sparse_categorical": sparse_categorical_accuracy,
                "categorical": categorical_accuracy}[self.kind](y_true, y_pred)


def _dense_labels(y_true, y_pred):
    """Labels shaped like the outputs: integer labels against several output columns become
    one-hot (what a user expects of AUC/precision/recall on a softmax head)."""
    y_true, y_pred = _rank_align(y_true, y_pred)
    if y_true.shape != y_pred.shape and y_pred.ndim == 2 and (y_true.ndim == 1 or y_true.shape[-1] == 1):
        labels = y_true.reshape(-1).astype(np.int64)
        y_true = np.zeros(y_pred.shape, np.float32)
        y_true[np.arange(len(labels)), labels] = 1
    if y_true.shape != y_pred.shape:
        raise ValueError("labels of shape %s do not match outputs of shape %s" % (y_true.shape, y_pred.shape))
    return y_true.astype(np.float32) > 0.5, y_pred.astype(np.float32)


class _Confusion(Metric):
    """Counts of true/false positives/negatives at fixed thresholds over all output entries."""

    def __init__(self, thresholds, name=None):
        self.thresholds = np.asarray(thresholds, np.float32)
        super().__init__(name)

    def reset_state(self):
        n = len(self.thresholds)
        self.tp, self.fp, self.tn, self.fn = (np.zeros(n, np.float32) for _ in range(4))

    def update_state(self, y_true, y_pred):
        truth, pred = _dense_labels(y_true, y_pred)
        truth, pred = truth.reshape(-1), pred.reshape(-1)
        above = pred[None, :] > self.thresholds[:, None]
        self.tp += np.sum(above & truth, axis=1, dtype=np.float32)
        self.fp += np.sum(above & ~truth, axis=1, dtype=np.float32)
        self.fn += np.sum(~above & truth, axis=1, dtype=np.float32)
        self.tn += np.sum(~above & ~truth, axis=1, dtype=np.float32)


def _div(a, b):
    return np.where(b > 0, a / np.where(b > 0, b, 1), 0).astype(np.float32)


class Precision(_Confusion):
    name = "precision"

    def __init__(self, thresholds=None, name=None):
        super().__init__([0.5 if thresholds is None else thresholds], name)

    def result(self):
        return _div(self.tp, self.tp + self.fp)[0]


class Recall(_Confusion):
    name = "recall"

    def __init__(self, thresholds=None, name=None):
        super().__init__([0.5 if thresholds is None else thresholds], name)

    def result(self):
        return _div(self.tp, self.tp + self.fn)[0]


class AUC(_Confusion):
    """Area under the ROC (or PR) curve from counts at num_thresholds thresholds, Keras's
    approximation (trapezoids for ROC; Davis & Goadrich interpolation for PR)."""

    name = "auc"

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation", name=None):
        if num_thresholds <= 1:
            raise ValueError("num_thresholds: must be > 1, got %r" % (num_thresholds,))
        curve = curve.upper()
        if curve not in ("ROC", "PR"):
            raise ValueError("curve: expected 'ROC' or 'PR', got %r" % (curve,))
        self.curve, self.summation_method = curve, summation_method
        inner = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
        super().__init__([0.0 - EPSILON] + inner + [1.0 + EPSILON], name)

    def result(self):
        tp, fp, tn, fn = (a.astype(np.float64) for a in (self.tp, self.fp, self.tn, self.fn))
        if self.curve == "PR" and self.summation_method == "interpolation":
            dtp = tp[:-1] - tp[1:]
            p = tp + fp
            dp = p[:-1] - p[1:]
            prec_slope = np.where(dp > 0, dtp / np.where(dp > 0, dp, 1), 0)
            intercept = tp[1:] - prec_slope * p[1:]
            safe_p_ratio = np.where((p[:-1] > 0) & (p[1:] > 0), p[:-1] / np.where(p[1:] > 0, p[1:], 1), 1)
            denom = tp[1:] + fn[1:]
            pr_auc_inc = np.where(denom > 0, prec_slope * (dtp + intercept * np.log(safe_p_ratio))
                                  / np.where(denom > 0, denom, 1), 0)
            return np.float32(np.sum(pr_auc_inc))
        recall = np.where(tp + fn > 0, tp / np.where(tp + fn > 0, tp + fn, 1), 0)
        if self.curve == "ROC":
            x = np.where(fp + tn > 0, fp / np.where(fp + tn > 0, fp + tn, 1), 0)
            y = recall
        else:
            x = recall
            y = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0)
        if self.summation_method == "interpolation":
            heights = (y[:-1] + y[1:]) / 2.0
        elif self.summation_method == "minoring":
            heights = np.minimum(y[:-1], y[1:])
        else:
            heights = np.maximum(y[:-1], y[1:])
        return np.float32(np.sum((x[:-1] - x[1:]) * heights))


_BY_NAME = {
    "accuracy": Accuracy, "acc": Accuracy,
    "binary_accuracy": BinaryAccuracy, "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "auc": AUC, "precision": Precision, "recall": Recall,
}


def get(metric):
    """A metric object from a name ('accuracy', 'acc', 'AUC', 'precision', ...) or an object.
    String metrics keep the user's spelling as their name ('acc' reports as 'acc')."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        cls = _BY_NAME.get(metric.lower())
        if cls is None:
            raise ValueError("metrics: unknown metric %r (known: %s)" % (metric, ", ".join(sorted(_BY_NAME))))
        name = metric if cls in (Accuracy, BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy) else None
        return cls(name=name)
    if isinstance(metric, type) and issubclass(metric, Metric):
        return metric()
    raise TypeError("metrics: expected a name or a covidx.metrics object, got %r" % (metric,))
