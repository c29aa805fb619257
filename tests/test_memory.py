"""No leaks across many calls: resident memory stays flat over 1,000 predict calls, and over
repeated model construction and evaluation."""
import ctypes
import gc
import subprocess
import sys

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


ADDRESS_SPACE_SCRIPT = """
import resource, sys
import numpy as np
import torch
from covidx.formats import torch_files
from covidx.preprocessing.image import load_img
path_image, path_torch = sys.argv[1], sys.argv[2]
with open('/proc/self/statm') as f:
    now = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (now + (256 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
print(load_img(path_image).size)
obj = torch_files.read(path_torch, "legacy")
print(sorted(obj))
"""


def test_small_files_load_under_an_address_space_limit(tmp_path):
    """Under `ulimit -v` (shared machines, batch schedulers) a small image or a legacy PyTorch file
    loads with 256 MB of address space to spare: reading a file reserves its own size, not the
    largest size covidx accepts (512 MB for an image, gigabytes for a checkpoint)."""
    torch = pytest.importorskip("torch")
    from covidx.data import sample_files

    image = sample_files()[0][0]
    legacy = tmp_path / "legacy.pth"
    torch.save({"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}, legacy,
               _use_new_zipfile_serialization=False)
    out = subprocess.run([sys.executable, "-c", ADDRESS_SPACE_SCRIPT, str(image), str(legacy)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    size, keys = out.stdout.strip().splitlines()
    from PIL import Image

    with Image.open(image) as im:
        assert size == str(im.size)
    assert keys == str(["fc.bias", "fc.weight"])


def test_predict_converts_large_inputs_a_batch_at_a_time(tmp_path):
    """predict on a 602 MB uint8 memmap (4,000 images, a sparse file) and on a broadcast view of
    4,000 images (150 KB of data): each batch is converted to float32 as the engine takes it, so
    the call fits in an address space of what the process has plus 768 MB (both used to convert
    the whole input first: 2.4 GB, a MemoryError). The engine is replaced by one that records
    what it is given (4,000 real forward passes would take minutes); the real engine's outputs for
    a memmap are checked against the same images in memory in the next test."""
    import bounded
    from covidx.formats.hdf5 import limit_memory

    path = str(tmp_path / "images.u8")
    shape = (4000, 224, 224, 3)
    with open(path, "wb") as f:
        f.truncate(int(np.prod(shape)))
    model = ResNet50(weights=None, classes=2, head=(16,), seed=0)
    seen = []

    class Recorder:
        def forward(self, x, output=0, unfamiliar=False):
            assert x.dtype == np.float32 and x.flags.c_contiguous
            seen.append(len(x))
            return np.full((len(x), 2), float(x[0, 0, 0, 0]), np.float32)

    model._engine = Recorder()
    image = np.random.default_rng(0).integers(0, 256, size=(1, 224, 224, 3), dtype=np.uint8)

    def run():
        limit_memory(768 << 20)
        memmap = np.memmap(path, np.uint8, "r", shape=shape)
        a = model.predict(memmap, batch_size=32, verbose=0)
        b = model.predict(np.broadcast_to(image, shape), batch_size=32, verbose=0)
        return a.shape, float(np.abs(a).max()), b.shape, float(b.min()), float(b.max()), len(seen)

    outcome = bounded.run(run, seconds=60)
    assert outcome.error is None, outcome
    a_shape, a_max, b_shape, b_min, b_max, calls = outcome.value
    assert a_shape == b_shape == (4000, 2) and a_max == 0.0
    assert b_min == b_max == float(image[0, 0, 0, 0])
    assert calls == 2 * 125


def test_predict_on_a_memmap_matches_the_same_images_in_memory(tmp_path):
    model = ResNet50(weights=None, classes=2, head=(16,), seed=0)
    x = np.random.default_rng(1).integers(0, 256, size=(5, 48, 48, 3), dtype=np.uint8)
    path = str(tmp_path / "images.u8")
    x.tofile(path)
    memmap = np.memmap(path, np.uint8, "r", shape=x.shape)
    want = model.predict(x.astype(np.float32) / 255, batch_size=2, verbose=0)
    np.testing.assert_array_equal(model.predict(memmap / np.float32(255), batch_size=2, verbose=0), want)
    np.testing.assert_array_equal(model.predict(memmap, batch_size=2, verbose=0),
                                  model.predict(x.astype(np.float32), batch_size=2, verbose=0))
    with pytest.raises(ValueError, match=r"NaN or infinite pixel values in 1 of 3 images \(first: image 2\)"):
        model.predict(np.array([x[0], x[1], np.full(x[0].shape, 1e39)], np.float64), verbose=0)
