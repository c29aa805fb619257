"""Evaluation plots (matplotlib, an optional extra: pip install covidx[report]) and the
precision-recall curve they need.

Every function returns a matplotlib Figure made without pyplot (no global state, no display
needed); figure_png turns one into PNG bytes. The figures show themselves as pictures when they
are a notebook cell's last value (or passed to IPython's display()), with or without
`%matplotlib inline`; figure() makes an empty one of the same kind for your own plots."""
from __future__ import annotations

import io

import numpy as np

from . import reports
from .display import printable

COLOURS = {"curve": "#1f5fa8", "chance": "#9a9a9a", "point": "#c0392b", "negative": "#4c9a2a", "positive": "#c0392b"}


def require_matplotlib():
    """matplotlib's Figure class, or an ImportError that says what to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots and HTML reports need matplotlib: pip install matplotlib "
                          "(or pip install covidx[report])") from None
    return Figure


_notebook_figure = None


def _figure_class():
    """matplotlib's Figure with a PNG representation, which Jupyter shows as a picture (a plain
    Figure made without pyplot prints as '<Figure size ... with 1 Axes>' unless the inline
    backend is on)."""
    global _notebook_figure
    base = require_matplotlib()  # each time: matplotlib may have gone since the class was made
    if _notebook_figure is None or _notebook_figure.__bases__[0] is not base:
        class NotebookFigure(base):
            def _repr_png_(self):
                return figure_png(self, dpi=self.dpi)

        NotebookFigure.__name__ = NotebookFigure.__qualname__ = "Figure"
        _notebook_figure = NotebookFigure
    return _notebook_figure


def figure(figsize=(4.2, 3.8), dpi=100, layout="constrained", **kwargs):
    """An empty matplotlib Figure (no pyplot) that shows itself in a notebook: fig.subplots() etc."""
    return _figure_class()(figsize=figsize, dpi=dpi, layout=layout, **kwargs)


def _figure(width=4.2, height=3.8):
    return figure(figsize=(width, height))


def figure_png(fig, dpi=110):
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


# --- curves ------------------------------------------------------------------------------------------


def precision_recall_curve(scores, truth):
    """(precision, recall, thresholds), one point per distinct score from the highest down: at
    threshold t, the images with score >= t are called positive."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], truth[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(t)[last_of_each]
    called = last_of_each + 1
    recall = tps / max(int(t.sum()), 1)
    return tps / called, recall, s[last_of_each]


def average_precision(scores, truth):
    """Precision averaged over the positives' recall steps: sum over thresholds of
    (recall_k - recall_{k-1}) * precision_k (no interpolation)."""
    precision, recall, _ = precision_recall_curve(scores, truth)
    if not np.asarray(truth, bool).any():
        return float("nan")
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# --- figures -----------------------------------------------------------------------------------------


def confusion_figure(confusion, class_names, title="Confusion matrix"):
    """Counts, with each row's share (of the true class) under them; rows true, columns predicted."""
    confusion = np.asarray(confusion)
    fig = _figure(3.6 + 0.4 * len(class_names), 3.2 + 0.4 * len(class_names))
    ax = fig.subplots()
    row_share = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            ax.text(j, i, "%d\n(%.0f%%)" % (confusion[i, j], 100 * row_share[i, j]), ha="center", va="center",
                    color="white" if row_share[i, j] > 0.6 else "black", fontsize=11)
    ticks, labels = range(len(class_names)), [literal(n) for n in class_names]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(literal(title))
    return fig


def roc_figure(scores, truth, positive_name="positive", operating_point=None):
    """The ROC curve with its AUC and 95% CI in the legend; operating_point: (fpr, tpr) to mark."""
    fpr, tpr, _ = reports.roc_curve(scores, truth)
    auc, lo, hi = reports.roc_auc(scores, truth)
    fig = _figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color=COLOURS["chance"], label="chance")
    ax.plot(fpr, tpr, drawstyle="default", color=COLOURS["curve"], linewidth=2,
            label="AUC %.3f (95%% CI %.3f-%.3f)" % (auc, lo, hi))
    if operating_point is not None:
        ax.plot([operating_point[0]], [operating_point[1]], "o", color=COLOURS["point"], label="operating point")
    _unit_axes(ax, "false positive rate (1 - specificity)", "true positive rate (sensitivity)")
    ax.set_title("ROC curve: %s" % literal(positive_name))
    ax.legend(loc="lower right", fontsize=8)
    return fig


def precision_recall_figure(scores, truth, positive_name="positive", operating_point=None):
    """Precision against recall, the average precision in the legend, and the prevalence (what a
    random score would give) as the baseline; operating_point: (recall, precision) to mark."""
    precision, recall, _ = precision_recall_curve(scores, truth)
    # the thresholds where recall rises: the step curve whose area is the average precision
    rises = np.diff(np.r_[0.0, recall]) > 0
    precision, recall = precision[rises], recall[rises]
    prevalence = float(np.mean(np.asarray(truth, bool)))
    fig = _figure()
    ax = fig.subplots()
    ax.axhline(prevalence, linestyle="--", color=COLOURS["chance"], label="prevalence %.2f" % prevalence)
    ax.plot(np.r_[0.0, recall], np.r_[precision[:1], precision], drawstyle="steps-pre", color=COLOURS["curve"],
            linewidth=2, label="AP %.3f" % average_precision(scores, truth))
    if operating_point is not None:
        ax.plot([operating_point[0]], [operating_point[1]], "o", color=COLOURS["point"], label="operating point")
    _unit_axes(ax, "recall (sensitivity)", "precision (PPV)")
    ax.set_title("Precision-recall: %s" % literal(positive_name))
    ax.legend(loc="lower left", fontsize=8)
    return fig


def score_histogram_figure(scores, truth, positive_name="positive", threshold=0.5, negative_name=None):
    """The positive class's probability, one histogram per true class."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    positive_name, negative_name = literal(positive_name), None if negative_name is None else literal(negative_name)
    fig = _figure(4.6, 3.4)
    ax = fig.subplots()
    bins = np.linspace(0, 1, 21)
    ax.hist(scores[~truth], bins=bins, alpha=0.6, color=COLOURS["negative"],
            label="true: %s" % (negative_name or "not " + positive_name))
    ax.hist(scores[truth], bins=bins, alpha=0.6, color=COLOURS["positive"], label="true: %s" % positive_name)
    ax.axvline(threshold, linestyle="--", color=COLOURS["chance"])
    ax.set_xlim(0, 1)
    ax.set_xlabel("P(%s)" % positive_name)
    ax.set_ylabel("images")
    ax.set_title("Scores by true class")
    ax.legend(fontsize=8)
    return fig


def reliability_figure(curves, title="Reliability diagram"):
    """curves: {label: reports.reliability_bins(...) rows}. Accuracy against mean confidence per
    bin (marker area by count) with the diagonal of perfect calibration."""
    fig = _figure(4.6, 4.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color=COLOURS["chance"], linestyle="--", linewidth=1, label="perfect calibration")
    for (label, rows), colour in zip(curves.items(), [COLOURS["point"], COLOURS["curve"], COLOURS["negative"]]):
        conf = [r[3] for r in rows]
        acc = [r[4] for r in rows]
        ax.plot(conf, acc, color=colour, linewidth=1.2, marker="o", markersize=3, label=literal(label))
        ax.scatter(conf, acc, s=[max(8.0, 2.0 * r[2] ** 0.75) for r in rows], color=colour, alpha=0.35)
    _unit_axes(ax, "mean confidence (top class)", "accuracy")
    ax.set_xlim(0.45, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_title(literal(title))
    ax.legend(loc="upper left", fontsize=8)
    return fig


def literal(text):
    """text shown as it is: class names come from model files and folder names, and matplotlib reads
    $...$ in any label as mathtext (a name like '$\\frac' failed the whole report)."""
    return printable(text).replace("$", r"\$")


def _unit_axes(ax, xlabel, ylabel):
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
