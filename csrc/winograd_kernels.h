/* winograd_kernels.h: one chunk of a Winograd convolution, and the transform functions each
 * instruction set gives winograd.c. Private to winograd*.c.
 *
 * Every version computes each value with the same operations in the same order (adds, subtracts
 * and max only, never contracted into FMAs), so all of them give the same bits; winograd.c picks
 * the version that matches the layer's GEMM kernel (AVX-512 for the AVX-512 kernel, the emulated
 * build for the emulated kernel, else the AVX2 / baseline loops). */
#ifndef COVIDX_WINOGRAD_KERNELS_H
#define COVIDX_WINOGRAD_KERNELS_H

#include "winograd.h"

typedef struct {
    const Conv *c;
    const float *x, *residual;
    float *out, *v, *m; /* V (16, ntiles, cin) and M (16, ntiles, cout) of the chunk */
    int h, w, th, tw, t0, ntiles;
    int relu;
    int gemm_tasks; /* tasks per GEMM, with the packed kernel */
} Wino;

/* Tiles [a, b) of the chunk: V = B^T d B (input), or y = A^T M A + bias (+ residual) (ReLU)
 * written to the output pixels inside the image (output). */
typedef void (*WinoTilesFn)(const Wino *j, int a, int b);

void wino_input_avx512(const Wino *j, int a, int b);
void wino_output_avx512(const Wino *j, int a, int b);
void wino_input_avx512_emu(const Wino *j, int a, int b);
void wino_output_avx512_emu(const Wino *j, int a, int b);

/* The tile's 4x4 input patch: d[r][s] points at the cin channels of input pixel (2 ty - 1 + r,
 * 2 tx - 1 + s), or at zeros outside the image. */
static inline void wino_patch(const Wino *j, int t, const float *zeros, const float *d[4][4]) {
    int tile = j->t0 + t, per_img = j->th * j->tw;
    int img = tile / per_img, ty = tile % per_img / j->tw, tx = tile % j->tw;
    for (int r = 0; r < 4; r++)
        for (int s = 0; s < 4; s++) {
            int iy = 2 * ty - 1 + r, ix = 2 * tx - 1 + s;
            d[r][s] = (iy < 0 || iy >= j->h || ix < 0 || ix >= j->w)
                          ? zeros : j->x + (((size_t)img * j->h + iy) * j->w + ix) * j->c->cin;
        }
}

/* The tile's 2x2 output pixels: dst[k] (k = 2 dy + dx) and res[k], or NULL outside the image. */
static inline void wino_outputs(const Wino *j, int t, float *dst[4], const float *res[4]) {
    int tile = j->t0 + t, per_img = j->th * j->tw, cout = j->c->cout;
    int img = tile / per_img, ty = tile % per_img / j->tw, tx = tile % j->tw;
    for (int k = 0; k < 4; k++) {
        int oy = 2 * ty + k / 2, ox = 2 * tx + k % 2;
        size_t at = (((size_t)img * j->h + oy) * j->w + ox) * cout;
        int inside = oy < j->h && ox < j->w;
        dst[k] = inside ? j->out + at : NULL;
        res[k] = inside && j->residual ? j->residual + at : NULL;
    }
}

#endif
