"""The int8 mode against fp32 on real chest X-rays, with a calibrated model file:

    python benchmarks/int8_accuracy.py [--model FILE] [--data ../shared/data/cxr] [--limit N]
        [--calibrate] [--per-class 256] [--emulated]

The model (default: the shipped one) must carry an int8 calibration (weights/calibrate_int8.py);
--calibrate calibrates a temporary copy first on covid19-radiography/train and train-extra
(--per-class images of each class), never on the measuring sets. On covid19-radiography/test it
prints the share of images whose predicted class agrees between the two precisions, the largest
|probability difference| and both accuracies; on ieee8023-covid (COVID-19 only) the same share,
the largest difference and the share detected as COVID-19 in each. Each line ends PASS or FAIL
against the bars: agreement >= 99.5 %, max |diff| <= 0.02, accuracy (detection) within 0.3 points.

int8 runs on AVX-512 VNNI, else AVX-VNNI, else AVX2. Where the CPU has none of them, --emulated
runs the emulated AVX2 kernel (COVIDX_GEMM=avx2int8-emu: the same bits, in plain C, slow: use
--limit); without it the script says so and stops. --limit N takes the first N images (sorted)
of each folder, for a smoke run."""
import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "weights"))
from bf16_accuracy import DEFAULT_DATA, files, load, predict, verdict  # noqa: E402


def compare(name, p32, p8, labels):
    agree = np.mean(p32.argmax(1) == p8.argmax(1)) * 100
    diff = np.abs(p32 - p8).max()
    acc32, acc8 = np.mean(p32.argmax(1) == labels) * 100, np.mean(p8.argmax(1) == labels) * 100
    what = "accuracy" if name.endswith("test") else "detected as COVID-19"
    print("%s: %d images" % (name, len(labels)))
    print("  predicted class agrees:  %.2f %%   %s (>= 99.5 %%)" % (agree, verdict(agree >= 99.5)))
    print("  max |prob difference|:   %.4f     %s (<= 0.02)" % (diff, verdict(diff <= 0.02)))
    print("  %s fp32 %.2f %%, int8 %.2f %%: %+.2f points   %s (within 0.3)"
          % (what, acc32, acc8, acc8 - acc32, verdict(abs(acc8 - acc32) <= 0.3)))
    return agree >= 99.5 and diff <= 0.02 and abs(acc8 - acc32) <= 0.3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder holding covid19-radiography/ and ieee8023-covid/")
    ap.add_argument("--model", help="a calibrated model file (default: the shipped model)")
    ap.add_argument("--calibrate", action="store_true", help="calibrate a temporary copy on the training images first")
    ap.add_argument("--per-class", type=int, default=256, help="with --calibrate: training images per class")
    ap.add_argument("--method", default="mse", choices=("mse", "max"), help="with --calibrate: how scales are chosen")
    ap.add_argument("--limit", type=int, default=0, help="at most N images per folder (0: all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--emulated", action="store_true", help="without an int8 kernel, run the emulated one (slow)")
    args = ap.parse_args()

    import covidx
    from calibrate_int8 import calibrate

    if args.threads:
        covidx.set_num_threads(args.threads)
    kernel = covidx.config()["kernels"].get("int8")
    if covidx._config.kernel_precision(kernel) != "int8":
        if not args.emulated:
            print("this CPU runs no int8 kernel (int8 would fall back to fp32: %s); rerun with --emulated (slow; "
                  "use --limit)" % kernel)
            return 0
        os.environ["COVIDX_GEMM"] = "avx2int8-emu"
    path = args.model or covidx.model.default_model_path()
    tmp = None
    if args.calibrate:
        tmp = tempfile.mkdtemp()
        copy = os.path.join(tmp, os.path.basename(path))
        shutil.copy(path, copy)
        train = os.path.join(args.data, "covid19-radiography")
        t = time.perf_counter()
        cal = calibrate(copy, [os.path.join(train, "train"), os.path.join(train, "train-extra")],
                        per_class=args.per_class, batch_size=args.batch_size, method=args.method)
        print("calibrated a copy on %d training images (%s, %.0f s)" % (cal["images"], cal["method"],
                                                                       time.perf_counter() - t))
        path = copy
    try:
        fp32 = covidx.load_model(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a silent fp32 fallback would make this meaningless
            int8 = covidx.load_model(path, precision="int8")
    finally:
        if tmp:
            shutil.rmtree(tmp)
    info = int8.precision_info()
    print("covidx %s, int8 kernel %s%s; model %s (calibrated on %s images, %s), classes %s" % (
        covidx.__version__, info["kernel"], " (%s)" % info["note"] if info["note"] else "",
        args.model or "shipped", int8.int8_calibration.get("images"), int8.int8_calibration.get("method"),
        fp32.class_names))
    names = fp32.class_names or ["COV19", "Normal"]
    covid = names.index("COV19") if "COV19" in names else 0
    ok = True

    test = os.path.join(args.data, "covid19-radiography", "test")
    if os.path.isdir(test):
        labels, p32, p8 = [], [], []
        for cls in sorted(os.listdir(test)):
            folder = os.path.join(test, cls)
            if not os.path.isdir(folder) or cls not in names:
                continue
            x, kept = load(fp32, files(folder, args.limit), args.batch_size)
            p32.append(predict(fp32, x, args.batch_size))
            p8.append(predict(int8, x, args.batch_size))
            labels += [names.index(cls)] * len(kept)
        ok &= compare("covid19-radiography/test", np.concatenate(p32), np.concatenate(p8), np.array(labels))
    else:
        print("no %s: skipped" % test)

    ieee = os.path.join(args.data, "ieee8023-covid")
    if os.path.isdir(ieee):
        paths = [p for d in sorted(os.listdir(ieee)) if os.path.isdir(os.path.join(ieee, d))
                 for p in files(os.path.join(ieee, d), args.limit)]
        x, kept = load(fp32, paths, args.batch_size)
        ok &= compare("ieee8023-covid", predict(fp32, x, args.batch_size), predict(int8, x, args.batch_size),
                      np.full(len(kept), covid))
    else:
        print("no %s: skipped" % ieee)
    print("all bars met" if ok else "some bars not met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
