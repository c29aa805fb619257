"""Careful reading of HDF5 files (Keras's .h5 and .weights.h5) through h5py.

libhdf5 is a large C parser, so covidx checks what it can before handing it anything: the
superblock and the file length first (a truncated file is refused by covidx, not discovered by
libhdf5 halfway through a read), then every object on the way: only hard links are followed
(a soft or external link could point outside the file), attributes and datasets have their type
and size checked before they are read, and datasets must have exactly the expected shape, a
float type, storage inside the file and only the standard filters. And since libhdf5 can still
crash, loop or allocate gigabytes on a hostile file, every read runs first in a forked child
process with a time limit and a memory cap (probe_in_child); only a read that succeeded there is
repeated in the loading process."""
from __future__ import annotations

import io
import json
import os
import signal
import stat
import time

import numpy as np

from .. import architecture
from .errors import ModelFileError, fail

SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_ATTRIBUTE_BYTES = 64 << 20  # a model_config is a few hundred KB
MAX_NAMES = 1 << 16
MAX_TENSOR_ELEMENTS = architecture.MAX_TENSOR_ELEMENTS
# Keras's object paths have a handful of parts ('layers/functional/layers/conv2d/vars/0'); a path of
# thousands of parts through a group linked to itself takes libhdf5 time quadratic in its length
MAX_PATH_BYTES = 512
MAX_PATH_PARTS = 16
# deflate, shuffle, fletcher32, and h5py's own lzf: the filters h5py always has
STANDARD_FILTERS = {1, 2, 3, 32000}
# h5py's own chunk guess stays under 1 MiB even for a resizable dataset, whose chunks may be larger
# than its data
MAX_CHUNK_SLACK_BYTES = 1 << 20
H5PY_HINT = "pip install h5py (or pip install 'covidx[keras]')"


def h5py_module(where):
    try:
        import h5py
    except ImportError:
        fail(where, "reading Keras HDF5 files needs the h5py package: %s" % H5PY_HINT)
    return h5py


def _address(head, at, size, where):
    if at + size > len(head):
        fail(where, "not a valid HDF5 file: the superblock is cut short")
    return int.from_bytes(head[at:at + size], "little")


def check_superblock(head, file_size, where):
    """Checks the signature, the superblock's version and field sizes, and that the end-of-file
    address it records fits the file (else the file was truncated)."""
    if not head.startswith(SIGNATURE):
        fail(where, "not an HDF5 file (no HDF5 signature at the start)")
    if len(head) < 16:
        fail(where, "not a valid HDF5 file: truncated in its superblock (%d bytes)" % file_size)
    version = head[8]
    if version in (0, 1):
        offset_size, length_size = head[13], head[14]
        first = 24 if version == 0 else 28
    elif version in (2, 3):
        offset_size, length_size = head[9], head[10]
        first = 12
    else:
        fail(where, "unsupported HDF5 superblock version %d" % version)
    if offset_size not in (2, 4, 8) or length_size not in (2, 4, 8):
        fail(where, "not a valid HDF5 file: bad address sizes in the superblock (%d, %d)" % (offset_size, length_size))
    base = _address(head, first, offset_size, where)
    eof = _address(head, first + 2 * offset_size, offset_size, where)
    if eof == (1 << (8 * offset_size)) - 1:
        fail(where, "damaged HDF5 superblock (no end-of-file address)")
    if base != 0:
        fail(where, "unsupported HDF5 file: data does not start at the beginning of the file (user block)")
    if eof > file_size:
        fail(where, "truncated HDF5 file: it records %d bytes, but has %d" % (eof, file_size))


def check_file(source, where):
    """What covidx checks before libhdf5 sees the file (the superblock and the length); returns the
    file's size."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        size, head = len(source), bytes(source[:256])
    elif isinstance(source, HeldFile):
        size, head = os.fstat(source.fd).st_size, os.pread(source.fd, 256, 0)
    else:
        size = os.path.getsize(source)
        with open(source, "rb") as f:
            head = f.read(256)
    check_superblock(head, size, where)
    return size


PROBE_SECONDS = 20.0
# what the child may allocate beyond what it inherits: a ResNet50 + head read as float64 and converted
# needs a few hundred MB; a hostile file can make libhdf5 allocate gigabytes before it fails
PROBE_MEMORY_BYTES = 2 << 30
PROBE_MEMORY_PER_FILE_BYTE = 4
# Fuzzing sets this, under a memory cap of its own (tests/fuzz/harness.py), so that the reader's error
# paths also run in the fuzzing process, whose coverage guides it: a read that failed in the child
# is then repeated here (one that crashed, looped or ran out of memory there never is)
REPEAT_FAILURES = False
MAX_MESSAGE_CHARS = 2000  # the report fits a pipe's buffer (64 KB), so the child never waits
MAX_REPORT_BYTES = 16 << 10


def _virtual_memory_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def limit_memory(budget):
    """Caps this process's address space at what it has plus `budget` (Linux): the reading child's,
    and the fuzzing process's (tests/fuzz/harness.py), so that a file that makes libhdf5 allocate
    without end fails with MemoryError instead of exhausting the machine."""
    try:
        import resource
    except ImportError:
        return
    now = _virtual_memory_bytes()
    if now is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = now + budget
    if soft != resource.RLIM_INFINITY:  # never looser than a cap the process already has
        limit = min(limit, soft)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):
        pass


def _child(action, budget, report):
    """The forked child: runs action() under a memory cap and writes how it ended to the pipe
    `report` (JSON: ok, or the exception's type and message); never returns."""
    code = 1
    try:
        outcome = {"ok": True}
        try:
            limit_memory(budget)
            action()
        except ModelFileError as e:
            outcome = {"ok": False, "type": "ModelFileError", "message": str(e)[:MAX_MESSAGE_CHARS]}
        except MemoryError:
            outcome = {"ok": False, "type": "MemoryError", "message": ""}
        except BaseException as e:  # a bug in covidx's reader, reported as one in the parent
            outcome = {"ok": False, "type": type(e).__name__, "message": str(e)[:MAX_MESSAGE_CHARS]}
        os.write(report, json.dumps(outcome).encode("ascii"))  # ASCII JSON: at most 6 bytes a character
        code = 0
    finally:
        os._exit(code)


def _outcome(report, where):
    chunks = []
    while True:
        chunk = os.read(report, MAX_REPORT_BYTES)
        if not chunk:
            break
        chunks.append(chunk)
    try:
        outcome = json.loads(b"".join(chunks).decode("utf-8"))
        ok, kind, message = outcome["ok"], outcome.get("type"), outcome.get("message")
    except (ValueError, KeyError, TypeError):
        raise RuntimeError("%s: the process reading this HDF5 file ended without saying how" % where) from None
    return ok, kind, message


def probe_in_child(action, where, size=0, seconds=None):
    """Runs action() in a forked child first: libhdf5 can crash, loop or allocate without end on a
    hostile file, and then only the child suffers (it is killed after `seconds` and its memory is
    capped), never this process. The child does exactly what this process does next (open,
    navigate, read every tensor): where it succeeded, this process repeats it in about the same
    time and memory; where it failed, its error is raised here and libhdf5 never sees the file in
    this process."""
    if not hasattr(os, "fork"):
        return
    seconds = PROBE_SECONDS if seconds is None else seconds
    budget = PROBE_MEMORY_BYTES + PROBE_MEMORY_PER_FILE_BYTE * size
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:
        os.close(read_end)
        _child(action, budget, write_end)
    os.close(write_end)
    try:
        deadline = time.monotonic() + seconds
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                fail(where, "the HDF5 library did not finish reading this file within %.0f s (a damaged or hostile "
                            "file); nothing was loaded" % seconds)
            time.sleep(0.005)
        if os.WIFSIGNALED(status):
            fail(where, "the HDF5 library crashed reading this file (signal %d; it was read in a separate process, "
                        "so this one is unaffected): a damaged or hostile file" % os.WTERMSIG(status))
        ok, kind, message = _outcome(read_end, where)
    finally:
        os.close(read_end)
    if ok or (REPEAT_FAILURES and kind != "MemoryError"):
        return
    if kind == "ModelFileError":
        raise ModelFileError(message)
    if kind == "MemoryError":
        fail(where, "reading this file needs more than %d MB of memory, far more than a model file needs (a "
                    "damaged or hostile file); nothing was loaded" % (budget >> 20))
    raise RuntimeError("%s: covidx's HDF5 reader failed in its separate process (%s: %s)" % (where, kind, message))


def read_file(source, where, read):
    """read(h5) on the HDF5 file `source` (a path or bytes), first in a child process (see
    probe_in_child), then here; what h5py raises on damage becomes ModelFileError.

    A path is opened once, and the child and this process both read that open file: a file put
    in its place after the child's read (renamed over it) is never read here."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_checked(source, where, read)
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))  # a FIFO cannot block
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            fail(where, "not a regular file (a directory, device or pipe); covidx reads model files")
        return _read_checked(HeldFile(fd), where, read, fd)
    finally:
        os.close(fd)


class HeldFile(io.RawIOBase):
    """A read-only file object over an open descriptor, read with pread (so the checking child and
    this process never share a file position), for h5py's file-object driver."""

    def __init__(self, fd):
        super().__init__()
        self.fd, self.position = fd, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: os.fstat(self.fd).st_size}[whence]
        self.position = base + offset
        return self.position

    def tell(self):
        return self.position

    def readinto(self, buffer):
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            data = os.pread(self.fd, len(view) - done, self.position + done)
            if not data:
                break
            view[done:done + len(data)] = data
            done += len(data)
        self.position += done
        return done


def _read_checked(source, where, read, fd=None):
    size = check_file(source, where)
    h5py_module(where)  # a missing h5py is reported here, not from the child
    before = _identity(fd)

    def attempt():
        with H5File(source, where, size) as h5:
            return guard(where, read, h5)

    probe_in_child(attempt, where, size)
    if _identity(fd) != before:  # written to in place (not replaced) since the child read it
        fail(where, "the file changed while it was being read; nothing was loaded")
    return attempt()


def _identity(fd):
    """What changes when a file is written to: its size and modification time (None for bytes)."""
    if fd is None:
        return None
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns  # (not ctime: a rename over the path changes the held file's link count)


class H5File:
    """An HDF5 file opened read-only, from a path or from bytes (a member of a .keras archive).
    `where` names the file in every error; `size` is its length in bytes (from check_file)."""

    def __init__(self, source, where, size):
        self.where, self.size = where, size
        self.h5py = h5py_module(where)
        target = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
        if isinstance(source, HeldFile):
            source.seek(0)
        try:
            try:  # no file locking: it fails on read-only and network file systems
                self.file = self.h5py.File(target, "r", locking=False)
            except TypeError:  # h5py < 3.5
                self.file = self.h5py.File(target, "r")
        except Exception as e:  # libhdf5 reports damage as OSError, sometimes others
            fail(where, "not a readable HDF5 file (%s)" % e)

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- navigation --------------------------------------------------------------------------

    def get(self, group, path):
        """The object at path (relative to group), following hard links only; None if absent."""
        parts = path.split("/")
        if len(path) > MAX_PATH_BYTES or len(parts) > MAX_PATH_PARTS:
            fail(self.where, "an object path of %d bytes in %d parts (%r...), longer than any Keras name"
                 % (len(path), len(parts), path[:40]))
        node = group
        for part in parts:
            if part in ("", "."):
                continue
            if not isinstance(node, self.h5py.Group):
                return None
            link = node.get(part, getlink=True)
            if link is None:
                return None
            if not isinstance(link, self.h5py.HardLink):
                fail(self.where, "%s/%s is a %s: covidx follows no links that may lead outside the file"
                     % (node.name.rstrip("/"), part, type(link).__name__))
            node = node[part]
        return node

    def group(self, parent, path):
        node = self.get(parent, path)
        return node if isinstance(node, self.h5py.Group) else None

    def keys(self, group):
        names = list(group.keys())
        if len(names) > MAX_NAMES:
            fail(self.where, "%s has %d entries, more than any model file has" % (group.name, len(names)))
        return names

    # --- attributes --------------------------------------------------------------------------

    def _attribute(self, obj, name):
        """The attribute's value, after checking its size and that it holds text."""
        if name not in obj.attrs:
            return None
        attr = obj.attrs.get_id(name)
        dtype, shape = attr.dtype, attr.shape
        if shape == (0,):  # h5py stores an empty list as an empty float array
            return []
        text = dtype.kind in "SU" or self.h5py.check_string_dtype(dtype) is not None
        if not text or len(shape) > 1:
            fail(self.where, "attribute %r of %s: expected text, got %s %s" % (name, obj.name, dtype, shape))
        if attr.get_storage_size() > MAX_ATTRIBUTE_BYTES or (shape and shape[0] > MAX_NAMES):
            fail(self.where, "attribute %r of %s is implausibly large" % (name, obj.name))
        return obj.attrs[name]

    def text(self, obj, name):
        """A text attribute (JSON configs) as str, or None."""
        value = self._attribute(obj, name)
        if value is None:
            return None
        if isinstance(value, np.ndarray):
            if value.shape != ():
                fail(self.where, "attribute %r of %s: expected one string" % (name, obj.name))
            value = value[()]
        return _decode(value, self.where, name)

    def names(self, obj, name):
        """A list-of-names attribute (layer_names, weight_names), joined from Keras's chunks
        name0, name1, ... when it was too large for one attribute; None if absent."""
        value = self._attribute(obj, name)
        if value is None and (name + "0") in obj.attrs:
            value, k = [], 0
            while (name + str(k)) in obj.attrs:
                value.extend(list(self._attribute(obj, name + str(k))))
                k += 1
                if len(value) > MAX_NAMES:
                    fail(self.where, "attribute %r of %s is implausibly large" % (name, obj.name))
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or (isinstance(value, np.ndarray) and value.shape == ()):
            value = [value[()] if isinstance(value, np.ndarray) else value]
        return [_decode(v, self.where, name) for v in value]

    # --- datasets ----------------------------------------------------------------------------

    def tensor(self, dataset, shape, label):
        """The dataset as a float32 array of exactly `shape` (checked before reading)."""
        self.check_tensor(dataset, label, ndim=len(shape))
        if tuple(dataset.shape) != tuple(shape):
            fail(self.where, "%s: expected shape %s, the file has %s" % (label, tuple(shape), tuple(dataset.shape)))
        return self.read(dataset, label)

    def check_tensor(self, dataset, label, ndim=None):
        """Checks a dataset's type, rank, size, storage and filters, without reading it."""
        h5py = self.h5py
        if not isinstance(dataset, h5py.Dataset):
            fail(self.where, "%s: expected a dataset at %s" % (label, getattr(dataset, "name", "?")))
        shape, dtype = dataset.shape, dataset.dtype
        if shape is None or (ndim is not None and len(shape) != ndim):
            fail(self.where, "%s: expected %d dimensions, the file has shape %s" % (label, ndim, shape))
        count = int(np.prod(shape, dtype=np.float64))
        if count > MAX_TENSOR_ELEMENTS:
            fail(self.where, "%s: implausibly large tensor %s" % (label, shape))
        if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
            fail(self.where, "%s: expected float16/32/64 weights, the file has %s" % (label, dtype))
        if dataset.is_virtual or dataset.external:
            fail(self.where, "%s: data stored outside the file (external or virtual dataset) is not read" % label)
        plist = dataset.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            code = plist.get_filter(i)[0]
            if code not in STANDARD_FILTERS:
                fail(self.where, "%s: compressed with HDF5 filter %d, which covidx does not read" % (label, code))
        nbytes = count * dtype.itemsize
        layout = plist.get_layout()
        if layout == h5py.h5d.CONTIGUOUS:
            offset = dataset.id.get_offset()
            if count and (offset is None or dataset.id.get_storage_size() < nbytes):
                fail(self.where, "%s: no data stored (truncated or never written)" % label)
            if count and offset + nbytes > self.size:
                fail(self.where, "%s: data lies beyond the end of the file (truncated)" % label)
        elif layout == h5py.h5d.COMPACT:
            if dataset.id.get_storage_size() != nbytes:
                fail(self.where, "%s: inconsistent compact storage" % label)
        elif layout == h5py.h5d.CHUNKED:
            self._check_chunks(dataset, plist, count, nbytes, label)
        else:
            fail(self.where, "%s: unsupported storage layout %d" % (label, layout))

    def _check_chunks(self, dataset, plist, count, nbytes, label):
        """Chunked data must be there: every chunk written (libhdf5 returns fill values for the
        others, so a small file could declare gigabytes), and without filters, all its bytes.
        A chunk may not be much larger than the data: libhdf5 allocates and fills a whole chunk to
        read any part of it, so a 7x7x3x64 kernel in one 4 GB compressed chunk of zeros (a few MB
        of file) would cost 4 GB."""
        if not count:
            return
        chunks = dataset.chunks
        if not chunks or len(chunks) != len(dataset.shape) or min(chunks) < 1:
            fail(self.where, "%s: malformed chunk layout %s" % (label, chunks))
        chunk_bytes = int(np.prod(chunks, dtype=np.float64)) * dataset.dtype.itemsize
        if chunk_bytes > max(nbytes, MAX_CHUNK_SLACK_BYTES):
            fail(self.where, "%s: stored in chunks %s of %d bytes for %d bytes of data (a damaged or hostile "
                             "file)" % (label, tuple(chunks), chunk_bytes, nbytes))
        expected = 1
        for n, c in zip(dataset.shape, chunks):
            expected *= -(-n // c)
        stored = dataset.id.get_storage_size()
        written = dataset.id.get_num_chunks() if hasattr(dataset.id, "get_num_chunks") else None
        if (written is not None and written != expected) or stored == 0 or \
                (plist.get_nfilters() == 0 and stored < nbytes):
            fail(self.where, "%s: %s of its %d data chunks are stored (truncated or never written)"
                 % (label, "none" if not written else "only %d" % written, expected))

    def read(self, dataset, label):
        out = np.empty(dataset.shape, dtype=dataset.dtype)
        if out.size:
            try:
                dataset.read_direct(out)
            except Exception as e:
                fail(self.where, "%s: could not read the data (%s)" % (label, e))
        out = out.astype(np.float32)
        if not np.isfinite(out).all():
            fail(self.where, "%s: holds NaN or infinite values (corrupted?)" % label)
        return out


def _decode(value, where, name):
    if isinstance(value, np.bytes_):
        value = bytes(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            fail(where, "attribute %r is not UTF-8 text" % name)
    if isinstance(value, str):
        return value
    fail(where, "attribute %r: expected text, got %s" % (name, type(value).__name__))


def guard(where, action, *args):
    """Runs action(*args), turning what h5py/libhdf5 raise on a damaged file into ModelFileError."""
    try:
        return action(*args)
    except ModelFileError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
        raise ModelFileError("%s: damaged or unreadable HDF5 content (%s: %s)" % (where, type(e).__name__, e)) from e
