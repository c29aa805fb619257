/* int8_emulation.h: the integer vector operations of the int8 kernels (vec_int8.h) in plain C, so
 * that the same kernel sources run, and are checked, on a CPU without the instructions. Lanes are
 * composed from bytes arithmetically (byte t of a 32-bit lane is bits 8t .. 8t + 7, as on x86),
 * so the emulation gives the instructions' results on any host. Sums wrap modulo 2^32 as
 * VPDPBUSD / VPADDD do; VPMADDUBSW saturates its pair sums to int16 as the instruction does. */
#ifndef COVIDX_INT8_EMULATION_H
#define COVIDX_INT8_EMULATION_H

#include <stdint.h>

typedef struct { int32_t d[16]; } Q16; /* a zmm of 16 dwords */
typedef struct { int32_t d[8]; } Q8;   /* a ymm of 8 dwords */
typedef struct { int16_t w[16]; } Q8w; /* a ymm of 16 words */

static inline int32_t emu_lane(const int8_t *p) {
    return (int32_t)((uint32_t)(uint8_t)p[0] | (uint32_t)(uint8_t)p[1] << 8 | (uint32_t)(uint8_t)p[2] << 16 |
                     (uint32_t)(uint8_t)p[3] << 24);
}
static inline int emu_u8(int32_t lane, int t) { return (int)((uint32_t)lane >> (8 * t) & 0xffu); }
static inline int emu_s8(int32_t lane, int t) { int v = emu_u8(lane, t); return v < 128 ? v : v - 256; }
static inline int32_t emu_wrap_add(int32_t a, int64_t b) { return (int32_t)(uint32_t)((uint64_t)(uint32_t)a + (uint64_t)b); }

static inline Q16 q16_zero(void) { Q16 r; for (int i = 0; i < 16; i++) r.d[i] = 0; return r; }
static inline Q16 q16_set1(int32_t x) { Q16 r; for (int i = 0; i < 16; i++) r.d[i] = x; return r; }
static inline Q16 q16_load(const int8_t *p) { Q16 r; for (int i = 0; i < 16; i++) r.d[i] = emu_lane(p + 4 * i); return r; }
static inline Q16 q16_load32(const int32_t *p) { Q16 r; for (int i = 0; i < 16; i++) r.d[i] = p[i]; return r; }
static inline void q16_store(int32_t *p, Q16 v) { for (int i = 0; i < 16; i++) p[i] = v.d[i]; }
/* VPDPBUSD: per dword, acc + sum of 4 products unsigned byte of a x signed byte of b */
static inline Q16 q16_dpbusd(Q16 acc, Q16 a, Q16 b) {
    for (int i = 0; i < 16; i++) {
        int64_t s = 0;
        for (int t = 0; t < 4; t++) s += (int64_t)emu_u8(a.d[i], t) * emu_s8(b.d[i], t);
        acc.d[i] = emu_wrap_add(acc.d[i], s);
    }
    return acc;
}

static inline Q8 q8_zero(void) { Q8 r; for (int i = 0; i < 8; i++) r.d[i] = 0; return r; }
static inline Q8 q8_set1(int32_t x) { Q8 r; for (int i = 0; i < 8; i++) r.d[i] = x; return r; }
static inline Q8 q8_load(const int8_t *p) { Q8 r; for (int i = 0; i < 8; i++) r.d[i] = emu_lane(p + 4 * i); return r; }
static inline Q8 q8_load32(const int32_t *p) { Q8 r; for (int i = 0; i < 8; i++) r.d[i] = p[i]; return r; }
static inline void q8_store(int32_t *p, Q8 v) { for (int i = 0; i < 8; i++) p[i] = v.d[i]; }
static inline Q8 q8_add(Q8 a, Q8 b) { for (int i = 0; i < 8; i++) a.d[i] = emu_wrap_add(a.d[i], b.d[i]); return a; }
/* VEX VPDPBUSD (AVX-VNNI), 8 dwords */
static inline Q8 q8_dpbusd(Q8 acc, Q8 a, Q8 b) {
    for (int i = 0; i < 8; i++) {
        int64_t s = 0;
        for (int t = 0; t < 4; t++) s += (int64_t)emu_u8(a.d[i], t) * emu_s8(b.d[i], t);
        acc.d[i] = emu_wrap_add(acc.d[i], s);
    }
    return acc;
}
/* VPMADDUBSW: per word, unsigned bytes of a x signed bytes of b, the pair summed with signed saturation */
static inline Q8w q8_maddubs(Q8 a, Q8 b) {
    Q8w r;
    for (int j = 0; j < 16; j++) {
        int lane = j / 2, t = 2 * (j % 2);
        int s = emu_u8(a.d[lane], t) * emu_s8(b.d[lane], t) + emu_u8(a.d[lane], t + 1) * emu_s8(b.d[lane], t + 1);
        r.w[j] = (int16_t)(s > 32767 ? 32767 : s < -32768 ? -32768 : s);
    }
    return r;
}
/* VPMADDWD with a vector of ones: per dword, the sum of its two words */
static inline Q8 q8_madd1(Q8w x) { Q8 r; for (int i = 0; i < 8; i++) r.d[i] = (int32_t)x.w[2 * i] + x.w[2 * i + 1]; return r; }

#endif
