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


def member(archive, name, limit, where):
    """A member's bytes, refusing sizes beyond limit before reading (a zip may lie about sizes,
    so at most limit + 1 bytes are ever read)."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        fail(where, "%s is %d bytes, more than a model file needs" % (name, info.file_size))
    with archive.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        fail(where, "%s is larger than it says" % name)
    return data
