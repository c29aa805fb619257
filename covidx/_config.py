"""Threads and the build/runtime configuration report."""
from __future__ import annotations

import os
import sys
import warnings

from . import _core

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


KERNEL_NAMES = {
    "openblas": "OpenBLAS SGEMM",
    "avx2": "covidx AVX2+FMA kernel (weights packed at load)",
    "avx512": "covidx AVX-512F kernel (weights packed at load)",
    "avx512-emu": "covidx AVX-512F kernel, emulated in plain C (tests only: slow)",
    "amx": "covidx AMX-BF16 kernel (bf16 weights packed at load, fp32 sums)",
    "amx-emu": "covidx AMX-BF16 kernel, emulated in plain C (tests only: slow)",
    "avx512bf16": "covidx AVX512_BF16 kernel (bf16 weights packed at load, fp32 sums)",
    "avx512bf16-emu": "covidx AVX512_BF16 kernel, emulated in plain C (tests only: slow)",
}
GEMM_CHOICES = ("auto", "amx", "avx512", "avx2", "openblas", "avx512-emu", "amx-emu", "avx512bf16-emu")


def config():
    """The configuration as a dict (what show_config prints)."""
    import numpy

    from . import __version__

    blas, cpu, kernels = _core.blas_info(), _core.cpu_info(), _core.gemm_kernels()
    env = os.environ.get("COVIDX_GEMM")
    return {
        "covidx": __version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "openblas": blas["config"],
        "openblas_corename": blas["corename"],
        "openblas_threads": blas["num_threads"],
        "conv_gemm": KERNEL_NAMES.get(kernels["fp32"], kernels["fp32"]),
        "kernels": {"fp32": kernels["fp32"], "bf16": kernels["bf16"]},
        "bf16_note": kernels["bf16_note"],
        "covidx_gemm": env,
        "threads": get_num_threads(),
        "cpus": cpu["cpus"],
        "cpu_features": [k for k in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if cpu[k]],
        # OpenBLAS's kernel only matters where it runs the convolutions (COVIDX_GEMM=openblas, or no AVX2)
        "warning": "; ".join(w for w in (kernel_warning(blas["corename"], cpu) if kernels["fp32"] == "openblas" else None,
                                         gemm_env_warning(env)) if w) or None,
    }


def gemm_env_warning(env):
    if env is None or env in GEMM_CHOICES:
        return None
    return "COVIDX_GEMM=%r is not one of %s; it is ignored" % (env, ", ".join(GEMM_CHOICES))


def show_config():
    """Prints versions, the OpenBLAS build and kernel, the GEMM kernel of each precision, threads
    and CPU features."""
    c = config()
    print("covidx %s (Python %s, NumPy %s)" % (c["covidx"], c["python"], c["numpy"]))
    print("  OpenBLAS:     %s" % c["openblas"])
    print("  kernel:       %s" % c["openblas_corename"])
    print("  conv GEMMs:   fp32: %s" % c["conv_gemm"])
    bf16 = c["kernels"]["bf16"]
    if bf16 in ("amx", "amx-emu", "avx512bf16", "avx512bf16-emu"):
        print("                bf16 (precision='bf16'): %s" % KERNEL_NAMES.get(bf16, bf16))
    else:
        print("                bf16 (precision='bf16'): none; such models run in fp32 (%s)" % bf16)
    if c["bf16_note"]:
        print("                note: %s" % c["bf16_note"])
    if c["covidx_gemm"]:
        print("  COVIDX_GEMM:  %s" % c["covidx_gemm"])
    print("  threads:      %d engine threads x %d OpenBLAS thread(s) each; %d CPUs available"
          % (c["threads"], c["openblas_threads"], c["cpus"]))
    print("  CPU features: %s" % (", ".join(c["cpu_features"]) or "baseline x86-64 only"))
    if c["warning"]:
        warnings.warn(c["warning"], RuntimeWarning, stacklevel=2)
        print("  WARNING:      %s" % c["warning"])
