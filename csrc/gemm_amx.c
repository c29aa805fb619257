/* gemm_amx.c: the bf16 GEMM block on AMX tiles (see gemm_bf16.h for the packing and the driver).
 *
 * c[32 x 32] fp32 += a[32 x 32 ns] bf16 . B over ns k-steps, 2 x 2 register blocking:
 *
 *     tmm0 tmm1    C rows 0..15 and 16..31 x columns 0..15 and 16..31 (16 x 16 fp32 each)
 *     tmm2 tmm3
 *     tmm4 tmm5    A rows 0..15 and 16..31 of one k-step (16 x 32 bf16)
 *     tmm6 tmm7    B columns 0..15 and 16..31 of one k-step (16 pairs x 16 x 2 bf16)
 *
 * four tile loads per four TDPBF16PS. Each TDPBF16PS adds one k-step's sum to C, so the result
 * depends on the k-steps only: fixed by k.
 *
 * The tile configuration is per thread: each task loads it (LDTILECFG) and releases the tiles at
 * its end (TILERELEASE), so no state is assumed across calls or left behind. The process must
 * have been granted the tile data state first (gemm_bf16_enable, gemm_dispatch.c).
 *
 * Built for AMX here, with covidx's own asm: GCC 12's _tile_loadconfig declares an 8-byte
 * operand and may drop the configuration's stores (GCC PR target/114098). gemm_amx_emu.c builds
 * the same source over amx_emulation.h (COVIDX_AMX_EMU), which runs on any CPU. */
#include "gemm_bf16.h"

#ifdef COVIDX_AMX_EMU
#include "amx_emulation.h"
#define FN(name) name##_emu
#define AMX_TARGET
#define AMX_BUILD 1
#elif defined(__x86_64__) && defined(__GNUC__)
#define FN(name) name
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))
#define AMX_BUILD 1
typedef struct {
    uint8_t palette, start_row, reserved0[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) AmxTileConfig;
/* The 64-byte operand is the whole configuration; the tile instructions read and write memory
 * the compiler cannot see, hence the memory clobbers. */
#define TILE_LOADCONFIG(cfg) __asm__ volatile("ldtilecfg %0" ::"m"(*(cfg)) : "memory")
#define TILE_RELEASE() __asm__ volatile("tilerelease" ::: "memory")
#define TILE_LOADD(t, base, stride) \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"((const void *)(base)), "r"((long)(stride)) : "memory")
#define TILE_STORED(t, base, stride) \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"((void *)(base)), "r"((long)(stride)) : "memory")
#define TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::: "memory")
#define TILE_DPBF16PS(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::: "memory")
#else
#define FN(name) name
#define AMX_BUILD 0
#endif

#if AMX_BUILD

/* Palette 1; every tile 16 rows x 64 bytes: C 16 x 16 fp32, A 16 x 32 bf16, B 16 x 16 pairs. */
static void tile_config(AmxTileConfig *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->palette = 1;
    for (int t = 0; t < 8; t++) cfg->colsb[t] = 64, cfg->rows[t] = 16;
}

/* The Bf16BlockFn of gemm_bf16.h. rows is not used: the tiles always cover 32 rows (a's rows past
 * it are zeros). */
AMX_TARGET static void block_amx(const uint16_t *a, int lda, const uint16_t *b, int ns, float *c, int rows) {
    (void)rows;
    long sa = (long)lda * 2, sc = 32 * 4;
    TILE_LOADD(0, c, sc);
    TILE_LOADD(1, c + 16, sc);
    TILE_LOADD(2, c + 16 * 32, sc);
    TILE_LOADD(3, c + 16 * 32 + 16, sc);
    for (int s = 0; s < ns; s++) {
        const uint16_t *as = a + 32 * s, *bs = b + (size_t)s * 1024;
        TILE_LOADD(4, as, sa);
        TILE_LOADD(6, bs, 64);
        TILE_DPBF16PS(0, 4, 6);
        TILE_LOADD(7, bs + 512, 64);
        TILE_DPBF16PS(1, 4, 7);
        TILE_LOADD(5, as + (size_t)16 * lda, sa);
        TILE_DPBF16PS(2, 5, 6);
        TILE_DPBF16PS(3, 5, 7);
    }
    TILE_STORED(0, c, sc);
    TILE_STORED(1, c + 16, sc);
    TILE_STORED(2, c + 16 * 32, sc);
    TILE_STORED(3, c + 16 * 32 + 16, sc);
}

AMX_TARGET void FN(gemm_amx_run_task)(const GemmJob *g, int task) {
    AmxTileConfig cfg;
    tile_config(&cfg);
    TILE_LOADCONFIG(&cfg);
    gemm_bf16_task(g, task, block_amx);
    TILE_RELEASE();
}

#else /* no AMX on this architecture: never picked (gemm_kernel_runs() says 0) */

void FN(gemm_amx_run_task)(const GemmJob *g, int task) {
    (void)g;
    (void)task;
}

#endif
