/* winograd_avx512.c: the Winograd F(2x2, 3x3) input and output transforms (winograd.c) on 512-bit
 * vectors, 16 channels at a time (the last group masked), with the output's bias, residual and
 * ReLU. The same operations in the same order as winograd.c's loops, one lane per channel: the
 * same bits.
 *
 * Written over vec512.h: built for AVX-512F here, and as the plain-C emulation by
 * winograd_avx512_emu.c (COVIDX_AVX512_EMU), which gives the same bits and runs on any CPU. */
#include "vec512.h"
#include "winograd_kernels.h"

#if V512_BUILD

static const float zeros[WINO_MAX_CIN]; /* the padding outside the image */

static Mask16 lanes(int left) { return (Mask16)(left >= 16 ? 0xffffu : (1u << left) - 1u); }

/* V[xi][t][ci .. ci + 15] = (B^T d B)[xi], B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]. */
__attribute__((always_inline)) V512_TARGET static inline void input16(const float *const d[4][4], int ci, Mask16 m,
                                                                     float *dst, size_t plane) {
    V16 u[4][4];
V512_UNROLL(4)
    for (int s = 0; s < 4; s++) { /* B^T d: combine rows */
        V16 d0 = v_maskz_load(m, d[0][s] + ci), d1 = v_maskz_load(m, d[1][s] + ci);
        V16 d2 = v_maskz_load(m, d[2][s] + ci), d3 = v_maskz_load(m, d[3][s] + ci);
        u[0][s] = v_sub(d0, d2);
        u[1][s] = v_add(d1, d2);
        u[2][s] = v_sub(d2, d1);
        u[3][s] = v_sub(d1, d3);
    }
V512_UNROLL(4)
    for (int r = 0; r < 4; r++) { /* (B^T d) B: combine columns */
        float *o = dst + (size_t)r * 4 * plane + ci;
        v_mask_store(o, m, v_sub(u[r][0], u[r][2]));
        v_mask_store(o + plane, m, v_add(u[r][1], u[r][2]));
        v_mask_store(o + 2 * plane, m, v_sub(u[r][2], u[r][1]));
        v_mask_store(o + 3 * plane, m, v_sub(u[r][1], u[r][3]));
    }
}

V512_TARGET void FN(wino_input_avx512)(const Wino *j, int a, int b) {
    int cin = j->c->cin;
    size_t plane = (size_t)j->ntiles * cin;
    for (int t = a; t < b; t++) {
        const float *d[4][4];
        wino_patch(j, t, zeros, d);
        float *dst = j->v + (size_t)t * cin;
        int ci = 0;
        for (; ci + 16 <= cin; ci += 16) input16(d, ci, 0xffff, dst, plane);
        if (ci < cin) input16(d, ci, lanes(cin - ci), dst, plane);
    }
}

/* y = A^T M A, A^T = [[1,1,1,0],[0,1,-1,-1]], + bias for channels co .. co + 15 of one tile, then
 * the residual and ReLU, stored to the pixels inside the image. full: all four inside and no
 * residual (winograd.c's tile_output_full: max(y, lo), lo = 0 or -inf); else tile_output's
 * order. */
__attribute__((always_inline)) V512_TARGET static inline void output16(const float *m, size_t plane, int co, Mask16 k,
                                                                      const float *bias, float *const dst[4],
                                                                      const float *const res[4], int relu, int full) {
    V16 mm[16];
V512_UNROLL(16)
    for (int xi = 0; xi < 16; xi++) mm[xi] = v_maskz_load(k, m + (size_t)xi * plane + co);
    V16 a0 = v_add(v_add(mm[0], mm[4]), mm[8]), a1 = v_add(v_add(mm[1], mm[5]), mm[9]);
    V16 a2 = v_add(v_add(mm[2], mm[6]), mm[10]), a3 = v_add(v_add(mm[3], mm[7]), mm[11]);
    V16 b0 = v_sub(v_sub(mm[4], mm[8]), mm[12]), b1 = v_sub(v_sub(mm[5], mm[9]), mm[13]);
    V16 b2 = v_sub(v_sub(mm[6], mm[10]), mm[14]), b3 = v_sub(v_sub(mm[7], mm[11]), mm[15]);
    V16 bs = v_maskz_load(k, bias + co);
    V16 y[4] = {v_add(v_add(v_add(a0, a1), a2), bs), v_add(v_sub(v_sub(a1, a2), a3), bs),
                v_add(v_add(v_add(b0, b1), b2), bs), v_add(v_sub(v_sub(b1, b2), b3), bs)};
    if (full) {
        V16 lo = v_set1(relu ? 0.0f : -__builtin_inff());
V512_UNROLL(4)
        for (int q = 0; q < 4; q++) v_mask_store(dst[q] + co, k, v_max(y[q], lo));
        return;
    }
    for (int q = 0; q < 4; q++) {
        if (!dst[q]) continue;
        V16 v = y[q];
        if (res[q]) v = v_add(v, v_maskz_load(k, res[q] + co));
        if (relu) v = v_max(v, v_zero());
        v_mask_store(dst[q] + co, k, v);
    }
}

V512_TARGET void FN(wino_output_avx512)(const Wino *j, int a, int b) {
    int cout = j->c->cout;
    size_t plane = (size_t)j->ntiles * cout;
    for (int t = a; t < b; t++) {
        float *dst[4];
        const float *res[4];
        wino_outputs(j, t, dst, res);
        const float *m = j->m + (size_t)t * cout;
        int full = dst[3] && !j->residual, co = 0;
        if (full) {
            for (; co + 16 <= cout; co += 16) output16(m, plane, co, 0xffff, j->c->bias, dst, res, j->relu, 1);
        } else {
            for (; co + 16 <= cout; co += 16) output16(m, plane, co, 0xffff, j->c->bias, dst, res, j->relu, 0);
        }
        if (co < cout) output16(m, plane, co, lanes(cout - co), j->c->bias, dst, res, j->relu, full);
    }
}

#else /* no AVX-512 on this architecture: never picked */

void FN(wino_input_avx512)(const Wino *j, int a, int b) {
    (void)j, (void)a, (void)b;
}
void FN(wino_output_avx512)(const Wino *j, int a, int b) {
    (void)j, (void)a, (void)b;
}

#endif
