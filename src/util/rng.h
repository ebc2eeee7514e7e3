/* Seeded pseudo-random numbers: xoshiro256** seeded through splitmix64.
 *
 * Small, fast and reproducible across platforms: the same seed gives the same
 * stream everywhere, which is what per-request sampling seeds promise. Not for
 * anything secret. One exsa_rng per user (no locking); the struct is plain
 * data, so copying it forks the stream.
 */
#ifndef EXSA_UTIL_RNG_H
#define EXSA_UTIL_RNG_H

#include <stdint.h>

typedef struct exsa_rng {
    uint64_t s[4];
} exsa_rng;

/* Any seed is fine (0 included): splitmix64 spreads it over the 256-bit state,
 * which then can never be all zero. */
void exsa_rng_seed(exsa_rng *r, uint64_t seed);
uint64_t exsa_rng_next(exsa_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double exsa_rng_uniform(exsa_rng *r);
/* A seed from the wall and monotonic clocks, for "random" seeds. Two calls in
 * the same nanosecond may agree; callers mix in something of their own. */
uint64_t exsa_rng_clock_seed(void);

#endif
