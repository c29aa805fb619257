"""What the out-of-distribution score costs: predict with and without return_unfamiliar=True on
the same images, taking turns in one process, at each batch size.

    python benchmarks/bench_unfamiliar.py [--batches 1 8 32] [--rounds 7] [--images 64]

Uses the shipped model (it carries the statistics); prints seconds per image of both, and the
extra time of the score as a median over rounds of the per-round ratio."""
import argparse
import platform
import time

import numpy as np

import covidx
from covidx.data import sample_files
from covidx.preprocessing.image import img_to_array, load_img


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--images", type=int, default=64)
    args = ap.parse_args()
    model = covidx.load_model()
    if model.unfamiliar is None:
        raise SystemExit("the shipped model has no out-of-distribution statistics")
    base = np.stack([img_to_array(load_img(p, target_size=(224, 224))) for p, _ in sample_files()]) / 255.0
    x = np.ascontiguousarray(np.resize(base, (args.images,) + base.shape[1:]), np.float32)
    print("covidx %s, Python %s, %s, %d threads; statistics: %s (%d components)"
          % (covidx.__version__, platform.python_version(), platform.processor() or platform.machine(),
             covidx.get_num_threads(), ", ".join(model.unfamiliar.features), model.unfamiliar.components))
    print("CPU features: %s" % ", ".join(k for k, v in covidx._core.cpu_info().items() if v is True))
    for batch in args.batches:
        n = max(batch, args.images // batch * batch)
        model.predict(x[:batch], batch_size=batch, verbose=0, return_unfamiliar=True)  # warm-up, plans
        plain, scored = [], []
        for _ in range(args.rounds):
            for with_score, times in ((False, plain), (True, scored)):
                t = time.perf_counter()
                model.predict(x[:n], batch_size=batch, verbose=0, return_unfamiliar=with_score)
                times.append((time.perf_counter() - t) / n)
        ratios = np.array(scored) / np.array(plain)
        print("batch %2d: predict %.2f ms/image, with the score %.2f ms/image: extra %+.2f%% (median of %d "
              "rounds; range %+.2f%% to %+.2f%%)" % (batch, 1e3 * np.median(plain), 1e3 * np.median(scored),
                                                      100 * (np.median(ratios) - 1), args.rounds,
                                                      100 * (ratios.min() - 1), 100 * (ratios.max() - 1)))


if __name__ == "__main__":
    main()
