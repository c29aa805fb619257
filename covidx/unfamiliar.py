"""Out-of-distribution statistics: how unlike the training images an input is.

The C engine scores every image in the same forward pass that classifies it, from its globally
pooled backbone features f (2048 values): the Mahalanobis distance to the nearest class mean
under a covariance shared by the classes (Lee et al., NeurIPS 2018), that covariance modelled as
probabilistic PCA (the leading principal directions with their own variances, one variance for
the rest, which keeps it well-conditioned however few the images):

    Sigma = V diag(lambda) V^T + sigma2 (I - V V^T)
    distance(f) = min over classes c of sqrt((f - mu_c)^T Sigma^-1 (f - mu_c))

The score is that distance divided by a threshold: the `quantile` (0.99 by default) of the
distances of held-out training images. A score above 1 flags an image as unfamiliar, so about
1% of images like the training images are flagged. An unflagged image is not a guarantee that
the model is right about it; a flagged one is an image the model has seen nothing like.

    stats = covidx.fit_unfamiliar(model, train_generator)      # fits and attaches to model
    probs, scores = model.predict(x, return_unfamiliar=True)   # scores > 1: unfamiliar
    model.save('with_stats.safetensors')                       # the statistics travel with it
"""
from __future__ import annotations

import json

import numpy as np

FEATURES = "avg_pool"
TENSORS = ("unfamiliar/basis", "unfamiliar/variances", "unfamiliar/means")
MAX_COMPONENTS = 256


class UnfamiliarStats:
    """The fitted statistics: basis V (2048, r), variances lambda (r,), residual_variance sigma2,
    class means (k, 2048), threshold (a distance), and how they were fitted (info)."""

    def __init__(self, basis, variances, residual_variance, means, threshold, info=None):
        self.basis = np.ascontiguousarray(basis, np.float32)
        self.variances = np.ascontiguousarray(variances, np.float64)
        self.residual_variance = float(residual_variance)
        self.means = np.ascontiguousarray(means, np.float32)
        self.threshold = float(threshold)
        self.info = dict(info or {})
        d = self.basis.shape[0] if self.basis.ndim == 2 else -1
        if self.basis.ndim != 2 or d != 2048 or self.variances.shape != (self.basis.shape[1],) or \
                self.means.ndim != 2 or self.means.shape[1] != d or len(self.means) < 1:
            raise ValueError("unfamiliar statistics: expected basis (2048, r), variances (r,) and means (classes, "
                             "2048), got %s, %s and %s" % (self.basis.shape, self.variances.shape, self.means.shape))
        values = [self.basis, self.variances, self.means, np.array([self.residual_variance, self.threshold])]
        if not all(np.isfinite(v).all() for v in values) or not (self.variances > 0).all() or \
                self.residual_variance <= 0 or self.threshold <= 0:
            raise ValueError("unfamiliar statistics: values must be finite, variances and the threshold positive")

    @property
    def components(self):
        return self.basis.shape[1]

    def distances(self, features):
        """Distances (n,) of pooled features (n, 2048) to the nearest class, in float64 (NumPy)."""
        f = np.asarray(features, np.float64)
        best = np.full(len(f), np.inf)
        v = self.basis.astype(np.float64)
        for mu in self.means.astype(np.float64):
            g = f - mu
            q = g @ v
            resid = np.maximum((g * g).sum(1) - (q * q).sum(1), 0.0)
            best = np.minimum(best, (q * q / self.variances).sum(1) + resid / self.residual_variance)
        return np.sqrt(best)

    # --- in model files --------------------------------------------------------------------------

    def to_file(self):
        """(tensors, metadata value) for a covidx model file."""
        meta = dict(self.info, residual_variance=self.residual_variance, threshold=self.threshold,
                    features=FEATURES, components=self.components)
        return dict(zip(TENSORS, (self.basis, self.variances.astype(np.float32), self.means))), json.dumps(meta)

    @classmethod
    def from_file(cls, tensors, meta_json, path):
        try:
            meta = json.loads(meta_json)
            if not isinstance(meta, dict) or meta.get("features") != FEATURES:
                raise ValueError("expected statistics of the %s features" % FEATURES)
            missing = [k for k in TENSORS if k not in tensors]
            if missing:
                raise ValueError("missing tensor %r" % missing[0])
            info = {k: v for k, v in meta.items() if k not in ("residual_variance", "threshold", "features",
                                                                 "components")}
            return cls(tensors["unfamiliar/basis"], tensors["unfamiliar/variances"], meta.get("residual_variance"),
                       tensors["unfamiliar/means"], meta.get("threshold"), info)
        except (TypeError, ValueError) as e:
            raise ValueError("%s: bad out-of-distribution statistics (%s)" % (path, e)) from None

    def __repr__(self):
        return "<UnfamiliarStats: %d classes, %d components, threshold %.4g (%s quantile of %s held-out images)>" % (
            len(self.means), self.components, self.threshold, self.info.get("quantile"), self.info.get("held_out"))


def _features_and_labels(model, data, batch_size):
    """Pooled features (n, 2048) and integer labels (n,) of arrays (x, y) or a labelled iterator."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        x, y = data
        y = np.asarray(y)
        labels = y.argmax(1) if y.ndim == 2 else y.astype(np.int64)
        if len(labels) != len(x):
            raise ValueError("fit_unfamiliar: %d images but %d labels" % (len(x), len(labels)))
        return model.features(x, batch_size=batch_size), labels
    from . import evaluation

    source, _, iterator = evaluation.batch_source(data, None, batch_size, None)
    if iterator is not None and getattr(iterator, "class_mode", "x") is None:
        raise ValueError("fit_unfamiliar: the iterator has no labels (class_mode=None); the statistics are per class")
    feats, labels = [], []
    for bx, by, _, ok in source:
        if by is None:
            raise ValueError("fit_unfamiliar: the data has no labels; give (images, labels) or a labelled iterator")
        by = np.asarray(by)
        by = by.argmax(1) if by.ndim == 2 and by.shape[1] > 1 else by.reshape(len(by)).astype(np.int64)
        if ok is not None:
            bx, by = bx[ok], by[ok]
        if len(bx):
            feats.append(model._forward(bx, "features"))
            labels.append(by)
    if iterator is not None and hasattr(iterator, "on_epoch_end"):
        iterator.on_epoch_end()
    if not feats:
        raise ValueError("fit_unfamiliar: the data has no readable images")
    return np.concatenate(feats), np.concatenate(labels)


def _holdout_split(labels, fraction, seed):
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        held[rng.choice(idx, size=int(round(len(idx) * fraction)), replace=False)] = True
    return held


def fit(features, labels, holdout_features, quantile=0.99, variance_kept=0.95, max_components=MAX_COMPONENTS):
    """UnfamiliarStats from pooled features (n, 2048) with integer labels, the threshold from
    holdout_features (m, 2048)."""
    f = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(f) < len(classes) + 2:
        raise ValueError("fit_unfamiliar: too few images (%d) to fit statistics" % len(f))
    means = np.stack([f[labels == c].mean(0) for c in classes])
    g = f - means[np.searchsorted(classes, labels)]
    cov = g.T @ g / (len(f) - len(classes))
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1], vec[:, ::-1]
    lam = np.maximum(lam, 0.0)
    total = lam.sum()
    if not total > 0:
        raise ValueError("fit_unfamiliar: the features do not vary within the classes")
    r = int(np.searchsorted(np.cumsum(lam) / total, variance_kept) + 1)
    r = max(1, min(r, max_components, len(f) - len(classes) - 1, f.shape[1] - 1))
    floor = lam[0] * 1e-9
    sigma2 = max(float(lam[r:].mean()), floor)
    stats = UnfamiliarStats(vec[:, :r], np.maximum(lam[:r], floor), sigma2, means, 1.0)
    held = stats.distances(holdout_features)
    stats.threshold = float(np.quantile(held, quantile))
    stats.info = {"quantile": quantile, "fitted_on": int(len(f)), "held_out": int(len(held)),
                  "variance_kept": variance_kept, "explained": float(lam[:r].sum() / total)}
    return stats


def fit_unfamiliar(model, data, holdout=None, *, quantile=0.99, batch_size=32, holdout_fraction=0.1, seed=0):
    """Fits the out-of-distribution statistics of `model` on training images and attaches them
    (model.unfamiliar); model.save keeps them. data: a labelled image iterator
    (flow_from_directory) or (images, labels). The threshold is the `quantile` of the distances
    of `holdout` (images held out from the fit, same kinds as data); without it, a stratified
    `holdout_fraction` of data is held out. Returns the UnfamiliarStats."""
    if model.architecture.get("pooling") is None:
        raise ValueError("fit_unfamiliar: the model has no global pooling (its statistics are of pooled features)")
    if not 0.5 <= quantile < 1:
        raise ValueError("quantile: expected a number in [0.5, 1), got %r" % (quantile,))
    feats, labels = _features_and_labels(model, data, batch_size)
    if holdout is None:
        held = _holdout_split(labels, holdout_fraction, seed)
        if not held.any() or held.all():
            raise ValueError("fit_unfamiliar: too few images to hold out %.0f%%" % (100 * holdout_fraction))
        hold_feats, feats, labels = feats[held], feats[~held], labels[~held]
    else:
        hold_feats, _ = _features_and_labels(model, holdout, batch_size)
    stats = fit(feats, labels, hold_feats, quantile=quantile)
    model.set_unfamiliar(stats)
    return stats
