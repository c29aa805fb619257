"""The shipped model's out-of-distribution statistics, fitted (again) on the file's own float16
weights: covidx.fit_unfamiliar on the training images the network was trained on, the thresholds
from the held-out tenth (train.py's holdout_mask, the same seed). The weights, the calibration
and the rest of the file stay as they are. weights/package_model.py calls refit() after writing
the file; run alone, it refits an existing file (after a change to the statistics' method):

    python weights/refit_unfamiliar.py --data .../train --data .../train-extra \
        [--model weights/covid_resnet50.safetensors]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import covidx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train import holdout_mask, load_folders  # noqa: E402


def refit(path, x, y, val, dtype="float16"):
    """Fits the statistics of the model file at path on images x (uint8, n x 224 x 224 x 3) with
    labels y, thresholds from those where val is True; rewrites the file. Returns the stats."""
    model = covidx.load_model(path)
    scale = np.float32(model.preprocessing["rescale"])
    stats = covidx.fit_unfamiliar(model, (x[~val].astype(np.float32) * scale, y[~val]),
                                  holdout=(x[val].astype(np.float32) * scale, y[val]))
    model.save(path, dtype=dtype)
    return stats


def summary(stats):
    return dict(stats.info, parts=[{"features": p.feature, "components": p.components, "threshold": p.threshold}
                                   for p in stats.parts])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", action="append", required=True, help="the training folders, as given to train.py")
    ap.add_argument("--model", default=os.path.join(HERE, "covid_resnet50.safetensors"))
    ap.add_argument("--seed", type=int, default=20210101, help="train.py's seed (the same held-out tenth)")
    args = ap.parse_args()
    t0 = time.time()
    x, y, _ = load_folders(args.data)
    stats = refit(args.model, x, y, holdout_mask(y, args.seed))
    print("out-of-distribution statistics: %r" % stats, flush=True)
    log_path = os.path.splitext(args.model)[0] + ".package-log.json"
    if os.path.exists(log_path):
        with open(log_path) as f:
            log = json.load(f)
        log["unfamiliar"] = dict(summary(stats), refit_minutes=round((time.time() - t0) / 60, 1))
        with open(log_path, "w") as f:
            json.dump(log, f, indent=1)


if __name__ == "__main__":
    main()
