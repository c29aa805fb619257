"""End-to-end evaluate (files -> decode -> resize -> engine) against predict on the same images
preloaded as an array, in the same run, on the real test split.

    python benchmarks/bench_evaluate.py [DIR] [--batch-size 32] [--repeats 2] [--keras-steps N]

DIR defaults to ../shared/data/cxr/covid19-radiography/test. Prints images/s of both and the ratio.
With --keras-steps N, also times Keras 3 (torch backend, fp32) evaluating the articles' model with
the same generator settings over the first N batches, against covidx on the same N batches."""
import argparse
import os
import platform
import time

import numpy as np

import covidx
from covidx.applications.resnet50 import ResNet50
from covidx.preprocessing.image import ImageDataGenerator

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(HERE, "..", "..", "shared", "data", "cxr", "covid19-radiography", "test")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default=DEFAULT)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keras-steps", type=int, default=0)
    args = ap.parse_args()
    try:
        model = covidx.load_model()
    except FileNotFoundError:
        model = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512), class_names=["COV19", "Normal"],
                         seed=0)
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    gen = ImageDataGenerator(rescale=1.0 / 255)

    def flow(shuffle):
        return gen.flow_from_directory(args.dir, target_size=(224, 224), batch_size=args.batch_size,
                                       class_mode="categorical", shuffle=shuffle)

    it = flow(False)
    t = time.perf_counter()
    x = np.concatenate([it[i][0] for i in range(len(it))])
    load_s = time.perf_counter() - t
    n = len(x)
    model.predict(x[:args.batch_size], verbose=0)  # warm-up
    rows = []
    for r in range(args.repeats):
        t = time.perf_counter()
        model.predict(x, batch_size=args.batch_size, verbose=0)
        pred = n / (time.perf_counter() - t)
        it = flow(True)
        t = time.perf_counter()
        model.evaluate(it, verbose=0)
        ev = n / (time.perf_counter() - t)
        rows.append((pred, ev))
        print("run %d: predict(preloaded array) %.2f img/s, evaluate(flow_from_directory) %.2f img/s, ratio %.2f"
              % (r + 1, pred, ev, ev / pred))
    pred, ev = (float(np.median([r[i] for r in rows])) for i in (0, 1))
    print("images %d, batch %d, threads %d, load-only (sequential decode, one pass) %.1f img/s"
          % (n, args.batch_size, covidx.get_num_threads(), n / load_s))
    print("median: predict %.2f img/s, evaluate %.2f img/s, evaluate/predict %.2f  [%s, covidx %s, numpy %s]"
          % (pred, ev, ev / pred, platform.processor() or platform.machine(), covidx.__version__, np.__version__))


    if args.keras_steps:
        compare_keras(model, args)


def compare_keras(model, args):
    """Keras 3 on PyTorch against covidx, evaluate() over the same batches of the same folder."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    from keras.src.legacy.preprocessing.image import ImageDataGenerator as KerasGenerator

    base = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(224, 224, 3))
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    for units in (1024, 1024, 1024, 512):
        x = keras.layers.Dense(units, activation="relu")(x)
    kmodel = keras.Model(base.input, keras.layers.Dense(2, activation="softmax")(x))
    kmodel.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    settings = dict(target_size=(224, 224), batch_size=args.batch_size, class_mode="categorical", shuffle=False)
    rates = {}
    for name, run in [("keras", lambda: kmodel.evaluate(KerasGenerator(rescale=1.0 / 255).flow_from_directory(
                          args.dir, **settings), steps=args.keras_steps, verbose=0)),
                      ("covidx", lambda: model.evaluate(ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
                          args.dir, **settings), steps=args.keras_steps, verbose=0))]:
        run()  # warm-up
        t = time.perf_counter()
        run()
        rates[name] = args.keras_steps * args.batch_size / (time.perf_counter() - t)
    import torch

    print("evaluate over %d batches of %d: Keras %s (torch %s backend, fp32, %d threads) %.2f img/s, covidx %.2f "
          "img/s, covidx/Keras %.2fx" % (args.keras_steps, args.batch_size, keras.__version__, torch.__version__,
                                         torch.get_num_threads(), rates["keras"], rates["covidx"],
                                         rates["covidx"] / rates["keras"]))


if __name__ == "__main__":
    main()
