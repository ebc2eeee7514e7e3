/* Memory bandwidth probe (STREAM-like): read-only sum (plain, and with
 * software prefetch as the kernels use) and triad a = b + s*c over arrays
 * far larger than the caches, with N threads. Prints GB/s so
 * that token-generation speed can be put next to the machine's roofline in
 * the same run (bytes of weights read per token / bandwidth).
 * usage: membw [threads=2] [MiB per array=512] [reps=5] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

/* On transparent huge pages, as Exsa's weights are (cpu_repack.c): with
 * 4 KB pages the probe would measure TLB misses too and understate the
 * bandwidth the kernels can reach. */
static void *huge_alloc(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, (size_t)2 << 20, bytes) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes & ~(size_t)4095, MADV_HUGEPAGE);
#endif
    return p;
}

typedef struct {
    float *a, *b, *c;
    size_t n;
    int mode; /* 0 read, 1 triad, 2 read with software prefetch */
    double sum;
} job;

static void *work(void *p)
{
    job *j = p;
    if (j->mode == 0) {
        /* Integer xor vectorizes (float sums would be bound by add latency). */
        const uint64_t *p64 = (const uint64_t *)j->b;
        uint64_t x = 0;
        for (size_t i = 0; i < j->n / 2; i++)
            x ^= p64[i];
        j->sum = (double)(x & 1);
    } else if (j->mode == 2) {
        /* As the streaming kernels do (kernels_internal.h): a hint 1.5 KB
         * ahead per cache line, so the roofline is not set by the
         * hardware prefetcher alone when the kernels do better than it. */
        const uint64_t *p64 = (const uint64_t *)j->b;
        const size_t n64 = j->n / 2 / 8 * 8;
        uint64_t x = 0;
        for (size_t i = 0; i < n64; i += 8) {
            __builtin_prefetch(p64 + i + 192);
            for (int k = 0; k < 8; k++)
                x ^= p64[i + k];
        }
        j->sum = (double)(x & 1);
    } else {
        for (size_t i = 0; i < j->n; i++)
            j->a[i] = j->b[i] + 3.0f * j->c[i];
    }
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    int nt = argc > 1 ? atoi(argv[1]) : 2, reps = argc > 3 ? atoi(argv[3]) : 5;
    size_t mib = argc > 2 ? (size_t)atoi(argv[2]) : 512;
    if (nt < 1 || nt > 256 || mib < 1 || reps < 1) {
        fprintf(stderr, "usage: membw [threads] [MiB per array] [reps]\n");
        return 1;
    }
    size_t n = mib * 1024 * 1024 / sizeof(float);
    float *a = huge_alloc(n * sizeof *a), *b = huge_alloc(n * sizeof *b);
    float *c = huge_alloc(n * sizeof *c);
    if (!a || !b || !c) {
        fprintf(stderr, "membw: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        a[i] = 0, b[i] = (float)(i & 1023), c[i] = 1.0f;
    pthread_t th[256];
    job jobs[256];
    const char *names[3] = {"read", "triad", "read_prefetch"};
    for (int mode = 0; mode < 3; mode++) {
        double best = 0, sum = 0;
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            for (int t = 0; t < nt; t++) {
                size_t lo = n * (size_t)t / (size_t)nt, hi = n * (size_t)(t + 1) / (size_t)nt;
                jobs[t] = (job){a + lo, b + lo, c + lo, hi - lo, mode, 0};
                pthread_create(&th[t], NULL, work, &jobs[t]);
            }
            for (int t = 0; t < nt; t++) {
                pthread_join(th[t], NULL);
                sum += jobs[t].sum;
            }
            double bytes = (double)n * sizeof(float) * (mode == 1 ? 3 : 1);
            double gbs = bytes / (now() - t0) / 1e9;
            best = gbs > best ? gbs : best;
        }
        printf("{\"test\": \"%s\", \"threads\": %d, \"best_gbs\": %.2f}%s\n", names[mode], nt,
               best, sum == -1 ? " " : "");
    }
    free(a);
    free(b);
    free(c);
    return 0;
}
