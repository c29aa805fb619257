/* threadpool.c: workers sleep on a condition variable between jobs; a job is a (fn, ctx, ntasks)
 * triple and a shared counter of tasks handed out.
 *
 * A forward pass is a few hundred short jobs back to back, so waking a sleeping thread for each
 * would cost more than the gaps between them: a worker that has finished a job first spins
 * briefly (up to SPIN_NS) watching for the next one, and the caller spins as briefly for the
 * workers to finish, before either goes to sleep. */
#define _POSIX_C_SOURCE 199309L
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define MAX_THREADS 64
#ifndef SPIN_NS
#define SPIN_NS 500000L /* 0.5 ms: longer than the gaps inside a forward pass, short beside one */
#endif

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline void cpu_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Spins until done(arg) or SPIN_NS have passed (the clock is read every 64 pauses). */
static void spin_while_not(int (*done)(const void *), const void *arg) {
    long long deadline = now_ns() + SPIN_NS;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (done(arg)) return;
            cpu_pause();
        }
        if (now_ns() > deadline) return;
    }
}

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake;    /* workers wait here for a new job generation */
    pthread_cond_t done;    /* the caller waits here for the last task */
    pthread_t workers[MAX_THREADS];
    int nworkers;           /* started worker threads */
    int nthreads;           /* threads used per job (caller included), <= nworkers + 1 */
    atomic_ulong generation; /* written under mu; read without it only to decide to stop spinning */
    TaskFn fn;
    void *ctx;
    int ntasks;
    atomic_int next_task;
    atomic_int finished_tasks; /* written under mu */
    atomic_int active_workers; /* workers holding the current job's fn/ctx; written under mu */
    int atfork_registered;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

/* Takes tasks until none are left; returns how many this thread ran. */
static int run_tasks(TaskFn fn, void *ctx, int ntasks) {
    int ran = 0;
    for (;;) {
        int t = atomic_fetch_add(&P.next_task, 1);
        if (t >= ntasks) break;
        fn(ctx, t);
        ran++;
    }
    return ran;
}

static int new_job(const void *seen) { return atomic_load(&P.generation) != *(const unsigned long *)seen; }

/* The workers have run *left tasks and let go of the job. */
static int workers_done(const void *left) {
    return atomic_load(&P.finished_tasks) == *(const int *)left && atomic_load(&P.active_workers) == 0;
}

static void *worker_main(void *arg) {
    int index = (int)(long)arg; /* worker i serves jobs while i + 1 < nthreads */
    unsigned long seen = 0;
    pthread_mutex_lock(&P.mu);
    for (;;) {
        while (P.generation == seen || index + 1 >= P.nthreads) {
            if (P.generation != seen) seen = P.generation; /* a job not meant for this worker */
            pthread_cond_wait(&P.wake, &P.mu);
        }
        seen = P.generation;
        if (P.fn == NULL) continue; /* woke after that job ended: nothing to do */
        P.active_workers++;
        TaskFn fn = P.fn;
        void *ctx = P.ctx;
        int ntasks = P.ntasks;
        pthread_mutex_unlock(&P.mu);
        int ran = run_tasks(fn, ctx, ntasks);
        pthread_mutex_lock(&P.mu);
        P.finished_tasks += ran;
        P.active_workers--;
        if (P.finished_tasks == P.ntasks && P.active_workers == 0) pthread_cond_signal(&P.done);
        pthread_mutex_unlock(&P.mu);
        spin_while_not(new_job, &seen);
        pthread_mutex_lock(&P.mu);
    }
    return NULL;
}

/* After fork() only the forking thread exists in the child: forget the workers, start anew. */
static void atfork_child(void) {
    pthread_mutex_init(&P.mu, NULL);
    pthread_cond_init(&P.wake, NULL);
    pthread_cond_init(&P.done, NULL);
    P.nworkers = 0; /* workers restart lazily in pool_run; nthreads is kept */
    P.active_workers = 0;
    P.generation = 0;
}

static int start_workers(int n) {
    while (P.nworkers < n - 1 && P.nworkers < MAX_THREADS - 1) {
        if (pthread_create(&P.workers[P.nworkers], NULL, worker_main, (void *)(long)P.nworkers) != 0)
            return -1;
        pthread_detach(P.workers[P.nworkers]);
        P.nworkers++;
    }
    return 0;
}

int pool_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    pthread_mutex_lock(&P.mu);
    if (!P.atfork_registered) {
        pthread_atfork(NULL, NULL, atfork_child);
        P.atfork_registered = 1;
    }
    int rc = start_workers(n);
    P.nthreads = P.nworkers + 1 < n ? P.nworkers + 1 : n;
    pthread_mutex_unlock(&P.mu);
    return rc;
}

int pool_get_threads(void) {
    pthread_mutex_lock(&P.mu);
    int n = P.nthreads > 0 ? P.nthreads : 1;
    pthread_mutex_unlock(&P.mu);
    return n;
}

void pool_run(int ntasks, TaskFn fn, void *ctx) {
    if (ntasks <= 0) return;
    pthread_mutex_lock(&P.mu);
    if (P.nthreads < 1) P.nthreads = 1;
    if (P.nworkers < P.nthreads - 1 && start_workers(P.nthreads) != 0)
        P.nthreads = P.nworkers + 1; /* run with the workers we could start */
    if (P.nthreads == 1 || ntasks == 1) {
        pthread_mutex_unlock(&P.mu);
        for (int t = 0; t < ntasks; t++) fn(ctx, t);
        return;
    }
    P.fn = fn;
    P.ctx = ctx;
    P.ntasks = ntasks;
    P.finished_tasks = 0;
    P.active_workers = 0;
    atomic_store(&P.next_task, 0);
    P.generation++;
    pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);

    int ran = run_tasks(fn, ctx, ntasks);

    int left = ntasks - ran;
    spin_while_not(workers_done, &left);
    pthread_mutex_lock(&P.mu);
    P.finished_tasks += ran;
    /* Also wait for every worker that took this job to let go of it: a late worker must not run
     * this job's fn against the next job's task counter. */
    while (P.finished_tasks < P.ntasks || P.active_workers > 0) pthread_cond_wait(&P.done, &P.mu);
    P.fn = NULL;
    pthread_mutex_unlock(&P.mu);
}
