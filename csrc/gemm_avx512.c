/* gemm_avx512.c: the AVX-512F packed-weights SGEMM with its epilogue (see gemm.h): a 12 x 32
 * register tile (24 zmm accumulators, 2 for B, 1 broadcast of A) on the shared driver
 * (gemm_driver.h), which packs, blocks and orders the sums alike for every fp32 kernel: the
 * results equal the AVX2 kernel's bit for bit.
 *
 * Written over vec512.h: built for AVX-512F here, and as the plain-C emulation by
 * gemm_avx512_emu.c (COVIDX_AVX512_EMU), which gives the same bits and runs on any CPU. */
#include "gemm_kernels.h"
#include "vec512.h"

#define MR 12   /* rows per register tile */
#define NR GEMM_AVX512_NR /* columns per register tile and per packed panel: 32 */
#define NV 2    /* zmm vectors per row of the tile */
#define KC 192  /* rows of B per block: a 24 KiB panel, within a 32 or 48 KiB L1 */
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
