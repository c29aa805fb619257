"""covidx.distributed on a real dask.distributed LocalCluster with 2 worker processes: the table
equals local scoring of the same files, unreadable files give rows with their errors, and each
worker loads the model once and sizes its threads to its share of the cores."""
import os
import shutil

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")

import covidx  # noqa: E402
from covidx import distributed as cdist  # noqa: E402
from covidx.applications.resnet50 import ResNet50  # noqa: E402
from covidx.data import sample_files  # noqa: E402
from covidx.preprocessing.image import img_to_array, load_img  # noqa: E402

SIZE = (64, 64)  # small images keep the cluster test fast; the code path is the same as at 224


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A model with out-of-distribution statistics, fitted on noisy variants of the samples."""
    model = ResNet50(weights=None, classes=2, class_names=["COV19", "Normal"], seed=3, preprocessing="caffe")
    rng = np.random.default_rng(0)
    x = np.stack([img_to_array(load_img(p, target_size=SIZE)) for p, _ in sample_files()] * 8)
    y = np.array([label == "Normal" for _, label in sample_files()] * 8, np.int64)
    x = model.preprocess(np.clip(x * rng.uniform(0.8, 1.2, (len(x), 1, 1, 1)) + rng.normal(0, 8, x.shape), 0, 255))
    covidx.fit_unfamiliar(model, (x, y))
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       worker_dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The 8 sample X-rays (in class folders), a corrupt file and a missing one."""
    root = tmp_path_factory.mktemp("xrays")
    paths = []
    for path, label in sample_files():
        os.makedirs(root / label, exist_ok=True)
        paths.append(str(shutil.copy(path, root / label / os.path.basename(path))))
    bad = root / "Normal" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    return root, paths, str(bad), str(root / "missing.png")


def local_predictions(model_path, paths):
    """(probabilities, out-of-distribution scores)."""
    model = covidx.load_model(model_path)
    x = model.preprocess(np.stack([img_to_array(load_img(p, target_size=SIZE)) for p in paths]))
    return model.predict(x, verbose=0, return_unfamiliar=True)


def test_matches_local_predict_with_bad_files_reported(client, model_file, files):
    _, good, bad, missing = files
    paths = good[:3] + [bad] + good[3:] + [missing]
    table = cdist.predict_files(paths, client, model_path=model_file, chunk_size=3, batch_size=2, target_size=SIZE)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["path", "COV19", "Normal", "predicted", "unfamiliar", "unfamiliar_score", "error"]
    assert list(table["path"]) == paths
    ok = table["error"].isna()
    assert list(ok) == [p not in (bad, missing) for p in paths]
    # one image at a time: at this size the workers' batches of 1-2 images take the same
    # convolution algorithms (Winograd or im2col is chosen by the number of tiles in a batch)
    local = [local_predictions(model_file, [p]) for p in good]
    want = np.concatenate([probs for probs, _ in local])
    np.testing.assert_allclose(table.loc[ok, ["COV19", "Normal"]].to_numpy(), want, rtol=0, atol=1e-6)
    assert list(table.loc[ok, "predicted"]) == [["COV19", "Normal"][i] for i in np.argmax(want, axis=1)]
    scores = np.concatenate([s for _, s in local])
    np.testing.assert_allclose(table.loc[ok, "unfamiliar_score"].to_numpy(np.float64), scores, rtol=1e-5)
    assert list(table.loc[ok, "unfamiliar"]) == list(scores > 1)
    broken = table.set_index("path").loc[bad]
    assert np.isnan(broken["COV19"]) and pd.isna(broken["predicted"]) and "broken.png" in broken["error"]
    assert pd.isna(broken["unfamiliar"]) and np.isnan(broken["unfamiliar_score"])
    assert "no such image file" in table.set_index("path").loc[missing, "error"]


def test_a_folder_is_searched_and_chunks_reach_both_workers(client, model_file, files):
    root, good, bad, _ = files
    table = cdist.predict_files(str(root), client, model_path=model_file, chunk_size=2, target_size=SIZE)
    assert sorted(table["path"]) == sorted(good + [bad])
    assert table["error"].notna().sum() == 1
    # both workers scored chunks, each loaded the model once and took half of this machine's cores
    state = client.run(lambda: (len(cdist._models), covidx.get_num_threads()))
    assert len(state) == 2
    cores = cdist._cores()
    for loaded, threads in state.values():
        assert loaded == 1 and threads == max(1, cores // 2)


def test_model_loaded_once_per_worker(client, model_file, files):
    _, good, _, _ = files
    before = client.run(lambda: id(cdist._models.get(os.path.abspath(model_file), (None,))[0]))
    cdist.predict_files(good, client, model_path=model_file, chunk_size=1, target_size=SIZE)
    after = client.run(lambda: id(cdist._models[os.path.abspath(model_file)][0]))
    for worker, model_id in after.items():
        assert before[worker] in (model_id, id(None))  # same object as before where one was loaded


def test_image_files_lists_images_and_dicom(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("a.png", "b/c.DCM", "b/d.txt", "e.jpeg"):
        (tmp_path / name).write_bytes(b"")
    assert cdist.image_files(tmp_path) == [str(tmp_path / "a.png"), str(tmp_path / "e.jpeg"),
                                           str(tmp_path / "b" / "c.DCM")]
    assert cdist.image_files(["x.png", str(tmp_path / "b")]) == ["x.png", str(tmp_path / "b" / "c.DCM")]


def test_thread_share_outside_a_worker_is_all_cores():
    assert cdist.thread_share({"127.0.0.1": 2}) == cdist._cores()


def test_clear_errors(client, model_file, tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        cdist.predict_files(str(tmp_path), client, model_path=model_file)
    with pytest.raises(ValueError, match="chunk_size"):
        cdist.predict_files(["a.png"], client, model_path=model_file, chunk_size=0)
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        cdist.predict_files(["a.png"], client, model_path=str(tmp_path / "nowhere.safetensors"))


def test_workers_that_cannot_import_covidx_fail_fast(model_file, files, tmp_path, monkeypatch):
    # Worker processes whose sys.path finds a covidx/ source tree without its engine first (as
    # when a notebook's kernel has changed into a checkout) cannot load the task function:
    # predict_files says so instead of waiting forever. Spawned workers inherit sys.path.
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.dirname(covidx.__file__), checkout / "covidx",
                    ignore=shutil.ignore_patterns("_core*", "_libs", "weights", "__pycache__"))
    (checkout / "setup.py").write_text("# stand-in for a checkout's setup.py\n")
    monkeypatch.syspath_prepend(str(checkout))
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                       worker_dashboard_address=None)
    try:
        with distributed.Client(cluster) as c:
            with pytest.raises(RuntimeError, match="cannot be imported on the Dask workers.*source tree"):
                cdist.predict_files(files[1][:2], c, model_path=model_file)
    finally:
        cluster.close()


def _rss_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _start_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from here
    return _rss_kb("VmRSS")


def test_near_limit_images_cost_no_rows_and_under_1_gb_per_worker(model_file, files, tmp_path):
    """48 X-rays and one 13000 x 13000 RGBA PNG (670 KB) on 1.6 GB workers lost all 49 rows
    (KilledWorker: decoding took 1.3 GB). Every row now comes back, within 1 GB extra per worker:
    the 16-bit PNG (338 MB decoded) scored, the RGBA one (676 MB) an error row naming the budget."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import hostile_files

    big = [hostile_files.blank_png(tmp_path / "rgba.png", 13000, 13000, 6, 8),
           hostile_files.blank_png(tmp_path / "grey16.png", 13000, 13000, 0, 16)]
    _, good, _, _ = files
    paths = good[:4] + big + good[4:]
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                       worker_dashboard_address=None, memory_limit="1.6GB")
    try:
        with distributed.Client(cluster) as c:
            before = c.run(_start_peak)
            table = cdist.predict_files(paths, c, model_path=model_file, chunk_size=8, target_size=SIZE)
            after = c.run(_rss_kb, "VmHWM")
    finally:
        cluster.close()
    assert list(table["path"]) == paths
    extra_mb = max((after[w] - before[w]) / 1024 for w in before)
    assert extra_mb < 1024, extra_mb
    ok = table["error"].isna()
    assert list(ok) == [p != big[0] for p in paths], table["error"].tolist()
    assert "per-image memory budget" in table.set_index("path").loc[big[0], "error"]
    want = np.concatenate([local_predictions(model_file, [p])[0] for p in good])
    np.testing.assert_allclose(table.loc[[p in good for p in paths], ["COV19", "Normal"]].to_numpy(), want,
                               rtol=0, atol=1e-6)


def test_bad_target_size_is_named(client, model_file, files):
    for bad in [(224,), (0, 0), (10 ** 6, 10 ** 6)]:
        with pytest.raises(ValueError, match="target_size"):
            cdist.predict_files(files[1][:1], client, model_path=model_file, target_size=bad)
