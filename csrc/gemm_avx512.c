/* gemm_avx512.c: the AVX-512F packed-weights SGEMM with its epilogue (see gemm.h).
 *
 * Same blocking as gemm_avx2.c, with a register tile sized for 32 zmm registers:
 *
 *     for each block of kc rows of B (kc <= KC):
 *         for each 32-column panel of the task:       B panel, kc x 32, stays in L1
 *             for each 12 rows of the task's block:   A rows, 12 x kc, come from L2
 *                 C[12 x 32] (+)= A[12 x kc] . Bpanel[kc x 32]     24 zmm accumulators,
 *                                                                   2 for B, 1 broadcast of A
 *
 * The first block of kc starts the accumulators at zero, later ones at the partial sums in C,
 * and the last one adds the bias and the residual and applies ReLU before storing. Each element
 * of C is therefore summed over k in the same order whatever the task split. Columns past n (the
 * last panel of a layer whose width is not a multiple of 32) are masked off in every load and
 * store of C, the bias and the residual.
 *
 * Written over vec512.h: built for AVX-512F here, and as the plain-C emulation by
 * gemm_avx512_emu.c (COVIDX_AVX512_EMU), which gives the same bits and runs on any CPU. */
#include <stdlib.h>
#include <string.h>

#include "gemm_kernels.h"
#include "vec512.h"

#define MR 12   /* rows per register tile */
#define NR 32   /* columns per register tile and per packed panel (two zmm vectors) */
#define KC 192  /* rows of B per block: a 24 KiB panel, within a 32 or 48 KiB L1 */

static int panels(int n) { return (n + NR - 1) / NR; }

/* K splits into nkb blocks of kc_base rows, the last one possibly shorter. */
static void k_blocks(int k, int *nkb, int *kc_base) {
    *nkb = (k + KC - 1) / KC;
    if (*nkb < 1) *nkb = 1;
    *kc_base = (k + *nkb - 1) / *nkb;
}

/* b (k x n, leading dimension ldb) -> p->data: per block of kc rows, np panels of kc x 32. */
int FN(gemm_avx512_pack)(PackedB *p, const float *b, int k, int n, int ldb) {
    int np = panels(n), nkb, kc_base;
    k_blocks(k, &nkb, &kc_base);
    size_t floats = (size_t)k * np * NR;
    size_t bytes = ((floats ? floats : 1) * sizeof(float) + 63) / 64 * 64;
    float *data = aligned_alloc(64, bytes);
    if (!data) return -1;
    for (int blk = 0; blk < nkb; blk++) {
        int k0 = blk * kc_base, kc = k - k0 < kc_base ? k - k0 : kc_base;
        float *block = data + (size_t)k0 * np * NR;
        for (int j = 0; j < np; j++) {
            float *panel = block + (size_t)j * kc * NR;
            int cols = n - j * NR < NR ? n - j * NR : NR;
            for (int kk = 0; kk < kc; kk++) {
                memcpy(panel + (size_t)kk * NR, b + (size_t)(k0 + kk) * ldb + (size_t)j * NR, sizeof(float) * cols);
                memset(panel + (size_t)kk * NR + cols, 0, sizeof(float) * (NR - cols));
            }
        }
    }
    p->k = k;
    p->n = n;
    p->data = data;
    return 0;
}

#if V512_BUILD

typedef struct {
    const float *bias;     /* at the tile's first column (never NULL: zeros where there is none) */
    const float *residual; /* at the tile's first element, or NULL */
    size_t ldr;
    int relu;
} Epilogue;

/* c[mr x 32] (+)= a[mr rows][0..kc) . b[kc x 32], 1 <= mr <= 12, only the columns in masks m0
 * (0..15) and m1 (16..31) of c touched; then the epilogue when e is not NULL. Always inlined with
 * a constant mr, so the 2 * mr accumulators stay in registers. */
__attribute__((always_inline)) V512_TARGET static inline void kernel_rows(int mr, int kc, const float *const a[MR],
                                                                         const float *restrict b, float *c, size_t ldc,
                                                                         Mask16 m0, Mask16 m1, int load,
                                                                         const Epilogue *e) {
    V16 acc[MR][2];
V512_UNROLL(12)
    for (int i = 0; i < mr; i++) {
        acc[i][0] = load ? v_maskz_load(m0, c + i * ldc) : v_zero();
        acc[i][1] = load ? v_maskz_load(m1, c + i * ldc + 16) : v_zero();
    }
    for (int k = 0; k < kc; k++, b += NR) {
        V16 b0 = v_load(b), b1 = v_load(b + 16);
V512_UNROLL(12)
        for (int i = 0; i < mr; i++) {
            V16 x = v_set1(a[i][k]);
            acc[i][0] = v_fmadd(x, b0, acc[i][0]), acc[i][1] = v_fmadd(x, b1, acc[i][1]);
        }
    }
    if (e) {
        V16 bias0 = v_maskz_load(m0, e->bias), bias1 = v_maskz_load(m1, e->bias + 16), z = v_zero();
V512_UNROLL(12)
        for (int i = 0; i < mr; i++) {
            acc[i][0] = v_add(acc[i][0], bias0), acc[i][1] = v_add(acc[i][1], bias1);
            if (e->residual) {
                acc[i][0] = v_add(acc[i][0], v_maskz_load(m0, e->residual + i * e->ldr));
                acc[i][1] = v_add(acc[i][1], v_maskz_load(m1, e->residual + i * e->ldr + 16));
            }
            if (e->relu) acc[i][0] = v_max(acc[i][0], z), acc[i][1] = v_max(acc[i][1], z);
        }
    }
V512_UNROLL(12)
    for (int i = 0; i < mr; i++) v_mask_store(c + i * ldc, m0, acc[i][0]), v_mask_store(c + i * ldc + 16, m1, acc[i][1]);
}

/* The full tile: 12 x 32, 24 accumulators. */
V512_TARGET static void kernel_12x32(int kc, const float *const a[MR], const float *restrict b, float *c, size_t ldc,
                                     Mask16 m0, Mask16 m1, int load, const Epilogue *e) {
    kernel_rows(MR, kc, a, b, c, ldc, m0, m1, load, e);
}

/* 1 to 11 rows left over after the 12-row tiles: one copy of the kernel per row count. */
V512_TARGET static void kernel_short(int mr, int kc, const float *const a[MR], const float *restrict b, float *c,
                                     size_t ldc, Mask16 m0, Mask16 m1, int load, const Epilogue *e) {
    switch (mr) {
    case 1: kernel_rows(1, kc, a, b, c, ldc, m0, m1, load, e); break;
    case 2: kernel_rows(2, kc, a, b, c, ldc, m0, m1, load, e); break;
    case 3: kernel_rows(3, kc, a, b, c, ldc, m0, m1, load, e); break;
    case 4: kernel_rows(4, kc, a, b, c, ldc, m0, m1, load, e); break;
    case 5: kernel_rows(5, kc, a, b, c, ldc, m0, m1, load, e); break;
    case 6: kernel_rows(6, kc, a, b, c, ldc, m0, m1, load, e); break;
    case 7: kernel_rows(7, kc, a, b, c, ldc, m0, m1, load, e); break;
    case 8: kernel_rows(8, kc, a, b, c, ldc, m0, m1, load, e); break;
    case 9: kernel_rows(9, kc, a, b, c, ldc, m0, m1, load, e); break;
    case 10: kernel_rows(10, kc, a, b, c, ldc, m0, m1, load, e); break;
    default: kernel_rows(11, kc, a, b, c, ldc, m0, m1, load, e); break;
    }
}

/* Rows r0..r1 of C against one panel of B (columns col .. col + nr - 1, nr <= 32): whole 12-row
 * tiles, then the rows left over. */
V512_TARGET static void panel_rows(const GemmJob *g, int r0, int r1, int col, int nr, int k0, int kc,
                                   const float *panel, int first, int last) {
    static const float zero_bias[NR];
    Mask16 m0 = (Mask16)(nr >= 16 ? 0xffffu : (1u << nr) - 1u);
    Mask16 m1 = (Mask16)(nr >= 32 ? 0xffffu : nr <= 16 ? 0u : (1u << (nr - 16)) - 1u);
    size_t lda = (size_t)g->lda, ldc = (size_t)g->ldc;
    Epilogue e = {g->bias ? g->bias + col : zero_bias, NULL, ldc, g->relu};
    const float *a[MR];
    int r = r0;
    for (; r + MR <= r1; r += MR) {
        for (int i = 0; i < MR; i++) a[i] = g->a + (size_t)(r + i) * lda + k0;
        e.residual = g->residual ? g->residual + (size_t)r * ldc + col : NULL;
        kernel_12x32(kc, a, panel, g->c + (size_t)r * ldc + col, ldc, m0, m1, !first, last ? &e : NULL);
    }
    if (r < r1) {
        for (int i = 0; i < MR; i++) a[i] = g->a + (size_t)(r + (r + i < r1 ? i : 0)) * lda + k0;
        e.residual = g->residual ? g->residual + (size_t)r * ldc + col : NULL;
        kernel_short(r1 - r, kc, a, panel, g->c + (size_t)r * ldc + col, ldc, m0, m1, !first, last ? &e : NULL);
    }
}

/* Task `task` of the grid (gemm_kernels.h) with 32-column panels. */
void FN(gemm_avx512_run_task)(const GemmJob *g, int task) {
    int nkb, kc_base, r0, r1, j0, j1;
    k_blocks(g->b->k, &nkb, &kc_base);
    int np = panels(g->b->n), n = g->b->n, k = g->b->k;
    gemm_task_bounds(g, NR, task, &r0, &r1, &j0, &j1);
    if (nkb == 1) { /* one block of k: 12 rows of A against every panel, so C fills row by row */
        for (int r = r0; r < r1; r += MR)
            for (int j = j0; j < j1; j++) {
                int nr = n - j * NR < NR ? n - j * NR : NR;
                panel_rows(g, r, r + MR < r1 ? r + MR : r1, j * NR, nr, 0, k, g->b->data + (size_t)j * k * NR, 1, 1);
            }
        return;
    }
    for (int blk = 0; blk < nkb; blk++) {
        int k0 = blk * kc_base, kc = k - k0 < kc_base ? k - k0 : kc_base;
        const float *block = g->b->data + (size_t)k0 * np * NR;
        for (int j = j0; j < j1; j++) {
            int nr = n - j * NR < NR ? n - j * NR : NR;
            panel_rows(g, r0, r1, j * NR, nr, k0, kc, block + (size_t)j * kc * NR, blk == 0, blk == nkb - 1);
        }
    }
}

#else /* no AVX-512 on this architecture: never picked (gemm_kernel_runs() says 0) */

void FN(gemm_avx512_run_task)(const GemmJob *g, int task) {
    (void)g;
    (void)task;
}

#endif
