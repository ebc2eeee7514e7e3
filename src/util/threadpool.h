/* A persistent pool of worker threads: created once, reused for every op.
 *
 * exsa_threadpool_run(p, fn, ctx, n_tasks) calls fn(ctx, task, thread) for
 * task in [0, n_tasks) spread over the pool's threads (the caller's thread
 * takes part as thread 0) and returns when all are done. Tasks are handed
 * out by an atomic counter, so uneven tasks balance. Not reentrant: one run
 * at a time per pool (the engine thread owns its pool).
 *
 * exsa_threadpool_run_each(p, fn, ctx) calls fn(ctx, task, thread) once for
 * each task in [0, n_threads): thread t is offered task t first, and a
 * thread done with its own takes the tasks no other thread has started
 * (one descheduled by the kernel, or not yet awake). For work that balances
 * itself (decode spans with stealing) or that one thread should mostly do
 * on its own data: fn must take `task` for what to do and `thread` (unique
 * among the threads running at once, < n_threads) for which scratch to use.
 *
 * A run ends when its tasks are done: a thread that the kernel keeps off
 * the CPU holds it up only while it holds a started task, waiting threads
 * yield or sleep after a few microseconds, and a caller whose workers
 * stall or hardly help runs alone for a while; so a pool that shares its
 * cores with other work degrades to about one thread's speed instead of
 * stalling.
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
/* How many threads a run started now would use: the pool's size, or 1
 * while the caller runs alone (a solo period, see threadpool.c). A hint
 * for sizing work (one span instead of n_threads); a run may still use
 * more or fewer threads. */
int exsa_threadpool_active(const exsa_threadpool *p);

#endif
