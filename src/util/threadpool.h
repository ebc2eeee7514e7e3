/* A persistent pool of worker threads: created once, reused for every op.
 *
 * exsa_threadpool_run(p, fn, ctx, n_tasks) calls fn(ctx, task, thread) for
 * task in [0, n_tasks) spread over the pool's threads (the caller's thread
 * takes part as thread 0) and returns when all are done. Tasks are handed
 * out by an atomic counter, so uneven tasks balance. Not reentrant: one run
 * at a time per pool (the engine thread owns its pool).
 *
 * exsa_threadpool_run_each(p, fn, ctx) calls fn(ctx, t, t) once on each
 * thread t of the pool: for work that balances itself (decode spans with
 * stealing), without the shared counter every thread would touch twice.
 */
#ifndef EXSA_THREADPOOL_H
#define EXSA_THREADPOOL_H

#include "exsa.h"

typedef struct exsa_threadpool exsa_threadpool;
typedef void (*exsa_task_fn)(void *ctx, int task, int thread);

exsa_threadpool *exsa_threadpool_create(int n_threads, exsa_err *err);
void exsa_threadpool_free(exsa_threadpool *p);
int exsa_threadpool_size(const exsa_threadpool *p);
void exsa_threadpool_run(exsa_threadpool *p, exsa_task_fn fn, void *ctx, int n_tasks);
void exsa_threadpool_run_each(exsa_threadpool *p, exsa_task_fn fn, void *ctx);

#endif
