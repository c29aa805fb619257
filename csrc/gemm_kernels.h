/* gemm_kernels.h: what each kernel file gives the dispatch table (gemm_dispatch.c), and the task
 * grid they share. Private to the gemm_*.c files. */
#ifndef COVIDX_GEMM_KERNELS_H
#define COVIDX_GEMM_KERNELS_H

#include "gemm.h"

/* Packs b (k x n, leading dimension ldb) into p (p->k, p->n and p->data or p->bf16 set; the
 * caller sets p->kernel). 0, or -1 when out of memory. */
typedef int (*GemmPackFn)(PackedB *p, const float *b, int k, int n, int ldb);
/* Computes task `task` of gemm_tasks(g). */
typedef void (*GemmTaskFn)(const GemmJob *g, int task);

int gemm_avx2_pack(PackedB *p, const float *b, int k, int n, int ldb);
void gemm_avx2_run_task(const GemmJob *g, int task);
int gemm_avx512_pack(PackedB *p, const float *b, int k, int n, int ldb);
void gemm_avx512_run_task(const GemmJob *g, int task);
int gemm_avx512_pack_emu(PackedB *p, const float *b, int k, int n, int ldb);
void gemm_avx512_run_task_emu(const GemmJob *g, int task);
int gemm_bf16_pack(PackedB *p, const float *b, int k, int n, int ldb); /* one layout for all bf16 kernels */
void gemm_amx_run_task(const GemmJob *g, int task);
void gemm_amx_run_task_emu(const GemmJob *g, int task);
void gemm_avx512bf16_run_task(const GemmJob *g, int task);
void gemm_avx512bf16_run_task_emu(const GemmJob *g, int task);
/* int8 kernels (gemm_int8.h): one packing for all; run_task takes the GemmJob inside a GemmI8Job */
int gemm_int8_pack(PackedB *p, const float *b, int k, int n, int ldb);
void gemm_avx512vnni_run_task(const GemmJob *g, int task);
void gemm_avx512vnni_run_task_emu(const GemmJob *g, int task);
void gemm_avxvnni_run_task(const GemmJob *g, int task);
void gemm_avxvnni_run_task_emu(const GemmJob *g, int task);
void gemm_avx2int8_run_task(const GemmJob *g, int task);
void gemm_avx2int8_run_task_emu(const GemmJob *g, int task);

/* Columns per packed panel of a kernel (its row of the table in gemm_dispatch.c). The fp32
 * kernel files define their NR from these, so the task grid and the kernel always agree. */
int gemm_kernel_nr(int kernel);
#define GEMM_AVX2_NR 16
#define GEMM_AVX512_NR 64
#define GEMM_INT8_NR 32 /* all int8 kernels: one packed layout (gemm_int8.h) */

/* The task grid: row blocks of GEMM_MC, column groups of whole nr-column panels, at least
 * GEMM_MIN_TASKS tasks where the shape allows it (small maps at batch 1 split along the
 * columns) and at most GEMM_MAX_COLS columns per task. Task t covers rows [*r0, *r1) and panels
 * [*j0, *j1). */
#define GEMM_MIN_TASKS 8
#define GEMM_MAX_COLS 256
static inline void gemm_grid(const GemmJob *g, int nr, int *row_blocks, int *groups, int *per_group) {
    int np = (g->b->n + nr - 1) / nr;
    *row_blocks = (g->m + GEMM_MC - 1) / GEMM_MC;
    int want = (GEMM_MIN_TASKS + *row_blocks - 1) / *row_blocks;
    int max_panels = GEMM_MAX_COLS / nr;
    int by_size = (np + max_panels - 1) / max_panels;
    int ng = want > by_size ? want : by_size;
    if (ng > np) ng = np;
    *per_group = (np + ng - 1) / ng;
    *groups = (np + *per_group - 1) / *per_group;
}

static inline void gemm_task_bounds(const GemmJob *g, int nr, int task, int *r0, int *r1, int *j0, int *j1) {
    int rb, ng, pg, np = (g->b->n + nr - 1) / nr;
    gemm_grid(g, nr, &rb, &ng, &pg);
    *r0 = task / ng * GEMM_MC;
    *r1 = *r0 + GEMM_MC < g->m ? *r0 + GEMM_MC : g->m;
    *j0 = task % ng * pg;
    *j1 = *j0 + pg < np ? *j0 + pg : np;
}

#endif
