"""A reduced precision (bf16 or int8) against fp32 on real chest X-rays:

    python benchmarks/precision_accuracy.py --precision bf16|int8 [--model FILE]
        [--data ../shared/data/cxr] [--limit N] [--emulated]
        [--calibrate [--per-class 256] [--method clip-weighted|mse|max] [--all-int8]]          (int8)

On covid19-radiography/test (one folder per class) it prints the share of images whose predicted
class agrees between the two precisions, the largest |probability difference| and both
accuracies; on ieee8023-covid (COVID-19 only) the same for the share detected as COVID-19. Each
line ends PASS or FAIL against the precision's bars: agreement >= 99.5 %, max |diff| <= 0.02,
accuracy within 0.3 points; detection on ieee8023-covid within 1 point for bf16, 0.3 for int8.

bf16 runs on AMX, else AVX512_BF16; int8 on AVX-512 VNNI, else AVX-VNNI, else AVX2. Where the CPU
runs no kernel of the precision, --emulated runs an emulated one (bf16: COVIDX_GEMM=amx-emu, int8:
avx2int8-emu; the same bits in plain C, slow: use --limit); without it the script says so and
stops. int8 needs a model file with an int8 calibration (weights/calibrate_int8.py, default: the
shipped model's); --calibrate calibrates a temporary copy first on covid19-radiography/train and
train-extra (--per-class images of each class), never on the measuring sets; --all-int8 puts the
two convolutions that read the stem's output in int8 too (by default they stay fp32). --limit N takes the
first N images (sorted) of each folder, for a smoke run."""
import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "weights"))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "cxr")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".dcm")
# the bars of each precision: agreement (%), max |diff|, accuracy and detection (points)
BARS = {"bf16": {"agree": 99.5, "diff": 0.02, "accuracy": 0.3, "detection": 1.0},
        "int8": {"agree": 99.5, "diff": 0.02, "accuracy": 0.3, "detection": 0.3}}
EMULATED = {"bf16": "amx-emu", "int8": "avx2int8-emu"}


def files(folder, limit):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(EXTENSIONS))
    return [os.path.join(folder, n) for n in (names[:limit] if limit else names)]


def load(model, paths):
    """Preprocessed float32 images of those that can be read, and the indices read."""
    from covidx.preprocessing.image import img_to_array, load_img

    arrays, kept = [], []
    for i, p in enumerate(paths):
        try:
            arrays.append(img_to_array(load_img(p, target_size=(224, 224))))
            kept.append(i)
        except Exception as e:  # an unreadable file is reported and left out of both precisions
            print("  skipped %s: %s" % (p, e), file=sys.stderr)
    x = model.preprocess(np.stack(arrays)) if arrays else np.zeros((0, 224, 224, 3), np.float32)
    return np.asarray(x, np.float32), kept


def predict(model, x, batch):
    return np.concatenate([model.predict(x[i:i + batch], verbose=0) for i in range(0, len(x), batch)]) \
        if len(x) else np.zeros((0, model.output_shape[-1]), np.float32)


def verdict(ok):
    return "PASS" if ok else "FAIL"


def compare(name, precision, p32, plow, labels):
    """Prints one set's lines; True when its bars are met."""
    bars = BARS[precision]
    agree = np.mean(p32.argmax(1) == plow.argmax(1)) * 100
    diff = np.abs(p32 - plow).max()
    acc32, acclow = np.mean(p32.argmax(1) == labels) * 100, np.mean(plow.argmax(1) == labels) * 100
    what, within = ("accuracy", bars["accuracy"]) if name.endswith("test") else ("detected as COVID-19",
                                                                                bars["detection"])
    print("%s: %d images" % (name, len(labels)))
    print("  predicted class agrees:  %.2f %%   %s (>= %g %%)" % (agree, verdict(agree >= bars["agree"]), bars["agree"]))
    print("  max |prob difference|:   %.4f     %s (<= %g)" % (diff, verdict(diff <= bars["diff"]), bars["diff"]))
    print("  %s fp32 %.2f %%, %s %.2f %%: %+.2f points   %s (within %g)"
          % (what, acc32, precision, acclow, acclow - acc32, verdict(abs(acclow - acc32) <= within), within))
    return agree >= bars["agree"] and diff <= bars["diff"] and abs(acclow - acc32) <= within


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", required=True, choices=sorted(BARS))
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder holding covid19-radiography/ and ieee8023-covid/")
    ap.add_argument("--model", help="a model file (default: the shipped model); int8: with a calibration")
    ap.add_argument("--calibrate", action="store_true",
                    help="int8: calibrate a temporary copy on the training images first")
    ap.add_argument("--per-class", type=int, default=256, help="with --calibrate: training images per class")
    ap.add_argument("--method", default="clip-weighted", choices=("clip-weighted", "mse", "max"), help="with --calibrate: how scales are chosen")
    ap.add_argument("--all-int8", action="store_true", help="with --calibrate: the stem's readers in int8 too")
    ap.add_argument("--limit", type=int, default=0, help="at most N images per folder (0: all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--emulated", action="store_true",
                    help="without a kernel of the precision, run the emulated one (slow)")
    args = ap.parse_args()
    if args.calibrate and args.precision != "int8":
        ap.error("--calibrate is for --precision int8")
    if args.all_int8 and not args.calibrate:
        ap.error("--all-int8 goes with --calibrate")

    import covidx

    if args.threads:
        covidx.set_num_threads(args.threads)
    kernel = covidx.config()["kernels"].get(args.precision)
    if covidx._config.kernel_precision(kernel) != args.precision:
        if not args.emulated:
            print("this CPU runs no %s kernel (%s would fall back to fp32: %s); rerun with --emulated (slow; use "
                  "--limit)" % (args.precision, args.precision, kernel))
            return 0
        os.environ["COVIDX_GEMM"] = EMULATED[args.precision]
    path = args.model or covidx.model.default_model_path()
    tmp = None
    if args.calibrate:
        from calibrate_int8 import calibrate

        tmp = tempfile.mkdtemp()
        copy = os.path.join(tmp, os.path.basename(path))
        shutil.copy(path, copy)
        train = os.path.join(args.data, "covid19-radiography")
        t = time.perf_counter()
        cal = calibrate(copy, [os.path.join(train, "train"), os.path.join(train, "train-extra")],
                        per_class=args.per_class, batch_size=args.batch_size, method=args.method,
                        all_int8=args.all_int8)
        print("calibrated a copy on %d training images (%s%s, %.0f s)" % (
            cal["images"], cal["method"], ", all int8" if args.all_int8 else "", time.perf_counter() - t))
        path = copy
    try:
        fp32 = covidx.load_model(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a silent fp32 fallback would make this meaningless
            low = covidx.load_model(path, precision=args.precision)
    except ValueError as e:  # int8 without a calibration: say how to get one here
        print("%s\n(or rerun with --calibrate: a temporary copy calibrated on the training images)" % e)
        return 1
    finally:
        if tmp:
            shutil.rmtree(tmp)
    info = low.precision_info()
    calibrated = ""
    if args.precision == "int8":
        kept = sorted(k for k, v in low.int8_calibration["scales"].items() if v is None)
        calibrated = " (calibrated on %s images, %s; in fp32: the stem%s)" % (
            low.int8_calibration.get("images"), low.int8_calibration.get("method"),
            "".join(", " + k for k in kept))
    print("covidx %s, %s kernel %s%s; model %s%s, classes %s" % (
        covidx.__version__, args.precision, info["kernel"], " (%s)" % info["note"] if info["note"] else "",
        args.model or "shipped", calibrated, fp32.class_names))
    names = fp32.class_names or ["COV19", "Normal"]
    covid = names.index("COV19") if "COV19" in names else 0
    ok = True

    test = os.path.join(args.data, "covid19-radiography", "test")
    if os.path.isdir(test):
        labels, p32, plow = [], [], []
        for cls in sorted(os.listdir(test)):
            folder = os.path.join(test, cls)
            if not os.path.isdir(folder) or cls not in names:
                continue
            x, kept = load(fp32, files(folder, args.limit))
            p32.append(predict(fp32, x, args.batch_size))
            plow.append(predict(low, x, args.batch_size))
            labels += [names.index(cls)] * len(kept)
        ok &= compare("covid19-radiography/test", args.precision, np.concatenate(p32), np.concatenate(plow),
                      np.array(labels))
    else:
        print("no %s: skipped" % test)

    ieee = os.path.join(args.data, "ieee8023-covid")
    if os.path.isdir(ieee):
        paths = [p for d in sorted(os.listdir(ieee)) if os.path.isdir(os.path.join(ieee, d))
                 for p in files(os.path.join(ieee, d), args.limit)]
        x, kept = load(fp32, paths)
        ok &= compare("ieee8023-covid", args.precision, predict(fp32, x, args.batch_size),
                      predict(low, x, args.batch_size), np.full(len(kept), covid))
    else:
        print("no %s: skipped" % ieee)
    print("all bars met" if ok else "some bars not met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
