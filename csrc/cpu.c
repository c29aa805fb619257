/* cpu.c: which instruction sets this CPU and OS actually enable. Used to report the machine and,
 * to pick kernels at run time (gemm_dispatch.c): the library is compiled for baseline x86-64 only. */
#define _GNU_SOURCE
#include "cpu.h"

#include <sched.h>
#include <unistd.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>

static unsigned long long xgetbv0(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

CpuFeatures cpu_features(void) {
    CpuFeatures f = {0};
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    int osxsave = (c >> 27) & 1;
    if (!osxsave) return f;
    unsigned long long xcr0 = xgetbv0();
    int ymm_ok = (xcr0 & 0x6) == 0x6;            /* XMM and YMM state saved by the OS */
    int zmm_ok = ymm_ok && (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM_Hi256, Hi16_ZMM */
    int tile_ok = (xcr0 & 0x60000) == 0x60000;    /* XTILECFG, XTILEDATA */
    f.fma = ymm_ok && ((c >> 12) & 1);
    if (__get_cpuid_max(0, 0) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = ymm_ok && ((b >> 5) & 1);
    f.avx512f = zmm_ok && ((b >> 16) & 1);
    f.amx_bf16 = tile_ok && ((d >> 22) & 1);
    f.amx_tile = tile_ok && ((d >> 24) & 1);
    f.avx512_vnni = zmm_ok && ((c >> 11) & 1);
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = zmm_ok && ((a >> 5) & 1);
    f.avx_vnni = ymm_ok && ((a >> 4) & 1);
    if (f.amx_tile && __get_cpuid_max(0, 0) >= 0x1d) {
        __cpuid_count(0x1d, 0, a, b, c, d);
        f.amx_palette = a >= 1;
    }
    return f;
}
#else
CpuFeatures cpu_features(void) {
    CpuFeatures f = {0};
    return f;
}
#endif

int cpu_count_online(void) {
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
