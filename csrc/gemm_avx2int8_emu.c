/* gemm_avx2int8_emu.c: gemm_avx2int8.c built over the plain-C emulation of its vector operations
 * (int8_emulation.h, VPMADDUBSW's saturation included): the same kernel logic on any CPU.
 * Selected only by COVIDX_GEMM=avx2int8-emu (tests). */
#define COVIDX_INT8_EMU 1
#include "gemm_avx2int8.c"
