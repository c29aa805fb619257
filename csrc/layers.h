/* layers.h: the operations of the network, NHWC float32, each a small function.
 *
 * Fast versions (layers.c) run on the thread pool and OpenBLAS; plain versions (layers_ref.c) are
 * direct loops with double accumulators, kept to check the fast ones. */
#ifndef COVIDX_LAYERS_H
#define COVIDX_LAYERS_H

#include <stddef.h>

#include "gemm.h"

/* A convolution with batchnorm folded in: out = act(conv(x, w) + bias [+ residual]). */
typedef struct {
    int kh, kw, cin, cout, stride, pad; /* symmetric zero padding */
    float *w;                           /* (kh*kw*cin, cout): HWIO flattened, the GEMM's B */
    float *bias;                        /* (cout) */
    float *wino;                        /* (16, cin, cout) Winograd-transformed weights, or NULL */
    PackedB packed;                     /* w packed for the fp32 kernel (gemm.h; data NULL where OpenBLAS runs) */
    PackedB wino_packed[16];            /* the Winograd planes packed (then wino is NULL) */
    PackedB packed_bf16;                /* w packed for a bf16 kernel in the bf16 mode, else all NULL;
                                         * when present it is used, and Winograd is not */
    struct ConvInt8 *int8;              /* the int8 mode's weights and scales, and the calibration
                                         * histogram (conv_int8.h), or NULL */
    int winograd;                       /* 1 when either Winograd form is ready */
    int wino_min_tiles;                 /* use Winograd for batches with at least this many tiles */
} Conv;

/* Output size of a convolution or pooling window along one axis. */
static inline int out_size(int in, int k, int stride, int pad) { return (in + 2 * pad - k) / stride + 1; }

/* x (n, h, w, cin) -> out (n, ho, wo, cout); residual (n, ho, wo, cout) or NULL.
 * scratch holds im2col panels: conv_scratch_floats() floats. */
void conv2d(const Conv *c, const float *x, int n, int h, int w, float *out, const float *residual,
            int relu, float *scratch);
size_t conv_scratch_floats(const Conv *c, int n, int h, int w);

/* x (n, h, w, c) -> out (n, ho, wo, c): max over k x k windows, padding ignored. */
void maxpool2d(const float *x, int n, int h, int w, int c, int k, int stride, int pad, float *out);

/* x (n, h, w, c) -> out (n, h, w, c): each image standardised over all its values,
 * (x - mean) / sqrt(var + eps), mean and (biased) variance in double; Keras's
 * LayerNormalization(axis=[1, 2, 3], center=False, scale=False). */
void standardize_images(const float *x, int n, int h, int w, int c, double eps, float *out);

/* x (n, h, w, c) -> out (n, c): mean (or max) over the spatial positions. */
void global_pool(const float *x, int n, int h, int w, int c, int use_max, float *out);

/* x (n, h, w, c) -> out rows of `stride` floats, one per image: [mean (c), std (c)] of each
 * channel over the spatial positions (population std). The out-of-distribution statistics of
 * intermediate layers (unfamiliar.h) are fitted to these. */
void channel_stats(const float *x, int n, int h, int w, int c, float *out, size_t stride);

/* x (n, h, w, c) -> out rows of `stride` floats, one per image: the mean of x over each cell of a
 * g x g grid, cell after cell in row-major order, each c values (g * g * c). Cells are cut as
 * PyTorch's adaptive_avg_pool2d cuts them (rows floor(i h / g) to ceil((i + 1) h / g), overlapping
 * where g does not divide h). Keeps where features lie, which global pooling discards. One
 * version: plain loops with double accumulators, a negligible share of the pass. */
void grid_pool(const float *x, int n, int h, int w, int c, int g, float *out, size_t stride);

/* x (n, h, w, c) -> out rows of `stride` floats: each image standardised over all its values,
 * (x - mean) / sqrt(var + eps), averaged over its channels and pooled to a g x g grid as in
 * grid_pool (g * g values): a thumbnail of where the image is light and dark, whatever its
 * brightness and contrast. One version, as grid_pool. */
void thumbnail(const float *x, int n, int h, int w, int c, int g, double eps, float *out, size_t stride);

enum Activation { ACT_LINEAR = 0, ACT_RELU = 1, ACT_SOFTMAX = 2, ACT_SIGMOID = 3 };

/* x (n, cin) -> out (n, cout) = act(x . w + bias); w (cin, cout), also packed for the fp32
 * kernel (gemm.h) where packed->data is not NULL (then the packed kernel runs, else OpenBLAS). */
void dense(const float *x, int n, int cin, int cout, const float *w, const PackedB *packed, const float *bias,
           int act, float *out);

/* Plain reference versions, same shapes and meaning. */
void conv2d_ref(const Conv *c, const float *x, int n, int h, int w, float *out,
                const float *residual, int relu);
void dense_ref(const float *x, int n, int cin, int cout, const float *w, const float *bias, int act,
               float *out);
void channel_stats_ref(const float *x, int n, int h, int w, int c, float *out, size_t stride);

/* In place over rows of length c: softmax or logistic sigmoid (shared by both versions). */
void activate_rows(float *x, int n, int c, int act);

#endif
