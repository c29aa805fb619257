/* resnet50.c: weights at load time, one buffer plan per input shape, and the forward pass. */
#include "resnet50.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "conv_int8.h"
#include "winograd.h"

static const int STAGE_FILTERS[4] = {64, 128, 256, 512};
static const int STAGE_BLOCKS[4] = {3, 4, 6, 3};
static const int STAGE_STRIDE[4] = {1, 2, 2, 2};

void resnet50_conv_shapes(int variant, ConvShape *s) {
    int i = 0, cin = 64;
    s[i++] = (ConvShape){7, 3, 64, 2, 3};
    for (int st = 0; st < 4; st++) {
        int f = STAGE_FILTERS[st];
        for (int b = 0; b < STAGE_BLOCKS[st]; b++) {
            int stride = b == 0 ? STAGE_STRIDE[st] : 1;
            int s1 = variant == VARIANT_V1 ? stride : 1, s2 = variant == VARIANT_V1 ? 1 : stride;
            s[i++] = (ConvShape){1, cin, f, s1, 0};
            s[i++] = (ConvShape){3, f, f, s2, 1};
            s[i++] = (ConvShape){1, f, 4 * f, 1, 0};
            if (b == 0) s[i++] = (ConvShape){1, cin, 4 * f, stride, 0};
            cin = 4 * f;
        }
    }
}

void resnet50_conv_slots(Net *net, Conv **slots) {
    int i = 0;
    slots[i++] = &net->conv1;
    for (int b = 0; b < RESNET50_NBLOCKS; b++) {
        Block *bl = &net->blocks[b];
        slots[i++] = &bl->c1;
        slots[i++] = &bl->c2;
        slots[i++] = &bl->c3;
        bl->has_proj = b == 0 || b == 3 || b == 7 || b == 13; /* first block of each stage */
        if (bl->has_proj) slots[i++] = &bl->proj;
    }
}

int conv_fold_bn(Conv *c, const ConvShape *s, const float *kernel, const float *bias,
                 const float *gamma, const float *beta, const float *mean, const float *var,
                 double eps) {
    size_t k = (size_t)s->k * s->k * s->cin;
    c->kh = c->kw = s->k;
    c->cin = s->cin;
    c->cout = s->cout;
    c->stride = s->stride;
    c->pad = s->pad;
    c->w = malloc(sizeof(float) * k * s->cout);
    c->bias = malloc(sizeof(float) * s->cout);
    if (!c->w || !c->bias) return -1;
    for (int o = 0; o < s->cout; o++) {
        double scale = (double)gamma[o] / sqrt((double)var[o] + eps);
        double b = ((bias ? (double)bias[o] : 0.0) - mean[o]) * scale + beta[o];
        if (!isfinite(scale) || !(fabs(b) <= FLT_MAX)) return -2; /* also past float32 once folded */
        c->bias[o] = (float)b;
        for (size_t r = 0; r < k; r++) {
            double v = (double)kernel[r * s->cout + o] * scale;
            if (!(fabs(v) <= FLT_MAX)) return -2;
            c->w[r * s->cout + o] = (float)v;
        }
    }
    if (gemm_available() && gemm_pack(&c->packed, c->w, (int)k, c->cout, c->cout) != 0) return -1;
    if (winograd_enabled() && winograd_eligible(c)) return winograd_prepare(c);
    return 0;
}

int dense_init(DenseLayer *d, int cin, int cout, int act, const float *w, const float *bias) {
    d->cin = cin;
    d->cout = cout;
    d->act = act;
    d->w = malloc(sizeof(float) * (size_t)cin * cout);
    d->bias = malloc(sizeof(float) * cout);
    if (!d->w || !d->bias) return -1;
    for (size_t i = 0; i < (size_t)cin * cout; i++)
        if (!isfinite(w[i])) return -2;
    for (int i = 0; i < cout; i++)
        if (!isfinite(bias[i])) return -2;
    memcpy(d->w, w, sizeof(float) * (size_t)cin * cout);
    memcpy(d->bias, bias, sizeof(float) * cout);
    if (gemm_available() && gemm_pack(&d->packed, d->w, cin, cout, cout) != 0) return -1;
    return 0;
}

static void plan_free(Plan *p) {
    for (int i = 0; i < 4; i++) free(p->act[i]);
    free(p->block_q);
    free(p->normalized);
    free(p->scratch);
    free(p->pooled);
    free(p->descriptor);
    free(p->hidden[0]);
    free(p->hidden[1]);
    memset(p, 0, sizeof(*p));
}

void resnet50_plan_free(Net *net) { plan_free(&net->plan); }

void net_free(Net *net) {
    Conv *slots[RESNET50_NCONV];
    resnet50_conv_slots(net, slots);
    for (int i = 0; i < RESNET50_NCONV; i++) {
        free(slots[i]->w);
        free(slots[i]->bias);
        free(slots[i]->wino);
        gemm_pack_free(&slots[i]->packed);
        gemm_pack_free(&slots[i]->packed_bf16);
        conv_int8_free(slots[i]);
        for (int xi = 0; xi < 16; xi++) gemm_pack_free(&slots[i]->wino_packed[xi]);
    }
    for (int i = 0; i < MAX_DENSE; i++) { /* all slots: a layer that failed to load may hold memory */
        free(net->head[i].w);
        free(net->head[i].bias);
        gemm_pack_free(&net->head[i].packed);
    }
    net_set_unfamiliar(net, NULL, 0);
    free(net->int8_scales);
    plan_free(&net->plan);
}

void net_set_unfamiliar(Net *net, Unfamiliar *parts, int nparts) {
    for (int i = 0; i < net->nunfamiliar; i++) unfamiliar_free(&net->unfamiliar[i]);
    for (int i = 0; i < nparts; i++) net->unfamiliar[i] = parts[i];
    net->nunfamiliar = nparts;
}

/* Floats each tap adds to the descriptor (resnet50.h). */
static const int TAP_FLOATS[DESCRIPTOR_TAPS] = {2 * 64, 2 * 256, 2 * 512, 2 * 1024, 2 * 2048,
                                                LAYOUT_GRID * LAYOUT_GRID * 2048, THUMBNAIL_GRID * THUMBNAIL_GRID};

int resnet50_descriptor_offset(int tap) {
    int off = 2048;
    for (int t = 0; t < tap; t++) off += TAP_FLOATS[t];
    return off;
}

int net_set_bf16(Net *net, int kernel) {
    Conv *slots[RESNET50_NCONV];
    resnet50_conv_slots(net, slots);
    for (int i = 0; i < RESNET50_NCONV; i++) gemm_pack_free(&slots[i]->packed_bf16);
    net->bf16_kernel = 0;
    plan_free(&net->plan); /* Winograd layers now need im2col scratch (or the other way round) */
    if (!kernel) return 0;
    /* slot 0, the stem (7x7x3, 1.5 % of the arithmetic), stays fp32: it reads the image itself,
     * and rounding the pixels to bf16 moved the shipped model's probabilities by up to 0.05 on
     * test X-rays, against 0.015 with the stem in fp32 (BENCHMARKS.md, 2026-12-02) */
    for (int i = 1; i < RESNET50_NCONV; i++) {
        Conv *c = slots[i];
        if (gemm_pack_kernel(&c->packed_bf16, kernel, c->w, c->kh * c->kw * c->cin, c->cout, c->cout) != 0) {
            for (int j = 0; j <= i; j++) gemm_pack_free(&slots[j]->packed_bf16);
            return -1;
        }
    }
    net->bf16_kernel = kernel;
    return 0;
}

void resnet50_feature_map_size(int variant, int h, int w, int *ho, int *wo) {
    (void)variant; /* both variants downsample alike */
    h = out_size(out_size(h, 7, 2, 3), 3, 2, 1);
    w = out_size(out_size(w, 7, 2, 3), 3, 2, 1);
    for (int st = 1; st < 4; st++) {
        h = out_size(h, 1, 2, 0);
        w = out_size(w, 1, 2, 0);
    }
    *ho = h;
    *wo = w;
}

/* Walks the layer shapes for one image of h x w: the largest activation and im2col panel. */
static void plan_sizes(Net *net, int n, int h, int w, size_t *act, size_t *scratch) {
    size_t a = 0, s = 0;
#define SEE_ACT(hh, ww, cc) a = (size_t)(hh) * (ww) * (cc) > a ? (size_t)(hh) * (ww) * (cc) : a
#define SEE_CONV(conv, hh, ww) s = conv_scratch_floats(conv, n, hh, ww) > s ? conv_scratch_floats(conv, n, hh, ww) : s
    SEE_CONV(&net->conv1, h, w);
    h = out_size(h, 7, 2, 3), w = out_size(w, 7, 2, 3);
    SEE_ACT(h, w, 64);
    h = out_size(h, 3, 2, 1), w = out_size(w, 3, 2, 1);
    for (int b = 0; b < RESNET50_NBLOCKS; b++) {
        Block *bl = &net->blocks[b];
        const Conv *cs[4] = {&bl->c1, &bl->c2, &bl->c3, &bl->proj};
        int hh = h, ww = w;
        for (int i = 0; i < 3; i++) {
            SEE_CONV(cs[i], hh, ww);
            hh = out_size(hh, cs[i]->kh, cs[i]->stride, cs[i]->pad);
            ww = out_size(ww, cs[i]->kw, cs[i]->stride, cs[i]->pad);
            SEE_ACT(hh, ww, cs[i]->cout);
        }
        if (bl->has_proj) SEE_CONV(&bl->proj, h, w);
        h = hh, w = ww;
    }
#undef SEE_ACT
#undef SEE_CONV
    *act = a * n;
    *scratch = s;
}

/* Makes sure the buffers fit a batch of n images of h x w: a plan for a larger batch of the same
 * size is reused as it is. Returns 0, or -1 when out of memory. */
static int plan_ensure(Net *net, int n, int h, int w) {
    Plan *p = &net->plan;
    if (p->act[0] && p->h == h && p->w == w && p->n >= n) return 0;
    plan_free(p);
    size_t act, scratch;
    plan_sizes(net, n, h, w, &act, &scratch);
    int units = 2048;
    for (int i = 0; i < net->nhead; i++) units = net->head[i].cout > units ? net->head[i].cout : units;
    for (int i = 0; i < 4; i++) p->act[i] = malloc(sizeof(float) * act);
    p->scratch = malloc(sizeof(float) * (scratch ? scratch : 1));
    p->block_q = net->int8_kernel ? malloc(act) : NULL;
    p->normalized = net->input_norm_eps > 0.0 ? malloc(sizeof(float) * (size_t)n * h * w * 3) : NULL;
    p->pooled = malloc(sizeof(float) * (size_t)n * 2048);
    p->descriptor = malloc(sizeof(float) * (size_t)n * DESCRIPTOR_FLOATS);
    p->hidden[0] = malloc(sizeof(float) * (size_t)n * units);
    p->hidden[1] = malloc(sizeof(float) * (size_t)n * units);
    int ok = p->scratch && (p->block_q || !net->int8_kernel) && p->pooled && p->descriptor && p->hidden[0] && p->hidden[1] && (p->normalized || net->input_norm_eps <= 0.0);
    for (int i = 0; i < 4; i++) ok = ok && p->act[i];
    if (!ok) {
        plan_free(p);
        return -1;
    }
    p->n = n, p->h = h, p->w = w;
    p->act_floats = act;
    return 0;
}

#ifndef SUB_BATCH
#define SUB_BATCH 32 /* measured at batch 32: 1.03-1.12x slices of 8 (BENCHMARKS.md) */
#endif

volatile sig_atomic_t resnet50_interrupt = 0;

/* One convolution, fast or plain (none once the pass is interrupted). */
static void run_conv(const Conv *c, const float *x, int n, int h, int w, float *out,
                     const float *residual, int relu, float *scratch, int reference) {
    if (resnet50_interrupt) return;
    if (c->int8 && c->int8->hist) conv_int8_record(c, x, (size_t)n * h * w * c->cin); /* int8 calibration */
    if (reference)
        conv2d_ref(c, x, n, h, w, out, residual, relu);
    else
        conv2d(c, x, n, h, w, out, residual, relu, scratch);
}

/* The statistics of one channel-statistics tap's activations x (n, h, w, c) into the descriptor rows. */
static void tap(const Plan *p, int t, const float *x, int n, int h, int w, int c, int reference) {
    float *dst = p->descriptor + resnet50_descriptor_offset(t);
    (reference ? channel_stats_ref : channel_stats)(x, n, h, w, c, dst, DESCRIPTOR_FLOATS);
}

/* The taps the scores read (bit t: tap t), from where each part's slice lies. */
static unsigned taps_read_by_scores(const Net *net) {
    unsigned mask = 0;
    for (int t = 0; t < DESCRIPTOR_TAPS; t++) {
        int lo = resnet50_descriptor_offset(t), hi = lo + TAP_FLOATS[t];
        for (int i = 0; i < net->nunfamiliar; i++) {
            const Unfamiliar *u = &net->unfamiliar[i];
            if (u->offset < hi && u->offset + u->span > lo) mask |= 1u << t;
        }
    }
    return mask;
}

/* 1 when a block's three convolutions run in int8 as one chain (conv2d_int8_chain): all int8, not
 * the plain reference pass, and none collecting calibration histograms (those read float32 inputs). */
static int int8_chain(const Block *bl, int reference) {
    const Conv *cs[3] = {&bl->c1, &bl->c2, &bl->c3};
    if (reference) return 0;
    for (int i = 0; i < 3; i++)
        if (!conv_is_int8(cs[i]) || cs[i]->int8->hist) return 0;
    return 1;
}

/* 1 when a block's projection reads the same bytes as its conv1 (both int8 at the same input
 * scale, as calibrating them on the same input gives): it reads the block's input quantised once. */
static int proj_shares_input(const Block *bl) {
    return bl->has_proj && conv_is_int8(&bl->proj) && !bl->proj.int8->hist &&
           bl->proj.int8->inv_scale == bl->c1.int8->inv_scale;
}

static int forward_batch(Net *net, const float *x, int n, int h, int w, int output, int reference,
                         float *out, float *scores) {
    if (plan_ensure(net, n, h, w) != 0) return -1;
    Plan *p = &net->plan;
    float **buf = p->act;
    unsigned taps = output == OUT_DESCRIPTOR ? (1u << DESCRIPTOR_TAPS) - 1 : scores ? taps_read_by_scores(net) : 0;

    /* the input's thumbnail (n, 8 x 8), from the image as given */
    if (taps & (1u << TAP_THUMBNAIL))
        thumbnail(x, n, h, w, 3, THUMBNAIL_GRID, THUMBNAIL_EPS, p->descriptor + resnet50_descriptor_offset(TAP_THUMBNAIL),
                  DESCRIPTOR_FLOATS);

    /* input standardisation (n, h, w, 3), where the network begins with it */
    if (net->input_norm_eps > 0.0) {
        standardize_images(x, n, h, w, 3, net->input_norm_eps, p->normalized);
        x = p->normalized;
    }

    /* stem: 7x7/2 conv + BN + ReLU (n, h/2, w/2, 64), then 3x3/2 max pool (n, h/4, w/4, 64) */
    run_conv(&net->conv1, x, n, h, w, buf[0], NULL, 1, p->scratch, reference);
    h = out_size(h, 7, 2, 3), w = out_size(w, 7, 2, 3);
    maxpool2d(buf[0], n, h, w, 64, 3, 2, 1, buf[1]);
    h = out_size(h, 3, 2, 1), w = out_size(w, 3, 2, 1);
    int cur = 1, c = 64;
    if (taps & (1u << TAP_STEM)) tap(p, TAP_STEM, buf[1], n, h, w, 64, reference);

    /* 16 bottleneck blocks: out = relu(conv3(relu(conv2(relu(conv1(x))))) + shortcut(x)) */
    int block_q_ready = 0; /* p->block_q holds buf[cur] quantised for this block (int8 chains) */
    for (int b = 0; b < RESNET50_NBLOCKS; b++) {
        Block *bl = &net->blocks[b];
        int t1 = (cur + 1) & 3, t2 = (cur + 2) & 3, sc = (cur + 3) & 3;
        int h1 = out_size(h, 1, bl->c1.stride, 0), w1 = out_size(w, 1, bl->c1.stride, 0);
        int h2 = out_size(h1, 3, bl->c2.stride, 1), w2 = out_size(w1, 3, bl->c2.stride, 1);
        const float *shortcut = buf[cur];
        if (int8_chain(bl, reference)) {
            /* conv1 and conv2 write their outputs quantised for the next layer (uint8 in the same
             * buffers): the same bytes as quantising their float32 outputs, without them. The
             * block's input is quantised once (by the block before, beside its float32 output) for
             * conv1 and, at the same scale, the projection. */
            uint8_t *q1 = (uint8_t *)buf[t1], *q2 = (uint8_t *)buf[t2];
            if (resnet50_interrupt) return -2;
            if (!block_q_ready) conv_int8_quantize(&bl->c1, buf[cur], (size_t)n * h * w * bl->c1.cin, p->block_q);
            conv2d_int8_chain(&bl->c1, NULL, p->block_q, n, h, w, NULL, q1, &bl->c2, NULL, 1, p->scratch);
            conv2d_int8_chain(&bl->c2, NULL, q1, n, h1, w1, NULL, q2, &bl->c3, NULL, 1, p->scratch);
            if (bl->has_proj) {
                if (proj_shares_input(bl))
                    conv2d_int8_chain(&bl->proj, NULL, p->block_q, n, h, w, buf[sc], NULL, NULL, NULL, 0, p->scratch);
                else
                    run_conv(&bl->proj, buf[cur], n, h, w, buf[sc], NULL, 0, p->scratch, reference);
                shortcut = buf[sc];
            }
            if (resnet50_interrupt) return -2;
            const Conv *next = b + 1 < RESNET50_NBLOCKS && int8_chain(&net->blocks[b + 1], reference)
                                   ? &net->blocks[b + 1].c1 : NULL;
            conv2d_int8_chain(&bl->c3, NULL, q2, n, h2, w2, buf[t1], next ? p->block_q : NULL, next, shortcut, 1,
                              p->scratch);
            block_q_ready = next != NULL;
        } else {
            block_q_ready = 0;
            run_conv(&bl->c1, buf[cur], n, h, w, buf[t1], NULL, 1, p->scratch, reference);
            run_conv(&bl->c2, buf[t1], n, h1, w1, buf[t2], NULL, 1, p->scratch, reference);
            if (bl->has_proj) {
                run_conv(&bl->proj, buf[cur], n, h, w, buf[sc], NULL, 0, p->scratch, reference);
                shortcut = buf[sc];
            }
            run_conv(&bl->c3, buf[t2], n, h2, w2, buf[t1], shortcut, 1, p->scratch, reference);
        }
        cur = t1, h = h2, w = w2, c = bl->c3.cout;
        int t = b == 2 ? 1 : b == 6 ? 2 : b == 12 ? 3 : b == 15 ? 4 : 0; /* the last block of a stage */
        if (t && (taps & (1u << t))) tap(p, t, buf[cur], n, h, w, c, reference);
    }
    /* the last feature map on a 3x3 grid (n, 9 x 2048) */
    if (taps & (1u << TAP_LAYOUT))
        grid_pool(buf[cur], n, h, w, c, LAYOUT_GRID, p->descriptor + resnet50_descriptor_offset(TAP_LAYOUT),
                  DESCRIPTOR_FLOATS);
    if (resnet50_interrupt) return -2;
    if (output == OUT_FEATURE_MAP || (net->pooling == POOL_NONE && output == OUT_HEAD)) {
        memcpy(out, buf[cur], sizeof(float) * (size_t)n * h * w * c);
        return 0;
    }

    /* global pooling (n, 2048), then the Dense head */
    global_pool(buf[cur], n, h, w, c, net->pooling == POOL_MAX, p->pooled);
    if (scores || output == OUT_DESCRIPTOR) { /* the out-of-distribution score, from the same pass */
        for (int i = 0; i < n; i++)
            memcpy(p->descriptor + (size_t)i * DESCRIPTOR_FLOATS, p->pooled + (size_t)i * 2048, sizeof(float) * 2048);
        if (scores)
            (reference ? unfamiliar_score_ref : unfamiliar_score)(net->unfamiliar, net->nunfamiliar, p->descriptor,
                                                                  DESCRIPTOR_FLOATS, n, scores);
    }
    if (output == OUT_DESCRIPTOR) {
        memcpy(out, p->descriptor, sizeof(float) * (size_t)n * DESCRIPTOR_FLOATS);
        return 0;
    }
    if (output == OUT_FEATURES || net->nhead == 0) {
        memcpy(out, p->pooled, sizeof(float) * (size_t)n * c);
        return 0;
    }
    const float *in = p->pooled;
    for (int i = 0; i < net->nhead; i++) {
        DenseLayer *d = &net->head[i];
        float *dst = i == net->nhead - 1 ? out : p->hidden[i & 1];
        if (reference)
            dense_ref(in, n, d->cin, d->cout, d->w, d->bias, d->act, dst);
        else
            dense(in, n, d->cin, d->cout, d->w, &d->packed, d->bias, d->act, dst);
        in = dst;
    }
    return 0;
}

int resnet50_output_shape(const Net *net, int h, int w, int output, int dims[3]) {
    if (output == OUT_FEATURE_MAP || (net->pooling == POOL_NONE && output == OUT_HEAD)) {
        resnet50_feature_map_size(net->variant, h, w, &dims[0], &dims[1]);
        dims[2] = 2048;
        return 3;
    }
    dims[0] = output == OUT_DESCRIPTOR ? DESCRIPTOR_FLOATS
              : output == OUT_FEATURES || net->nhead == 0 ? 2048 : net->head[net->nhead - 1].cout;
    return 1;
}

/* Large batches go through in slices of at most sub_batch images: every image is computed
 * independently, and the buffers stay bounded whatever the batch. */
int resnet50_forward(Net *net, const float *x, int n, int h, int w, int output, int reference,
                     float *out, float *scores) {
    int dims[3];
    size_t in_per = (size_t)h * w * 3, out_per = 1;
    for (int i = 0, nd = resnet50_output_shape(net, h, w, output, dims); i < nd; i++) out_per *= (size_t)dims[i];
    int sub = net->sub_batch > 0 ? net->sub_batch : SUB_BATCH;
    for (int i0 = 0; i0 < n; i0 += sub) {
        int m = n - i0 < sub ? n - i0 : sub;
        int rc = forward_batch(net, x + i0 * in_per, m, h, w, output, reference, out + i0 * out_per,
                               scores ? scores + i0 : NULL);
        if (rc != 0) return rc;
    }
    return 0;
}
