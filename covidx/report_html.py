"""A one-page, self-contained HTML report of an evaluation: metrics with 95% confidence intervals,
the confusion matrix, ROC and precision-recall curves, score distributions and a few images with
their Grad-CAM heatmaps. Pictures are embedded (base64), so the file can be mailed or archived
alone. Needs matplotlib (pip install covidx[report])."""
from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import os
import urllib.parse

import numpy as np

from . import atomic, explain, plots, reports
from ._version import __version__
from .scaling import describe_preprocessing
from .display import printable, spreadsheet_cell

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1060px;
       color: #222; line-height: 1.4; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 26px; border-bottom: 1px solid #ddd; }
.sub { color: #666; font-size: 13px; } .warn { color: #8a4b00; font-size: 13px; margin: 6px 0 0; }
table { border-collapse: collapse; font-size: 14px; margin-top: 6px; }
th, td { padding: 4px 12px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f5f5f5; }
.plots { display: grid; grid-template-columns: repeat(2, 1fr); gap: 10px; }
.plots img { width: 100%; border: 1px solid #eee; }
.examples { display: grid; grid-template-columns: repeat(2, 1fr); gap: 14px; }
figure { margin: 0; border: 1px solid #eee; padding: 6px; } figure img { width: 49%; }
figcaption { font-size: 12px; color: #444; } .wrong { color: #b03a2e; font-weight: 600; }
.note { font-size: 12px; color: #666; }
th.sort { cursor: pointer; } th.sort:after { content: " \\2195"; color: #aaa; }
td.file { max-width: 420px; overflow-wrap: anywhere; }
"""

# click a column's heading to sort the table by it (numbers by value); once more to reverse
SORT_SCRIPT = """<script>
document.querySelectorAll("table.sortable th.sort").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var down = th.dataset.order !== "down"; th.dataset.order = down ? "down" : "up";
    var key = function (row) { var c = row.cells[col], v = c.dataset.v;
                               return v !== undefined ? parseFloat(v) : c.textContent.toLowerCase(); };
    Array.from(body.rows).sort(function (a, b) { var x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * (down ? -1 : 1); }).forEach(function (r) { body.appendChild(r); });
  });
});
</script>"""


def unfamiliar_section(scores, files, model):
    """How many images were flagged as unlike the training images, and which."""
    if scores is None:
        checked = model is not None and getattr(model, "unfamiliar", None) is not None
        return "" if checked else ("<h2>Unfamiliar images</h2><p class=note>Not checked: the model has no "
                                   "out-of-distribution statistics (covidx.fit_unfamiliar fits them).</p>")
    scores = np.asarray(scores, np.float64)
    flagged = np.flatnonzero(scores > 1)
    flagged = flagged[np.argsort(-scores[flagged])]
    text = ("<h2>Unfamiliar images</h2><p>%d of %d images are flagged as unlike the training images "
            "(out-of-distribution score above 1: farther from the training images' features than 99%% of "
            "held-out training images). Their predictions deserve less trust; an unflagged image is no "
            "guarantee.</p>" % (len(flagged), len(scores)))
    if len(flagged):
        rows = "".join("<tr><td>%s</td><td>%.2f</td></tr>" % (esc(files[i] if files is not None else "image %d" % i),
                                                              scores[i]) for i in flagged)
        text += "<table><tr><th>file</th><th>score</th></tr>%s</table>" % rows
    return text


def write_report(path, labels, probs, class_names, *, files=None, model=None, positive=None,
                 title="covidx evaluation report", examples=4, skipped=(), source=None, target_size=(224, 224),
                 unfamiliar=None, scaling=None):
    """Writes the report to path and returns path.

    labels: true class indices (n,); probs: the model's outputs (n, classes) or (n, 1) for a
    sigmoid; class_names: in the model's output order. files (n paths) and model: to show
    `examples` images with Grad-CAM heatmaps (read at target_size). skipped: (path, reason) pairs
    of files that could not be read. source: what was evaluated (e.g. the folder), for the header.
    unfamiliar: the images' out-of-distribution scores (n,) (model.predict(...,
    return_unfamiliar=True)); the report counts and lists those above 1. scaling: how the images
    were scaled for the model, for the header (default: the model's recorded preprocessing)."""
    path = os.fspath(path)
    table = csv_path(path)
    check_destination(path, "report")
    page = report_html(labels, probs, class_names, files=files, model=model, positive=positive, title=title,
                       examples=examples, skipped=skipped, source=source, target_size=target_size,
                       unfamiliar=unfamiliar, scaling=scaling, csv_name=os.path.basename(table))
    # written beside the page, each to a temporary file renamed into place: a failure leaves any earlier
    # report as it was
    with atomic.replacing(table) as (_, fd), os.fdopen(fd, "w", encoding="utf-8", newline="", closefd=False) as f:
        write_per_image_csv(f, labels, probs, class_names, files, unfamiliar, positive)
    with atomic.replacing(path) as (_, fd), os.fdopen(fd, "w", encoding="utf-8", closefd=False) as f:
        f.write(page)
    return path


def csv_path(path):
    """Where the per-image CSV of the report at path goes: beside it, r.html -> r.images.csv."""
    return os.path.splitext(os.fspath(path))[0] + ".images.csv"


def check_destination(path, what="report"):
    """Raises ValueError naming path where a file cannot be written there (a directory, a missing or
    read-only folder): checked before the work, so a run is never lost at the end."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError("%s: the %s path is a directory; give a file name (e.g. %s)"
                         % (printable(path), what, printable(os.path.join(path, "report.html"))))
    if not os.path.isdir(folder):
        raise ValueError("%s: cannot write the %s: no such folder %s" % (printable(path), what, printable(folder)))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError("%s: cannot write the %s: the folder %s is not writable" % (printable(path), what,
                                                                                    printable(folder)))


def report_html(labels, probs, class_names, *, files=None, model=None, positive=None, title="covidx evaluation report",
                examples=4, skipped=(), source=None, target_size=(224, 224), unfamiliar=None, scaling=None,
                csv_name=None):
    """The report as an HTML string (see write_report). csv_name: the per-image CSV beside it, linked."""
    labels = np.asarray(labels, np.int64)
    probs = two_columns(probs)
    names = list(class_names)
    if len(names) == 1:  # a sigmoid's one name is its positive class
        names, positive = ["not " + names[0], names[0]], 1 if positive is None else positive
    summary = reports.classification_summary(labels, probs, names, positive)
    pos = names.index(summary["positive"])
    scores, truth = probs[:, pos], labels == pos
    parts = [header(title, summary, model, source, scaling),
             "<h2>Metrics</h2>", metrics_table(summary, scores, truth),
             "<h2>Per class</h2>", per_class_table(per_class_metrics(summary["confusion"], names)),
             "<h2>Plots</h2>", plots_section(summary, scores, truth)]
    if model is not None and files is not None and examples:
        parts += ["<h2>Examples with Grad-CAM heatmaps</h2>",
                  examples_section(model, files, labels, probs, names, pos, examples, target_size)]
    parts.append(unfamiliar_section(unfamiliar, files, model))
    parts.append(per_image_section(labels, probs, names, files, unfamiliar, pos, csv_name))
    if skipped:
        items = "".join("<li>%s: %s</li>" % (esc(p), esc(r)) for p, r in skipped)
        parts.append("<h2>Files that could not be read (%d)</h2><ul class=note>%s</ul>" % (len(skipped), items))
    parts.append(methods_note(summary))
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>%s</title><style>%s</style></head>"
            "<body>\n%s\n%s</body></html>\n" % (esc(title), CSS, "\n".join(parts), SORT_SCRIPT))


def two_columns(probs):
    """(n, classes) probabilities; a sigmoid's (n, 1) becomes (n, 2): [1 - p, p]."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim == 1:
        probs = probs[:, None]
    return np.concatenate([1 - probs, probs], axis=1) if probs.shape[1] == 1 else probs


def esc(text):
    """text for HTML: escaped, with file names' non-UTF-8 bytes and control characters shown as
    escapes (see covidx.display), so that any name can be written."""
    return html.escape(printable(text), quote=True)


# --- per image ---------------------------------------------------------------------------------------


def per_image_rows(labels, probs, names, files, unfamiliar, positive):
    """[{file, true, predicted, outcome, probabilities, unfamiliar_score}] for every image, in the
    given order; outcome: 'false negative' / 'false positive' / 'true positive' / 'true negative' for
    the positive class of two, 'correct' / 'misclassified' otherwise."""
    predicted = np.argmax(probs, axis=1)
    rows = []
    for i in range(len(labels)):
        t, p = int(labels[i]), int(predicted[i])
        if len(names) == 2:
            outcome = "%s %s" % ("true" if t == p else "false", "positive" if p == positive else "negative")
        else:
            outcome = "correct" if t == p else "misclassified"
        rows.append({"file": files[i] if files is not None else "image %d" % i, "true": names[t],
                     "predicted": names[p], "outcome": outcome, "probabilities": probs[i],
                     "unfamiliar_score": None if unfamiliar is None else float(unfamiliar[i])})
    return rows


def per_image_section(labels, probs, names, files, unfamiliar, positive, csv_name=None):
    """Every misclassified image and every image flagged as unfamiliar, with its probabilities, in
    a table sorted by clicking a heading; the CSV beside the page has every image."""
    rows = per_image_rows(labels, probs, names, files, unfamiliar, positive)
    shown = [r for r in rows if r["outcome"].startswith(("false", "misclassified"))
             or (r["unfamiliar_score"] is not None and r["unfamiliar_score"] > 1)]
    wrong = sum(r["outcome"].startswith(("false", "misclassified")) for r in rows)
    flagged = sum(r["unfamiliar_score"] is not None and r["unfamiliar_score"] > 1 for r in rows)
    text = ("<h2>Images to look at (%d)</h2><p>%d of %d images are misclassified%s. Each is listed below with "
            "its probabilities (click a heading to sort).%s</p>"
            % (len(shown), wrong, len(rows), "" if unfamiliar is None else
               " and %d are flagged as unfamiliar" % flagged,
               "" if csv_name is None else ' Every image\'s result: <a href="%s">%s</a>.'
               % (esc(urllib.parse.quote(csv_name)), esc(csv_name))))
    if not shown:
        return text
    score_head = "" if unfamiliar is None else "<th class=sort>unfamiliar score</th>"
    head = ("<tr><th class=sort>file</th><th class=sort>true</th><th class=sort>predicted</th><th class=sort>outcome"
            "</th>%s%s</tr>" % ("".join("<th class=sort>P(%s)</th>" % esc(n) for n in names), score_head))
    body = []
    for r in shown:
        cells = "".join("<td data-v=%.6f>%.4f</td>" % (v, v) for v in r["probabilities"])
        if unfamiliar is not None:
            cells += "<td data-v=%.4f>%.2f</td>" % (r["unfamiliar_score"], r["unfamiliar_score"])
        wrong_class = " class=wrong" if r["outcome"].startswith(("false", "misclassified")) else ""
        body.append("<tr><td class=file>%s</td><td>%s</td><td>%s</td><td%s>%s</td>%s</tr>"
                    % (esc(r["file"]), esc(r["true"]), esc(r["predicted"]), wrong_class, esc(r["outcome"]), cells))
    return text + "<table class=sortable><thead>%s</thead><tbody>%s</tbody></table>" % (head, "".join(body))


def write_per_image_csv(f, labels, probs, class_names, files=None, unfamiliar=None, positive=None):
    """Every image's result as CSV on the text file f: file, true, predicted, outcome, one
    probability per class, the unfamiliar score. Names are written as printable text, and a cell a
    spreadsheet would take for a formula starts with an apostrophe (covidx.display)."""
    labels = np.asarray(labels, np.int64)
    probs = two_columns(probs)
    names = list(class_names)
    if len(names) == 1:
        names, positive = ["not " + names[0], names[0]], 1 if positive is None else positive
    pos = names.index(reports.classification_summary(labels, probs, names, positive)["positive"])
    w = csv.writer(f)
    w.writerow([spreadsheet_cell(c) for c in ["file", "true", "predicted", "outcome"]
                + ["P(%s)" % n for n in names] + ["unfamiliar_score"]])
    for r in per_image_rows(labels, probs, names, files, unfamiliar, pos):
        w.writerow([spreadsheet_cell(r[k]) for k in ("file", "true", "predicted", "outcome")]
                   + ["%.6f" % v for v in r["probabilities"]]
                   + ["" if r["unfamiliar_score"] is None else "%.4f" % r["unfamiliar_score"]])


# --- numbers ---------------------------------------------------------------------------------------


def per_class_metrics(confusion, names):
    """[{class, support, precision, recall}] from the confusion matrix (rows true, columns
    predicted); precision and recall as (estimate, low, high) Wilson intervals."""
    c = np.asarray(confusion, np.int64)
    rows = []
    for i, name in enumerate(names):
        hits, called, actual = int(c[i, i]), int(c[:, i].sum()), int(c[i, :].sum())
        rows.append({"class": name, "support": actual, "precision": reports.wilson(hits, called),
                     "recall": reports.wilson(hits, actual), "counts": (hits, called, actual)})
    return rows


def binary_metrics(summary, scores, truth):
    """[(name, (estimate, low, high) or a number, what it counts)] for the positive class."""
    tp, fp, tn, fn = summary["tp"], summary["fp"], summary["tn"], summary["fn"]
    precision, recall = reports.wilson(tp, tp + fp), summary["sensitivity"]
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return [
        ("Accuracy", summary["accuracy"], "%d of %d" % (tp + tn, summary["n"])),
        ("Sensitivity (recall)", recall, "%d of %d %s" % (tp, tp + fn, summary["positive"])),
        ("Specificity", summary["specificity"], "%d of %d others" % (tn, tn + fp)),
        ("Precision (PPV)", precision, "%d of %d called %s" % (tp, tp + fp, summary["positive"])),
        ("NPV", reports.wilson(tn, tn + fn), "%d of %d called other" % (tn, tn + fn)),
        ("ROC AUC", summary["roc_auc"], "DeLong interval (Newcombe's below %d images a class)"
         % reports.SMALL_CLASS),
        ("Average precision", plots.average_precision(scores, truth), "area under the PR curve"),
        ("F1", f1, ""),
    ]


def _cells(value):
    if isinstance(value, tuple):
        v, lo, hi = value
        if np.isnan(v):
            return "<td>n/a</td><td></td>"
        return "<td>%.3f</td><td>%.3f &ndash; %.3f</td>" % (v, lo, hi)
    return "<td>%s</td><td></td>" % ("n/a" if np.isnan(value) else "%.3f" % value)


def metrics_table(summary, scores, truth):
    rows = "".join("<tr><td>%s</td>%s<td class=note>%s</td></tr>" % (esc(name), _cells(value), esc(counted))
                   for name, value, counted in binary_metrics(summary, scores, truth))
    return ("<table><tr><th>metric</th><th>estimate</th><th>95%% CI</th><th>counts</th></tr>%s</table>"
            "<p class=note>Positive class: %s. Prediction = the class with the highest probability.</p>"
            % (rows, esc(summary["positive"])))


def per_class_table(rows):
    body = "".join("<tr><td>%s</td><td>%d</td>%s%s</tr>" % (esc(r["class"]), r["support"], _cells(r["precision"]),
                                                           _cells(r["recall"])) for r in rows)
    return ("<table><tr><th>class</th><th>images</th><th>precision</th><th>95% CI</th><th>recall</th>"
            "<th>95% CI</th></tr>" + body + "</table>")


# --- pictures --------------------------------------------------------------------------------------


def png_tag(png_bytes, alt):
    return '<img alt="%s" src="data:image/png;base64,%s">' % (esc(alt), base64.b64encode(png_bytes).decode("ascii"))


def jpeg_tag(pil_image, alt):
    buf = io.BytesIO()
    pil_image.convert("RGB").save(buf, format="JPEG", quality=90)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return '<img alt="%s" src="data:image/jpeg;base64,%s">' % (esc(alt), data)


def plots_section(summary, scores, truth):
    tp, fp, tn, fn = summary["tp"], summary["fp"], summary["tn"], summary["fn"]
    name = summary["positive"]
    roc_point = (fp / max(fp + tn, 1), tp / max(tp + fn, 1))
    pr_point = (tp / max(tp + fn, 1), tp / max(tp + fp, 1))
    others = [n for n in summary["class_names"] if n != name]
    negative_name = others[0] if len(others) == 1 else None
    figures = [("confusion matrix", plots.confusion_figure(summary["confusion"], summary["class_names"])),
               ("ROC curve", plots.roc_figure(scores, truth, name, roc_point)),
               ("precision-recall curve", plots.precision_recall_figure(scores, truth, name, pr_point)),
               ("score histogram", plots.score_histogram_figure(scores, truth, name, negative_name=negative_name))]
    return "<div class=plots>%s</div>" % "".join(png_tag(plots.figure_png(f), alt) for alt, f in figures)


def pick_examples(labels, probs, positive, k=4):
    """Up to k indices, [(index, kind)]: the most confident true positive, the positive most
    clearly missed, the negative most clearly mistaken, the most confident true negative, then
    more of the same kinds in turn."""
    scores = probs[:, positive]
    predicted_pos = np.argmax(probs, axis=1) == positive
    truth = labels == positive
    kinds = [("true positive", truth & predicted_pos, -scores), ("false negative", truth & ~predicted_pos, scores),
             ("false positive", ~truth & predicted_pos, -scores), ("true negative", ~truth & ~predicted_pos, scores)]
    queues = [(kind, [int(i) for i in np.flatnonzero(mask)[np.argsort(key[mask], kind="mergesort")]])
              for kind, mask, key in kinds]
    picked = []
    while len(picked) < k and any(q for _, q in queues):
        for kind, queue in queues:
            if queue and len(picked) < k:
                picked.append((queue.pop(0), kind))
    return picked


def examples_section(model, files, labels, probs, names, positive, k, target_size):
    cards = []
    for index, kind in pick_examples(labels, probs, positive, k):
        predicted = int(np.argmax(probs[index]))
        try:
            e = explain.gradcam(model, files[index], predicted, target_size=target_size)
        except (ValueError, OSError) as err:
            cards.append("<figure><figcaption>%s: %s</figcaption></figure>" % (esc(files[index]), esc(err)))
            continue
        wrong = " class=wrong" if predicted != labels[index] else ""
        caption = ("<b>%s</b> &middot; %s<br>true <b>%s</b>, predicted <span%s>%s</span> (P = %.3f); heatmap for %s"
                   % (esc(kind), esc(os.path.basename(os.fspath(files[index]))), esc(names[labels[index]]), wrong,
                      esc(names[predicted]), probs[index, predicted], esc(names[predicted])))
        cards.append("<figure>%s %s<figcaption>%s</figcaption></figure>"
                     % (jpeg_tag(e.image, "X-ray"), jpeg_tag(e.overlay, "Grad-CAM overlay"), caption))
    return "<div class=examples>%s</div>" % "".join(cards)


# --- text ------------------------------------------------------------------------------------------


def header(title, summary, model, source, scaling=None):
    counts = ", ".join("%s %d" % (n, sum(row)) for n, row in zip(summary["class_names"], summary["confusion"]))
    what = [("%d images (%s)" % (summary["n"], counts))]
    if source:
        what.append("from %s" % source)
    if model is not None:
        what.append("model %s" % getattr(model, "name", "?"))
        if scaling is None:
            scaling = describe_preprocessing(getattr(model, "preprocessing", None))
    if scaling is not None:
        what.append("input scaling: %s" % scaling)
    what.append("covidx %s, %s" % (__version__, datetime.datetime.now().strftime("%Y-%m-%d %H:%M")))
    return ("<h1>%s</h1><div class=sub>%s</div><p class=warn>Research use only; not for clinical decisions.</p>"
            % (esc(title), esc(" · ".join(what))))


def methods_note(summary):
    return ("<h2>Methods</h2><p class=note>95%% confidence intervals: Wilson score intervals for proportions "
            "(accuracy, sensitivity, specificity, precision, NPV); DeLong's method for the ROC AUC (Newcombe's "
            "score interval, method 5, where a class has fewer than %d images or every pair is ranked alike, "
            "where DeLong's is too narrow). Average "
            "precision: precision summed over the recall steps of the ranked %s scores, without interpolation. "
            "Heatmaps: Grad-CAM of the predicted class's logit at the last convolutional block "
            "(conv5_block3_out), upsampled bilinearly; red marks the regions that raised that class's score "
            "most. A heatmap shows where the model looked, not that it looked for the right reasons.</p>"
            % (reports.SMALL_CLASS, esc(summary["positive"])))
