/* gemm.h: C[m x n] = A[m x k] . B[k x n], then bias, residual and ReLU, with B (the weights)
 * packed once at load time into the panels the kernel reads.
 *
 * The kernel (gemm.c) is an AVX2 + FMA 6x16 register tile; A (the activations) is read in place,
 * row by row, so nothing is packed or zeroed per call, and the epilogue is applied to each tile
 * while it is still in registers. Where the CPU lacks AVX2 or FMA, or COVIDX_GEMM=openblas, the
 * callers use OpenBLAS instead (gemm_available() says which). */
#ifndef COVIDX_GEMM_H
#define COVIDX_GEMM_H

#include <stddef.h>

/* B (k x n) as blocks of KC rows; each block is a run of 16-column panels (the last one padded
 * with zeros), each panel kc x 16 floats, row after row. 32-byte aligned. */
typedef struct {
    int k, n;
    float *data;
} PackedB;

/* 1 when the packed kernel runs on this CPU (and is not switched off by COVIDX_GEMM=openblas). */
int gemm_available(void);

/* Packs b (k x n, leading dimension ldb) into p. 0, or -1 when out of memory. */
int gemm_pack(PackedB *p, const float *b, int k, int n, int ldb);
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

/* The job as independent tasks (blocks of C); their number depends only on the shape, and every
 * element of C is summed in the same order whichever task or thread computes it. */
int gemm_tasks(const GemmJob *g);
void gemm_run_task(const GemmJob *g, int task);

/* Tasks come in row blocks of GEMM_MC rows: tasks b * per .. b * per + per - 1, per =
 * gemm_tasks_per_row_block(g), cover rows b * GEMM_MC up to (b + 1) * GEMM_MC of C (and of A). */
#define GEMM_MC 96
int gemm_tasks_per_row_block(const GemmJob *g);

#endif
