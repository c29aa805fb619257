/* vec_int8.h: the integer vector layer the int8 kernels are written over. Built normally, each
 * operation is one intrinsic in a function for its target (the library stays baseline x86-64).
 * With COVIDX_INT8_EMU defined, the same names come from int8_emulation.h, in plain C.
 *
 *   Q16: 16 dwords (zmm)   q16_zero, q16_set1, q16_load (64 bytes), q16_load32 (16 dwords), q16_store,
 *                          q16_dpbusd (VPDPBUSD)
 *   Q8:  8 dwords (ymm)    q8_zero, q8_set1, q8_load (32 bytes), q8_load32 (8 dwords), q8_store, q8_add (VPADDD),
 *                          q8_dpbusd (VEX VPDPBUSD, AVX-VNNI), q8_maddubs (VPMADDUBSW, -> Q8w),
 *                          q8_madd1 (VPMADDWD with ones, Q8w -> Q8) */
#ifndef COVIDX_VEC_INT8_H
#define COVIDX_VEC_INT8_H

#define Q_PRAGMA(x) _Pragma(#x)
#ifdef COVIDX_INT8_EMU
#include "int8_emulation.h"
#define Q_VNNI512 /* targets: none in the emulation */
#define Q_AVXVNNI
#define Q_AVX2
#define Q_UNROLL(n) /* the emulation gains nothing from unrolling, and compiles far faster */
#define QFN(name) name##_emu /* a kernel's functions in its emulated build */
#define Q_BUILD 1
#elif defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <stdint.h>
#define QFN(name) name
#define Q_BUILD 1
#define Q_VNNI512 __attribute__((target("avx512f,avx512vnni")))
#define Q_AVXVNNI __attribute__((target("avx2,avxvnni")))
#define Q_AVX2 __attribute__((target("avx2")))
#define Q_INLINE __attribute__((always_inline)) static inline
#define Q_UNROLL(n) Q_PRAGMA(GCC unroll n) /* keeps the accumulators in registers */

typedef __m512i Q16;
typedef __m256i Q8;
typedef __m256i Q8w;

Q_INLINE Q_VNNI512 Q16 q16_zero(void) { return _mm512_setzero_si512(); }
Q_INLINE Q_VNNI512 Q16 q16_set1(int32_t x) { return _mm512_set1_epi32(x); }
Q_INLINE Q_VNNI512 Q16 q16_load(const int8_t *p) { return _mm512_loadu_si512((const void *)p); }
Q_INLINE Q_VNNI512 Q16 q16_load32(const int32_t *p) { return _mm512_loadu_si512((const void *)p); }
Q_INLINE Q_VNNI512 void q16_store(int32_t *p, Q16 v) { _mm512_storeu_si512((void *)p, v); }
Q_INLINE Q_VNNI512 Q16 q16_dpbusd(Q16 acc, Q16 a, Q16 b) { return _mm512_dpbusd_epi32(acc, a, b); }

Q_INLINE Q_AVX2 Q8 q8_zero(void) { return _mm256_setzero_si256(); }
Q_INLINE Q_AVX2 Q8 q8_set1(int32_t x) { return _mm256_set1_epi32(x); }
Q_INLINE Q_AVX2 Q8 q8_load(const int8_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }
Q_INLINE Q_AVX2 Q8 q8_load32(const int32_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }
Q_INLINE Q_AVX2 void q8_store(int32_t *p, Q8 v) { _mm256_storeu_si256((__m256i *)(void *)p, v); }
Q_INLINE Q_AVX2 Q8 q8_add(Q8 a, Q8 b) { return _mm256_add_epi32(a, b); }
Q_INLINE Q_AVX2 Q8w q8_maddubs(Q8 a, Q8 b) { return _mm256_maddubs_epi16(a, b); }
Q_INLINE Q_AVX2 Q8 q8_madd1(Q8w x) { return _mm256_madd_epi16(x, _mm256_set1_epi16(1)); }
Q_INLINE Q_AVXVNNI Q8 q8_dpbusd(Q8 acc, Q8 a, Q8 b) { return _mm256_dpbusd_avx_epi32(acc, a, b); }
#endif

#ifndef Q_BUILD /* not x86-64: the kernels written over this layer are not built */
#define QFN(name) name
#define Q_BUILD 0
#endif

#endif
