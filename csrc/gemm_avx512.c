/* gemm_avx512.c: the AVX-512F packed-weights SGEMM with its epilogue (see gemm.h): a 6 x 64
 * register tile (24 zmm accumulators, 4 for B, 1 broadcast of A) on the shared driver
 * (gemm_driver.h), which packs, blocks and orders the sums alike for every fp32 kernel: the
 * results equal the AVX2 kernel's bit for bit.
 *
 * The tile and KC were measured on an AMD EPYC (Zen 4) core, single-threaded GEMMs of ResNet50's
 * shapes: 6 x 64 with KC = 384 ran 9-12% faster than 12 x 32 with KC = 192 (fewer loads per FMA:
 * 6 broadcasts and 4 B vectors per 24 FMAs, against 12 and 2), and every layer width of ResNet50
 * is a multiple of 64.
 *
 * Written over vec512.h: built for AVX-512F here, and as the plain-C emulation by
 * gemm_avx512_emu.c (COVIDX_AVX512_EMU), which gives the same bits and runs on any CPU. */
#include "gemm_kernels.h"
#include "vec512.h"

#define MR 6    /* rows per register tile */
#define NR GEMM_AVX512_NR /* columns per register tile and per packed panel: 64 */
#define NV 4    /* zmm vectors per row of the tile */
#define KC 384  /* rows of B per block: a 96 KiB panel, streamed from L2 */
#define PACK_FN FN(gemm_avx512_pack)
#define RUN_TASK_FN FN(gemm_avx512_run_task)
#define DRIVER_VECTORS V512_BUILD
#define TARGET V512_TARGET
#define UNROLL(n) V512_UNROLL(n)

#if V512_BUILD
typedef V16 Vec;
#define vec_zero v_zero
#define vec_set1 v_set1
#define vec_load v_load
#define vec_store v_store
#define vec_fmadd v_fmadd
#define vec_add v_add
#define vec_max v_max
#endif

#include "gemm_driver.h"
