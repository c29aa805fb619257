/* gemm.h: C[m x n] = A[m x k] . B[k x n], then bias, residual and ReLU, with B (the weights)
 * packed once at load time into the panels the kernel reads.
 *
 * Several kernels share this interface; gemm_dispatch.c is the one table that picks them at run
 * time from the CPU's features (the library itself is built for baseline x86-64):
 *
 *   fp32:  AVX-512F 6x64 tile (gemm_avx512.c), else AVX2+FMA 6x16 tile (gemm_avx2.c), else
 *          OpenBLAS (gemm_fp32_kernel() returns GEMM_OPENBLAS and the callers use sgemm).
 *   bf16:  AMX-BF16 tiles (gemm_amx.c), else AVX512_BF16 (gemm_avx512bf16.c), else the fp32
 *          kernel (gemm_bf16_kernel() says why).
 *   int8:  AVX-512 VNNI (gemm_avx512vnni.c), else AVX-VNNI (gemm_avxvnni.c), else AVX2
 *          (gemm_avx2int8.c), else the fp32 kernel (gemm_int8_kernel() says why). A is uint8
 *          (0..127), B int8 per column scaled; see gemm_int8.h.
 *
 * A (the activations) is read in place, row by row, in fp32; the bf16 kernels round it to bf16
 * (nearest even) block by block. Every kernel sums each element of C in an order fixed by the
 * shape alone, so results are bitwise the same for any task split or thread count.
 *
 * COVIDX_GEMM forces a lower choice: openblas, avx2, avx512 (no AMX), or auto/amx (the default).
 * For tests only, avx512-emu, amx-emu and avx512bf16-emu select the plain-C builds of those
 * kernels (the same sources compiled over avx512_emulation.h / amx_emulation.h): exact but slow;
 * avx512vnni-emu, avxvnni-emu and avx2int8-emu those of the int8 kernels (int8_emulation.h). */
#ifndef COVIDX_GEMM_H
#define COVIDX_GEMM_H

#include <stddef.h>
#include <stdint.h>

enum GemmKernel {
    GEMM_OPENBLAS = 0,   /* no packed kernel: the callers use OpenBLAS */
    GEMM_AVX2,           /* fp32, AVX2 + FMA */
    GEMM_AVX512,         /* fp32, AVX-512F */
    GEMM_AVX512_EMU,     /* fp32, gemm_avx512.c over the plain-C emulation (tests) */
    GEMM_AMX,            /* bf16, AMX-BF16 */
    GEMM_AMX_EMU,        /* bf16, gemm_amx.c over the plain-C tile emulation (tests) */
    GEMM_AVX512BF16,     /* bf16, AVX512_BF16 */
    GEMM_AVX512BF16_EMU, /* bf16, gemm_avx512bf16.c over the plain-C emulation (tests) */
    GEMM_AVX512VNNI,     /* int8, AVX-512 VNNI (VPDPBUSD on zmm) */
    GEMM_AVX512VNNI_EMU, /* int8, gemm_avx512vnni.c over the plain-C emulation (tests) */
    GEMM_AVXVNNI,        /* int8, AVX-VNNI (VEX VPDPBUSD on ymm) */
    GEMM_AVXVNNI_EMU,    /* int8, gemm_avxvnni.c over the plain-C emulation (tests) */
    GEMM_AVX2INT8,       /* int8, AVX2 (VPMADDUBSW + VPMADDWD) */
    GEMM_AVX2INT8_EMU,   /* int8, gemm_avx2int8.c over the plain-C emulation (tests) */
    GEMM_NKERNELS
};

/* B (k x n) packed for one kernel. fp32 kernels: data, blocks of kc rows, each a run of nr-column
 * panels (the last one padded with zeros), each panel kc x nr floats, row after row. bf16
 * kernels: bf16, see gemm_bf16.h. int8 kernels: i8 and wscale, see gemm_int8.h. 64-byte aligned. */
typedef struct {
    int k, n;
    int kernel;      /* enum GemmKernel that packed it (and runs it) */
    float *data;     /* fp32 kernels, else NULL */
    uint16_t *bf16;  /* bf16 kernels, else NULL */
    int8_t *i8;      /* int8 kernels, else NULL */
    float *wscale;   /* int8 kernels: (n) each column's scale (B ~ i8 * wscale), else NULL */
} PackedB;

/* Names ("avx2", "avx512", "amx", ...) and properties of a kernel (gemm_dispatch.c's table). */
const char *gemm_kernel_name(int kernel);
const char *gemm_kernel_precision(int kernel); /* "fp32", "bf16", "int8" */
const char *gemm_kernel_about(int kernel);     /* a description, for covidx info */
int gemm_kernel_is_bf16(int kernel);
int gemm_kernel_emulated(int kernel);
/* 1 when COVIDX_GEMM accepts the kernel's name. */
int gemm_kernel_env(int kernel);
int gemm_kernel_is_int8(int kernel);
/* 1 when the kernel can run here (the CPU has its instructions; the emulated ones always). */
int gemm_kernel_runs(int kernel);
/* The kernel kind given by name, or -1. */
int gemm_kernel_by_name(const char *name);

/* The fp32 kernel for this CPU and COVIDX_GEMM (read each time: asked while a model loads). */
int gemm_fp32_kernel(void);
/* 1 when a packed fp32 kernel runs (gemm_fp32_kernel() != GEMM_OPENBLAS). */
int gemm_available(void);
/* The kernel the bf16 mode would use: a bf16 kernel, or gemm_fp32_kernel() when there is none,
 * with *why (when why is not NULL) set to a static sentence saying why, else to NULL. Does not
 * ask the OS for AMX. */
int gemm_bf16_kernel(const char **why);
/* Switches the bf16 mode on for the process: for GEMM_AMX asks Linux for the tile data state
 * (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), once per process). Returns the kernel to
 * use, which differs from `kernel` (a fallback, with *why set) when the request failed. */
int gemm_bf16_enable(int kernel, const char **why);

/* The kernel the int8 mode would use: an int8 kernel, or gemm_fp32_kernel() when there is none,
 * with *why (when why is not NULL) set to a static sentence saying why, else to NULL. */
int gemm_int8_kernel(const char **why);

/* Packs b (k x n, leading dimension ldb) into p for gemm_fp32_kernel(), or for the given kernel.
 * 0, or -1 when out of memory (p->data and p->bf16 are then NULL). */
int gemm_pack(PackedB *p, const float *b, int k, int n, int ldb);
int gemm_pack_kernel(PackedB *p, int kernel, const float *b, int k, int n, int ldb);
void gemm_pack_free(PackedB *p);

typedef struct {
    int m;                   /* rows of A and C */
    const float *a;          /* row r of A starts at a + r * lda */
    int lda;
    const PackedB *b;        /* (k, n) */
    float *c;                /* (m, n), leading dimension ldc */
    int ldc;
    const float *bias;       /* (n) or NULL */
    const float *residual;   /* (m, n) with leading dimension ldc, or NULL */
    int relu;
} GemmJob;

/* The job as independent tasks (blocks of C); their number depends only on the shape and the
 * kernel, and every element of C is summed in the same order whichever task or thread computes it. */
int gemm_tasks(const GemmJob *g);
void gemm_run_task(const GemmJob *g, int task);

/* Tasks come in row blocks of GEMM_MC rows: tasks b * per .. b * per + per - 1, per =
 * gemm_tasks_per_row_block(g), cover rows b * GEMM_MC up to (b + 1) * GEMM_MC of C (and of A). */
#define GEMM_MC 96
int gemm_tasks_per_row_block(const GemmJob *g);

#endif
