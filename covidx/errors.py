"""The errors of image files, raised by the image reader (covidx/preprocessing/reader.py) and
the DICOM reader (covidx/preprocessing/dicom.py), offered by covidx.preprocessing.image and
covidx. A leaf."""
from __future__ import annotations


class ImageFileError(ValueError):
    """An image file that cannot be read or decoded. `.path` names the file and `.reason` says why.
    Every per-file failure is one (a missing file is also a FileNotFoundError, a file that may
    not be read also a PermissionError), so that on_error='skip' can leave the file out."""

    def __init__(self, path, reason):
        self.path, self.reason = path, reason
        super().__init__("%s: cannot read image (%s)" % (path, reason))

    def __reduce__(self):
        return type(self), (self.path, self.reason)


class ImageFileNotFoundError(ImageFileError, FileNotFoundError):
    """No file at the path (or a symbolic link to nothing)."""


class ImageFilePermissionError(ImageFileError, PermissionError):
    """The file may not be read."""
