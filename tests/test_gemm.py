"""The packed-weights GEMM kernels (csrc/gemm_*.c) against a plain double-precision loop, through
the C program tests/gemm_check.c (every blocking edge, every epilogue, task-order independence).

Each kernel is checked on its own: the real instruction sets where the CPU has them (else the
test skips, saying so), and the emulated builds of the AVX-512, AVX512_BF16 and AMX kernels
(the same sources over plain-C emulations) on every machine. The bf16 kernels are checked
against the reference on bf16-rounded inputs (what is left is the fp32 accumulation). Where the
CPU has the instructions, the real and emulated builds must also give the same bits.

The int8 kernels (AVX-512 VNNI, AVX-VNNI, AVX2) are checked bit for bit against a plain loop of
the quantised arithmetic, and against each other: all give the same integers and the same
epilogue, so the same bits."""
import os
import shutil
import subprocess

import pytest

import c_sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEMM_SOURCES = c_sources.sources("GEMM_SOURCES")  # setup.py's list


@pytest.fixture(scope="module")
def gemm_check(tmp_path_factory):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = str(tmp_path_factory.mktemp("gemm") / "gemm_check")
    subprocess.run([cc, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", os.path.join(REPO, "csrc"),
                    os.path.join(REPO, "tests", "gemm_check.c")]
                   + GEMM_SOURCES + ["-lm", "-pthread", "-o", exe], check=True)
    return exe


def run_check(exe, *kernels):
    run = subprocess.run([exe, *kernels], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:]
    if run.stdout.startswith("skip"):
        pytest.skip(run.stdout.strip())
    assert run.stdout.startswith("ok ")


def test_packed_gemm_matches_plain_loops(gemm_check):
    """The AVX2 + FMA kernel (as before this file checked more kernels)."""
    run_check(gemm_check, "avx2")


@pytest.mark.parametrize("kernel", ["avx512-emu", "amx-emu", "avx512bf16-emu", "avx512vnni-emu", "avxvnni-emu",
                                    "avx2int8-emu"])
def test_emulated_kernel_matches_plain_loops(gemm_check, kernel):
    run_check(gemm_check, kernel)


@pytest.mark.parametrize("kernel", ["avx512", "amx", "avx512bf16", "avx512vnni", "avxvnni", "avx2int8"])
def test_native_kernel_matches_plain_loops(gemm_check, kernel):
    run_check(gemm_check, kernel)


@pytest.mark.parametrize("kernel", ["avx512", "amx", "avx512bf16", "avx512vnni", "avxvnni", "avx2int8"])
def test_native_and_emulated_builds_agree_bit_for_bit(gemm_check, kernel):
    run_check(gemm_check, kernel, kernel + "-emu")


def test_avx512_and_avx2_kernels_agree_bit_for_bit(gemm_check):
    """Both sum each element as one chain of FMAs over k, in order, then the same epilogue: fp32
    results do not change between AVX2 and AVX-512 CPUs. (The emulated AVX-512 build stands for
    the real one, which equals it bit for bit.)"""
    run_check(gemm_check, "avx512-emu", "avx2")


@pytest.mark.parametrize("pair", [("avx512vnni-emu", "avx2int8-emu"), ("avxvnni-emu", "avx2int8-emu")])
def test_int8_kernels_agree_bit_for_bit(gemm_check, pair):
    """VPDPBUSD (zmm or ymm) and VPMADDUBSW + VPMADDWD give the same int32 sums (no saturation on
    0..127 x -127..127), and the epilogue is shared: the same bits on every CPU."""
    run_check(gemm_check, *pair)
