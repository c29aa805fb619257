"""Builds covidx._core against OpenBLAS.

By default OpenBLAS comes from the PyPI wheel scipy-openblas32 (a build requirement): the extension
links against its library and a copy of that library is placed in covidx/_libs/, found at run time
through an $ORIGIN rpath, so the installed package needs neither the wheel nor a system OpenBLAS.

COVIDX_BLAS=system links the system OpenBLAS instead (-lopenblas, unprefixed symbols).
COVIDX_SANITIZE=1 builds with AddressSanitizer and UndefinedBehaviorSanitizer (for tests only).
"""
import os
import shutil

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

WEIGHTS = ["covid_resnet50.safetensors", "MODEL_CARD.md"]  # the shipped model, from weights/

# The GEMM kernels: one file per instruction set, each function compiled for its own target
# (__attribute__((target))), the library for baseline x86-64; gemm_dispatch.c picks at run time.
# The *_emu.c files are the same kernel sources over plain-C emulations (for tests). With cpu.c
# (the CPU's features) they link on their own: tests/gemm_check.c is built from this list.
# The one list of C sources: the tests and tests/run_sanitized.sh read it (tests/c_sources.py).
GEMM_SOURCES = ["csrc/gemm_dispatch.c", "csrc/gemm_avx2.c", "csrc/gemm_avx512.c", "csrc/gemm_avx512_emu.c",
                "csrc/gemm_bf16.c", "csrc/gemm_amx.c", "csrc/gemm_amx_emu.c", "csrc/gemm_avx512bf16.c",
                "csrc/gemm_avx512bf16_emu.c", "csrc/gemm_int8.c", "csrc/int8_epilogue.c", "csrc/gemm_avx512vnni.c",
                "csrc/gemm_avx512vnni_emu.c", "csrc/gemm_avxvnni.c", "csrc/gemm_avxvnni_emu.c",
                "csrc/gemm_avx2int8.c", "csrc/gemm_avx2int8_emu.c", "csrc/cpu.c"]
# The Winograd convolution: winograd.c (its transforms built for AVX2 and baseline x86-64) and the
# AVX-512 transforms with their emulated build; with GEMM_SOURCES and threadpool.c they link on
# their own: tests/winograd_check.c is built from these lists.
WINOGRAD_SOURCES = ["csrc/winograd.c", "csrc/winograd_avx512.c", "csrc/winograd_avx512_emu.c", "csrc/threadpool.c"]
SOURCES = ["csrc/module.c", "csrc/resnet50.c", "csrc/layers.c", "csrc/layers_ref.c",
           "csrc/unfamiliar.c", "csrc/conv_int8.c", "csrc/net_int8.c"] + WINOGRAD_SOURCES + GEMM_SOURCES
CFLAGS = ["-O3", "-std=c11", "-Wall", "-Wextra", "-fno-strict-aliasing", "-fvisibility=hidden"]
LDFLAGS = ["-pthread"]


def blas_settings():
    if os.environ.get("COVIDX_BLAS", "scipy-openblas") == "system":
        return {"libraries": ["openblas"], "macros": [], "vendor": None}
    import scipy_openblas32

    lib_dir = scipy_openblas32.get_lib_dir()
    return {
        "libraries": [scipy_openblas32.get_library()],
        "library_dirs": [lib_dir],
        "macros": [("COVIDX_BLAS_PREFIX", "scipy_")],
        "vendor": os.path.join(lib_dir, "lib%s.so" % scipy_openblas32.get_library()),
    }


class BuildExt(build_ext):
    def build_extensions(self):
        blas = blas_settings()
        for ext in self.extensions:
            ext.libraries += blas["libraries"]
            ext.library_dirs += blas.get("library_dirs", [])
            ext.define_macros += blas["macros"]
            if blas["vendor"]:
                ext.extra_link_args += ["-Wl,-rpath,$ORIGIN/_libs"]
            if os.environ.get("COVIDX_SANITIZE") == "1":
                san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                       "-fno-omit-frame-pointer", "-g", "-O1"]
                ext.extra_compile_args += san
                ext.extra_link_args += san
        super().build_extensions()
        self.vendor = blas["vendor"]
        self.copy_vendored_blas()

    def run(self):
        super().run()  # with --inplace, builds in build/ and then copies the extension over
        if self.inplace:
            self.copy_vendored_blas()

    def copy_vendored_blas(self):
        """Puts the OpenBLAS library beside the extension, in _libs/ (its rpath is $ORIGIN/_libs)."""
        if getattr(self, "vendor", None):
            for ext in self.extensions:
                libs = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_libs")
                os.makedirs(libs, exist_ok=True)
                shutil.copy2(self.vendor, libs)


class BuildPy(build_py):
    """Installs the shipped model (weights/ at the top of the repository) as package data in
    covidx/weights/, where covidx.load_model() finds it after a normal install."""

    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        target = os.path.join(self.build_lib, "covidx", "weights")
        for name in WEIGHTS:
            src = os.path.join(here, "weights", name)
            if os.path.isfile(src):
                os.makedirs(target, exist_ok=True)
                shutil.copy2(src, target)


setup(
    ext_modules=[
        Extension(
            "covidx._core",
            sources=SOURCES,
            include_dirs=[numpy.get_include(), "csrc"],
            define_macros=[("NPY_TARGET_VERSION", "NPY_1_21_API_VERSION")],
            extra_compile_args=CFLAGS,
            extra_link_args=LDFLAGS,
        )
    ],
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
