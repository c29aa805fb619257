/* threadpool.h: a fixed set of worker threads that run "task i of n" functions.
 *
 * One pool per process. The calling thread takes part in the work, so a pool of n threads starts
 * n - 1 workers. Tasks are handed out dynamically, but every task computes a fixed piece of the
 * output, so results do not depend on the number of threads. */
#ifndef COVIDX_THREADPOOL_H
#define COVIDX_THREADPOOL_H

typedef void (*TaskFn)(void *ctx, int task);

/* Sets the number of threads (>= 1) used by later pool_run calls. 0 on success, -1 if a worker
 * thread could not be started (the pool then keeps the threads it has). */
int pool_set_threads(int n);
int pool_get_threads(void);

/* Runs fn(ctx, 0) ... fn(ctx, ntasks - 1) and returns when all are done. Not reentrant: callers
 * serialise on their own lock (see engine.c). */
void pool_run(int ntasks, TaskFn fn, void *ctx);

#endif
