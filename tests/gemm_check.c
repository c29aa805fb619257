/* gemm_check.c: csrc/gemm.c against a plain double-precision loop, over shapes that cover every
 * edge of its blocking (rows not a multiple of 6, columns not a multiple of 16, k over several
 * blocks, leading dimensions wider than the matrices), with and without bias, residual and ReLU.
 *
 * Each element must lie within the float32 summation bound (k + 2) u sum|terms| of the exact
 * value; tasks run in reverse order must give the same bits; the padding beyond each row of C
 * must stay untouched. Built and run by tests/test_gemm.py (and under ASan/UBSan by
 * tests/run_sanitized.sh). Prints "ok <cases>" and exits 0, or says what differs and exits 1. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"

static unsigned long long rng = 88172645463325252ULL;
static float uniform(void) { /* xorshift64: [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static int check(int m, int n, int k, int use_bias, int use_res, int relu) {
    int lda = k + 3, ldc = n + 5; /* wider than the matrices: the kernel must respect them */
    float *a = malloc(sizeof(float) * (size_t)m * lda), *b = malloc(sizeof(float) * (size_t)k * n);
    float *bias = malloc(sizeof(float) * n), *res = malloc(sizeof(float) * (size_t)m * ldc);
    float *c = malloc(sizeof(float) * (size_t)m * ldc), *c2 = malloc(sizeof(float) * (size_t)m * ldc);
    if (!a || !b || !bias || !res || !c || !c2) {
        printf("out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < (size_t)m * lda; i++) a[i] = uniform();
    for (size_t i = 0; i < (size_t)k * n; i++) b[i] = uniform();
    for (int i = 0; i < n; i++) bias[i] = uniform();
    for (size_t i = 0; i < (size_t)m * ldc; i++) res[i] = uniform(), c[i] = c2[i] = 12345.0f;
    PackedB p;
    if (gemm_pack(&p, b, k, n, n) != 0) {
        printf("out of memory\n");
        exit(1);
    }
    GemmJob g = {m, a, lda, &p, c, ldc, use_bias ? bias : NULL, use_res ? res : NULL, relu};
    int nt = gemm_tasks(&g);
    for (int t = 0; t < nt; t++) gemm_run_task(&g, t);
    GemmJob g2 = g;
    g2.c = c2;
    for (int t = nt - 1; t >= 0; t--) gemm_run_task(&g2, t);

    int bad = 0;
    const double u = FLT_EPSILON / 2;
    for (int i = 0; i < m && !bad; i++) {
        for (int j = 0; j < ldc && !bad; j++) {
            float got = c[(size_t)i * ldc + j];
            if (j >= n) {
                if (got != 12345.0f) printf("m=%d n=%d k=%d: padding C[%d][%d] written\n", m, n, k, i, j), bad = 1;
                continue;
            }
            double exact = 0, mag = 0;
            for (int q = 0; q < k; q++) {
                double t = (double)a[(size_t)i * lda + q] * b[(size_t)q * n + j];
                exact += t, mag += fabs(t);
            }
            if (use_bias) exact += bias[j], mag += fabs(bias[j]);
            if (use_res) exact += res[(size_t)i * ldc + j], mag += fabs(res[(size_t)i * ldc + j]);
            if (relu && exact < 0) exact = 0;
            double bound = (k + 2) * u * mag * 1.01 + DBL_MIN;
            if (fabs(got - exact) > bound)
                printf("m=%d n=%d k=%d bias=%d res=%d relu=%d: C[%d][%d] = %.9g, exact %.9g (bound %.3g)\n",
                       m, n, k, use_bias, use_res, relu, i, j, got, exact, bound), bad = 1;
        }
    }
    if (!bad && memcmp(c, c2, sizeof(float) * (size_t)m * ldc) != 0)
        printf("m=%d n=%d k=%d: task order changed the result\n", m, n, k), bad = 1;
    gemm_pack_free(&p);
    free(a), free(b), free(bias), free(res), free(c), free(c2);
    return bad;
}

int main(void) {
    if (!gemm_available()) {
        printf("skip: the packed kernel does not run on this CPU\n");
        return 0;
    }
    static const int ms[] = {1, 5, 6, 7, 13, 96, 97, 200};
    static const int ns[] = {1, 15, 16, 17, 40, 64, 300};
    static const int ks[] = {1, 7, 64, 147, 256, 257, 600};
    int cases = 0, failed = 0;
    for (size_t im = 0; im < sizeof ms / sizeof *ms; im++)
        for (size_t in = 0; in < sizeof ns / sizeof *ns; in++)
            for (size_t ik = 0; ik < sizeof ks / sizeof *ks; ik++) {
                int flags = (int)(cases % 8);
                failed += check(ms[im], ns[in], ks[ik], flags & 1, flags >> 1 & 1, flags >> 2 & 1);
                cases++;
            }
    for (int flags = 0; flags < 8; flags++, cases++) /* every epilogue on a shape with all edges */
        failed += check(97, 300, 600, flags & 1, flags >> 1 & 1, flags >> 2 & 1);
    if (failed) {
        printf("%d of %d cases failed\n", failed, cases);
        return 1;
    }
    printf("ok %d\n", cases);
    return 0;
}
