"""covidx against ONNX Runtime, PyTorch (eager and torch.compile) and OpenVINO on identical weights,
in the same run: images/s per batch size and thread count, peak RSS, and import time.

The articles' model (Keras ResNet50 v1 + Dense 1024/1024/1024/512/2) gets well-conditioned random
weights in a PyTorch twin (weights/torch_resnet50.py); the twin is exported to ONNX (what ONNX
Runtime and OpenVINO run) and its Keras-named weights are loaded into covidx. Every engine runs in
its own process, so peak RSS and import time are its own. Each figure is the median of several
timed runs after a warm-up. The engines take turns, --rounds times over (a fresh process each
time), and each cell reports the median over the rounds: on a shared machine the load drifts,
and taking turns spreads it over every engine alike.

    python benchmarks/bench_engines.py [--batches 1 8 32] [--threads 2 1] [--seconds 3] [--rounds 3]
        [--engines covidx covidx-bf16 covidx-int8 onnxruntime onnxruntime-int8 torch torch-compile openvino
                   openvino-bf16 openvino-int8]
    python benchmarks/bench_engines.py --info     # the machine, kernels and versions only
    python benchmarks/bench_engines.py --isa avx2 ...   # every engine that can be held to AVX2

--isa avx2 measures an AVX2-class CPU on an AVX-512 one: covidx with COVIDX_GEMM=avx2 (its AVX2
kernels: fp32 avx2, int8 avx2int8, and no AVX-512 instruction elsewhere) and its OpenBLAS with
OPENBLAS_CORETYPE=Haswell; OpenVINO and PyTorch's oneDNN with ONEDNN_MAX_CPU_ISA=AVX2; PyTorch's
own kernels with ATEN_CPU_CAPABILITY=avx2. OpenVINO's rows name its convolutions' most common
primitive (brgconv_avx2_... when held); OpenVINO 2026.4 does not hold every int8 primitive to
AVX2, and where any convolution ran on AVX-512 its row says so. ONNX Runtime has no such switch
(MLAS picks its kernels from CPUID): its rows say "not held to AVX2" and are not an AVX2 figure.
The cache, memory and clock are still this CPU's, so these figures stand in for, and do not
replace, an AVX2 machine's.

covidx-bf16 is covidx.load_model(..., precision='bf16') (AMX, else AVX512_BF16; where neither
runs it says "fp32 fallback" in its version column); openvino-bf16 is OpenVINO with
INFERENCE_PRECISION_HINT='bf16'. The int8 rows: covidx-int8 is precision='int8' with the model
calibrated (Model.calibrate_int8) on 8 random images drawn like the timed ones; onnxruntime-int8
and openvino-int8 run one static QDQ ONNX model made from the same ONNX file by
onnxruntime.quantization.quantize_static on those 8 images (per-channel int8 weights, uint8
activations, MinMax calibration). The header names the CPU, its features, the GEMM kernel covidx
uses for each precision and every version: what is needed to judge figures from another machine.

Needs: covidx installed; torch==2.13.0, onnx, onnxruntime, openvino (benchmark-only)."""
import argparse
import collections
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "weights"))

HEAD = [(1024, "relu"), (1024, "relu"), (1024, "relu"), (512, "relu"), (2, "softmax")]
NAMES = ["dense", "dense_1", "dense_2", "dense_3", "dense_4"]
ENGINES = ["covidx", "covidx-bf16", "covidx-int8", "onnxruntime", "onnxruntime-int8", "torch", "torch-compile",
           "openvino", "openvino-bf16", "openvino-int8"]


def rate(fn, batch, seconds):
    fn()  # warm-up: plans buffers, starts threads, compiles
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


def prepare(workdir):
    """Writes the shared weights: twin.pt (torch state_dict), model.onnx, covidx.safetensors."""
    import torch

    from covidx.applications.resnet50 import ResNet50
    from torch_resnet50 import calibrated_model

    rng = np.random.default_rng(0)
    calib = torch.from_numpy(rng.uniform(-120, 150, (4, 224, 224, 3)).astype(np.float32))
    ref = calibrated_model("v1", HEAD, 0, calib)
    torch.save(ref.state_dict(), os.path.join(workdir, "twin.pt"))
    with torch.no_grad():
        torch.onnx.export(ref, (calib[:1],), os.path.join(workdir, "model.onnx"), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}}, opset_version=17)
    model = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512))
    w = ref.keras_weights(NAMES)
    model.set_weights([w[k] for k in model._weight_keys()])
    model.save(os.path.join(workdir, "covidx.safetensors"))
    # the int8 rows: calibrated on 8 images drawn like the timed ones (never the timed ones themselves)
    int8_calib = rng.uniform(-120, 150, (8, 224, 224, 3)).astype(np.float32)
    model.calibrate_int8(int8_calib, batch_size=4)
    model.save(os.path.join(workdir, "covidx-int8.safetensors"))
    try:
        quantize_qdq(os.path.join(workdir, "model.onnx"), os.path.join(workdir, "model-int8.onnx"), int8_calib)
    except Exception as e:  # no onnxruntime: the int8 peers are reported unavailable, not fatal
        print("no QDQ model (%s: %s): the onnxruntime-int8 and openvino-int8 rows will say so"
              % (type(e).__name__, str(e)[:200]))


def quantize_qdq(src, dst, images):
    """A static QDQ int8 model of src: per-channel int8 weights, uint8 activations, MinMax ranges
    over images."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def make_runner(engine, workdir, threads):
    """(run(x) -> probabilities, version string, import seconds) for one engine."""
    t0 = time.perf_counter()
    if engine in ("covidx", "covidx-bf16", "covidx-int8"):
        import warnings

        import covidx

        imported = time.perf_counter() - t0
        covidx.set_num_threads(threads)
        precision = engine.split("-")[1] if "-" in engine else "fp32"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the fallback is said in the version column
            name = "covidx-int8.safetensors" if precision == "int8" else "covidx.safetensors"
            model = covidx.load_model(os.path.join(workdir, name), precision=precision)
        info = model.precision_info()
        kernel = info["kernel"] + (" fp32 fallback" if precision != "fp32" and info["running"] == "fp32" else "")
        return (lambda x: model.predict(x, verbose=0)), "%s (%s)" % (covidx.__version__, kernel), imported
    if engine in ("onnxruntime", "onnxruntime-int8"):
        import onnxruntime as ort

        imported = time.perf_counter() - t0
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        name = "model-int8.onnx" if engine == "onnxruntime-int8" else "model.onnx"
        sess = ort.InferenceSession(os.path.join(workdir, name), so, providers=["CPUExecutionProvider"])
        held = " (not held to AVX2)" if os.environ.get("ONEDNN_MAX_CPU_ISA") else ""
        return (lambda x: sess.run(None, {"x": x})[0]), ort.__version__ + held, imported
    if engine in ("torch", "torch-compile"):
        import torch

        from torch_resnet50 import TorchResNet50

        imported = time.perf_counter() - t0
        torch.set_num_threads(threads)
        net = TorchResNet50("v1", HEAD)
        net.load_state_dict(torch.load(os.path.join(workdir, "twin.pt")))
        net.eval()
        fn = torch.compile(net) if engine == "torch-compile" else net

        def run(x):
            with torch.inference_mode():
                return fn(torch.from_numpy(x)).numpy()

        return run, torch.__version__, imported
    if engine in ("openvino", "openvino-bf16", "openvino-int8"):
        import openvino as ov

        imported = time.perf_counter() - t0
        core = ov.Core()
        hint = "bf16" if engine == "openvino-bf16" else "f32"  # int8: the QDQ model's own int8 layers
        name = "model-int8.onnx" if engine == "openvino-int8" else "model.onnx"
        compiled = core.compile_model(os.path.join(workdir, name), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint})
        got = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        # the convolutions' most common primitive (e.g. brgconv_avx512_core_vnni_I8): the ISA it runs
        infos = (op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops())
        types = (rt["primitiveType"].astype(str) for rt in infos if "primitiveType" in rt)
        prims = collections.Counter(t for t in types if "conv" in t)
        prim = prims.most_common(1)[0][0] if prims else "?"
        if os.environ.get("ONEDNN_MAX_CPU_ISA") and any("avx512" in p for p in prims):
            prim += "; NOT held to AVX2: %d convolutions on AVX-512" % sum(n for p, n in prims.items() if "avx512" in p)
        return (lambda x: compiled(x)[0]), "%s (%s, %s)" % (ov.__version__.split("-")[0], got, prim), imported
    raise ValueError(engine)


def worker(engine, workdir, threads, batches, seconds):
    try:
        run, version, imported = make_runner(engine, workdir, threads)
    except Exception as e:  # an engine that does not install or compile here is reported, not fatal
        return {"engine": engine, "error": "%s: %s" % (type(e).__name__, str(e)[:200])}
    rng = np.random.default_rng(1)
    out = {"engine": engine, "version": version, "import_s": imported, "rates": {}, "outputs": {}}
    for batch in batches:
        x = rng.uniform(-120, 150, (batch, 224, 224, 3)).astype(np.float32)
        try:
            out["outputs"][batch] = np.asarray(run(x)).tolist()
            out["rates"][batch] = rate(lambda: run(x), batch, seconds)
        except Exception as e:
            out["rates"][batch] = None
            out["error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb():
    """This process's resident-set high-water mark (VmHWM; ru_maxrss would carry the parent's over exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def merge_rounds(runs):
    """One engine's rounds as one result: the median rate per batch, the median import time, the
    largest peak RSS; outputs from the first round (they do not change between rounds)."""
    ok = [r for r in runs if "rates" in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    rates = {}
    for b in ok[0]["rates"]:
        values = [r["rates"].get(b) for r in ok]
        rates[b] = None if any(v is None for v in values) else statistics.median(values)
    out["rates"] = rates
    out["import_s"] = statistics.median(r["import_s"] for r in ok)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    out["rounds"] = len(ok)
    return out


def engine_versions():
    """Versions of the other engines, or 'not installed'."""
    out = []
    for name in ("onnxruntime", "torch", "openvino"):
        try:
            mod = __import__(name)
            out.append("%s %s" % (name, mod.__version__))
        except Exception:  # not installed, or fails to import: said, not fatal
            out.append("%s not installed" % name)
    return out


def print_header():
    import covidx

    c = covidx.config()
    print("machine: %s, %d CPUs available, features: %s" % (cpu_model(), c["cpus"], ", ".join(c["cpu_features"])))
    print("covidx %s (OpenBLAS %s, kernel %s) | numpy %s | python %s"
          % (c["covidx"], c["openblas"].split()[1], c["openblas_corename"], np.__version__, platform.python_version()))
    print("covidx GEMM kernels: fp32 %s, bf16 %s%s, int8 %s%s%s"
          % (c["kernels"]["fp32"], c["kernels"]["bf16"], " (%s)" % c["bf16_note"] if c["bf16_note"] else "",
             c["kernels"].get("int8"), " (%s)" % c["int8_note"] if c.get("int8_note") else "",
             " [COVIDX_GEMM=%s]" % c["covidx_gemm"] if c["covidx_gemm"] else ""))
    print("other engines: %s" % ", ".join(engine_versions()))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    ap.add_argument("--info", action="store_true", help="print the machine, kernels and versions, and stop")
    ap.add_argument("--isa", choices=("native", "avx2"), default="native",
                    help="avx2: hold every engine that can be held to AVX2 instructions (see above)")
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "WORKDIR", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        engine, workdir, threads = args.worker
        print(json.dumps(worker(engine, workdir, int(threads), args.batches, args.seconds)))
        return

    if args.isa == "avx2":  # read by covidx, oneDNN (OpenVINO, PyTorch) and ATen in every worker
        os.environ.update({"COVIDX_GEMM": "avx2", "OPENBLAS_CORETYPE": "Haswell", "ONEDNN_MAX_CPU_ISA": "AVX2",
                           "ATEN_CPU_CAPABILITY": "avx2"})
    print_header()
    if args.isa == "avx2":
        print("held to AVX2: COVIDX_GEMM=avx2, OPENBLAS_CORETYPE=Haswell, ONEDNN_MAX_CPU_ISA=AVX2, "
              "ATEN_CPU_CAPABILITY=avx2 (ONNX Runtime: not held)")
    if args.info:
        return
    workdir = tempfile.mkdtemp(prefix="covidx-bench-")
    prepare(workdir)
    for threads in args.threads:
        rounds = {engine: [] for engine in args.engines}
        for _ in range(max(1, args.rounds)):
            for engine in args.engines:
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, workdir, str(threads),
                       "--batches", *map(str, args.batches), "--seconds", str(args.seconds)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                try:
                    rounds[engine].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                except (ValueError, IndexError):
                    rounds[engine].append({"engine": engine, "error": (proc.stderr or "no output").strip()[-200:]})
        results = [merge_rounds(rounds[engine]) for engine in args.engines]
        base = next((r for r in results if r["engine"] == "onnxruntime" and "rates" in r), None)
        ref_out = next((r for r in results if r["engine"] == "covidx" and "outputs" in r), None)
        print("\n%d thread(s)" % threads)
        print("%-14s %-72s %s %9s %8s  %s" % ("engine", "version", " ".join("b%-3d img/s ratio " % b
                                                                          for b in args.batches),
                                         "peak MB", "import", "max|p-covidx|"))
        for r in results:
            if "rates" not in r:
                print("%-14s not available: %s" % (r["engine"], r.get("error")))
                continue
            cells = []
            for b in args.batches:
                v = r["rates"].get(str(b), r["rates"].get(b))
                bv = base and (base["rates"].get(str(b)) or base["rates"].get(b))
                cells.append("%9s %6s" % ("%.1f" % v if v else "n/a", "%.2fx" % (v / bv) if v and bv else "-"))
            diff = "-"
            if ref_out and r is not ref_out:
                diffs = [np.abs(np.array(r["outputs"][k]) - np.array(ref_out["outputs"][k])).max()
                         for k in r["outputs"] if k in ref_out["outputs"]]
                diff = "%.1e" % max(diffs) if diffs else "-"
            print("%-14s %-72s %s %9.0f %7.2fs  %s" % (r["engine"], str(r["version"])[:72], " ".join(cells),
                                                       r["peak_rss_mb"], r["import_s"], diff))
            if r.get("error"):
                print("%14s  (%s)" % ("", r["error"]))
        sys.stdout.flush()
    print("\nratios are against onnxruntime in the same run; each cell is the median of %d round(s)"
          % max(1, args.rounds))


if __name__ == "__main__":
    main()
