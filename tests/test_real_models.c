/* Real models (fetched by scripts/fetch-models.sh) against llama.cpp.
 *
 * tests/data/real/NAME.json holds what llama.cpp (CPU, f16 KV cache, 2
 * threads) computed on the same GGUF file: the logits of selected positions
 * of a ~600-token prompt (NAME.logits.f16, float16 [n_positions][n_vocab];
 * positions past 512 exercise Gemma 3's sliding window) and greedy
 * continuations (up to 64 tokens, ending early at end of generation) of ten
 * prompts, with the gap between the two largest logits at each step.
 *
 * Checks, per model:
 * - logits: relative L2 error over the stored positions within a quarter of
 *   the weight format's own quantization error (the fixtures' rule: Q4_1
 *   0.249, Q4_K_M 0.219), the same argmax at >= 80% of the positions (at
 *   least all but one) and any other argmax at a near-tie, and
 *   over the first 64 positions no further (x1.25) than llama.cpp from the
 *   exact logits of the double-precision reference (tests/helpers), where it
 *   knows the architecture;
 * - greedy: Exsa's tokens equal llama.cpp's, or the first divergence falls at
 *   a near-tie: llama.cpp's top-2 gap there below NEAR_TIE_SIGMAS times the
 *   engines' RMS logit difference (why, and not 1e-3: see its definition); Exsa's gap prints beside it.
 * Figures print as REALERR / REALGREEDY lines. A model not in the cache is
 * skipped (exit 77 when none is there); reference data that is missing is a
 * failure.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "quant/quant.h"
#include "ref_forward.h"
#include "test_util.h"

#ifndef EXSA_TEST_DATA
#define EXSA_TEST_DATA "tests/data"
#endif

#define MAX_MODELS 8
#define N_THREADS 2

typedef struct real_case {
    char json_path[512];
    char logits_path[512];
    const char *model_path;
    json_t *root;
    double noise; /* RMS of exsa - llama.cpp over the stored logits */
} real_case;

static real_case g_cases[MAX_MODELS];
static int g_n_cases;

static float half_to_float(uint16_t h)
{
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (e == 0) {
        float f = ldexpf((float)m, -24);
        return s ? -f : f;
    }
    if (e == 31)
        u = s | 0x7f800000u | (m << 13);
    else
        u = s | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int32_t *json_ids(const json_t *a, int *n)
{
    *n = (int)json_array_size(a);
    int32_t *ids = calloc((size_t)*n + 1, sizeof *ids);
    assert_non_null(ids);
    for (int i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return ids;
}

/* A quarter of the format's quantization error (fixtures/README.md). */
static double tolerance_for(const char *model)
{
    if (strstr(model, "Q4_1") || strstr(model, "q4_1"))
        return 0.249 / 4;
    if (strstr(model, "Q4_K_M") || strstr(model, "q4_k_m"))
        return 0.219 / 4;
    if (strstr(model, "Q8_0") || strstr(model, "q8_0"))
        return 2.7e-2 / 4;
    return 2e-3;
}

static exsa_model_ctx *make_ctx(const exsa_model *m, int n_ctx, int max_batch)
{
    exsa_model_ctx_params p;
    exsa_model_ctx_params_default(&p);
    p.n_threads = N_THREADS;
    p.n_ctx = n_ctx;
    p.n_seq = 1;
    p.max_batch = max_batch;
    p.kv_type = EXSA_TYPE_F16;
    exsa_err err = {0};
    exsa_model_ctx *c = exsa_model_ctx_create(m, &p, &err);
    if (!c)
        fail_msg("ctx: %s", err.msg);
    return c;
}

/* Runs ids[0..n) of sequence 0 from position pos0; logits of the rows
 * flagged in want (NULL: the last row only) go to out in row order. */
static void run_rows(exsa_model_ctx *c, const int32_t *ids, int n, int pos0, const uint8_t *want,
                     float *out)
{
    exsa_batch b = {.n = n};
    b.token = malloc((size_t)n * sizeof *b.token);
    b.pos = malloc((size_t)n * sizeof *b.pos);
    b.seq = calloc((size_t)n, sizeof *b.seq);
    b.logits = calloc((size_t)n, 1);
    assert_true(b.token && b.pos && b.seq && b.logits);
    for (int i = 0; i < n; i++) {
        b.token[i] = ids[i];
        b.pos[i] = pos0 + i;
        b.logits[i] = want ? want[i] : i == n - 1;
    }
    exsa_err err = {0};
    if (exsa_model_forward(c, &b, out, &err) != 0)
        fail_msg("forward: %s", err.msg);
    free(b.token);
    free(b.pos);
    free(b.seq);
    free(b.logits);
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* A near-tie: llama.cpp's gap between the two tokens below this many times
 * the RMS difference of the two engines' logits (measured per model on the
 * stored positions; a gap between two logits then moves by ~1.4 of it).
 * Both engines are ~4e-2 (relative L2) from the exact logits, and llama.cpp
 * moves by as much against itself (SmolLM2: flash attention off 3.8e-2; the
 * prompt one token at a time 4.7e-2, with an argmax flip), so a fixed gap of
 * 1e-3 would be too tight for llama.cpp to meet against itself. */
#define NEAR_TIE_SIGMAS 3.0

/* The double-precision reference (tests/helpers/ref_forward.c, exact math
 * on the file's dequantized weights) over the first EXACT_POSITIONS tokens:
 * Exsa must be about as close to it as llama.cpp is. */
#if defined(__SANITIZE_ADDRESS__)
#define EXACT_POSITIONS 8 /* the naive reference is slow under ASan */
#else
#define EXACT_POSITIONS 64
#endif
static void check_exact(real_case *rc, const int32_t *ids, int n_ids, const int32_t *pos,
                        int n_pos, const float *mine, const float *ref, int n_vocab,
                        const char *name)
{
    char msg[256];
    exsa_ref_model *r = exsa_ref_load(rc->model_path, msg, sizeof msg);
    if (!r) {
        printf("REALEXACT %s: no double-precision reference (%s)\n", name, msg);
        return;
    }
    int n = n_ids < EXACT_POSITIONS ? n_ids : EXACT_POSITIONS;
    double *exact = malloc((size_t)n * n_vocab * sizeof *exact);
    assert_non_null(exact);
    assert_int_equal(exsa_ref_forward(r, ids, n, exact), 0);
    double se_mine = 0, se_ref = 0, ss = 0;
    for (int i = 0; i < n_pos && pos[i] < n; i++) {
        const double *x = exact + (size_t)pos[i] * n_vocab;
        const float *a = mine + (size_t)i * n_vocab, *b = ref + (size_t)i * n_vocab;
        for (int j = 0; j < n_vocab; j++) {
            se_mine += (a[j] - x[j]) * (a[j] - x[j]);
            se_ref += (b[j] - x[j]) * (b[j] - x[j]);
            ss += x[j] * x[j];
        }
        printf("REALEXACT %s pos %d: exsa %.3e llama.cpp %.3e from the exact logits (argmax "
               "exact %d exsa %d llama.cpp %d)\n",
               name, pos[i], exsa_ref_rel_l2(a, x, (size_t)n_vocab),
               exsa_ref_rel_l2(b, x, (size_t)n_vocab), exsa_ref_argmax_d(x, n_vocab),
               exsa_ref_argmax_f(a, n_vocab), exsa_ref_argmax_f(b, n_vocab));
    }
    double e_mine = sqrt(se_mine / ss), e_ref = sqrt(se_ref / ss);
    printf("REALEXACT %s: positions < %d: exsa %.3e, llama.cpp %.3e from the exact logits\n",
           name, n, e_mine, e_ref);
    /* 1.5: llama.cpp itself moves by up to 1.37x on SmolLM2 between its own
     * configurations (the prompt one token at a time: 4.7e-2 against 3.4e-2,
     * bench/RESULTS.md 2026-12-07), and Exsa's kernels round differently per
     * ISA: AVX2 3.9e-2, scalar 4.3e-2, AVX-512 VNNI 5.0e-2 (1.45x), each
     * kernel bit-checked against its scalar reference. */
    assert_true(e_mine <= 1.5 * e_ref);
    free(exact);
    exsa_ref_free(r);
}

static void check_logits(real_case *rc, const exsa_model *m, const char *name, int n_vocab)
{
    const json_t *lg = json_object_get(rc->root, "logits");
    assert_non_null(lg);
    int n_ids, n_pos;
    int32_t *ids = json_ids(json_object_get(lg, "prompt_ids"), &n_ids);
    int32_t *pos = json_ids(json_object_get(lg, "positions"), &n_pos);
    size_t bytes = 0;
    uint16_t *ref16 = exsa_test_read_file(rc->logits_path, &bytes);
    if (!ref16)
        fail_msg("cannot read %s", rc->logits_path);
    assert_int_equal(bytes, (size_t)n_pos * n_vocab * 2);

    uint8_t *want = calloc((size_t)n_ids, 1);
    for (int i = 0; i < n_pos; i++) {
        assert_true(pos[i] >= 0 && pos[i] < n_ids);
        want[pos[i]] = 1;
    }
    /* Positions are stored ascending, as forward returns rows in order. */
    for (int i = 1; i < n_pos; i++)
        assert_true(pos[i] > pos[i - 1]);
    float *mine = malloc((size_t)n_pos * n_vocab * sizeof *mine);
    float *ref = malloc((size_t)n_pos * n_vocab * sizeof *ref);
    assert_true(mine && ref);
    for (size_t i = 0; i < (size_t)n_pos * n_vocab; i++)
        ref[i] = half_to_float(ref16[i]);

    exsa_model_ctx *c = make_ctx(m, n_ids + 16, n_ids);
    run_rows(c, ids, n_ids, 0, want, mine);
    exsa_model_ctx_free(c);

    check_exact(rc, ids, n_ids, pos, n_pos, mine, ref, n_vocab, name);
    double tol = tolerance_for(name);
    double err = exsa_test_rel_l2(mine, ref, (size_t)n_pos * n_vocab);
    double sq = 0;
    for (size_t i = 0; i < (size_t)n_pos * n_vocab; i++)
        sq += ((double)mine[i] - ref[i]) * ((double)mine[i] - ref[i]);
    rc->noise = sqrt(sq / ((double)n_pos * n_vocab));
    int same = 0;
    for (int i = 0; i < n_pos; i++) {
        const float *a = mine + (size_t)i * n_vocab, *r = ref + (size_t)i * n_vocab;
        double e = exsa_test_rel_l2(a, r, (size_t)n_vocab);
        int am = argmax(a, n_vocab), ar = argmax(r, n_vocab);
        same += am == ar;
        printf("REALERR %s pos %d rel_l2 %.3e argmax %d/%d", name, pos[i], e, am, ar);
        if (am != ar) {
            /* Another argmax only at a near-tie of llama.cpp's logits. */
            double g_ref = r[ar] - r[am], g_mine = a[am] - a[ar];
            printf(" (gap llama.cpp %.3g, exsa %.3g)", g_ref, g_mine);
            assert_true(g_ref < NEAR_TIE_SIGMAS * rc->noise);
        }
        printf("\n");
    }
    printf("REALERR %s all %d positions rel_l2 %.3e (tolerance %.3e) same argmax %d/%d, "
           "rms difference %.3g logits (near-tie bound %.3g)\n",
           name, n_pos, err, tol, same, n_pos, rc->noise, NEAR_TIE_SIGMAS * rc->noise);
    assert_true(err <= tol);
    /* Quantized: the fixtures' rule, the same argmax at >= 80% of positions
     * (both engines are ~4e-2 from the exact logits: near-ties move), or
     * with fewer positions stored, at most one flip, at a near-tie. */
    assert_true(same * 5 >= n_pos * 4 || same >= n_pos - 1);
    free(mine);
    free(ref);
    free(want);
    free(ref16);
    free(ids);
    free(pos);
}


static void check_greedy(real_case *rc, const exsa_model *m, const char *name, int n_vocab)
{
    const json_t *g = json_object_get(rc->root, "greedy");
    assert_true(json_is_array(g) && json_array_size(g) > 0);
    float *logits = malloc((size_t)n_vocab * sizeof *logits);
    assert_non_null(logits);
    int identical = 0, n_prompts = (int)json_array_size(g);
    for (int p = 0; p < n_prompts; p++) {
        const json_t *e = json_array_get(g, (size_t)p);
        int n_ids, n_tok, n_gap;
        int32_t *ids = json_ids(json_object_get(e, "prompt_ids"), &n_ids);
        int32_t *tok = json_ids(json_object_get(e, "tokens"), &n_tok);
        const json_t *gaps = json_object_get(e, "top2_gap");
        n_gap = (int)json_array_size(gaps);
        assert_int_equal(n_gap, n_tok);

        exsa_model_ctx *c = make_ctx(m, n_ids + n_tok + 16, n_ids);
        run_rows(c, ids, n_ids, 0, NULL, logits);
        int diverged = -1;
        for (int i = 0; i < n_tok; i++) {
            int t = argmax(logits, n_vocab);
            if (t != tok[i]) {
                diverged = i;
                double ref_gap = json_real_value(json_array_get(gaps, (size_t)i));
                printf("REALGREEDY %s prompt %d: first divergence at step %d (exsa %d, "
                       "llama.cpp %d; llama.cpp top-2 gap %.3g, exsa's gap between them %.3g)\n",
                       name, p, i, t, tok[i], ref_gap, logits[t] - logits[tok[i]]);
                assert_true(ref_gap < NEAR_TIE_SIGMAS * rc->noise);
                break;
            }
            if (i + 1 < n_tok)
                run_rows(c, &t, 1, n_ids + i, NULL, logits);
        }
        if (diverged < 0) {
            identical++;
            printf("REALGREEDY %s prompt %d: %d tokens identical\n", name, p, n_tok);
        }
        exsa_model_ctx_free(c);
        free(ids);
        free(tok);
    }
    printf("REALGREEDY %s: %d of %d continuations identical\n", name, identical, n_prompts);
    free(logits);
}

static void test_real_model(void **state)
{
    real_case *rc = *state;
    const char *name = json_string_value(json_object_get(rc->root, "model"));
    exsa_err err = {0};
    exsa_model *m = exsa_model_load(rc->model_path, &err);
    if (!m)
        fail_msg("%s: %s", rc->model_path, err.msg);
    int n_vocab = exsa_model_hparams(m)->n_vocab;
    assert_int_equal(n_vocab, (int)json_integer_value(json_object_get(rc->root, "n_vocab")));
    check_logits(rc, m, name, n_vocab);
    check_greedy(rc, m, name, n_vocab);
    exsa_model_free(m);
}

static int load_cases(void)
{
    const char *dir = EXSA_TEST_DATA "/real";
    DIR *d = opendir(dir);
    if (!d)
        fail_msg("cannot open %s", dir);
    struct dirent *de;
    while ((de = readdir(d)) && g_n_cases < MAX_MODELS) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".json") != 0)
            continue;
        real_case *rc = &g_cases[g_n_cases];
        snprintf(rc->json_path, sizeof rc->json_path, "%s/%s", dir, de->d_name);
        json_error_t je;
        rc->root = json_load_file(rc->json_path, 0, &je);
        if (!rc->root)
            fail_msg("%s:%d: %s", rc->json_path, je.line, je.text);
        const char *model = json_string_value(json_object_get(rc->root, "model"));
        const char *lf = json_string_value(
            json_object_get(json_object_get(rc->root, "logits"), "file"));
        if (!model || !lf)
            fail_msg("%s: no model or logits file", rc->json_path);
        snprintf(rc->logits_path, sizeof rc->logits_path, "%s/%s", dir, lf);
        rc->model_path = exsa_test_model_path(model);
        if (!rc->model_path) {
            printf("SKIP %s: model %s not in the cache (scripts/fetch-models.sh)\n",
                   de->d_name, model);
            json_decref(rc->root);
            continue;
        }
        rc->model_path = strdup(rc->model_path);
        g_n_cases++;
    }
    closedir(d);
    return g_n_cases;
}

int main(void)
{
    if (load_cases() == 0)
        return 77;
    struct CMUnitTest tests[MAX_MODELS];
    for (int i = 0; i < g_n_cases; i++) {
        tests[i] = (struct CMUnitTest){
            .name = g_cases[i].json_path, .test_func = test_real_model,
            .initial_state = &g_cases[i],
        };
    }
    int rc = _cmocka_run_group_tests("real_models", tests, (size_t)g_n_cases, NULL, NULL);
    for (int i = 0; i < g_n_cases; i++) {
        json_decref(g_cases[i].root);
        free((void *)g_cases[i].model_path);
    }
    return rc;
}
