/* Persistent thread pool that degrades gracefully when it shares the CPUs.
 *
 * n_threads - 1 workers are created once and park between runs. A run
 * publishes (fn, ctx, n_tasks), bumps a generation counter and wakes the
 * workers; every thread (the caller as thread 0) then claims tasks until
 * none are left. The run ends when every TASK is done, not when every
 * worker has reported back: a worker the kernel has descheduled (a build,
 * another process on its core) holds up a run only if it holds a claimed
 * task, never by merely being late. Its share is claimed by whoever comes:
 * counter runs hand out indices from one counter; run_each offers task t
 * to thread t first, and a thread done with its own takes the others' not
 * yet started.
 *
 * Late workers and stale runs. Every claim word carries the generation it
 * belongs to (gen << 32 | claim state), and a worker claims only with the
 * generation it saw, by compare-and-swap: once the caller has moved on,
 * a late worker's claim fails, so it can never run a task of a finished
 * run nor take one of the next run without having seen it. The caller
 * resets the claim words before it stores the run's shape (release) and a
 * worker loads the shape (acquire) before it claims, so a worker that sees
 * the next run's shape also sees its reset words and fails on the old tag.
 * fn and ctx are read only after a successful claim: the run cannot end
 * (nor the caller overwrite them) before that claim's task is done.
 *
 * Waiting. Workers poll for the next run with pause for a few
 * microseconds, then yield the CPU between polls (a thread sharing their
 * core, such as the caller, runs), then sleep on a condition variable; the
 * caller polls for its run's last tasks with pause, then sleeps. A forward
 * pass issues runs back to back, and a futex round trip per run would cost
 * more than many small ops. Sleepers announce themselves in an atomic
 * counter under the mutex, then re-check the condition; the waker changes
 * the condition first and only then reads the counter (both seq_cst), so
 * either the sleeper sees the change or the waker sees the sleeper and
 * signals under the mutex: no lost wakeups, and no mutex traffic while
 * everyone is spinning.
 *
 * Contention. A worker that the kernel preempts while it holds a task
 * holds up the run until it gets a CPU again: a time slice of whatever
 * else runs there. When the caller sees such a stall it runs the next runs
 * alone for a while, backing off exponentially while stalls recur, and
 * probes with the workers again after each period: under a busy core the
 * default thread count then runs about as -t 1 would, and on an idle
 * machine it never stalls and keeps every thread.
 */
#include "util/threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/err.h"

/* Longest time a worker polls for the next run before sleeping: long
 * enough to cover the gap between two ops of a forward pass, short enough
 * that an idle server does not burn cores. Past WORK_PAUSE_NS each poll
 * yields the CPU first, so that a thread sharing this core (the caller,
 * running the serial part between two ops) runs. */
#define WORK_SPIN_NS 200000LL
#define WORK_PAUSE_NS 8000LL
/* The caller, waiting for the tasks other threads hold, polls for this long
 * and then sleeps until the last one is done. It never yields: under load a
 * yield hands the core to another process for a whole time slice, while
 * the pool's next run waits for this thread. The tail of a balanced op is
 * a few microseconds; a longer wait means the thread holding the last task
 * is off the CPU (and perhaps needs this core). */
#define DONE_SPIN_NS 30000LL
#define SPIN_CHECK_EVERY 32

/* Solo periods: the caller runs the pool's runs alone, as -t 1 would,
 * while the workers sleep. It goes solo
 * - after a stall: a run whose caller waited longer than STALL_MIN_NS, and
 *   longer than it worked itself, for tasks other threads held (a
 *   balanced op's tail is microseconds; this is a thread the kernel took
 *   off the CPU, which costs every run it holds a task of up to a time
 *   slice of whatever else runs there);
 * - when over HELP_WINDOW pooled runs the workers ran less than a quarter
 *   of their fair share of the tasks: they are mostly off the CPU, and
 *   their polling and wakeups still cost the caller (where the kernel
 *   gives the process one share of the CPUs however many threads it has,
 *   as with autogroup, and when a woken worker preempts the caller).
 * A period lasts solo_ns (from SOLO_MIN_NS, doubling each time the probe
 * after a period fails, up to SOLO_MAX_NS, halving with each window that
 * passes), after a stall at least four stalls long. */
#define STALL_MIN_NS 500000LL
#define HELP_WINDOW 64
#define SOLO_MIN_NS 4000000LL
#define SOLO_MAX_NS 256000000LL

/* Claim states in the low half of a claim word. */
#define CLAIM_OPEN 0u
#define CLAIM_TAKEN 1u

/* Fields that different threads write sit on separate cache lines: spinning
 * workers poll gen, every thread claims from `claim`, threads add to done;
 * sharing one line would make each of these a cross-core miss for all. */
struct exsa_threadpool {
    int n_threads;
    pthread_t *workers; /* n_threads - 1 */
    int n_started;
    /* run_each: task t's claim word, gen << 32 | CLAIM_OPEN / CLAIM_TAKEN */
    _Atomic uint64_t *own;

    pthread_mutex_t mu;
    pthread_cond_t cv_work; /* workers wait for a new generation */
    pthread_cond_t cv_done; /* the caller waits for done == n_tasks */

    /* The current run: written by the caller, then published by bumping gen. */
    _Alignas(64) atomic_uint gen;
    atomic_int stop;
    _Atomic int64_t shape; /* n_tasks << 1 | each */
    exsa_task_fn fn;
    void *ctx;

    _Alignas(64) _Atomic uint64_t claim; /* counter runs: gen << 32 | next task */
    _Alignas(64) atomic_int done;        /* tasks finished in this run */
    atomic_int sleep_done;               /* 1 while the caller sleeps on cv_done */
    _Alignas(64) atomic_int sleep_work;  /* workers sleeping (or about to) on cv_work */

    /* Solo periods (caller-only fields): runs before solo_until
     * (CLOCK_MONOTONIC ns) skip the workers; solo_ns is the next period's
     * length. */
    long long solo_until, solo_ns;
    int probing; /* no window has passed since the last solo period */
    /* pooled runs, their tasks and the caller's share of them since the
     * last look (HELP_WINDOW runs) */
    int win_runs;
    long long win_tasks, win_caller;
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

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Bounded polling: poll_next returns 0 while the caller may poll again
 * (after a pause or a yield), 1 once the spin budget is spent (then sleep). */
typedef struct {
    long long spin_ns, pause_ns; /* budget; busy-wait part of it */
    int i;
    long long start;
    int yielding;
} poller;

static int poll_next(poller *w)
{
    if (w->i++ % SPIN_CHECK_EVERY == 0) {
        long long t = now_ns();
        if (w->start == 0)
            w->start = t;
        else if (t - w->start >= w->spin_ns)
            return 1;
        else if (t - w->start >= w->pause_ns)
            w->yielding = 1;
    }
    if (w->yielding)
        sched_yield();
    else
        cpu_relax();
    return 0;
}

/* Claims task t of run gen from its own word: 1 if this thread got it. */
static int claim_own(exsa_threadpool *p, unsigned gen, int t)
{
    uint64_t open = (uint64_t)gen << 32 | CLAIM_OPEN;
    if (atomic_load_explicit(&p->own[t], memory_order_relaxed) != open)
        return 0;
    return atomic_compare_exchange_strong_explicit(&p->own[t], &open,
                                                   (uint64_t)gen << 32 | CLAIM_TAKEN,
                                                   memory_order_acquire, memory_order_relaxed);
}

/* Claims the next task of counter run gen with n tasks: its index, or -1. */
static int claim_next(exsa_threadpool *p, unsigned gen, int n)
{
    uint64_t v = atomic_load_explicit(&p->claim, memory_order_relaxed);
    for (;;) {
        if ((unsigned)(v >> 32) != gen || (uint32_t)v >= (uint32_t)n)
            return -1;
        if (atomic_compare_exchange_weak_explicit(&p->claim, &v, v + 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return (int)(uint32_t)v;
    }
}

/* Runs tasks of run gen on `thread` until none are left to claim, then adds
 * the number it ran to done (waking a sleeping caller on the last one).
 * Returns that number. */
static int work(exsa_threadpool *p, unsigned gen, int thread)
{
    const int64_t shape = atomic_load_explicit(&p->shape, memory_order_acquire);
    const int n = (int)(shape >> 1), each = (int)(shape & 1);
    exsa_task_fn fn = NULL;
    void *ctx = NULL;
    int ran = 0;
    for (int k = 0;; k++) {
        int t;
        if (each) {
            if (k == n)
                break;
            t = (thread + k) % n;
            if (!claim_own(p, gen, t))
                continue;
        } else {
            t = claim_next(p, gen, n);
            if (t < 0)
                break;
        }
        if (!fn) { /* this run's, and not yet replaced: see the header */
            fn = p->fn;
            ctx = p->ctx;
        }
        fn(ctx, t, thread);
        ran++;
    }
    if (ran == 0)
        return 0;
    /* release: the tasks' writes are visible to the caller that sees done */
    if (atomic_fetch_add(&p->done, ran) + ran == n && thread != 0 &&
        atomic_load(&p->sleep_done)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_signal(&p->cv_done);
        pthread_mutex_unlock(&p->mu);
    }
    return ran;
}

static void *worker_main(void *arg)
{
    worker_arg *wa = arg;
    exsa_threadpool *p = wa->p;
    int id = wa->id;
    free(wa);

    unsigned seen = 0;
    for (;;) {
        unsigned g;
        poller w = {.spin_ns = WORK_SPIN_NS, .pause_ns = WORK_PAUSE_NS};
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&p->stop, memory_order_relaxed)) {
            if (!poll_next(&w))
                continue;
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleep_work, 1);
            while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv_work, &p->mu);
            atomic_fetch_sub(&p->sleep_work, 1);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        if (atomic_load(&p->stop))
            break;
        /* A worker that slept through several runs joins the newest one
         * (whose claims may all be gone: then it only looks). */
        seen = g;
        (void)work(p, g, id);
    }
    return NULL;
}

/* Waits until the run's n tasks are done; returns when it started
 * waiting (0: it did not wait). */
static long long wait_done(exsa_threadpool *p, int n)
{
    poller w = {.spin_ns = DONE_SPIN_NS, .pause_ns = DONE_SPIN_NS};
    while (atomic_load_explicit(&p->done, memory_order_acquire) != n) {
        if (!poll_next(&w))
            continue;
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->sleep_done, 1);
        while (atomic_load(&p->done) != n)
            pthread_cond_wait(&p->cv_done, &p->mu);
        atomic_store(&p->sleep_done, 0);
        pthread_mutex_unlock(&p->mu);
        break;
    }
    return w.start;
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
    p->solo_ns = SOLO_MIN_NS;
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
    atomic_init(&p->shape, 0);
    atomic_init(&p->claim, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->sleep_work, 0);
    atomic_init(&p->sleep_done, 0);
    atomic_init(&p->stop, 0);

    p->own = calloc((size_t)n_threads, sizeof *p->own);
    if (!p->own) {
        exsa_err_set(err, EXSA_ENOMEM, "threadpool: out of memory");
        exsa_threadpool_free(p);
        return NULL;
    }
    for (int t = 0; t < n_threads; t++) /* generation 0 is never run */
        atomic_init(&p->own[t], CLAIM_TAKEN);
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
    free(p->own);
    pthread_cond_destroy(&p->cv_done);
    pthread_cond_destroy(&p->cv_work);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int exsa_threadpool_size(const exsa_threadpool *p)
{
    return p ? p->n_threads : 0;
}

/* The caller alone, as a pool of one thread would run it. */
static void run_solo(exsa_task_fn fn, void *ctx, int n_tasks)
{
    for (int t = 0; t < n_tasks; t++)
        fn(ctx, t, 0);
}

/* The caller alone for a while from t1 on, at least `least` ns: after a
 * stall, or workers that hardly help. Coming right after a solo period
 * (the probe failed), the period doubles. */
static void go_solo(exsa_threadpool *p, long long t1, long long least)
{
    if (p->probing)
        p->solo_ns = p->solo_ns * 2 < SOLO_MAX_NS ? p->solo_ns * 2 : SOLO_MAX_NS;
    const long long solo = least > p->solo_ns && least < SOLO_MAX_NS ? least : p->solo_ns;
    p->solo_until = t1 + solo;
    p->probing = 1;
    p->win_runs = 0;
    p->win_tasks = p->win_caller = 0;
}

/* After a pooled run of n tasks that began at t0, of which the caller ran
 * `mine`, and whose caller waited for the others' from wait0 on (0: it did
 * not wait): a stall, or workers that hardly helped over the last
 * HELP_WINDOW runs, start a solo period; each window that passes without
 * either halves the next one (see STALL_MIN_NS, HELP_WINDOW). */
static void pace(exsa_threadpool *p, long long t0, long long wait0, int n, int mine)
{
    if (wait0 != 0) {
        const long long t1 = now_ns(), stall = t1 - wait0;
        if (stall > STALL_MIN_NS && stall > wait0 - t0) {
            go_solo(p, t1, 4 * stall); /* then a stall costs a fifth at most */
            return;
        }
    }
    p->win_tasks += n;
    p->win_caller += mine;
    if (++p->win_runs < HELP_WINDOW)
        return;
    const long long others = p->win_tasks - p->win_caller;
    if (others * 4 * p->n_threads < p->win_tasks * (p->n_threads - 1)) {
        go_solo(p, now_ns(), 0);
        return;
    }
    p->probing = 0;
    p->solo_ns = p->solo_ns / 2 > SOLO_MIN_NS ? p->solo_ns / 2 : SOLO_MIN_NS;
    p->win_runs = 0;
    p->win_tasks = p->win_caller = 0;
}

static void run(exsa_threadpool *p, exsa_task_fn fn, void *ctx, int n_tasks, int each)
{
    long long t0 = now_ns();
    if (t0 < p->solo_until) {
        run_solo(fn, ctx, n_tasks);
        return;
    }
    /* Only this thread writes gen: g is the run about to be published. */
    unsigned g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
    if (g == 0) /* never tag a run 0: the words start out as generation 0 */
        g = 1;
    /* The claim words first, then the shape (release), then gen: see the
     * header. */
    if (each)
        for (int t = 0; t < n_tasks; t++)
            atomic_store_explicit(&p->own[t], (uint64_t)g << 32 | CLAIM_OPEN,
                                  memory_order_relaxed);
    atomic_store_explicit(&p->claim, (uint64_t)g << 32, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->shape, (int64_t)n_tasks << 1 | each, memory_order_release);
    p->fn = fn;
    p->ctx = ctx;
    /* seq_cst: publishes the stores above, and orders the bump before the
     * read of sleep_work (see the header comment). */
    atomic_store(&p->gen, g);
    if (atomic_load(&p->sleep_work) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
    }
    const int mine = work(p, g, 0);
    const long long wait0 = wait_done(p, n_tasks);
    pace(p, t0, wait0, n_tasks, mine);
}

void exsa_threadpool_run(exsa_threadpool *p, exsa_task_fn fn, void *ctx, int n_tasks)
{
    if (n_tasks <= 0)
        return;
    /* One task, or no workers: waking anyone costs more than it saves. */
    if (n_tasks == 1 || p->n_threads == 1) {
        run_solo(fn, ctx, n_tasks);
        return;
    }
    run(p, fn, ctx, n_tasks, 0);
}

int exsa_threadpool_active(const exsa_threadpool *p)
{
    return p->n_threads > 1 && now_ns() < p->solo_until ? 1 : p->n_threads;
}

void exsa_threadpool_run_each(exsa_threadpool *p, exsa_task_fn fn, void *ctx)
{
    if (p->n_threads == 1)
        run_solo(fn, ctx, 1);
    else
        run(p, fn, ctx, p->n_threads, 1);
}
