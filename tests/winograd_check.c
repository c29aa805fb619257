/* winograd_check.c: the Winograd F(2x2, 3x3) convolution of csrc/winograd*.c with each of its
 * transform versions, against a plain double-precision loop and against each other bit for bit.
 *
 * winograd.c picks the transforms that match the layer's GEMM kernel: the AVX2 / baseline loops
 * beside the AVX2 kernel, the AVX-512 ones beside the AVX-512 kernel, their emulated build beside
 * the emulated kernel. All of them, and the GEMM kernels, sum in one order, so a layer must give
 * the same bits whichever runs. Shapes cover the edges: odd heights and widths (tiles that reach
 * past the image), channel counts that are not multiples of 16 (masked vector tails), several
 * chunks of tiles (built with a small WINO_CHUNK_BYTES), with and without residual and ReLU.
 *
 * Built and run by tests/test_winograd.py (and under ASan/UBSan by tests/run_sanitized.sh), from
 * setup.py's WINOGRAD_SOURCES and GEMM_SOURCES, with -DWINO_CHUNK_BYTES=65536. Prints "ok <cases>
 * (<versions>)" and exits 0, or says what differs and exits 1. A version the CPU cannot run is
 * left out and named in the output ("no avx512", "no avx2"). */
#define _POSIX_C_SOURCE 200112L /* setenv */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "threadpool.h"
#include "winograd.h"

/* winograd.c's OpenBLAS path is not used here (every layer runs a packed kernel); it links. */
void BLAS_FN(cblas_sgemm)(int order, int transa, int transb, int m, int n, int k, float alpha, const float *a,
                          int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    (void)order, (void)transa, (void)transb, (void)m, (void)n, (void)k, (void)alpha, (void)a, (void)lda;
    (void)b, (void)ldb, (void)beta, (void)c, (void)ldc;
    fprintf(stderr, "cblas_sgemm called: a layer ran without a packed kernel\n");
    abort();
}

static unsigned long long rng = 88172645463325252ULL;
static float uniform(void) { /* xorshift64: [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void *alloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        printf("out of memory\n");
        exit(1);
    }
    return p;
}

/* The layer run with the GEMM kernel named (COVIDX_GEMM), its transforms following it. */
static void run(const char *kernel, const float *w, const float *bias, int n, int h, int wd, int cin, int cout,
                const float *x, const float *res, int relu, float *out) {
    setenv("COVIDX_GEMM", kernel, 1);
    Conv c;
    memset(&c, 0, sizeof c);
    c.kh = c.kw = 3, c.cin = cin, c.cout = cout, c.stride = 1, c.pad = 1;
    c.w = (float *)w, c.bias = (float *)bias;
    if (!winograd_eligible(&c) || winograd_prepare(&c) != 0 || !c.wino_packed[0].data) {
        printf("%s: winograd_prepare failed or packed no planes\n", kernel);
        exit(1);
    }
    float *scratch = alloc(sizeof(float) * winograd_scratch_floats(&c, n, h, wd));
    conv2d_winograd(&c, x, n, h, wd, out, res, relu, scratch);
    free(scratch);
    free(c.wino);
    for (int xi = 0; xi < 16; xi++) gemm_pack_free(&c.wino_packed[xi]);
}

static int check(const char *const *versions, int nv, int n, int h, int wd, int cin, int cout, int use_res, int relu) {
    size_t in = (size_t)n * h * wd * cin, outn = (size_t)n * h * wd * cout;
    float *w = alloc(sizeof(float) * 9 * cin * cout), *bias = alloc(sizeof(float) * cout);
    float *x = alloc(sizeof(float) * in), *res = alloc(sizeof(float) * outn);
    float *out[4];
    for (size_t i = 0; i < (size_t)9 * cin * cout; i++) w[i] = uniform();
    for (int i = 0; i < cout; i++) bias[i] = uniform();
    for (size_t i = 0; i < in; i++) x[i] = uniform();
    for (size_t i = 0; i < outn; i++) res[i] = uniform();
    for (int v = 0; v < nv; v++) {
        out[v] = alloc(sizeof(float) * outn);
        run(versions[v], w, bias, n, h, wd, cin, cout, x, use_res ? res : NULL, relu, out[v]);
    }
    int bad = 0;
    /* the plain loop: the error of each output against sum |terms|, a bound far below any slip
     * in the transforms (which are exact but for a few roundings of values of that size) */
    for (size_t o = 0; o < outn && !bad; o++) {
        int co = (int)(o % cout), ox = (int)(o / cout % wd), oy = (int)(o / cout / wd % h), img = (int)(o / cout / wd / h);
        double acc = bias[co], mag = fabs(bias[co]);
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                int iy = oy - 1 + ky, ix = ox - 1 + kx;
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                const float *px = x + (((size_t)img * h + iy) * wd + ix) * cin;
                for (int ci = 0; ci < cin; ci++) {
                    double t = (double)px[ci] * w[((size_t)(ky * 3 + kx) * cin + ci) * cout + co];
                    acc += t, mag += fabs(t);
                }
            }
        if (use_res) acc += res[o], mag += fabs(res[o]);
        if (relu && acc < 0) acc = 0;
        double bound = 64 * FLT_EPSILON * mag + DBL_MIN;
        if (fabs(out[0][o] - acc) > bound)
            printf("n=%d h=%d w=%d cin=%d cout=%d res=%d relu=%d: out[%zu] = %.9g, exact %.9g (bound %.3g)\n", n, h,
                   wd, cin, cout, use_res, relu, o, out[0][o], acc, bound), bad = 1;
    }
    for (int v = 1; v < nv && !bad; v++)
        if (memcmp(out[0], out[v], sizeof(float) * outn) != 0)
            printf("n=%d h=%d w=%d cin=%d cout=%d res=%d relu=%d: %s and %s differ\n", n, h, wd, cin, cout, use_res,
                   relu, versions[0], versions[v]), bad = 1;
    for (int v = 0; v < nv; v++) free(out[v]);
    free(w), free(bias), free(x), free(res);
    return bad;
}

int main(void) {
    const char *versions[3];
    int nv = 0;
    char skipped[64] = "";
    versions[nv++] = "avx512-emu"; /* first: the one that runs everywhere is the one checked against the loop */
    if (gemm_kernel_runs(gemm_kernel_by_name("avx2")))
        versions[nv++] = "avx2";
    else
        strcat(skipped, ", no avx2");
    if (gemm_kernel_runs(gemm_kernel_by_name("avx512")))
        versions[nv++] = "avx512";
    else
        strcat(skipped, ", no avx512");
    if (pool_set_threads(2) != 0) {
        printf("could not start a worker thread\n");
        return 1;
    }
    /* n, h, w, cin, cout */
    static const int shapes[][5] = {
        {1, 7, 7, 16, 32},   /* odd map: the last row and column of tiles half outside */
        {2, 8, 6, 24, 40},   /* channel tails (8 of 16) on both sides */
        {1, 5, 9, 3, 17},    /* fewer than 16 input channels; one output channel past 16 */
        {3, 12, 12, 64, 64}, /* whole vectors, whole tiles */
        {1, 1, 1, 8, 8},     /* one pixel: one tile, three quarters outside */
        {2, 19, 14, 33, 48}, /* several chunks of tiles (WINO_CHUNK_BYTES), odd height */
    };
    int cases = 0, failed = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int flags = 0; flags < 4; flags++, cases++)
            failed += check(versions, nv, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4],
                            flags & 1, flags >> 1);
    if (failed) {
        printf("%d of %d cases failed\n", failed, cases);
        return 1;
    }
    printf("ok %d (", cases);
    for (int v = 0; v < nv; v++) printf("%s%s", v ? ", " : "", versions[v]);
    printf("%s)\n", skipped);
    return 0;
}
