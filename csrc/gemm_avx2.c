/* gemm_avx2.c: the AVX2 + FMA packed-weights SGEMM with its epilogue (see gemm.h).
 *
 * Blocking, for one task (a block of at most MC rows by a group of 16-column panels):
 *
 *     for each block of kc rows of B (kc <= KC):
 *         for each 16-column panel of the group:     B panel, kc x 16, stays in L1
 *             for each 6 rows of the task's block:   A rows, 6 x kc, come from L2
 *                 C[6 x 16] (+)= A[6 x kc] . Bpanel[kc x 16]     12 ymm accumulators
 *
 * The first block of kc starts the accumulators at zero, later ones at the partial sums in C,
 * and the last one adds the bias and the residual and applies ReLU before storing. Each element
 * of C is therefore summed over k in the same order whatever the task split. */
#include "gemm_kernels.h"

#include <stdlib.h>
#include <string.h>

#define MR 6    /* rows per register tile */
#define NR 16   /* columns per register tile and per packed panel (two ymm vectors) */
#define KC 256  /* rows of B per block: a 16 KiB panel, half of L1 */
#define MC GEMM_MC /* rows of A per task: 96 x KC floats = 96 KiB, within L2 */

static int panels(int n) { return (n + NR - 1) / NR; }

/* K splits into nkb blocks of kc_base rows, the last one possibly shorter. */
static void k_blocks(int k, int *nkb, int *kc_base) {
    *nkb = (k + KC - 1) / KC;
    if (*nkb < 1) *nkb = 1;
    *kc_base = (k + *nkb - 1) / *nkb;
}

int gemm_avx2_pack(PackedB *p, const float *b, int k, int n, int ldb) {
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
                const float *src = b + (size_t)(k0 + kk) * ldb + (size_t)j * NR;
                memcpy(panel + (size_t)kk * NR, src, sizeof(float) * cols);
                memset(panel + (size_t)kk * NR + cols, 0, sizeof(float) * (NR - cols));
            }
        }
    }
    p->k = k;
    p->n = n;
    p->data = data;
    return 0;
}

typedef struct {
    const float *bias;     /* at the tile's first column */
    const float *residual; /* at the tile's first element, or NULL */
    size_t ldr;
    int relu;
} Epilogue;

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TARGET __attribute__((target("avx2,fma")))

/* c[mr x 16] (+)= a[mr rows][0..kc) . b[kc x 16], 1 <= mr <= 6; then the epilogue when e is not
 * NULL. Rows of a are given as pointers, so a caller may repeat a row to fill a tile. Always
 * inlined with a constant mr (below), so the 2 * mr accumulators stay in registers. */
__attribute__((always_inline)) TARGET static inline void kernel_rows(int mr, int kc, const float *const a[MR],
                                                                    const float *restrict b, float *c, size_t ldc,
                                                                    int load, const Epilogue *e) {
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
        acc[i][0] = load ? _mm256_loadu_ps(c + i * ldc) : _mm256_setzero_ps();
        acc[i][1] = load ? _mm256_loadu_ps(c + i * ldc + 8) : _mm256_setzero_ps();
    }
    for (int k = 0; k < kc; k++, b += NR) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            __m256 x = _mm256_broadcast_ss(a[i] + k);
            acc[i][0] = _mm256_fmadd_ps(x, b0, acc[i][0]), acc[i][1] = _mm256_fmadd_ps(x, b1, acc[i][1]);
        }
    }
    if (e) {
        __m256 bias0 = _mm256_loadu_ps(e->bias), bias1 = _mm256_loadu_ps(e->bias + 8), z = _mm256_setzero_ps();
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            acc[i][0] = _mm256_add_ps(acc[i][0], bias0), acc[i][1] = _mm256_add_ps(acc[i][1], bias1);
            if (e->residual) {
                acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_loadu_ps(e->residual + i * e->ldr));
                acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_loadu_ps(e->residual + i * e->ldr + 8));
            }
            if (e->relu) acc[i][0] = _mm256_max_ps(acc[i][0], z), acc[i][1] = _mm256_max_ps(acc[i][1], z);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) _mm256_storeu_ps(c + i * ldc, acc[i][0]), _mm256_storeu_ps(c + i * ldc + 8, acc[i][1]);
}

/* The full tile: 6 x 16, 12 accumulators. */
TARGET static void kernel_6x16(int kc, const float *const a[MR], const float *restrict b, float *c, size_t ldc,
                               int load, const Epilogue *e) {
    kernel_rows(MR, kc, a, b, c, ldc, load, e);
}

/* 1 to 5 rows left over after the 6-row tiles (a 7x7 map at batch 1 is 8 tiles and 1 row; 16
 * Winograd tiles are 2 tiles and 4 rows): one copy of the kernel per row count. */
TARGET static void kernel_short(int mr, int kc, const float *const a[MR], const float *restrict b, float *c,
                                size_t ldc, int load, const Epilogue *e) {
    switch (mr) {
    case 1: kernel_rows(1, kc, a, b, c, ldc, load, e); break;
    case 2: kernel_rows(2, kc, a, b, c, ldc, load, e); break;
    case 3: kernel_rows(3, kc, a, b, c, ldc, load, e); break;
    case 4: kernel_rows(4, kc, a, b, c, ldc, load, e); break;
    default: kernel_rows(5, kc, a, b, c, ldc, load, e); break;
    }
}

/* A narrow tile (nr < 16 columns: the last panel of a layer whose width is not a multiple of 16)
 * runs through a 6 x 16 buffer; rows past mr repeat row r. Its epilogue is the same operations in
 * the same order as the kernel's. */
static void short_tile(const GemmJob *g, int r, int mr, int col, int nr, int k0, int kc, const float *panel,
                       int first, int last) {
    const float *a[MR];
    for (int i = 0; i < MR; i++) a[i] = g->a + (size_t)(r + (i < mr ? i : 0)) * g->lda + k0;
    float *c = g->c + (size_t)r * g->ldc + col;
    float buf[MR * NR] __attribute__((aligned(32)));
    memset(buf, 0, sizeof buf);
    if (!first)
        for (int i = 0; i < mr; i++) memcpy(buf + i * NR, c + (size_t)i * g->ldc, sizeof(float) * nr);
    kernel_6x16(kc, a, panel, buf, NR, !first, NULL);
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

/* Rows r0..r1 of C against one panel of B: whole 6-row tiles straight into C, then the rows left
 * over; a narrow panel (nr < 16) goes through short_tile's buffer instead. */
TARGET static void panel_rows(const GemmJob *g, int r0, int r1, int col, int nr, int k0, int kc,
                              const float *panel, int first, int last) {
    static const float zero_bias[NR];
    if (nr < NR) {
        for (int r = r0; r < r1; r += MR)
            short_tile(g, r, r1 - r < MR ? r1 - r : MR, col, nr, k0, kc, panel, first, last);
        return;
    }
    size_t lda = (size_t)g->lda, ldc = (size_t)g->ldc;
    Epilogue e = {g->bias ? g->bias + col : zero_bias, NULL, ldc, g->relu};
    int r = r0;
    for (; r + MR <= r1; r += MR) {
        const float *ar = g->a + (size_t)r * lda + k0;
        const float *a[MR] = {ar, ar + lda, ar + 2 * lda, ar + 3 * lda, ar + 4 * lda, ar + 5 * lda};
        e.residual = g->residual ? g->residual + (size_t)r * ldc + col : NULL;
        if (last && r + 2 * MR <= g->m) /* the next tile's residual and output lines, ahead of time */
            for (int i = MR; i < 2 * MR; i++) {
                if (g->residual) _mm_prefetch((const char *)(e.residual + i * ldc), _MM_HINT_T0);
                _mm_prefetch((const char *)(g->c + (size_t)(r + i) * ldc + col), _MM_HINT_T0);
            }
        kernel_6x16(kc, a, panel, g->c + (size_t)r * ldc + col, ldc, !first, last ? &e : NULL);
    }
    if (r < r1) {
        const float *a[MR];
        for (int i = 0; i < MR; i++) a[i] = g->a + (size_t)(r + (r + i < r1 ? i : 0)) * lda + k0;
        e.residual = g->residual ? g->residual + (size_t)r * ldc + col : NULL;
        kernel_short(r1 - r, kc, a, panel, g->c + (size_t)r * ldc + col, ldc, !first, last ? &e : NULL);
    }
}

/* Task `task` of the grid (gemm_kernels.h) with 16-column panels. */
void gemm_avx2_run_task(const GemmJob *g, int task) {
    int nkb, kc_base, r0, r1, j0, j1;
    k_blocks(g->b->k, &nkb, &kc_base);
    int np = panels(g->b->n), n = g->b->n, k = g->b->k;
    gemm_task_bounds(g, NR, task, &r0, &r1, &j0, &j1);
    if (nkb == 1) { /* one block of k: 6 rows of A against every panel, so C fills row by row */
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
            const float *panel = block + (size_t)j * kc * NR;
            int nr = n - j * NR < NR ? n - j * NR : NR;
            panel_rows(g, r0, r1, j * NR, nr, k0, kc, panel, blk == 0, blk == nkb - 1);
        }
    }
}

#else /* no AVX2 kernel on this architecture: callers use OpenBLAS */

void gemm_avx2_run_task(const GemmJob *g, int task) { /* never picked: gemm_kernel_runs() says 0 */
    (void)g;
    (void)task;
}

#endif
