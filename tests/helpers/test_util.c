#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#ifndef EXSA_FIXTURES
#define EXSA_FIXTURES "../shared/fixtures"
#endif

const char *exsa_test_fixtures_dir(void)
{
    const char *env = getenv("EXSA_FIXTURES_DIR");
    const char *dir = env && *env ? env : EXSA_FIXTURES;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return NULL;
    return dir;
}

const char *exsa_test_model_path(const char *file_name)
{
    static char path[4096];
    const char *dir = getenv("EXSA_MODELS_DIR");
    int n;
    if (dir && *dir) {
        n = snprintf(path, sizeof path, "%s/%s", dir, file_name);
    } else {
        const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
        if (xdg && *xdg)
            n = snprintf(path, sizeof path, "%s/exsa/models/%s", xdg, file_name);
        else if (home && *home)
            n = snprintf(path, sizeof path, "%s/.cache/exsa/models/%s", home, file_name);
        else
            return NULL;
    }
    struct stat st;
    if (n < 0 || (size_t)n >= sizeof path || stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return NULL;
    return path;
}

void *exsa_test_read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return NULL;
    }
    long n = ftell(f);
    if (n < 0) {
        fclose(f);
        return NULL;
    }
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        if (size)
            *size = (size_t)n;
    }
    return buf;
}

uint64_t exsa_test_rand_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float exsa_test_rand_uniform(uint64_t *s)
{
    return (float)(exsa_test_rand_u64(s) >> 40) / (float)(1ull << 24);
}

float exsa_test_rand_normal(uint64_t *s)
{
    double u1 = ((exsa_test_rand_u64(s) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (exsa_test_rand_u64(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

double exsa_test_rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
