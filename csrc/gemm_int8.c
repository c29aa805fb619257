/* gemm_int8.c: packing B for the int8 kernels, and the driver they share (see gemm_int8.h). */
#include "gemm_int8.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int kpad(int k) { return (k + 3) / 4 * 4; }

/* b (k x n, leading dimension ldb) -> p->i8 (layout of gemm_int8.h) and p->wscale. */
int gemm_int8_pack(PackedB *p, const float *b, int k, int n, int ldb) {
    int kp = kpad(k), np = (n + I8_NR - 1) / I8_NR;
    size_t bytes = ((size_t)np * kp * I8_NR + 63) / 64 * 64;
    int8_t *data = aligned_alloc(64, bytes ? bytes : 64);
    float *ws = malloc(sizeof(float) * (n > 0 ? n : 1));
    if (!data || !ws) {
        free(data);
        free(ws);
        return -1;
    }
    memset(data, 0, bytes ? bytes : 64);
    for (int col = 0; col < n; col++) {
        float amax = 0.0f;
        for (int kk = 0; kk < k; kk++) {
            float v = fabsf(b[(size_t)kk * ldb + col]);
            amax = v > amax ? v : amax;
        }
        float s = amax / (float)I8_WMAX;
        ws[col] = s;
        int8_t *panel = data + (size_t)(col / I8_NR) * kp * I8_NR;
        for (int kk = 0; s > 0.0f && kk < k; kk++) {
            float q = nearbyintf(b[(size_t)kk * ldb + col] / s); /* round half to even */
            q = q > (float)I8_WMAX ? (float)I8_WMAX : q < -(float)I8_WMAX ? -(float)I8_WMAX : q;
            panel[(size_t)(kk / 4) * 128 + (col % I8_NR) * 4 + kk % 4] = (int8_t)q;
        }
    }
    p->k = k;
    p->n = n;
    p->i8 = data;
    p->wscale = ws;
    return 0;
}

void gemm_int8_task(const GemmI8Job *j, int task, I8BlockFn block, I8EpilogueFn epilogue) {
    const GemmJob *g = &j->g;
    int r0, r1, j0, j1;
    int k = g->b->k, n = g->b->n, kp = kpad(k), kg = k / 4, tail = k % 4;
    gemm_task_bounds(g, I8_NR, task, &r0, &r1, &j0, &j1);
    int rows = r1 - r0;
    const uint8_t *a = j->a + (size_t)r0 * j->lda;
    int32_t acc[GEMM_MC * I8_NR] __attribute__((aligned(64)));
    for (int pj = j0; pj < j1; pj++) {
        int col = pj * I8_NR, nr = n - col < I8_NR ? n - col : I8_NR;
        const int8_t *panel = g->b->i8 + (size_t)pj * kp * I8_NR;
        if (kg == 0) /* k < 4: only the tail below adds to the sums */
            memset(acc, 0, sizeof(int32_t) * (size_t)rows * I8_NR);
        for (int g0 = 0; g0 < kg; g0 += I8_KC / 4) { /* a block of B stays in L1 while the rows pass */
            int ng = kg - g0 < I8_KC / 4 ? kg - g0 : I8_KC / 4;
            for (int r = 0; r < rows; r += I8_MB)
                block(a + (size_t)r * j->lda + 4 * (size_t)g0, j->lda, panel + (size_t)g0 * 128, ng, acc + r * I8_NR,
                      rows - r < I8_MB ? rows - r : I8_MB, g0 > 0);
        }
        for (int i = 0; tail && i < rows; i++) /* the last k % 4 values of k */
            for (int jj = 0; jj < nr; jj++)
                for (int t = 0; t < tail; t++)
                    acc[i * I8_NR + jj] +=
                        (int32_t)a[(size_t)i * j->lda + 4 * kg + t] * panel[(size_t)kg * 128 + jj * 4 + t];
        size_t at = (size_t)r0 * g->ldc + col;
        epilogue(acc, rows, nr, j->scale + col, g->bias ? g->bias + col : NULL, g->residual ? g->residual + at : NULL,
                 g->ldc, g->relu, g->c ? g->c + at : NULL, j->cq ? j->cq + at : NULL, j->out_inv);
    }
}
