/* Small hashing helpers. */
#ifndef EXSA_UTIL_HASH_H
#define EXSA_UTIL_HASH_H

#include <stddef.h>
#include <stdint.h>

/* 64-bit FNV-1a; seed with EXSA_HASH_INIT or a previous hash to chain. */
#define EXSA_HASH_INIT 0xcbf29ce484222325ull
static inline uint64_t exsa_hash_bytes(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* splitmix64 step: a tiny, good-quality seeded generator for weights and
 * test data (not for sampling, which has its own RNG). */
static inline uint64_t exsa_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

#endif
