/* int8_epilogue.c: the int8 GEMM's epilogue, plain and on AVX2 / AVX-512 vectors (see
 * int8_epilogue.h). */
#include "int8_epilogue.h"

#include "gemm_int8.h"

void int8_epilogue_plain(const int32_t *acc, int rows, int nr, const float *scale, const float *bias,
                         const float *residual, size_t ldc, int relu, float *c) {
    for (int i = 0; i < rows; i++) {
        const int32_t *s = acc + (size_t)i * I8_NR;
        const float *res = residual ? residual + (size_t)i * ldc : NULL;
        float *dst = c + (size_t)i * ldc;
        for (int j = 0; j < nr; j++) {
            float v = (float)s[j] * scale[j];
            if (bias) v = v + bias[j];
            if (res) v = v + res[j];
            if (relu) v = v > 0.0f ? v : 0.0f;
            dst[j] = v;
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* 8 columns from j: the lanes of mask (all ones for a whole vector) are loaded and stored. */
__attribute__((target("avx2"))) static inline void cols8(const int32_t *s, const float *scale, const float *bias,
                                                          const float *res, int relu, float *dst, __m256i mask) {
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_maskload_epi32(s, mask)), _mm256_maskload_ps(scale, mask));
    if (bias) v = _mm256_add_ps(v, _mm256_maskload_ps(bias, mask));
    if (res) v = _mm256_add_ps(v, _mm256_maskload_ps(res, mask));
    if (relu) v = _mm256_max_ps(v, _mm256_setzero_ps());
    _mm256_maskstore_ps(dst, mask, v);
}

__attribute__((target("avx2"))) void int8_epilogue_avx2(const int32_t *acc, int rows, int nr, const float *scale,
                                                        const float *bias, const float *residual, size_t ldc,
                                                        int relu, float *c) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int i = 0; i < rows; i++) {
        const int32_t *s = acc + (size_t)i * I8_NR;
        const float *res = residual ? residual + (size_t)i * ldc : NULL;
        float *dst = c + (size_t)i * ldc;
        for (int j = 0; j < nr; j += 8) {
            __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - j), lane); /* lanes j + t < nr */
            cols8(s + j, scale + j, bias ? bias + j : NULL, res ? res + j : NULL, relu, dst + j, mask);
        }
    }
}

__attribute__((target("avx512f"))) void int8_epilogue_avx512(const int32_t *acc, int rows, int nr,
                                                             const float *scale, const float *bias,
                                                             const float *residual, size_t ldc, int relu, float *c) {
    const __m512 zero = _mm512_setzero_ps();
    for (int j = 0; j < nr; j += 16) {
        int left = nr - j;
        __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __m512 sc = _mm512_maskz_loadu_ps(m, scale + j);
        __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + j) : zero;
        for (int i = 0; i < rows; i++) {
            __m512i s = _mm512_maskz_loadu_epi32(m, acc + (size_t)i * I8_NR + j);
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(s), sc);
            if (bias) v = _mm512_add_ps(v, b);
            if (residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, residual + (size_t)i * ldc + j));
            if (relu) v = _mm512_max_ps(v, zero);
            _mm512_mask_storeu_ps(c + (size_t)i * ldc + j, m, v);
        }
    }
}

#else /* not x86-64: never called (no kernel that names them is built) */

void int8_epilogue_avx2(const int32_t *acc, int rows, int nr, const float *scale, const float *bias,
                        const float *residual, size_t ldc, int relu, float *c) {
    int8_epilogue_plain(acc, rows, nr, scale, bias, residual, ldc, relu, c);
}
void int8_epilogue_avx512(const int32_t *acc, int rows, int nr, const float *scale, const float *bias,
                          const float *residual, size_t ldc, int relu, float *c) {
    int8_epilogue_plain(acc, rows, nr, scale, bias, residual, ldc, relu, c);
}

#endif
