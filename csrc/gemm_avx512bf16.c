/* gemm_avx512bf16.c: the bf16 GEMM block on AVX512_BF16, for CPUs without AMX (see gemm_bf16.h
 * for the packing and the driver).
 *
 * c[32 x 32] fp32 += a[32 x 32 ns] bf16 . B over ns k-steps, 8 rows x 32 columns at a time in
 * 16 zmm accumulators: per pair of k, two zmm of B (16 columns x 2 bf16 each, a row of the two
 * tiles of gemm_bf16.h) and one broadcast pair of A per row, VDPBF16PS (which sums the pair's
 * second product first, then the first, into the accumulator). Its summation order differs from
 * TDPBF16PS, so this kernel and gemm_amx.c agree to rounding, not bit for bit.
 *
 * Written over vec512.h: built for AVX512_BF16 here, and as the plain-C emulation by
 * gemm_avx512bf16_emu.c (COVIDX_AVX512_EMU). */
#include "gemm_bf16.h"
#include "vec512.h"

#if V512_BUILD

#define MR 8

/* Rows i0 .. i0 + mr - 1 of the block, 1 <= mr <= 8; always inlined with a constant mr. */
__attribute__((always_inline)) V512BF16_TARGET static inline void rows_dp(int mr, const uint16_t *a, int lda,
                                                                         const uint16_t *b, int ns, float *c) {
    V16 acc[MR][2];
V512_UNROLL(8)
    for (int i = 0; i < mr; i++) acc[i][0] = v_load(c + i * 32), acc[i][1] = v_load(c + i * 32 + 16);
    for (int s = 0; s < ns; s++)
        for (int r = 0; r < 16; r++) {
            const uint16_t *bs = b + (size_t)s * 1024 + r * 32;
            V16i b0 = vi_load(bs), b1 = vi_load(bs + 512);
V512_UNROLL(8)
            for (int i = 0; i < mr; i++) {
                const uint16_t *ap = a + (size_t)i * lda + 32 * s + 2 * r;
                V16i x = vi_set1((uint32_t)ap[0] | (uint32_t)ap[1] << 16);
                acc[i][0] = v_dpbf16(acc[i][0], x, b0), acc[i][1] = v_dpbf16(acc[i][1], x, b1);
            }
        }
    Mask16 all = 0xffff;
V512_UNROLL(8)
    for (int i = 0; i < mr; i++) v_mask_store(c + i * 32, all, acc[i][0]), v_mask_store(c + i * 32 + 16, all, acc[i][1]);
}

/* The Bf16BlockFn of gemm_bf16.h: only the first `rows` rows are computed. */
V512BF16_TARGET static void block_dp(const uint16_t *a, int lda, const uint16_t *b, int ns, float *c, int rows) {
    int i = 0;
    for (; i + MR <= rows; i += MR) rows_dp(MR, a + (size_t)i * lda, lda, b, ns, c + i * 32);
    switch (rows - i) {
    case 0: break;
    case 1: rows_dp(1, a + (size_t)i * lda, lda, b, ns, c + i * 32); break;
    case 2: rows_dp(2, a + (size_t)i * lda, lda, b, ns, c + i * 32); break;
    case 3: rows_dp(3, a + (size_t)i * lda, lda, b, ns, c + i * 32); break;
    case 4: rows_dp(4, a + (size_t)i * lda, lda, b, ns, c + i * 32); break;
    case 5: rows_dp(5, a + (size_t)i * lda, lda, b, ns, c + i * 32); break;
    case 6: rows_dp(6, a + (size_t)i * lda, lda, b, ns, c + i * 32); break;
    default: rows_dp(7, a + (size_t)i * lda, lda, b, ns, c + i * 32); break;
    }
}

void FN(gemm_avx512bf16_run_task)(const GemmJob *g, int task) { gemm_bf16_task(g, task, block_dp); }

#else

void FN(gemm_avx512bf16_run_task)(const GemmJob *g, int task) {
    (void)g;
    (void)task;
}

#endif
