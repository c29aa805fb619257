/* resnet50.h: the network. A ResNet50 backbone (Keras v1: stride on the block's first 1x1 conv;
 * or torchvision v1.5: stride on the 3x3 conv), a global pooling, and a head of Dense layers. */
#ifndef COVIDX_RESNET50_H
#define COVIDX_RESNET50_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "layers.h"
#include "unfamiliar.h"

#define RESNET50_NCONV 53
#define RESNET50_NBLOCKS 16
#define MAX_DENSE 16

enum Variant { VARIANT_V1 = 1, VARIANT_V1_5 = 2 };
enum Pooling { POOL_NONE = 0, POOL_AVG = 1, POOL_MAX = 2 };
enum Output { OUT_HEAD = 0, OUT_FEATURES = 1, OUT_FEATURE_MAP = 2, OUT_DESCRIPTOR = 3 };

/* An image's descriptor, what out-of-distribution statistics are fitted to: the pooled features
 * (2048), then its taps: the mean and std of each channel (channel_stats) after the stem's max
 * pool (64 channels) and at the end of each of the four stages (256, 512, 1024, 2048); the last
 * feature map pooled to a 3x3 grid (grid_pool: where things are, 9 x 2048); and a thumbnail of
 * the input (thumbnail: 8x8, standardised with epsilon 1e-5). */
#define DESCRIPTOR_TAPS 7
enum Tap { TAP_STEM = 0, TAP_STAGE4 = 4, TAP_LAYOUT = 5, TAP_THUMBNAIL = 6 };
#define LAYOUT_GRID 3
#define THUMBNAIL_GRID 8
#define THUMBNAIL_EPS 1e-5
#define DESCRIPTOR_FLOATS (2048 + 2 * (64 + 256 + 512 + 1024 + 2048) + LAYOUT_GRID * LAYOUT_GRID * 2048 + \
                           THUMBNAIL_GRID * THUMBNAIL_GRID)

/* Shape of one convolution, in canonical order: conv1, then per block _1, _2, _3, [_0]. */
typedef struct {
    int k, cin, cout, stride, pad;
} ConvShape;

typedef struct {
    Conv c1, c2, c3, proj;
    int has_proj;
} Block;

typedef struct {
    int cin, cout, act;
    float *w, *bias; /* (cin, cout), (cout) */
    PackedB packed;  /* w packed for the fp32 kernel (gemm.h; data NULL where OpenBLAS runs) */
} DenseLayer;

/* Activation buffers for one (batch, height, width); reused by every call that fits. */
typedef struct {
    int n, h, w;
    float *act[4];   /* rotating block buffers, each act_floats */
    size_t act_floats;
    uint8_t *block_q; /* (act_floats bytes) in int8: a block's input quantised once for its conv1 and
                       * projection, written by the block before it (NULL in fp32) */
    float *normalized; /* (n, h, w, 3) standardised input, where the network has that layer */
    float *scratch;  /* im2col panel */
    float *pooled;   /* (n, 2048) */
    float *descriptor; /* (n, DESCRIPTOR_FLOATS), where a pass computes it */
    float *hidden[2];
} Plan;

typedef struct {
    int variant, pooling;
    double input_norm_eps; /* > 0: each image is standardised first (standardize_images) */
    Conv conv1;
    Block blocks[RESNET50_NBLOCKS];
    DenseLayer head[MAX_DENSE];
    int nhead;
    Unfamiliar unfamiliar[UNFAMILIAR_MAX_PARTS]; /* out-of-distribution statistics, by part */
    int nunfamiliar;                             /* parts in use (0: none) */
    Plan plan;
    int sub_batch; /* images per pass through the network (0: SUB_BATCH) */
    int bf16_kernel; /* the bf16 mode's kernel (enum GemmKernel, its weights in each conv's
                      * packed_bf16), or 0 in fp32 */
    float *int8_scales; /* (RESNET50_NCONV) the calibrated scale of each convolution's input (the
                         * stem's unused; 0: the convolution stays fp32), or NULL */
    int int8_kernel;    /* the int8 mode's kernel (each conv's int8, conv_int8.h), or 0 */
} Net;

/* Fills shapes[RESNET50_NCONV] for the variant. */
void resnet50_conv_shapes(int variant, ConvShape *shapes);
/* The blocks' owning Conv structs in canonical order (pointers into net). */
void resnet50_conv_slots(Net *net, Conv **slots);

/* Folds batchnorm into a convolution, in double precision:
 *   w' = w * gamma / sqrt(var + eps),  b' = (b - mean) * gamma / sqrt(var + eps) + beta.
 * kernel is HWIO (k, k, cin, cout); bias may be NULL (no conv bias). Returns 0, -1 when out of
 * memory, -2 when a folded value is not finite. */
int conv_fold_bn(Conv *c, const ConvShape *s, const float *kernel, const float *bias,
                 const float *gamma, const float *beta, const float *mean, const float *var,
                 double eps);
/* Copies a Dense layer; returns 0, -1 when out of memory, -2 on a non-finite value. */
int dense_init(DenseLayer *d, int cin, int cout, int act, const float *w, const float *bias);

void net_free(Net *net);

/* Switches the convolutions to bf16 weights for `kernel` (a bf16 kernel: packs each conv's w into
 * packed_bf16, rounded to nearest even; the stem conv1 and the Dense head stay fp32), or back to
 * fp32 (kernel 0: drops them). 0, or -1 when out of memory (the network is then left in fp32). */
int net_set_bf16(Net *net, int kernel);

/* Output size of the final feature map for an input h x w. */
/* The int8 mode (net_int8.c): switches the convolutions after the stem to int8 weights for
 * `kernel` (an int8 kernel) with the input scales in net->int8_scales (which must be set; a
 * convolution whose scale is 0 stays fp32), or back (kernel 0). 0, or -1 when out of memory (the network is then left in fp32). */
int net_set_int8(Net *net, int kernel);
/* Starts (on 1) or stops (on 0) collecting each convolution's input histogram (conv_int8.h);
 * hist (RESNET50_NCONV x INT8_HIST_BINS) receives them on stop when not NULL. 0, or -1 when out
 * of memory (nothing is then collected). */
int net_int8_observe(Net *net, int on, uint64_t *hist);
/* Drops the buffers (the next pass sizes them again: a precision changes the scratch needed). */
void resnet50_plan_free(Net *net);

void resnet50_feature_map_size(int variant, int h, int w, int *ho, int *wo);

/* Shape of one image's output for an input h x w: (ho, wo, 2048) for a feature map, else one
 * dimension (2048 pooled features, or the last Dense layer's units). Returns the number of
 * dimensions (3 or 1) filled in dims. */
int resnet50_output_shape(const Net *net, int h, int w, int output, int dims[3]);

/* Set from a signal handler to stop a running forward pass at its next convolution; the pass
 * then returns -2 (its output is not valid). Cleared by the caller before each pass. */
extern volatile sig_atomic_t resnet50_interrupt;

/* Offset of each tap's values in the descriptor (the pooled features are at 0). */
int resnet50_descriptor_offset(int tap);

/* Replaces the out-of-distribution statistics with nparts parts (taken over: the caller's copies
 * must not be freed), or drops them (nparts 0). */
void net_set_unfamiliar(Net *net, Unfamiliar *parts, int nparts);

/* x (n, h, w, 3) -> out: OUT_HEAD (n, units of the last Dense layer, or 2048 without a head),
 * OUT_FEATURES (n, 2048) pooled, OUT_FEATURE_MAP (n, ho, wo, 2048), OUT_DESCRIPTOR (n,
 * DESCRIPTOR_FLOATS). reference != 0 runs the plain layers. scores (n) or NULL: the
 * out-of-distribution score of each image, from the same pass (needs net->unfamiliar and a
 * pooled output). Returns 0, -1 when the buffers cannot be
 * allocated, -2 when interrupted. */
int resnet50_forward(Net *net, const float *x, int n, int h, int w, int output, int reference,
                     float *out, float *scores);

#endif
