/* gemm_avx512_emu.c: gemm_avx512.c built over the plain-C emulation of its vector operations
 * (avx512_emulation.h): the same kernel logic, bit for bit, on any CPU. Selected only by
 * COVIDX_GEMM=avx512-emu (tests); about a hundred times slower than the real kernel. */
#define COVIDX_AVX512_EMU 1
#include "gemm_avx512.c"
