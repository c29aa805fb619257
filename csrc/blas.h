/* blas.h: the few OpenBLAS entry points covidx uses.
 *
 * The PyPI wheel scipy-openblas32 prefixes every symbol with "scipy_"; a system OpenBLAS has no
 * prefix. setup.py passes -DCOVIDX_BLAS_PREFIX=scipy_ (or nothing). The prototypes are declared
 * here rather than taken from cblas.h so that either library builds the same code. */
#ifndef COVIDX_BLAS_H
#define COVIDX_BLAS_H

#ifndef COVIDX_BLAS_PREFIX
#define COVIDX_BLAS_PREFIX
#endif
#define COVIDX_CAT_(a, b) a##b
#define COVIDX_CAT(a, b) COVIDX_CAT_(a, b)
#define BLAS_FN(name) COVIDX_CAT(COVIDX_BLAS_PREFIX, name)

enum { CblasRowMajor = 101 };
enum { CblasNoTrans = 111, CblasTrans = 112 };

void BLAS_FN(cblas_sgemm)(int order, int transa, int transb, int m, int n, int k, float alpha,
                          const float *a, int lda, const float *b, int ldb, float beta, float *c,
                          int ldc);
void BLAS_FN(openblas_set_num_threads)(int n);
int BLAS_FN(openblas_get_num_threads)(void);
char *BLAS_FN(openblas_get_config)(void);
char *BLAS_FN(openblas_get_corename)(void);

/* C[m x n] = A[m x k] . B[k x n], row-major, leading dimensions given. */
static inline void sgemm_rm(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                            float *c, int ldc) {
    BLAS_FN(cblas_sgemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb,
                         0.0f, c, ldc);
}

#endif
