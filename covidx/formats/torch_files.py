"""PyTorch files written by torch.save (the zip format, and the older single-stream format),
read without PyTorch and without running anything the file asks for.

A torch.save file is a pickle. Unpickling can call any importable function, so the pickle is read
by an Unpickler that resolves only an allow-list of names to covidx's own harmless stand-ins:
OrderedDict, the tensor-rebuilding functions (which here only record offset, sizes and strides)
and the storage types (which only name a dtype). Anything else, such as os.system, is refused
before it is looked up. Tensor data is read from the raw storages into NumPy arrays, after
checking that every tensor's extent lies inside its storage and every storage has its stated size.

Every size the file declares is bounded before anything is allocated: the pickle's opcodes are
scanned first (memo indices, declared lengths against the bytes present), storages are limited to
what ResNet50 + a Dense head can need (architecture.MAX_TENSOR_ELEMENTS each), tensors must lay
their elements out densely (no stride 0, no overlap), and the unpickled containers are walked once
each (shared references are not walked again), with a cap on their number."""
from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import re
import struct

import numpy as np

from .. import architecture
from .archive import ZIP_ERRORS, member, open_zip
from .errors import ModelFileError, fail

MAX_PICKLE_BYTES = 64 << 20
MAX_DEPTH = 64
MAX_NODES = 1 << 18  # containers and values in the unpickled object (a state_dict has a few hundred)
MAX_MEMO = 1 << 20  # the unpickler's memo table grows to the largest index a PUT names
# a checkpoint may hold optimizer state beside the weights: up to 4x what the architecture can need
MAX_STORAGE_ELEMENTS = architecture.MAX_TENSOR_ELEMENTS
MAX_FILE_ELEMENTS = 4 * architecture.MAX_WEIGHT_ELEMENTS
PUT_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT"}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}
REFUSAL = ("covidx reads only tensors and plain containers (a state_dict) and runs no code from model "
           "files; if this is your own checkpoint, save torch.save(model.state_dict(), path)")


class StorageType:
    """Stands for torch.FloatStorage etc.: only names the element type."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self.name, self.dtype = name, STORAGE_DTYPES[name]

    def __setstate__(self, state):
        raise pickle.UnpicklingError("state set on a storage type")


class Function:
    """One allowed function; a fresh, immutable wrapper per lookup, so a pickle cannot change
    anything covidx shares (BUILD on a plain function would set its attributes)."""

    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)

    def __setstate__(self, state):
        raise pickle.UnpicklingError("state set on a function")


class Storage:
    """One raw storage of the file; its array is filled in once the data is read."""

    __slots__ = ("key", "dtype", "numel", "array")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel, self.array = key, dtype, numel, None

    def __setstate__(self, state):
        raise pickle.UnpicklingError("state set on a storage")

    @property
    def itemsize(self):
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class Tensor:
    """A tensor as the pickle describes it: a storage, an offset, sizes and strides (elements)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __setstate__(self, state):
        raise pickle.UnpicklingError("state set on a tensor")


def _ints(value):
    return isinstance(value, tuple) and len(value) <= 8 and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 40 for v in value)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    if not isinstance(storage, Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    if not (isinstance(storage_offset, int) and _ints(size) and _ints(stride) and len(size) == len(stride)):
        raise pickle.UnpicklingError("malformed tensor description")
    return Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError("a parameter without a tensor")
    return data


# name -> a factory of what the pickle gets for it
ALLOWED = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,  # an immutable builtin type
    ("torch._utils", "_rebuild_tensor_v2"): lambda: Function(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): lambda: Function(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): lambda: Function(_rebuild_parameter),
}
ALLOWED.update({("torch", name): (lambda name=name: StorageType(name)) for name in STORAGE_DTYPES})


class RefusedGlobal(ModelFileError):
    """The pickle asks for something other than tensors and plain containers."""


class _Unpickler(pickle.Unpickler):
    """Resolves only ALLOWED names; storages come from persistent ids, as torch writes them."""

    def __init__(self, file, where, storages, allow_globals=True):
        super().__init__(file)
        self.where, self.storages, self.allow_globals = where, storages, allow_globals

    def find_class(self, module, name):
        factory = ALLOWED.get((module, name)) if self.allow_globals else None
        if factory is None:
            raise RefusedGlobal("%s: refused: the file's pickle asks for %s.%s. %s"
                                % (self.where, module, name, REFUSAL))
        return factory()

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise RefusedGlobal("%s: refused: the file's pickle holds a %r record. %s" % (self.where, kind, REFUSAL))
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if not (isinstance(storage_type, StorageType) and isinstance(key, str)
                and re.fullmatch(r"[0-9A-Za-z_.-]{1,64}", key)
                and isinstance(numel, int) and not isinstance(numel, bool) and 0 <= numel < 1 << 40):
            raise pickle.UnpicklingError("malformed storage record")
        if numel > MAX_STORAGE_ELEMENTS:
            raise ModelFileError("%s: storage %s declares %d elements, more than any tensor of ResNet50 + a Dense "
                                 "head can have (%d)" % (self.where, key, numel, MAX_STORAGE_ELEMENTS))
        storage = self.storages.get(key)
        if storage is None:
            if sum(s.numel for s in self.storages.values()) + numel > MAX_FILE_ELEMENTS:
                raise ModelFileError("%s: the storages declare more than %d elements in all, more than a ResNet50 "
                                     "checkpoint can hold" % (self.where, MAX_FILE_ELEMENTS))
            storage = self.storages[key] = Storage(key, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype or storage.numel != numel:
            raise pickle.UnpicklingError("storage %s described twice differently" % key)
        return storage


def _scan(stream, where):
    """Reads one pickle's opcodes without running them: declared lengths must fit the bytes present
    (pickletools raises otherwise) and memo indices stay small, since the unpickler sizes its memo
    table by the largest index a PUT names (a 12-byte pickle can ask for gigabytes)."""
    start = stream.tell()
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name in PUT_OPCODES and not (isinstance(arg, int) and 0 <= arg < MAX_MEMO):
                fail(where, "damaged or hostile pickle data (memo index %r)" % (arg,))
    except ModelFileError:
        raise
    except (ValueError, EOFError, struct.error, UnicodeDecodeError, OverflowError) as e:
        fail(where, "damaged or unsupported pickle data (%s: %s)" % (type(e).__name__, e))
    stream.seek(start)


def _unpickle(data_or_file, where, storages, allow_globals=True):
    stream = io.BytesIO(data_or_file) if isinstance(data_or_file, (bytes, bytearray)) else data_or_file
    _scan(stream, where)
    try:
        return _Unpickler(stream, where, storages, allow_globals).load()
    except ModelFileError:
        raise
    except RecursionError:
        fail(where, "the pickle is nested too deeply")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, UnicodeDecodeError, MemoryError, OverflowError) as e:
        fail(where, "damaged or unsupported pickle data (%s: %s)" % (type(e).__name__, e))


# --- storages and tensors --------------------------------------------------------------------


def _storage_array(raw, storage, big_endian, where):
    if len(raw) != storage.numel * storage.itemsize:
        fail(where, "storage %s holds %d bytes, its tensors need %d (truncated?)"
             % (storage.key, len(raw), storage.numel * storage.itemsize))
    if storage.dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype=">u2" if big_endian else "<u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    dtype = np.dtype(storage.dtype)
    if big_endian:
        dtype = dtype.newbyteorder(">")
    return np.frombuffer(raw, dtype=dtype)


def _dense_layout(size, stride):
    """True when strides lay the elements out densely: a permutation of the C-contiguous strides,
    so that every element has its own place (stride 0 over a one-element storage would make a
    16384 x 16384 tensor of one float)."""
    expected = 1
    for n, s in sorted(((n, s) for n, s in zip(size, stride) if n != 1), key=lambda t: t[1]):
        if s != expected:
            return False
        expected *= n
    return True


def _materialise(tensor, where):
    storage = tensor.storage
    if storage.array is None:
        fail(where, "storage %s has no data in the file" % storage.key)
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    if not (isinstance(offset, int) and _ints(size) and _ints(stride) and len(size) == len(stride)):
        fail(where, "malformed tensor description")
    if 0 in size:
        return np.zeros(size, np.float32)
    if not _dense_layout(size, stride):
        fail(where, "a tensor of shape %s has strides %s that do not lay out its elements one by one in storage %s"
             % (tuple(size), tuple(stride), storage.key))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= storage.numel:
        fail(where, "a tensor reaches past the end of its storage %s (elements %d..%d of %d)"
             % (storage.key, offset, last, storage.numel))
    base = storage.array[offset:]
    view = np.lib.stride_tricks.as_strided(base, shape=size, strides=[s * base.itemsize for s in stride],
                                           writeable=False)
    return np.array(view)


class _Walk:
    """Replaces every Tensor of an unpickled object with a NumPy array. Each container is walked
    once: a pickle can share one list between many places (L = [L, L], forty times over, is a few
    hundred bytes), and walking it again at each place would never end."""

    def __init__(self, where):
        self.where, self.done, self.active, self.nodes = where, {}, set(), 0

    def __call__(self, obj, depth=0):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            fail(self.where, "the pickle holds more than %d objects, more than a state_dict has" % MAX_NODES)
        if depth > MAX_DEPTH:
            fail(self.where, "containers nested too deeply")
        key = id(obj)
        if key in self.done:
            return self.done[key][1]
        if key in self.active:
            fail(self.where, "a container that holds itself")
        self.active.add(key)
        out = self._replace(obj, depth)
        self.active.discard(key)
        self.done[key] = (obj, out)  # obj kept alive, so that its id is not reused
        return out

    def _replace(self, obj, depth):
        if isinstance(obj, Tensor):
            return _materialise(obj, self.where)
        if isinstance(obj, dict):
            return type(obj)((k, self(v, depth + 1)) for k, v in obj.items()) \
                if isinstance(obj, collections.OrderedDict) else {k: self(v, depth + 1) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self(v, depth + 1) for v in obj)
        if isinstance(obj, (Storage, StorageType)):
            fail(self.where, "a bare storage object; %s" % REFUSAL)
        return obj


def _replace_tensors(obj, where):
    """The unpickled object with every Tensor replaced by a NumPy array."""
    return _Walk(where)(obj)


# --- the two file layouts ----------------------------------------------------------------------


def _zip_prefix(names, where):
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        fail(where, "a zip archive, but not a torch.save file (no single <name>/data.pkl)")
    return pickles[0][:-len("data.pkl")]


def read_zip(path):
    """The object saved by torch.save in its zip format, tensors as NumPy arrays."""
    storages = {}
    with open_zip(path) as archive:
        try:
            names = set(archive.namelist())
            prefix = _zip_prefix(names, path)
            byteorder = b"little"
            if prefix + "byteorder" in names:
                byteorder = member(archive, prefix + "byteorder", 16, path).strip()
            if byteorder not in (b"little", b"big"):
                fail(path, "unknown byte order %r" % byteorder)
            obj = _unpickle(member(archive, prefix + "data.pkl", MAX_PICKLE_BYTES, path), path, storages)
            for key, storage in storages.items():
                entry = prefix + "data/" + key
                if entry not in names:
                    fail(path, "storage %s is missing from the archive (truncated?)" % key)
                raw = member(archive, entry, storage.numel * storage.itemsize, path)
                storage.array = _storage_array(raw, storage, byteorder == b"big", path)
        except ModelFileError:
            raise
        except ZIP_ERRORS as e:
            fail(path, "damaged zip archive (%s: %s)" % (type(e).__name__, e))
    return _replace_tensors(obj, path)


def read_legacy(path):
    """The object saved by torch.save(..., _use_new_zipfile_serialization=False): a magic number,
    a protocol number and system info (plain pickles), the object's pickle, the list of storage
    keys, then each storage as an 8-byte element count and its raw bytes. The file is read into
    memory first (it is bounded by what its storages can hold), so that no declared length can
    make a read allocate more than the file has."""
    storages = {}
    limit = MAX_PICKLE_BYTES + MAX_FILE_ELEMENTS * 8
    size = os.path.getsize(path)
    if size > limit:
        fail(path, "%d bytes, more than a ResNet50 checkpoint can need" % size)
    with open(path, "rb") as f:
        data = f.read(size + 1)  # read(n) reserves n bytes: the file's size, not the limit's gigabytes
    if len(data) > size:
        fail(path, "the file grew while it was read")
    f = io.BytesIO(data)
    magic = _unpickle(f, path, storages, allow_globals=False)
    if magic != LEGACY_MAGIC:
        fail(path, "a pickle, but not a torch.save file (no PyTorch magic number)")
    if _unpickle(f, path, storages, allow_globals=False) != LEGACY_PROTOCOL:
        fail(path, "unsupported torch.save protocol version")
    info = _unpickle(f, path, storages, allow_globals=False)
    if not isinstance(info, dict):
        fail(path, "malformed torch.save system info")
    big_endian = info.get("little_endian", True) is False
    obj = _unpickle(f, path, storages)
    keys = _unpickle(f, path, storages, allow_globals=False)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)) or set(keys) != set(storages):
        fail(path, "the storage list does not match the tensors (damaged file)")
    view, at = memoryview(data), f.tell()
    for key in keys:
        storage = storages[key]
        head = bytes(view[at:at + 8])
        if len(head) != 8:
            fail(path, "truncated: storage %s is missing" % key)
        count = struct.unpack(">q" if big_endian else "<q", head)[0]
        if count != storage.numel:
            fail(path, "storage %s records %d elements, its tensors say %d" % (key, count, storage.numel))
        nbytes = storage.numel * storage.itemsize
        storage.array = _storage_array(view[at + 8:at + 8 + nbytes], storage, big_endian, path)
        at += 8 + nbytes
    return _replace_tensors(obj, path)


def read(path, kind):
    """kind: 'zip' or 'pickle' (from covidx.formats.sniff)."""
    return read_zip(path) if kind == "zip" else read_legacy(path)
