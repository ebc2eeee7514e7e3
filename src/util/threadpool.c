/* Persistent thread pool.
 *
 * n_threads - 1 workers are created once and park between runs. A run
 * publishes (fn, ctx, n_tasks), bumps a generation counter and wakes the
 * workers; every thread (the caller as thread 0) then claims task indices
 * from one atomic counter until they run out. The caller returns once every
 * worker has reported back, so fn/ctx are never touched after run returns.
 *
 * Waiting, both for work (workers) and for completion (caller), spins for a
 * short while before sleeping on a condition variable: a forward pass issues
 * runs back to back, and a futex round trip per run would cost more than
 * many small ops. Sleepers announce themselves in an atomic counter under
 * the mutex, then re-check the condition; the waker changes the condition
 * first and only then reads the counter (both seq_cst), so either the sleeper
 * sees the change or the waker sees the sleeper and signals under the mutex:
 * no lost wakeups, and no mutex traffic while everyone is spinning.
 */
#include "util/threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/err.h"

/* Longest time a thread busy-waits before sleeping. Long enough to cover the
 * gap between two ops of a forward pass, short enough that an idle server
 * does not burn cores. */
#define SPIN_NS 200000LL
#define SPIN_CHECK_EVERY 64
#define SPIN_YIELD_AFTER 256

/* Fields that different threads write sit on separate cache lines: spinning
 * workers poll gen, every thread bumps next, workers count pending down;
 * sharing one line would make each of these a cross-core miss for all. */
struct exsa_threadpool {
    int n_threads;
    int oversubscribed; /* more threads than CPUs in our affinity mask */
    pthread_t *workers; /* n_threads - 1 */
    int n_started;

    pthread_mutex_t mu;
    pthread_cond_t cv_work; /* workers wait for a new generation */
    pthread_cond_t cv_done; /* the caller waits for pending == 0 */

    /* The current run: written by the caller, then published by bumping gen. */
    _Alignas(64) atomic_uint gen;
    atomic_int stop;
    exsa_task_fn fn;
    void *ctx;
    int n_tasks;
    int each; /* run_each: thread t runs task t alone */

    _Alignas(64) atomic_int next; /* next task index to claim */
    _Alignas(64) atomic_int pending; /* workers not yet done with this run */
    atomic_int sleep_done;           /* 1 while the caller sleeps on cv_done */
    _Alignas(64) atomic_int sleep_work; /* workers sleeping (or about to) on cv_work */
};

typedef struct {
    exsa_threadpool *p;
    int id;
} worker_arg;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Pause; past the first few hundred rounds, also yield the core when the
 * pool has more threads than the CPUs it may run on: then the thread we
 * wait for may need this core to make progress. With a CPU per thread a
 * yield only costs a syscall (1.5% of a 2-thread decode step on 2 CPUs). */
static inline void spin_pause(const exsa_threadpool *p, int i)
{
    if (i < SPIN_YIELD_AFTER || !p->oversubscribed)
        cpu_relax();
    else
        sched_yield();
}

/* CPUs this process may run on (its affinity mask), at least 1. */
static int usable_cpus(void)
{
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void work(exsa_threadpool *p, int thread)
{
    exsa_task_fn fn = p->fn;
    void *ctx = p->ctx;
    int n = p->n_tasks;
    if (p->each) {
        fn(ctx, thread, thread);
        return;
    }
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= n)
            break;
        fn(ctx, t, thread);
    }
}

/* Spins until gen differs from seen (returns the new value) or the spin
 * budget runs out (returns seen). */
static unsigned spin_for_gen(exsa_threadpool *p, unsigned seen)
{
    long long deadline = 0;
    for (int i = 0;; i++) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen || atomic_load_explicit(&p->stop, memory_order_relaxed))
            return g;
        if (i % SPIN_CHECK_EVERY == 0) {
            long long t = now_ns();
            if (deadline == 0)
                deadline = t + SPIN_NS;
            else if (t >= deadline)
                return seen;
        }
        spin_pause(p, i);
    }
}

static void *worker_main(void *arg)
{
    worker_arg *wa = arg;
    exsa_threadpool *p = wa->p;
    int id = wa->id;
    free(wa);

    unsigned seen = 0;
    for (;;) {
        unsigned g = spin_for_gen(p, seen);
        if (g == seen && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleep_work, 1);
            while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv_work, &p->mu);
            atomic_fetch_sub(&p->sleep_work, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            break;
        seen = g;
        work(p, id);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->sleep_done)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

static void wait_done(exsa_threadpool *p)
{
    long long deadline = 0;
    for (int i = 0; atomic_load_explicit(&p->pending, memory_order_acquire) != 0; i++) {
        if (i % SPIN_CHECK_EVERY == 0) {
            long long t = now_ns();
            if (deadline == 0) {
                deadline = t + SPIN_NS;
            } else if (t >= deadline) {
                pthread_mutex_lock(&p->mu);
                atomic_store(&p->sleep_done, 1);
                while (atomic_load(&p->pending) != 0)
                    pthread_cond_wait(&p->cv_done, &p->mu);
                atomic_store(&p->sleep_done, 0);
                pthread_mutex_unlock(&p->mu);
                return;
            }
        }
        spin_pause(p, i);
    }
}

static void shutdown_workers(exsa_threadpool *p)
{
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++)
        pthread_join(p->workers[i], NULL);
    p->n_started = 0;
}

exsa_threadpool *exsa_threadpool_create(int n_threads, exsa_err *err)
{
    if (n_threads < 1 || n_threads > 4096) {
        exsa_err_set(err, EXSA_EINVAL, "threadpool: n_threads %d out of range [1, 4096]",
                     n_threads);
        return NULL;
    }
    /* aligned_alloc: the struct's cache-line alignment is more than calloc's. */
    size_t size = (sizeof(exsa_threadpool) + 63) & ~(size_t)63;
    exsa_threadpool *p = aligned_alloc(64, size);
    if (!p) {
        exsa_err_set(err, EXSA_ENOMEM, "threadpool: out of memory");
        return NULL;
    }
    memset(p, 0, size);
    p->n_threads = n_threads;
    p->oversubscribed = n_threads > usable_cpus();
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        exsa_err_set(err, EXSA_ENOMEM, "threadpool: mutex init failed");
        return NULL;
    }
    if (pthread_cond_init(&p->cv_work, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        exsa_err_set(err, EXSA_ENOMEM, "threadpool: condition init failed");
        return NULL;
    }
    if (pthread_cond_init(&p->cv_done, NULL) != 0) {
        pthread_cond_destroy(&p->cv_work);
        pthread_mutex_destroy(&p->mu);
        free(p);
        exsa_err_set(err, EXSA_ENOMEM, "threadpool: condition init failed");
        return NULL;
    }
    atomic_init(&p->gen, 0);
    atomic_init(&p->next, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->sleep_work, 0);
    atomic_init(&p->sleep_done, 0);
    atomic_init(&p->stop, 0);

    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            exsa_err_set(err, EXSA_ENOMEM, "threadpool: out of memory");
            exsa_threadpool_free(p);
            return NULL;
        }
        for (int i = 1; i < n_threads; i++) {
            worker_arg *wa = malloc(sizeof *wa);
            int rc = ENOMEM;
            if (wa) {
                wa->p = p;
                wa->id = i;
                rc = pthread_create(&p->workers[i - 1], NULL, worker_main, wa);
            }
            if (rc != 0) {
                free(wa);
                exsa_err_set(err, EXSA_ENOMEM, "threadpool: cannot start worker %d of %d: %s", i,
                             n_threads - 1, strerror(rc));
                exsa_threadpool_free(p);
                return NULL;
            }
            p->n_started++;
        }
    }
    return p;
}

void exsa_threadpool_free(exsa_threadpool *p)
{
    if (!p)
        return;
    shutdown_workers(p);
    free(p->workers);
    pthread_cond_destroy(&p->cv_done);
    pthread_cond_destroy(&p->cv_work);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int exsa_threadpool_size(const exsa_threadpool *p)
{
    return p ? p->n_threads : 0;
}

static void run(exsa_threadpool *p, exsa_task_fn fn, void *ctx, int n_tasks, int each)
{
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    p->each = each;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->pending, p->n_threads - 1, memory_order_relaxed);
    /* seq_cst: orders the stores above before the bump, and the bump before
     * the read of sleep_work (see the header comment). */
    atomic_fetch_add(&p->gen, 1);
    if (atomic_load(&p->sleep_work) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
    }
    work(p, 0);
    wait_done(p);
}

void exsa_threadpool_run(exsa_threadpool *p, exsa_task_fn fn, void *ctx, int n_tasks)
{
    if (n_tasks <= 0)
        return;
    /* One task, or no workers: waking anyone costs more than it saves. */
    if (n_tasks == 1 || p->n_threads == 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        return;
    }
    run(p, fn, ctx, n_tasks, 0);
}

void exsa_threadpool_run_each(exsa_threadpool *p, exsa_task_fn fn, void *ctx)
{
    if (p->n_threads == 1)
        fn(ctx, 0, 0);
    else
        run(p, fn, ctx, p->n_threads, 1);
}
