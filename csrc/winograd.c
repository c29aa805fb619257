/* winograd.c: 3x3 stride-1 "same" convolutions as Winograd F(2x2, 3x3).
 *
 * Each 2x2 block of output pixels (a tile) comes from a 4x4 input patch d:
 *
 *     y = A^T [ sum over cin of (G g G^T) (.) (B^T d B) ] A
 *
 * The 16 products (.) become 16 independent GEMMs, one per position xi of the 4x4 transform:
 *
 *     M[xi][tiles x cout] = V[xi][tiles x cin] . U[xi][cin x cout]
 *
 * with U = G g G^T computed once at load time (in double), V = B^T d B per tile. That is 16 multiplies
 * per 4 outputs instead of 36: 2.25x fewer flops than im2col. The transforms use only +, - and
 * (for U) halves, so the rounding error stays within a few ulps of the direct sum.
 *
 * Work goes in chunks of tiles so that V and M stay near cache size; each chunk runs the input
 * transform, the 16 GEMMs and the output transform (+ bias, residual, ReLU) as pool tasks whose
 * pieces depend only on the layer shape, never on the thread count. */
#include "winograd.h"

#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "threadpool.h"
#include "winograd_kernels.h"

static void tile_counts(int h, int w, int *th, int *tw) {
    *th = (h + 1) / 2;
    *tw = (w + 1) / 2;
}

#ifndef WINO_CHUNK_BYTES
#define WINO_CHUNK_BYTES (12u << 20)
#endif
#define WINO_MIN_TILES 64
/* Fewer tiles in a batch make the GEMMs too thin to pay for the transforms: with OpenBLAS below
 * 64 tiles; with the packed kernel below 16 (a 7x7 map at batch 1 still pays). */
#define WINO_MIN_TILES_OPENBLAS 64
#define WINO_MIN_TILES_PACKED 16
#define WINO_PARTS 8 /* transform tasks per chunk (elementwise work: any split gives the same result) */

int winograd_enabled(void) {
    const char *v = getenv("COVIDX_WINOGRAD");
    return !(v && strcmp(v, "0") == 0);
}

int winograd_eligible(const Conv *c) {
    return c->kh == 3 && c->kw == 3 && c->stride == 1 && c->pad == 1 && c->cin <= WINO_MAX_CIN;
}

int winograd_worth_it(const Conv *c, int n, int h, int w) {
    int th, tw;
    tile_counts(h, w, &th, &tw);
    return c->winograd && !c->packed_bf16.bf16 && (long)n * th * tw >= c->wino_min_tiles; /* bf16: im2col */
}

int winograd_prepare(Conv *c) {
    /* G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]] */
    static const double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
    size_t plane = (size_t)c->cin * c->cout;
    c->wino = malloc(sizeof(float) * 16 * plane);
    if (!c->wino) return -1;
    for (size_t p = 0; p < plane; p++) { /* p = ci * cout + co, the HWIO layout's inner index */
        double g[3][3], t[4][3];
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) g[ky][kx] = c->w[(size_t)(ky * 3 + kx) * plane + p];
        for (int i = 0; i < 4; i++)
            for (int kx = 0; kx < 3; kx++) t[i][kx] = G[i][0] * g[0][kx] + G[i][1] * g[1][kx] + G[i][2] * g[2][kx];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
                c->wino[(size_t)(i * 4 + j) * plane + p] = (float)(t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2]);
    }
    if (gemm_available()) { /* the packed planes replace the plain ones */
        for (int xi = 0; xi < 16; xi++)
            if (gemm_pack(&c->wino_packed[xi], c->wino + (size_t)xi * plane, c->cin, c->cout, c->cout) != 0) return -1;
        free(c->wino);
        c->wino = NULL;
    }
    c->winograd = 1;
    const char *v = getenv("COVIDX_WINOGRAD_MIN_TILES"); /* a tuning knob for benchmarks */
    c->wino_min_tiles = v && atoi(v) > 0 ? atoi(v) : c->wino_packed[0].data ? WINO_MIN_TILES_PACKED : WINO_MIN_TILES_OPENBLAS;
    return 0;
}

static int chunk_tiles(const Conv *c, int tiles) {
    long per = (long)(WINO_CHUNK_BYTES / sizeof(float)) / (16L * (c->cin + c->cout));
    if (per < WINO_MIN_TILES) per = WINO_MIN_TILES;
    return per < tiles ? (int)per : tiles;
}


size_t winograd_scratch_floats(const Conv *c, int n, int h, int w) {
    int th, tw;
    tile_counts(h, w, &th, &tw);
    return 16 * (size_t)chunk_tiles(c, n * th * tw) * (c->cin + c->cout);
}

static void part_range(int n, int part, int *a, int *b) {
    int per = (n + WINO_PARTS - 1) / WINO_PARTS;
    *a = part * per;
    *b = *a + per < n ? *a + per : n;
}

/* The transforms are elementwise over channels: built for AVX2 and for baseline x86-64, the
 * loader picks the one the CPU runs (no -march flags, so the wheel stays portable). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* V[xi][t][ci] = (B^T d B)[xi] for tiles [a, b); B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]. */
VECTOR_CLONES static void input_tiles(const Wino *j, int a, int b) {
    int cin = j->c->cin;
    size_t plane = (size_t)j->ntiles * cin;
    static const float zeros[WINO_MAX_CIN]; /* the padding outside the image */
    for (int t = a; t < b; t++) {
        const float *d[4][4];
        wino_patch(j, t, zeros, d);
        float *dst = j->v + (size_t)t * cin;
#pragma GCC ivdep
        for (int ci = 0; ci < cin; ci++) {
            float u[4][4], q[4][4];
            for (int s = 0; s < 4; s++) { /* B^T d: combine rows */
                float d0 = d[0][s][ci], d1 = d[1][s][ci], d2 = d[2][s][ci], d3 = d[3][s][ci];
                u[0][s] = d0 - d2;
                u[1][s] = d1 + d2;
                u[2][s] = d2 - d1;
                u[3][s] = d1 - d3;
            }
            for (int r = 0; r < 4; r++) { /* (B^T d) B: combine columns */
                q[r][0] = u[r][0] - u[r][2];
                q[r][1] = u[r][1] + u[r][2];
                q[r][2] = u[r][2] - u[r][1];
                q[r][3] = u[r][1] - u[r][3];
            }
            for (int xi = 0; xi < 16; xi++) dst[xi * plane + ci] = q[xi / 4][xi % 4];
        }
    }
}

/* M[xi] = V[xi] . U[xi] with U packed: task t is task t % per of the GEMM for xi = t / per. */
static GemmJob packed_job(const Wino *j, int xi) {
    const Conv *c = j->c;
    GemmJob g = {j->ntiles, j->v + (size_t)xi * j->ntiles * c->cin, c->cin, &c->wino_packed[xi],
                 j->m + (size_t)xi * j->ntiles * c->cout, c->cout, NULL, NULL, 0};
    return g;
}

static void packed_gemm_task(void *arg, int t) {
    const Wino *j = arg;
    GemmJob g = packed_job(j, t / j->gemm_tasks);
    gemm_run_task(&g, t % j->gemm_tasks);
}

static void gemm_task(void *arg, int xi) {
    const Wino *j = arg;
    const Conv *c = j->c;
    sgemm_rm(j->ntiles, c->cout, c->cin, j->v + (size_t)xi * j->ntiles * c->cin, c->cin,
             c->wino + (size_t)xi * c->cin * c->cout, c->cout, j->m + (size_t)xi * j->ntiles * c->cout, c->cout);
}

/* y = A^T M A with A^T = [[1,1,1,0],[0,1,-1,-1]], then bias, residual and ReLU, for the output
 * pixels of one tile that lie inside the image (dst[k] NULL for the others). */
static inline void tile_output(const float *restrict m, size_t plane, int cout, const float *restrict bias,
                               float *dst[4], const float *res[4], int relu) {
#pragma GCC ivdep
    for (int co = 0; co < cout; co++) {
        float s0[4], s1[4];
        for (int col = 0; col < 4; col++) {
            float m0 = m[(size_t)col * plane + co], m1 = m[(size_t)(4 + col) * plane + co];
            float m2 = m[(size_t)(8 + col) * plane + co], m3 = m[(size_t)(12 + col) * plane + co];
            s0[col] = m0 + m1 + m2;
            s1[col] = m1 - m2 - m3;
        }
        float y[4] = {s0[0] + s0[1] + s0[2], s0[1] - s0[2] - s0[3], s1[0] + s1[1] + s1[2], s1[1] - s1[2] - s1[3]};
        for (int k = 0; k < 4; k++) {
            float v = y[k] + bias[co];
            if (res[k]) v += res[k][co];
            if (relu) v = v > 0.0f ? v : 0.0f;
            if (dst[k]) dst[k][co] = v;
        }
    }
}

/* The common case: all four pixels inside the image, no residual. */
static inline void tile_output_full(const float *restrict m, size_t plane, int cout, const float *restrict bias,
                                    float *restrict d0, float *restrict d1, float *restrict d2, float *restrict d3,
                                    int relu) {
    const float *restrict m0 = m, *restrict m1 = m + plane, *restrict m2 = m + 2 * plane, *restrict m3 = m + 3 * plane;
    const float *restrict m4 = m + 4 * plane, *restrict m5 = m + 5 * plane, *restrict m6 = m + 6 * plane;
    const float *restrict m7 = m + 7 * plane, *restrict m8 = m + 8 * plane, *restrict m9 = m + 9 * plane;
    const float *restrict m10 = m + 10 * plane, *restrict m11 = m + 11 * plane, *restrict m12 = m + 12 * plane;
    const float *restrict m13 = m + 13 * plane, *restrict m14 = m + 14 * plane, *restrict m15 = m + 15 * plane;
    float lo = relu ? 0.0f : -__builtin_inff();
    for (int co = 0; co < cout; co++) {
        /* rows: s0 = M0 + M1 + M2, s1 = M1 - M2 - M3 (Mr = row r of the 4x4 block) */
        float a0 = m0[co] + m4[co] + m8[co], a1 = m1[co] + m5[co] + m9[co];
        float a2 = m2[co] + m6[co] + m10[co], a3 = m3[co] + m7[co] + m11[co];
        float b0 = m4[co] - m8[co] - m12[co], b1 = m5[co] - m9[co] - m13[co];
        float b2 = m6[co] - m10[co] - m14[co], b3 = m7[co] - m11[co] - m15[co];
        float y0 = a0 + a1 + a2 + bias[co], y1 = a1 - a2 - a3 + bias[co];
        float y2 = b0 + b1 + b2 + bias[co], y3 = b1 - b2 - b3 + bias[co];
        d0[co] = y0 > lo ? y0 : lo;
        d1[co] = y1 > lo ? y1 : lo;
        d2[co] = y2 > lo ? y2 : lo;
        d3[co] = y3 > lo ? y3 : lo;
    }
}

VECTOR_CLONES static void output_tiles(const Wino *j, int a, int b) {
    int cout = j->c->cout;
    size_t plane = (size_t)j->ntiles * cout;
    for (int t = a; t < b; t++) {
        float *dst[4];
        const float *res[4];
        wino_outputs(j, t, dst, res);
        if (dst[3] && !j->residual)
            tile_output_full(j->m + (size_t)t * cout, plane, cout, j->c->bias, dst[0], dst[1], dst[2], dst[3], j->relu);
        else
            tile_output(j->m + (size_t)t * cout, plane, cout, j->c->bias, dst, res, j->relu);
    }
}

/* The transforms for the layer's GEMM kernel: AVX-512 beside the AVX-512 kernel, the emulated
 * build beside the emulated kernel (so that tests run it on any CPU), else the loops above. All
 * give the same bits (winograd_kernels.h). */
typedef struct {
    WinoTilesFn input, output;
} Transforms;

static Transforms transforms_for(const Conv *c) {
    Transforms t = {input_tiles, output_tiles};
    int kernel = c->wino_packed[0].data ? c->wino_packed[0].kernel : GEMM_OPENBLAS;
    if (kernel == GEMM_AVX512) t = (Transforms){wino_input_avx512, wino_output_avx512};
    if (kernel == GEMM_AVX512_EMU) t = (Transforms){wino_input_avx512_emu, wino_output_avx512_emu};
    return t;
}

typedef struct {
    const Wino *j;
    Transforms t;
} WinoParts;

static void input_transform_task(void *arg, int part) {
    const WinoParts *p = arg;
    int a, b;
    part_range(p->j->ntiles, part, &a, &b);
    p->t.input(p->j, a, b);
}

static void output_transform_task(void *arg, int part) {
    const WinoParts *p = arg;
    int a, b;
    part_range(p->j->ntiles, part, &a, &b);
    p->t.output(p->j, a, b);
}

void conv2d_winograd(const Conv *c, const float *x, int n, int h, int w, float *out, const float *residual,
                     int relu, float *scratch) {
    int th, tw;
    tile_counts(h, w, &th, &tw);
    int tiles = n * th * tw, step = chunk_tiles(c, tiles);
    Transforms tf = transforms_for(c);
    for (int t0 = 0; t0 < tiles; t0 += step) {
        int nt = t0 + step < tiles ? step : tiles - t0;
        Wino j = {c, x, residual, out, scratch, scratch + (size_t)16 * nt * c->cin, h, w, th, tw, t0, nt, relu, 0};
        WinoParts parts = {&j, tf};
        pool_run(WINO_PARTS, input_transform_task, &parts);
        if (c->wino_packed[0].data) {
            GemmJob g0 = packed_job(&j, 0); /* the 16 GEMMs have one shape */
            j.gemm_tasks = gemm_tasks(&g0);
            pool_run(16 * j.gemm_tasks, packed_gemm_task, &j);
        } else {
            pool_run(16, gemm_task, &j);
        }
        pool_run(WINO_PARTS, output_transform_task, &parts);
    }
}
