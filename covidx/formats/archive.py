"""Zip archives (.keras files, torch.save files) read with sizes checked before reading."""
from __future__ import annotations

import zipfile
import zlib

from .errors import fail

# what zipfile and zlib raise on damaged archives
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, zlib.error, NotImplementedError,
              RuntimeError, ValueError, KeyError)


def open_zip(path):
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as e:  # NotImplementedError too: an unsupported zip version (found by fuzzing)
        fail(path, "not a readable zip archive (%s: %s)" % (type(e).__name__, e))


# torch.save and Keras store their members uncompressed, and weights barely compress: a member that
# inflates to more than MAX_RATIO times its compressed size (beyond a small allowance) is a zip bomb.
MAX_RATIO = 16
SMALL_MEMBER = 1 << 20
CHUNK = 1 << 20


def member(archive, name, limit, where):
    """A member's bytes, refusing sizes beyond limit, or beyond MAX_RATIO times the compressed
    bytes present, before reading; a zip may lie about sizes, so the data is read in chunks with
    a running total and at most that many bytes are ever inflated."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        fail(where, "%s is %d bytes, more than a model file needs" % (name, info.file_size))
    budget = limit
    if info.compress_type != zipfile.ZIP_STORED:
        budget = min(limit, max(SMALL_MEMBER, MAX_RATIO * info.compress_size))
        if info.file_size > budget:
            fail(where, "%s inflates from %d to %d bytes: a compression bomb, not a model file"
                 % (name, info.compress_size, info.file_size))
    data = bytearray()
    with archive.open(info) as f:
        while True:
            chunk = f.read(min(CHUNK, budget + 1 - len(data)))
            if not chunk:
                break
            data += chunk
            if len(data) > budget:
                fail(where, "%s is larger than it says" % name)
    return bytes(data) if len(data) <= SMALL_MEMBER else data
