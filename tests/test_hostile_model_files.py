"""Small hostile model files that once made covidx run for ever or allocate gigabytes: each must be
refused with a ModelFileError naming the file, within 10 s and under 1 GB of extra peak memory
(bounded.run checks both in a child process). The files are made here, byte by byte."""
import json
import os
import pickle
import struct

import numpy as np
import pytest

import bounded
import covidx
import hostile_files
from covidx.formats import ModelFileError


def refused(path, *words):
    """load_model(path) in a bounded child: a ModelFileError (a ValueError) naming path and words."""
    outcome = bounded.run(lambda: covidx.load_model(path))
    assert isinstance(outcome.error, ValueError), outcome
    message = str(outcome.error)
    assert str(path) in message, message
    for w in words:
        assert w in message, message
    return outcome


def shared_lists(depth):
    """L = [L, L], depth times: a few hundred bytes of pickle, 2**depth paths through it."""
    obj = []
    for _ in range(depth):
        obj = [obj, obj]
    return obj


# --- PyTorch pickles -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_shared_references_are_walked_once(tmp_path, layout):
    data = pickle.dumps(shared_lists(40), protocol=2)
    assert len(data) < 600
    path = tmp_path / "shared.pth"
    (hostile_files.torch_zip if layout == "zip" else hostile_files.torch_legacy)(path, data)
    refused(path, "no state_dict")


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_huge_memo_index_is_refused(tmp_path, layout):
    # NONE, LONG_BINPUT 2**27: the unpickler would size its memo table for 2**27 entries
    data = b"\x80\x02N" + b"r" + struct.pack("<I", 1 << 27) + b"."
    path = tmp_path / "memo.pth"
    if layout == "zip":
        hostile_files.torch_zip(path, data)
    else:
        path.write_bytes(data)
    refused(path, "memo index")


def test_declared_length_beyond_the_data_is_refused(tmp_path):
    data = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc."  # BINBYTES8 of 1 TB, 3 bytes present
    path = tmp_path / "long.pth"
    hostile_files.torch_legacy(path, data)
    refused(path, "pickle data")


def test_stride_zero_tensor_is_refused(tmp_path):
    pytest.importorskip("torch")
    storage = hostile_files.Storage("0", 1)
    data = hostile_files.torch_pickle({"conv1.weight": hostile_files.Tensor(storage, (16384, 16384), (0, 0))})
    path = tmp_path / "stride0.pth"
    hostile_files.torch_zip(path, data, [("0", np.zeros(1, np.float32).tobytes())])
    assert os.path.getsize(path) < 1000
    refused(path, "strides (0, 0)")


def test_overlapping_strides_are_refused(tmp_path):
    pytest.importorskip("torch")
    storage = hostile_files.Storage("0", 64)
    data = hostile_files.torch_pickle({"fc.bias": hostile_files.Tensor(storage, (8, 8), (1, 1))})
    path = tmp_path / "overlap.pth"
    hostile_files.torch_zip(path, data, [("0", np.zeros(64, np.float32).tobytes())])
    refused(path, "strides (1, 1)")


def test_transposed_tensor_is_read_as_torch_reads_it(tmp_path):
    """A dense layout other than C order (a transposed tensor) is a real torch file, not hostile."""
    torch = pytest.importorskip("torch")
    from covidx.formats import torch_files

    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"w": weight.t()}, tmp_path / "t.pt")
    np.testing.assert_array_equal(torch_files.read(str(tmp_path / "t.pt"), "zip")["w"], weight.t().numpy())


def test_deflated_gigabyte_storage_is_refused(tmp_path):
    pytest.importorskip("torch")
    size = 1 << 30
    storage = hostile_files.Storage("0", size // 4)
    data = hostile_files.torch_pickle({"conv1.weight": hostile_files.Tensor(storage, (size // 4,), (1,))})
    stream, crc = hostile_files.deflated_zeros(size)
    path = hostile_files.torch_zip(tmp_path / "bomb.pth", data, [("0", (stream, crc, size))])
    assert os.path.getsize(path) < 2 << 20
    refused(path, "storage 0 declares 268435456 elements")


def test_deflated_storage_within_the_limits_is_refused_by_its_ratio(tmp_path):
    """A storage of a size ResNet50 can have (64 MiB) deflated 1000-fold: a zip bomb, refused
    before it is inflated (torch.save stores its members uncompressed)."""
    pytest.importorskip("torch")
    size = 64 << 20
    storage = hostile_files.Storage("0", size // 4)
    data = hostile_files.torch_pickle({"fc.weight": hostile_files.Tensor(storage, (size // 4,), (1,))})
    stream, crc = hostile_files.deflated_zeros(size)
    path = hostile_files.torch_zip(tmp_path / "ratio.pth", data, [("0", (stream, crc, size))])
    outcome = refused(path, "compression bomb")
    assert outcome.extra_mb < 32


# --- safetensors --------------------------------------------------------------------------------------


def write_safetensors(path, header_bytes, payload=b""):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)) + header_bytes + payload)
    return path


def test_deeply_nested_safetensors_header(tmp_path):
    header = b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"
    refused(write_safetensors(tmp_path / "deep.safetensors", header), "nested too deeply")


def test_deeply_nested_architecture_metadata(tmp_path):
    meta = {"format": "covidx", "format_version": "1", "architecture": "[" * 100000 + "]" * 100000}
    header = json.dumps({"__metadata__": meta}).encode()
    refused(write_safetensors(tmp_path / "deep_arch.safetensors", header), "'architecture'")


def test_dtype_that_is_not_a_string(tmp_path):
    header = json.dumps({"x": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}).encode()
    refused(write_safetensors(tmp_path / "dtype.safetensors", header, b"\0" * 4), "unsupported dtype")


def test_head_larger_than_covidx_runs(tmp_path):
    """An architecture whose Dense layer would need 8 GB is refused from the metadata alone."""
    arch = {"family": "resnet50", "variant": "v1", "bn_epsilon": 1.001e-5, "pooling": "avg",
            "pooling_name": "avg_pool", "head": [{"name": "dense", "units": 1 << 20, "activation": "softmax"}]}
    meta = {"format": "covidx", "format_version": "1", "architecture": json.dumps(arch)}
    refused(write_safetensors(tmp_path / "big_head.safetensors", json.dumps({"__metadata__": meta}).encode()),
            "more than covidx runs")


# --- HDF5 -------------------------------------------------------------------------------------------


def test_hdf5_group_linked_to_itself(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "loop.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv1_conv"]
        group = f.create_group("conv1_conv")
        group["loop"] = group  # a hard link from the group to itself
        group.attrs["weight_names"] = [("loop/" * 100000 + "kernel:0").encode()]
    refused(path, "longer than any Keras name")


def keras3_weights(path, head_units, backbone_written, head_written):
    """A Keras 3 .weights.h5 layout (layers/conv2d_k/vars/i, batch_normalization_k, dense_k) for
    ResNet50 + Dense layers: every dataset chunked, written as compressed zeros or never written."""
    h5py = pytest.importorskip("h5py")
    from covidx import architecture

    def dataset(group, i, shape, written):
        chunks = tuple(min(n, 64) for n in shape)
        if written:
            group.create_dataset(str(i), data=np.zeros(shape, np.float32), chunks=chunks, compression="gzip")
        else:
            group.create_dataset(str(i), shape=shape, dtype="f4", chunks=chunks)

    counters = {}
    with h5py.File(path, "w") as f:
        for layer, weights in architecture.weight_spec({"variant": "v1", "head": []}):
            kind = "conv2d" if layer.endswith("_conv") else "batch_normalization"
            k = counters[kind] = counters.get(kind, -1) + 1
            group = f.create_group("layers/%s/vars" % (kind if k == 0 else "%s_%d" % (kind, k)))
            for i, (_, shape) in enumerate(weights):
                dataset(group, i, shape, backbone_written)
        units_in = 2048
        for k, units in enumerate(head_units):
            group = f.create_group("layers/%s/vars" % ("dense" if k == 0 else "dense_%d" % k))
            dataset(group, 0, (units_in, units), head_written)
            dataset(group, 1, (units,), head_written)
            units_in = units
    return path


def test_unwritten_chunked_datasets_are_refused(tmp_path):
    """A weights file whose datasets were created but never written (a few hundred KB): libhdf5
    would return zeros for every tensor, a model that silently predicts nothing."""
    path = keras3_weights(tmp_path / "unwritten.weights.h5", [2], backbone_written=False, head_written=False)
    assert os.path.getsize(path) < 1_000_000
    refused(path, "chunks are stored")


def test_unwritten_gigabyte_dense_kernel_is_refused(tmp_path):
    path = keras3_weights(tmp_path / "big_dense.weights.h5", [131072], backbone_written=True, head_written=False)
    assert os.path.getsize(path) < 4_000_000
    refused(path, "implausibly large tensor (2048, 131072)")


def test_oversized_chunk_is_refused(tmp_path):
    """conv1's 7x7x3x64 kernel (37.6 KB) stored as a resizable dataset in one chunk of 100000x7x3x64
    floats (538 MB of zeros, 0.5 MB compressed): libhdf5 allocates and fills the whole chunk to read
    the kernel out of it."""
    h5py = pytest.importorskip("h5py")
    path = keras3_weights(tmp_path / "big_chunk.weights.h5", [2], backbone_written=True, head_written=True)
    with h5py.File(path, "r+") as f:
        group = f["layers/conv2d/vars"]
        del group["0"]
        group.create_dataset("0", data=np.zeros((7, 7, 3, 64), np.float32), maxshape=(None, 7, 3, 64),
                             chunks=(100000, 7, 3, 64), compression="gzip")
    assert os.path.getsize(path) < 4_000_000
    refused(path, "chunks (100000, 7, 3, 64) of 537600000 bytes for 37632 bytes of data")


# --- paths and files that are not files --------------------------------------------------------------


def test_fifo_and_device_are_not_read(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    refused(fifo, "not a regular file")
    link = tmp_path / "zero.pth"
    os.symlink("/dev/zero", link)
    refused(link, "not a regular file")


# --- saving: planted links and interrupted saves ---------------------------------------------------


SAVES = {
    "safetensors": lambda m, p: m.save(p + ".safetensors"),
    "keras": lambda m, p: m.save(p + ".keras"),
    "h5": lambda m, p: m.save(p + ".h5"),
    "weights.h5": lambda m, p: m.save_weights(p + ".weights.h5"),
    "onnx": lambda m, p: m.to_onnx(p + ".onnx"),
}


@pytest.fixture(scope="module")
def small_model():
    from covidx.applications.resnet50 import ResNet50

    return ResNet50(weights=None, classes=2, seed=0)


@pytest.mark.parametrize("kind", sorted(SAVES))
def test_save_never_follows_a_planted_link(tmp_path, small_model, kind):
    """Links planted at every temporary name covidx used to write through (`<name>.tmp-<pid>`,
    `.<name>.tmp-<pid>`) pointing at a file of the victim's: the save writes its own new file, the
    victim's file is untouched, the link is not replaced, and no temporary file is left."""
    if kind == "onnx":
        pytest.importorskip("onnx")
    base = str(tmp_path / "m")
    target = base + "." + kind
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    pid = os.getpid()
    links = [tmp_path / ("m.%s.tmp-%d" % (kind, pid)), tmp_path / (".m.%s.tmp-%d" % (kind, pid))]
    for link in links:
        os.symlink(victim, link)
    SAVES[kind](small_model, base)
    assert victim.read_bytes() == b"precious"
    assert all(os.path.islink(link) for link in links)
    assert not os.path.islink(target) and os.path.getsize(target) > 1 << 20
    assert sorted(os.listdir(tmp_path)) == sorted([victim.name, os.path.basename(target)] + [x.name for x in links])
    mode = os.stat(target).st_mode & 0o777
    umask = os.umask(0o022)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # what open() gives a new file, not mkstemp's 0600
    if kind != "onnx":
        loaded = covidx.load_model(target) if kind != "weights.h5" else None
        if loaded is not None:
            np.testing.assert_array_equal(loaded.get_weights()[0], small_model.get_weights()[0])


SIGTERM_DURING_SAVE = r"""
import os, signal, struct, sys
import numpy as np
from covidx import safetensors_io

class Pack:  # the header is packed as the save starts writing: the process is told to stop then
    def __getattr__(self, name):
        return getattr(struct, name)
    def pack(self, *args):
        os.kill(os.getpid(), signal.SIGTERM)
        return struct.pack(*args)

safetensors_io.struct = Pack()
safetensors_io.save(sys.argv[1], {"w": np.zeros(8 << 20, np.float32)})
print("the save went on after SIGTERM")
"""


def test_sigterm_during_a_save_leaves_no_temporary_file(tmp_path):
    """SIGTERM while a save writes its temporary file: the process still ends by SIGTERM (so its
    parent sees what happened), and neither a temporary file nor a half-written target is left."""
    import subprocess
    import sys

    target = tmp_path / "model.safetensors"
    out = subprocess.run([sys.executable, "-c", SIGTERM_DURING_SAVE, str(target)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == -15, (out.returncode, out.stdout, out.stderr)
    assert os.listdir(tmp_path) == []


def test_sigterm_handler_of_the_program_is_left_alone(tmp_path):
    """A program that handles SIGTERM itself keeps its handler during and after a save; covidx's
    handler is installed only for the length of a save."""
    import signal

    from covidx import atomic

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append(a[0]))
    try:
        with atomic.replacing(tmp_path / "x.bin") as (_, fd):
            os.write(fd, b"data")
            os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
        assert (tmp_path / "x.bin").read_bytes() == b"data"
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with atomic.replacing(tmp_path / "y.bin"):
            assert signal.getsignal(signal.SIGTERM) is atomic._on_termination
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- HDF5: the file that was checked is the file that is read -----------------------------------


HANGS_LIBHDF5 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hdf5_libhdf5_hang.h5")


def test_hdf5_swapped_after_the_child_read_is_not_read(tmp_path, small_model, monkeypatch):
    """A good .h5 is replaced by a file on which libhdf5 loops for ever, right after the checking
    child has read the good one: the loading process reads the file the child read (the one it
    opened), not whatever is at the path now, and loads the good model (*bounded*; it hung)."""
    from covidx.formats import hdf5

    path = str(tmp_path / "model.h5")
    small_model.save(path)
    hanging = str(tmp_path / "hang.h5")
    with open(HANGS_LIBHDF5, "rb") as src, open(hanging, "wb") as dst:
        dst.write(src.read())
    real_probe = hdf5.probe_in_child

    def probe_then_swap(*args, **kwargs):
        real_probe(*args, **kwargs)
        os.replace(hanging, path)

    monkeypatch.setattr(hdf5, "probe_in_child", probe_then_swap)
    outcome = bounded.run(lambda: covidx.load_model(path).get_weights()[0])
    assert outcome.error is None, outcome
    np.testing.assert_array_equal(outcome.value, small_model.get_weights()[0])
    assert not os.path.exists(hanging)  # the swap did happen


def test_hdf5_written_in_place_after_the_child_read_is_refused(tmp_path, small_model, monkeypatch):
    """The same file written to in place after the child's read (not replaced): refused, naming
    the file, instead of reading bytes the child never checked."""
    from covidx.formats import hdf5

    path = str(tmp_path / "model.h5")
    small_model.save(path)
    real_probe = hdf5.probe_in_child

    def probe_then_write(*args, **kwargs):
        real_probe(*args, **kwargs)
        with open(path, "r+b") as f:
            f.seek(0, 2)
            f.write(b"\0" * 16)

    monkeypatch.setattr(hdf5, "probe_in_child", probe_then_write)
    refused(path, "changed while it was being read")


# --- safetensors: only the declared bytes are read ---------------------------------------------------


def test_safetensors_sparse_tail_is_refused_without_reading_it(tmp_path, small_model):
    """A good covidx file followed by a 2.4 GB sparse tail (holes, no disk used): refused from the
    header and the file's size, naming the trailing bytes, at once and without reading the tail
    (*bounded*; it was read whole: 37 s and 5 GB peak)."""
    path = str(tmp_path / "tail.safetensors")
    small_model.save(path)
    good = os.path.getsize(path)
    os.truncate(path, good + (2400 << 20))
    outcome = refused(path, "bytes after the last tensor")
    assert outcome.seconds < 5 and outcome.extra_mb < 400, outcome
    os.truncate(path, good + 4096)  # a little padding is accepted
    assert covidx.load_model(path).count_params() == small_model.count_params()


def test_safetensors_reads_only_the_declared_ranges(tmp_path):
    """Two tensors separated by a 1 GB hole that no tensor declares: read from their own byte
    ranges, equal to what was written, in bounded memory (the hole is never read)."""
    from covidx import safetensors_io

    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.linspace(-1, 1, 5)
    gap = 1 << 30
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "F64", "shape": [5], "data_offsets": [24 + gap, 24 + gap + 40]},
              "__metadata__": {"k": "v"}}
    blob = json.dumps(header).encode()
    path = str(tmp_path / "gap.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + a.tobytes())
        f.seek(gap, 1)
        f.write(b.tobytes())
    outcome = bounded.run(lambda: safetensors_io.load(path), extra_mb=200)
    tensors, meta = outcome.value
    np.testing.assert_array_equal(tensors["a"], a)
    np.testing.assert_array_equal(tensors["b"], b)
    assert list(tensors) == ["a", "b"] and meta == {"k": "v"}
    assert outcome.seconds < 5, outcome
