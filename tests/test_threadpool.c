/* Thread pool: every task runs exactly once, for many (threads, tasks)
 * shapes; many back-to-back runs finish (no lost wakeup) and their writes are
 * visible to the caller when run returns; runs after the workers fell asleep
 * wake them; create/free cycles shut down cleanly; a late or slowed thread's
 * tasks are taken by the others (run_each included) and never run twice,
 * also with every thread on one CPU. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/threadpool.h"

typedef struct {
    atomic_int *count;
    atomic_int bad_thread;
    int n_threads;
} count_ctx;

static void count_task(void *vctx, int task, int thread)
{
    count_ctx *c = vctx;
    atomic_fetch_add(&c->count[task], 1);
    if (thread < 0 || thread >= c->n_threads)
        atomic_store(&c->bad_thread, 1);
}

static void test_every_task_once(void **state)
{
    (void)state;
    static const int threads[] = {1, 2, 3, 4, 8};
    static const int tasks[] = {0, 1, 2, 3, 5, 7, 8, 9, 16, 100, 1000};
    atomic_int *count = calloc(1000, sizeof *count);
    assert_non_null(count);
    for (size_t ti = 0; ti < sizeof threads / sizeof threads[0]; ti++) {
        exsa_err err = {0};
        exsa_threadpool *p = exsa_threadpool_create(threads[ti], &err);
        assert_non_null(p);
        assert_int_equal(exsa_threadpool_size(p), threads[ti]);
        for (int rep = 0; rep < 3; rep++) {
            for (size_t ki = 0; ki < sizeof tasks / sizeof tasks[0]; ki++) {
                int n = tasks[ki];
                for (int i = 0; i < 1000; i++)
                    atomic_store(&count[i], 0);
                count_ctx c = {.count = count, .n_threads = threads[ti]};
                atomic_init(&c.bad_thread, 0);
                exsa_threadpool_run(p, count_task, &c, n);
                for (int i = 0; i < 1000; i++)
                    assert_int_equal(atomic_load(&count[i]), i < n ? 1 : 0);
                assert_int_equal(atomic_load(&c.bad_thread), 0);
            }
        }
        exsa_threadpool_free(p);
    }
    free(count);
}

typedef struct {
    int *slot; /* plain ints: visibility must come from the pool's sync */
    int value;
} stamp_ctx;

static void stamp_task(void *vctx, int task, int thread)
{
    (void)thread;
    stamp_ctx *c = vctx;
    c->slot[task] = c->value + task;
}

static void test_many_runs(void **state)
{
    (void)state;
    for (int nt = 2; nt <= 4; nt++) {
        exsa_threadpool *p = exsa_threadpool_create(nt, NULL);
        assert_non_null(p);
        int slot[64];
        for (int run = 0; run < 10000; run++) {
            int n = 1 + run % 64;
            stamp_ctx c = {slot, run * 7};
            exsa_threadpool_run(p, stamp_task, &c, n);
            for (int i = 0; i < n; i++)
                assert_int_equal(slot[i], run * 7 + i);
        }
        exsa_threadpool_free(p);
    }
}

static void sleep_ms(int ms)
{
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* Workers that have given up spinning sleep on the condition variable; every
 * run after a pause must wake them and finish. */
static void test_runs_after_idle(void **state)
{
    (void)state;
    exsa_threadpool *p = exsa_threadpool_create(3, NULL);
    assert_non_null(p);
    int slot[16];
    for (int run = 0; run < 40; run++) {
        sleep_ms(run % 2 ? 2 : 0); /* alternate sleeping and spinning workers */
        stamp_ctx c = {slot, run};
        exsa_threadpool_run(p, stamp_task, &c, 16);
        for (int i = 0; i < 16; i++)
            assert_int_equal(slot[i], run + i);
    }
    exsa_threadpool_free(p);
}

typedef struct {
    atomic_int seen[8];
} slow_ctx;

static void slow_task(void *vctx, int task, int thread)
{
    (void)task;
    slow_ctx *c = vctx;
    atomic_store(&c->seen[thread], 1);
    sleep_ms(2); /* longer than the spin budget: the caller must sleep too */
}

/* Long tasks: the workers really share the work, and the caller, done with
 * its own share early, sleeps until the last worker finishes. */
static void test_work_is_shared(void **state)
{
    (void)state;
    exsa_threadpool *p = exsa_threadpool_create(3, NULL);
    assert_non_null(p);
    slow_ctx c;
    for (int i = 0; i < 8; i++)
        atomic_init(&c.seen[i], 0);
    exsa_threadpool_run(p, slow_task, &c, 30);
    int used = 0;
    for (int i = 0; i < 3; i++)
        used += atomic_load(&c.seen[i]);
    assert_true(used >= 2);
    for (int i = 3; i < 8; i++)
        assert_int_equal(atomic_load(&c.seen[i]), 0);
    exsa_threadpool_free(p);
}

static void test_create_free_cycles(void **state)
{
    (void)state;
    for (int i = 0; i < 50; i++) {
        exsa_threadpool *p = exsa_threadpool_create(1 + i % 4, NULL);
        assert_non_null(p);
        if (i % 2) {
            int slot[4];
            stamp_ctx c = {slot, i};
            exsa_threadpool_run(p, stamp_task, &c, 4);
            assert_int_equal(slot[3], i + 3);
        }
        if (i % 5 == 0)
            sleep_ms(1); /* free while workers sleep rather than spin */
        exsa_threadpool_free(p);
    }
    exsa_threadpool_free(NULL);
}

/* run_each: every task once, on a valid thread; each thread at most once
 * per task it was offered first. */
static void each_task(void *vctx, int task, int thread)
{
    count_ctx *c = vctx;
    atomic_fetch_add(&c->count[task], 1);
    if (task < 0 || task >= c->n_threads || thread < 0 || thread >= c->n_threads)
        atomic_store(&c->bad_thread, 1);
}

static void test_run_each(void **state)
{
    (void)state;
    static const int threads[] = {1, 2, 3, 8};
    atomic_int count[8];
    for (size_t ti = 0; ti < sizeof threads / sizeof threads[0]; ti++) {
        exsa_threadpool *p = exsa_threadpool_create(threads[ti], NULL);
        assert_non_null(p);
        for (int rep = 0; rep < 200; rep++) {
            for (int i = 0; i < 8; i++)
                atomic_store(&count[i], 0);
            count_ctx c = {.count = count, .n_threads = threads[ti]};
            atomic_init(&c.bad_thread, 0);
            if (rep % 3 == 0) /* mixed with counter runs */
                exsa_threadpool_run(p, count_task, &c, 3);
            for (int i = 0; i < 8; i++)
                atomic_store(&count[i], 0);
            exsa_threadpool_run_each(p, each_task, &c);
            for (int i = 0; i < 8; i++)
                assert_int_equal(atomic_load(&count[i]), i < threads[ti] ? 1 : 0);
            assert_int_equal(atomic_load(&c.bad_thread), 0);
        }
        exsa_threadpool_free(p);
    }
}

/* Which thread ran each task, and how often each task ran. */
typedef struct {
    atomic_int count[64];
    atomic_int by[64];
    atomic_int bad;
    int n_threads;
    int slow_thread; /* this thread sleeps in every task it runs */
    int slow_ms;
} who_ctx;

static void who_task(void *vctx, int task, int thread)
{
    who_ctx *c = vctx;
    if (thread < 0 || thread >= c->n_threads)
        atomic_store(&c->bad, 1);
    if (thread == c->slow_thread)
        sleep_ms(c->slow_ms);
    atomic_fetch_add(&c->count[task], 1);
    atomic_store(&c->by[task], thread);
}

static void who_init(who_ctx *c, int n_threads, int slow_thread, int slow_ms)
{
    for (int i = 0; i < 64; i++) {
        atomic_init(&c->count[i], 0);
        atomic_init(&c->by[i], -1);
    }
    atomic_init(&c->bad, 0);
    c->n_threads = n_threads;
    c->slow_thread = slow_thread;
    c->slow_ms = slow_ms;
}

/* A run_each task whose thread is late (asleep, not yet scheduled) is taken
 * by a thread done with its own: with a worker parked on its condition
 * variable and a caller whose own task is empty, the caller reaches task 1
 * before the worker has woken, at least now and then. A pool where thread t
 * always runs task t never does. */
static void test_each_steals_late_task(void **state)
{
    (void)state;
    exsa_threadpool *p = exsa_threadpool_create(2, NULL);
    assert_non_null(p);
    int stolen = 0;
    for (int rep = 0; rep < 200 && stolen == 0; rep++) {
        sleep_ms(1); /* past the spin budget: the worker parks */
        who_ctx c;
        who_init(&c, 2, -1, 0);
        exsa_threadpool_run_each(p, who_task, &c);
        assert_int_equal(atomic_load(&c.count[0]), 1);
        assert_int_equal(atomic_load(&c.count[1]), 1);
        assert_int_equal(atomic_load(&c.bad), 0);
        stolen += atomic_load(&c.by[1]) == 0;
    }
    assert_true(stolen > 0);
    exsa_threadpool_free(p);
}

/* One worker slowed (sleeping 2 ms in each task it runs, as if the kernel
 * kept it off the CPU): every task still runs exactly once, in counter and
 * run_each runs, and the others take what it has not started. */
static void test_slow_worker(void **state)
{
    (void)state;
    for (int nt = 2; nt <= 4; nt++) {
        exsa_threadpool *p = exsa_threadpool_create(nt, NULL);
        assert_non_null(p);
        for (int rep = 0; rep < 4; rep++) {
            who_ctx c;
            who_init(&c, nt, 1, 2);
            exsa_threadpool_run(p, who_task, &c, 64);
            int by_slow = 0;
            for (int i = 0; i < 64; i++) {
                assert_int_equal(atomic_load(&c.count[i]), 1);
                by_slow += atomic_load(&c.by[i]) == 1;
            }
            assert_int_equal(atomic_load(&c.bad), 0);
            /* it sleeps 2 ms per task while the others run theirs in no
             * time: it cannot have run most of them */
            assert_true(by_slow < 32);

            who_init(&c, nt, 1, 2);
            exsa_threadpool_run_each(p, who_task, &c);
            for (int i = 0; i < 64; i++)
                assert_int_equal(atomic_load(&c.count[i]), i < nt ? 1 : 0);
            assert_int_equal(atomic_load(&c.bad), 0);
        }
        exsa_threadpool_free(p);
    }
}

typedef struct {
    int *slot;
    int value;
    atomic_int *runs; /* [n]: how often task i ran in this run */
} mix_ctx;

static void mix_task(void *vctx, int task, int thread)
{
    (void)thread;
    mix_ctx *c = vctx;
    if (task % 7 == 3)
        sched_yield(); /* let threads fall behind one another */
    c->slot[task] = c->value + task;
    atomic_fetch_add(&c->runs[task], 1);
}

/* More threads than CPUs: the whole process on one CPU, so every wait is
 * for a thread that needs this very core (the waiters must yield or sleep
 * for the run to end), and workers are often late for a run or miss it.
 * Counter and run_each runs of varying sizes back to back: each task runs
 * once per run, with the run's own context, never a stale one. */
static void test_one_cpu(void **state)
{
    (void)state;
#ifdef CPU_SET
    cpu_set_t old, one;
    assert_int_equal(sched_getaffinity(0, sizeof old, &old), 0);
    int cpu = 0;
    while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &old))
        cpu++;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    assert_int_equal(sched_setaffinity(0, sizeof one, &one), 0);
    exsa_threadpool *p = exsa_threadpool_create(4, NULL); /* workers inherit the mask */
    assert_non_null(p);
    int slot[64];
    atomic_int runs[64];
    for (int run = 0; run < 3000; run++) {
        int n = run % 3 == 0 ? 4 : 1 + (run * 13) % 64;
        for (int i = 0; i < 64; i++)
            atomic_init(&runs[i], 0);
        mix_ctx c = {slot, run * 5, runs};
        if (run % 3 == 0)
            exsa_threadpool_run_each(p, mix_task, &c);
        else
            exsa_threadpool_run(p, mix_task, &c, n);
        for (int i = 0; i < 64; i++)
            assert_int_equal(atomic_load(&runs[i]), i < n ? 1 : 0);
        for (int i = 0; i < n; i++)
            assert_int_equal(slot[i], run * 5 + i);
        if (run % 500 == 0)
            sleep_ms(1);
    }
    exsa_threadpool_free(p);
    assert_int_equal(sched_setaffinity(0, sizeof old, &old), 0);
#else
    skip();
#endif
}

static void test_bad_args(void **state)
{
    (void)state;
    exsa_err err = {0};
    assert_null(exsa_threadpool_create(0, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "n_threads"));
    assert_null(exsa_threadpool_create(-3, NULL));
    assert_int_equal(exsa_threadpool_size(NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_task_once),
        cmocka_unit_test(test_many_runs),
        cmocka_unit_test(test_runs_after_idle),
        cmocka_unit_test(test_work_is_shared),
        cmocka_unit_test(test_create_free_cycles),
        cmocka_unit_test(test_run_each),
        cmocka_unit_test(test_each_steals_late_task),
        cmocka_unit_test(test_slow_worker),
        cmocka_unit_test(test_one_cpu),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
