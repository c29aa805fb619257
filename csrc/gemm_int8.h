/* gemm_int8.h: what the int8 kernels (gemm_avx512vnni.c, gemm_avxvnni.c, gemm_avx2int8.c) share:
 * the job, the packed layout of B, and the driver that runs one task. The kernels compute exact
 * int32 sums; everything in floating point (the epilogue) is here, in one order, so every kernel
 * gives the same bits.
 *
 *     C[m x n] = relu?( float(A . Bq) * scale + bias (+ residual) )     per column, in that order
 *
 * A is uint8 with values 0..127 (the activations, quantised by the caller): with B in -127..127 a
 * VPMADDUBSW pair sum is at most 2 * 127 * 127 = 32258, so the AVX2 kernel never saturates and
 * all kernels give the same integers. Products are summed in int32 (exact for k < 133000).
 *
 * Packed B (gemm_int8_pack): each column quantised symmetrically, wscale[j] = max_k |B[k][j]| / 127
 * (0 for a zero column), Bq = rint(B / wscale) in -127..127 (round half to even). K is padded
 * with zeros to kp = a multiple of 4, N to panels of 32 columns. Panel j starts at
 * i8 + j * kp * 32; in it, group g (k = 4g .. 4g + 3) is 128 bytes, 4 per column:
 *
 *     panel_j[g * 128 + col * 4 + t] = Bq[4 g + t][32 j + col]
 *
 * which is the B operand of VPDPBUSD as it is (a 32-bit lane per column), and of VPMADDUBSW.
 *
 * The driver (gemm_int8_task): task grid of gemm_kernels.h (32-column panels, at most GEMM_MC
 * rows); for each panel, for each block of I8_KC values of k (its 16 KiB of B stay in L1), the
 * kernel adds the block's products to the int32 sums of the task's rows, I8_MB rows a call, in a
 * stack buffer (the first block starts the sums at zero in registers, so the buffer is cleared
 * only when k < 4 gives no block); then the driver adds the last k % 4 products and the kernel's
 * epilogue (int8_epilogue.h: plain, AVX2 or AVX-512, the same bits) writes C. */
#ifndef COVIDX_GEMM_INT8_H
#define COVIDX_GEMM_INT8_H

#include <stdint.h>

#include "gemm_kernels.h"
#include "int8_epilogue.h"

#define I8_AMAX 127 /* A in 0 .. I8_AMAX */
#define I8_WMAX 127 /* B in -I8_WMAX .. I8_WMAX: a VPMADDUBSW pair, 2 * 127 * 127 = 32258, fits int16 */
#define I8_NR GEMM_INT8_NR /* columns per panel */
#define I8_MB 24 /* rows per kernel call: whole tiles of 12, 6 and 4 */
#define I8_KC 512 /* values of k per block: a panel's block of B is 16 KiB */

/* An int8 GEMM: the fp32 job's fields say the shape, B (packed by an int8 kernel), C and the
 * epilogue (g.a is not read); the int8 kernels' run_task (gemm.h) takes &job->g. */
typedef struct {
    GemmJob g;
    const uint8_t *a;   /* row r at a + r * lda: k values in 0..127 */
    size_t lda;
    const float *scale; /* (n): the scale of A times each column's wscale */
    uint8_t *cq;        /* if not NULL: C also quantised at out_inv into these bytes (ldc apart); g.c may be NULL */
    float out_inv;
} GemmI8Job;

/* The kernel's part: c[rows x 32] (row stride 32) (+)= a[rows][0 .. 4 kg) . the kg groups of B
 * at b, in int32; 1 <= rows <= I8_MB, kg >= 1. With load 0 the sums start at zero (the first
 * block of k: c is only written), else at c. */
typedef void (*I8BlockFn)(const uint8_t *a, size_t lda, const int8_t *b, int kg, int32_t *c, int rows, int load);

/* Task `task` of the grid through block(), then epilogue() (int8_epilogue.h) on its rows. */
void gemm_int8_task(const GemmI8Job *j, int task, I8BlockFn block, I8EpilogueFn epilogue);

#endif
