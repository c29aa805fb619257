/* unfamiliar.c: the out-of-distribution score (see unfamiliar.h for the formula). */
#include "unfamiliar.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "threadpool.h"

#define MAX_RANK 2048

void unfamiliar_free(Unfamiliar *u) {
    free(u->basis);
    free(u->inv_var);
    free(u->means);
    free(u->means_proj);
    free(u->proj);
    free(u->proj_mean);
    free(u->proj_offset);
    memset(u, 0, sizeof(*u));
}

int unfamiliar_init(Unfamiliar *u, int offset, int d, int r, int k, const float *basis, const double *variances,
                    double resid_var, const float *means, double threshold) {
    memset(u, 0, sizeof(*u));
    if (d < 1 || k < 1 || r < 0 || r > d || r > MAX_RANK || offset < 0) return -2;
    if (!(resid_var > 0.0) || !isfinite(resid_var) || !(threshold > 0.0) || !isfinite(threshold)) return -2;
    for (size_t i = 0; i < (size_t)d * r; i++)
        if (!isfinite(basis[i])) return -2;
    for (size_t i = 0; i < (size_t)k * d; i++)
        if (!isfinite(means[i])) return -2;
    for (int j = 0; j < r; j++)
        if (!(variances[j] > 0.0) || !isfinite(variances[j])) return -2;
    u->basis = malloc(sizeof(float) * (size_t)d * (r ? r : 1));
    u->inv_var = malloc(sizeof(double) * (r ? r : 1));
    u->means = malloc(sizeof(float) * (size_t)k * d);
    u->means_proj = malloc(sizeof(double) * (size_t)k * (r ? r : 1));
    if (!u->basis || !u->inv_var || !u->means || !u->means_proj) {
        unfamiliar_free(u);
        return -1;
    }
    memcpy(u->basis, basis, sizeof(float) * (size_t)d * r);
    memcpy(u->means, means, sizeof(float) * (size_t)k * d);
    for (int j = 0; j < r; j++) u->inv_var[j] = 1.0 / variances[j];
    for (int c = 0; c < k; c++) {
        double *p = u->means_proj + (size_t)c * r;
        for (int j = 0; j < r; j++) p[j] = 0.0;
        for (int i = 0; i < d; i++) {
            double m = means[(size_t)c * d + i];
            for (int j = 0; j < r; j++) p[j] += m * basis[(size_t)i * r + j];
        }
    }
    u->offset = offset, u->span = d, u->d = d, u->r = r, u->k = k;
    u->inv_resid = 1.0 / resid_var;
    u->threshold = threshold;
    return 0;
}

int unfamiliar_project(Unfamiliar *u, int cells, int cin, const float *proj, const float *mean) {
    if (cells < 1 || cin < 1 || u->d % cells != 0 || u->d > UNFAMILIAR_MAX_PROJECTED || u->proj) return -2;
    int cout = u->d / cells;
    for (size_t i = 0; i < (size_t)cin * cout; i++)
        if (!isfinite(proj[i])) return -2;
    for (int i = 0; i < cin; i++)
        if (!isfinite(mean[i])) return -2;
    u->proj = malloc(sizeof(float) * (size_t)cin * cout);
    u->proj_mean = malloc(sizeof(float) * cin);
    u->proj_offset = malloc(sizeof(double) * cout);
    if (!u->proj || !u->proj_mean || !u->proj_offset) {
        free(u->proj), free(u->proj_mean), free(u->proj_offset);
        u->proj = u->proj_mean = NULL, u->proj_offset = NULL;
        return -1;
    }
    memcpy(u->proj, proj, sizeof(float) * (size_t)cin * cout);
    memcpy(u->proj_mean, mean, sizeof(float) * cin);
    for (int j = 0; j < cout; j++) u->proj_offset[j] = 0.0;
    for (int i = 0; i < cin; i++)
        for (int j = 0; j < cout; j++) u->proj_offset[j] += (double)mean[i] * proj[(size_t)i * cout + j];
    u->cells = cells, u->cin = cin, u->span = cells * cin;
    return 0;
}

typedef struct {
    const Unfamiliar *parts;
    int nparts;
    const float *descriptors;
    size_t stride;
    float *scores;
} ScoreJob;

/* A projected part's features (d) from its slice: per cell P^T x - P^T m, accumulated in double
 * along P's rows (contiguous). */
static void project(const Unfamiliar *u, const float *x, float *f) {
    int cout = u->d / u->cells;
    double acc[UNFAMILIAR_MAX_PROJECTED];
    for (int cell = 0; cell < u->cells; cell++) {
        const float *xc = x + (size_t)cell * u->cin;
        for (int j = 0; j < cout; j++) acc[j] = -u->proj_offset[j];
        for (int i = 0; i < u->cin; i++) {
            double xi = xc[i];
            const float *row = u->proj + (size_t)i * cout;
            for (int j = 0; j < cout; j++) acc[j] += xi * row[j];
        }
        for (int j = 0; j < cout; j++) f[cell * cout + j] = (float)acc[j];
    }
}

/* One part, one image: q_f = V^T f once, then per class q = q_f - V^T mu_c. */
static double part_score(const Unfamiliar *u, const float *f) {
    float projected[UNFAMILIAR_MAX_PROJECTED];
    if (u->cells) {
        project(u, f, projected);
        f = projected;
    }
    double qf[MAX_RANK];
    for (int j = 0; j < u->r; j++) qf[j] = 0.0;
    for (int i = 0; i < u->d; i++) {
        double fi = f[i];
        const float *v = u->basis + (size_t)i * u->r;
        for (int j = 0; j < u->r; j++) qf[j] += fi * v[j];
    }
    double best = INFINITY;
    for (int c = 0; c < u->k; c++) {
        const float *mu = u->means + (size_t)c * u->d;
        const double *mp = u->means_proj + (size_t)c * u->r;
        double g2 = 0.0, q2 = 0.0, pc = 0.0;
        for (int i = 0; i < u->d; i++) g2 += ((double)f[i] - mu[i]) * ((double)f[i] - mu[i]);
        for (int j = 0; j < u->r; j++) {
            double q = qf[j] - mp[j];
            q2 += q * q;
            pc += q * q * u->inv_var[j];
        }
        double resid = g2 - q2 > 0.0 ? g2 - q2 : 0.0;
        double d2 = pc + resid * u->inv_resid;
        best = d2 < best ? d2 : best;
    }
    return sqrt(best) / u->threshold;
}

typedef double (*PartScoreFn)(const Unfamiliar *u, const float *f);

/* One image's score: the largest part score, each part reading its slice of the descriptor. */
static float worst_part(const Unfamiliar *parts, int nparts, const float *row, PartScoreFn score) {
    double worst = 0.0;
    for (int p = 0; p < nparts; p++) {
        double s = score(&parts[p], row + parts[p].offset);
        worst = s > worst ? s : worst;
    }
    return (float)worst;
}

static void score_task(void *arg, int img) {
    const ScoreJob *job = arg;
    job->scores[img] = worst_part(job->parts, job->nparts, job->descriptors + (size_t)img * job->stride, part_score);
}

void unfamiliar_score(const Unfamiliar *parts, int nparts, const float *descriptors, size_t stride, int n,
                      float *scores) {
    ScoreJob job = {parts, nparts, descriptors, stride, scores};
    pool_run(n, score_task, &job);
}

/* The projection as written: P^T (x - m), each output on its own. */
static void project_ref(const Unfamiliar *u, const float *x, float *f) {
    int cout = u->d / u->cells;
    for (int cell = 0; cell < u->cells; cell++)
        for (int j = 0; j < cout; j++) {
            double acc = 0.0;
            for (int i = 0; i < u->cin; i++)
                acc += ((double)x[(size_t)cell * u->cin + i] - u->proj_mean[i]) * u->proj[(size_t)i * cout + j];
            f[cell * cout + j] = (float)acc;
        }
}

static double part_score_ref(const Unfamiliar *u, const float *f) {
    float projected[UNFAMILIAR_MAX_PROJECTED];
    if (u->cells) {
        project_ref(u, f, projected);
        f = projected;
    }
    double best = INFINITY;
    for (int c = 0; c < u->k; c++) {
        const float *mu = u->means + (size_t)c * u->d;
        double g2 = 0.0, q2 = 0.0, pc = 0.0;
        for (int i = 0; i < u->d; i++) g2 += ((double)f[i] - mu[i]) * ((double)f[i] - mu[i]);
        for (int j = 0; j < u->r; j++) {
            double q = 0.0;
            for (int i = 0; i < u->d; i++) q += ((double)f[i] - mu[i]) * u->basis[(size_t)i * u->r + j];
            q2 += q * q;
            pc += q * q * u->inv_var[j];
        }
        double resid = g2 - q2 > 0.0 ? g2 - q2 : 0.0;
        double d2 = pc + resid * u->inv_resid;
        best = d2 < best ? d2 : best;
    }
    return sqrt(best) / u->threshold;
}

void unfamiliar_score_ref(const Unfamiliar *parts, int nparts, const float *descriptors, size_t stride, int n,
                          float *scores) {
    for (int img = 0; img < n; img++)
        scores[img] = worst_part(parts, nparts, descriptors + (size_t)img * stride, part_score_ref);
}
