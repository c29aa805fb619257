"""One epoch of head training over cached backbone features: the articles' head (Dense
1024/1024/1024/512/2 after global average pooling) trained with SGD on N feature vectors, as
fit() does once the features of the training images are cached.

    python benchmarks/bench_fit.py [--n 1590] [--batch-size 64] [--epochs 3] [--optimizer sgd]
                                   [--blas-threads N]

Features are random non-negative vectors (pooled ReLU outputs are non-negative); the cost of an
epoch does not depend on their values. Prints seconds per epoch and samples/s.

The head's matrix products run in NumPy's BLAS. On a machine whose cores are busy with other
work, its worker threads slow it down many times over; --blas-threads 1 (OPENBLAS_NUM_THREADS=1)
shows the difference: compare both on the same machine."""
import argparse
import os
import platform
import time

HEAD = [(1024, "relu"), (1024, "relu"), (1024, "relu"), (512, "relu")]


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1590, help="training images (feature vectors)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "rmsprop"])
    ap.add_argument("--blas-threads", type=int, default=None, help="NumPy's BLAS threads (default: its own)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def articles_model(seed):
    import numpy as np

    from covidx.applications.resnet50 import ResNet50
    from covidx.keras.layers import Dense, GlobalAveragePooling2D
    from covidx.keras.models import Model

    np.random.seed(seed)
    base_model = ResNet50(include_top=False, weights=None, seed=seed)
    x = GlobalAveragePooling2D()(base_model.output)
    for units, activation in HEAD:
        x = Dense(units, activation=activation)(x)
    preds = Dense(2, activation="softmax")(x)
    model = Model(inputs=base_model.input, outputs=preds)
    for layer in model.layers[:175]:
        layer.trainable = False
    return model


def main():
    args = parse_args()
    if args.blas_threads is not None:  # read by OpenBLAS when NumPy loads it
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    import numpy as np

    import covidx
    from covidx import training
    from covidx.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    model = articles_model(args.seed)
    optimizer = {"sgd": lambda: covidx.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                 "adam": covidx.optimizers.Adam, "rmsprop": covidx.optimizers.RMSprop}[args.optimizer]()
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(args.seed)
    features = np.abs(rng.normal(size=(args.n, 2048))).astype(np.float32)
    labels = np.eye(2, dtype=np.float32)[rng.integers(0, 2, args.n)]
    timer = EpochTimer()
    training.fit_features(model, features, labels, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                          callbacks=[timer])

    print("machine: %s, %d CPUs; covidx %s, NumPy %s, Python %s" % (platform.processor() or platform.machine(),
                                                                     os.cpu_count(), covidx.__version__,
                                                                     np.__version__, platform.python_version()))
    print("head: 2048 -> %s -> 2, %s, batch %d, %d samples, NumPy BLAS threads: %s"
          % ("/".join(str(u) for u, _ in HEAD), args.optimizer, args.batch_size, args.n,
             os.environ.get("OPENBLAS_NUM_THREADS", "default")))
    for epoch, seconds in enumerate(timer.seconds, 1):
        print("epoch %d: %.2f s (%.0f samples/s)" % (epoch, seconds, args.n / seconds))


if __name__ == "__main__":
    main()
