"""covidx against ONNX Runtime on identical weights, in the same run.

The articles' model (Keras ResNet50 v1 + Dense 1024/1024/1024/512/2) gets random weights in a
PyTorch twin (tests/torch_reference.py), which is exported to ONNX; covidx loads the same weights.
Images/s at each batch size and thread count; each figure is the median of several timed runs.

    python benchmarks/bench_engines.py [--batches 1 8 32] [--threads 2 1] [--seconds 3]

Needs: covidx installed, torch==2.13.0, onnx, onnxruntime (benchmark-only dependencies)."""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

HEAD = [(1024, "relu"), (1024, "relu"), (1024, "relu"), (512, "relu"), (2, "softmax")]
NAMES = ["dense", "dense_1", "dense_2", "dense_3", "dense_4"]


def rate(fn, batch, seconds):
    fn()  # warm-up: plans buffers, starts threads
    times, spent = [], 0.0
    while spent < seconds or len(times) < 3:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        times.append(dt)
        spent += dt
    return batch / statistics.median(times)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    import covidx
    from covidx.applications.resnet50 import ResNet50
    from torch_reference import calibrated_model

    rng = np.random.default_rng(0)
    calib = torch.from_numpy(rng.uniform(-120, 150, (4, 224, 224, 3)).astype(np.float32))
    ref = calibrated_model("v1", HEAD, 0, calib)
    model = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512))
    w = ref.keras_weights(NAMES)
    model.set_weights([w[k] for k in model._weight_keys()])
    onnx_path = os.path.join(tempfile.mkdtemp(), "resnet50_articles.onnx")
    with torch.no_grad():
        torch.onnx.export(ref, (calib[:1],), onnx_path, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}}, opset_version=17)

    c = covidx.config()
    print("machine: %s, %d CPUs available, features: %s" % (cpu_model(), c["cpus"], ", ".join(c["cpu_features"])))
    print("covidx %s (OpenBLAS %s, kernel %s) | onnxruntime %s | numpy %s | python %s"
          % (c["covidx"], c["openblas"].split()[1], c["openblas_corename"], ort.__version__, np.__version__,
             platform.python_version()))
    print("%-8s %-6s %12s %12s %8s %14s" % ("threads", "batch", "covidx img/s", "ORT img/s", "ratio", "max|p diff|"))
    for threads in args.threads:
        covidx.set_num_threads(threads)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        for batch in args.batches:
            x = rng.uniform(-120, 150, (batch, 224, 224, 3)).astype(np.float32)
            diff = np.abs(model.predict(x) - sess.run(None, {"x": x})[0]).max()
            r_cx = rate(lambda: model.predict(x), batch, args.seconds)
            r_ort = rate(lambda: sess.run(None, {"x": x}), batch, args.seconds)
            print("%-8d %-6d %12.1f %12.1f %7.2fx %14.2e" % (threads, batch, r_cx, r_ort, r_cx / r_ort, diff))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
