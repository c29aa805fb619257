"""The packed-weights GEMM kernel (csrc/gemm.c) against a plain double-precision loop, through the
C program tests/gemm_check.c (every blocking edge, every epilogue, task-order independence)."""
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_packed_gemm_matches_plain_loops(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = str(tmp_path / "gemm_check")
    subprocess.run([cc, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", os.path.join(REPO, "csrc"),
                    os.path.join(REPO, "tests", "gemm_check.c"), os.path.join(REPO, "csrc", "gemm.c"), "-lm",
                    "-o", exe], check=True)
    run = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    if run.stdout.startswith("skip"):
        pytest.skip(run.stdout.strip())
    assert run.stdout.startswith("ok ")
