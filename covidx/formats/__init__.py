"""Model files, recognised by content, never by extension alone; every reader returns plain
Parts (formats/parts.py) and knows nothing of models (covidx.saving builds them):

- covidx's own safetensors files (covidx_file.py);
- Keras legacy HDF5 (.h5): a full model (model.save in TF 2.x / Keras 3: model_config and
  model_weights), weights only (save_weights), and the official ImageNet weight files;
- Keras 3 archives (.keras: config.json + model.weights.h5) and weight files (.weights.h5);
- PyTorch state_dicts of torchvision's ResNet50 (torch.save, zip or older format), read without
  PyTorch and without unpickling anything but tensors and plain containers.

sniff() is the one test of a file's kind; read() and load_weights() the readers' entry, write()
the writers' (by extension, as Keras's model.save). Files holding weights only record no
activations: Dense layers are taken as ReLU and the last one as softmax (sigmoid with one unit);
to choose, load them into an architecture: ResNet50(weights=path, head=..., classes=...).
Keras files do not record input preprocessing (model.preprocessing is None: set it before
model.save if covidx is to read image files for the model), except those covidx wrote, which keep
class names and preprocessing in an entry of their own; torchvision state_dicts get 'torch'.
Every problem raises ModelFileError (a ValueError) whose message names the file."""
from __future__ import annotations

import os
import struct

from .. import architecture, safetensors_io
from . import covidx_file, keras_files, keras_writer, torch_files, torchvision
from .archive import open_zip
from .errors import ModelFileError, fail
from .parts import Parts

__all__ = ["ModelFileError", "Parts", "sniff", "read", "load_weights", "write"]

TORCH_PREPROCESSING = "torch"  # torchvision's models expect ImageNet mean/std normalisation


def sniff(path):
    """'hdf5', 'zip', 'pickle', 'safetensors' or None, from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    safetensors = safetensors_io.looks_like_safetensors(path)
    # A safetensors file starts with its header's length, whose first byte is 0x80 (a pickle's
    # first byte) for one length in 256: such a file is a pickle only if the length does not fit.
    if head[:1] == b"\x80" and not (safetensors and 8 + struct.unpack("<Q", head)[0] <= os.path.getsize(path)):
        return "pickle"
    return "safetensors" if safetensors else None


def _zip_kind(path):
    with open_zip(path) as archive:
        names = archive.namelist()
    if "config.json" in names:
        return "keras"
    if any(n.endswith("/data.pkl") for n in names):
        return "torch"
    fail(path, "a zip archive, but neither a Keras .keras file nor a torch.save file")


def _read_parts(path, arch):
    """keras_files.Parts or ('torch', state_dict, class names), by content."""
    if os.path.getsize(path) == 0:
        fail(path, "empty file")
    kind = sniff(path)
    if kind == "hdf5":
        return keras_files.read_h5(path, path, arch)
    if kind == "zip" and _zip_kind(path) == "keras":
        return keras_files.read_archive(path, arch)
    if kind in ("zip", "pickle"):
        obj = torch_files.read(path, kind)
        sd, class_names = torchvision.state_dict(obj, path)
        return ("torch", sd, class_names)
    fail(path, "not a model file covidx reads (expected Keras .h5/.keras/.weights.h5, a PyTorch state_dict "
               "or a covidx .safetensors file; the content is none of these)")


def read(path):
    """The Parts of any model file covidx reads (see the module docstring), by content."""
    path = os.fsdecode(os.fspath(path))
    if sniff(path) == "safetensors":
        return covidx_file.read(path)
    parts = _read_parts(path, None)
    if isinstance(parts, tuple):
        _, sd, class_names = parts
        backbone, head = torchvision.split(sd, path)
        arch = torchvision.infer_arch(head, path)
        return Parts(arch, torchvision.named_weights(backbone, head, arch, path), kind="torch",
                     extra={"class_names": class_names, "preprocessing": TORCH_PREPROCESSING})
    return parts


def load_weights(path, arch):
    """{name: array} for arch from any supported file, as Keras's load_weights reads it: legacy
    HDF5 in layer order, Keras 3 files by structure, torchvision state_dicts by their keys."""
    path = os.fsdecode(os.fspath(path))
    if sniff(path) == "safetensors":
        parts = covidx_file.read(path)
        try:
            named = architecture.check_weights(parts.arch, parts.weights)
        except (ValueError, TypeError) as e:
            raise type(e)("%s: %s" % (path, e)) from None
        return named if parts.arch == arch else keras_files.reorder(named, parts.arch, arch, path)
    parts = _read_parts(path, arch)
    if isinstance(parts, tuple):
        backbone, head = torchvision.split(parts[1], path)
        return torchvision.named_weights(backbone, head, arch, path)
    return parts.weights


def write(model, path, overwrite=True, dtype="float32"):
    """Writes model in the format its file name says, as Keras's model.save: '.keras' (the Keras
    3 archive), '.h5' / '.hdf5' (Keras's legacy HDF5), '.safetensors' / '.covidx' (covidx's own;
    dtype='float16' halves it). Other names are refused, saying which to use."""
    if dtype not in ("float32", "float16"):
        raise ValueError("dtype: expected 'float32' or 'float16', got %r" % (dtype,))
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError("save: %s exists (overwrite=False)" % path)
    lower = path.lower()
    if lower.endswith((".keras", ".h5", ".hdf5")):
        if dtype != "float32":
            raise ValueError("save: Keras files are written in float32 (dtype=%r is for covidx's .safetensors "
                             "files)" % (dtype,))
        if lower.endswith(".keras"):
            return keras_writer.save_keras(model, path)
        return keras_writer.save_h5(model, path)
    if not lower.endswith((".safetensors", ".covidx")):
        raise ValueError("save: cannot tell the format from the name %r. Use '.keras' or '.h5' for Keras files "
                         "(readable by Keras 3 and covidx), or '.safetensors' / '.covidx' for covidx's own; "
                         "save_weights('x.weights.h5') writes the weights only" % path)
    return covidx_file.write(model, path, dtype)
