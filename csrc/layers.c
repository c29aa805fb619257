/* layers.c: fast NHWC layers. A convolution is one SGEMM per chunk of output pixels:
 *
 *     out[pixels x cout] = A[pixels x K] . W[K x cout],   K = kh * kw * cin
 *
 * where A is the input itself for a stride-1 1x1 convolution and an im2col panel otherwise. With
 * a packed kernel (gemm.h: AVX-512, AVX2 + FMA, or bf16 on AMX / AVX512_BF16; weights packed at
 * load) the epilogue (bias, residual,
 * ReLU) is applied in registers and each task builds the im2col rows it multiplies; otherwise
 * OpenBLAS runs the GEMM and each task's epilogue follows at once, while its block of the output
 * is still in cache. Chunk and task sizes depend only on the layer's shape, never on the number
 * of threads, so the outputs are bitwise the same for any thread count. */
#include "layers.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "blas.h"
#include "conv_int8.h"
#include "threadpool.h"
#include "winograd.h"

#ifndef CHUNK_BYTES
#define CHUNK_BYTES (8u << 20) /* im2col panel (or output block) per chunk: about L3-sized */
#endif
#define MIN_CHUNK_ROWS 256
#ifndef TASK_FLOPS
#define TASK_FLOPS 256e6 /* GEMM work per task: coarse enough to amortise OpenBLAS packing */
#endif
#define MIN_TASKS 2 /* split even small GEMMs so that two cores share them */
#define MAX_TASKS 64

static int needs_im2col(const Conv *c) { return !(c->kh == 1 && c->kw == 1 && c->stride == 1 && c->pad == 0); }

static int chunk_rows(const Conv *c, int m) {
    int k = c->kh * c->kw * c->cin;
    int width = k > c->cout ? k : c->cout;
    long rows = (long)(CHUNK_BYTES / sizeof(float)) / width;
    if (rows < MIN_CHUNK_ROWS) rows = MIN_CHUNK_ROWS;
    return rows < m ? (int)rows : m;
}

size_t conv_scratch_floats(const Conv *c, int n, int h, int w) {
    if (conv_is_int8(c)) return conv_int8_scratch_floats(c, n, h, w);
    if (winograd_worth_it(c, n, h, w)) return winograd_scratch_floats(c, n, h, w);
    if (!needs_im2col(c)) return 0;
    int m = n * out_size(h, c->kh, c->stride, c->pad) * out_size(w, c->kw, c->stride, c->pad);
    return (size_t)chunk_rows(c, m) * c->kh * c->kw * c->cin;
}

/* --- im2col: panel row r = the kh x kw x cin input patch of output pixel row0 + r ------------- */

typedef struct {
    const Conv *c;
    const float *x;
    int h, w, ho, wo;
    int row0, rows, nparts;
    float *panel;
} Im2col;

static void im2col_rows(const Im2col *j, int r0, int r1) {
    const Conv *c = j->c;
    size_t k = (size_t)c->kh * c->kw * c->cin;
    for (int r = r0; r < r1; r++) {
        int p = j->row0 + r;
        int img = p / (j->ho * j->wo), rem = p % (j->ho * j->wo);
        int oy = rem / j->wo, ox = rem % j->wo;
        float *dst = j->panel + (size_t)r * k;
        /* the kernel row's pixels kx0..kx1 inside the image are contiguous in x and in the panel:
         * one copy per kernel row, zeros for the padding either side */
        int ix0 = ox * c->stride - c->pad;
        int kx0 = ix0 < 0 ? (-ix0 < c->kw ? -ix0 : c->kw) : 0, kx1 = j->w - ix0 < c->kw ? j->w - ix0 : c->kw;
        if (kx1 < kx0) kx1 = kx0;
        size_t row_floats = (size_t)c->kw * c->cin;
        for (int ky = 0; ky < c->kh; ky++, dst += row_floats) {
            int iy = oy * c->stride - c->pad + ky;
            if (iy < 0 || iy >= j->h || kx0 == kx1) {
                memset(dst, 0, sizeof(float) * row_floats);
                continue;
            }
            memset(dst, 0, sizeof(float) * (size_t)kx0 * c->cin);
            memcpy(dst + (size_t)kx0 * c->cin, j->x + (((size_t)img * j->h + iy) * j->w + ix0 + kx0) * c->cin,
                   sizeof(float) * (size_t)(kx1 - kx0) * c->cin);
            memset(dst + (size_t)kx1 * c->cin, 0, sizeof(float) * (size_t)(c->kw - kx1) * c->cin);
        }
    }
}

static void im2col_task(void *arg, int part) {
    const Im2col *j = arg;
    int per = (j->rows + j->nparts - 1) / j->nparts;
    int r0 = part * per, r1 = r0 + per < j->rows ? r0 + per : j->rows;
    im2col_rows(j, r0, r1);
}

/* im2col and the packed GEMM fused, one block of GEMM_MC rows per task: the block's panel rows
 * are written and read back while they are in this core's cache. */
typedef struct {
    Im2col im;
    GemmJob g;
    int per_block;
} Im2colGemm;

static void im2col_gemm_task(void *arg, int block) {
    const Im2colGemm *f = arg;
    int r0 = block * GEMM_MC, r1 = r0 + GEMM_MC < f->im.rows ? r0 + GEMM_MC : f->im.rows;
    im2col_rows(&f->im, r0, r1);
    for (int t = 0; t < f->per_block; t++) gemm_run_task(&f->g, block * f->per_block + t);
}

/* --- GEMM + epilogue on one block of the output ------------------------------------------------ */

typedef struct {
    const float *a; /* (rows, k), leading dimension lda */
    int lda, rows, k, cout;
    const float *w, *bias, *residual; /* residual rows aligned with out */
    float *out;                       /* (rows, cout) */
    int relu;
    int split_rows, ntasks;
} Gemm;

/* Built for AVX2 and for baseline x86-64; the loader picks what the CPU runs. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

VECTOR_CLONES static void epilogue(float *restrict out, const float *restrict bias, const float *restrict res,
                     int rows, int c0, int c1, int ld, int relu) {
    for (int r = 0; r < rows; r++) {
        float *o = out + (size_t)r * ld;
        const float *s = res ? res + (size_t)r * ld : NULL;
        if (s) {
            for (int j = c0; j < c1; j++) o[j] += bias[j] + s[j];
        } else {
            for (int j = c0; j < c1; j++) o[j] += bias[j];
        }
        if (relu)
            for (int j = c0; j < c1; j++) o[j] = o[j] > 0.0f ? o[j] : 0.0f;
    }
}

static void gemm_task(void *arg, int t) {
    const Gemm *g = arg;
    if (g->split_rows) {
        int per = (g->rows + g->ntasks - 1) / g->ntasks;
        int r0 = t * per, r1 = r0 + per < g->rows ? r0 + per : g->rows;
        if (r0 >= r1) return;
        float *out = g->out + (size_t)r0 * g->cout;
        sgemm_rm(r1 - r0, g->cout, g->k, g->a + (size_t)r0 * g->lda, g->lda, g->w, g->cout, out, g->cout);
        epilogue(out, g->bias, g->residual ? g->residual + (size_t)r0 * g->cout : NULL, r1 - r0, 0,
                 g->cout, g->cout, g->relu);
    } else {
        int per = ((g->cout + g->ntasks - 1) / g->ntasks + 15) / 16 * 16; /* whole vectors */
        int c0 = t * per, c1 = c0 + per < g->cout ? c0 + per : g->cout;
        if (c0 >= c1) return;
        sgemm_rm(g->rows, c1 - c0, g->k, g->a, g->lda, g->w + c0, g->cout, g->out + c0, g->cout);
        epilogue(g->out, g->bias, g->residual, g->rows, c0, c1, g->cout, g->relu);
    }
}

static void packed_gemm_task(void *arg, int t) { gemm_run_task(arg, t); }

/* Splits one GEMM into tasks by its shape: along rows when the weights are the smaller operand to
 * re-pack per task, along output channels otherwise. */
static void gemm_epilogue(Gemm *g) {
    double flops = 2.0 * g->rows * g->k * g->cout;
    int ntasks = (int)ceil(flops / TASK_FLOPS);
    if (ntasks < MIN_TASKS) ntasks = MIN_TASKS;
    ntasks += ntasks & 1;
    if (ntasks > MAX_TASKS) ntasks = MAX_TASKS;
    int max_row_tasks = g->rows / 16 > 0 ? g->rows / 16 : 1;
    int max_col_tasks = g->cout / 16 > 0 ? g->cout / 16 : 1;
    g->split_rows = (long)g->cout <= (long)g->rows || max_col_tasks == 1;
    int cap = g->split_rows ? max_row_tasks : max_col_tasks;
    g->ntasks = ntasks < cap ? ntasks : cap;
    if (g->ntasks < 1) g->ntasks = 1;
    pool_run(g->ntasks, gemm_task, g);
}

void conv2d(const Conv *c, const float *x, int n, int h, int w, float *out, const float *residual,
            int relu, float *scratch) {
    if (conv_is_int8(c)) {
        conv2d_int8(c, x, n, h, w, out, residual, relu, scratch);
        return;
    }
    if (winograd_worth_it(c, n, h, w)) {
        conv2d_winograd(c, x, n, h, w, out, residual, relu, scratch);
        return;
    }
    int ho = out_size(h, c->kh, c->stride, c->pad), wo = out_size(w, c->kw, c->stride, c->pad);
    int m = n * ho * wo, k = c->kh * c->kw * c->cin;
    int direct = !needs_im2col(c);
    int step = chunk_rows(c, m);
    for (int row0 = 0; row0 < m; row0 += step) {
        int rows = row0 + step < m ? step : m - row0;
        const float *a = direct ? x + (size_t)row0 * c->cin : scratch;
        Im2col im = {c, x, h, w, ho, wo, row0, rows, pool_get_threads(), scratch};
        const PackedB *pk = c->packed_bf16.bf16 ? &c->packed_bf16 : c->packed.data ? &c->packed : NULL;
        if (pk) {
            GemmJob g = {rows, a, k, pk, out + (size_t)row0 * c->cout, c->cout, c->bias,
                         residual ? residual + (size_t)row0 * c->cout : NULL, relu};
            if (!direct && rows >= 2 * GEMM_MC) { /* enough row blocks to share: im2col inside each */
                Im2colGemm f = {im, g, gemm_tasks_per_row_block(&g)};
                pool_run((rows + GEMM_MC - 1) / GEMM_MC, im2col_gemm_task, &f);
                continue;
            }
            if (!direct) pool_run(im.nparts, im2col_task, &im);
            pool_run(gemm_tasks(&g), packed_gemm_task, &g);
            continue;
        }
        if (!direct) pool_run(im.nparts, im2col_task, &im);
        Gemm g = {a, k, rows, k, c->cout, c->w, c->bias,
                  residual ? residual + (size_t)row0 * c->cout : NULL,
                  out + (size_t)row0 * c->cout, relu, 0, 0};
        gemm_epilogue(&g);
    }
}

/* --- pooling ----------------------------------------------------------------------------------- */

typedef struct {
    const float *x;
    int h, w, c, k, stride, pad, ho, wo;
    float *out;
} MaxPool;

static void maxpool_task(void *arg, int row) { /* row = img * ho + oy */
    const MaxPool *p = arg;
    int img = row / p->ho, oy = row % p->ho;
    for (int ox = 0; ox < p->wo; ox++) {
        float *o = p->out + ((size_t)row * p->wo + ox) * p->c;
        for (int ch = 0; ch < p->c; ch++) o[ch] = -FLT_MAX;
        for (int ky = 0; ky < p->k; ky++) {
            int iy = oy * p->stride - p->pad + ky;
            if (iy < 0 || iy >= p->h) continue;
            for (int kx = 0; kx < p->k; kx++) {
                int ix = ox * p->stride - p->pad + kx;
                if (ix < 0 || ix >= p->w) continue;
                const float *s = p->x + (((size_t)img * p->h + iy) * p->w + ix) * p->c;
                for (int ch = 0; ch < p->c; ch++) o[ch] = s[ch] > o[ch] ? s[ch] : o[ch];
            }
        }
    }
}

void maxpool2d(const float *x, int n, int h, int w, int c, int k, int stride, int pad, float *out) {
    MaxPool p = {x, h, w, c, k, stride, pad, out_size(h, k, stride, pad), out_size(w, k, stride, pad), out};
    pool_run(n * p.ho, maxpool_task, &p);
}

/* --- per-image standardisation ----------------------------------------------------------------- */

typedef struct {
    const float *x;
    size_t per_image;
    double eps;
    float *out;
} Standardize;

static void standardize_task(void *arg, int img) {
    const Standardize *s = arg;
    const float *x = s->x + (size_t)img * s->per_image;
    float *o = s->out + (size_t)img * s->per_image;
    double sum = 0.0, sq = 0.0;
    for (size_t i = 0; i < s->per_image; i++) sum += x[i];
    double mean = sum / (double)s->per_image;
    for (size_t i = 0; i < s->per_image; i++) sq += (x[i] - mean) * (x[i] - mean);
    double inv = 1.0 / sqrt(sq / (double)s->per_image + s->eps);
    for (size_t i = 0; i < s->per_image; i++) o[i] = (float)((x[i] - mean) * inv);
}

void standardize_images(const float *x, int n, int h, int w, int c, double eps, float *out) {
    Standardize s = {x, (size_t)h * w * c, eps, out};
    pool_run(n, standardize_task, &s);
}

void global_pool(const float *x, int n, int h, int w, int c, int use_max, float *out) {
    size_t hw = (size_t)h * w;
    for (int img = 0; img < n; img++) {
        const float *s = x + (size_t)img * hw * c;
        for (int ch = 0; ch < c; ch++) {
            double acc = use_max ? -DBL_MAX : 0.0;
            for (size_t p = 0; p < hw; p++) {
                double v = s[p * c + ch];
                acc = use_max ? (v > acc ? v : acc) : acc + v;
            }
            out[(size_t)img * c + ch] = (float)(use_max ? acc : acc / (double)hw);
        }
    }
}

/* --- channel statistics ----------------------------------------------------------------------- */

#define STATS_MAX_CHANNELS 2048
#define STATS_BLOCK 32 /* pixels summed in float before each double update: vectorisable, and
                        * short enough that float rounding stays far below what the scores see */

typedef struct {
    const float *x;
    int hw, c;
    float *out;
    size_t stride;
} ChannelStats;

/* One image. Values are shifted by the first pixel's before squaring, so a near-constant channel
 * does not lose its variance to cancellation in E[x^2] - E[x]^2. */
static void channel_stats_task(void *arg, int img) {
    const ChannelStats *s = arg;
    const float *x = s->x + (size_t)img * s->hw * s->c;
    int c = s->c;
    double sum[STATS_MAX_CHANNELS], sq[STATS_MAX_CHANNELS];
    float bs[STATS_MAX_CHANNELS], bq[STATS_MAX_CHANNELS];
    const float *shift = x;
    for (int ch = 0; ch < c; ch++) sum[ch] = sq[ch] = 0.0;
    for (int p0 = 0; p0 < s->hw; p0 += STATS_BLOCK) {
        int p1 = p0 + STATS_BLOCK < s->hw ? p0 + STATS_BLOCK : s->hw;
        for (int ch = 0; ch < c; ch++) bs[ch] = bq[ch] = 0.0f;
        for (int p = p0; p < p1; p++) {
            const float *v = x + (size_t)p * c;
            for (int ch = 0; ch < c; ch++) {
                float d = v[ch] - shift[ch];
                bs[ch] += d;
                bq[ch] += d * d;
            }
        }
        for (int ch = 0; ch < c; ch++) sum[ch] += bs[ch], sq[ch] += bq[ch];
    }
    float *o = s->out + (size_t)img * s->stride;
    for (int ch = 0; ch < c; ch++) {
        double m = sum[ch] / s->hw, var = sq[ch] / s->hw - m * m;
        o[ch] = (float)(m + shift[ch]);
        o[c + ch] = (float)sqrt(var > 0.0 ? var : 0.0);
    }
}

void channel_stats(const float *x, int n, int h, int w, int c, float *out, size_t stride) {
    if (c > STATS_MAX_CHANNELS) { /* not in ResNet50; the plain loops have no such limit */
        channel_stats_ref(x, n, h, w, c, out, stride);
        return;
    }
    ChannelStats s = {x, h * w, c, out, stride};
    pool_run(n, channel_stats_task, &s);
}

/* --- grid pooling and thumbnails -------------------------------------------------------------- */

/* Where cell i of g along an axis of size len begins and ends (adaptive pooling's cut). */
static void cell_range(int i, int g, int len, int *lo, int *hi) {
    *lo = (int)((long long)i * len / g);
    *hi = (int)(((long long)(i + 1) * len + g - 1) / g);
}

typedef struct {
    const float *x;
    int h, w, c, g;
    double eps;
    float *out;
    size_t stride;
} GridJob;

static void grid_pool_task(void *arg, int img) {
    const GridJob *j = arg;
    const float *x = j->x + (size_t)img * j->h * j->w * j->c;
    float *o = j->out + (size_t)img * j->stride;
    for (int gy = 0; gy < j->g; gy++)
        for (int gx = 0; gx < j->g; gx++) {
            int y0, y1, x0, x1;
            cell_range(gy, j->g, j->h, &y0, &y1);
            cell_range(gx, j->g, j->w, &x0, &x1);
            double area = (double)(y1 - y0) * (x1 - x0);
            float *dst = o + (size_t)(gy * j->g + gx) * j->c;
            for (int ch = 0; ch < j->c; ch++) {
                double acc = 0.0;
                for (int y = y0; y < y1; y++)
                    for (int xx = x0; xx < x1; xx++) acc += x[((size_t)y * j->w + xx) * j->c + ch];
                dst[ch] = (float)(acc / area);
            }
        }
}

void grid_pool(const float *x, int n, int h, int w, int c, int g, float *out, size_t stride) {
    GridJob j = {x, h, w, c, g, 0.0, out, stride};
    pool_run(n, grid_pool_task, &j);
}

static void thumbnail_task(void *arg, int img) {
    const GridJob *j = arg;
    size_t hw = (size_t)j->h * j->w, count = hw * j->c;
    const float *x = j->x + (size_t)img * count;
    double mean = 0.0, var = 0.0;
    for (size_t i = 0; i < count; i++) mean += x[i];
    mean /= (double)count;
    for (size_t i = 0; i < count; i++) var += (x[i] - mean) * (x[i] - mean);
    double inv_std = 1.0 / sqrt(var / (double)count + j->eps);
    float *o = j->out + (size_t)img * j->stride;
    for (int gy = 0; gy < j->g; gy++)
        for (int gx = 0; gx < j->g; gx++) {
            int y0, y1, x0, x1;
            cell_range(gy, j->g, j->h, &y0, &y1);
            cell_range(gx, j->g, j->w, &x0, &x1);
            double acc = 0.0;
            for (int y = y0; y < y1; y++)
                for (int xx = x0; xx < x1; xx++) {
                    const float *v = x + ((size_t)y * j->w + xx) * j->c;
                    for (int ch = 0; ch < j->c; ch++) acc += v[ch];
                }
            double cell_mean = acc / ((double)(y1 - y0) * (x1 - x0) * j->c);
            o[gy * j->g + gx] = (float)((cell_mean - mean) * inv_std);
        }
}

void thumbnail(const float *x, int n, int h, int w, int c, int g, double eps, float *out, size_t stride) {
    GridJob j = {x, h, w, c, g, eps, out, stride};
    pool_run(n, thumbnail_task, &j);
}

/* --- dense ------------------------------------------------------------------------------------- */

void activate_rows(float *x, int n, int c, int act) {
    for (int r = 0; r < n; r++) {
        float *v = x + (size_t)r * c;
        if (act == ACT_SOFTMAX) {
            float mx = v[0];
            for (int j = 1; j < c; j++) mx = v[j] > mx ? v[j] : mx;
            double sum = 0.0;
            for (int j = 0; j < c; j++) sum += exp((double)v[j] - mx);
            for (int j = 0; j < c; j++) v[j] = (float)(exp((double)v[j] - mx) / sum);
        } else if (act == ACT_SIGMOID) {
            for (int j = 0; j < c; j++) v[j] = (float)(1.0 / (1.0 + exp(-(double)v[j])));
        }
    }
}

void dense(const float *x, int n, int cin, int cout, const float *w, const PackedB *packed, const float *bias,
           int act, float *out) {
    if (packed && packed->data) { /* a few rows against a large matrix: packed, it streams through once */
        GemmJob g = {n, x, cin, packed, out, cout, bias, NULL, act == ACT_RELU};
        pool_run(gemm_tasks(&g), packed_gemm_task, &g);
    } else {
        Gemm g = {x, cin, n, cin, cout, w, bias, NULL, out, act == ACT_RELU, 0, 0};
        gemm_epilogue(&g);
    }
    activate_rows(out, n, cout, act);
}
