/* gemm_driver.h: the fp32 packed-weights SGEMM driver that every fp32 kernel file shares: packing,
 * blocking, the task grid and the epilogue order. A kernel file (gemm_avx2.c, gemm_avx512.c)
 * defines its register tile and its vector operations, then includes this file once:
 *
 *   MR, NR, NV, KC   rows per register tile; columns per tile and per packed panel; vectors per
 *                    row of the tile; rows of B per block of k
 *   Vec, TARGET      the vector type of NR / NV floats, and the function attribute that enables it
 *   UNROLL(n)        a pragma unrolling the loops over the tile's rows (keeps them in registers)
 *   vec_zero(), vec_set1(x), vec_load(p), vec_store(p, v) (unaligned), vec_fmadd(a, b, c)
 *                    (a * b + c, one rounding), vec_add(a, b), vec_max(a, b) (a > b ? a : b)
 *   PACK_FN, RUN_TASK_FN   the names of the two functions defined here
 *   DRIVER_VECTORS   1 where the vector operations exist (else RUN_TASK_FN is an empty stub,
 *                    never picked: gemm_kernel_runs() says 0)
 *
 * Blocking, for one task (a block of at most GEMM_MC rows by a group of NR-column panels):
 *
 *     for each block of kc rows of B (kc <= KC):
 *         for each NR-column panel of the group:     B panel, kc x NR, stays in L1
 *             for each MR rows of the task's block:  A rows, MR x kc, come from L2
 *                 C[MR x NR] (+)= A[MR x kc] . Bpanel[kc x NR]     NV MR vector accumulators
 *
 * The first block of kc starts the accumulators at zero, later ones at the partial sums in C,
 * and the last one adds the bias and the residual and applies ReLU before storing. Each element
 * of C is therefore one chain of FMAs over k in order, then + bias, + residual, max(., 0),
 * whatever the task split, the tile sizes or the vector width: every kernel built on this driver
 * gives the same bits (partial sums pass through C exactly). */
#include <stdlib.h>
#include <string.h>

#include "gemm_kernels.h"

static int panels(int n) { return (n + NR - 1) / NR; }

/* K splits into nkb blocks of kc_base rows, the last one possibly shorter. */
static void k_blocks(int k, int *nkb, int *kc_base) {
    *nkb = (k + KC - 1) / KC;
    if (*nkb < 1) *nkb = 1;
    *kc_base = (k + *nkb - 1) / *nkb;
}

/* b (k x n, leading dimension ldb) -> p->data: per block of kc rows, np panels of kc x NR, the
 * last one padded with zero columns. */
int PACK_FN(PackedB *p, const float *b, int k, int n, int ldb) {
    int np = panels(n), nkb, kc_base;
    k_blocks(k, &nkb, &kc_base);
    size_t floats = (size_t)k * np * NR;
    size_t bytes = ((floats ? floats : 1) * sizeof(float) + 63) / 64 * 64; /* aligned_alloc: a multiple */
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

#if DRIVER_VECTORS

#define VL (NR / NV) /* floats per vector */

typedef struct {
    const float *bias;     /* at the tile's first column (never NULL: zeros where there is none) */
    const float *residual; /* at the tile's first element, or NULL */
    size_t ldr;
    int relu;
} Epilogue;

/* c[mr x NR] (+)= a[mr rows][0..kc) . b[kc x NR], 1 <= mr <= MR; then the epilogue when e is not
 * NULL. Rows of a are given as pointers, so a caller may repeat a row to fill a tile. Always
 * inlined with a constant mr (below), so the NV * mr accumulators stay in registers. */
__attribute__((always_inline)) TARGET static inline void kernel_rows(int mr, int kc, const float *const a[MR],
                                                                    const float *restrict b, float *c, size_t ldc,
                                                                    int load, const Epilogue *e) {
    Vec acc[MR][NV];
UNROLL(14)
    for (int i = 0; i < mr; i++)
UNROLL(4)
        for (int v = 0; v < NV; v++) acc[i][v] = load ? vec_load(c + i * ldc + v * VL) : vec_zero();
    for (int k = 0; k < kc; k++, b += NR) {
        Vec bv[NV];
UNROLL(4)
        for (int v = 0; v < NV; v++) bv[v] = vec_load(b + v * VL);
UNROLL(14)
        for (int i = 0; i < mr; i++) {
            Vec x = vec_set1(a[i][k]);
UNROLL(4)
            for (int v = 0; v < NV; v++) acc[i][v] = vec_fmadd(x, bv[v], acc[i][v]);
        }
    }
    if (e) {
        Vec bias[NV], z = vec_zero();
UNROLL(4)
        for (int v = 0; v < NV; v++) bias[v] = vec_load(e->bias + v * VL);
UNROLL(14)
        for (int i = 0; i < mr; i++)
UNROLL(4)
            for (int v = 0; v < NV; v++) {
                acc[i][v] = vec_add(acc[i][v], bias[v]);
                if (e->residual) acc[i][v] = vec_add(acc[i][v], vec_load(e->residual + i * e->ldr + v * VL));
                if (e->relu) acc[i][v] = vec_max(acc[i][v], z);
            }
    }
UNROLL(14)
    for (int i = 0; i < mr; i++)
UNROLL(4)
        for (int v = 0; v < NV; v++) vec_store(c + i * ldc + v * VL, acc[i][v]);
}

/* The full tile: MR x NR, NV MR accumulators. */
TARGET static void kernel_full(int kc, const float *const a[MR], const float *restrict b, float *c, size_t ldc,
                               int load, const Epilogue *e) {
    kernel_rows(MR, kc, a, b, c, ldc, load, e);
}

/* 1 to MR - 1 rows left over after the full tiles (a 7x7 map at batch 1 is 49 rows; 16 Winograd
 * tiles are 16): one copy of the kernel per row count. */
TARGET static void kernel_short(int mr, int kc, const float *const a[MR], const float *restrict b, float *c,
                                size_t ldc, int load, const Epilogue *e) {
#define ROWS(n)                                                                                   \
    case n: kernel_rows(n, kc, a, b, c, ldc, load, e); break;
    switch (mr) {
        ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5)
#if MR > 6
        ROWS(6)
#endif
#if MR > 7
        ROWS(7)
#endif
#if MR > 8
        ROWS(8)
#endif
#if MR > 9
        ROWS(9)
#endif
#if MR > 10
        ROWS(10)
#endif
#if MR > 11
        ROWS(11)
#endif
#if MR > 12
        ROWS(12)
#endif
#if MR > 13
        ROWS(13)
#endif
#if MR > 14
#error "kernel_short: add the row counts up to MR - 1"
#endif
    default: break;
    }
#undef ROWS
}

/* A narrow tile (nr < NR columns: the last panel of a layer whose width is not a multiple of NR,
 * such as a classifier's) runs through an MR x NR buffer. Its epilogue is the kernel's operations
 * in the kernel's order, one element at a time. */
static void narrow_tile(const GemmJob *g, const float *const a[MR], int r, int mr, int col, int nr, int kc,
                        const float *panel, int first, int last) {
    float *c = g->c + (size_t)r * g->ldc + col;
    float buf[MR * NR] __attribute__((aligned(64)));
    memset(buf, 0, sizeof buf);
    if (!first)
        for (int i = 0; i < mr; i++) memcpy(buf + i * NR, c + (size_t)i * g->ldc, sizeof(float) * nr);
    kernel_full(kc, a, panel, buf, NR, !first, NULL);
    for (int i = 0; i < mr; i++) {
        float *dst = c + (size_t)i * g->ldc;
        const float *res = g->residual ? g->residual + (size_t)(r + i) * g->ldc + col : NULL;
        for (int j = 0; j < nr; j++) {
            float v = buf[i * NR + j];
            if (last) {
                v = v + (g->bias ? g->bias[col + j] : 0.0f);
                if (res) v = v + res[j];
                if (g->relu) v = v > 0.0f ? v : 0.0f;
            }
            dst[j] = v;
        }
    }
}

/* Row pointers of A for the tile at row r (mr rows), from column k0; rows past mr repeat row r,
 * so a short tile can run the full kernel into a buffer. */
static inline void tile_rows(const GemmJob *g, int r, int mr, int k0, const float *a[MR]) {
    for (int i = 0; i < MR; i++) a[i] = g->a + (size_t)(r + (i < mr ? i : 0)) * g->lda + k0;
}

/* C[r .. r + mr) x [col .. col + nr) (+)= A rows a[] . panel (kc rows of k), with the epilogue on
 * the last block of k: a full tile straight into C, short rows through kernel_short, a narrow
 * panel (nr < NR) through narrow_tile's buffer. */
TARGET static inline void tile(const GemmJob *g, const float *const a[MR], int r, int mr, int col, int nr, int kc,
                               const float *panel, int first, int last) {
    static const float zero_bias[NR];
    if (nr < NR) {
        narrow_tile(g, a, r, mr, col, nr, kc, panel, first, last);
        return;
    }
    size_t ldc = (size_t)g->ldc;
    Epilogue e = {g->bias ? g->bias + col : zero_bias, g->residual ? g->residual + (size_t)r * ldc + col : NULL, ldc,
                  g->relu};
    float *c = g->c + (size_t)r * ldc + col;
    if (mr < MR) {
        kernel_short(mr, kc, a, panel, c, ldc, !first, last ? &e : NULL);
        return;
    }
    if (last && r + 2 * MR <= g->m) /* the next row tile's residual and output lines, ahead of time */
        for (int i = MR; i < 2 * MR; i++) {
            if (g->residual) __builtin_prefetch(e.residual + i * ldc, 0, 3);
            __builtin_prefetch(c + i * ldc, 0, 3);
        }
    kernel_full(kc, a, panel, c, ldc, !first, last ? &e : NULL);
}

/* Task `task` of the grid (gemm_kernels.h) with NR-column panels. */
void RUN_TASK_FN(const GemmJob *g, int task) {
    int nkb, kc_base, r0, r1, j0, j1;
    k_blocks(g->b->k, &nkb, &kc_base);
    int np = panels(g->b->n), n = g->b->n, k = g->b->k;
    gemm_task_bounds(g, NR, task, &r0, &r1, &j0, &j1);
    const float *a[MR];
    if (nkb == 1) { /* one block of k: MR rows of A against every panel, so C fills row by row */
        for (int r = r0; r < r1; r += MR) {
            int mr = r1 - r < MR ? r1 - r : MR;
            tile_rows(g, r, mr, 0, a);
            for (int j = j0; j < j1; j++)
                tile(g, a, r, mr, j * NR, n - j * NR < NR ? n - j * NR : NR, k, g->b->data + (size_t)j * k * NR, 1, 1);
        }
        return;
    }
    for (int blk = 0; blk < nkb; blk++) {
        int k0 = blk * kc_base, kc = k - k0 < kc_base ? k - k0 : kc_base;
        const float *block = g->b->data + (size_t)k0 * np * NR;
        for (int j = j0; j < j1; j++) /* B panel j stays in L1 while the task's rows pass it */
            for (int r = r0; r < r1; r += MR) {
                int mr = r1 - r < MR ? r1 - r : MR;
                tile_rows(g, r, mr, k0, a);
                tile(g, a, r, mr, j * NR, n - j * NR < NR ? n - j * NR : NR, kc, block + (size_t)j * kc * NR, blk == 0,
                     blk == nkb - 1);
            }
    }
}

#undef VL

#else /* no vector operations on this architecture: never picked (gemm_kernel_runs() says 0) */

void RUN_TASK_FN(const GemmJob *g, int task) {
    (void)g;
    (void)task;
}

#endif
