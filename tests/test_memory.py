"""No leaks across many calls: resident memory stays flat over 1,000 predict calls, and over
repeated model construction and evaluation."""
import ctypes
import gc

import numpy as np
import pytest

from covidx.applications.resnet50 import ResNet50


def statm_mb(field):
    """One field of /proc/self/statm (0: virtual size, 1: resident), in MB."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[field]) * 4096 / 2**20


def rss_mb():
    """Resident memory after handing freed heap pages back to the system, so that what is measured
    is memory still in use, not glibc's cached free blocks."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return statm_mb(1)


def test_rss_flat_over_1000_predict_calls():
    model = ResNet50(weights=None, classes=2, head=(16,), seed=0)
    x = np.random.default_rng(0).uniform(size=(1, 32, 32, 3)).astype(np.float32)
    for _ in range(100):  # warm-up: buffer plans, thread pool, allocator arenas
        model.predict(x, verbose=0)
    gc.collect()
    before = rss_mb()
    for i in range(1000):
        model.predict(x if i % 2 else x[:, :, ::-1], verbose=0)  # non-contiguous input: a copy each time
    gc.collect()
    assert rss_mb() - before < 4.0, (before, rss_mb())


def test_rss_flat_over_model_rebuilds_and_errors():
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    model = ResNet50(weights=None, classes=2, head=(16,), seed=0)
    weights = model.get_weights()
    for _ in range(10):  # warm-up: the allocator settles on its arenas and thresholds
        model.set_weights(weights)
        model.predict(x, verbose=0)
    gc.collect()
    before = rss_mb()
    for _ in range(20):
        model.set_weights(weights)  # rebuilds the C engine (folds batchnorm again)
        model.predict(x, verbose=0)
        for bad in (np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, 32, 32, 4), np.float32)):
            try:
                model.predict(bad, verbose=0)
            except ValueError:
                pass
    gc.collect()
    assert rss_mb() - before < 8.0, (before, rss_mb())


def test_memory_flat_over_refused_dense_layers():
    """A Dense layer refused for a non-finite weight leaves nothing behind. Its copy (8 MB here) is
    allocated before the check and never written, so a leak would show in the virtual size only."""
    model = ResNet50(weights=None, classes=2, head=(1024,), seed=0)
    bad = [w.copy() for w in model.get_weights()]
    kernel = next(w for w in bad if w.shape == (2048, 1024))  # the first Dense layer's
    kernel[5, 7] = np.nan
    for _ in range(3):  # warm-up
        with pytest.raises(ValueError, match="dense"):
            model.set_weights(bad)
    before = statm_mb(0)
    for _ in range(20):
        with pytest.raises(ValueError, match="dense"):
            model.set_weights(bad)
    assert statm_mb(0) - before < 40.0, (before, statm_mb(0))
