/* gemm_avx512vnni_emu.c: gemm_avx512vnni.c built over the plain-C emulation of its vector
 * operations (int8_emulation.h): the same kernel logic, bit for bit, on any CPU. Selected only
 * by COVIDX_GEMM=avx512vnni-emu (tests). */
#define COVIDX_INT8_EMU 1
#include "gemm_avx512vnni.c"
