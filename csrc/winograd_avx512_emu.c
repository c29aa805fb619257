/* winograd_avx512_emu.c: winograd_avx512.c built over the plain-C emulation of its vector
 * operations (avx512_emulation.h): the same transforms, bit for bit, on any CPU. Runs where the
 * layer's GEMM kernel is the emulated AVX-512 one (COVIDX_GEMM=avx512-emu, tests). */
#define COVIDX_AVX512_EMU 1
#include "winograd_avx512.c"
