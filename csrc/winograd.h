/* winograd.h: 3x3 stride-1 "same" convolutions as Winograd F(2x2, 3x3) (see winograd.c). */
#ifndef COVIDX_WINOGRAD_H
#define COVIDX_WINOGRAD_H

#include <stddef.h>

#include "layers.h"

#define WINO_MAX_CIN 2048

/* 0 when the environment says COVIDX_WINOGRAD=0 (then 3x3 layers use im2col + SGEMM). */
int winograd_enabled(void);
/* 1 when the layer's shape allows the transform (3x3, stride 1, pad 1). */
int winograd_eligible(const Conv *c);
/* Computes c->wino = the transformed weights (16, cin, cout) from c->w. 0, or -1 out of memory. */
int winograd_prepare(Conv *c);
/* 1 when the layer has transformed weights and the input is big enough for them to pay off. */
int winograd_worth_it(const Conv *c, int n, int h, int w);
size_t winograd_scratch_floats(const Conv *c, int n, int h, int w);
/* Same contract as conv2d for an eligible layer; scratch holds winograd_scratch_floats() floats. */
void conv2d_winograd(const Conv *c, const float *x, int n, int h, int w, float *out, const float *residual,
                     int relu, float *scratch);

#endif
