/* vec512.h: the small 512-bit vector layer the AVX-512 kernels are written over. Built normally,
 * each operation is one AVX-512 intrinsic in a function for that target (the library stays
 * baseline x86-64; only these functions and their callers use zmm). With COVIDX_AVX512_EMU
 * defined, the same names come from avx512_emulation.h, in plain C.
 *
 *   V16 (16 floats), V16i (16 bf16 pairs), Mask16 (lane mask)
 *   v_zero, v_set1, v_load and v_store (unaligned), v_maskz_load, v_mask_store, v_fmadd (a * b + c,
 *   one rounding), v_add, v_sub, v_max (a > b ? a : b); vi_load (32 bf16), vi_set1 (one pair);
 *   v_dpbf16 (VDPBF16PS). */
#ifndef COVIDX_VEC512_H
#define COVIDX_VEC512_H

#define V512_PRAGMA(x) _Pragma(#x)
#ifdef COVIDX_AVX512_EMU
#include "avx512_emulation.h"
#define V512_TARGET
#define V512BF16_TARGET
#define V512_UNROLL(n) /* the emulation gains nothing from unrolling, and compiles far faster */
#define FN(name) name##_emu /* a kernel's functions in its emulated build */
#define V512_BUILD 1
#elif defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FN(name) name
#define V512_BUILD 1
#include <stdint.h>
#define V512_TARGET __attribute__((target("avx512f")))
#define V512BF16_TARGET __attribute__((target("avx512f,avx512bf16")))
#define V512_INLINE __attribute__((always_inline)) static inline
#define V512_UNROLL(n) V512_PRAGMA(GCC unroll n) /* keeps the accumulators in registers */

typedef __m512 V16;
typedef __m512i V16i;
typedef __mmask16 Mask16;

V512_INLINE V512_TARGET V16 v_zero(void) { return _mm512_setzero_ps(); }
V512_INLINE V512_TARGET V16 v_set1(float x) { return _mm512_set1_ps(x); }
V512_INLINE V512_TARGET V16 v_load(const float *p) { return _mm512_loadu_ps(p); }
V512_INLINE V512_TARGET void v_store(float *p, V16 v) { _mm512_storeu_ps(p, v); }
V512_INLINE V512_TARGET V16 v_maskz_load(Mask16 m, const float *p) { return _mm512_maskz_loadu_ps(m, p); }
V512_INLINE V512_TARGET void v_mask_store(float *p, Mask16 m, V16 v) { _mm512_mask_storeu_ps(p, m, v); }
V512_INLINE V512_TARGET V16 v_fmadd(V16 a, V16 b, V16 c) { return _mm512_fmadd_ps(a, b, c); }
V512_INLINE V512_TARGET V16 v_add(V16 a, V16 b) { return _mm512_add_ps(a, b); }
V512_INLINE V512_TARGET V16 v_sub(V16 a, V16 b) { return _mm512_sub_ps(a, b); }
V512_INLINE V512_TARGET V16 v_max(V16 a, V16 b) { return _mm512_max_ps(a, b); }
V512_INLINE V512_TARGET V16i vi_load(const uint16_t *p) { return _mm512_loadu_si512((const void *)p); }
V512_INLINE V512_TARGET V16i vi_set1(uint32_t x) { return _mm512_set1_epi32((int)x); }
V512_INLINE V512BF16_TARGET V16 v_dpbf16(V16 acc, V16i a, V16i b) {
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}
#endif

#ifndef V512_BUILD /* not x86-64: the kernels written over this layer are not built */
#define FN(name) name
#define V512_BUILD 0
#endif

#endif
