"""The out-of-distribution score: the engine's value against an independent NumPy computation of
the Mahalanobis distances from the same features (the descriptor itself is checked against
PyTorch in test_engine_vs_torch.py), the thresholds, files, and the API around it."""
import os
import warnings

import numpy as np
import pytest

import covidx
from covidx.applications.resnet50 import ResNet50
from covidx.data import sample_files
from covidx.preprocessing.image import img_to_array, load_img
from covidx.unfamiliar import CELLS, DEFAULT_PARTS, FEATURE_SETS, PROJECTED_CHANNELS, GaussianPart, UnfamiliarStats

SIZE = 64


def images(n, seed):
    """n variants of the bundled X-rays at SIZE x SIZE (brightness, contrast, noise, mirror), in
    [0, 1], and their labels (the folder of the sample: 0 COVID-19, 1 Normal)."""
    rng = np.random.default_rng(seed)
    base = [(img_to_array(load_img(p, target_size=(SIZE, SIZE))) / 255.0, int(label != "COVID-19"))
            for p, label in sample_files()]
    xs, ys = [], []
    for i in range(n):
        x, y = base[i % len(base)]
        x = x[:, ::-1] if rng.random() < 0.5 else x
        x = (x - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.1, 0.1) + rng.normal(0, 0.03, x.shape)
        xs.append(np.clip(x, 0, 1))
        ys.append(y)
    return np.stack(xs).astype(np.float32), np.array(ys)


@pytest.fixture(scope="module")
def fitted():
    model = ResNet50(weights=None, classes=2, head=(32,), input_norm=1e-5, seed=7)
    x, y = images(96, seed=1)
    hx, hy = images(40, seed=2)
    stats = covidx.fit_unfamiliar(model, (x, y), holdout=(hx, hy))
    return model, stats, (x, y), (hx, hy)


def numpy_projected(part, features):
    """A projected part's variables: each of its cells x (the grid's 9 cells, one after the other in
    the descriptor) -> P^T (x - m), the cells' results side by side."""
    f = features.astype(np.float64)
    if part.projection is None:
        return f
    cin = part.projection.shape[0]
    assert f.shape[1] == 9 * cin
    p, m = part.projection.astype(np.float64), part.projection_mean.astype(np.float64)
    return np.concatenate([(f[:, i * cin:(i + 1) * cin] - m) @ p for i in range(9)], axis=1)


def numpy_distances(part, features):
    """The textbook formula with the full covariance matrix: Sigma = V diag(lambda) V^T +
    sigma2 (I - V V^T), d_c^2 = (f - mu_c)^T Sigma^-1 (f - mu_c), minimum over classes (f: the
    part's slice of the descriptor, projected where the part has a projection)."""
    features = numpy_projected(part, features)
    v = part.basis.astype(np.float64)
    proj = v @ v.T
    sigma = v @ np.diag(part.variances) @ v.T + part.residual_variance * (np.eye(len(v)) - proj)
    best = np.full(len(features), np.inf)
    for mu in part.means.astype(np.float64):
        g = features.astype(np.float64) - mu
        best = np.minimum(best, np.einsum("ij,ij->i", g, np.linalg.solve(sigma, g.T).T))
    return np.sqrt(best)


def numpy_scores(stats, descriptors):
    """The largest over the parts of each part's distance (its slice of the descriptor) over its
    threshold."""
    per_part = []
    for part in stats.parts:
        off, size = FEATURE_SETS[part.feature]
        per_part.append(numpy_distances(part, descriptors[:, off:off + size]) / part.threshold)
    return np.max(per_part, axis=0)


def test_score_matches_numpy_mahalanobis(fitted):
    model, stats, _, _ = fitted
    x, _ = images(24, seed=3)
    x[-4:] = np.random.default_rng(4).uniform(0, 1, x[-4:].shape)  # noise images: far away
    probs, scores = model.predict(x, return_unfamiliar=True, verbose=0)
    np.testing.assert_array_equal(probs, model.predict(x, verbose=0))  # the same forward pass, same outputs
    descriptors = model.descriptors(x)
    np.testing.assert_array_equal(descriptors[:, :2048], model.features(x))  # the pooled features come first
    want = numpy_scores(stats, descriptors)
    assert scores.shape == (24,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, want, rtol=1e-4)
    # the plain C reference agrees too
    _, ref_scores = model._engine.forward(x, reference=True, unfamiliar=True)
    np.testing.assert_allclose(ref_scores, want, rtol=1e-4)
    # images unlike the fitted ones score far higher than the X-ray variants
    assert scores[-4:].min() > 1 and scores[-4:].min() > 2 * np.median(scores[:-4])
    # a smaller batch (another GEMM tiling, so features equal to float rounding) gives the same scores
    np.testing.assert_allclose(model.predict(x[5:9], return_unfamiliar=True, verbose=0)[1], scores[5:9], rtol=1e-5)


def test_every_feature_set_scores_like_numpy(fitted):
    """A part of each feature set (pooled features, the channel statistics of the stem and every
    stage, the grid of the last feature map, the thumbnail): the engine's scores, fast and plain,
    against the NumPy formula."""
    model, _, (x, y), (hx, hy) = fitted
    stats = covidx.unfamiliar.fit(model.descriptors(x), y, model.descriptors(hx),
                                  parts={name: 8 for name in FEATURE_SETS})
    assert stats.features == list(FEATURE_SETS) and len(stats.parts) == 8
    try:
        model.set_unfamiliar(stats)
        probe, _ = images(12, seed=9)
        probe[-3:] = np.random.default_rng(10).uniform(0, 1, probe[-3:].shape)
        _, scores = model.predict(probe, return_unfamiliar=True, verbose=0)
        want = numpy_scores(stats, model.descriptors(probe))
        np.testing.assert_allclose(scores, want, rtol=1e-4)
        _, ref_scores = model._engine.forward(probe, reference=True, unfamiliar=True)
        np.testing.assert_allclose(ref_scores, want, rtol=1e-4)
        # each part decides for some image: the maximum is not always the same part's
        parts = np.stack([numpy_distances(p, p.select(model.descriptors(probe))) / p.threshold for p in stats.parts])
        assert len(set(parts.argmax(0))) > 1
    finally:
        model.set_unfamiliar(fitted[1])


def test_threshold_is_the_held_out_quantile(fitted):
    model, stats, (x, y), (hx, hy) = fitted
    _, held = model.predict(hx, return_unfamiliar=True, verbose=0)
    assert np.mean(held > 1) <= 0.01 + 1.0 / len(hx)
    assert abs(np.quantile(held, 0.99) - 1.0) < 1e-4
    assert stats.info["fitted_on"] == len(x) and stats.info["held_out"] == len(hx)
    assert stats.features == list(DEFAULT_PARTS)
    for part in stats.parts:
        size = FEATURE_SETS[part.feature][1]
        if part.feature in CELLS:  # the grid's cells, each projected onto its leading directions
            assert part.projection.shape == (size // CELLS[part.feature], PROJECTED_CHANNELS)
            size = CELLS[part.feature] * PROJECTED_CHANNELS
        # as many directions as asked, or as the 96 images (or the dimensions) allow
        assert part.components == min(DEFAULT_PARTS[part.feature], 93, size - 1) and part.means.shape == (2, size)
        # each part's threshold is its own 99th percentile times one common factor (>= 1)
        d = numpy_distances(part, part.select(model.descriptors(hx)))
        assert part.threshold >= np.quantile(d, 0.99) * (1 - 1e-5)
    factors = [p.threshold / np.quantile(numpy_distances(p, p.select(model.descriptors(hx))), 0.99)
               for p in stats.parts]
    np.testing.assert_allclose(factors, factors[0], rtol=1e-4)


def test_statistics_travel_with_the_file(fitted, tmp_path):
    model, stats, _, (hx, _) = fitted
    path = tmp_path / "with_stats.safetensors"
    model.save(path, dtype="float16")
    back = covidx.load_model(path)
    assert back.unfamiliar is not None and back.unfamiliar.features == stats.features
    for got_part, part in zip(back.unfamiliar.parts, stats.parts):
        assert got_part.threshold == part.threshold and got_part.residual_variance == part.residual_variance
        np.testing.assert_array_equal(got_part.basis, part.basis)  # float32 even in a float16 file
        np.testing.assert_array_equal(got_part.means, part.means)
    # the same statistics give the same scores for the (float16-rounded) model's own features
    _, got = back.predict(hx[:6], return_unfamiliar=True, verbose=0)
    np.testing.assert_allclose(got, numpy_scores(stats, back.descriptors(hx[:6])), rtol=1e-4)


def test_single_part_files_of_earlier_versions_load(fitted, tmp_path):
    """A file whose statistics are one part of the pooled features under the earlier names
    (unfamiliar/basis, ...; metadata with features 'avg_pool') loads and scores as that part."""
    import json

    from covidx import safetensors_io

    from covidx.unfamiliar import fit

    model, _, (x, y), (hx, hy) = fitted
    path = tmp_path / "new.safetensors"
    model.save(path)
    tensors, meta = safetensors_io.load(str(path))
    pooled = fit(model.descriptors(x), y, model.descriptors(hx), parts={"avg_pool": 128}).parts[0]
    assert pooled.feature == "avg_pool"
    tensors = {k: v for k, v in tensors.items() if not k.startswith("unfamiliar/")}
    tensors.update({"unfamiliar/basis": pooled.basis, "unfamiliar/variances": pooled.variances.astype(np.float32),
                    "unfamiliar/means": pooled.means})
    meta["unfamiliar"] = json.dumps({"features": "avg_pool", "residual_variance": pooled.residual_variance,
                                     "threshold": pooled.threshold, "components": pooled.components,
                                     "quantile": 0.99})
    old = tmp_path / "old.safetensors"
    safetensors_io.save(str(old), tensors, meta)
    back = covidx.load_model(old)
    assert back.unfamiliar.features == ["avg_pool"] and back.unfamiliar.info["quantile"] == 0.99
    _, got = back.predict(hx[:5], return_unfamiliar=True, verbose=0)
    np.testing.assert_allclose(got, numpy_distances(pooled, back.features(hx[:5])) / pooled.threshold, rtol=1e-4)


def test_model_without_statistics_says_so(tmp_path):
    model = ResNet50(weights=None, classes=2, head=(8,), seed=1)
    assert model.unfamiliar is None
    x, _ = images(2, seed=5)
    with pytest.raises(ValueError, match="no out-of-distribution statistics.*fit_unfamiliar"):
        model.predict(x, return_unfamiliar=True)
    assert model.predict(x, verbose=0).shape == (2, 2)  # works as before
    model.save(tmp_path / "plain.safetensors")
    assert covidx.load_model(tmp_path / "plain.safetensors").unfamiliar is None


def test_changed_backbone_drops_the_statistics_head_change_keeps_them(fitted):
    model, stats, _, (hx, _) = fitted
    weights = model.get_weights()
    keys = model._weight_keys()
    head = [i for i, k in enumerate(keys) if k.startswith("dense")]
    changed_head = list(weights)
    changed_head[head[0]] = weights[head[0]] * 1.5
    model.set_weights(changed_head)
    assert model.unfamiliar is stats
    _, scores = model.predict(hx[:3], return_unfamiliar=True, verbose=0)
    np.testing.assert_allclose(scores, numpy_scores(stats, model.descriptors(hx[:3])), rtol=1e-4)
    changed_backbone = list(weights)
    changed_backbone[0] = weights[0] * 1.01
    with pytest.warns(UserWarning, match="statistics were dropped"):
        model.set_weights(changed_backbone)
    assert model.unfamiliar is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_weights(weights)
    model.set_unfamiliar(stats)  # restore for the other tests


def test_iterator_with_a_bad_file_keeps_rows_aligned(fitted, tmp_path):
    from covidx.preprocessing.image import ImageDataGenerator

    model, stats, _, _ = fitted
    for cls in ("COV19", "Normal"):
        os.makedirs(tmp_path / cls)
    files = sample_files()
    for i, (p, label) in enumerate(files[:4]):
        (tmp_path / ("COV19" if label == "COVID-19" else "Normal") / ("%d.png" % i)).write_bytes(open(p, "rb").read())
    (tmp_path / "Normal" / "broken.png").write_bytes(b"not a png")
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(tmp_path, target_size=(SIZE, SIZE), batch_size=2,
                                                                 shuffle=False, on_error="skip")
    probs, scores = model.predict(it, return_unfamiliar=True, verbose=0)
    bad = [i for i, f in enumerate(it.filenames) if f.endswith("broken.png")]
    assert len(scores) == len(it.filenames) == 5 and np.isnan(scores[bad]).all() and np.isnan(probs[bad]).all()
    good = [i for i in range(5) if i not in bad]
    assert np.isfinite(scores[good]).all()


def test_fit_on_a_labelled_iterator_matches_arrays(tmp_path):
    """fit_unfamiliar on flow_from_directory gives the statistics of the same images as arrays."""
    from covidx.preprocessing.image import ImageDataGenerator

    x, y = images(30, seed=8)
    for cls in ("a", "b"):
        os.makedirs(tmp_path / cls)
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(tmp_path / "ab"[label] / ("%02d.png" % i))
    model = ResNet50(weights=None, classes=2, head=(8,), seed=2)
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(tmp_path, target_size=(SIZE, SIZE), batch_size=7,
                                                                 class_mode="categorical", shuffle=False)
    xs = np.concatenate([it[i][0] for i in range(len(it))])
    ys = np.concatenate([it[i][1] for i in range(len(it))]).argmax(1)
    from_iterator = covidx.fit_unfamiliar(model, it, holdout=(xs[:10], ys[:10]))
    from_arrays = covidx.fit_unfamiliar(model, (xs, ys), holdout=(xs[:10], ys[:10]))
    # features equal to float rounding (the batches differ: 7 against 32 images)
    for a, b in zip(from_iterator.parts, from_arrays.parts):
        scale = np.abs(b.means).max()
        np.testing.assert_allclose(a.means, b.means, rtol=0, atol=1e-5 * scale)
        assert a.threshold == pytest.approx(b.threshold, rel=1e-3)
    with pytest.raises(ValueError, match="labels"):
        covidx.fit_unfamiliar(model, ImageDataGenerator().flow_from_directory(tmp_path, target_size=(SIZE, SIZE),
                                                                              class_mode=None))


def test_bad_statistics_are_refused(fitted):
    with pytest.raises(ValueError, match="expected basis"):
        GaussianPart("avg_pool", np.zeros((10, 2)), np.ones(2), 1.0, np.zeros((2, 10)), 1.0)
    with pytest.raises(ValueError, match="expected basis"):  # the stem's statistics are 128 values
        GaussianPart("stem_stats", np.zeros((2048, 2)), np.ones(2), 1.0, np.zeros((2, 2048)), 1.0)
    with pytest.raises(ValueError, match="unknown feature set"):
        GaussianPart("stage9_stats", np.zeros((128, 2)), np.ones(2), 1.0, np.zeros((2, 128)), 1.0)
    with pytest.raises(ValueError, match="finite"):
        GaussianPart("avg_pool", np.zeros((2048, 2)), np.array([1.0, np.nan]), 1.0, np.zeros((2, 2048)), 1.0)
    with pytest.raises(ValueError, match="positive"):
        GaussianPart("avg_pool", np.zeros((2048, 2)), np.ones(2), 1.0, np.zeros((2, 2048)), 0.0)
    part = GaussianPart("stem_stats", np.eye(128, 2), np.ones(2), 1.0, np.zeros((2, 128)), 1.0)
    with pytest.raises(ValueError, match="twice"):
        UnfamiliarStats([part, part])
    # the engine checks again (a slice past the descriptor's end, mismatched shapes)
    model = fitted[0]
    with pytest.raises(ValueError, match="offset"):
        model._engine.set_unfamiliar([(covidx._core.DESCRIPTOR_FLOATS - 64,) + part.engine_args()[1:]])
    # a projected part: its cells must fit the descriptor, cells * cout equal d, the mean cin long
    layout = fitted[1].parts[0]
    assert layout.feature == "layout"
    args = layout.engine_args()
    with pytest.raises(ValueError, match="offset"):
        model._engine.set_unfamiliar([(covidx._core.DESCRIPTOR_FLOATS - 2048 * 8,) + args[1:]])
    with pytest.raises(ValueError, match="cells"):
        model._engine.set_unfamiliar([args[:8] + (8,)])
    with pytest.raises(ValueError, match="cells"):
        model._engine.set_unfamiliar([args[:7] + (args[7][:100], 9)])
    with pytest.raises(TypeError, match="part 0"):
        model._engine.set_unfamiliar([args[:7]])  # a projection without its cells
    with pytest.raises(ValueError, match="projection"):
        GaussianPart("layout", layout.basis, layout.variances, 1.0, layout.means, 1.0)
    with pytest.raises(ValueError, match="projection"):
        GaussianPart("layout", layout.basis, layout.variances, 1.0, layout.means, 1.0, layout.projection[:100],
                     layout.projection_mean)
    with pytest.raises(ValueError, match="projection is only for"):
        GaussianPart("stem_stats", np.eye(128, 2), np.ones(2), 1.0, np.zeros((2, 128)), 1.0, layout.projection,
                     layout.projection_mean)
    with pytest.raises(TypeError, match="part 0"):
        model._engine.set_unfamiliar([("x",)])
    with pytest.raises(TypeError, match="list"):
        model._engine.set_unfamiliar(part.engine_args())
    model.set_unfamiliar(fitted[1])  # the model's engine was never changed by the refused calls


# --- where users see it: covidx predict / evaluate and the HTML report --------------------------


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """A 224x224 model file with statistics fitted on variants of the samples, and a folder of the
    samples (in class folders) plus a noise image (which must be flagged)."""
    from PIL import Image

    model = ResNet50(weights=None, classes=2, head=(16,), class_names=["COV19", "Normal"], input_norm=1e-5,
                     preprocessing={"rescale": 1 / 255}, seed=9)
    rng = np.random.default_rng(3)
    base = np.stack([img_to_array(load_img(p, target_size=(224, 224))) for p, _ in sample_files()]) / 255.0
    labels = np.array([label == "Normal" for _, label in sample_files()], np.int64)
    x = np.concatenate([np.clip(base * rng.uniform(0.8, 1.2, (8, 1, 1, 1)) + rng.normal(0, 0.03, base.shape), 0, 1)
                        for _ in range(4)]).astype(np.float32)
    covidx.fit_unfamiliar(model, (x, np.tile(labels, 4)), holdout=(base.astype(np.float32), labels))
    root = tmp_path_factory.mktemp("cli")
    path = root / "model.safetensors"
    model.save(path)
    data = root / "data"
    for p, label in sample_files():
        os.makedirs(data / label, exist_ok=True)
        (data / label / os.path.basename(p)).write_bytes(open(p, "rb").read())
    noise = data / "Normal" / "noise.png"
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(noise)
    return str(path), data, str(noise)


def test_cli_predict_records_and_table(cli_model, capsys):
    import json

    from covidx import __main__ as cli

    path, data, noise = cli_model
    files = sorted(str(p) for p in data.rglob("*.png"))
    assert cli.main(["predict", *files, "--json", "--model", path]) == 0
    records = json.loads(capsys.readouterr().out)
    model = covidx.load_model(path)
    x = model.preprocess(np.stack([img_to_array(load_img(f, target_size=(224, 224))) for f in files]))
    _, want = model.predict(x, return_unfamiliar=True, verbose=0)
    assert [r["path"] for r in records] == files
    np.testing.assert_allclose([r["unfamiliar_score"] for r in records], want, rtol=0, atol=1e-4)
    assert [r["unfamiliar"] for r in records] == list(want > 1)
    assert records[files.index(noise)]["unfamiliar"] is True
    assert cli.main(["predict", *files, "--csv", "--model", path]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split(",")[3:6] == ["predicted", "unfamiliar", "unfamiliar_score"]
    assert rows[1 + files.index(noise)].split(",")[4] == "true"
    assert cli.main(["predict", *files, "--model", path]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "unfamiliar (score)" in table[0]
    assert "YES" in table[1 + files.index(noise)] and sum("YES" in line for line in table) == int((want > 1).sum())


def test_cli_evaluate_and_report_list_the_flagged_images(cli_model, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from covidx import __main__ as cli

    path, data, noise = cli_model
    report = tmp_path / "report.html"
    assert cli.main(["evaluate", str(data), "--model", path, "--report", str(report)]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("unfamiliar images:"))
    flagged = int(line.split()[2])
    assert line.startswith("unfamiliar images: %d of 9" % flagged) and flagged >= 1 and noise in out
    page = report.read_text(encoding="utf-8")
    assert "<h2>Unfamiliar images</h2>" in page and "%d of 9 images are flagged" % flagged in page
    assert noise in page


def test_cli_without_statistics_says_so(tmp_path, capsys):
    import json

    from covidx import __main__ as cli

    path = tmp_path / "plain.safetensors"
    ResNet50(weights=None, classes=2, head=(8,), class_names=["COV19", "Normal"], seed=1,
             preprocessing={"rescale": 1 / 255}).save(path)
    sample = sample_files()[0][0]
    assert cli.main(["predict", sample, "--json", "--model", str(path)]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)[0]
    assert record["unfamiliar"] is None and record["unfamiliar_score"] is None
    assert "no out-of-distribution statistics" in captured.err


# --- the shipped model on real images ------------------------------------------------------------

# the real X-rays: $COVIDX_DATA (as covidx.data and test_articles read it), else ../shared/data/cxr
SHARED_CXR = os.environ.get("COVIDX_DATA") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                          "shared", "data", "cxr")


def shipped_scores(folder, classes=None):
    from covidx.preprocessing.image import ImageDataGenerator

    model = covidx.load_model()
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(folder, target_size=(224, 224), batch_size=32,
                                                                 class_mode=None, shuffle=False, classes=classes)
    return model.predict(it, return_unfamiliar=True, verbose=0)[1]


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_CXR, "unfamiliar")),
                    reason="the real X-rays are not here: set COVIDX_DATA to them (or put "
                    "../shared/data/cxr beside the checkout)")
def test_shipped_model_flags_few_of_the_test_split():
    """The shipped statistics (fitted on training images only): at most 3% of the test split
    flagged (the threshold is the 0.99 quantile of held-out training images)."""
    model = covidx.load_model()
    assert model.unfamiliar is not None, "the shipped model must carry its out-of-distribution statistics"
    test = shipped_scores(os.path.join(SHARED_CXR, "covid19-radiography", "test"))
    assert len(test) == 894 and np.mean(test > 1) <= 0.03


def test_the_real_x_rays_are_found_through_covidx_data(tmp_path):
    """COVIDX_DATA names the real X-rays here as for covidx.data and test_articles (the tests run
    where it points instead of skipping for want of ../shared)."""
    import subprocess
    import sys

    env = dict(os.environ, COVIDX_DATA=str(tmp_path))
    code = "import sys; sys.path.insert(0, %r); import test_unfamiliar as t; print(t.SHARED_CXR)" % os.path.dirname(
        os.path.abspath(__file__))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == str(tmp_path), run.stderr


SHORTFALL = ("the shipped model's features do not set children's radiographs apart (measured: 0% flagged; "
             "weights/MODEL_CARD.md): the bar stands, the model falls short of it")


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_CXR, "unfamiliar")),
                    reason="the real X-rays are not here: set COVIDX_DATA to them (or put "
                    "../shared/data/cxr beside the checkout)")
@pytest.mark.parametrize("kind, at_least", [
    ("ct", 0.95),
    ("lateral", 0.80),
    pytest.param("pediatric", 0.60, marks=pytest.mark.xfail(strict=True, reason=SHORTFALL)),
])
def test_shipped_model_flags_unfamiliar_images(kind, at_least):
    """The shipped statistics on the unfamiliar folders: most CT slices, lateral views and
    children's X-rays flagged."""
    model = covidx.load_model()
    assert model.unfamiliar is not None, "the shipped model must carry its out-of-distribution statistics"
    scores = shipped_scores(os.path.join(SHARED_CXR, "unfamiliar"), classes=[kind])
    assert np.mean(scores > 1) >= at_least, (kind, np.mean(scores > 1))


PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text", "clock", "horse",
               "immunohistochemistry", "brick", "grass", "gravel", "cell", "colorwheel", "logo")


def test_shipped_model_flags_photographs():
    """scikit-image's sample images (photographs, micrographs, textures, text; none a radiograph),
    read as covidx reads a file: RGB, nearest resize to 224x224, rescaled by 1/255."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    model = covidx.load_model()
    x = []
    for name in PHOTOGRAPHS:
        a = np.asarray(getattr(skimage_data, name)())
        a = a.astype(np.uint8) * 255 if a.dtype == bool else a
        x.append(np.asarray(Image.fromarray(a).convert("RGB").resize((224, 224), Image.NEAREST), np.float32))
    _, scores = model.predict(np.stack(x) / np.float32(255), return_unfamiliar=True, verbose=0)
    assert np.mean(scores > 1) >= 0.95, dict(zip(PHOTOGRAPHS, scores.round(2)))
