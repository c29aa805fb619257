/* conv_int8.h: the int8 mode of a convolution, and the activation histograms it is calibrated
 * from.
 *
 * In int8 a convolution (all but the stem) runs as
 *
 *     q   = rint(clamp(x * inv_scale, 0, 127))        uint8, per input value (x >= 0: after ReLU)
 *     out = relu?( float(sum q . wq) * scale[co] + bias[co] (+ residual) )
 *
 * inv_scale = 1 / in_scale (float32), in_scale calibrated on training images (one per layer's
 * input); wq the batchnorm-folded weights quantised per output channel (gemm_int8.h), and
 * scale[co] = in_scale * wscale[co] (float32). The input is quantised once, then the GEMM reads it
 * directly (1x1, stride 1) or through uint8 im2col rows; no Winograd. Each step is one rounding in
 * a fixed order, so a NumPy float32 model gives the same bits (tests/test_int8.py).
 *
 * Calibration: while a convolution's hist is set, each forward pass adds its input values to a
 * histogram of INT8_HIST_BINS bins, bin = the upper 16 bits of the float32 (values <= 0 in bin 0):
 * bins about 0.8 % wide over the whole float range, so any scale can be chosen from them. */
#ifndef COVIDX_CONV_INT8_H
#define COVIDX_CONV_INT8_H

#include <stddef.h>
#include <stdint.h>

#include "layers.h"

#define INT8_HIST_BINS 32768

typedef struct ConvInt8 {
    PackedB packed;  /* the weights for an int8 kernel (packed.i8 NULL: the layer runs fp32) */
    float in_scale;  /* x ~ q * in_scale */
    float inv_scale; /* 1 / in_scale, float32 */
    float *scale;    /* (cout) in_scale * packed.wscale[co] */
    uint64_t *hist;  /* (INT8_HIST_BINS) while calibrating, else NULL */
} ConvInt8;

/* 1 when c runs in int8. */
static inline int conv_is_int8(const Conv *c) { return c->int8 && c->int8->packed.i8; }

/* Packs c's weights for an int8 kernel with this input scale (> 0, finite), or, kernel 0, drops
 * them (c runs fp32 again). 0, or -1 when out of memory (c then runs fp32). */
int conv_int8_set(Conv *c, int kernel, float in_scale);
/* Starts (on 1) or stops (on 0) collecting c's input histogram, zeroed on start. 0 or -1 (memory). */
int conv_int8_observe(Conv *c, int on);
/* Adds x (count values) to c's histogram, when collecting. */
void conv_int8_record(const Conv *c, const float *x, size_t count);
/* Frees all int8 state of c. */
void conv_int8_free(Conv *c);

/* conv2d (layers.h) in int8; scratch holds conv_int8_scratch_floats() floats. */
void conv2d_int8(const Conv *c, const float *x, int n, int h, int w, float *out, const float *residual, int relu,
                 float *scratch);
size_t conv_int8_scratch_floats(const Conv *c, int n, int h, int w);
/* x (count float32 values, the input of int8 convolution c) quantised at c's input scale into xq:
 * the bytes c's own pass makes of them (the first step of conv2d_int8). */
void conv_int8_quantize(const Conv *c, const float *x, size_t count, uint8_t *xq);
/* conv2d_int8 within a chain of int8 layers: the input given either as x (float32, quantised here)
 * or as xq_in (n, h, w, cin uint8, already quantised at c's input scale); the float32 output is
 * written to out where out is given, and, with next given (an int8 convolution reading this
 * output), also quantised at next's input scale into outq (n, ho, wo, cout uint8): the same bytes
 * next would make from the float32 output. */
void conv2d_int8_chain(const Conv *c, const float *x, const uint8_t *xq_in, int n, int h, int w, float *out,
                       uint8_t *outq, const Conv *next, const float *residual, int relu, float *scratch);

#endif
