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


def config():
    """The configuration as a dict (what show_config prints)."""
    import numpy

    from . import __version__

    blas, cpu = _core.blas_info(), _core.cpu_info()
    return {
        "covidx": __version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "openblas": blas["config"],
        "openblas_corename": blas["corename"],
        "openblas_threads": blas["num_threads"],
        "conv_gemm": "covidx AVX2+FMA kernel (weights packed at load)" if blas["packed_gemm"] else "OpenBLAS",
        "threads": get_num_threads(),
        "cpus": cpu["cpus"],
        "cpu_features": [k for k in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if cpu[k]],
        "warning": kernel_warning(blas["corename"], cpu),
    }


def show_config():
    """Prints versions, the OpenBLAS build and kernel, threads and CPU features."""
    c = config()
    print("covidx %s (Python %s, NumPy %s)" % (c["covidx"], c["python"], c["numpy"]))
    print("  OpenBLAS:     %s" % c["openblas"])
    print("  kernel:       %s" % c["openblas_corename"])
    print("  conv GEMMs:   %s" % c["conv_gemm"])
    print("  threads:      %d engine threads x %d OpenBLAS thread(s) each; %d CPUs available"
          % (c["threads"], c["openblas_threads"], c["cpus"]))
    print("  CPU features: %s" % (", ".join(c["cpu_features"]) or "baseline x86-64 only"))
    if c["warning"]:
        warnings.warn(c["warning"], RuntimeWarning, stacklevel=2)
        print("  WARNING:      %s" % c["warning"])
