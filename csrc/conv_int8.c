/* conv_int8.c: a convolution in int8 (see conv_int8.h): quantise the input once, then im2col rows
 * of uint8 and the int8 GEMM with its fp32 epilogue, on the thread pool. Task sizes depend only on
 * the shape, and the integer sums do not depend on the order at all. */
#include "conv_int8.h"

#include <stdlib.h>
#include <string.h>

#include "gemm_int8.h"
#include "threadpool.h"

#define I8_CHUNK_BYTES (4u << 20) /* uint8 im2col panel per chunk */
#define I8_MIN_CHUNK_ROWS 256
#define QUANT_BLOCK 16384 /* values per quantisation task */

static int needs_im2col(const Conv *c) { return !(c->kh == 1 && c->kw == 1 && c->stride == 1 && c->pad == 0); }
static size_t round64(size_t x) { return (x + 63) / 64 * 64; }

static int chunk_rows(const Conv *c, int m) {
    long k = (long)c->kh * c->kw * c->cin;
    long rows = (long)I8_CHUNK_BYTES / k;
    if (rows < I8_MIN_CHUNK_ROWS) rows = I8_MIN_CHUNK_ROWS;
    return rows < m ? (int)rows : m;
}

size_t conv_int8_scratch_floats(const Conv *c, int n, int h, int w) {
    size_t bytes = round64((size_t)n * h * w * c->cin);
    if (needs_im2col(c)) {
        int m = n * out_size(h, c->kh, c->stride, c->pad) * out_size(w, c->kw, c->stride, c->pad);
        bytes += (size_t)chunk_rows(c, m) * c->kh * c->kw * c->cin;
    }
    return (bytes + sizeof(float) - 1) / sizeof(float);
}

void conv_int8_free(Conv *c) {
    if (!c->int8) return;
    gemm_pack_free(&c->int8->packed);
    free(c->int8->scale);
    free(c->int8->hist);
    free(c->int8);
    c->int8 = NULL;
}

static int ensure(Conv *c) {
    if (!c->int8) c->int8 = calloc(1, sizeof(ConvInt8));
    return c->int8 ? 0 : -1;
}

int conv_int8_set(Conv *c, int kernel, float in_scale) {
    if (c->int8) {
        gemm_pack_free(&c->int8->packed);
        free(c->int8->scale);
        c->int8->scale = NULL;
    }
    if (!kernel) return 0;
    if (ensure(c) != 0) return -1;
    ConvInt8 *q = c->int8;
    q->scale = malloc(sizeof(float) * c->cout);
    if (!q->scale || gemm_pack_kernel(&q->packed, kernel, c->w, c->kh * c->kw * c->cin, c->cout, c->cout) != 0) {
        gemm_pack_free(&q->packed);
        free(q->scale);
        q->scale = NULL;
        return -1;
    }
    q->in_scale = in_scale;
    q->inv_scale = 1.0f / in_scale;
    for (int o = 0; o < c->cout; o++) q->scale[o] = in_scale * q->packed.wscale[o];
    return 0;
}

int conv_int8_observe(Conv *c, int on) {
    if (!on) {
        if (c->int8) free(c->int8->hist), c->int8->hist = NULL;
        return 0;
    }
    if (ensure(c) != 0) return -1;
    free(c->int8->hist);
    c->int8->hist = calloc(INT8_HIST_BINS, sizeof(uint64_t));
    return c->int8->hist ? 0 : -1;
}

void conv_int8_record(const Conv *c, const float *x, size_t count) {
    if (!c->int8 || !c->int8->hist) return;
    uint64_t *hist = c->int8->hist;
    for (size_t i = 0; i < count; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        /* positive floats (and +inf) by their upper 16 bits; zero, negatives and NaN in bin 0 */
        hist[u > 0 && u <= 0x7f800000u ? u >> 16 : 0]++;
    }
}

/* --- quantising the input ------------------------------------------------------------------- */

typedef struct {
    const float *x;
    uint8_t *q;
    size_t count;
    float inv;
    int avx512; /* the layer runs the AVX-512 VNNI kernel (so the CPU has AVX-512F) */
} Quant;

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* The same steps on 16 values at a time: VMAXPS gives 0 for NaN as the C below does, VCVTPS2DQ
 * rounds half to even (MXCSR's default), VPMOVDB narrows. Returns where it stopped. */
__attribute__((target("avx512f"))) static size_t quant_avx512(const float *x, uint8_t *q, size_t i0, size_t i1,
                                                              float inv) {
    __m512 vinv = _mm512_set1_ps(inv), zero = _mm512_setzero_ps(), top = _mm512_set1_ps((float)I8_AMAX);
    size_t i = i0;
    for (; i + 16 <= i1; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), vinv);
        v = _mm512_min_ps(_mm512_max_ps(v, zero), top);
        _mm_storeu_si128((__m128i *)(void *)(q + i), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
    return i;
}
#endif

static void quant_task(void *arg, int t) {
    const Quant *j = arg;
    size_t i0 = (size_t)t * QUANT_BLOCK, i1 = i0 + QUANT_BLOCK < j->count ? i0 + QUANT_BLOCK : j->count;
    const float *x = j->x;
    float inv = j->inv;
#if defined(__x86_64__) && defined(__GNUC__)
    if (j->avx512) i0 = quant_avx512(x, j->q, i0, i1, inv);
#endif
    for (size_t i = i0; i < i1; i++) {
        float v = x[i] * inv;
        v = v > 0.0f ? v : 0.0f;
        v = v < (float)I8_AMAX ? v : (float)I8_AMAX;
        /* round half to even: adding 2^23 leaves no fraction bits, in the default rounding mode */
        j->q[i] = (uint8_t)(int)((v + 0x1p23f) - 0x1p23f);
    }
}

/* --- im2col of uint8 rows --------------------------------------------------------------------- */

typedef struct {
    const Conv *c;
    const uint8_t *x;
    int h, w, ho, wo;
    int row0, rows, nparts;
    uint8_t *panel;
} Im2colU8;

static void im2col_rows_u8(const Im2colU8 *j, int r0, int r1) {
    const Conv *c = j->c;
    size_t k = (size_t)c->kh * c->kw * c->cin, row_bytes = (size_t)c->kw * c->cin;
    for (int r = r0; r < r1; r++) {
        int p = j->row0 + r;
        int img = p / (j->ho * j->wo), rem = p % (j->ho * j->wo);
        int oy = rem / j->wo, ox = rem % j->wo;
        uint8_t *dst = j->panel + (size_t)r * k;
        int ix0 = ox * c->stride - c->pad;
        int kx0 = ix0 < 0 ? (-ix0 < c->kw ? -ix0 : c->kw) : 0, kx1 = j->w - ix0 < c->kw ? j->w - ix0 : c->kw;
        if (kx1 < kx0) kx1 = kx0;
        for (int ky = 0; ky < c->kh; ky++, dst += row_bytes) {
            int iy = oy * c->stride - c->pad + ky;
            if (iy < 0 || iy >= j->h || kx0 == kx1) {
                memset(dst, 0, row_bytes);
                continue;
            }
            memset(dst, 0, (size_t)kx0 * c->cin);
            memcpy(dst + (size_t)kx0 * c->cin, j->x + (((size_t)img * j->h + iy) * j->w + ix0 + kx0) * c->cin,
                   (size_t)(kx1 - kx0) * c->cin);
            memset(dst + (size_t)kx1 * c->cin, 0, (size_t)(c->kw - kx1) * c->cin);
        }
    }
}

static void im2col_task(void *arg, int part) {
    const Im2colU8 *j = arg;
    int per = (j->rows + j->nparts - 1) / j->nparts;
    int r0 = part * per, r1 = r0 + per < j->rows ? r0 + per : j->rows;
    im2col_rows_u8(j, r0, r1);
}

static void gemm_task(void *arg, int t) { gemm_run_task(&((GemmI8Job *)arg)->g, t); }

/* im2col and the GEMM fused, one block of GEMM_MC rows per task (its rows stay in cache). */
typedef struct {
    Im2colU8 im;
    GemmI8Job job;
    int per_block;
} Fused;

static void fused_task(void *arg, int block) {
    Fused *f = arg;
    int r0 = block * GEMM_MC, r1 = r0 + GEMM_MC < f->im.rows ? r0 + GEMM_MC : f->im.rows;
    im2col_rows_u8(&f->im, r0, r1);
    for (int t = 0; t < f->per_block; t++) gemm_run_task(&f->job.g, block * f->per_block + t);
}

void conv_int8_quantize(const Conv *c, const float *x, size_t count, uint8_t *xq) {
    /* on vectors beside the AVX-512 VNNI kernel only, so an AVX2 ceiling (COVIDX_GEMM=avx2) runs no
     * AVX-512 instruction; both give the same bytes */
    Quant qj = {x, xq, count, c->int8->inv_scale, c->int8->packed.kernel == GEMM_AVX512VNNI};
    pool_run((int)((count + QUANT_BLOCK - 1) / QUANT_BLOCK), quant_task, &qj);
}

void conv2d_int8_chain(const Conv *c, const float *x, const uint8_t *xq_in, int n, int h, int w, float *out,
                       uint8_t *outq, const Conv *next, const float *residual, int relu, float *scratch) {
    const ConvInt8 *q = c->int8;
    size_t count = (size_t)n * h * w * c->cin;
    uint8_t *xq = (uint8_t *)scratch, *panel = xq + round64(count);
    if (xq_in)
        xq = (uint8_t *)xq_in; /* quantised by the layer before (not written here) */
    else
        conv_int8_quantize(c, x, count, xq);
    float out_inv = next ? next->int8->inv_scale : 0.0f;
    if (!next) outq = NULL;

    int ho = out_size(h, c->kh, c->stride, c->pad), wo = out_size(w, c->kw, c->stride, c->pad);
    int m = n * ho * wo, k = c->kh * c->kw * c->cin;
    if (!needs_im2col(c)) {
        GemmI8Job job = {{m, NULL, 0, &q->packed, out, c->cout, c->bias, residual, relu}, xq, (size_t)c->cin, q->scale,
                         outq, out_inv};
        pool_run(gemm_tasks(&job.g), gemm_task, &job);
        return;
    }
    int step = chunk_rows(c, m);
    for (int row0 = 0; row0 < m; row0 += step) {
        int rows = row0 + step < m ? step : m - row0;
        size_t at = (size_t)row0 * c->cout;
        Im2colU8 im = {c, xq, h, w, ho, wo, row0, rows, pool_get_threads(), panel};
        GemmI8Job job = {{rows, NULL, 0, &q->packed, out ? out + at : NULL, c->cout, c->bias,
                          residual ? residual + at : NULL, relu},
                         panel, (size_t)k, q->scale, outq ? outq + at : NULL, out_inv};
        if (rows >= 2 * GEMM_MC) {
            Fused f = {im, job, gemm_tasks_per_row_block(&job.g)};
            pool_run((rows + GEMM_MC - 1) / GEMM_MC, fused_task, &f);
            continue;
        }
        pool_run(im.nparts, im2col_task, &im);
        pool_run(gemm_tasks(&job.g), gemm_task, &job);
    }
}

void conv2d_int8(const Conv *c, const float *x, int n, int h, int w, float *out, const float *residual, int relu,
                 float *scratch) {
    conv2d_int8_chain(c, x, NULL, n, h, w, out, NULL, NULL, residual, relu, scratch);
}
