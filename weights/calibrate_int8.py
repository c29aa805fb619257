"""The int8 calibration of a covidx model file (by default the shipped one): Model.calibrate_int8
on training images, the scales written into the file (its weights, dtype and everything else
unchanged). Run at packaging time, after the weights are final:

    python weights/calibrate_int8.py --data .../covid19-radiography/train \
        --data .../covid19-radiography/train-extra [--model weights/covid_resnet50.safetensors] \
        [--out PATH] [--per-class 256] [--all-int8]

Only training folders may be given: the images the model is measured on (covid19-radiography/test,
ieee8023-covid, nih-normal, unfamiliar) are refused. --per-class N takes N images of each class,
spread evenly over the class's files (all folders together, sorted), so the calibration is
deterministic. --out writes a calibrated copy instead of rewriting --model. --all-int8 puts the two
convolutions that read the stem's output in int8 too (by default they stay fp32: covidx.int8)."""
import argparse
import json
import os
import sys
import time

import numpy as np

import covidx
from covidx import int8
from covidx.preprocessing.image import img_to_array, load_img

HERE = os.path.dirname(os.path.abspath(__file__))
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
MEASURING_SETS = ("test", "ieee8023-covid", "nih-normal", "unfamiliar", "samples")


def training_files(roots, per_class):
    """{class: [paths]}: per_class files of each class folder name found under the roots, evenly
    spread over the sorted list of all of them (every file with per_class 0)."""
    for r in roots:
        parts = os.path.normpath(os.path.abspath(r)).split(os.sep)
        if any(p in MEASURING_SETS for p in parts):
            raise SystemExit("--data %s: a measuring set; calibrate on training images only" % r)
        if not os.path.isdir(r):
            raise SystemExit("--data %s: no such folder" % r)
    by_class = {}
    for r in roots:
        for cls in sorted(os.listdir(r)):
            d = os.path.join(r, cls)
            if os.path.isdir(d):
                by_class.setdefault(cls, []).extend(
                    os.path.join(d, n) for n in sorted(os.listdir(d)) if n.lower().endswith(EXTENSIONS))
    if not by_class:
        raise SystemExit("no class folders under %s" % ", ".join(roots))
    picked = {}
    for cls, paths in by_class.items():
        if per_class and len(paths) > per_class:
            paths = [paths[i] for i in np.linspace(0, len(paths) - 1, per_class).round().astype(int)]
        picked[cls] = paths
    return picked


def load(model, paths, size):
    arrays = [img_to_array(load_img(p, target_size=(size, size))) for p in paths]
    return np.asarray(model.preprocess(np.stack(arrays)), np.float32)


def calibrate(path, roots, out=None, per_class=256, batch_size=16, method="clip-weighted", all_int8=False):
    """Calibrates the model file at path on the training folders; writes out (or path). Returns
    the calibration."""
    model = covidx.load_model(path)
    size = model.input_shape[1] or 224
    files = training_files(roots, per_class)
    x = np.concatenate([load(model, paths, size) for paths in files.values()])
    calibration = model.calibrate_int8(x, batch_size=batch_size, method=method,
                                       keep_fp32=() if all_int8 else int8.STEM_READERS)
    calibration["data"] = {cls: len(paths) for cls, paths in files.items()}
    model.int8_calibration = calibration  # with the images' classes, for the record
    dtype = "float16" if all(str(t) == "float16" for t in _file_dtypes(path)) else "float32"
    model.save(out or path, dtype=dtype)
    return calibration


def _file_dtypes(path):
    """The dtypes of the model weights in a safetensors file (its header)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {v["dtype"].lower().replace("f16", "float16").replace("f32", "float32")
            for k, v in header.items() if k != "__metadata__" and not k.startswith("unfamiliar/")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", required=True, help="a training folder (one folder per class)")
    ap.add_argument("--model", default=os.path.join(HERE, "covid_resnet50.safetensors"))
    ap.add_argument("--out", help="write the calibrated model here (default: rewrite --model)")
    ap.add_argument("--per-class", type=int, default=256, help="images per class (0: all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--method", default="clip-weighted", choices=("clip-weighted", "mse", "max"))
    ap.add_argument("--all-int8", action="store_true", help="no convolution after the stem kept in fp32")
    args = ap.parse_args()
    t0 = time.time()
    cal = calibrate(args.model, args.data, args.out, args.per_class, args.batch_size, args.method, args.all_int8)
    print("int8 calibration of %s on %d images (%s), method %s, %.0f s; written to %s"
          % (args.model, cal["images"], ", ".join("%s %d" % kv for kv in cal["data"].items()), cal["method"],
             time.time() - t0, args.out or args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
