"""Scoring many image files on a Dask cluster (pip install covidx[distributed]).

    from dask.distributed import Client
    from covidx.distributed import predict_files

    client = Client("tcp://scheduler-host:8786")          # or None: a LocalCluster on this machine
    table = predict_files("/data/xrays", client, model_path="/shared/models/covid.safetensors")

The file list is cut into chunks, one task each. A worker loads the model the first time it needs
it and keeps it for the worker's lifetime (one copy per worker process), and sizes covidx's
threads to its share of its machine's cores: cores // (workers on that machine). Every worker
must be able to read the image files and the model file at the paths given (a shared or
replicated file system). A file that cannot be read gives a row with its error; it does not stop
the run. Listing the files, reading them and naming the columns is file_scoring.py's, shared with
`covidx predict`."""
from __future__ import annotations

import os
import sys
import threading

import numpy as np

from . import _config, checks, saving
from .file_scoring import IMAGE_EXTENSIONS  # noqa: F401  (offered here too, where it was defined)
from .file_scoring import image_files, output_names, predicted_name, probability_columns, read_batch
from .preprocessing.reader import check_target_size
from .progbar import Progbar

DEFAULT_CHUNK = 64

_models = {}  # per worker process: model path -> (model, lock); the model stays loaded between tasks
_models_lock = threading.Lock()


def _dask():
    try:
        import distributed
        import pandas  # noqa: F401
    except ImportError:
        raise ImportError("covidx.distributed needs dask.distributed and pandas: pip install 'dask[distributed]' "
                          "pandas (or pip install covidx[distributed])") from None
    return distributed


def predict_files(paths, client=None, *, model_path=None, batch_size=16, chunk_size=DEFAULT_CHUNK,
                  target_size=(224, 224), progress=False):
    """Class probabilities for every file, computed on a Dask cluster; a pandas DataFrame with one
    row per file, in the order given: path, one probability column per class (named by class),
    predicted (the class name), unfamiliar (True where the image is unlike the training images)
    and unfamiliar_score (its out-of-distribution score; above 1 is unfamiliar), and error (why
    the file could not be read). For an unreadable file the probabilities, predicted and the
    unfamiliar columns are missing (NaN/None); for the others error is. For a model without
    out-of-distribution statistics the unfamiliar columns are missing too.

    paths: a list of files and folders, or one folder (searched recursively for images and .dcm).
    client: a dask.distributed Client; None uses the current default client, or starts a
        LocalCluster on this machine for the call.
    model_path: a covidx model file readable on every worker; None: covidx's shipped model.
    Images are read with load_img at target_size and the model's recorded preprocessing, exactly
    as covidx predict does; batch_size images go through the engine at a time."""
    distributed = _dask()
    files = image_files(paths)
    if not files:
        raise ValueError("predict_files: no image files in %r" % (paths,))
    batch_size = checks.positive_int(batch_size, "batch_size", allow_none=False)
    chunk_size = checks.positive_int(chunk_size, "chunk_size", allow_none=False)
    check_target_size(target_size)
    if model_path is not None:
        model_path = os.path.abspath(os.fspath(model_path))
    own_client = None
    if client is None:
        try:
            client = distributed.default_client()
        except ValueError:
            own_client = client = distributed.Client(distributed.LocalCluster(threads_per_worker=1,
                                                                               n_workers=local_workers()))
    try:
        check_workers(client)
        per_host = workers_per_host(client)
        chunks = [files[i:i + chunk_size] for i in range(0, len(files), chunk_size)]
        futures = client.map(score_chunk, chunks, model_path=model_path, workers_per_host=per_host,
                             batch_size=batch_size, target_size=tuple(target_size), pure=False)
        if progress:
            _show_progress(distributed, futures, len(files), chunk_size)
        results = client.gather(futures)
    finally:
        if own_client is not None:
            cluster = own_client.cluster
            own_client.close()
            cluster.close()
    return to_frame(results)


def check_workers(client):
    """Raises at once, with the workers' own error, when covidx cannot be imported on them (not
    installed there, or shadowed by a covidx/ source folder in their working directory); tasks
    whose function cannot be loaded would otherwise never finish."""
    try:
        client.run(exec, "import covidx.distributed")
    except Exception as exc:
        raise RuntimeError("covidx cannot be imported on the Dask workers: %s: %s"
                           % (type(exc).__name__, exc)) from exc


def local_workers():
    """Workers for a LocalCluster on this machine: enough to decode images while the engine runs,
    each with several cores for the engine."""
    cores = _cores()
    return max(1, min(4, cores // 4))


def _cores():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def workers_per_host(client):
    """{host: number of workers on it}, from the scheduler's view of the cluster."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # dask.distributed before 2025 lists every worker without being asked
        info = client.scheduler_info()
    counts = {}
    for w in info.get("workers", {}).values():
        counts[w["host"]] = counts.get(w["host"], 0) + 1
    return counts


def _show_progress(distributed, futures, n_files, chunk_size):
    bar = Progbar(n_files, verbose=1, stream=sys.stderr)
    done = 0
    for _ in distributed.as_completed(futures):
        done = min(n_files, done + chunk_size)
        bar.update(done)


# --- on the workers ----------------------------------------------------------------------------------


def worker_model(model_path, workers_per_host=None):
    """(model, lock) for this worker process: loaded on first use, then kept. Sets covidx's threads to
    this worker's share of its machine's cores."""
    key = model_path or "<shipped model>"
    with _models_lock:
        if key not in _models:
            model = saving.load_model(model_path)
            _config.set_num_threads(thread_share(workers_per_host or {}))
            _models[key] = (model, threading.Lock())
        return _models[key]


def thread_share(workers_per_host):
    """This machine's cores divided among the workers that run on it (at least 1)."""
    try:
        from distributed import get_worker
        from distributed.comm import get_address_host

        host = get_address_host(get_worker().address)
    except (ImportError, ValueError):  # not running inside a worker
        return _cores()
    return max(1, _cores() // max(1, workers_per_host.get(host, 1)))


def score_chunk(paths, model_path=None, workers_per_host=None, batch_size=16, target_size=(224, 224)):
    """Runs on a worker: {'class_names': [...], 'rows': [(path, probabilities or None, error or None,
    out-of-distribution score or None)]}."""
    model, lock = worker_model(model_path, workers_per_host)
    arrays, errors, _ = read_batch(paths, target_size, every_error=True)  # every row comes back
    readable = [p for p in paths if p in arrays]
    probs, scores = {}, {}
    for start in range(0, len(readable), batch_size):
        batch = readable[start:start + batch_size]
        x = model.preprocess(np.stack([arrays[p] for p in batch]))
        with lock:  # one engine call at a time per worker: each already uses the worker's share of cores
            if model.unfamiliar is not None:
                out, batch_scores = model.predict(x, verbose=0, return_unfamiliar=True)
                scores.update(zip(batch, (float(v) for v in batch_scores)))
            else:
                out = model.predict(x, verbose=0)
        probs.update(zip(batch, (np.asarray(row, np.float64) for row in out)))
    return {"class_names": output_names(model),
            "rows": [(p, probs.get(p), errors.get(p), scores.get(p)) for p in paths]}


# --- the table ---------------------------------------------------------------------------------------


def to_frame(results):
    """One DataFrame from the chunks' results, rows in file order."""
    import pandas as pd

    names = results[0]["class_names"]
    columns = probability_columns(names)
    table = {"path": []}
    table.update({c: [] for c in columns})
    table["predicted"], table["unfamiliar"], table["unfamiliar_score"], table["error"] = [], [], [], []
    for result in results:
        for path, probs, error, score in result["rows"]:
            table["path"].append(path)
            for i, c in enumerate(columns):
                table[c].append(np.nan if probs is None else float(probs[i]))
            table["predicted"].append(None if probs is None else predicted_name(probs, names))
            table["unfamiliar"].append(None if score is None else bool(score > 1))
            table["unfamiliar_score"].append(np.nan if score is None else score)
            table["error"].append(error)
    return pd.DataFrame(table)
