/* gemm_dispatch.c: the one table of GEMM kernels, and the choice among them at run time (see
 * gemm.h). The choice reads the CPU's features (cpu.c) and COVIDX_GEMM each time it is asked,
 * which is while a model loads or changes precision; a packed matrix remembers its kernel. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "gemm_kernels.h"

#if defined(__linux__) && defined(__x86_64__)
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* The one list of kernels: Python reads it through _core.gemm_kernel_table() (names, precisions,
 * descriptions, which run here, which COVIDX_GEMM accepts), so a new row needs no Python edit. */
typedef struct {
    const char *name;
    const char *precision; /* what the packed weights hold: "fp32", "bf16" or "int8" */
    const char *about;     /* for covidx info */
    int nr;                /* columns per packed panel */
    int emulated;          /* plain C: runs anywhere; COVIDX_GEMM=<name> selects it (tests) */
    int ceiling;           /* COVIDX_GEMM=<name> of a real kernel: 0 openblas, 1 avx2, 2 avx512, 3 no
                            * limit; -1 not a COVIDX_GEMM value */
    GemmPackFn pack;
    GemmTaskFn run_task;
} KernelDef;

#define PACKED " kernel (weights packed at load)"
#define PACKED_BF16 " kernel (bf16 weights packed at load, fp32 sums)"
#define PACKED_INT8 " kernel (int8 weights per channel packed at load, int32 sums)"
#define EMULATED " kernel, emulated in plain C (tests only: slow)"

static const KernelDef KERNELS[GEMM_NKERNELS] = {
    [GEMM_OPENBLAS] = {"openblas", "fp32", "OpenBLAS SGEMM", 16, 0, 0, NULL, NULL},
    [GEMM_AVX2] = {"avx2", "fp32", "covidx AVX2+FMA" PACKED, GEMM_AVX2_NR, 0, 1, gemm_avx2_pack, gemm_avx2_run_task},
    [GEMM_AVX512] = {"avx512", "fp32", "covidx AVX-512F" PACKED, GEMM_AVX512_NR, 0, 2, gemm_avx512_pack,
                     gemm_avx512_run_task},
    [GEMM_AVX512_EMU] = {"avx512-emu", "fp32", "covidx AVX-512F" EMULATED, GEMM_AVX512_NR, 1, -1, gemm_avx512_pack_emu,
                         gemm_avx512_run_task_emu},
    [GEMM_AMX] = {"amx", "bf16", "covidx AMX-BF16" PACKED_BF16, 32, 0, 3, gemm_bf16_pack, gemm_amx_run_task},
    [GEMM_AMX_EMU] = {"amx-emu", "bf16", "covidx AMX-BF16" EMULATED, 32, 1, -1, gemm_bf16_pack,
                      gemm_amx_run_task_emu},
    [GEMM_AVX512BF16] = {"avx512bf16", "bf16", "covidx AVX512_BF16" PACKED_BF16, 32, 0, -1, gemm_bf16_pack,
                         gemm_avx512bf16_run_task},
    [GEMM_AVX512BF16_EMU] = {"avx512bf16-emu", "bf16", "covidx AVX512_BF16" EMULATED, 32, 1, -1, gemm_bf16_pack,
                             gemm_avx512bf16_run_task_emu},
    [GEMM_AVX512VNNI] = {"avx512vnni", "int8", "covidx AVX-512 VNNI" PACKED_INT8, GEMM_INT8_NR, 0, -1, gemm_int8_pack,
                         gemm_avx512vnni_run_task},
    [GEMM_AVX512VNNI_EMU] = {"avx512vnni-emu", "int8", "covidx AVX-512 VNNI" EMULATED, GEMM_INT8_NR, 1, -1,
                             gemm_int8_pack, gemm_avx512vnni_run_task_emu},
    [GEMM_AVXVNNI] = {"avxvnni", "int8", "covidx AVX-VNNI" PACKED_INT8, GEMM_INT8_NR, 0, -1, gemm_int8_pack,
                      gemm_avxvnni_run_task},
    [GEMM_AVXVNNI_EMU] = {"avxvnni-emu", "int8", "covidx AVX-VNNI" EMULATED, GEMM_INT8_NR, 1, -1, gemm_int8_pack,
                          gemm_avxvnni_run_task_emu},
    [GEMM_AVX2INT8] = {"avx2int8", "int8", "covidx AVX2 int8" PACKED_INT8, GEMM_INT8_NR, 0, -1, gemm_int8_pack,
                       gemm_avx2int8_run_task},
    [GEMM_AVX2INT8_EMU] = {"avx2int8-emu", "int8", "covidx AVX2 int8" EMULATED, GEMM_INT8_NR, 1, -1, gemm_int8_pack,
                           gemm_avx2int8_run_task_emu},
};

static int valid(int kernel) { return kernel >= 0 && kernel < GEMM_NKERNELS; }

const char *gemm_kernel_name(int kernel) { return valid(kernel) ? KERNELS[kernel].name : "?"; }
const char *gemm_kernel_precision(int kernel) { return valid(kernel) ? KERNELS[kernel].precision : "?"; }
const char *gemm_kernel_about(int kernel) { return valid(kernel) ? KERNELS[kernel].about : "?"; }
int gemm_kernel_is_bf16(int kernel) { return valid(kernel) && strcmp(KERNELS[kernel].precision, "bf16") == 0; }
int gemm_kernel_emulated(int kernel) { return valid(kernel) && KERNELS[kernel].emulated; }
int gemm_kernel_env(int kernel) { return valid(kernel) && (KERNELS[kernel].emulated || KERNELS[kernel].ceiling >= 0); }
int gemm_kernel_is_int8(int kernel) { return valid(kernel) && strcmp(KERNELS[kernel].precision, "int8") == 0; }
int gemm_kernel_nr(int kernel) { return valid(kernel) ? KERNELS[kernel].nr : 16; }

int gemm_kernel_by_name(const char *name) {
    for (int i = 0; i < GEMM_NKERNELS; i++)
        if (strcmp(name, KERNELS[i].name) == 0) return i;
    return -1;
}

int gemm_kernel_runs(int kernel) {
    if (!valid(kernel)) return 0;
    if (KERNELS[kernel].emulated || kernel == GEMM_OPENBLAS) return 1;
    CpuFeatures f = cpu_features();
    switch (kernel) {
    case GEMM_AVX2: return f.avx2 && f.fma;
    case GEMM_AVX512: return f.avx512f;
    case GEMM_AMX: return f.amx_tile && f.amx_bf16 && f.amx_palette && f.avx512f;
    case GEMM_AVX512BF16: return f.avx512f && f.avx512_bf16;
    case GEMM_AVX512VNNI: return f.avx512f && f.avx512_vnni;
    case GEMM_AVXVNNI: return f.avx2 && f.avx_vnni;
    case GEMM_AVX2INT8: return f.avx2;
    default: return 0;
    }
}

/* COVIDX_GEMM as a ceiling: 0 openblas, 1 avx2, 2 avx512, 3 amx (no limit); *emu the emulated
 * kernel asked for, or -1. "auto", a name the table does not accept, or none: no limit. */
static int ceiling(int *emu) {
    const char *v = getenv("COVIDX_GEMM");
    int k = v ? gemm_kernel_by_name(v) : -1;
    *emu = -1;
    if (k < 0 || !gemm_kernel_env(k)) return 3;
    if (KERNELS[k].emulated) {
        *emu = k;
        return 3;
    }
    return KERNELS[k].ceiling;
}

int gemm_fp32_kernel(void) {
    int emu, top = ceiling(&emu);
    if (emu >= 0 && strcmp(KERNELS[emu].precision, "fp32") == 0) return emu;
    if (top >= 2 && gemm_kernel_runs(GEMM_AVX512)) return GEMM_AVX512;
    if (top >= 1 && gemm_kernel_runs(GEMM_AVX2)) return GEMM_AVX2;
    return GEMM_OPENBLAS;
}

int gemm_available(void) { return gemm_fp32_kernel() != GEMM_OPENBLAS; }

int gemm_bf16_kernel(const char **why) {
    int emu, top = ceiling(&emu);
    const char *reason = NULL;
    int k;
    if (emu >= 0 && gemm_kernel_is_bf16(emu)) {
        k = emu;
    } else if (top >= 3 && gemm_kernel_runs(GEMM_AMX)) {
        k = GEMM_AMX;
    } else if (top >= 2 && gemm_kernel_runs(GEMM_AVX512BF16)) {
        k = GEMM_AVX512BF16;
        reason = top < 3 ? "COVIDX_GEMM=avx512 rules out AMX; bf16 runs on AVX512_BF16"
                         : "this CPU has no AMX-BF16; bf16 runs on AVX512_BF16";
    } else {
        k = gemm_fp32_kernel();
        reason = top < 2 && (gemm_kernel_runs(GEMM_AMX) || gemm_kernel_runs(GEMM_AVX512BF16))
                     ? "COVIDX_GEMM rules out the bf16 kernels; the model runs in fp32"
                     : "this CPU has neither AMX-BF16 nor AVX512_BF16; the model runs in fp32";
    }
    if (why) *why = reason;
    return k;
}

int gemm_int8_kernel(const char **why) {
    int emu, top = ceiling(&emu);
    const char *reason = NULL;
    int k;
    if (emu >= 0 && gemm_kernel_is_int8(emu)) {
        k = emu;
    } else if (top >= 2 && gemm_kernel_runs(GEMM_AVX512VNNI)) {
        k = GEMM_AVX512VNNI;
    } else if (top >= 1 && gemm_kernel_runs(GEMM_AVXVNNI)) {
        k = GEMM_AVXVNNI;
    } else if (top >= 1 && gemm_kernel_runs(GEMM_AVX2INT8)) {
        k = GEMM_AVX2INT8;
        if (gemm_kernel_runs(GEMM_AVX512VNNI))
            reason = "COVIDX_GEMM=avx2 rules out AVX-512 VNNI; int8 runs on AVX2";
    } else {
        k = gemm_fp32_kernel();
        reason = top < 1 && gemm_kernel_runs(GEMM_AVX2INT8)
                     ? "COVIDX_GEMM rules out the int8 kernels; the model runs in fp32"
                     : "this CPU has no AVX2; the model runs in fp32";
    }
    if (why) *why = reason;
    return k;
}

#if defined(__linux__) && defined(__x86_64__)
#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static pthread_mutex_t amx_lock = PTHREAD_MUTEX_INITIALIZER;
static int amx_state; /* 0 not asked, 1 granted, -errno refused */

/* Asks Linux once per process for the AMX tile data state; 0 when granted, else -errno. */
static int amx_request(void) {
    pthread_mutex_lock(&amx_lock);
    if (amx_state == 0) {
        unsigned long perm = 0;
        if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0)
            amx_state = -(errno ? errno : EPERM);
        else if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &perm) != 0 || !(perm & (1UL << XFEATURE_XTILEDATA)))
            amx_state = -EPERM;
        else
            amx_state = 1;
    }
    int rc = amx_state > 0 ? 0 : amx_state;
    pthread_mutex_unlock(&amx_lock);
    return rc;
}
#else
static int amx_request(void) { return -ENOSYS; }
#endif

int gemm_bf16_enable(int kernel, const char **why) {
    if (kernel != GEMM_AMX) return kernel;
    int rc = amx_request();
    if (rc == 0) return kernel;
    if (gemm_kernel_runs(GEMM_AVX512BF16)) {
        if (why)
            *why = rc == -ENOSPC ? "Linux refused AMX (a thread's sigaltstack is too small); bf16 runs on AVX512_BF16"
                                 : "Linux refused AMX (arch_prctl failed: kernel older than 5.16?); bf16 runs on AVX512_BF16";
        return GEMM_AVX512BF16;
    }
    if (why)
        *why = rc == -ENOSPC ? "Linux refused AMX (a thread's sigaltstack is too small); the model runs in fp32"
                             : "Linux refused AMX (arch_prctl failed: kernel older than 5.16?); the model runs in fp32";
    return gemm_fp32_kernel();
}

int gemm_pack_kernel(PackedB *p, int kernel, const float *b, int k, int n, int ldb) {
    p->data = NULL;
    p->bf16 = NULL;
    p->i8 = NULL;
    p->wscale = NULL;
    p->k = k;
    p->n = n;
    p->kernel = kernel;
    if (!valid(kernel) || !KERNELS[kernel].pack) return -1;
    return KERNELS[kernel].pack(p, b, k, n, ldb) == 0 ? 0 : -1;
}

int gemm_pack(PackedB *p, const float *b, int k, int n, int ldb) {
    return gemm_pack_kernel(p, gemm_fp32_kernel(), b, k, n, ldb);
}

void gemm_pack_free(PackedB *p) {
    free(p->data);
    free(p->bf16);
    free(p->i8);
    free(p->wscale);
    p->data = NULL;
    p->bf16 = NULL;
    p->i8 = NULL;
    p->wscale = NULL;
}

int gemm_tasks_per_row_block(const GemmJob *g) {
    int rb, ng, pg;
    gemm_grid(g, gemm_kernel_nr(g->b->kernel), &rb, &ng, &pg);
    return ng;
}

int gemm_tasks(const GemmJob *g) {
    int rb, ng, pg;
    if (g->m <= 0) return 0;
    gemm_grid(g, gemm_kernel_nr(g->b->kernel), &rb, &ng, &pg);
    return rb * ng;
}

void gemm_run_task(const GemmJob *g, int task) {
    int kernel = g->b->kernel;
    if (valid(kernel) && KERNELS[kernel].run_task) KERNELS[kernel].run_task(g, task);
}
