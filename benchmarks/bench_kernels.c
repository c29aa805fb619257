/* bench_kernels.c: one GEMM kernel on ResNet50's shapes, one thread, against the CPU's own peak
 * for the kernel's instruction (built and run by bench_kernels.py).
 *
 *     bench_kernels KERNEL [REPEATS]      KERNEL: a name of gemm.h's table (avx512, avxvnni, ...)
 *
 * Times are thread CPU time (CLOCK_THREAD_CPUTIME_ID), the best of REPEATS runs of the whole
 * GEMM (packing excluded, the epilogue with bias and ReLU included), so another process on the
 * same core changes them less than wall time would. The peak is a loop of independent
 * multiply-adds of the kernel's instruction on registers (VFMADD231PS on zmm or ymm, VPDPBUSD on
 * zmm): what one core can issue, with no loads. The shapes (rows m = output pixels at batch 1,
 * k, n) are the 1x1 convolutions and, for fp32, the Winograd F(2x2,3x3) tile GEMMs of each
 * stage, for int8 the 3x3 convolutions as im2col GEMMs. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gemm_int8.h"

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#if defined(__x86_64__)
/* The peak loops: N independent multiply-adds a round, each into its own register (register 15
 * is the operand), all written in asm so that the compiler adds no moves. 24 accumulators on zmm; 12 on ymm (AVX2 CPUs have 16
 * vector registers); either is more than latency x throughput on current cores. */
#define R(w, i) "%%" w #i
#define OP(insn, w, i) insn " " R(w, 15) ", " R(w, 15) ", " R(w, i) "\n\t"
#define ROUND12(insn, w) OP(insn, w, 0) OP(insn, w, 1) OP(insn, w, 2) OP(insn, w, 3) OP(insn, w, 4) OP(insn, w, 5) \
    OP(insn, w, 6) OP(insn, w, 7) OP(insn, w, 8) OP(insn, w, 9) OP(insn, w, 10) OP(insn, w, 11)
#define ROUND24(insn, w) ROUND12(insn, w) OP(insn, w, 16) OP(insn, w, 17) OP(insn, w, 18) OP(insn, w, 19) \
    OP(insn, w, 20) OP(insn, w, 21) OP(insn, w, 22) OP(insn, w, 23) OP(insn, w, 24) OP(insn, w, 25) \
    OP(insn, w, 26) OP(insn, w, 27)
#define CLOBBER12 "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm15"
#define CLOBBER24 CLOBBER12, "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", \
    "xmm25", "xmm26", "xmm27"
/* The whole loop is one asm statement: the registers start at zero (no denormals or NaNs to
 * slow a core down) and stay the loop's own. */
#define PEAK_LOOP(name, attr, zero, round, clobbers, per_round)                               \
    attr static double name(long iters) {                                                    \
        long n = iters;                                                                      \
        double t0 = cpu_seconds();                                                           \
        __asm__ volatile(zero "1:\n\t" round "dec %0\n\tjnz 1b" : "+r"(n) : : clobbers, "cc"); \
        return (double)iters * (per_round) / (cpu_seconds() - t0) / 1e9;                     \
    }
/* vfmadd231ps: 2 flops per float; vpdpbusd: 4 products and 4 additions per dword */
PEAK_LOOP(peak_fma512, __attribute__((target("avx512f"))), ROUND24("vpxord", "zmm") OP("vpxord", "zmm", 15),
          ROUND24("vfmadd231ps", "zmm"), CLOBBER24, 24 * 32)
PEAK_LOOP(peak_fma256, __attribute__((target("avx2,fma"))), ROUND12("vpxor", "ymm") OP("vpxor", "ymm", 15),
          ROUND12("vfmadd231ps", "ymm"), CLOBBER12, 12 * 16)
PEAK_LOOP(peak_vnni512, __attribute__((target("avx512f,avx512vnni"))), ROUND24("vpxord", "zmm") OP("vpxord", "zmm", 15),
          ROUND24("vpdpbusd", "zmm"), CLOBBER24, 24 * 128)
#endif

/* The peak loop for a kernel (GFLOP/s or GOP/s), or 0 where there is none to compare with. */
static double peak_for(const char *name) {
#if defined(__x86_64__)
    long iters = 20000000;
    if (!strcmp(name, "avx512")) return peak_fma512(iters);
    if (!strcmp(name, "avx2")) return peak_fma256(iters);
    if (!strcmp(name, "avx512vnni")) return peak_vnni512(iters);
#endif
    (void)name;
    return 0.0;
}

/* the 1x1 convolutions: pixels x cin x cout */
#define CONV1X1_SHAPES                                                                                         \
    {3136, 64, 64}, {3136, 64, 256}, {3136, 256, 64}, {784, 256, 128}, {784, 128, 512}, {784, 512, 128},       \
        {196, 512, 256}, {196, 256, 1024}, {196, 1024, 256}, {49, 1024, 512}, {49, 512, 2048}, {49, 2048, 512}
static const int FP32_SHAPES[][3] = {
    CONV1X1_SHAPES,
    /* Winograd tile GEMMs (16 per layer): tiles x cin x cout */
    {784, 64, 64}, {196, 128, 128}, {49, 256, 256}, {16, 512, 512}};
static const int INT8_SHAPES[][3] = {
    CONV1X1_SHAPES,
    /* 3x3 convolutions as im2col GEMMs: pixels x 9 cin x cout */
    {3136, 576, 64}, {784, 1152, 128}, {196, 2304, 256}, {49, 4608, 512}};

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_kernels KERNEL [REPEATS]\n");
        return 2;
    }
    int kernel = gemm_kernel_by_name(argv[1]), repeats = argc > 2 ? atoi(argv[2]) : 7;
    if (kernel < 0 || !gemm_kernel_runs(kernel) || gemm_kernel_emulated(kernel)) {
        printf("skip %s: not a kernel this CPU runs\n", argv[1]);
        return 0;
    }
    int int8 = gemm_kernel_is_int8(kernel);
    double peak = peak_for(argv[1]);
    if (peak > 0)
        printf("peak %s: %.1f %s\n", argv[1], peak, int8 ? "GOP/s" : "GFLOP/s");
    int nshapes = int8 ? (int)(sizeof INT8_SHAPES / sizeof INT8_SHAPES[0]) : (int)(sizeof FP32_SHAPES / sizeof FP32_SHAPES[0]);
    double total_ops = 0, total_t = 0;
    for (int s = 0; s < nshapes; s++) {
        const int *sh = int8 ? INT8_SHAPES[s] : FP32_SHAPES[s];
        int m = sh[0], k = sh[1], n = sh[2];
        float *b = malloc(sizeof(float) * (size_t)k * n), *c = malloc(sizeof(float) * (size_t)m * n);
        float *a = malloc(sizeof(float) * (size_t)m * k), *bias = calloc((size_t)n, sizeof(float));
        float *scale = malloc(sizeof(float) * n);
        uint8_t *aq = malloc((size_t)m * k);
        if (!a || !b || !c || !bias || !scale || !aq) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        for (size_t i = 0; i < (size_t)m * k; i++) a[i] = (float)(i % 7) * 0.1f, aq[i] = (uint8_t)(i % 100);
        for (size_t i = 0; i < (size_t)k * n; i++) b[i] = (float)(i % 5) * 0.1f - 0.2f;
        for (int i = 0; i < n; i++) scale[i] = 0.01f;
        PackedB p;
        memset(&p, 0, sizeof p);
        if (gemm_pack_kernel(&p, kernel, b, k, n, n) != 0) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        GemmI8Job j;
        memset(&j, 0, sizeof j);
        j.g = (GemmJob){m, a, k, &p, c, n, bias, NULL, 1};
        j.a = aq;
        j.lda = (size_t)k;
        j.scale = scale;
        j.out_inv = 1.0f;
        int tasks = gemm_tasks(&j.g), reps = 1 + (int)(2e8 / ((double)m * k * n)); /* about 0.1 s a run */
        double best = 1e30;
        for (int r = 0; r < repeats; r++) {
            double t0 = cpu_seconds();
            for (int q = 0; q < reps; q++)
                for (int t = 0; t < tasks; t++) gemm_run_task(&j.g, t);
            double dt = (cpu_seconds() - t0) / reps;
            best = dt < best ? dt : best;
        }
        double ops = 2.0 * m * k * n;
        total_ops += ops;
        total_t += best;
        printf("m %5d  k %5d  n %5d  %7.1f %s", m, k, n, ops / best / 1e9, int8 ? "GOP/s" : "GFLOP/s");
        if (peak > 0) printf("  %3.0f%% of peak", 100 * ops / best / 1e9 / peak);
        printf("\n");
        gemm_pack_free(&p);
        free(a), free(b), free(c), free(bias), free(scale), free(aq);
    }
    printf("all shapes: %.1f %s", total_ops / total_t / 1e9, int8 ? "GOP/s" : "GFLOP/s");
    if (peak > 0) printf("  %3.0f%% of peak", 100 * total_ops / total_t / 1e9 / peak);
    printf("\n");
    return 0;
}
