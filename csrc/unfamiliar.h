/* unfamiliar.h: how unlike the training images an input is, from what the network computed.
 *
 * The network's descriptor of an image (resnet50.h, DESCRIPTOR_FLOATS) holds its pooled features,
 * the mean and std of every channel at the stem and at the end of each stage, the last feature map
 * on a 3x3 grid and a thumbnail of the input. Each part of
 * the statistics is a Gaussian model of one slice f (d values from `offset`) of it: one mean per
 * class (or one for all) with a covariance shared by the classes (Lee et al., NeurIPS 2018),
 * modelled as probabilistic PCA: r principal directions V (d, r) with variances lambda_j, and one
 * variance sigma2 for everything orthogonal to them:
 *
 *     g = f - mu_c,  q = V^T g,  d2_c = sum_j q_j^2 / lambda_j + (|g|^2 - |q|^2) / sigma2
 *     score_part = sqrt(min_c d2_c) / threshold
 *     score = max over parts of score_part          (> 1: beyond a fitted threshold)
 *
 * A part may first project its slice cell by cell (the 3x3 grid of the last feature map: 9 cells
 * of 2048 channels): each cell's cin values x -> P^T (x - m), cout values (P (cin, cout): the
 * leading principal directions of the cells), so that f holds cells * cout values. Where things
 * lie in the image then costs a Gaussian over hundreds of values, not tens of thousands.
 *
 * Everything after the features is computed in double: the residual |g|^2 - |q|^2 is a
 * difference of two close numbers. */
#ifndef COVIDX_UNFAMILIAR_H
#define COVIDX_UNFAMILIAR_H

#include <stddef.h>

#define UNFAMILIAR_MAX_PARTS 8
#define UNFAMILIAR_MAX_PROJECTED 2048 /* cells * cout of a projected part */

typedef struct {
    int offset;          /* where its slice starts in the descriptor */
    int span;            /* how many descriptor values it reads: d, or cells * cin where projected */
    int d, r, k;         /* feature size, principal directions, classes; d == 0: no statistics */
    float *basis;        /* V (d, r), row-major */
    double *inv_var;     /* 1 / lambda (r) */
    double inv_resid;    /* 1 / sigma2 */
    float *means;        /* mu (k, d) */
    double *means_proj;  /* V^T mu_c (k, r) */
    double threshold;    /* distance that maps to score 1 */
    int cells, cin;      /* the projection's cells and their size (0: the slice is used as it is) */
    float *proj;         /* P (cin, cout = d / cells), row-major */
    float *proj_mean;    /* m (cin) */
    double *proj_offset; /* P^T m (cout) */
} Unfamiliar;

/* Copies the statistics in (basis (d, r), variances (r), means (k, d)). Returns 0, -1 when out of
 * memory, -2 when a value is not finite or a variance not positive. */
int unfamiliar_init(Unfamiliar *u, int offset, int d, int r, int k, const float *basis, const double *variances,
                    double resid_var, const float *means, double threshold);
void unfamiliar_free(Unfamiliar *u);

/* Gives an initialised part a projection of `cells` cells of cin values each (proj (cin, cout),
 * mean (cin), with cells * cout == d <= UNFAMILIAR_MAX_PROJECTED). Returns 0, -1 when out of
 * memory, -2 on bad sizes or a value that is not finite (the part is then left unprojected). */
int unfamiliar_project(Unfamiliar *u, int cells, int cin, const float *proj, const float *mean);

/* descriptors (n rows of `stride` floats) -> scores (n): the largest part score of each image.
 * Runs on the thread pool, one task per image. */
void unfamiliar_score(const Unfamiliar *parts, int nparts, const float *descriptors, size_t stride, int n,
                      float *scores);

/* The same as the plain formula: q = V^T (f - mu_c) from scratch for every class. Slow; for
 * checks. */
void unfamiliar_score_ref(const Unfamiliar *parts, int nparts, const float *descriptors, size_t stride, int n,
                          float *scores);

#endif
