/* avx512_emulation.h: the few 512-bit vector operations the AVX-512 kernels use (vec512.h), in
 * plain C, so that the same kernel sources run, and are checked, on a CPU without AVX-512.
 *
 * Each operation gives the bits the instruction gives: fmaf is correctly rounded, as VFMADD*PS is;
 * max follows VMAXPS (the second operand when either is NaN or both are zero); masked loads read
 * and masked stores write only the lanes in the mask, as the instructions do (faults suppressed).
 * VDPBF16PS follows the measured hardware order (../shared/docs/amx-avx512-notes.md section 1.6):
 * per lane dst = fma(a_odd, b_odd, dst), then fma(a_even, b_even, .), denormal inputs read as
 * zero and denormal results flushed to zero. Round to nearest even, as MXCSR's default. */
#ifndef COVIDX_AVX512_EMULATION_H
#define COVIDX_AVX512_EMULATION_H

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct { float f[16]; } V16;       /* a zmm of 16 floats */
typedef struct { uint32_t u[16]; } V16i;   /* a zmm of 16 pairs of bf16 (low half: even element) */
typedef uint16_t Mask16;

static inline V16 v_zero(void) { V16 r; for (int i = 0; i < 16; i++) r.f[i] = 0.0f; return r; }
static inline V16 v_set1(float x) { V16 r; for (int i = 0; i < 16; i++) r.f[i] = x; return r; }
static inline V16 v_load(const float *p) { V16 r; memcpy(r.f, p, sizeof r.f); return r; }
static inline void v_store(float *p, V16 v) { memcpy(p, v.f, sizeof v.f); }
static inline V16 v_maskz_load(Mask16 m, const float *p) {
    V16 r;
    for (int i = 0; i < 16; i++) r.f[i] = (m >> i & 1) ? p[i] : 0.0f;
    return r;
}
static inline void v_mask_store(float *p, Mask16 m, V16 v) {
    for (int i = 0; i < 16; i++)
        if (m >> i & 1) p[i] = v.f[i];
}
static inline V16 v_fmadd(V16 a, V16 b, V16 c) { for (int i = 0; i < 16; i++) c.f[i] = fmaf(a.f[i], b.f[i], c.f[i]); return c; }
static inline V16 v_add(V16 a, V16 b) { for (int i = 0; i < 16; i++) a.f[i] = a.f[i] + b.f[i]; return a; }
static inline V16 v_sub(V16 a, V16 b) { for (int i = 0; i < 16; i++) a.f[i] = a.f[i] - b.f[i]; return a; }
static inline V16 v_max(V16 a, V16 b) { for (int i = 0; i < 16; i++) a.f[i] = a.f[i] > b.f[i] ? a.f[i] : b.f[i]; return a; }

static inline V16i vi_load(const uint16_t *p) { V16i r; memcpy(r.u, p, sizeof r.u); return r; }
static inline V16i vi_set1(uint32_t x) { V16i r; for (int i = 0; i < 16; i++) r.u[i] = x; return r; }

static inline float emu_daz(float x) { return fpclassify(x) == FP_SUBNORMAL ? copysignf(0.0f, x) : x; }
static inline float emu_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return emu_daz(f);
}
static inline V16 v_dpbf16(V16 acc, V16i a, V16i b) {
    for (int i = 0; i < 16; i++) {
        float x = emu_daz(acc.f[i]);
        x = emu_daz(fmaf(emu_bf16_to_f32((uint16_t)(a.u[i] >> 16)), emu_bf16_to_f32((uint16_t)(b.u[i] >> 16)), x));
        x = emu_daz(fmaf(emu_bf16_to_f32((uint16_t)a.u[i]), emu_bf16_to_f32((uint16_t)b.u[i]), x));
        acc.f[i] = x;
    }
    return acc;
}

#endif
