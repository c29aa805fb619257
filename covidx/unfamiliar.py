"""Out-of-distribution statistics: how unlike the training images an input is.

The C engine scores every image in the same forward pass that classifies it. Besides the
globally pooled backbone features (2048 values) the pass can keep a descriptor of the image:
the mean and the std of every channel after the stem and at the end of each of the four stages
(feature statistics), the last feature map on a 3x3 grid (what the network sees, and where) and
an 8x8 thumbnail of the standardised input (the layout of light and dark). Each part of the
statistics is a Gaussian model of one of these feature sets: the Mahalanobis distance to the
nearest class mean under a covariance shared by the classes (Lee et al., NeurIPS 2018, who also
combine layers), that covariance modelled as probabilistic PCA (the leading principal directions
with their own variances, one variance for the rest, which keeps it well-conditioned however few
the images); the grid's cells are first projected onto their own leading principal directions:

    Sigma = V diag(lambda) V^T + sigma2 (I - V V^T)
    distance_part(f) = min over classes c of sqrt((f - mu_c)^T Sigma^-1 (f - mu_c))
    score = max over parts of distance_part / threshold_part

Each part's threshold is its own `quantile` (0.99 by default) of the distances of held-out
training images, scaled by one common factor so that the combined score is above 1 for a
fraction 1 - quantile of those images: about 1% of images like the training images are flagged.
An unflagged image is not a guarantee that the model is right about it; a flagged one is an image
unlike anything the model was trained on.

    stats = covidx.fit_unfamiliar(model, train_generator)      # fits and attaches to model
    probs, scores = model.predict(x, return_unfamiliar=True)   # scores > 1: unfamiliar
    model.save('with_stats.safetensors')                       # the statistics travel with it
"""
from __future__ import annotations

import json

import numpy as np

from . import _core, batches

# Feature sets a part can model: name -> (offset, size) in the engine's descriptor, each tap's
# values running up to where the next begins.
_TAP_NAMES = ("stem_stats", "stage1_stats", "stage2_stats", "stage3_stats", "stage4_stats", "layout", "thumbnail")
DESCRIPTOR_SIZE = _core.DESCRIPTOR_FLOATS
_BOUNDS = (0,) + tuple(_core.DESCRIPTOR_TAP_OFFSETS) + (DESCRIPTOR_SIZE,)
FEATURE_SETS = {name: (lo, hi - lo) for name, lo, hi in zip(("avg_pool",) + _TAP_NAMES, _BOUNDS, _BOUNDS[1:])}
# Feature sets that are cells of channels ("layout": the last feature map on a 3x3 grid): a part
# of these first projects each cell onto the leading principal directions of the training
# images' cells (PROJECTED_CHANNELS of them), so that its Gaussian is over 9 x 32 values.
CELLS = {"layout": 9}
PROJECTED_CHANNELS = 32


def _select(feature, descriptors):
    """One feature set (n, d) of descriptors (n, DESCRIPTOR_SIZE)."""
    off, size = FEATURE_SETS[feature]
    return np.asarray(descriptors)[:, off:off + size]


# What fit_unfamiliar models by default, with the principal directions each keeps. Many
# directions, not just those that hold most of the variance: an unfamiliar image shows most
# where training images vary least. The default is where things are in the image: the last
# feature map on a 3x3 grid (what the network sees, and where; a lateral view or a CT slice puts
# familiar textures in unfamiliar places, which the pooled features cannot tell). Other sets can
# be added with parts=, but every part spends some of the 1% false-alarm budget, and channel
# statistics of the stem and the stages follow the acquisition and processing of a file (other
# hospitals' frontal X-rays move them as much as CT slices do), which is not what the flag is for.
DEFAULT_PARTS = {"layout": 128}
MAX_COMPONENTS = 256


class GaussianPart:
    """One part: feature (a FEATURE_SETS name), basis V (d, r), variances lambda (r,),
    residual_variance sigma2, class means (k, d), threshold (a distance); for a feature set of
    cells (CELLS), also projection P (cin, cout) and projection_mean m (cin,): each cell x of the
    slice becomes P^T (x - m), and d = cells * cout."""

    def __init__(self, feature, basis, variances, residual_variance, means, threshold, projection=None,
                 projection_mean=None):
        if feature not in FEATURE_SETS:
            raise ValueError("unfamiliar statistics: unknown feature set %r (expected one of %s)"
                             % (feature, ", ".join(FEATURE_SETS)))
        self.feature = feature
        self.basis = np.ascontiguousarray(basis, np.float32)
        self.variances = np.ascontiguousarray(variances, np.float64)
        self.residual_variance = float(residual_variance)
        self.means = np.ascontiguousarray(means, np.float32)
        self.threshold = float(threshold)
        self.projection = self.projection_mean = None
        size = FEATURE_SETS[feature][1]
        cells = CELLS.get(feature)
        if cells is not None:
            if projection is None or projection_mean is None:
                raise ValueError("unfamiliar statistics %s: expected a projection of its cells" % feature)
            self.projection = np.ascontiguousarray(projection, np.float32)
            self.projection_mean = np.ascontiguousarray(projection_mean, np.float32)
            cin = size // cells
            if self.projection.ndim != 2 or self.projection.shape[0] != cin or self.projection_mean.shape != (cin,) \
                    or not 1 <= self.projection.shape[1] <= cin:
                raise ValueError("unfamiliar statistics %s: expected projection (%d, cout) and projection_mean (%d,), "
                                 "got %s and %s" % (feature, cin, cin, self.projection.shape,
                                                    self.projection_mean.shape))
            size = cells * self.projection.shape[1]
        elif projection is not None or projection_mean is not None:
            raise ValueError("unfamiliar statistics %s: a projection is only for %s" % (feature, ", ".join(CELLS)))
        if self.basis.ndim != 2 or self.basis.shape[0] != size or self.basis.shape[1] > min(size, MAX_COMPONENTS) or \
                self.variances.shape != (self.basis.shape[1],) or self.means.ndim != 2 or \
                self.means.shape[1] != size or len(self.means) < 1:
            raise ValueError("unfamiliar statistics %s: expected basis (%d, r <= %d), variances (r,) and means "
                             "(classes, %d), got %s, %s and %s" % (feature, size, min(size, MAX_COMPONENTS), size,
                                                                  self.basis.shape, self.variances.shape,
                                                                  self.means.shape))
        values = [self.basis, self.variances, self.means, np.array([self.residual_variance, self.threshold])]
        if self.projection is not None:
            values += [self.projection, self.projection_mean]
        if not all(np.isfinite(v).all() for v in values) or not (self.variances > 0).all() or \
                self.residual_variance <= 0 or self.threshold <= 0:
            raise ValueError("unfamiliar statistics %s: values must be finite, variances and the threshold positive"
                             % feature)

    @property
    def components(self):
        return self.basis.shape[1]

    def select(self, descriptors):
        """This part's feature set (n, size) from descriptors (n, DESCRIPTOR_SIZE)."""
        return _select(self.feature, descriptors)

    def project(self, features):
        """The part's Gaussian's variables (n, d) from its feature set (n, size), in float64."""
        f = np.asarray(features, np.float64)
        if self.projection is None:
            return f
        cells = CELLS[self.feature]
        x = f.reshape(len(f), cells, -1) - self.projection_mean.astype(np.float64)
        return (x @ self.projection.astype(np.float64)).reshape(len(f), -1)

    def distances(self, features):
        """Distances (n,) of this part's feature set (n, size) to the nearest class, in float64 (NumPy)."""
        return gaussian_distances(self.project(features), self.means, self.basis, self.variances,
                                  self.residual_variance)

    def engine_args(self):
        args = (FEATURE_SETS[self.feature][0], self.basis, self.variances, self.residual_variance, self.means,
                self.threshold)
        if self.projection is not None:
            args += (self.projection, self.projection_mean, CELLS[self.feature])
        return args


class UnfamiliarStats:
    """The fitted statistics: parts (GaussianPart, one per feature set) and how they were fitted
    (info). scores(descriptors) is the engine's score in NumPy."""

    def __init__(self, parts, info=None):
        parts = list(parts)
        if not 1 <= len(parts) <= 8 or not all(isinstance(p, GaussianPart) for p in parts):
            raise ValueError("unfamiliar statistics: expected 1 to 8 parts")
        if len({p.feature for p in parts}) != len(parts):
            raise ValueError("unfamiliar statistics: a feature set appears twice")
        self.parts = parts
        self.info = dict(info or {})

    @property
    def components(self):
        return sum(p.components for p in self.parts)

    @property
    def features(self):
        return [p.feature for p in self.parts]

    def part_scores(self, descriptors):
        """(n, parts): each part's distance over its threshold, in float64 (NumPy)."""
        return np.stack([p.distances(p.select(descriptors)) / p.threshold for p in self.parts], axis=1)

    def scores(self, descriptors):
        """(n,) the score of descriptors (n, DESCRIPTOR_SIZE): the largest part score."""
        return self.part_scores(descriptors).max(1)

    def engine_args(self):
        return [p.engine_args() for p in self.parts]

    # --- in model files --------------------------------------------------------------------------

    def to_file(self):
        """(tensors, metadata value) for a covidx model file."""
        tensors, parts = {}, []
        for p in self.parts:
            key = "unfamiliar/%s/" % p.feature
            tensors.update({key + "basis": p.basis, key + "variances": p.variances.astype(np.float32),
                            key + "means": p.means})
            if p.projection is not None:
                tensors.update({key + "projection": p.projection, key + "projection_mean": p.projection_mean})
            parts.append({"features": p.feature, "residual_variance": p.residual_variance, "threshold": p.threshold,
                          "components": p.components})
        return tensors, json.dumps(dict(self.info, parts=parts))

    @classmethod
    def from_file(cls, tensors, meta_json, path):
        try:
            meta = json.loads(meta_json)
            if not isinstance(meta, dict):
                raise ValueError("expected a JSON object")
            if "parts" not in meta:  # files saved before the statistics had parts: the pooled features only
                meta = dict(meta, parts=[{k: meta.get(k) for k in ("features", "residual_variance", "threshold")}])
                tensors = {"unfamiliar/%s/%s" % (meta["parts"][0]["features"], k[len("unfamiliar/"):]): v
                           for k, v in tensors.items()}
            if not isinstance(meta["parts"], list):
                raise ValueError("'parts' is not a list")
            parts, used = [], set()
            for entry in meta["parts"]:
                if not isinstance(entry, dict) or not isinstance(entry.get("features"), str):
                    raise ValueError("a part without its feature set")
                key = "unfamiliar/%s/" % entry["features"]
                missing = [key + k for k in ("basis", "variances", "means") if key + k not in tensors]
                if missing:
                    raise ValueError("missing tensor %r" % missing[0])
                used.update(key + k for k in ("basis", "variances", "means"))
                projection = [tensors.get(key + k) for k in ("projection", "projection_mean")]
                used.update(key + k for k in ("projection", "projection_mean") if key + k in tensors)
                parts.append(GaussianPart(entry["features"], tensors[key + "basis"], tensors[key + "variances"],
                                          entry.get("residual_variance"), tensors[key + "means"],
                                          entry.get("threshold"), *projection))
            extra = sorted(set(tensors) - used)
            if extra:
                raise ValueError("unexpected tensor %r" % extra[0])
            info = {k: v for k, v in meta.items() if k not in ("parts", "residual_variance", "threshold", "features",
                                                                 "components")}
            return cls(parts, info)
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError("%s: bad out-of-distribution statistics (%s)" % (path, e)) from None

    def __repr__(self):
        return "<UnfamiliarStats: %s; %d classes, %d components (%s quantile of %s held-out images)>" % (
            ", ".join(p.feature for p in self.parts), len(self.parts[0].means), self.components,
            self.info.get("quantile"), self.info.get("held_out"))


def _descriptors_and_labels(model, data, batch_size):
    """Descriptors (n, DESCRIPTOR_SIZE) and integer labels (n,) of arrays (x, y) or a labelled
    iterator."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        x, y = data
        y = np.asarray(y)
        labels = y.argmax(1) if y.ndim == 2 else y.astype(np.int64)
        if len(labels) != len(x):
            raise ValueError("fit_unfamiliar: %d images but %d labels" % (len(x), len(labels)))
        return model.descriptors(x, batch_size), labels
    source, stream, _ = batches.one_pass(data, batch_size=batch_size)
    if source.iterator is not None and getattr(source.iterator, "class_mode", "x") is None:
        raise ValueError("fit_unfamiliar: the iterator has no labels (class_mode=None); the statistics are per class")
    feats, labels = [], []
    for bx, by, _, ok, _, _ in stream:
        if by is None:
            raise ValueError("fit_unfamiliar: the data has no labels; give (images, labels) or a labelled iterator")
        by = np.asarray(by)
        by = by.argmax(1) if by.ndim == 2 and by.shape[1] > 1 else by.reshape(len(by)).astype(np.int64)
        if ok is not None:
            bx, by = bx[ok], by[ok]
        if len(bx):
            feats.append(model._forward(bx, "descriptor"))
            labels.append(by)
    source.on_epoch_end()
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


def fit_projection(feature, features):
    """The projection of a feature set of cells (n, cells * cin): the PROJECTED_CHANNELS leading
    principal directions (cin, cout) of all the images' cells together, and their mean (cin,)."""
    cells = CELLS[feature]
    x = np.asarray(features, np.float64).reshape(-1, np.shape(features)[1] // cells)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / max(1, len(x) - 1)
    lam, vec = np.linalg.eigh(cov)
    cout = min(PROJECTED_CHANNELS, x.shape[1])
    return vec[:, ::-1][:, :cout], mean


def fit_part(feature, features, labels, components):
    """A GaussianPart (threshold 1) of one feature set (n, size) with integer labels, keeping
    `components` principal directions (fewer where the images or the dimensions are fewer), and
    the fraction of the within-class variance they hold."""
    projection = projection_mean = None
    if feature in CELLS:
        projection, projection_mean = fit_projection(feature, features)
        x = np.asarray(features, np.float64).reshape(len(features), CELLS[feature], -1) - projection_mean
        features = (x @ projection).reshape(len(features), -1)
    means, basis, variances, sigma2, explained = fit_gaussian(features, labels, components, feature)
    return GaussianPart(feature, basis, variances, sigma2, means, 1.0, projection, projection_mean), explained


def fit_gaussian(features, labels, components, name="the"):
    """The Gaussians of features (n, d) with integer labels: class means (k, d), and their shared
    covariance as probabilistic PCA, the `components` leading directions (fewer where the images
    or the dimensions are fewer) basis (d, r) with their variances (r,), one residual variance for
    the rest; and the fraction of the within-class variance the directions hold. name: the
    features', for errors."""
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
        raise ValueError("fit_unfamiliar: the %s features do not vary within the classes" % name)
    r = max(1, min(int(components), MAX_COMPONENTS, len(f) - len(classes) - 1, f.shape[1] - 1))
    floor = lam[0] * 1e-9
    sigma2 = max(float(lam[r:].mean()), floor)
    return means, vec[:, :r], np.maximum(lam[:r], floor), sigma2, float(lam[:r].sum() / total)


def gaussian_distances(features, means, basis, variances, residual_variance):
    """Distances (n,) of features (n, d) to the nearest class mean under fit_gaussian's shared
    covariance, in float64."""
    f = np.asarray(features, np.float64)
    v = np.asarray(basis, np.float64)
    best = np.full(len(f), np.inf)
    for mu in np.asarray(means, np.float64):
        g = f - mu
        q = g @ v
        resid = np.maximum((g * g).sum(1) - (q * q).sum(1), 0.0)
        best = np.minimum(best, (q * q / variances).sum(1) + resid / residual_variance)
    return np.sqrt(best)


def fit(descriptors, labels, holdout_descriptors, quantile=0.99, parts=None):
    """UnfamiliarStats from descriptors (n, DESCRIPTOR_SIZE) with integer labels, the thresholds
    from holdout_descriptors (m, DESCRIPTOR_SIZE). parts: {feature set: components}
    (DEFAULT_PARTS). Each part's threshold is its `quantile` of the held-out distances times one
    common factor, chosen so that a fraction 1 - quantile of the held-out images score above 1."""
    parts = dict(DEFAULT_PARTS if parts is None else parts)
    unknown = [k for k in parts if k not in FEATURE_SETS]
    if unknown or not parts:
        raise ValueError("fit_unfamiliar: parts: expected feature sets among %s, got %r" % (", ".join(FEATURE_SETS),
                                                                                            list(parts)))
    fitted, explained = [], {}
    for feature, components in parts.items():
        if not isinstance(components, (int, np.integer)) or isinstance(components, bool) or components < 1:
            raise ValueError("fit_unfamiliar: parts[%r]: expected a number of components >= 1, got %r"
                             % (feature, components))
        part, explained[feature] = fit_part(feature, _select(feature, descriptors), labels, components)
        part.threshold = float(np.quantile(part.distances(part.select(holdout_descriptors)), quantile))
        if not part.threshold > 0:
            raise ValueError("fit_unfamiliar: the held-out %s distances are all zero" % feature)
        fitted.append(part)
    stats = UnfamiliarStats(fitted)
    common = float(np.quantile(stats.scores(holdout_descriptors), quantile))
    for part in fitted:
        part.threshold *= common
    stats.info = {"quantile": quantile, "fitted_on": int(len(descriptors)), "held_out": int(len(holdout_descriptors)),
                  "explained": explained}
    return stats


def fit_unfamiliar(model, data, holdout=None, *, quantile=0.99, batch_size=32, holdout_fraction=0.1, seed=0,
                   parts=None):
    """Fits the out-of-distribution statistics of `model` on training images and attaches them
    (model.unfamiliar); model.save keeps them. data: a labelled image iterator
    (flow_from_directory) or (images, labels). The thresholds come from `holdout` (images held out
    from the fit, same kinds as data): a fraction 1 - `quantile` of them is flagged. Without it, a
    stratified `holdout_fraction` of data is held out. parts: {feature set: principal directions
    kept} (covidx.unfamiliar.DEFAULT_PARTS; FEATURE_SETS lists the sets). Returns the UnfamiliarStats."""
    if model.architecture.get("pooling") is None:
        raise ValueError("fit_unfamiliar: the model has no global pooling (its statistics are of pooled features)")
    if not 0.5 <= quantile < 1:
        raise ValueError("quantile: expected a number in [0.5, 1), got %r" % (quantile,))
    feats, labels = _descriptors_and_labels(model, data, batch_size)
    if holdout is None:
        held = _holdout_split(labels, holdout_fraction, seed)
        if not held.any() or held.all():
            raise ValueError("fit_unfamiliar: too few images to hold out %.0f%%" % (100 * holdout_fraction))
        hold_feats, feats, labels = feats[held], feats[~held], labels[~held]
    else:
        hold_feats, _ = _descriptors_and_labels(model, holdout, batch_size)
    stats = fit(feats, labels, hold_feats, quantile=quantile, parts=parts)
    model.set_unfamiliar(stats)
    return stats
