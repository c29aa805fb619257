/* layers_ref.c: the same layers as direct loops with double accumulators. Slow and obvious; the
 * tests run the whole network through these to check the GEMM/im2col/epilogue machinery. */
#include <math.h>
#include <stdlib.h>

#include "layers.h"

void conv2d_ref(const Conv *c, const float *x, int n, int h, int w, float *out,
                const float *residual, int relu) {
    int ho = out_size(h, c->kh, c->stride, c->pad), wo = out_size(w, c->kw, c->stride, c->pad);
    for (int img = 0; img < n; img++)
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++)
                for (int co = 0; co < c->cout; co++) {
                    double acc = c->bias[co];
                    for (int ky = 0; ky < c->kh; ky++) {
                        int iy = oy * c->stride - c->pad + ky;
                        if (iy < 0 || iy >= h) continue;
                        for (int kx = 0; kx < c->kw; kx++) {
                            int ix = ox * c->stride - c->pad + kx;
                            if (ix < 0 || ix >= w) continue;
                            const float *px = x + (((size_t)img * h + iy) * w + ix) * c->cin;
                            const float *wk = c->w + ((size_t)(ky * c->kw + kx) * c->cin) * c->cout + co;
                            for (int ci = 0; ci < c->cin; ci++) acc += (double)px[ci] * wk[(size_t)ci * c->cout];
                        }
                    }
                    size_t o = (((size_t)img * ho + oy) * wo + ox) * c->cout + co;
                    if (residual) acc += residual[o];
                    out[o] = (float)(relu && acc < 0.0 ? 0.0 : acc);
                }
}

void dense_ref(const float *x, int n, int cin, int cout, const float *w, const float *bias, int act,
               float *out) {
    for (int r = 0; r < n; r++)
        for (int j = 0; j < cout; j++) {
            double acc = bias[j];
            for (int i = 0; i < cin; i++) acc += (double)x[(size_t)r * cin + i] * w[(size_t)i * cout + j];
            out[(size_t)r * cout + j] = (float)(act == ACT_RELU && acc < 0.0 ? 0.0 : acc);
        }
    activate_rows(out, n, cout, act);
}

void channel_stats_ref(const float *x, int n, int h, int w, int c, float *out, size_t stride) {
    size_t hw = (size_t)h * w;
    for (int img = 0; img < n; img++) {
        const float *s = x + (size_t)img * hw * c;
        for (int ch = 0; ch < c; ch++) {
            double mean = 0.0, var = 0.0;
            for (size_t p = 0; p < hw; p++) mean += s[p * c + ch];
            mean /= (double)hw;
            for (size_t p = 0; p < hw; p++) var += (s[p * c + ch] - mean) * (s[p * c + ch] - mean);
            out[(size_t)img * stride + ch] = (float)mean;
            out[(size_t)img * stride + c + ch] = (float)sqrt(var / (double)hw);
        }
    }
}
