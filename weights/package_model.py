"""Stage 2 of the shipped model: from the trained PyTorch weights (weights/train.py) to the file
covidx ships, done by covidx itself.

1. Export: the Keras-named weights into covidx's ResNet50 (input standardisation, the articles'
   head, classes COV19/Normal, preprocessing rescale 1/255); covidx must reproduce PyTorch's
   held-out predictions.
2. Calibration: one temperature T fitted on the held-out tenth of the training images (the same
   images train.py held out; never a measuring set) by minimising their negative log-likelihood,
   then folded into the last Dense layer (kernel / T, bias / T: softmax(z / T) exactly), so that
   every runtime that reads the file (covidx, Keras, ONNX) gives the calibrated probabilities.
3. Out-of-distribution statistics (covidx.fit_unfamiliar, weights/refit_unfamiliar.py) of the
   training images the network was trained on, fitted on the float16 file's own weights, the
   thresholds from the held-out tenth.

    python weights/package_model.py --work /tmp/covidx-train --data .../train --data .../train-extra \
        --out weights/covid_resnet50.safetensors
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import covidx
from covidx.applications.resnet50 import ResNet50
from covidx.calibration import fit_temperature, fold_temperature, nll

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from refit_unfamiliar import refit, summary  # noqa: E402
from train import CLASSES, HEAD, HEAD_NAMES, INPUT_NORM_EPS, holdout_mask, load_folders  # noqa: E402


def export(state_path):
    """The covidx model of train.py's final weights, and the torch module (for the check)."""
    import torch

    import train

    net = train.build_model(0)
    net.load_state_dict(torch.load(state_path, weights_only=True)["state"])
    net.eval()
    model = ResNet50(weights=None, classes=2, head=[u for u, _ in HEAD[:-1]], class_names=list(CLASSES),
                     preprocessing={"rescale": 1 / 255}, name="covid_resnet50", input_norm=INPUT_NORM_EPS)
    named = net.keras_weights(HEAD_NAMES)
    model.set_weights([named[k] for k in model._weight_keys()])
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    return model, net


def logits(model, x, batch_size=32):
    """The last Dense layer's outputs before softmax, in float64: the engine's pooled features,
    then the head in NumPy."""
    h = model.features(x, batch_size=batch_size).astype(np.float64)
    w = model.named_weights
    for name in HEAD_NAMES:
        h = h @ w[name + "/kernel"].astype(np.float64) + w[name + "/bias"].astype(np.float64)
        if name != HEAD_NAMES[-1]:
            h = np.maximum(h, 0)
    return h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, help="train.py's --work folder (final.pt)")
    ap.add_argument("--data", action="append", required=True, help="the training folders, as given to train.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20210101, help="train.py's seed (the same held-out tenth)")
    ap.add_argument("--limit", type=int, default=0, help="use every k-th image only (a quick check of the script)")
    args = ap.parse_args()
    t0 = time.time()
    import torch

    x, y, _ = load_folders(args.data)
    val = holdout_mask(y, args.seed)
    if args.limit:
        x, y, val = x[::args.limit], y[::args.limit], val[::args.limit]
    xva = x[val].astype(np.float32) * np.float32(1 / 255)
    model, net = export(os.path.join(args.work, "final.pt"))
    with torch.no_grad():
        p_torch = np.concatenate([torch.softmax(net.logits_and_output(torch.from_numpy(xva[i:i + 32]))[0], 1).numpy()
                                  for i in range(0, len(xva), 32)])
    p_cx = model.predict(xva, verbose=0)
    check = {"max_abs_prob_diff": float(np.abs(p_cx - p_torch).max()),
             "same_class": float(np.mean(p_cx.argmax(1) == p_torch.argmax(1)))}
    print("covidx vs torch on the held-out images: %s" % check, flush=True)

    z = logits(model, xva)
    t = fit_temperature(z, y[val])
    before, after = nll(z, y[val], 1.0), nll(z, y[val], t)
    print("temperature %.4f: held-out NLL %.4f -> %.4f" % (t, before, after), flush=True)
    folded = fold_temperature(model.named_weights, HEAD_NAMES[-1], t)
    model.set_weights([folded[k] for k in model._weight_keys()])
    model.calibration = {"method": "temperature", "temperature": t, "folded_into": HEAD_NAMES[-1],
                         "fitted_on": "the held-out tenth of the training images (%d)" % int(val.sum())}

    model.save(args.out, dtype="float16")
    stats = refit(args.out, x, y, val)
    print("out-of-distribution statistics: %r" % stats, flush=True)
    back = covidx.load_model(args.out)
    p16 = back.predict(xva, verbose=0)
    p32 = model.predict(xva, verbose=0)
    log = {"covidx_vs_torch": check, "temperature": t, "held_out_nll": [before, after],
           "held_out_accuracy": float(np.mean(p16.argmax(1) == y[val])),
           "float16_vs_float32": {"max_abs_prob_diff": float(np.abs(p16 - p32).max()),
                                  "same_class": float(np.mean(p16.argmax(1) == p32.argmax(1)))},
           "unfamiliar": summary(stats),
           "minutes": round((time.time() - t0) / 60, 1)}
    print(json.dumps(log, indent=1))
    with open(os.path.splitext(args.out)[0] + ".package-log.json", "w") as f:
        json.dump(log, f, indent=1)


if __name__ == "__main__":
    main()
