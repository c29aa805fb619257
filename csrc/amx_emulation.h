/* amx_emulation.h: the AMX tile instructions gemm_amx.c uses, in plain C, so that the same kernel
 * source runs, and is checked, on any CPU (gemm_amx_emu.c). Facts from the SDM and
 * ../shared/docs/amx-avx512-notes.md sections 1.3, 1.4, 1.6 and 5.2.
 *
 * The tile state is per thread, as the hardware's: the configuration (palette 1: 8 tiles of at
 * most 16 rows x 64 bytes) and the tile registers as arrays. LDTILECFG validates the
 * configuration as the hardware does and zeroes every tile; loads and TILEZERO honour each
 * tile's rows and bytes per row and zero the rest; stores write exactly rows x colsb bytes.
 * What raises #GP or #UD on the hardware (a bad configuration, a tile used before LDTILECFG or
 * after TILERELEASE, shapes that do not match, the same tile twice in TDPBF16PS) aborts here.
 *
 * TDPBF16PS, per element of C: two fp32 chains start at zero, one over the first bf16 of each
 * pair, one over the second, each step a fused multiply-add; denormal inputs (A, B and the
 * incoming C) read as zero and every result that is denormal is flushed to zero, sign kept; then
 * C = C + (even + odd). This is bit-exact against the hardware (notes, section 1.6). */
#ifndef COVIDX_AMX_EMULATION_H
#define COVIDX_AMX_EMULATION_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t palette, start_row, reserved0[14];
    uint16_t colsb[16]; /* bytes per row of tiles 0..7; 8..15 reserved */
    uint8_t rows[16];   /* rows of tiles 0..7; 8..15 reserved */
} __attribute__((aligned(64))) AmxTileConfig;

typedef struct {
    AmxTileConfig cfg;
    int configured;
    uint8_t t[8][16][64];
} AmxEmuState;

static _Thread_local AmxEmuState amx_emu;

static inline void amx_emu_trap(const char *what) {
    fprintf(stderr, "amx emulation: %s\n", what);
    abort();
}

static inline void amx_emu_ldtilecfg(const AmxTileConfig *c) {
    if (c->palette == 0) { /* back to the INIT state */
        memset(&amx_emu, 0, sizeof amx_emu);
        return;
    }
    if (c->palette != 1 || c->start_row != 0) amx_emu_trap("#GP: palette or start_row");
    for (int i = 0; i < 14; i++)
        if (c->reserved0[i]) amx_emu_trap("#GP: reserved bytes");
    for (int i = 0; i < 16; i++) {
        if (i >= 8 && (c->colsb[i] || c->rows[i])) amx_emu_trap("#GP: reserved tile");
        if (i < 8 && (c->colsb[i] > 64 || c->rows[i] > 16 || (c->rows[i] && !c->colsb[i]) ||
                      (!c->rows[i] && c->colsb[i])))
            amx_emu_trap("#GP: tile shape");
    }
    memcpy(&amx_emu.cfg, c, sizeof *c);
    memset(amx_emu.t, 0, sizeof amx_emu.t);
    amx_emu.configured = 1;
}

static inline void amx_emu_release(void) { memset(&amx_emu, 0, sizeof amx_emu); }

static inline void amx_emu_check(int t) {
    if (!amx_emu.configured || t < 0 || t > 7 || amx_emu.cfg.rows[t] == 0) amx_emu_trap("#UD: tile not configured");
}

static inline void amx_emu_loadd(int t, const void *base, long stride) {
    amx_emu_check(t);
    memset(amx_emu.t[t], 0, sizeof amx_emu.t[t]);
    for (int r = 0; r < amx_emu.cfg.rows[t]; r++)
        memcpy(amx_emu.t[t][r], (const uint8_t *)base + (long)r * stride, amx_emu.cfg.colsb[t]);
}

static inline void amx_emu_stored(int t, void *base, long stride) {
    amx_emu_check(t);
    for (int r = 0; r < amx_emu.cfg.rows[t]; r++)
        memcpy((uint8_t *)base + (long)r * stride, amx_emu.t[t][r], amx_emu.cfg.colsb[t]);
}

static inline void amx_emu_zero(int t) {
    amx_emu_check(t);
    memset(amx_emu.t[t], 0, sizeof amx_emu.t[t]);
}

static inline float amx_emu_daz(float x) { return fpclassify(x) == FP_SUBNORMAL ? copysignf(0.0f, x) : x; }

static inline float amx_emu_bf16(const uint8_t *p) {
    uint32_t u = (uint32_t)(p[0] | p[1] << 8) << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return amx_emu_daz(f);
}

static inline void amx_emu_dpbf16ps(int c, int a, int b) {
    amx_emu_check(c), amx_emu_check(a), amx_emu_check(b);
    const AmxTileConfig *cf = &amx_emu.cfg;
    int m = cf->rows[c], n = cf->colsb[c] / 4, k = cf->colsb[a] / 4; /* k in pairs of bf16 */
    if (a == b || a == c || b == c || cf->rows[a] != m || cf->rows[b] != k || cf->colsb[b] != cf->colsb[c] ||
        cf->colsb[c] % 4 || cf->colsb[a] % 4)
        amx_emu_trap("#UD: TDPBF16PS shapes");
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float even = 0.0f, odd = 0.0f, acc;
            for (int q = 0; q < k; q++) {
                even = amx_emu_daz(fmaf(amx_emu_bf16(&amx_emu.t[a][i][4 * q]), amx_emu_bf16(&amx_emu.t[b][q][4 * j]), even));
                odd = amx_emu_daz(fmaf(amx_emu_bf16(&amx_emu.t[a][i][4 * q + 2]), amx_emu_bf16(&amx_emu.t[b][q][4 * j + 2]), odd));
            }
            memcpy(&acc, &amx_emu.t[c][i][4 * j], sizeof acc);
            acc = amx_emu_daz(amx_emu_daz(acc) + amx_emu_daz(even + odd));
            memcpy(&amx_emu.t[c][i][4 * j], &acc, sizeof acc);
        }
}

/* The names gemm_amx.c uses; tile numbers are literals, as the instructions need. */
#define TILE_LOADCONFIG(cfg) amx_emu_ldtilecfg(cfg)
#define TILE_RELEASE() amx_emu_release()
#define TILE_LOADD(t, base, stride) amx_emu_loadd(t, base, stride)
#define TILE_STORED(t, base, stride) amx_emu_stored(t, base, stride)
#define TILE_ZERO(t) amx_emu_zero(t)
#define TILE_DPBF16PS(c, a, b) amx_emu_dpbf16ps(c, a, b)

#endif
