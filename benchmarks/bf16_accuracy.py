"""The bf16 mode against fp32 on real chest X-rays, with the shipped model (or --model):

    python benchmarks/bf16_accuracy.py [--data ../shared/data/cxr] [--limit N] [--emulated]

On covid19-radiography/test (one folder per class) it prints the share of images whose predicted
class agrees between the two precisions, the largest |probability difference| and both
accuracies; on ieee8023-covid (COVID-19 only) the share detected as COVID-19 in each. Each line
ends PASS or FAIL against the bars of issue 14: agreement >= 99.5 %, max |diff| <= 0.02,
accuracy within 0.3 points, detection within 1 point.

bf16 runs on AMX, else AVX512_BF16. Where the CPU has neither, --emulated runs the emulated AMX
kernel (COVIDX_GEMM=amx-emu: the same arithmetic, bit for bit, in plain C, and very slow: use
--limit); without it the script says so and stops. --limit N takes the first N images (sorted)
of each class folder, for a smoke run."""
import argparse
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "cxr")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".dcm")


def files(folder, limit):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(EXTENSIONS))
    return [os.path.join(folder, n) for n in (names[:limit] if limit else names)]


def load(model, paths, batch):
    """Preprocessed float32 batches of the images that can be read, and the indices read."""
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder holding covid19-radiography/ and ieee8023-covid/")
    ap.add_argument("--model", help="a model file (default: the shipped model)")
    ap.add_argument("--limit", type=int, default=0, help="at most N images per class folder (0: all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--emulated", action="store_true",
                    help="without AMX or AVX512_BF16, run the emulated AMX kernel (slow)")
    args = ap.parse_args()

    import covidx

    if args.threads:
        covidx.set_num_threads(args.threads)
    kernels = covidx.config()["kernels"]
    if kernels["bf16"] not in ("amx", "avx512bf16"):
        if not args.emulated:
            print("this CPU runs no bf16 kernel (bf16 would fall back to fp32: %s); rerun with --emulated to "
                  "use the emulated AMX kernel (slow; use --limit)" % kernels["bf16"])
            return 0
        os.environ["COVIDX_GEMM"] = "amx-emu"
    fp32 = covidx.load_model(args.model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a silent fp32 fallback would make this meaningless
        bf16 = covidx.load_model(args.model, precision="bf16")
    info = bf16.precision_info()
    print("covidx %s, bf16 kernel %s%s; model %s, classes %s" % (
        covidx.__version__, info["kernel"], " (%s)" % info["note"] if info["note"] else "",
        args.model or "shipped", fp32.class_names))
    names = fp32.class_names or ["COV19", "Normal"]
    covid = names.index("COV19") if "COV19" in names else 0

    test = os.path.join(args.data, "covid19-radiography", "test")
    if os.path.isdir(test):
        labels, p32, p16 = [], [], []
        t = time.perf_counter()
        for cls in sorted(os.listdir(test)):
            folder = os.path.join(test, cls)
            if not os.path.isdir(folder) or cls not in names:
                continue
            x, kept = load(fp32, files(folder, args.limit), args.batch_size)
            p32.append(predict(fp32, x, args.batch_size))
            p16.append(predict(bf16, x, args.batch_size))
            labels += [names.index(cls)] * len(kept)
        p32, p16, labels = np.concatenate(p32), np.concatenate(p16), np.array(labels)
        agree = np.mean(p32.argmax(1) == p16.argmax(1)) * 100
        diff = np.abs(p32 - p16).max()
        acc32, acc16 = np.mean(p32.argmax(1) == labels) * 100, np.mean(p16.argmax(1) == labels) * 100
        print("covid19-radiography/test: %d images (%.0f s)" % (len(labels), time.perf_counter() - t))
        print("  predicted class agrees:  %.2f %%   %s (>= 99.5 %%)" % (agree, verdict(agree >= 99.5)))
        print("  max |prob difference|:   %.4f     %s (<= 0.02)" % (diff, verdict(diff <= 0.02)))
        print("  accuracy fp32 %.2f %%, bf16 %.2f %%: %+.2f points   %s (within 0.3)"
              % (acc32, acc16, acc16 - acc32, verdict(abs(acc16 - acc32) <= 0.3)))
    else:
        print("no %s: skipped" % test)

    ieee = os.path.join(args.data, "ieee8023-covid")
    if os.path.isdir(ieee):
        paths = [p for d in sorted(os.listdir(ieee)) if os.path.isdir(os.path.join(ieee, d))
                 for p in files(os.path.join(ieee, d), args.limit)]
        x, kept = load(fp32, paths, args.batch_size)
        d32 = np.mean(predict(fp32, x, args.batch_size).argmax(1) == covid) * 100
        d16 = np.mean(predict(bf16, x, args.batch_size).argmax(1) == covid) * 100
        print("ieee8023-covid: %d images, detected as COVID-19: fp32 %.2f %%, bf16 %.2f %%: %+.2f points   %s "
              "(within 1)" % (len(kept), d32, d16, d16 - d32, verdict(abs(d16 - d32) <= 1.0)))
    else:
        print("no %s: skipped" % ieee)
    return 0


if __name__ == "__main__":
    sys.exit(main())
