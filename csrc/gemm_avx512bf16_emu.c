/* gemm_avx512bf16_emu.c: gemm_avx512bf16.c built over the plain-C emulation of its vector
 * operations (avx512_emulation.h, VDPBF16PS included): the same kernel logic on any CPU.
 * Selected only by COVIDX_GEMM=avx512bf16-emu (tests). */
#define COVIDX_AVX512_EMU 1
#include "gemm_avx512bf16.c"
