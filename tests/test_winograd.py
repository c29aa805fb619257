"""The Winograd F(2x2, 3x3) convolution (csrc/winograd*.c) with each version of its transforms
(AVX2 / baseline loops, AVX-512, the AVX-512 emulated build), through the C program
tests/winograd_check.c: against a plain double-precision loop, and against each other bit for bit,
over odd map sizes, channel counts that are not multiples of 16, several chunks of tiles, with and
without residual and ReLU. The emulated build runs on every machine; the AVX2 and AVX-512 ones
where the CPU has them (the test names what it left out). The whole network on the emulated
AVX-512 kernel, transforms included, is compared with the AVX2 one in tests/test_precision.py."""
import os
import shutil
import subprocess

import pytest

import c_sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_winograd_transforms_match_plain_loops_and_each_other(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = str(tmp_path / "winograd_check")
    sources = c_sources.sources("WINOGRAD_SOURCES") + c_sources.sources("GEMM_SOURCES")  # setup.py's lists
    subprocess.run([cc, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-DWINO_CHUNK_BYTES=65536", "-I",
                    os.path.join(REPO, "csrc"), os.path.join(REPO, "tests", "winograd_check.c")]
                   + sources + ["-lm", "-pthread", "-o", exe], check=True)
    run = subprocess.run([exe], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    assert run.stdout.startswith("ok 24 (avx512-emu"), run.stdout
