"""Threads and the build/runtime configuration report."""
from __future__ import annotations

import os
import sys
import warnings

import numpy

from . import _core
from ._version import __version__

GENERIC_KERNELS = {"prescott", "nehalem", "sandybridge", "core2", "katmai", "atom", "generic"}


def _default_threads():
    """COVIDX_NUM_THREADS, else the CPUs this process may use. A bad COVIDX_NUM_THREADS must not
    stop `import covidx`: it is said in a warning and the CPU count used instead."""
    env = os.environ.get("COVIDX_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if 1 <= n <= 64:
            return n
        warnings.warn("COVIDX_NUM_THREADS: expected an integer from 1 to 64, got %r; using the CPU count" % env,
                      RuntimeWarning, stacklevel=2)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def set_num_threads(n):
    """Threads the engine uses for one forward pass (the calling thread included). OpenBLAS runs
    single-threaded inside each of them, so the total never exceeds n. Concurrent predict calls
    from several Python threads take turns, so they do not multiply it either."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("num_threads: expected an int, got %r" % (n,))
    _core.set_num_threads(n)


def get_num_threads():
    return _core.get_num_threads()


def kernel_warning(corename, cpu):
    """A sentence when OpenBLAS runs a kernel slower than this CPU allows, else None."""
    core = corename.lower()
    if cpu["avx512f"] and (core in GENERIC_KERNELS or core in {"haswell", "zen"}):
        return ("OpenBLAS uses the %s kernel on a CPU with AVX-512: SGEMM runs 2-5x slower than with "
                "SkylakeX kernels (set OPENBLAS_CORETYPE=SkylakeX, or build against scipy-openblas32)" % corename)
    if cpu["avx2"] and core in GENERIC_KERNELS:
        return ("OpenBLAS uses the generic %s kernel on a CPU with AVX2: SGEMM runs several times slower "
                "(set OPENBLAS_CORETYPE=Haswell, or build against scipy-openblas32)" % corename)
    return None


def kernel_table():
    """The C dispatch table's GEMM kernels, in its order: [{'name', 'precision', 'about',
    'emulated', 'runs', 'covidx_gemm'}] (csrc/gemm_dispatch.c; 'runs': on this CPU,
    'covidx_gemm': a value COVIDX_GEMM accepts). The only list of kernels: every set below is
    derived from it."""
    return _core.gemm_kernel_table()


def precisions():
    """The precisions the engine's kernels compute in ('fp32' first, the default)."""
    return tuple(dict.fromkeys(["fp32"] + [row["precision"] for row in kernel_table()]))


def kernel_precision(name):
    """The precision a kernel computes in ('fp32', 'bf16', ...), or None for an unknown name."""
    return next((row["precision"] for row in kernel_table() if row["name"] == name), None)


def kernel_description(name):
    return next((row["about"] for row in kernel_table() if row["name"] == name), name)


def gemm_choices():
    """The values COVIDX_GEMM accepts."""
    return ("auto",) + tuple(row["name"] for row in kernel_table() if row["covidx_gemm"])


def config():
    """The configuration as a dict (what show_config prints)."""
    blas, cpu, kernels = _core.blas_info(), _core.cpu_info(), _core.gemm_kernels()
    env = os.environ.get("COVIDX_GEMM")
    return {
        "covidx": __version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "openblas": blas["config"],
        "openblas_corename": blas["corename"],
        "openblas_threads": blas["num_threads"],
        "conv_gemm": kernel_description(kernels["fp32"]),
        "kernels": {p: kernels[p] for p in precisions()},
        "bf16_note": kernels["bf16_note"],
        "int8_note": kernels["int8_note"],
        "covidx_gemm": env,
        "threads": get_num_threads(),
        "cpus": cpu["cpus"],
        "cpu_features": [k for k in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
                                     "amx_tile") if cpu[k]],
        # OpenBLAS's kernel only matters where it runs the convolutions (COVIDX_GEMM=openblas, or no AVX2)
        "warning": "; ".join(w for w in (kernel_warning(blas["corename"], cpu) if kernels["fp32"] == "openblas" else None,
                                         gemm_env_warning(env)) if w) or None,
    }


def gemm_env_warning(env):
    choices = gemm_choices()
    if env is None or env in choices:
        return None
    return "COVIDX_GEMM=%r is not one of %s; it is ignored" % (env, ", ".join(choices))


def show_config():
    """Prints versions, the OpenBLAS build and kernel, the GEMM kernel of each precision, threads
    and CPU features."""
    c = config()
    print("covidx %s (Python %s, NumPy %s)" % (c["covidx"], c["python"], c["numpy"]))
    print("  OpenBLAS:     %s" % c["openblas"])
    print("  kernel:       %s" % c["openblas_corename"])
    print("  conv GEMMs:   fp32: %s" % c["conv_gemm"])
    bf16 = c["kernels"]["bf16"]
    if kernel_precision(bf16) == "bf16":
        print("                bf16 (precision='bf16'): %s" % kernel_description(bf16))
    else:
        print("                bf16 (precision='bf16'): none; such models run in fp32 (%s)" % bf16)
    if c["bf16_note"]:
        print("                note: %s" % c["bf16_note"])
    int8 = c["kernels"]["int8"]
    if kernel_precision(int8) == "int8":
        print("                int8 (precision='int8', calibrated models): %s" % kernel_description(int8))
    else:
        print("                int8 (precision='int8', calibrated models): none; such models run in fp32 (%s)" % int8)
    if c["int8_note"]:
        print("                note: %s" % c["int8_note"])
    if c["covidx_gemm"]:
        print("  COVIDX_GEMM:  %s" % c["covidx_gemm"])
    print("  threads:      %d engine threads x %d OpenBLAS thread(s) each; %d CPUs available"
          % (c["threads"], c["openblas_threads"], c["cpus"]))
    print("  CPU features: %s" % (", ".join(c["cpu_features"]) or "baseline x86-64 only"))
    if c["warning"]:
        warnings.warn(c["warning"], RuntimeWarning, stacklevel=2)
        print("  WARNING:      %s" % c["warning"])
