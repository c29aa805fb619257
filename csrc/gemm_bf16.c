/* gemm_bf16.c: packing B for the bf16 kernels, and the driver they share (see gemm_bf16.h). */
#include "gemm_bf16.h"

#include <stdlib.h>

static int kpad(int k) { return (k + 31) / 32 * 32; }

/* b (k x n, leading dimension ldb) -> p->bf16, the tile layout of gemm_bf16.h. */
int gemm_bf16_pack(PackedB *p, const float *b, int k, int n, int ldb) {
    int kp = kpad(k), np = (n + BF16_NR - 1) / BF16_NR, steps = kp / 32;
    size_t elems = (size_t)np * steps * 1024;
    size_t bytes = ((elems ? elems : 1) * sizeof(uint16_t) + 63) / 64 * 64;
    uint16_t *data = aligned_alloc(64, bytes);
    if (!data) return -1;
    for (int j = 0; j < np; j++)
        for (int s = 0; s < steps; s++) {
            uint16_t *tiles = data + ((size_t)j * steps + s) * 1024;
            for (int t = 0; t < 2; t++)
                for (int r = 0; r < 16; r++)
                    for (int col = 0; col < 16; col++)
                        for (int e = 0; e < 2; e++) {
                            int kk = 32 * s + 2 * r + e, nn = 32 * j + 16 * t + col;
                            tiles[t * 512 + r * 32 + col * 2 + e] =
                                kk < k && nn < n ? bf16_round(b[(size_t)kk * ldb + nn]) : 0;
                        }
        }
    p->k = k;
    p->n = n;
    p->bf16 = data;
    return 0;
}

/* K (in k-steps of 32) splits into nkb blocks of base steps, the last one possibly shorter. */
static void k_blocks(int steps, int *nkb, int *base) {
    int per = BF16_KB / 32;
    *nkb = (steps + per - 1) / per;
    if (*nkb < 1) *nkb = 1;
    *base = (steps + *nkb - 1) / *nkb;
}

void gemm_bf16_task(const GemmJob *g, int task, Bf16BlockFn block) {
    int r0, r1, j0, j1, nkb, base;
    int k = g->b->k, n = g->b->n, steps = kpad(k) / 32;
    gemm_task_bounds(g, BF16_NR, task, &r0, &r1, &j0, &j1);
    k_blocks(steps, &nkb, &base);
    uint16_t abuf[BF16_MB * BF16_KB] __attribute__((aligned(64))); /* 64 KiB of stack */
    float cbuf[BF16_MB * BF16_NR] __attribute__((aligned(64)));
    for (int r = r0; r < r1; r += BF16_MB) {
        int mr = r1 - r < BF16_MB ? r1 - r : BF16_MB;
        for (int blk = 0; blk < nkb; blk++) {
            int s0 = blk * base, ns = steps - s0 < base ? steps - s0 : base, lda = 32 * ns;
            for (int i = 0; i < BF16_MB; i++) {
                uint16_t *dst = abuf + (size_t)i * lda;
                if (i >= mr) {
                    memset(dst, 0, sizeof(uint16_t) * lda);
                    continue;
                }
                const float *src = g->a + (size_t)(r + i) * g->lda;
                for (int q = 0; q < lda; q++) {
                    int kk = 32 * s0 + q;
                    dst[q] = kk < k ? bf16_round(src[kk]) : 0;
                }
            }
            int last = blk == nkb - 1;
            for (int j = j0; j < j1; j++) {
                int col = j * BF16_NR, nr = n - col < BF16_NR ? n - col : BF16_NR;
                memset(cbuf, 0, sizeof cbuf);
                if (blk > 0)
                    for (int i = 0; i < mr; i++)
                        memcpy(cbuf + i * BF16_NR, g->c + (size_t)(r + i) * g->ldc + col, sizeof(float) * nr);
                block(abuf, lda, g->b->bf16 + ((size_t)j * steps + s0) * 1024, ns, cbuf, mr);
                for (int i = 0; i < mr; i++) {
                    float *dst = g->c + (size_t)(r + i) * g->ldc + col;
                    const float *res = g->residual ? g->residual + (size_t)(r + i) * g->ldc + col : NULL;
                    for (int jj = 0; jj < nr; jj++) {
                        float v = cbuf[i * BF16_NR + jj];
                        if (last) {
                            v = v + (g->bias ? g->bias[col + jj] : 0.0f);
                            if (res) v = v + res[jj];
                            if (g->relu) v = v > 0.0f ? v : 0.0f;
                        }
                        dst[jj] = v;
                    }
                }
            }
        }
    }
}
