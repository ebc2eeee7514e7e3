/* Shared helpers for the test programs. */
#ifndef EXSA_TEST_UTIL_H
#define EXSA_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Directory of ../shared/fixtures, or NULL when it is absent (the test then
 * exits with 77 so CTest reports it skipped, never passed). */
const char *exsa_test_fixtures_dir(void);
/* Path of a real model fetched by scripts/fetch-models.sh ($EXSA_MODELS_DIR,
 * else $XDG_CACHE_HOME/exsa/models, else ~/.cache/exsa/models), or NULL when
 * it is not there (the test then reports itself skipped). Static buffer. */
const char *exsa_test_model_path(const char *file_name);
/* Reads a whole file into a malloc'd buffer; NULL if unreadable. */
void *exsa_test_read_file(const char *path, size_t *size);
/* Deterministic PRNG for test data (splitmix64). */
uint64_t exsa_test_rand_u64(uint64_t *state);
float exsa_test_rand_uniform(uint64_t *state);           /* [0, 1) */
float exsa_test_rand_normal(uint64_t *state);            /* N(0, 1) */
/* Relative L2 error ||a - b|| / ||b|| in double. */
double exsa_test_rel_l2(const float *a, const float *b, size_t n);

#endif
