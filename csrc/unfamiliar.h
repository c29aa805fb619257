/* unfamiliar.h: how unlike the training images an input is, from its pooled backbone features.
 *
 * One Gaussian per class with a covariance shared by the classes (Lee et al., NeurIPS 2018),
 * the covariance modelled as probabilistic PCA: r principal directions V (d, r) with variances
 * lambda_j, and one variance sigma2 for everything orthogonal to them. For features f:
 *
 *     g = f - mu_c,  q = V^T g,  d2_c = sum_j q_j^2 / lambda_j + (|g|^2 - |q|^2) / sigma2
 *     score = sqrt(min_c d2_c) / threshold          (> 1: beyond the fitted threshold)
 *
 * Everything after the features is computed in double: the residual |g|^2 - |q|^2 is a
 * difference of two close numbers. */
#ifndef COVIDX_UNFAMILIAR_H
#define COVIDX_UNFAMILIAR_H

#include <stddef.h>

typedef struct {
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
int unfamiliar_init(Unfamiliar *u, int d, int r, int k, const float *basis, const double *variances,
                    double resid_var, const float *means, double threshold);
void unfamiliar_free(Unfamiliar *u);

/* features (n, d) -> scores (n); runs on the thread pool, one task per image. */
void unfamiliar_score(const Unfamiliar *u, const float *features, int n, float *scores);

/* The same as the plain formula: q = V^T (f - mu_c) from scratch for every class. Slow; for
 * checks. */
void unfamiliar_score_ref(const Unfamiliar *u, const float *features, int n, float *scores);

#endif
