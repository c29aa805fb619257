/* int8_epilogue.c: the int8 GEMM's epilogue, plain and on AVX2 / AVX-512 vectors (see
 * int8_epilogue.h). */
#include "int8_epilogue.h"

#include "gemm_int8.h"

void int8_epilogue_plain(I8_EPILOGUE_ARGS) {
    for (int i = 0; i < rows; i++) {
        const int32_t *s = acc + (size_t)i * I8_NR;
        const float *res = residual ? residual + (size_t)i * ldc : NULL;
        for (int j = 0; j < nr; j++) {
            float v = (float)s[j] * scale[j];
            if (bias) v = v + bias[j];
            if (res) v = v + res[j];
            if (relu) v = v > 0.0f ? v : 0.0f;
            if (c) c[(size_t)i * ldc + j] = v;
            if (!cq) continue;
            float u = v * out_inv; /* conv_int8.c's quantisation of the next layer's input */
            u = u > 0.0f ? u : 0.0f;
            u = u < (float)I8_AMAX ? u : (float)I8_AMAX;
            cq[(size_t)i * ldc + j] = (uint8_t)(int)((u + 0x1p23f) - 0x1p23f); /* round half to even */
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <string.h>

__attribute__((target("avx2"))) void int8_epilogue_avx2(I8_EPILOGUE_ARGS) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps((float)I8_AMAX), inv = _mm256_set1_ps(out_inv);
    for (int i = 0; i < rows; i++) {
        const int32_t *s = acc + (size_t)i * I8_NR;
        const float *res = residual ? residual + (size_t)i * ldc : NULL;
        for (int j = 0; j < nr; j += 8) {
            __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - j), lane); /* lanes j + t < nr */
            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_maskload_epi32(s + j, mask)),
                                     _mm256_maskload_ps(scale + j, mask));
            if (bias) v = _mm256_add_ps(v, _mm256_maskload_ps(bias + j, mask));
            if (res) v = _mm256_add_ps(v, _mm256_maskload_ps(res + j, mask));
            if (relu) v = _mm256_max_ps(v, zero);
            if (c) _mm256_maskstore_ps(c + (size_t)i * ldc + j, mask, v);
            if (!cq) continue;
            /* MAXPS(u, 0) is 0 for NaN as the C above; VCVTPS2DQ rounds half to even */
            __m256i q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, inv), zero), top));
            __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            uint8_t bytes[16];
            _mm_storeu_si128((__m128i *)(void *)bytes, _mm_packus_epi16(w, w));
            memcpy(cq + (size_t)i * ldc + j, bytes, (size_t)(nr - j < 8 ? nr - j : 8));
        }
    }
}

__attribute__((target("avx512f"))) void int8_epilogue_avx512(I8_EPILOGUE_ARGS) {
    const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps((float)I8_AMAX), inv = _mm512_set1_ps(out_inv);
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
            if (c) _mm512_mask_storeu_ps(c + (size_t)i * ldc + j, m, v);
            if (!cq) continue;
            __m512i q = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, inv), zero), top));
            _mm512_mask_cvtepi32_storeu_epi8(cq + (size_t)i * ldc + j, m, q);
        }
    }
}

#else /* not x86-64: never called (no kernel that names them is built) */

void int8_epilogue_avx2(I8_EPILOGUE_ARGS) { int8_epilogue_plain(acc, rows, nr, scale, bias, residual, ldc, relu, c, cq, out_inv); }
void int8_epilogue_avx512(I8_EPILOGUE_ARGS) { int8_epilogue_plain(acc, rows, nr, scale, bias, residual, ldc, relu, c, cq, out_inv); }

#endif
