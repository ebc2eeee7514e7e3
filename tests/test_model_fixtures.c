/* Whole-model logits against llama.cpp (../shared/fixtures/models).
 *
 * For each model in manifest.json: run its prompt through
 * exsa_model_forward with the default F16 KV cache (what llama.cpp used),
 * logits for every position, and compare with llama.cpp's .logits.f32:
 * relative L2 error within the manifest's tolerance and the same argmax at
 * the required share of positions (README: F32 <= 2e-3, every position;
 * Q8_0 <= 6.7e-3, Q4_0 <= 6.5e-2, Q4_K_M <= 5.5e-2, >= 80%). Printed as
 * FIXERR lines.
 *
 * The double-precision reference of tests/helpers/ref_forward.c is checked
 * against the same files (FIXREF lines), so that the reference the synthetic
 * tests trust is itself confirmed by an outside engine; the engine is also
 * compared with that reference (FIXSELF). The quantized models' error
 * against the unquantized model's logits is printed for scale (FIXQERR).
 *
 * manifest.json is read with a small scanner for the JSON subset it uses.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "quant/quant.h"
#include "ref_forward.h"
#include "test_util.h"

#define MAX_FIXTURES 32
#define MAX_IDS 512
#define N_THREADS 2

typedef struct fixture {
    char model[128];
    char logits[128];
    int32_t ids[MAX_IDS];
    int n_ids;
    long n_vocab;
    double tol, argmax_min;
} fixture;

static const char *g_models_dir; /* fixtures/models, set in main */

/* ---- manifest scanner ---- */

typedef struct scan {
    const char *p, *end;
} scan;

static void skip_ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static int eat(scan *s, char c)
{
    skip_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return 1;
    }
    return 0;
}

/* A string without escapes other than \" and \\ (file names, keys). */
static int parse_string(scan *s, char *out, size_t cap)
{
    if (!eat(s, '"'))
        return -1;
    size_t n = 0;
    while (s->p < s->end && *s->p != '"') {
        char c = *s->p++;
        if (c == '\\') {
            if (s->p >= s->end || (*s->p != '"' && *s->p != '\\'))
                return -1;
            c = *s->p++;
        }
        if (n + 1 >= cap)
            return -1;
        out[n++] = c;
    }
    if (s->p >= s->end)
        return -1;
    s->p++;
    out[n] = '\0';
    return 0;
}

static int parse_number(scan *s, double *v)
{
    skip_ws(s);
    char buf[64];
    size_t n = 0;
    while (s->p < s->end && n + 1 < sizeof buf && strchr("+-0123456789.eE", *s->p))
        buf[n++] = *s->p++;
    buf[n] = '\0';
    char *e;
    *v = strtod(buf, &e);
    return n > 0 && *e == '\0' ? 0 : -1;
}

static int skip_value(scan *s, int depth)
{
    skip_ws(s);
    if (s->p >= s->end || depth > 16)
        return -1;
    char tmp[1024];
    double d;
    if (*s->p == '"')
        return parse_string(s, tmp, sizeof tmp);
    if (*s->p == '[' || *s->p == '{') {
        char close = *s->p == '[' ? ']' : '}';
        int obj = *s->p == '{';
        s->p++;
        if (eat(s, close))
            return 0;
        do {
            if (obj && (parse_string(s, tmp, sizeof tmp) != 0 || !eat(s, ':')))
                return -1;
            if (skip_value(s, depth + 1) != 0)
                return -1;
        } while (eat(s, ','));
        return eat(s, close) ? 0 : -1;
    }
    for (size_t i = 0; i < 3; i++) {
        const char *lit[] = {"true", "false", "null"};
        size_t l = strlen(lit[i]);
        if ((size_t)(s->end - s->p) >= l && memcmp(s->p, lit[i], l) == 0) {
            s->p += l;
            return 0;
        }
    }
    return parse_number(s, &d);
}

static int parse_fixture(scan *s, fixture *f)
{
    memset(f, 0, sizeof *f);
    f->tol = -1;
    f->argmax_min = -1;
    if (!eat(s, '{'))
        return -1;
    if (eat(s, '}'))
        return -1;
    do {
        char key[64];
        double v;
        if (parse_string(s, key, sizeof key) != 0 || !eat(s, ':'))
            return -1;
        if (strcmp(key, "model") == 0) {
            if (parse_string(s, f->model, sizeof f->model) != 0)
                return -1;
        } else if (strcmp(key, "logits") == 0) {
            if (parse_string(s, f->logits, sizeof f->logits) != 0)
                return -1;
        } else if (strcmp(key, "prompt_ids") == 0) {
            if (!eat(s, '['))
                return -1;
            if (!eat(s, ']')) {
                do {
                    if (f->n_ids >= MAX_IDS || parse_number(s, &v) != 0 || v < 0 ||
                        v > INT32_MAX || v != floor(v))
                        return -1;
                    f->ids[f->n_ids++] = (int32_t)v;
                } while (eat(s, ','));
                if (!eat(s, ']'))
                    return -1;
            }
        } else if (strcmp(key, "n_vocab") == 0) {
            if (parse_number(s, &v) != 0 || v <= 0 || v > 1e7)
                return -1;
            f->n_vocab = (long)v;
        } else if (strcmp(key, "tol") == 0) {
            if (parse_number(s, &f->tol) != 0)
                return -1;
        } else if (strcmp(key, "argmax_min") == 0) {
            if (parse_number(s, &f->argmax_min) != 0)
                return -1;
        } else if (skip_value(s, 0) != 0) {
            return -1;
        }
    } while (eat(s, ','));
    if (!eat(s, '}'))
        return -1;
    /* Every field the test needs must be there and sane. */
    if (!f->model[0] || !f->logits[0] || f->n_ids == 0 || f->n_vocab == 0 || f->tol <= 0 ||
        f->argmax_min < 0 || f->argmax_min > 1 || strchr(f->model, '/') || strchr(f->logits, '/'))
        return -1;
    return 0;
}

/* Returns the number of fixtures read, or -1 on a malformed manifest. */
static int parse_manifest(const char *text, size_t len, fixture *out, int cap)
{
    scan s = {text, text + len};
    int n = 0;
    if (!eat(&s, '['))
        return -1;
    if (eat(&s, ']'))
        return 0;
    do {
        if (n >= cap || parse_fixture(&s, &out[n]) != 0)
            return -1;
        n++;
    } while (eat(&s, ','));
    if (!eat(&s, ']'))
        return -1;
    skip_ws(&s);
    return s.p == s.end ? n : -1;
}

/* ---- the comparisons ---- */

static void fixture_path(const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", g_models_dir, name);
}

/* Reads a float32 logits file of exactly n values. */
static float *read_logits(const char *name, size_t n)
{
    char path[512];
    fixture_path(name, path, sizeof path);
    size_t size = 0;
    float *data = exsa_test_read_file(path, &size);
    if (!data)
        fail_msg("cannot read %s", path);
    if (size != n * sizeof(float))
        fail_msg("%s has %zu bytes, expected %zu", path, size, n * sizeof(float));
    return data;
}

static int argmax_matches(const float *a, const float *b, int n_rows, int n_vocab)
{
    int k = 0;
    for (int i = 0; i < n_rows; i++)
        k += exsa_ref_argmax_f(a + (size_t)i * n_vocab, n_vocab) ==
             exsa_ref_argmax_f(b + (size_t)i * n_vocab, n_vocab);
    return k;
}

static int argmax_matches_d(const double *a, const float *b, int n_rows, int n_vocab)
{
    int k = 0;
    for (int i = 0; i < n_rows; i++)
        k += exsa_ref_argmax_d(a + (size_t)i * n_vocab, n_vocab) ==
             exsa_ref_argmax_f(b + (size_t)i * n_vocab, n_vocab);
    return k;
}

static int is_f32_model(const exsa_model *m)
{
    const exsa_gguf *g = exsa_model_gguf(m);
    for (int64_t i = 0; i < exsa_gguf_n_tensors(g); i++)
        if (exsa_gguf_tensor_at(g, i)->type != EXSA_TYPE_F32)
            return 0;
    return 1;
}

static void test_fixture(void **state)
{
    const fixture *f = *state;
    char path[512];
    fixture_path(f->model, path, sizeof path);
    exsa_err err = {0};
    exsa_model *m = exsa_model_load(path, &err);
    if (!m)
        fail_msg("load %s: %s", path, err.msg);
    const int V = exsa_model_hparams(m)->n_vocab, n = f->n_ids;
    assert_int_equal(V, f->n_vocab);

    /* The engine, default context parameters (F16 KV) but small sizes. */
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    assert_int_equal(cp.kv_type, EXSA_TYPE_F16);
    cp.n_threads = N_THREADS;
    cp.n_ctx = n + 16;
    exsa_model_ctx *c = exsa_model_ctx_create(m, &cp, &err);
    if (!c)
        fail_msg("ctx: %s", err.msg);
    int32_t pos[MAX_IDS], seq[MAX_IDS];
    uint8_t want[MAX_IDS];
    for (int i = 0; i < n; i++) {
        pos[i] = i;
        seq[i] = 0;
        want[i] = 1;
    }
    float *mine = malloc((size_t)n * V * sizeof *mine);
    assert_non_null(mine);
    exsa_batch b = {.n = n, .token = (int32_t *)f->ids, .pos = pos, .seq = seq, .logits = want};
    int rc = exsa_model_forward(c, &b, mine, &err);
    if (rc != 0)
        fail_msg("forward: %s", err.msg);
    exsa_model_ctx_free(c);

    float *theirs = read_logits(f->logits, (size_t)n * V);
    double rel = exsa_test_rel_l2(mine, theirs, (size_t)n * V);
    int am = argmax_matches(mine, theirs, n, V);
    printf("FIXERR %s rel_l2=%.3e argmax_match=%d/%d tol=%g\n", f->model, rel, am, n, f->tol);

    /* The reference, exact and with activation rounding. */
    char msg[256];
    exsa_ref_model *r = exsa_ref_load(path, msg, sizeof msg);
    if (!r)
        fail_msg("%s", msg);
    double *ref = malloc((size_t)n * V * sizeof *ref);
    assert_non_null(ref);
    assert_int_equal(exsa_ref_forward(r, f->ids, n, ref), 0);
    double ref_rel = 0;
    {
        double num = 0, den = 0;
        for (size_t i = 0; i < (size_t)n * V; i++) {
            double d = ref[i] - theirs[i];
            num += d * d;
            den += (double)theirs[i] * theirs[i];
        }
        ref_rel = sqrt(num / den);
    }
    int ref_am = argmax_matches_d(ref, theirs, n, V);
    const int f32 = is_f32_model(m);
    printf("FIXREF %s ref=exact rel_l2=%.3e argmax_match=%d/%d\n", f->model, ref_rel, ref_am, n);
    double self = exsa_ref_rel_l2(mine, ref, (size_t)n * V);
    printf("FIXSELF %s engine-vs-ref(exact) rel_l2=%.3e\n", f->model, self);
    if (!f32) {
        exsa_ref_set_act_quant(r, 1);
        assert_int_equal(exsa_ref_forward(r, f->ids, n, ref), 0);
        double self_aq = exsa_ref_rel_l2(mine, ref, (size_t)n * V);
        double num = 0, den = 0;
        for (size_t i = 0; i < (size_t)n * V; i++) {
            double d = ref[i] - theirs[i];
            num += d * d;
            den += (double)theirs[i] * theirs[i];
        }
        printf("FIXREF %s ref=act-quant rel_l2=%.3e\n", f->model, sqrt(num / den));
        printf("FIXSELF %s engine-vs-ref(act-quant) rel_l2=%.3e\n", f->model, self_aq);
    }

    /* For scale: the quantized model against llama.cpp's unquantized one. */
    const char *dash = strrchr(f->model, '-');
    if (!f32 && dash) {
        char fname[160], p2[512];
        snprintf(fname, sizeof fname, "%.*s-f32.logits.f32", (int)(dash - f->model), f->model);
        fixture_path(fname, p2, sizeof p2);
        size_t size = 0;
        float *full = exsa_test_read_file(p2, &size);
        if (full && size == (size_t)n * V * sizeof(float))
            printf("FIXQERR %s vs %s: exsa %.3e, llama.cpp %.3e\n", f->model, fname,
                   exsa_test_rel_l2(mine, full, (size_t)n * V),
                   exsa_test_rel_l2(theirs, full, (size_t)n * V));
        free(full);
    }

    if (f32) {
        /* The engine, and the reference itself, within the manifest's
         * tolerance of llama.cpp; the engine within F16-KV error of the
         * exact reference (as in test_model.c). */
        assert_true(rel <= f->tol);
        assert_true(ref_rel <= f->tol);
        assert_true(ref_am >= (int)ceil(f->argmax_min * n - 1e-9));
        assert_true(self < 2e-3);
    } else {
        /* Quantized weights: llama.cpp and Exsa both quantize activations
         * to Q8 blocks, and any rounding difference flips some of those
         * roundings, which decorrelates the activation quantization noise:
         * the exact reference is therefore ~1.8e-2 from llama.cpp (FIXREF).
         * The engine's F16-KV attention rounds as llama.cpp's does
         * (cpu_attention.c), so it must meet the manifest tolerance. */
        assert_true(rel <= f->tol);
        /* README: tol is 1/4 of the format's own quantization error; the
         * reference and the engine must be well inside that error. */
        assert_true(ref_rel <= 4 * f->tol);
        assert_true(self <= 4 * f->tol);
        assert_true(ref_am >= (int)ceil(f->argmax_min * n - 1e-9));
    }
    assert_true(am >= (int)ceil(f->argmax_min * n - 1e-9));

    free(ref);
    exsa_ref_free(r);
    free(theirs);
    free(mine);
    exsa_model_free(m);
}

static void test_manifest_scanner(void **state)
{
    (void)state;
    fixture f[2];
    const char *ok = " [ {\"model\": \"a.gguf\", \"prompt_ids\": [1, 2 ,3], \"extra\": {\"x\": "
                     "[true, null, -1.5e3]}, \"logits\": \"a.f32\", \"n_vocab\": 10, \"tol\": "
                     "0.002, \"argmax_min\": 1.0} ] ";
    assert_int_equal(parse_manifest(ok, strlen(ok), f, 2), 1);
    assert_string_equal(f[0].model, "a.gguf");
    assert_int_equal(f[0].n_ids, 3);
    assert_int_equal(f[0].ids[2], 3);
    assert_int_equal(f[0].n_vocab, 10);
    const char *bad[] = {
        "", "[", "[{}]", "[{\"model\": \"a\"}]",
        "[{\"model\": \"a.gguf\", \"prompt_ids\": [1.5], \"logits\": \"a\", \"n_vocab\": 1, "
        "\"tol\": 1, \"argmax_min\": 1}]",
        "[{\"model\": \"../a\", \"prompt_ids\": [1], \"logits\": \"a\", \"n_vocab\": 1, "
        "\"tol\": 1, \"argmax_min\": 1}]",
        "[{\"model\": \"a\", \"prompt_ids\": [1], \"logits\": \"a\", \"n_vocab\": 1, "
        "\"tol\": 1, \"argmax_min\": 1}] x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(parse_manifest(bad[i], strlen(bad[i]), f, 2), -1);
}

int main(void)
{
    const char *dir = exsa_test_fixtures_dir();
    if (!dir) {
        printf("fixtures directory (../shared/fixtures) not found: skipping\n");
        return 77;
    }
    static char models_dir[512];
    snprintf(models_dir, sizeof models_dir, "%s/models", dir);
    g_models_dir = models_dir;
    char mpath[600];
    snprintf(mpath, sizeof mpath, "%s/manifest.json", models_dir);
    size_t len = 0;
    char *text = exsa_test_read_file(mpath, &len);
    if (!text) {
        printf("%s not found: skipping\n", mpath);
        return 77;
    }
    static fixture fx[MAX_FIXTURES];
    int n = parse_manifest(text, len, fx, MAX_FIXTURES);
    free(text);
    if (n < 0) {
        fprintf(stderr, "%s: malformed manifest\n", mpath);
        return 1;
    }
    struct CMUnitTest tests[MAX_FIXTURES + 1];
    memset(tests, 0, sizeof tests);
    tests[0].name = "manifest_scanner";
    tests[0].test_func = test_manifest_scanner;
    for (int i = 0; i < n; i++) {
        tests[i + 1].name = fx[i].model;
        tests[i + 1].test_func = test_fixture;
        tests[i + 1].initial_state = &fx[i];
    }
    return _cmocka_run_group_tests("test_model_fixtures", tests, (size_t)n + 1, NULL, NULL);
}
