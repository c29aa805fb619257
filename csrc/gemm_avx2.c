/* gemm_avx2.c: the AVX2 + FMA packed-weights SGEMM with its epilogue (see gemm.h): a 6 x 16
 * register tile (12 ymm accumulators, 2 for B, 1 broadcast of A) on the shared driver
 * (gemm_driver.h), which packs, blocks and orders the sums alike for every fp32 kernel. */
#include "gemm_kernels.h"

#define MR 6    /* rows per register tile */
#define NR GEMM_AVX2_NR /* columns per register tile and per packed panel: 16 */
#define NV 2    /* ymm vectors per row of the tile */
#define KC 256  /* rows of B per block: a 16 KiB panel, half of L1 */
#define PACK_FN gemm_avx2_pack
#define RUN_TASK_FN gemm_avx2_run_task

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DRIVER_VECTORS 1
#define TARGET __attribute__((target("avx2,fma")))
#define PRAGMA(x) _Pragma(#x)
#define UNROLL(n) PRAGMA(GCC unroll n) /* keeps the accumulators in registers */
#define VEC_OP __attribute__((always_inline)) TARGET static inline

typedef __m256 Vec;
VEC_OP Vec vec_zero(void) { return _mm256_setzero_ps(); }
VEC_OP Vec vec_set1(float x) { return _mm256_set1_ps(x); }
VEC_OP Vec vec_load(const float *p) { return _mm256_loadu_ps(p); }
VEC_OP void vec_store(float *p, Vec v) { _mm256_storeu_ps(p, v); }
VEC_OP Vec vec_fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
VEC_OP Vec vec_add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
VEC_OP Vec vec_max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
#else
#define DRIVER_VECTORS 0
#endif

#include "gemm_driver.h"
