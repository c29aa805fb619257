/* gemm_avxvnni_emu.c: gemm_avxvnni.c built over the plain-C emulation of its vector operations
 * (int8_emulation.h): the same kernel logic on any CPU. Selected only by COVIDX_GEMM=avxvnni-emu
 * (tests). */
#define COVIDX_INT8_EMU 1
#include "gemm_avxvnni.c"
