#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "quant/quant.h"

int exsa_cli_fail(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "exsa %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int exsa_cli_kv_type(const char *cmd, const char *s, int *out)
{
    int t = exsa_type_from_name(s);
    if (t != EXSA_TYPE_F16 && t != EXSA_TYPE_F32 && t != EXSA_TYPE_Q8_0)
        return exsa_cli_fail(cmd, "--kv-type must be f16, f32 or q8_0, got '%s'", s);
    *out = t;
    return 0;
}

int exsa_cli_int(const char *cmd, const char *flag, const char *s, int64_t lo, int64_t hi,
                 int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return exsa_cli_fail(cmd, "%s expects an integer, got '%s'", flag, s);
    if (v < lo || v > hi)
        return exsa_cli_fail(cmd, "%s must be in [%lld, %lld], got %lld", flag, (long long)lo,
                             (long long)hi, v);
    *out = v;
    return 0;
}

int exsa_cli_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
                   double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || isnan(v))
        return exsa_cli_fail(cmd, "%s expects a number, got '%s'", flag, s);
    if (v < lo || v > hi)
        return exsa_cli_fail(cmd, "%s must be in [%g, %g], got %g", flag, lo, hi, v);
    *out = v;
    return 0;
}

const char *exsa_cli_value(const char *cmd, int argc, char **argv, int *i)
{
    if (*i + 1 >= argc) {
        exsa_cli_fail(cmd, "%s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

void exsa_cli_progress(void *ud, int64_t done, int64_t total)
{
    (void)ud;
    if (!isatty(2) || total <= 0)
        return;
    int width = 40, fill = (int)(done * width / total);
    fprintf(stderr, "\r[%.*s%*s] %3d%% (%lld/%lld)", fill,
            "########################################", width - fill, "",
            (int)(done * 100 / total), (long long)done, (long long)total);
    if (done == total)
        fputc('\n', stderr);
}

const char *exsa_cli_env_model(void)
{
    const char *m = getenv("EXSA_MODEL_PATH");
    if (!m || !*m)
        m = getenv("MODEL_PATH");
    return m && *m ? m : NULL;
}

void exsa_cli_json_string(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

int exsa_cli_placement(const char *cmd, int argc, char **argv, int *i, exsa_model_params *mp)
{
    const char *a = argv[*i], *v;
    int64_t n;
    if (!strcmp(a, "--device")) {
        if (!(v = exsa_cli_value(cmd, argc, argv, i)))
            return -1;
        if ((mp->device = exsa_device_from_name(v)) < 0) {
            exsa_cli_fail(cmd, "--device must be auto, cpu or cuda, got '%s'", v);
            return -1;
        }
        return 1;
    }
    if (!strcmp(a, "-ngl") || !strcmp(a, "--n-gpu-layers") || !strcmp(a, "--gpu-layers")) {
        if (!(v = exsa_cli_value(cmd, argc, argv, i)) ||
            exsa_cli_int(cmd, a, v, -1, 1 << 20, &n))
            return -1;
        mp->n_gpu_layers = (int)n;
        return 1;
    }
    if (!strcmp(a, "-mg") || !strcmp(a, "--main-gpu")) {
        if (!(v = exsa_cli_value(cmd, argc, argv, i)) || exsa_cli_int(cmd, a, v, 0, 1024, &n))
            return -1;
        mp->gpu = (int)n;
        return 1;
    }
    return 0;
}

int exsa_cli_spec(const char *cmd, int argc, char **argv, int *i, exsa_engine_params *ep)
{
    const char *a = argv[*i], *v;
    int64_t n;
    double x;
    if (!strcmp(a, "--spec") || !strcmp(a, "--speculative")) {
        ep->spec = 1;
        return 1;
    }
    if (!strcmp(a, "-md") || !strcmp(a, "--model-draft")) {
        if (!(v = exsa_cli_value(cmd, argc, argv, i)))
            return -1;
        ep->draft_model_path = v;
        ep->spec = 1;
        return 1;
    }
    int *dst = !strcmp(a, "--draft-max") || !strcmp(a, "--draft") ? &ep->spec_n_max
               : !strcmp(a, "--draft-min")                       ? &ep->spec_n_min
               : !strcmp(a, "--spec-max-seqs")                   ? &ep->spec_max_seqs
                                                                 : NULL;
    if (dst) {
        if (!(v = exsa_cli_value(cmd, argc, argv, i)) || exsa_cli_int(cmd, a, v, 0, 1024, &n))
            return -1;
        *dst = (int)n;
        return 1;
    }
    if (!strcmp(a, "--draft-p-min")) {
        if (!(v = exsa_cli_value(cmd, argc, argv, i)) || exsa_cli_float(cmd, a, v, 0, 1, &x))
            return -1;
        ep->spec_p_min = (float)x;
        return 1;
    }
    return 0;
}

/* The whole file, NUL-terminated; NULL with a message on failure. */
char *exsa_cli_read_file(const char *cmd, const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        exsa_cli_fail(cmd, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *s = malloc(cap);
    for (;;) {
        if (!s) {
            fclose(f);
            exsa_cli_fail(cmd, "out of memory reading '%s'", path);
            return NULL;
        }
        n += fread(s + n, 1, cap - n - 1, f);
        if (n < cap - 1)
            break;
        char *t = cap <= SIZE_MAX / 2 ? realloc(s, cap *= 2) : NULL;
        if (!t)
            free(s);
        s = t;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(s);
        exsa_cli_fail(cmd, "cannot read '%s'", path);
        return NULL;
    }
    s[n] = 0;
    *len = n;
    return s;
}
