"""Reading and writing safetensors files: an 8-byte little-endian header length, a JSON header,
then raw little-endian tensor bytes. Nothing in a file is ever executed; every field is checked
before any tensor is built."""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from . import atomic

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8")}
MAX_HEADER = 100 << 20


class SafetensorsError(ValueError):
    """A file that is not a valid safetensors file."""


def save(path, tensors, metadata=None):
    """Writes {name: array} and a {str: str} metadata dict to path, atomically."""
    header, offset, arrays = {}, 0, []
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata: keys and values must be strings")
        header["__metadata__"] = dict(metadata)
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        code = next((c for c, d in DTYPES.items() if d == array.dtype.newbyteorder("<")), None)
        if code is None:
            raise TypeError("%s: unsupported dtype %s" % (name, array.dtype))
        array = array.astype(DTYPES[code], copy=False)
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    with atomic.replacing(path) as (_, fd), os.fdopen(fd, "wb", closefd=False) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for array in arrays:
            f.write(memoryview(array).cast("B"))


def looks_like_safetensors(path):
    """True when the file starts like a safetensors file (a plausible header length, then '{')."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return n >= 2 and head[8:9] == b"{"  # (a length that does not fit is reported by load())


def load(path):
    """Returns ({name: float array}, {str: str} metadata). Raises SafetensorsError naming the file
    and the problem for anything truncated or inconsistent. Only the bytes the header declares are
    read: a file with more than TRAILING_SLACK bytes after its last tensor is refused (it once read
    a 2.4 GB sparse tail into memory)."""
    path = os.fspath(path)

    def fail(why):
        raise SafetensorsError("%s: not a valid safetensors file: %s" % (path, why))

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            fail("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            fail("header length %d does not fit the file (%d bytes)" % (n, size))
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            fail("header is not JSON (%s)" % e)
        except RecursionError:
            fail("header is nested too deeply")
        if not isinstance(header, dict):
            fail("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            fail("__metadata__ must map strings to strings")
        data_bytes = size - 8 - n
        spans = _spans(header, data_bytes, fail)
        trailing = data_bytes - max([end for _, end, _, _, _ in spans], default=0)
        if trailing > TRAILING_SLACK:
            fail("%d bytes after the last tensor the header declares (at most %d are accepted)" % (trailing, TRAILING_SLACK))
        tensors = {}
        for begin, end, name, dtype, shape in spans:  # each tensor read from its own byte range, nothing else
            out = np.empty(shape, dtype=dtype)
            f.seek(8 + n + begin)
            if end > begin and f.readinto(memoryview(out).cast("B")) != end - begin:
                fail("tensor %r: the file ended while it was read" % name)
            tensors[name] = out
    return {name: tensors[name] for name in header}, metadata


TRAILING_SLACK = 4096  # padding a writer may add; the data a header declares ends the file


def _spans(header, data_bytes, fail):
    """[(begin, end, name, dtype, shape)] of the header's tensors, sorted by position, after checking
    every field, every range against the data_bytes present, and that no two ranges overlap."""
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            fail("tensor %r: expected dtype, shape and data_offsets" % name)
        dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            fail("tensor %r: unsupported dtype %r" % (name, info["dtype"]))
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and len(shape) <= 8
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31 for d in shape)):
            fail("tensor %r: bad shape %r" % (name, shape))
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            fail("tensor %r: bad data_offsets %r" % (name, offsets))
        begin, end = offsets
        count = 1
        for d in shape:
            count *= d
        if not 0 <= begin <= end <= data_bytes:
            fail("tensor %r: data_offsets %r outside the %d data bytes (truncated?)" % (name, offsets, data_bytes))
        if end - begin != count * dtype.itemsize:
            fail("tensor %r: %d bytes for shape %r of %s" % (name, end - begin, shape, info["dtype"]))
        spans.append((begin, end, name, dtype, tuple(shape)))
    spans.sort(key=lambda span: span[:2])
    for (b0, e0, n0, *_), (b1, _, n1, *_) in zip(spans, spans[1:]):
        if b1 < e0:
            fail("tensors %r and %r overlap" % (n0, n1))
    return spans
