"""Writes seed inputs for a fuzz target into the folder given: python make_seeds.py TARGET FOLDER,
TARGET one of model_files, torch, hdf5, images, dicom. Seeds are small real files of each format
(made with the format's own writer where it is installed: h5py, torch, pydicom, Pillow)."""
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


def hdf5_seeds(out):
    try:
        import h5py
    except ImportError:
        return
    with h5py.File(os.path.join(out, "keras_weights.h5"), "w") as f:
        f.attrs["layer_names"] = [b"conv1_conv"]
        g = f.create_group("conv1_conv")
        g.attrs["weight_names"] = [b"conv1_conv/kernel:0"]
        g.create_dataset("conv1_conv/kernel:0", data=np.zeros((7, 7, 3, 2), np.float32))
    with h5py.File(os.path.join(out, "keras3.weights.h5"), "w") as f:
        g = f.create_group("layers/conv2d/vars")
        g.attrs["name"] = "conv1_conv"
        g.create_dataset("0", data=np.ones((7, 7, 3, 2), np.float32), chunks=(7, 7, 3, 1), compression="gzip")
        g.create_dataset("1", data=np.ones(2, np.float32))
        f.create_group("layers/dense/vars").create_dataset("0", data=np.ones((2048, 2), np.float16))


def torch_seeds(out):
    try:
        import torch
    except ImportError:
        return
    sd = {"conv1.weight": torch.ones(2, 3, 7, 7), "fc.weight": torch.ones(3, 2).t(), "fc.bias": torch.zeros(2),
          "bn1.num_batches_tracked": torch.tensor(3)}
    torch.save(sd, os.path.join(out, "torch_state_dict.pt"))
    torch.save(sd, os.path.join(out, "torch_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save({"epoch": 1, "state_dict": sd, "class_names": ["a", "b"]}, os.path.join(out, "checkpoint.pth"))


def keras_zip_seed(out):
    with zipfile.ZipFile(os.path.join(out, "model.keras"), "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", json.dumps({"class_name": "Functional", "config": {"layers": []}}))


def image_seeds(out):
    from PIL import Image

    grey = Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8), "L")
    grey.save(os.path.join(out, "grey.png"))
    grey.convert("RGB").save(os.path.join(out, "rgb.jpg"), "JPEG", quality=80)
    grey.convert("RGB").quantize(16).save(os.path.join(out, "palette.png"), transparency=0)
    Image.fromarray(np.asarray(grey, np.uint16) * 257).save(os.path.join(out, "sixteen.png"))
    grey.save(os.path.join(out, "grey.bmp"))
    grey.save(os.path.join(out, "grey.tif"), compression="tiff_lzw")
    grey.save(os.path.join(out, "grey.gif"))


def dicom_seeds(out):
    try:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless, generate_uid
    except ImportError:
        return
    stored = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)

    def write(name, pixels, syntax=ExplicitVRLittleEndian, photometric="MONOCHROME2", **extra):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
        if pixels.ndim == 3:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
        ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
        for key, value in extra.items():
            setattr(ds, key, value)
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if syntax == RLELossless:
            ds.compress(RLELossless)
        elif syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(os.path.join(out, name), enforce_file_format=True)

    write("window.dcm", stored, WindowCenter=2048, WindowWidth=4000, RescaleSlope=1, RescaleIntercept=-10)
    write("mono1.dcm", (stored // 16).astype(np.uint8), photometric="MONOCHROME1")
    write("rle.dcm", stored, RLELossless)
    write("deflated.dcm", stored, DeflatedExplicitVRLittleEndian)
    write("rgb.dcm", np.stack([(stored // 16).astype(np.uint8)] * 3, axis=-1), photometric="RGB")


TARGETS = {
    "model_files": [covidx_header_seeds, hdf5_seeds, torch_seeds, keras_zip_seed],
    "torch": [torch_seeds],
    "hdf5": [hdf5_seeds],
    "images": [image_seeds],
    "dicom": [dicom_seeds],
}

if __name__ == "__main__":
    target, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    for make in TARGETS[target]:
        make(out)
    print("\n".join(sorted(os.listdir(out))))
