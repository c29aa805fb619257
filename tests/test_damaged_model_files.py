"""Broken and hostile files of other frameworks (Keras .h5 / .keras / .weights.h5, HDF5, PyTorch
pickles and zips): each gives a clear ModelFileError naming the file, never a crash, a hang, a
payload run or gigabytes allocated (test-only dependencies: Keras 3 on its torch backend, PyTorch,
h5py). The intact files they start from: tests/framework_files.py."""
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

import covidx  # noqa: E402
from covidx.applications.resnet50 import ResNet50  # noqa: E402
from covidx.formats import ModelFileError  # noqa: E402
from framework_files import ARTICLES, assert_matches  # noqa: E402
from torch_resnet50 import TorchResNet50  # noqa: E402


def cut(src, dst, size):
    dst.write_bytes(src.read_bytes()[:size])
    return dst


@pytest.mark.parametrize("kind", [".h5", ".keras", ".weights.h5"])
def test_truncated_keras_files(articles, tmp_path, kind):
    src = articles["paths"][kind]
    for size in (10, 3000, src.stat().st_size // 2, src.stat().st_size - 1):
        path = cut(src, tmp_path / ("cut%d%s" % (size, kind)), size)
        with pytest.raises(ModelFileError, match="cut%d" % size):
            covidx.load_model(path)


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_truncated_torch_files(torchvision_files, tmp_path, kind):
    src = torchvision_files["paths"][kind]
    for size in (1, 200, src.stat().st_size // 2, src.stat().st_size - 1):
        path = cut(src, tmp_path / ("cut%d.pt" % size), size)
        with pytest.raises(ModelFileError, match="cut%d" % size):
            covidx.load_model(path)


def test_empty_and_unknown_files(tmp_path):
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "notes.h5").write_text("not a model\n")
    for name in ("empty.h5", "notes.h5"):
        with pytest.raises(ModelFileError, match=name):
            covidx.load_model(tmp_path / name)


def corrupt(src, dst, offset, data):
    raw = bytearray(src.read_bytes())
    raw[offset:offset + len(data)] = data
    dst.write_bytes(bytes(raw))
    return dst


def test_corrupted_hdf5_metadata(articles, tmp_path):
    src = articles["paths"]["legacy_weights.h5"]
    raw = src.read_bytes()
    # damage the superblock's version and end-of-file address, the first B-tree node's type and
    # entry count, and the first local heap's sizes and address
    cases = [(8, b"\x05"), (40, b"\xff" * 8), (raw.index(b"TREE") + 4, b"\x07\x09\xff\xff"),
             (raw.index(b"HEAP") + 8, b"\xee" * 24)]
    for i, (offset, data) in enumerate(cases):
        path = corrupt(src, tmp_path / ("bad%d.h5" % i), offset, data)
        with pytest.raises(ModelFileError, match="bad%d.h5" % i):
            covidx.load_model(path)


FUZZ_SCRIPT = r"""
import random, re, sys
import covidx
from covidx.formats import ModelFileError
path, cases, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "rb") as f:
    raw = f.read()
structures = [m.start() for sig in (b"TREE", b"HEAP", b"SNOD") for m in re.finditer(sig, raw)]
rng = random.Random(seed)
outcomes = []
for case in range(cases):
    base = rng.choice(structures[:40] + structures[-20:])
    edits = [(base + rng.randrange(-300, 500), rng.randrange(256)) for _ in range(rng.randint(1, 6))]
    with open(path, "r+b") as f:
        for offset, value in edits:
            f.seek(offset)
            f.write(bytes([value]))
    try:
        covidx.load_model(path)
        outcomes.append("loaded")
    except ModelFileError as e:
        assert path in str(e), e
        outcomes.append("refused")
    with open(path, "r+b") as f:  # undo
        for offset, _ in edits:
            f.seek(offset)
            f.write(raw[offset:offset + 1])
print(" ".join(outcomes))
"""


def test_randomly_damaged_hdf5_never_crashes(articles, tmp_path):
    """Bytes changed around the B-trees, heaps and symbol tables of a Keras file: every load either
    succeeds (damage where nothing is read) or raises ModelFileError naming the file. Run in a
    child process, so that a crash of libhdf5 would show as a failure here."""
    path = tmp_path / "fuzzed.h5"
    shutil.copy(articles["paths"]["legacy_weights.h5"], path)
    result = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, str(path), "12", "7"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes = result.stdout.split()
    assert len(outcomes) == 12 and "refused" in outcomes, outcomes


def test_corrupted_configs_and_values(articles, tmp_path):
    path = tmp_path / "json.h5"
    shutil.copy(articles["paths"][".h5"], path)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = '{"class_name": "Functional", "config": {'
    with pytest.raises(ModelFileError, match="json.h5: model_config is not valid JSON"):
        covidx.load_model(path)
    path = tmp_path / "nan.weights.h5"
    shutil.copy(articles["paths"]["legacy_weights.h5"], path)
    with h5py.File(path, "r+") as f:
        f["conv2_block1_2_bn/conv2_block1_2_bn/moving_variance"][3] = np.nan
    with pytest.raises(ModelFileError, match="nan.weights.h5.*conv2_block1_2_bn.*NaN"):
        covidx.load_model(path)


def test_corrupted_keras_archive(articles, tmp_path):
    src = articles["paths"][".keras"]
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("model.weights.h5")
        header = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    path = corrupt(src, tmp_path / "crc.keras", header + info.file_size // 2, b"\x00\x01\x02\x03")
    with pytest.raises(ModelFileError, match="crc.keras.*(CRC|damaged)"):
        covidx.load_model(path)
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(tmp_path / "config.keras", "w") as out:
        for item in z.infolist():
            out.writestr(item, b"{not json" if item.filename == "config.json" else z.read(item))
    with pytest.raises(ModelFileError, match="config.keras: config.json is not valid JSON"):
        covidx.load_model(tmp_path / "config.keras")


def test_keras_archive_bomb_is_refused(articles, tmp_path):
    """The articles' .keras file with its weights member replaced by 1 GiB of zeros deflated to
    1 MB: refused before it is inflated (it was read whole into memory), within 10 s and 1 GB."""
    import bounded
    import hostile_files

    with zipfile.ZipFile(articles["paths"][".keras"]) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist() if i.filename != "model.weights.h5"]
    size = 1 << 30
    stream, crc = hostile_files.deflated_zeros(size)
    path = hostile_files.write(tmp_path / "bomb.keras", members + [("model.weights.h5", (stream, crc, size))])
    assert os.path.getsize(path) < 2 << 20
    outcome = bounded.run(lambda: covidx.load_model(path))
    assert isinstance(outcome.error, ModelFileError), outcome
    assert "bomb.keras: model.weights.h5" in str(outcome.error)
    assert "more than a model file needs" in str(outcome.error) or "compression bomb" in str(outcome.error)


@pytest.mark.parametrize("kind", [".keras", ".weights.h5"])
def test_bytes_paths_are_paths(articles, kind):
    """load_model(b'x.keras') raised AttributeError; b'x.weights.h5' was parsed as the file's content."""
    path = os.fsencode(str(articles["paths"][kind]))
    assert_matches(covidx.load_model(path).predict(articles["x"], verbose=0), articles["want"])


def test_wrong_shapes(articles, torchvision_files, tmp_path):
    path = tmp_path / "shape.h5"
    shutil.copy(articles["paths"]["legacy_weights.h5"], path)
    with h5py.File(path, "r+") as f:
        del f["conv3_block1_2_conv/conv3_block1_2_conv/kernel"]
        f["conv3_block1_2_conv/conv3_block1_2_conv/kernel"] = np.zeros((5, 5, 128, 128), np.float32)
    with pytest.raises(ModelFileError, match=r"shape.h5.*conv3_block1_2_conv.*\(3, 3, 128, 128\).*\(5, 5, 128, 128\)"):
        covidx.load_model(path)
    with pytest.raises(ModelFileError, match=r"shape.h5.*\(3, 3, 128, 128\)"):
        ResNet50(weights=str(path), **ARTICLES)
    sd = dict(torchvision_files["sd"])
    sd["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(sd, tmp_path / "conv1.pt")
    with pytest.raises(ModelFileError, match=r"conv1.pt: conv1.weight: expected shape \(64, 3, 7, 7\), the file has "
                                             r"\(64, 3, 5, 5\)"):
        covidx.load_model(tmp_path / "conv1.pt")
    sd = dict(torchvision_files["sd"], **{"fc.2.weight": torch.zeros(2, 300)})
    torch.save(sd, tmp_path / "fc.pt")
    with pytest.raises(ModelFileError, match=r"fc.pt: fc.2.weight: shape \(2, 300\) does not continue"):
        covidx.load_model(tmp_path / "fc.pt")
    torch.save(dict(torchvision_files["sd"], **{"layer1.0.se.fc.weight": torch.zeros(4, 4)}), tmp_path / "se.pt")
    with pytest.raises(ModelFileError, match="se.pt: unexpected key 'layer1.0.se.fc.weight'"):
        covidx.load_model(tmp_path / "se.pt")


class Payload:
    """Unpickling this runs a shell command (what a hostile model file does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


@pytest.mark.parametrize("zip_format", [True, False])
def test_hostile_pickle_is_refused_and_never_runs(torchvision_files, tmp_path, zip_format):
    marker = tmp_path / "pwned"
    sd = dict(torchvision_files["sd"])
    sd["fc.0.bias"] = Payload(marker)
    path = tmp_path / "hostile.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ModelFileError, match=r"hostile.pt: refused: .*(posix|os)\.system"):
        covidx.load_model(path)
    with pytest.raises(ModelFileError, match="refused"):
        ResNet50(weights=str(path), variant="v1.5", classes=2, head=(256,))
    assert not marker.exists()
    # the payload is real: an unrestricted unpickler runs it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_pickled_modules_and_objects_are_refused(tmp_path):
    torch.save(TorchResNet50("v1.5"), tmp_path / "module.pt")
    with pytest.raises(ModelFileError, match=r"module.pt: refused: .*torch_resnet50.TorchResNet50.*state_dict"):
        covidx.load_model(tmp_path / "module.pt")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"a": np.zeros(3)}, f, protocol=2)
    with pytest.raises(ModelFileError, match="plain.pkl"):
        covidx.load_model(tmp_path / "plain.pkl")


def test_tensor_outside_its_storage_is_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(4)}, tmp_path / "view.pt")
    with zipfile.ZipFile(tmp_path / "view.pt") as z:
        items = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(tmp_path / "bad_view.pt", "w") as out:
        for item, data in items:
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"K\x04\x85", b"M\x00\x04\x85")  # sizes (4,) -> (1024,)
                assert b"M\x00\x04" in data
            out.writestr(item, data)
    with pytest.raises(ModelFileError, match="bad_view.pt: a tensor reaches past the end of its storage"):
        covidx.load_model(tmp_path / "bad_view.pt")


def test_h5_links_and_storage_outside_the_file_are_refused(articles, tmp_path):
    path = tmp_path / "link.h5"
    shutil.copy(articles["paths"]["legacy_weights.h5"], path)
    with h5py.File(path, "r+") as f:
        group = f["conv1_conv/conv1_conv"]
        del group["kernel"]
        group["kernel"] = h5py.ExternalLink("/etc/passwd", "/data")
    with pytest.raises(ModelFileError, match="link.h5.*ExternalLink.*outside the file"):
        covidx.load_model(path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(7 * 7 * 3 * 64, np.float32).tobytes())
    path = tmp_path / "external.h5"
    shutil.copy(articles["paths"]["legacy_weights.h5"], path)
    with h5py.File(path, "r+") as f:
        group = f["conv1_conv/conv1_conv"]
        del group["kernel"]
        group.create_dataset("kernel", shape=(7, 7, 3, 64), dtype="f4",
                             external=[(str(secret), 0, secret.stat().st_size)])
    with pytest.raises(ModelFileError, match="external.h5.*stored outside the file"):
        covidx.load_model(path)


def test_missing_h5py_says_how_to_get_it(articles, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_h5py(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_h5py)
    with pytest.raises(ModelFileError, match="needs the h5py package: pip install h5py"):
        covidx.load_model(articles["paths"][".h5"])


def test_hdf5_that_hangs_libhdf5_is_refused_in_time(monkeypatch):
    """A file found by fuzzing (tests/fuzz): libhdf5 loops on its metadata. covidx parses HDF5
    metadata in a child process first and gives up after PROBE_SECONDS."""
    from covidx.formats import hdf5

    monkeypatch.setattr(hdf5, "PROBE_SECONDS", 3.0)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hdf5_libhdf5_hang.h5")
    start = time.monotonic()
    with pytest.raises(ValueError, match="did not finish reading"):
        covidx.load_model(path)
    assert time.monotonic() - start < 30


def test_hdf5_that_makes_libhdf5_allocate_gigabytes_costs_this_process_nothing():
    """A file found by fuzzing (tests/fuzz): libhdf5 allocates gigabytes reading its chunks and then
    fails. The whole read runs first in a child process whose memory is capped; its error is raised
    here and libhdf5 never reads the file in the loading process, whose peak memory stays small."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("reads the peak memory from Linux's /proc")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hdf5_libhdf5_memory.h5")
    # VmHWM, the peak resident memory of this process's own address space (ru_maxrss would count
    # the forking pytest's too: Linux keeps the larger across exec)
    script = ("import sys, covidx\n"
              "try:\n"
              "    covidx.load_model(sys.argv[1])\n"
              "except ValueError as e:\n"
              "    print(e)\n"
              "status = open('/proc/self/status').read()\n"
              "print(int(status.split('VmHWM:')[1].split()[0]) >> 10)\n")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    message, peak_mb = out.stdout.strip().rsplit("\n", 1)
    assert message.startswith(path) and "HDF5" in message
    assert int(peak_mb) < 600  # numpy and covidx take ~100 MB; reading this file unguarded takes >1.5 GB
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("raised, expected, match", [
    (ModelFileError("input.h5: a message from the child"), ModelFileError, "^input.h5: a message from the child$"),
    (MemoryError(), ModelFileError, "^input.h5: reading this file needs more than"),
    (KeyError("bug"), RuntimeError, "^input.h5: covidx's HDF5 reader failed .*KeyError"),
])
def test_hdf5_child_process_reports_how_the_read_ended(raised, expected, match):
    """An error met by the reading child is raised in the parent without reading the file again:
    the child's own message, a memory failure named as such, and anything else as a bug (not
    disguised as a damaged file)."""
    from covidx.formats import hdf5

    def action():
        raise raised

    with pytest.raises(expected, match=match) as info:
        hdf5.probe_in_child(action, "input.h5")
    assert type(info.value) is expected


def test_hdf5_child_process_memory_is_capped():
    """The child's address space is capped at what it inherits plus the budget: an allocation
    past it fails there (MemoryError) instead of taking the machine's memory."""
    from covidx.formats import hdf5

    def action():
        np.ones((hdf5.PROBE_MEMORY_BYTES + (1 << 30)) // 8)

    with pytest.raises(ModelFileError, match="needs more than"):
        hdf5.probe_in_child(action, "input.h5")
    hdf5.probe_in_child(lambda: np.ones((64 << 20) // 8), "input.h5")  # within the budget: no error


def test_zip_of_unsupported_version_is_a_model_file_error():
    """A file found by fuzzing: zipfile raises NotImplementedError on its version field."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "zip_unsupported_version.keras")
    with pytest.raises(ValueError, match="not a readable zip archive"):
        covidx.load_model(path)
