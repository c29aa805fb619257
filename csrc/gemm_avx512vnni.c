/* gemm_avx512vnni.c: the int8 GEMM block on AVX-512 VNNI (see gemm_int8.h for the packing, the
 * driver and the epilogue).
 *
 * c[rows x 32] int32 += a[rows x 4 kg] uint8 . panel[4 kg x 32] int8, 12 rows at a time in 24 zmm
 * accumulators: per group of 4 values of k, two zmm of B (32 columns x 4 bytes) and one
 * broadcast dword of A per row, VPDPBUSD (4 products per lane, summed exactly in int32).
 *
 * Written over vec_int8.h: built for AVX-512 VNNI here, and as the plain-C emulation by
 * gemm_avx512vnni_emu.c (COVIDX_INT8_EMU), which gives the same bits and runs on any CPU. */
#include <string.h>

#include "gemm_int8.h"
#include "vec_int8.h"


#if Q_BUILD

#ifdef COVIDX_INT8_EMU
#define EPILOGUE int8_epilogue_plain /* the emulated build runs on any CPU */
#else
#define EPILOGUE int8_epilogue_avx512
#endif

#define MR 12

/* Rows 0 .. mr - 1 added to c (load) or written to it, 1 <= mr <= 12; always inlined with a
 * constant mr. */
__attribute__((always_inline)) Q_VNNI512 static inline void rows_vnni(int mr, const uint8_t *a, size_t lda,
                                                                     const int8_t *b, int kg, int32_t *c, int load) {
    Q16 acc[MR][2];
Q_UNROLL(12)
    for (int i = 0; i < mr; i++)
        acc[i][0] = load ? q16_load32(c + i * 32) : q16_zero(), acc[i][1] = load ? q16_load32(c + i * 32 + 16) : q16_zero();
    for (int g = 0; g < kg; g++, b += 128) {
        Q16 b0 = q16_load(b), b1 = q16_load(b + 64);
Q_UNROLL(12)
        for (int i = 0; i < mr; i++) {
            int32_t x;
            memcpy(&x, a + (size_t)i * lda + 4 * (size_t)g, sizeof x);
            Q16 xa = q16_set1(x);
            acc[i][0] = q16_dpbusd(acc[i][0], xa, b0), acc[i][1] = q16_dpbusd(acc[i][1], xa, b1);
        }
    }
Q_UNROLL(12)
    for (int i = 0; i < mr; i++) q16_store(c + i * 32, acc[i][0]), q16_store(c + i * 32 + 16, acc[i][1]);
}

/* The I8BlockFn of gemm_int8.h. */
Q_VNNI512 static void block_vnni(const uint8_t *a, size_t lda, const int8_t *b, int kg, int32_t *c, int rows,
                                 int load) {
    int i = 0;
    for (; i + MR <= rows; i += MR) rows_vnni(MR, a + (size_t)i * lda, lda, b, kg, c + i * 32, load);
    const uint8_t *ar = a + (size_t)i * lda;
    int32_t *cr = c + i * 32;
    switch (rows - i) {
    case 0: break;
    case 1: rows_vnni(1, ar, lda, b, kg, cr, load); break;
    case 2: rows_vnni(2, ar, lda, b, kg, cr, load); break;
    case 3: rows_vnni(3, ar, lda, b, kg, cr, load); break;
    case 4: rows_vnni(4, ar, lda, b, kg, cr, load); break;
    case 5: rows_vnni(5, ar, lda, b, kg, cr, load); break;
    case 6: rows_vnni(6, ar, lda, b, kg, cr, load); break;
    case 7: rows_vnni(7, ar, lda, b, kg, cr, load); break;
    case 8: rows_vnni(8, ar, lda, b, kg, cr, load); break;
    case 9: rows_vnni(9, ar, lda, b, kg, cr, load); break;
    case 10: rows_vnni(10, ar, lda, b, kg, cr, load); break;
    default: rows_vnni(11, ar, lda, b, kg, cr, load); break;
    }
}

void QFN(gemm_avx512vnni_run_task)(const GemmJob *g, int task) {
    gemm_int8_task((const GemmI8Job *)(const void *)g, task, block_vnni, EPILOGUE);
}

#else /* not x86-64: never picked (gemm_kernel_runs() says 0) */

void QFN(gemm_avx512vnni_run_task)(const GemmJob *g, int task) {
    (void)g;
    (void)task;
}

#endif
