/* gemm_check.c: one GEMM kernel of csrc/ (gemm_check KERNEL: avx2, avx512, avx512-emu, amx,
 * amx-emu, avx512bf16, avx512bf16-emu, and the int8 kernels avx512vnni, avxvnni, avx2int8 and
 * their -emu builds) against a plain double-precision loop, over shapes that
 * cover every edge of the kernels' blocking (rows not a multiple of 6, 12, 16 or 32, columns not
 * a multiple of 16 or 32, k over several blocks and not a multiple of 32, leading dimensions
 * wider than the matrices), with and without bias, residual and ReLU.
 *
 * Each element must lie within the float32 summation bound (k + 2) u sum|terms| of the exact
 * value; for the bf16 kernels the exact value is that of A and B rounded to bf16 (nearest even),
 * products and sums in double, so what is checked is the fp32 accumulation. Tasks run in reverse
 * order must give the same bits; the padding beyond each row of C must stay untouched.
 * gemm_check KERNEL OTHER also requires KERNEL and OTHER to give the same bits (a kernel against
 * its emulated build).
 *
 * The int8 kernels are checked bit for bit against a plain loop of the same arithmetic
 * (gemm_int8.h): B quantised per column, exact integer sums of A (0..127) times B, then
 * float(sum) * scale + bias + residual and ReLU, one rounding per operation in that order (and,
 * written quantised for a next layer, rint(clamp(C * out_inv, 0, 127)), alone and beside C); also
 * with A and B at their extremes (127 x +-127, where VPMADDUBSW would saturate on wider values).
 * Built and run by tests/test_gemm.py (and under ASan/UBSan by
 * tests/run_sanitized.sh). gemm_check --list prints the packed kernels of the dispatch table, one
 * name a line. Prints "ok <cases>" and exits 0, "skip: <why>" and exits 0 when the
 * CPU lacks the instructions, or says what differs and exits 1. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "gemm_int8.h"

static int kernel = -1, other = -1; /* the kernel checked, and the one it must match bit for bit */

static unsigned long long rng = 88172645463325252ULL;
static float uniform(void) { /* xorshift64: [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float bf16_rounded(float x) { /* round to nearest even (the inputs are finite) */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Runs every task of g, in order or reversed. */
static void run_all(GemmJob g, int reverse) {
    int nt = gemm_tasks(&g);
    for (int t = 0; t < nt; t++) gemm_run_task(&g, reverse ? nt - 1 - t : t);
}

static void run_all_i8(GemmI8Job *j, int reverse) {
    int nt = gemm_tasks(&j->g);
    for (int t = 0; t < nt; t++) gemm_run_task(&j->g, reverse ? nt - 1 - t : t);
}

static int check(int m, int n, int k, int use_bias, int use_res, int relu) {
    int lda = k + 3, ldc = n + 5; /* wider than the matrices: the kernel must respect them */
    float *a = malloc(sizeof(float) * (size_t)m * lda), *b = malloc(sizeof(float) * (size_t)k * n);
    float *bias = malloc(sizeof(float) * n), *res = malloc(sizeof(float) * (size_t)m * ldc);
    float *c = malloc(sizeof(float) * (size_t)m * ldc), *c2 = malloc(sizeof(float) * (size_t)m * ldc);
    float *c3 = malloc(sizeof(float) * (size_t)m * ldc);
    if (!a || !b || !bias || !res || !c || !c2 || !c3) {
        printf("out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < (size_t)m * lda; i++) a[i] = uniform();
    for (size_t i = 0; i < (size_t)k * n; i++) b[i] = uniform();
    for (int i = 0; i < n; i++) bias[i] = uniform();
    for (size_t i = 0; i < (size_t)m * ldc; i++) res[i] = uniform(), c[i] = c2[i] = c3[i] = 12345.0f;
    PackedB p, p2 = {0};
    if (gemm_pack_kernel(&p, kernel, b, k, n, n) != 0 || (other >= 0 && gemm_pack_kernel(&p2, other, b, k, n, n) != 0)) {
        printf("out of memory\n");
        exit(1);
    }
    GemmJob g = {m, a, lda, &p, c, ldc, use_bias ? bias : NULL, use_res ? res : NULL, relu};
    run_all(g, 0);
    GemmJob g2 = g;
    g2.c = c2;
    run_all(g2, 1);
    int bf = gemm_kernel_is_bf16(kernel);

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
                float x = a[(size_t)i * lda + q], y = b[(size_t)q * n + j];
                double t = bf ? (double)bf16_rounded(x) * bf16_rounded(y) : (double)x * y;
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
    if (!bad && other >= 0) {
        GemmJob g3 = g;
        g3.b = &p2;
        g3.c = c3;
        run_all(g3, 0);
        if (memcmp(c, c3, sizeof(float) * (size_t)m * ldc) != 0)
            printf("m=%d n=%d k=%d: %s and %s differ\n", m, n, k, gemm_kernel_name(kernel), gemm_kernel_name(other)), bad = 1;
    }
    gemm_pack_free(&p);
    gemm_pack_free(&p2);
    free(a), free(b), free(bias), free(res), free(c), free(c2), free(c3);
    return bad;
}

/* The int8 kernel (and `other`) against the plain loop, bit for bit. extreme: A all 127 and B
 * columns of one sign (all of B quantised to +-127). */
static int check_int8(int m, int n, int k, int use_bias, int use_res, int relu, int extreme) {
    size_t lda = (size_t)k + 3;
    int ldc = n + 5;
    uint8_t *a = malloc((size_t)m * lda);
    float *b = malloc(sizeof(float) * (size_t)k * n), *scale = malloc(sizeof(float) * n);
    float *bias = malloc(sizeof(float) * n), *res = malloc(sizeof(float) * (size_t)m * ldc);
    float *c = malloc(sizeof(float) * (size_t)m * ldc), *c2 = malloc(sizeof(float) * (size_t)m * ldc);
    float *c3 = malloc(sizeof(float) * (size_t)m * ldc);
    int8_t *q = malloc((size_t)k * n);
    if (!a || !b || !scale || !bias || !res || !c || !c2 || !c3 || !q) {
        printf("out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < (size_t)m * lda; i++) a[i] = extreme ? 127 : (uint8_t)((uniform() + 1.0f) * 64.0f) & 127;
    for (size_t i = 0; i < (size_t)k * n; i++) b[i] = extreme ? (i % n % 2 ? -0.5f : 0.25f) : uniform();
    for (int j = 0; j < n; j++) scale[j] = 0.001f * (2.0f + uniform()), bias[j] = uniform();
    if (n > 2 && !extreme) /* a zero column: scale 0, output bias */
        for (int kk = 0; kk < k; kk++) b[(size_t)kk * n + 2] = 0.0f;
    for (size_t i = 0; i < (size_t)m * ldc; i++) res[i] = uniform(), c[i] = c2[i] = c3[i] = 12345.0f;
    /* the reference quantisation of B: per column, symmetric, round half to even */
    for (int j = 0; j < n; j++) {
        float amax = 0.0f;
        for (int kk = 0; kk < k; kk++) amax = fabsf(b[(size_t)kk * n + j]) > amax ? fabsf(b[(size_t)kk * n + j]) : amax;
        float s = amax / 127.0f;
        for (int kk = 0; kk < k; kk++) {
            float v = s > 0.0f ? nearbyintf(b[(size_t)kk * n + j] / s) : 0.0f;
            q[(size_t)kk * n + j] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
        }
    }
    PackedB p, p2 = {0};
    if (gemm_pack_kernel(&p, kernel, b, k, n, n) != 0 || (other >= 0 && gemm_pack_kernel(&p2, other, b, k, n, n) != 0)) {
        printf("out of memory\n");
        exit(1);
    }
    GemmI8Job job = {{m, NULL, 0, &p, c, ldc, use_bias ? bias : NULL, use_res ? res : NULL, relu}, a, lda, scale,
                     NULL, 0.0f};
    run_all_i8(&job, 0);
    GemmI8Job job2 = job;
    job2.g.c = c2;
    run_all_i8(&job2, 1);
    int bad = 0;
    for (int i = 0; i < m && !bad; i++)
        for (int j = 0; j < ldc && !bad; j++) {
            float got = c[(size_t)i * ldc + j];
            if (j >= n) {
                if (got != 12345.0f) printf("m=%d n=%d k=%d: padding C[%d][%d] written\n", m, n, k, i, j), bad = 1;
                continue;
            }
            long long acc = 0;
            for (int kk = 0; kk < k; kk++) acc += (long long)a[(size_t)i * lda + kk] * q[(size_t)kk * n + j];
            float want = (float)acc * scale[j];
            if (use_bias) want = want + bias[j];
            if (use_res) want = want + res[(size_t)i * ldc + j];
            if (relu) want = want > 0.0f ? want : 0.0f;
            if (memcmp(&got, &want, sizeof got) != 0)
                printf("int8 m=%d n=%d k=%d bias=%d res=%d relu=%d extreme=%d: C[%d][%d] = %.9g, want %.9g\n", m, n, k,
                       use_bias, use_res, relu, extreme, i, j, got, want), bad = 1;
        }
    if (!bad && memcmp(c, c2, sizeof(float) * (size_t)m * ldc) != 0)
        printf("m=%d n=%d k=%d: task order changed the result\n", m, n, k), bad = 1;
    if (!bad && other >= 0) {
        GemmI8Job job3 = job;
        job3.g.b = &p2;
        job3.g.c = c3;
        run_all_i8(&job3, 0);
        if (memcmp(c, c3, sizeof(float) * (size_t)m * ldc) != 0)
            printf("m=%d n=%d k=%d: %s and %s differ\n", m, n, k, gemm_kernel_name(kernel), gemm_kernel_name(other)), bad = 1;
    }
    if (!bad) { /* the output quantised for a next layer (cq): the bytes of quantising C plainly */
        float cmax = 0.0f;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) cmax = fabsf(c[(size_t)i * ldc + j]) > cmax ? fabsf(c[(size_t)i * ldc + j]) : cmax;
        uint8_t *cq = malloc((size_t)m * ldc);
        if (!cq) {
            printf("out of memory\n");
            exit(1);
        }
        memset(cq, 0xab, (size_t)m * ldc);
        GemmI8Job job4 = job;
        job4.g.c = NULL;
        job4.cq = cq;
        job4.out_inv = 200.0f / (cmax > 0.0f ? cmax : 1.0f); /* the top third clips at 127 */
        run_all_i8(&job4, 1);
        for (int i = 0; i < m && !bad; i++)
            for (int j = 0; j < ldc && !bad; j++) {
                int want = 0xab;
                if (j < n) {
                    float u = c[(size_t)i * ldc + j] * job4.out_inv;
                    u = u > 0.0f ? u : 0.0f;
                    u = u < 127.0f ? u : 127.0f;
                    want = (int)nearbyintf(u);
                }
                if (cq[(size_t)i * ldc + j] != want)
                    printf("int8 m=%d n=%d k=%d bias=%d res=%d relu=%d: quantised C[%d][%d] = %d, want %d\n", m, n, k,
                           use_bias, use_res, relu, i, j, cq[(size_t)i * ldc + j], want), bad = 1;
            }
        /* both outputs at once (a block's output: float32 for its residual, uint8 for the next
         * block): the same floats as C alone and the same bytes as cq alone */
        uint8_t *cq2 = malloc((size_t)m * ldc);
        float *c4 = malloc(sizeof(float) * (size_t)m * ldc);
        if (!cq2 || !c4) {
            printf("out of memory\n");
            exit(1);
        }
        memset(cq2, 0xab, (size_t)m * ldc);
        for (size_t i = 0; i < (size_t)m * ldc; i++) c4[i] = 12345.0f;
        GemmI8Job job5 = job4;
        job5.g.c = c4;
        job5.cq = cq2;
        run_all_i8(&job5, 0);
        if (!bad && memcmp(c4, c, sizeof(float) * (size_t)m * ldc) != 0)
            printf("int8 m=%d n=%d k=%d: C written beside its quantised bytes differs\n", m, n, k), bad = 1;
        if (!bad && memcmp(cq2, cq, (size_t)m * ldc) != 0)
            printf("int8 m=%d n=%d k=%d: quantised bytes written beside C differ\n", m, n, k), bad = 1;
        free(cq), free(cq2), free(c4);
    }
    gemm_pack_free(&p);
    gemm_pack_free(&p2);
    free(a), free(b), free(scale), free(bias), free(res), free(c), free(c2), free(c3), free(q);
    return bad;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--list") == 0) { /* every kernel but OpenBLAS (kernel 0) */
        for (int k = 1; k < GEMM_NKERNELS; k++) printf("%s\n", gemm_kernel_name(k));
        return 0;
    }
    kernel = gemm_kernel_by_name(argc > 1 ? argv[1] : "avx2");
    other = argc > 2 ? gemm_kernel_by_name(argv[2]) : -1;
    if (kernel <= 0 || (argc > 2 && (other <= 0 || gemm_kernel_is_int8(other) != gemm_kernel_is_int8(kernel)))) {
        printf("usage: gemm_check KERNEL [OTHER]: unknown kernel\n");
        return 1;
    }
    if (!gemm_kernel_runs(kernel) || (other >= 0 && !gemm_kernel_runs(other))) {
        printf("skip: the %s kernel does not run on this CPU\n", gemm_kernel_name(gemm_kernel_runs(kernel) ? other : kernel));
        return 0;
    }
    if (kernel == GEMM_AMX || other == GEMM_AMX) { /* the process needs the tile data state */
        const char *why = NULL;
        if (gemm_bf16_enable(GEMM_AMX, &why) != GEMM_AMX) {
            printf("skip: %s\n", why ? why : "AMX refused");
            return 0;
        }
    }
    /* every edge of every kernel: rows around 6, 12, 16, 32 and 96; columns around 16 and 32;
     * k around 32, 192, 256 and 1024 */
    static const int ms[] = {1, 5, 6, 7, 13, 17, 33, 96, 97, 200};
    static const int ns[] = {1, 15, 16, 17, 33, 40, 64, 300};
    static const int ks[] = {1, 7, 33, 64, 147, 256, 257, 600, 1100};
    int cases = 0, failed = 0;
    if (gemm_kernel_is_int8(kernel)) { /* rows around 4, 6, 12, 24 and 96; k around 4 */
        static const int mi[] = {1, 3, 5, 7, 13, 25, 97, 200};
        static const int ni[] = {1, 15, 17, 33, 64, 300};
        static const int ki[] = {1, 3, 4, 7, 64, 147, 576, 1155};
        for (size_t im = 0; im < sizeof mi / sizeof *mi; im++)
            for (size_t in = 0; in < sizeof ni / sizeof *ni; in++)
                for (size_t ik = 0; ik < sizeof ki / sizeof *ki; ik++) {
                    int flags = (int)(cases % 8);
                    failed += check_int8(mi[im], ni[in], ki[ik], flags & 1, flags >> 1 & 1, flags >> 2 & 1, 0);
                    cases++;
                }
        for (int flags = 0; flags < 8; flags++, cases++)
            failed += check_int8(97, 300, 1155, flags & 1, flags >> 1 & 1, flags >> 2 & 1, flags == 0);
        failed += check_int8(25, 40, 4608, 1, 0, 0, 1), cases++; /* the largest k of ResNet50, at the extremes */
        if (failed) {
            printf("%d of %d cases failed\n", failed, cases);
            return 1;
        }
        printf("ok %d\n", cases);
        return 0;
    }
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
