"""Where the int8 mode's error comes from, on held-out training images (never a measuring set):

    python benchmarks/int8_error_study.py [--model FILE] [--data ../shared/data/cxr] [--seed 1]
        [--per-class 48] [--calibration-images 64] SPEC [SPEC ...]

A NumPy model of the int8 arithmetic (tests/test_int8.py's: batchnorm folded, weights per output
channel at max|w| / 127, each convolution's input rint(clip(x / step, 0, levels)) * step; the stem
and the two convolutions that read its output in fp32, as the shipped default) with the activation
grid as a parameter, so that grids no kernel runs yet can be judged. Each SPEC is
METHOD:LEVELS[:CALIBRATED_FOR]: the clipping point T of every convolution's input from the
histogram of --calibration-images training images per class (covidx.int8's histograms and
clipping_point: METHOD 'mse' or 'wN', the least squared error with each clipped value's error
counted N times; CALIBRATED_FOR: the number of levels T is chosen for, by default LEVELS),
then the input on LEVELS levels between 0 and T (127: the 7 bits every kernel runs today; 255: 8
bits). It prints, against covidx fp32 on --per-class held-out images of each class (train.py's
held-out tenth of train and train-extra), the rms and largest error of the logit difference and
the largest probability difference. Slow (NumPy, float32 GEMMs): about 0.5 s an image a spec on
one core."""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "weights"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "cxr")
HEAD = ["dense", "dense_1", "dense_2", "dense_3", "dense_4"]


class NumpyInt8:
    """ResNet50 v1 + head from a covidx file's tensors, each convolution's input on a grid."""

    def __init__(self, tensors, arch):
        from test_int8 import fold

        self.w = {k: v.astype(np.float32) for k, v in tensors.items()}
        self.norm_eps = (arch.get("input_norm") or {}).get("epsilon")
        self.bn_eps = arch["bn_epsilon"]
        self.folded = {}
        self._fold = fold

    def conv(self, x, name, stride, pad, relu, residual, clip, levels):
        from test_int8 import patches

        if name not in self.folded:
            self.folded[name] = self._fold(self.w, name, self.bn_eps)
        k, b = self.folded[name]
        wmat = k.reshape(-1, k.shape[3])
        t = clip.get(name + "_conv") if clip else None
        if t:  # this convolution in int8
            step = t / levels
            x = np.rint(np.clip(x / step, 0, levels)) * step
            ws = np.abs(wmat).max(axis=0) / 127
            ws[ws == 0] = 1
            wmat = np.rint(wmat / ws) * ws
        a, (n, ho, wo) = patches(x, k.shape[0], stride, pad)
        v = a @ wmat + b
        if residual is not None:
            v = v + residual.reshape(v.shape)
        if relu:
            v = np.maximum(v, 0)
        return v.reshape(n, ho, wo, -1)

    def logit_difference(self, x, clip, levels):
        from test_int8 import STAGES, maxpool

        x = x.astype(np.float64)
        if self.norm_eps is not None:
            mu = x.mean(axis=(1, 2, 3), keepdims=True)
            x = (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=(1, 2, 3), keepdims=True) + self.norm_eps)
        y = maxpool(self.conv(x.astype(np.float32), "conv1", 2, 3, True, None, None, 0))
        for stage, blocks, stride in STAGES:
            for blk in range(1, blocks + 1):
                p, s = "conv%d_block%d" % (stage, blk), stride if blk == 1 else 1
                t = self.conv(y, p + "_1", s, 0, True, None, clip, levels)
                t = self.conv(t, p + "_2", 1, 1, True, None, clip, levels)
                short = self.conv(y, p + "_0", s, 0, False, None, clip, levels) if blk == 1 else y
                y = self.conv(t, p + "_3", 1, 0, True, short, clip, levels)
        h = y.mean(axis=(1, 2))
        for i, name in enumerate(HEAD):
            h = h @ self.w[name + "/kernel"] + self.w[name + "/bias"]
            h = np.maximum(h, 0) if i < len(HEAD) - 1 else h
        return h[:, 0] - h[:, 1]  # softmax of two: p0 = sigmoid(this); the file's temperature is folded in


def main():
    import covidx
    from covidx import int8, safetensors_io
    import train

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="+", help="METHOD:LEVELS[:CALIBRATED_FOR], METHOD 'mse' or 'wN'")
    ap.add_argument("--model", default=os.path.join(HERE, "..", "weights", "covid_resnet50.safetensors"))
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--seed", type=int, default=1, help="which held-out and calibration images are drawn")
    ap.add_argument("--per-class", type=int, default=48)
    ap.add_argument("--calibration-images", type=int, default=64, help="per class, from the training part")
    args = ap.parse_args()
    root = os.path.join(args.data, "covid19-radiography")
    xall, y, _ = train.load_folders([os.path.join(root, "train"), os.path.join(root, "train-extra")])
    held = train.holdout_mask(y, 20210101)  # train.py's held-out tenth (its seed)
    rng = np.random.default_rng(args.seed)
    pick = lambda mask, n: np.concatenate([rng.choice(np.flatnonzero(mask & (y == c)), n, replace=False)
                                           for c in range(2)])
    ev, ca = pick(held, args.per_class), pick(~held, args.calibration_images)
    model = covidx.load_model(args.model)
    prep = lambda idx: np.asarray(model.preprocess(xall[idx].astype(np.float32)), np.float32)
    x, xc = prep(ev), prep(ca)
    p32 = model.predict(x, verbose=0)[:, 0]
    zref = np.log(p32 / (1 - p32))
    hist, _ = int8.histograms(model, xc)
    names = int8.conv_names(model.architecture)
    tensors, meta = safetensors_io.load(args.model)
    net = NumpyInt8(tensors, model.architecture)
    print("%s: %d held-out images (seed %d), clipping points from %d training images"
          % (args.model, len(x), args.seed, len(xc)))
    for spec in args.specs:
        method, levels, *cal = spec.split(":")
        levels = int(levels)
        cal_levels = int(cal[0]) if cal else levels
        weight = 1.0 if method == "mse" else float(method[1:])
        clip = {n: int8.clipping_point(hist[i], weight, cal_levels) for i, n in enumerate(names)
                if i > 0 and n not in int8.STEM_READERS}
        t0 = time.time()
        z = np.concatenate([net.logit_difference(x[i:i + 8], clip, levels) for i in range(0, len(x), 8)])
        dz, dp = z - zref, 1 / (1 + np.exp(-z)) - p32
        print("%-16s rms logit error %.4f  99th percentile %.4f  largest %.4f  largest |p - p_fp32| %.4f  "
              "class agrees %d/%d  (%.0f s)" % (spec, np.sqrt((dz ** 2).mean()), np.quantile(np.abs(dz), 0.99),
                                                np.abs(dz).max(), np.abs(dp).max(), ((z > 0) == (zref > 0)).sum(),
                                                len(x), time.time() - t0), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
