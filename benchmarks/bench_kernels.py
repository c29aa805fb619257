"""How close each GEMM kernel this CPU runs comes to the CPU's peak, one thread, on ResNet50's
shapes (benchmarks/bench_kernels.c, built here with gcc from setup.py's GEMM_SOURCES).

    python benchmarks/bench_kernels.py [--kernels avx512 avx512vnni ...] [--repeats 7]

For each kernel: GFLOP/s (fp32) or GOP/s (int8, a multiply and an add per product) of the whole
GEMM, epilogue included, and its share of a register-only loop of the kernel's instruction
(VFMADD231PS, or VPDPBUSD on zmm; no peak is printed for the other int8 kernels). Thread CPU
time, so a busy machine moves these figures less than images/s; what they say is where the time
of a forward pass is not: a kernel near its peak leaves the rest of the gap to the other work
(transforms, epilogues, packing, the thread pool)."""
import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
import c_sources  # noqa: E402  setup.py's source lists, read without running it

KERNELS = ["avx512", "avx2", "avx512vnni", "avxvnni", "avx2int8"]


def cpu_line():
    name, flags = platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile"]
    return "%s; %s" % (name, ", ".join(f for f in wanted if f in flags) or "no AVX2")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", nargs="+", default=KERNELS, choices=KERNELS)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    cc = shutil.which("gcc")
    if cc is None:
        sys.exit("bench_kernels: needs gcc")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "bench_kernels")
        subprocess.run([cc, "-O3", "-std=c11", "-Wall", "-Wextra", "-I", os.path.join(REPO, "csrc"),
                        os.path.join(HERE, "bench_kernels.c")] + c_sources.sources("GEMM_SOURCES")
                       + ["-lm", "-pthread", "-o", exe], check=True)
        print("CPU: %s; gcc: %s" % (cpu_line(), subprocess.run([cc, "-dumpfullversion"], capture_output=True,
                                                                text=True).stdout.strip()))
        for kernel in args.kernels:
            print("== %s" % kernel, flush=True)
            subprocess.run([exe, kernel, str(args.repeats)], check=True)


if __name__ == "__main__":
    main()
