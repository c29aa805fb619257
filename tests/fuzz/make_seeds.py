"""Writes seed inputs for fuzz_model_files.py into the folder given: the header of a real covidx
model file (its tensor table and metadata, data cut short), a few small variants, and real files
of the other formats where their writers are installed (h5py, torch)."""
import io
import json
import os
import struct
import sys
import zipfile

import numpy as np

from covidx.applications.resnet50 import ResNet50


def covidx_header_seeds(out):
    model = ResNet50(weights=None, classes=2, head=(4,), seed=0, class_names=["COV19", "Normal"],
                     preprocessing={"rescale": 1 / 255})
    path = os.path.join(out, "model.safetensors")
    model.save(path, dtype="float16")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = f.read(n)
    os.remove(path)
    with open(os.path.join(out, "covidx_header_only"), "wb") as f:
        f.write(struct.pack("<Q", n) + header + b"\0" * 64)
    h = json.loads(header)
    first = {k: v for k, v in list(h.items())[:3]}
    first["__metadata__"] = h["__metadata__"]
    blob = json.dumps(first).encode()
    with open(os.path.join(out, "covidx_three_tensors"), "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"\0" * 256)


def hdf5_seed(out):
    try:
        import h5py
    except ImportError:
        return
    with h5py.File(os.path.join(out, "keras_weights.h5"), "w") as f:
        f.attrs["layer_names"] = [b"conv1_conv"]
        g = f.create_group("conv1_conv")
        g.attrs["weight_names"] = [b"conv1_conv/kernel:0"]
        g.create_dataset("conv1_conv/kernel:0", data=np.zeros((7, 7, 3, 2), np.float32))


def torch_seed(out):
    try:
        import torch
    except ImportError:
        return
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(2, 3, 7, 7), "fc.bias": torch.zeros(2)}, buf)
    with open(os.path.join(out, "torch_state_dict.pt"), "wb") as f:
        f.write(buf.getvalue())


def keras_zip_seed(out):
    with zipfile.ZipFile(os.path.join(out, "model.keras"), "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", json.dumps({"class_name": "Functional", "config": {"layers": []}}))


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    covidx_header_seeds(out)
    hdf5_seed(out)
    torch_seed(out)
    keras_zip_seed(out)
    print("\n".join(sorted(os.listdir(out))))
