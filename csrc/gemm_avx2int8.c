/* gemm_avx2int8.c: the int8 GEMM block on plain AVX2, for CPUs without VNNI (see gemm_int8.h for
 * the packing, the driver and the epilogue).
 *
 * c[rows x 32] int32 += a[rows x 4 kg] uint8 . panel[4 kg x 32] int8, one 16-column half of the
 * panel at a time, 4 rows in 8 ymm accumulators: per group of 4 values of k, two ymm of B and
 * one broadcast dword of A per row; VPMADDUBSW sums the products in pairs to int16 (A <= 127 and
 * |B| <= 127 keep each pair within int16: no saturation), VPMADDWD with ones sums the pairs to
 * int32, VPADDD accumulates: the same integers as VPDPBUSD.
 *
 * Written over vec_int8.h: built for AVX2 here, and as the plain-C emulation by
 * gemm_avx2int8_emu.c (COVIDX_INT8_EMU). */
#include <string.h>

#include "gemm_int8.h"
#include "vec_int8.h"

#if Q_BUILD

#ifdef COVIDX_INT8_EMU
#define EPILOGUE int8_epilogue_plain /* the emulated build runs on any CPU */
#else
#define EPILOGUE int8_epilogue_avx2
#endif

#define MR 4

/* Rows 0 .. mr - 1 added to c (load) or written to it, 1 <= mr <= 4; always inlined with a
 * constant mr. */
__attribute__((always_inline)) Q_AVX2 static inline void rows_avx2(int mr, const uint8_t *a, size_t lda,
                                                                   const int8_t *b, int kg, int32_t *c, int load) {
    for (int h = 0; h < 2; h++) {
        Q8 acc[MR][2];
Q_UNROLL(4)
        for (int i = 0; i < mr; i++)
            acc[i][0] = load ? q8_load32(c + i * 32 + 16 * h) : q8_zero(),
            acc[i][1] = load ? q8_load32(c + i * 32 + 16 * h + 8) : q8_zero();
        const int8_t *bh = b + 64 * h;
        for (int g = 0; g < kg; g++, bh += 128) {
            Q8 b0 = q8_load(bh), b1 = q8_load(bh + 32);
Q_UNROLL(4)
            for (int i = 0; i < mr; i++) {
                int32_t x;
                memcpy(&x, a + (size_t)i * lda + 4 * (size_t)g, sizeof x);
                Q8 xa = q8_set1(x);
                acc[i][0] = q8_add(acc[i][0], q8_madd1(q8_maddubs(xa, b0)));
                acc[i][1] = q8_add(acc[i][1], q8_madd1(q8_maddubs(xa, b1)));
            }
        }
Q_UNROLL(4)
        for (int i = 0; i < mr; i++) q8_store(c + i * 32 + 16 * h, acc[i][0]), q8_store(c + i * 32 + 16 * h + 8, acc[i][1]);
    }
}

/* The I8BlockFn of gemm_int8.h. */
Q_AVX2 static void block_avx2(const uint8_t *a, size_t lda, const int8_t *b, int kg, int32_t *c, int rows, int load) {
    int i = 0;
    for (; i + MR <= rows; i += MR) rows_avx2(MR, a + (size_t)i * lda, lda, b, kg, c + i * 32, load);
    const uint8_t *ar = a + (size_t)i * lda;
    int32_t *cr = c + i * 32;
    switch (rows - i) {
    case 0: break;
    case 1: rows_avx2(1, ar, lda, b, kg, cr, load); break;
    case 2: rows_avx2(2, ar, lda, b, kg, cr, load); break;
    default: rows_avx2(3, ar, lda, b, kg, cr, load); break;
    }
}

void QFN(gemm_avx2int8_run_task)(const GemmJob *g, int task) {
    gemm_int8_task((const GemmI8Job *)(const void *)g, task, block_avx2, EPILOGUE);
}

#else /* not x86-64: never picked (gemm_kernel_runs() says 0) */

void QFN(gemm_avx2int8_run_task)(const GemmJob *g, int task) {
    (void)g;
    (void)task;
}

#endif
