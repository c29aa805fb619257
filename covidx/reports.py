"""Classification metrics with 95% confidence intervals: accuracy, sensitivity and specificity of
the COVID-19 class (Wilson score intervals), ROC AUC (Mann-Whitney, DeLong interval; Newcombe's
score interval where DeLong's is not valid: small classes, or every pair ranked alike), and the
confusion matrix."""
from __future__ import annotations

import math

import numpy as np

from .evaluation import _canonical

Z95 = 1.959963984540054


def wilson(k, n, z=Z95):
    """(estimate, low, high) of a proportion k/n."""
    if n == 0:
        return (float("nan"),) * 3
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def _midrank_psi(pos, neg):
    """psi(x, y) = 1 if x > y, 0.5 if equal, else 0, for every pair: (m, n) array."""
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


SMALL_CLASS = 20  # below this many images in a class, DeLong's interval is too narrow


def auc_score_interval(auc, m, n, z=Z95):
    """(low, high): Newcombe's score interval for a Mann-Whitney AUC of m positives and n
    negatives (Newcombe 2006, Stat Med 25:559, method 5): the AUCs t whose Hanley-McNeil
    variance, with N* = (m + n) / 2 images per class, puts the estimate within z standard errors.
    It stays inside (0, 1) and keeps a width wherever m and n are finite (for an AUC of 1.0 on
    4 + 4 images too)."""
    big_n = (m + n) / 2.0

    def excess(t):  # (auc - t)^2 - z^2 var(t): negative inside the interval
        var = t * (1 - t) / (m * n) * (1 + (big_n - 1) * ((1 - t) / (2 - t) + t / (1 + t)))
        return (auc - t) ** 2 - z * z * var

    def root(inside, outside):
        for _ in range(100):  # bisection: excess(inside) <= 0 < excess(outside)
            mid = (inside + outside) / 2
            inside, outside = (mid, outside) if excess(mid) <= 0 else (inside, mid)
        return inside

    return root(auc, 0.0), root(auc, 1.0)


def roc_auc(scores, truth):
    """(auc, low, high): the Mann-Whitney AUC of scores for truth (bool), with DeLong's interval;
    where a class has fewer than SMALL_CLASS images or DeLong's variance is zero (every pair
    ranked alike, which DeLong turns into an interval of zero width), Newcombe's score interval
    (auc_score_interval) instead."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    pos, neg = scores[truth], scores[~truth]
    if len(pos) == 0 or len(neg) == 0:
        return (float("nan"),) * 3
    psi = _midrank_psi(pos, neg)
    auc = float(psi.mean())
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    var = (v10.var(ddof=1) / len(pos) if len(pos) > 1 else 0.0) + (v01.var(ddof=1) / len(neg) if len(neg) > 1 else 0.0)
    if min(len(pos), len(neg)) < SMALL_CLASS or not var > 0:
        return (auc,) + auc_score_interval(auc, len(pos), len(neg))
    half = Z95 * math.sqrt(var)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def roc_curve(scores, truth):
    """(false positive rates, true positive rates, thresholds), one point per distinct score."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], truth[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps, fps = np.cumsum(t)[distinct], np.cumsum(~t)[distinct]
    tpr = np.r_[0, tps] / max(t.sum(), 1)
    fpr = np.r_[0, fps] / max((~t).sum(), 1)
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def covid_index(names):
    hits = [i for i, n in enumerate(names) if _canonical(n) == "covid"]
    return hits[0] if hits else 0


def classification_summary(labels, probs, names, positive=None):
    """Metrics of predictions probs (n, classes) (or (n, 1) sigmoid) against integer labels."""
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = np.concatenate([1 - probs, probs], axis=1)
    k = probs.shape[1]
    positive = covid_index(names) if positive is None else positive
    predicted = np.argmax(probs, axis=1)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    truth_pos, pred_pos = labels == positive, predicted == positive
    tp, fn = int(np.sum(truth_pos & pred_pos)), int(np.sum(truth_pos & ~pred_pos))
    tn, fp = int(np.sum(~truth_pos & ~pred_pos)), int(np.sum(~truth_pos & pred_pos))
    return {
        "n": int(len(labels)), "class_names": list(names), "positive": names[positive],
        "accuracy": wilson(int(np.sum(predicted == labels)), len(labels)),
        "sensitivity": wilson(tp, tp + fn), "specificity": wilson(tn, tn + fp),
        "roc_auc": roc_auc(probs[:, positive], truth_pos),
        "confusion": confusion.tolist(), "tp": tp, "fn": fn, "tn": tn, "fp": fp,
    }


def reliability_bins(probs, labels, bins=15):
    """Top-class confidence against accuracy in `bins` equal-width bins of (0, 1]: a list of
    (low, high, count, mean confidence, accuracy) for the bins that hold images."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = np.concatenate([1 - probs, probs], axis=1)
    conf, right = probs.max(1), probs.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # (low, high] per bin
    out = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            out.append((float(edges[b]), float(edges[b + 1]), int(inside.sum()), float(conf[inside].mean()),
                        float(right[inside].mean())))
    return out


def expected_calibration_error(probs, labels, bins=15):
    """ECE (Guo et al. 2017): the image-weighted mean |accuracy - confidence| over the
    reliability bins."""
    rows = reliability_bins(probs, labels, bins)
    n = sum(r[2] for r in rows)
    return float(sum(r[2] * abs(r[4] - r[3]) for r in rows) / n) if n else float("nan")


def bootstrap_interval(statistic, *arrays, rounds=1000, seed=0):
    """(estimate, low, high): the statistic and its 95% percentile-bootstrap interval, resampling
    the images (rows of every array together)."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    values = [statistic(*(a[idx] for a in arrays)) for idx in (rng.integers(0, n, n) for _ in range(rounds))]
    return float(statistic(*arrays)), float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _fmt(triple):
    v, lo, hi = triple
    if math.isnan(v):
        return "n/a"
    return "%.4f (95%% CI %.4f-%.4f)" % (v, lo, hi)


def format_summary(s):
    names = s["class_names"]
    width = max(len(n) for n in names) + 2
    lines = ["images: %d" % s["n"],
             "accuracy:    %s" % _fmt(s["accuracy"]),
             "sensitivity: %s  (%s detected as %s: %d of %d)" % (_fmt(s["sensitivity"]), s["positive"], s["positive"],
                                                                s["tp"], s["tp"] + s["fn"]),
             "specificity: %s  (others not called %s: %d of %d)" % (_fmt(s["specificity"]), s["positive"], s["tn"],
                                                                   s["tn"] + s["fp"]),
             "ROC AUC:     %s" % _fmt(s["roc_auc"]),
             "confusion matrix (rows: true, columns: predicted):",
             " " * width + "".join("%*s" % (width, n) for n in names)]
    for n, row in zip(names, s["confusion"]):
        lines.append("%-*s" % (width, n) + "".join("%*d" % (width, v) for v in row))
    return "\n".join(lines)
