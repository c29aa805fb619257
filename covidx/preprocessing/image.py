"""keras.preprocessing.image's names, for the image pipeline of the private modules beside it:

- reader.py: image files to PIL images (load_img: the file checks, Pillow's decoders and
  dicom.py's, the decoding memory budget);
- arrays.py: PIL images to arrays and back (img_to_array, array_to_img, save_img);
- generator.py: ImageDataGenerator and its random transforms;
- iterators.py: the iterators it makes (DirectoryIterator, DataFrameIterator, NumpyArrayIterator).

They import one another in that order and never this module, which only offers their names.
The reader's limits are read and set here as on the reader: `covidx.preprocessing.image.
MAX_DECODE_BYTES = n` sets the memory budget load_img decodes within."""
from __future__ import annotations

import sys
import types

from . import reader
from ..errors import ImageFileError, ImageFileNotFoundError, ImageFilePermissionError  # noqa: F401
from .arrays import array_to_img, img_to_array, save_img  # noqa: F401
from .generator import ImageDataGenerator, apply_affine_transform, apply_brightness_shift, apply_channel_shift  # noqa: F401
from .iterators import DataFrameIterator, DirectoryIterator, Iterator, NumpyArrayIterator  # noqa: F401
from .reader import COLOR_MODES, INTERPOLATIONS, PIL_FORMATS, check_target_size, is_dicom, load_img  # noqa: F401

# The reader's settings (and its shared decoding memory), one value wherever they are read or set.
READER_SETTINGS = ("MAX_FILE_BYTES", "MAX_DECODE_BYTES", "BLOCK_PIXELS", "TRIM_BYTES", "_memory")


def _reader_setting(name):
    return property(lambda module: getattr(reader, name), lambda module, value: setattr(reader, name, value),
                    doc="reader.%s, read and set there" % name)


# This module, with the reader's settings as properties that read and write the reader's.
_KerasPath = type("_KerasPath", (types.ModuleType,), dict(
    {name: _reader_setting(name) for name in READER_SETTINGS},
    __dir__=lambda module: sorted(set(vars(module)) | set(READER_SETTINGS))))
sys.modules[__name__].__class__ = _KerasPath
