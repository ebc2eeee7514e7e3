/* Per-client token-bucket rate limit.
 *
 * Each client (by IP address) has a bucket of `burst` tokens refilled at
 * `rate` tokens per second; a request takes one. Buckets live in a fixed
 * table (no allocation per request, bounded memory whatever the number of
 * clients): a new client that finds no free slot near its hash takes the
 * least recently seen one, which at worst gives that old client a fresh
 * bucket. One mutex; thread safe.
 */
#ifndef EXSA_SERVER_RATELIMIT_H
#define EXSA_SERVER_RATELIMIT_H

#include <stdint.h>

#include "exsa.h"

typedef struct exsa_ratelimit exsa_ratelimit;

/* rate > 0 requests per second; burst >= 1 (tokens a client may bank). */
exsa_ratelimit *exsa_ratelimit_create(double rate, double burst, exsa_err *err);
void exsa_ratelimit_free(exsa_ratelimit *r);
/* Takes a token for client at now_ns (monotonic). Returns 1 if allowed;
 * 0 if limited, with *retry_after_s the seconds until a token is back. */
int exsa_ratelimit_take(exsa_ratelimit *r, const char *client, int64_t now_ns,
                        double *retry_after_s);

#endif
