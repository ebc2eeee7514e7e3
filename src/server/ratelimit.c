#include "server/ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

#define SLOTS 8192 /* power of two */
#define PROBES 16
#define KEY_MAX 64

typedef struct bucket {
    char key[KEY_MAX]; /* "" = free */
    double tokens;
    int64_t last_ns;
} bucket;

struct exsa_ratelimit {
    double rate, burst;
    pthread_mutex_t mu;
    bucket b[SLOTS];
};

exsa_ratelimit *exsa_ratelimit_create(double rate, double burst, exsa_err *err)
{
    if (!(rate > 0) || !isfinite(rate) || !(burst >= 1) || !isfinite(burst)) {
        exsa_err_set(err, EXSA_EINVAL, "rate limit: rate must be > 0 and burst >= 1 (got %g, %g)",
                     rate, burst);
        return NULL;
    }
    exsa_ratelimit *r = calloc(1, sizeof *r);
    if (!r) {
        exsa_err_set(err, EXSA_ENOMEM, "rate limit: out of memory");
        return NULL;
    }
    r->rate = rate;
    r->burst = burst;
    pthread_mutex_init(&r->mu, NULL);
    return r;
}

void exsa_ratelimit_free(exsa_ratelimit *r)
{
    if (!r)
        return;
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

int exsa_ratelimit_take(exsa_ratelimit *r, const char *client, int64_t now_ns,
                        double *retry_after_s)
{
    char key[KEY_MAX];
    size_t n = strnlen(client ? client : "", KEY_MAX - 1);
    memcpy(key, client ? client : "", n);
    key[n] = '\0';
    uint64_t h = hash(key);
    pthread_mutex_lock(&r->mu);
    bucket *hit = NULL, *free_slot = NULL, *oldest = NULL;
    for (int i = 0; i < PROBES; i++) {
        bucket *b = &r->b[(h + (uint64_t)i) & (SLOTS - 1)];
        if (!b->key[0]) {
            if (!free_slot)
                free_slot = b;
            continue;
        }
        if (!strcmp(b->key, key)) {
            hit = b;
            break;
        }
        /* A bucket idle long enough to be full again holds no information. */
        if (!free_slot && (double)(now_ns - b->last_ns) / 1e9 * r->rate >= r->burst)
            free_slot = b;
        if (!oldest || b->last_ns < oldest->last_ns)
            oldest = b;
    }
    if (!hit) {
        hit = free_slot ? free_slot : oldest;
        memcpy(hit->key, key, n + 1);
        hit->tokens = r->burst;
        hit->last_ns = now_ns;
    }
    double dt = (double)(now_ns - hit->last_ns) / 1e9;
    if (dt > 0)
        hit->tokens = fmin(r->burst, hit->tokens + dt * r->rate);
    hit->last_ns = now_ns > hit->last_ns ? now_ns : hit->last_ns;
    int ok = hit->tokens >= 1.0;
    if (ok)
        hit->tokens -= 1.0;
    else if (retry_after_s)
        *retry_after_s = (1.0 - hit->tokens) / r->rate;
    pthread_mutex_unlock(&r->mu);
    return ok;
}
