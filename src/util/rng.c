#include "util/rng.h"

#include <time.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void exsa_rng_seed(exsa_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
    /* splitmix64 is a bijection of a counter, so four consecutive outputs are
     * never all zero; keep the guard anyway since an all-zero state is a
     * fixed point of xoshiro. */
    if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
        r->s[0] = 1;
}

uint64_t exsa_rng_next(exsa_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double exsa_rng_uniform(exsa_rng *r)
{
    /* Top 53 bits scaled by 2^-53: exact doubles, never 1.0. */
    return (double)(exsa_rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t exsa_rng_clock_seed(void)
{
    struct timespec a = {0}, b = {0};
    clock_gettime(CLOCK_REALTIME, &a);
    clock_gettime(CLOCK_MONOTONIC, &b);
    uint64_t x = (uint64_t)a.tv_sec * 1000000000ULL + (uint64_t)a.tv_nsec;
    uint64_t y = (uint64_t)b.tv_sec * 1000000000ULL + (uint64_t)b.tv_nsec;
    x ^= rotl(y, 32);
    return splitmix64(&x);
}
