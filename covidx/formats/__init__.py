"""Model files from other frameworks, recognised by content: Keras HDF5 (.h5), Keras 3 archives
(.keras), PyTorch state_dicts. covidx's own safetensors format is read by covidx.model."""
from __future__ import annotations


def sniff(path):
    """'hdf5', 'zip', 'pickle' or None, from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    return None


def load(path, class_names=None):
    kind = sniff(path)
    raise ValueError("%s: not a model file this covidx version reads (%s)"
                     % (path, "detected: %s" % kind if kind else "unrecognised content"))
