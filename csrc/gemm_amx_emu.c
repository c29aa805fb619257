/* gemm_amx_emu.c: gemm_amx.c built over the plain-C tile emulation (amx_emulation.h): the same
 * kernel, bit for bit, on any CPU. Selected only by COVIDX_GEMM=amx-emu (tests); thousands of
 * times slower than AMX. */
#define COVIDX_AMX_EMU 1
#include "gemm_amx.c"
