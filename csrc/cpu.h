/* cpu.h: run-time CPU feature detection (x86-64 cpuid + xgetbv; all false elsewhere). */
#ifndef COVIDX_CPU_H
#define COVIDX_CPU_H

typedef struct {
    int avx2, fma, avx512f, avx512_bf16, amx_bf16, amx_tile;
    int amx_palette; /* CPUID leaf 0x1D reports at least one tile palette (some VMs report none) */
    int avx512_vnni, avx_vnni; /* VPDPBUSD on zmm (EVEX), on ymm (VEX, AVX-VNNI) */
} CpuFeatures;

CpuFeatures cpu_features(void);
int cpu_count_online(void); /* logical CPUs this process may run on (affinity mask) */

#endif
