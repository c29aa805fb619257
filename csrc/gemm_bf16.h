/* gemm_bf16.h: what the bf16 kernels (gemm_amx.c, gemm_avx512bf16.c) share: the rounding to
 * bf16, the packed layout of B, and the driver that runs one task. Private to those files.
 *
 * Packed B (gemm_bf16_pack, gemm_bf16.c): K padded with zeros to kp = a multiple of 32, N to
 * panels of 32 columns. For panel j and k-step s (32 values of k), two 1 KiB tiles follow each
 * other at bf16 + (j * (kp / 32) + s) * 1024: columns 32j .. 32j + 15, then 32j + 16 .. 32j + 31,
 * each 16 rows (pairs of k) x 16 columns x 2 (VNNI pairs):
 *
 *     tile[t][r][col][e] = bf16(B[32 s + 2 r + e][32 j + 16 t + col])
 *
 * which is the B operand of TDPBF16PS as it is, and, row by row, of VDPBF16PS.
 *
 * The driver (gemm_bf16_task): for each 32 rows of the task, for each block of K (at most
 * BF16_KB values), rounds A's rows to bf16 once into a buffer on the stack (zeros past k and past
 * the last row), then for each panel lets the kernel add A.B over the block to a 32 x 32 fp32
 * block of C held in a stack buffer: zero for the first block of K, C's partial sums for later
 * ones; the last block adds the bias and the residual and applies ReLU on the way out. The K
 * blocks depend only on k, so every element is summed in the same order for any task split. */
#ifndef COVIDX_GEMM_BF16_H
#define COVIDX_GEMM_BF16_H

#include <stdint.h>
#include <string.h>

#include "gemm_kernels.h"

#define BF16_NR 32    /* columns per panel */
#define BF16_MB 32    /* rows per block of A (two 16-row tiles) */
#define BF16_KB 1024  /* K values per block: the rounded A block is 32 x 1024 x 2 B = 64 KiB */

/* fp32 -> bf16, round to nearest even; NaN stays NaN (quiet), overflow gives infinity. */
static inline uint16_t bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The kernel's part: c[32 x 32] (row stride 32 floats) += a[32 x 32 ns] . B over ns k-steps,
 * a's rows lda bf16 apart, b the panel's first tile of the block (layout above). Rows of c at or
 * past rows need not be computed (rows of a past them are zeros). */
typedef void (*Bf16BlockFn)(const uint16_t *a, int lda, const uint16_t *b, int ns, float *c, int rows);

/* Task `task` of the grid (gemm_kernels.h, 32-column panels) through block(). */
void gemm_bf16_task(const GemmJob *g, int task, Bf16BlockFn block);

#endif
