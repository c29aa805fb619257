"""Evaluation plots and the HTML report: curves against brute-force definitions, the plotted data
against them, the page's numbers against covidx.reports, and `covidx evaluate --report`."""
import base64
import csv
import io
import math
import os
import re
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from covidx import __main__ as cli  # noqa: E402
from covidx import plots, report_html, reports  # noqa: E402
from covidx.applications.resnet50 import ResNet50  # noqa: E402
from covidx.data import sample_files  # noqa: E402


def scores_with_ties(n=60, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.4
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * truth, 0.2), 0, 1), 1)  # rounding makes ties
    return scores, truth


# --- curves against their definitions --------------------------------------------------------------


def brute_pr(scores, truth):
    """Precision and recall at every distinct threshold, from the highest: called = score >= t."""
    out = []
    for t in sorted(set(scores), reverse=True):
        called = scores >= t
        out.append((np.sum(called & truth) / np.sum(called), np.sum(called & truth) / np.sum(truth), t))
    return np.array(out).T


def test_precision_recall_curve_matches_the_definition():
    scores, truth = scores_with_ties()
    precision, recall, thresholds = plots.precision_recall_curve(scores, truth)
    want_p, want_r, want_t = brute_pr(scores, truth)
    np.testing.assert_allclose(precision, want_p, rtol=1e-12)
    np.testing.assert_allclose(recall, want_r, rtol=1e-12)
    np.testing.assert_array_equal(thresholds, want_t)


def test_average_precision_is_the_mean_precision_at_the_positives():
    scores, truth = scores_with_ties()
    # each positive's precision: at the threshold of its own score (ties included)
    want = np.mean([np.sum((scores >= s) & truth) / np.sum(scores >= s) for s in scores[truth]])
    assert plots.average_precision(scores, truth) == pytest.approx(want, rel=1e-12)
    # a worked example: positives ranked 1st, 4th, 6th and 7th
    example = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.3]), np.array([1, 0, 0, 1, 0, 1, 1, 0], bool)
    assert plots.average_precision(*example) == pytest.approx((1 + 2 / 4 + 3 / 6 + 4 / 7) / 4)
    assert np.isnan(plots.average_precision(example[0], np.zeros(8, bool)))


def test_roc_figure_plots_the_roc_points():
    scores, truth = scores_with_ties(seed=1)
    fig = plots.roc_figure(scores, truth, "COV19", operating_point=(0.2, 0.7))
    curve = fig.axes[0].lines[1].get_xydata()
    thresholds = [np.inf] + sorted(set(scores), reverse=True)
    want = [(np.sum((scores >= t) & ~truth) / np.sum(~truth), np.sum((scores >= t) & truth) / np.sum(truth))
            for t in thresholds]
    np.testing.assert_allclose(curve, want, rtol=1e-12)
    auc = reports.roc_auc(scores, truth)[0]
    assert "AUC %.3f" % auc in fig.axes[0].lines[1].get_label()
    assert fig.axes[0].lines[2].get_xydata().tolist() == [[0.2, 0.7]]


def test_roc_auc_interval_keeps_its_width_on_small_samples():
    """The 8 bundled samples, perfectly ranked: DeLong's variance is 0 there, an interval of zero
    width. Newcombe's score interval (method 5) is used instead: it keeps a width, its bounds solve
    its defining equation, and on small samples it covers the true AUC about 95% of the time."""
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    auc, low, high = reports.roc_auc(np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1]), truth)
    assert auc == 1.0 and high == 1.0 and 0.4 < low < 0.9
    m = n = 4
    var = low * (1 - low) / (m * n) * (1 + (4 - 1) * ((1 - low) / (2 - low) + low / (1 + low)))
    assert (auc - low) ** 2 == pytest.approx(reports.Z95 ** 2 * var, rel=1e-9)
    rng = np.random.default_rng(0)
    for size, shift in ((4, 1.5), (8, 1.0)):
        true_auc = 0.5 * (1 + math.erf(shift / 2))  # P(N(shift, 1) > N(0, 1))
        covered = 0
        for _ in range(1000):
            scores = np.r_[rng.normal(shift, 1, size), rng.normal(0, 1, size)]
            _, lo, hi = reports.roc_auc(scores, np.r_[np.ones(size), np.zeros(size)].astype(bool))
            covered += lo <= true_auc <= hi
        assert 0.92 <= covered / 1000 <= 0.99, (size, covered)
    big = rng.normal(0, 1, 400)  # 200 + 200 images: DeLong's interval, as before
    labels = np.r_[np.ones(200), np.zeros(200)].astype(bool)
    big[labels] += 1.0
    auc, low, high = reports.roc_auc(big, labels)
    pos, neg = big[labels], big[~labels]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    half = reports.Z95 * math.sqrt(psi.mean(1).var(ddof=1) / 200 + psi.mean(0).var(ddof=1) / 200)
    assert (low, high) == pytest.approx((auc - half, auc + half), rel=1e-12)


def test_cli_samples_roc_auc_interval_has_width(capsys):
    assert cli.main(["evaluate"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("ROC AUC:"))
    low, high = (float(v) for v in line.split("CI ")[1].rstrip(")").split("-"))
    assert high - low > 0.05, line


def test_precision_recall_figure_area_is_the_average_precision():
    scores, truth = scores_with_ties(seed=2)
    fig = plots.precision_recall_figure(scores, truth, "COV19")
    x, y = fig.axes[0].lines[1].get_xydata().T  # lines[0]: the prevalence baseline
    # steps-pre: the segment ending at x[i] has height y[i]
    assert np.sum(np.diff(x) * y[1:]) == pytest.approx(plots.average_precision(scores, truth), rel=1e-12)
    assert fig.axes[0].lines[1].get_drawstyle() == "steps-pre"


def test_confusion_figure_writes_counts_and_row_shares():
    fig = plots.confusion_figure([[51, 9], [7, 33]], ["COV19", "Normal"])
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == sorted(["51\n(85%)", "9\n(15%)", "7\n(18%)", "33\n(82%)"])
    png = plots.figure_png(fig)
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size[0] > 300


def test_figures_show_as_pictures_in_a_notebook():
    """IPython shows a value by its richest representation: the figures must offer a PNG without
    `%matplotlib inline` (a plain Figure made without pyplot offers only '<Figure size ...>')."""
    formatters = pytest.importorskip("IPython.core.formatters")
    from PIL import Image

    scores, truth = np.array([0.1, 0.9, 0.4, 0.6]), np.array([False, True, False, True])
    for fig in (plots.roc_figure(scores, truth, "COV19"), plots.precision_recall_figure(scores, truth, "COV19"),
                plots.confusion_figure([[3, 1], [0, 4]], ["COV19", "Normal"]), plots.figure(figsize=(2, 1))):
        data, _ = formatters.DisplayFormatter().format(fig)
        assert data["text/plain"].startswith("<Figure size")
        image = Image.open(io.BytesIO(data["image/png"]))
        assert image.size == (round(fig.get_figwidth() * fig.dpi), round(fig.get_figheight() * fig.dpi))


def test_missing_matplotlib_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plots.roc_figure([0.1, 0.9], [False, True])


# --- the report's numbers ---------------------------------------------------------------------------


def test_per_class_metrics_from_the_confusion_matrix():
    labels = np.array([0] * 10 + [1] * 6 + [2] * 4)
    predicted = np.array([0] * 7 + [1] * 2 + [2] + [1] * 5 + [0] + [2] * 3 + [1])
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (labels, predicted), 1)
    rows = report_html.per_class_metrics(confusion, ["a", "b", "c"])
    for k, row in enumerate(rows):
        hits = np.sum((labels == k) & (predicted == k))
        assert row["support"] == np.sum(labels == k)
        assert row["precision"] == reports.wilson(hits, np.sum(predicted == k))
        assert row["recall"] == reports.wilson(hits, np.sum(labels == k))


def test_pick_examples_covers_each_kind_of_outcome():
    labels = np.array([0, 0, 0, 1, 1, 1])
    p_pos = np.array([0.95, 0.7, 0.3, 0.2, 0.6, 0.9])  # class 0 is the positive one
    probs = np.c_[p_pos, 1 - p_pos]
    picked = report_html.pick_examples(labels, probs, positive=0, k=5)
    assert picked == [(0, "true positive"), (2, "false negative"), (5, "false positive"), (3, "true negative"),
                      (1, "true positive")]


def data_images(page):
    return [(kind, base64.b64decode(data)) for kind, data in
            re.findall(r'src="data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_is_self_contained_and_shows_the_summary(tmp_path):
    scores, truth = scores_with_ties(80, seed=3)
    labels = np.where(truth, 0, 1)  # class 0, 'COV<19>', is the positive class
    probs = np.c_[scores, 1 - scores]
    names = ["COV<19>", "Normal"]
    path = report_html.write_report(tmp_path / "r.html", labels, probs, names, skipped=[("x/bad.png", "truncated")],
                                    source="test set")
    page = open(path, encoding="utf-8").read()
    # nothing fetched from anywhere: no external script, stylesheet or picture; the one script is
    # the inline sorter of the per-image table
    assert "http" not in page and " src=\"http" not in page and "<link" not in page
    assert re.findall(r"<script[^>]*>", page) == ["<script>"] and page.count("<script") == 1
    assert report_html.SORT_SCRIPT in page
    assert "COV&lt;19&gt;" in page and "COV<19>" not in page
    summary = reports.classification_summary(labels, probs, names)
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        v, lo, hi = summary[key]
        assert "<td>%.3f</td><td>%.3f &ndash; %.3f</td>" % (v, lo, hi) in page
    assert "%.3f" % plots.average_precision(scores, truth) in page
    assert "x/bad.png: truncated" in page
    from PIL import Image

    pictures = data_images(page)
    assert [k for k, _ in pictures] == ["png"] * 4  # confusion, ROC, PR, histogram; no model: no examples
    for _, data in pictures:
        assert Image.open(io.BytesIO(data)).size[0] >= 300


def test_report_with_gradcam_examples(tmp_path):
    model = ResNet50(weights=None, classes=2, class_names=["COV19", "Normal"], seed=5)
    files = [p for p, _ in sample_files()]
    labels = np.array([0 if label == "COVID-19" else 1 for _, label in sample_files()])
    from covidx.preprocessing.image import img_to_array, load_img

    x = model.preprocess(np.stack([img_to_array(load_img(p, target_size=(64, 64))) for p in files]))
    probs = model.predict(x, verbose=0)
    page = report_html.report_html(labels, probs, model.class_names, files=files, model=model, examples=3,
                                   target_size=(64, 64))
    pictures = data_images(page)
    assert [k for k, _ in pictures] == ["png"] * 4 + ["jpeg"] * 6  # 3 examples: X-ray and overlay each
    assert page.count("<figure>") == 3 and page.count("heatmap for") == 3
    from PIL import Image

    assert Image.open(io.BytesIO(pictures[-1][1])).size == (64, 64)


def test_sigmoid_outputs_and_a_single_class_name():
    scores, truth = scores_with_ties(seed=4)
    page = report_html.report_html(truth.astype(int), scores[:, None], ["COV19"])
    summary = reports.classification_summary(truth.astype(int), np.c_[1 - scores, scores], ["not COV19", "COV19"],
                                             positive=1)
    assert "<td>%.3f</td>" % summary["roc_auc"][0] in page and "Positive class: COV19" in page


# --- covidx evaluate --report and covidx info -----------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    ResNet50(weights=None, classes=2, class_names=["COV19", "Normal"], seed=6).save(path, dtype="float16")
    return str(path)


def test_cli_evaluate_writes_the_report(tmp_path, model_file, capsys):
    data = tmp_path / "data"
    for path, label in sample_files():
        os.makedirs(data / label, exist_ok=True)
        shutil.copy(path, data / label)
    (data / "Normal" / "broken.png").write_bytes(b"not an image")
    report = tmp_path / "out" / "report.html"
    os.makedirs(report.parent)
    code = cli.main(["evaluate", str(data), "--model", model_file, "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 1  # one unreadable file: reported, the rest evaluated
    assert "report written to %s" % report in out and "broken.png" in out
    page = report.read_text(encoding="utf-8")
    assert "8 images" in page and "broken.png" in page and page.count("<figure>") == 4


def test_cli_report_without_matplotlib_fails_before_the_work(tmp_path, model_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code = cli.main(["evaluate", "--model", model_file, "--report", str(tmp_path / "r.html")])
    captured = capsys.readouterr()
    assert code == 2 and "pip install matplotlib" in captured.err and "accuracy" not in captured.out
    assert not (tmp_path / "r.html").exists()


def test_cli_info_lists_the_optional_packages(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "OpenBLAS" in out and "optional packages:" in out
    for name in ("pydicom", "matplotlib", "dask", "pandas"):
        assert name in out


def test_expected_calibration_error_by_hand():
    # 15 bins of width 1/15: 0.55 and 0.58 fall in (0.533, 0.6], 0.95 and 0.97 in (0.933, 1]
    probs = np.array([[0.55, 0.45], [0.05, 0.95], [0.97, 0.03], [0.42, 0.58]])
    labels = np.array([0, 0, 0, 1])
    rows = reports.reliability_bins(probs, labels)
    assert [(r[2], round(r[3], 6), r[4]) for r in rows] == [(2, 0.565, 1.0), (2, 0.96, 0.5)]
    assert reports.expected_calibration_error(probs, labels) == pytest.approx((2 * 0.435 + 2 * 0.46) / 4)
    # a sigmoid column is read as P(class 1)
    assert reports.expected_calibration_error(probs[:, 1:], labels) == pytest.approx((2 * 0.435 + 2 * 0.46) / 4)
    # perfectly calibrated bins give 0
    assert reports.expected_calibration_error(np.array([[0.75, 0.25]] * 4), np.array([0, 0, 0, 1])) == 0


def test_bootstrap_interval_brackets_the_mean():
    x = np.random.default_rng(1).normal(3.0, 1.0, 400)
    est, lo, hi = reports.bootstrap_interval(np.mean, x)
    assert est == pytest.approx(x.mean()) and lo < est < hi
    half = 1.96 * x.std() / np.sqrt(len(x))  # the normal-theory interval, for comparison
    assert hi - lo == pytest.approx(2 * half, rel=0.2)


def test_reliability_figure_plots_the_bins():
    probs = np.array([[0.55, 0.45], [0.05, 0.95], [0.97, 0.03], [0.42, 0.58]])
    rows = reports.reliability_bins(probs, np.array([0, 0, 0, 1]))
    fig = plots.reliability_figure({"model": rows})
    line = [l for l in fig.axes[0].lines if l.get_label() == "model"][0]
    np.testing.assert_allclose(line.get_xdata(), [r[3] for r in rows])
    np.testing.assert_allclose(line.get_ydata(), [r[4] for r in rows])
    assert plots.figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


# --- hostile names, and what a reader needs to act -------------------------------------------------


def test_report_on_names_that_are_not_utf8_keeps_the_earlier_report_until_it_is_written(tmp_path, monkeypatch):
    """File, folder and class names that are not UTF-8 (or hold a newline) are shown escaped (the
    report died writing them, leaving r.html empty); the page and its CSV are written to temporary
    files renamed into place, so a report that fails to be written leaves the earlier one whole."""
    scores, truth = scores_with_ties(20, seed=1)
    labels, probs = np.where(truth, 0, 1), np.c_[scores, 1 - scores]
    files = [os.fsdecode(b"dir\xfe/img%d\xff\n.png" % i) for i in range(20)]
    path = tmp_path / "r.html"
    path.write_text("the earlier report", encoding="utf-8")
    (tmp_path / "r.images.csv").write_text("the earlier table", encoding="utf-8")

    def fails(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_html, "write_per_image_csv", fails)
    with pytest.raises(OSError):
        report_html.write_report(path, labels, probs, ["COV19", "Norm\udcffal"], files=files,
                                 skipped=[(files[0], "bad")], source=os.fsdecode(b"src\xfd"))
    assert path.read_text(encoding="utf-8") == "the earlier report"
    assert (tmp_path / "r.images.csv").read_text(encoding="utf-8") == "the earlier table"
    assert sorted(os.listdir(tmp_path)) == ["r.html", "r.images.csv"]
    monkeypatch.undo()
    report_html.write_report(path, labels, probs, ["COV19", "Norm\udcffal"], files=files,
                             skipped=[(files[0], "bad")], source=os.fsdecode(b"src\xfd"))
    page = path.read_text(encoding="utf-8")
    assert "dir\\xfe/img0\\xff\\n.png" in page and "Norm\\xffal" in page and "src\\xfd" in page
    rows = list(csv.reader(open(tmp_path / "r.images.csv", encoding="utf-8", newline="")))
    assert [r[0] for r in rows[1:]] == ["dir\\xfe/img%d\\xff\\n.png" % i for i in range(20)]


def test_class_names_with_mathtext_are_shown_as_written(tmp_path):
    """Class names from a model file are text, not matplotlib mathtext ('$\\frac{' made the report
    fail after scoring)."""
    scores, truth = scores_with_ties(30, seed=2)
    names = ["$\\frac{COV$", "Normal $x^"]
    path = report_html.write_report(tmp_path / "r.html", np.where(truth, 0, 1), np.c_[scores, 1 - scores], names)
    page = open(path, encoding="utf-8").read()
    assert "$\\frac{COV$" in page
    for figure in (plots.confusion_figure([[3, 1], [2, 4]], names), plots.roc_figure(scores, truth, names[0]),
                   plots.score_histogram_figure(scores, truth, names[0], negative_name=names[1])):
        plots.figure_png(figure)
        texts = [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]
        assert any(names[0].replace("$", "\\$") in t for t in texts)


def test_per_image_table_lists_every_misclassified_and_flagged_image(tmp_path):
    """Every false negative, false positive and unfamiliar image is in the page's table with its
    probabilities (the page named 1 of 27 false negatives); the CSV beside the page has every
    image, its outcome and probabilities."""
    rng = np.random.default_rng(5)
    n = 120
    labels = (rng.random(n) < 0.5).astype(int)  # class 0 'COV19' is the positive class
    p_pos = np.clip(np.where(labels == 0, 0.7, 0.3) + rng.normal(0, 0.3, n), 0.001, 0.999)
    probs = np.c_[p_pos, 1 - p_pos]
    unfamiliar = rng.gamma(2.0, 0.3, n)
    files = ["img%03d.png" % i for i in range(n)]
    false_negative = (labels == 0) & (p_pos <= 0.5)
    false_positive = (labels == 1) & (p_pos > 0.5)
    flagged = unfamiliar > 1
    assert false_negative.sum() > 5 and false_positive.sum() > 5 and 0 < flagged.sum() < n
    path = report_html.write_report(tmp_path / "r.html", labels, probs, ["COV19", "Normal"], files=files,
                                    unfamiliar=unfamiliar)
    page = open(path, encoding="utf-8").read()
    table = page[page.index("<table class=sortable>"):]
    table = table[:table.index("</table>")]
    listed = re.findall(r"<tr><td class=file>(img\d+\.png)</td><td>(\w+)</td><td>(\w+)</td><td[^>]*>([\w ]+)</td>"
                        r"<td data-v=([\d.]+)>[\d.]+</td><td data-v=([\d.]+)>[\d.]+</td><td data-v=([\d.]+)>", table)
    want = np.flatnonzero(false_negative | false_positive | flagged)
    assert [int(f[3:6]) for f, *_ in listed] == list(want)
    for (f, true, predicted, outcome, pc, pn, score), i in zip(listed, want):
        assert true == ["COV19", "Normal"][labels[i]] and predicted == ["COV19", "Normal"][int(p_pos[i] <= 0.5)]
        assert outcome == ("false negative" if false_negative[i] else "false positive" if false_positive[i]
                           else "true positive" if labels[i] == 0 else "true negative")
        assert abs(float(pc) - p_pos[i]) < 1e-6 and abs(float(pn) - (1 - p_pos[i])) < 1e-6
        assert abs(float(score) - unfamiliar[i]) < 1e-4
    assert "%d of %d images are misclassified" % (false_negative.sum() + false_positive.sum(), n) in page
    assert 'href="r.images.csv"' in page
    rows = list(csv.DictReader(open(tmp_path / "r.images.csv", encoding="utf-8", newline="")))
    assert [r["file"] for r in rows] == files
    np.testing.assert_allclose([float(r["P(COV19)"]) for r in rows], p_pos, atol=1e-6)
    np.testing.assert_allclose([float(r["unfamiliar_score"]) for r in rows], unfamiliar, atol=1e-4)
    assert [r["outcome"] == "false negative" for r in rows] == list(false_negative)
    assert [r["outcome"] == "false positive" for r in rows] == list(false_positive)
