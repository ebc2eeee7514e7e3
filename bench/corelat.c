/* Cross-core handoff latency: two threads pinned to two CPUs pass a
 * counter back and forth through one cache line, as the thread pool's
 * start and done signals and the span claims do. Prints the nanoseconds
 * of one handoff (half a round trip), best and median of several rounds,
 * so that a decode step's fixed cost per pool run can be put beside the
 * machine's own latency.
 * usage: corelat [cpu a=0] [cpu b=1] [round trips per round=200000] [rounds=7] */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() ((void)0)
#endif

typedef struct {
    _Alignas(64) atomic_long turn;
    long trips;
    int cpu;
} shared;

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

/* The partner answers every odd value with the next even one. */
static void *partner(void *p)
{
    shared *s = p;
    if (pin(s->cpu) != 0)
        fprintf(stderr, "corelat: cannot pin to CPU %d, running unpinned\n", s->cpu);
    for (long i = 0; i < s->trips; i++) {
        const long want = 2 * i + 1;
        while (atomic_load_explicit(&s->turn, memory_order_acquire) != want)
            cpu_relax();
        atomic_store_explicit(&s->turn, want + 1, memory_order_release);
    }
    return NULL;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const int a = argc > 1 ? atoi(argv[1]) : 0, b = argc > 2 ? atoi(argv[2]) : 1;
    const long trips = argc > 3 ? atol(argv[3]) : 200000;
    int rounds = argc > 4 ? atoi(argv[4]) : 7;
    /* Two spinners on one CPU would only hand over at time-slice ends. */
    if (a == b || trips < 1 || rounds < 1 || rounds > 64) {
        fprintf(stderr, "usage: corelat [cpu a] [cpu b, not a] [round trips >= 1] "
                        "[rounds 1-64]\n");
        return 2;
    }
    if (pin(a) != 0)
        fprintf(stderr, "corelat: cannot pin to CPU %d, running unpinned\n", a);
    shared *s = aligned_alloc(64, sizeof *s);
    if (!s)
        return 1;
    s->trips = trips;
    s->cpu = b;
    double ns[64];
    for (int r = 0; r < rounds; r++) {
        atomic_init(&s->turn, 0);
        pthread_t th;
        if (pthread_create(&th, NULL, partner, s) != 0) {
            free(s);
            return 1;
        }
        const double t0 = now_ns();
        for (long i = 0; i < trips; i++) {
            atomic_store_explicit(&s->turn, 2 * i + 1, memory_order_release);
            while (atomic_load_explicit(&s->turn, memory_order_acquire) != 2 * i + 2)
                cpu_relax();
        }
        ns[r] = (now_ns() - t0) / (2.0 * (double)trips);
        pthread_join(th, NULL);
    }
    free(s);
    qsort(ns, (size_t)rounds, sizeof ns[0], cmp);
    printf("handoff CPU %d <-> CPU %d: best %.1f ns, median %.1f ns (%d rounds of %ld round "
           "trips)\n",
           a, b, ns[0], ns[rounds / 2], rounds, trips);
    return 0;
}
