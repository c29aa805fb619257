/* unfamiliar.h: how unlike the training images an input is, from what the network computed.
 *
 * The network's descriptor of an image (resnet50.h, DESCRIPTOR_FLOATS) holds its pooled features
 * and the mean and std of every channel at the stem and at the end of each stage. Each part of
 * the statistics is a Gaussian model of one slice f (d values from `offset`) of it: one mean per
 * class (or one for all) with a covariance shared by the classes (Lee et al., NeurIPS 2018),
 * modelled as probabilistic PCA: r principal directions V (d, r) with variances lambda_j, and one
 * variance sigma2 for everything orthogonal to them:
 *
 *     g = f - mu_c,  q = V^T g,  d2_c = sum_j q_j^2 / lambda_j + (|g|^2 - |q|^2) / sigma2
 *     score_part = sqrt(min_c d2_c) / threshold
 *     score = max over parts of score_part          (> 1: beyond a fitted threshold)
 *
 * Everything after the features is computed in double: the residual |g|^2 - |q|^2 is a
 * difference of two close numbers. */
#ifndef COVIDX_UNFAMILIAR_H
#define COVIDX_UNFAMILIAR_H

#include <stddef.h>

#define UNFAMILIAR_MAX_PARTS 8

typedef struct {
    int offset;          /* where its slice starts in the descriptor */
    int d, r, k;         /* feature size, principal directions, classes; d == 0: no statistics */
    float *basis;        /* V (d, r), row-major */
    double *inv_var;     /* 1 / lambda (r) */
    double inv_resid;    /* 1 / sigma2 */
    float *means;        /* mu (k, d) */
    double *means_proj;  /* V^T mu_c (k, r) */
    double threshold;    /* distance that maps to score 1 */
} Unfamiliar;

/* Copies the statistics in (basis (d, r), variances (r), means (k, d)). Returns 0, -1 when out of
 * memory, -2 when a value is not finite or a variance not positive. */
int unfamiliar_init(Unfamiliar *u, int offset, int d, int r, int k, const float *basis, const double *variances,
                    double resid_var, const float *means, double threshold);
void unfamiliar_free(Unfamiliar *u);

/* descriptors (n rows of `stride` floats) -> scores (n): the largest part score of each image.
 * Runs on the thread pool, one task per image. */
void unfamiliar_score(const Unfamiliar *parts, int nparts, const float *descriptors, size_t stride, int n,
                      float *scores);

/* The same as the plain formula: q = V^T (f - mu_c) from scratch for every class. Slow; for
 * checks. */
void unfamiliar_score_ref(const Unfamiliar *parts, int nparts, const float *descriptors, size_t stride, int n,
                          float *scores);

#endif
