/* Gemma 3 forward and the sliding-window KV group.
 *
 * - Random-weight gemma3 models (exsa_model_generate, F32 weights, a small
 *   sliding window, a layer pattern with global layers between window
 *   ones, head_dim != embd / heads, one kv head) against
 *   tests/helpers/ref_forward.c (naive double precision, full recompute,
 *   window masks of its own) over prompts several windows long: relative
 *   L2 of all logits, and greedy continuations.
 * - The window group against a context that keeps the window layers whole
 *   (swa_full): identical logits over chunked prefill and decode, while
 *   the group's blocks stay bounded and all return when the sequence is
 *   freed; a rollback within the kept tokens gives the same logits again;
 *   one beyond them is refused (EXSA_EINVAL) instead of reading freed KV.
 * - Chunked prefill and several sequences in one batch against one pass.
 * - The serving engine (continuous batching, prompts chunked past the
 *   window, the same prompt twice so a prefix cache would be tried):
 *   greedy tokens equal a plain greedy loop on a swa_full context, and no
 *   prompt token is taken from a prefix cache.
 * - The real gemma-3-270m file when present: hyperparameters as llama.cpp
 *   reads them, KV size, and the window group against swa_full on a
 *   prompt longer than its 512-token window.
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
#include <unistd.h>

#include "exsa.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "quant/quant.h"
#include "ref_forward.h"
#include "test_util.h"

#define N_THREADS 2
#define WINDOW 20
#define N_PROMPT 90 /* > EXSA_ATTN_EXACT_CTX (the tiled path) and 4 windows */

static char g_dir[64];
static char g_path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/exsa_test_gemma3_XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_path, sizeof g_path, "%s/gemma3.gguf", g_dir);
    exsa_gen_params p;
    exsa_gen_params_default(&p);
    p.arch = "gemma3";
    p.n_embd = 64;
    p.n_layer = 5; /* pattern 3: layers 0, 1, 3, 4 windowed, 2 global */
    p.n_head = 4;
    p.n_head_kv = 1;
    p.head_dim = 32;
    p.n_ff = 128;
    p.n_vocab = 512;
    p.n_ctx_train = 512;
    p.n_swa = WINDOW;
    p.swa_pattern = 3;
    p.seed = 7;
    p.n_threads = N_THREADS;
    exsa_err err = {0};
    if (exsa_ftype_parse("F32", &p.ftype, &err) != 0 ||
        exsa_model_generate(g_path, &p, NULL, NULL, &err) != 0) {
        fprintf(stderr, "generate: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(g_path);
    rmdir(g_dir);
    return 0;
}

static exsa_model *load(const char *path)
{
    exsa_err err = {0};
    exsa_model *m = exsa_model_load(path, &err);
    if (!m)
        print_error("load %s: %s\n", path, err.msg);
    assert_non_null(m);
    return m;
}

static exsa_model_ctx *make_ctx(const exsa_model *m, int kv_type, int n_seq, int max_batch,
                                int n_ctx, int swa_full)
{
    exsa_model_ctx_params p;
    exsa_model_ctx_params_default(&p);
    p.n_threads = N_THREADS;
    p.n_ctx = n_ctx;
    p.n_seq = n_seq;
    p.max_batch = max_batch;
    p.kv_type = kv_type;
    p.swa_full = swa_full;
    exsa_err err = {0};
    exsa_model_ctx *c = exsa_model_ctx_create(m, &p, &err);
    if (!c)
        print_error("ctx: %s\n", err.msg);
    assert_non_null(c);
    return c;
}

static void random_tokens(uint64_t *rng, int32_t *tok, int n, int n_vocab)
{
    for (int i = 0; i < n; i++)
        tok[i] = (int32_t)(exsa_test_rand_u64(rng) % (uint64_t)n_vocab);
}

/* Rows (tok[i], pos0 + i) of seq in one call; logits of every row into out
 * when non-NULL. Returns the forward's code. */
static int forward_rows(exsa_model_ctx *c, int seq, const int32_t *tok, int n, int pos0,
                        float *out)
{
    int32_t *pos = calloc((size_t)n, sizeof *pos), *sq = calloc((size_t)n, sizeof *sq);
    uint8_t *want = calloc((size_t)n, 1);
    assert_true(pos && sq && want);
    for (int i = 0; i < n; i++) {
        pos[i] = pos0 + i;
        sq[i] = seq;
        want[i] = out != NULL;
    }
    exsa_batch b = {.n = n, .token = (int32_t *)tok, .pos = pos, .seq = sq, .logits = want};
    exsa_err err = {0};
    int rc = exsa_model_forward(c, &b, out, &err);
    free(pos);
    free(sq);
    free(want);
    return rc;
}

/* tok[0..n) of seq from pos0 in chunks cycling through sizes[]. */
static void forward_chunked(exsa_model_ctx *c, int seq, const int32_t *tok, int n, int pos0,
                            const int *sizes, int n_sizes, int n_vocab, float *out)
{
    for (int done = 0, k = 0; done < n; k++) {
        int len = sizes[k % n_sizes] < n - done ? sizes[k % n_sizes] : n - done;
        assert_int_equal(forward_rows(c, seq, tok + done, len, pos0 + done,
                                      out ? out + (size_t)done * n_vocab : NULL),
                         0);
        done += len;
    }
}

static double max_rel_diff(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* ---- against the double-precision reference ---- */

static void check_vs_ref(int kv_type, double tol)
{
    exsa_model *m = load(g_path);
    const exsa_hparams *hp = exsa_model_hparams(m);
    assert_int_equal(hp->n_swa, WINDOW);
    for (int l = 0; l < hp->n_layer; l++)
        assert_int_equal(hp->layer[l].kind,
                         l % 3 < 2 ? EXSA_LAYER_ATTN_SWA : EXSA_LAYER_ATTN);
    char msg[256];
    exsa_ref_model *r = exsa_ref_load(g_path, msg, sizeof msg);
    if (!r)
        print_error("%s\n", msg);
    assert_non_null(r);
    const int V = hp->n_vocab, n = N_PROMPT, n_gen = 8;
    int32_t seq[N_PROMPT + 8];
    uint64_t rng = 0x9e3a;
    random_tokens(&rng, seq, n, V);
    double *ref = malloc((size_t)n * V * sizeof *ref);
    float *got = malloc((size_t)n * V * sizeof *got);
    assert_true(ref && got);
    assert_int_equal(exsa_ref_forward(r, seq, n, ref), 0);

    /* max_batch 16 < the prompt: chunks, and the window group returns
     * blocks as the prompt advances */
    exsa_model_ctx *c = make_ctx(m, kv_type, 1, 16, 256, 0);
    const int sizes[] = {16, 7, 1, 13};
    forward_chunked(c, 0, seq, n, 0, sizes, 4, V, got);
    double e = exsa_ref_rel_l2(got, ref, (size_t)n * V);
    print_message("REFERR gemma3 F32 weights kv %s window %d: %.3g (bound %.0e)\n",
                  kv_type == EXSA_TYPE_F32 ? "F32" : "F16", WINDOW, e, tol);
    assert_true(e < tol);

    /* greedy continuation: engine decode rows against the reference's
     * full recompute (a near-tie in the reference is only reported) */
    int32_t gen_ref[N_PROMPT + 8];
    memcpy(gen_ref, seq, (size_t)n * sizeof *seq);
    assert_int_equal(exsa_ref_greedy(r, gen_ref, n, n_gen), 0);
    float *last = got + (size_t)(n - 1) * V;
    for (int i = 0; i < n_gen; i++) {
        int32_t t = (int32_t)exsa_ref_argmax_f(last, V);
        if (t != gen_ref[n + i]) {
            print_message("greedy step %d: engine %d, reference %d\n", i, t, gen_ref[n + i]);
            fail();
        }
        assert_int_equal(forward_rows(c, 0, &t, 1, n + i, last), 0);
    }
    exsa_model_ctx_free(c);
    free(ref);
    free(got);
    exsa_ref_free(r);
    exsa_model_free(m);
}

static void test_vs_ref_f32_kv(void **state)
{
    (void)state;
    check_vs_ref(EXSA_TYPE_F32, 1e-5);
}

static void test_vs_ref_f16_kv(void **state)
{
    (void)state;
    check_vs_ref(EXSA_TYPE_F16, 2e-3);
}

/* ---- the window group ---- */

static void test_window_group_vs_full(void **state)
{
    (void)state;
    exsa_model *m = load(g_path);
    const int V = exsa_model_hparams(m)->n_vocab, n = 150, n_dec = 20, B = 8, bs = 16;
    exsa_model_ctx *cw = make_ctx(m, EXSA_TYPE_F16, 2, B, 256, 0);
    exsa_model_ctx *cf = make_ctx(m, EXSA_TYPE_F16, 2, B, 256, 1);
    exsa_kv_cache *kw = exsa_model_ctx_kv(cw);
    assert_true(exsa_kv_has_swa(kw));
    assert_false(exsa_kv_has_swa(exsa_model_ctx_kv(cf)));
    const int pool = exsa_kv_swa_n_free_blocks(kw);
    /* n_seq * (ceil((window + max_batch) / 16) + 1) */
    assert_int_equal(pool, 2 * ((WINDOW + B + bs - 1) / bs + 1));
    const exsa_kv_params *kp = exsa_kv_cache_params(kw);
    const exsa_kv_params *kpf = exsa_kv_cache_params(exsa_model_ctx_kv(cf));
    assert_true(exsa_kv_cache_bytes(kp) < exsa_kv_cache_bytes(kpf));

    int32_t tok[170];
    uint64_t rng = 0x51de;
    random_tokens(&rng, tok, n + n_dec, V);
    float *lw = malloc((size_t)(n + n_dec) * V * sizeof *lw);
    float *lf = malloc((size_t)(n + n_dec) * V * sizeof *lf);
    assert_true(lw && lf);
    const int sizes[] = {8, 3, 5, 1};
    int max_held = 0;
    for (int done = 0, k = 0; done < n + n_dec; k++) {
        int len = done >= n ? 1 : sizes[k % 4] < n - done ? sizes[k % 4] : n - done;
        assert_int_equal(forward_rows(cw, 1, tok + done, len, done, lw + (size_t)done * V), 0);
        assert_int_equal(forward_rows(cf, 1, tok + done, len, done, lf + (size_t)done * V), 0);
        int held = exsa_kv_swa_seq_blocks(kw, 1);
        max_held = held > max_held ? held : max_held;
        done += len;
    }
    /* identical logits: the same arithmetic through other blocks */
    assert_memory_equal(lw, lf, (size_t)(n + n_dec) * V * sizeof *lw);
    /* bounded, and older blocks went back: 170 tokens would be 11 blocks */
    print_message("window group: at most %d blocks held (of %d), 170 tokens\n", max_held, pool);
    assert_true(max_held <= (WINDOW + B + bs - 1) / bs + 1);
    assert_int_equal(exsa_kv_swa_n_free_blocks(kw), pool - exsa_kv_swa_seq_blocks(kw, 1));

    /* rollback within the kept tokens: the same logits again */
    const int back = n + n_dec - 5;
    exsa_kv_seq_truncate(kw, 1, back);
    exsa_kv_seq_truncate(exsa_model_ctx_kv(cf), 1, back);
    assert_true(exsa_kv_seq_resumable(kw, 1, back));
    float *again = malloc((size_t)8 * V * sizeof *again);
    assert_non_null(again);
    assert_int_equal(forward_rows(cw, 1, tok + back, 5, back, again), 0);
    assert_memory_equal(again, lf + (size_t)back * V, (size_t)5 * V * sizeof *again);

    /* rollback past them: refused, nothing read from freed blocks */
    exsa_kv_seq_truncate(kw, 1, 60);
    assert_false(exsa_kv_seq_resumable(kw, 1, 60));
    int32_t one = tok[60];
    assert_int_equal(forward_rows(cw, 1, &one, 1, 60, again), EXSA_EINVAL);
    /* and prefix attachment is refused for such a cache */
    int32_t blocks[1] = {0};
    exsa_err err = {0};
    assert_int_equal(exsa_kv_seq_attach(kw, 0, blocks, 1, &err), EXSA_EUNSUPPORTED);

    /* freeing the sequence returns every window block */
    exsa_kv_seq_free(kw, 1);
    assert_int_equal(exsa_kv_swa_n_free_blocks(kw), pool);
    assert_int_equal(exsa_kv_swa_seq_blocks(kw, 1), 0);
    /* and it starts over cleanly */
    assert_int_equal(forward_rows(cw, 1, tok, 8, 0, again), 0);
    assert_memory_equal(again, lf, (size_t)8 * V * sizeof *again);

    free(again);
    free(lw);
    free(lf);
    exsa_model_ctx_free(cw);
    exsa_model_ctx_free(cf);
    exsa_model_free(m);
}

/* Chunked prefill and batches mixing sequences at other positions give
 * the logits of one pass per sequence. */
static void test_batch_invariance(void **state)
{
    (void)state;
    exsa_model *m = load(g_path);
    const int V = exsa_model_hparams(m)->n_vocab, n = 70;
    int32_t tok[3][70];
    uint64_t rng = 0xba7c;
    for (int s = 0; s < 3; s++)
        random_tokens(&rng, tok[s], n, V);
    float *alone = malloc((size_t)3 * n * V * sizeof *alone);
    float *mixed = malloc((size_t)3 * n * V * sizeof *mixed);
    assert_true(alone && mixed);
    exsa_model_ctx *c1 = make_ctx(m, EXSA_TYPE_F16, 3, 128, 128, 0);
    for (int s = 0; s < 3; s++)
        assert_int_equal(forward_rows(c1, s, tok[s], n, 0, alone + (size_t)s * n * V), 0);

    /* one batch carries a chunk of seq 0, single rows of seq 1, a chunk of
     * seq 2, at different positions each step */
    exsa_model_ctx *c2 = make_ctx(m, EXSA_TYPE_F16, 3, 32, 128, 0);
    int done[3] = {0, 0, 0};
    const int step[3] = {9, 1, 5};
    int32_t bt[32], bp[32], bs[32];
    uint8_t bl[32];
    int32_t where[32];
    float *out = malloc((size_t)32 * V * sizeof *out);
    assert_non_null(out);
    while (done[0] < n || done[1] < n || done[2] < n) {
        int k = 0;
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < step[s] + (done[0] > 30 && s == 1) && done[s] < n; i++) {
                bt[k] = tok[s][done[s]];
                bp[k] = done[s];
                bs[k] = s;
                bl[k] = 1;
                where[k] = s * n + done[s];
                done[s]++;
                k++;
            }
        exsa_batch b = {.n = k, .token = bt, .pos = bp, .seq = bs, .logits = bl};
        exsa_err err = {0};
        assert_int_equal(exsa_model_forward(c2, &b, out, &err), 0);
        for (int i = 0; i < k; i++)
            memcpy(mixed + (size_t)where[i] * V, out + (size_t)i * V, (size_t)V * sizeof *out);
    }
    for (int s = 0; s < 3; s++) {
        double e = max_rel_diff(mixed + (size_t)s * n * V, alone + (size_t)s * n * V,
                                (size_t)n * V);
        print_message("seq %d batched vs alone: rel L2 %.3g\n", s, e);
        assert_true(e < 1e-6);
    }
    free(out);
    free(alone);
    free(mixed);
    exsa_model_ctx_free(c1);
    exsa_model_ctx_free(c2);
    exsa_model_free(m);
}

/* ---- the engine ---- */

#define E_PROMPT 60
#define E_GEN 30

static void greedy_direct(const exsa_model *m, const int32_t *prompt, int32_t *out)
{
    const int V = exsa_model_hparams(m)->n_vocab;
    exsa_model_ctx *c = make_ctx(m, EXSA_TYPE_F16, 1, 64, 256, 1);
    float *lg = malloc((size_t)E_PROMPT * V * sizeof *lg);
    assert_non_null(lg);
    assert_int_equal(forward_rows(c, 0, prompt, E_PROMPT, 0, lg), 0);
    float *last = lg + (size_t)(E_PROMPT - 1) * V;
    for (int i = 0; i < E_GEN; i++) {
        out[i] = (int32_t)exsa_ref_argmax_f(last, V);
        if (i + 1 < E_GEN)
            assert_int_equal(forward_rows(c, 0, &out[i], 1, E_PROMPT + i, last), 0);
    }
    free(lg);
    exsa_model_ctx_free(c);
}

static void test_engine(void **state)
{
    (void)state;
    exsa_model *m = load(g_path);
    const int V = exsa_model_hparams(m)->n_vocab;
    int32_t prompts[3][E_PROMPT], want[3][E_GEN];
    uint64_t rng = 0xe9e;
    for (int i = 0; i < 2; i++)
        random_tokens(&rng, prompts[i], E_PROMPT, V);
    memcpy(prompts[2], prompts[0], sizeof prompts[0]);
    for (int i = 0; i < 2; i++)
        greedy_direct(m, prompts[i], want[i]);
    memcpy(want[2], want[0], sizeof want[0]);
    exsa_model_free(m);

    exsa_engine_params ep;
    exsa_engine_params_default(&ep);
    ep.model_path = g_path;
    ep.n_threads = N_THREADS;
    ep.n_ctx = 256;
    ep.max_batch_tokens = 16;
    ep.max_batch_size = 2;
    ep.prefix_cache = 1;
    exsa_err err = {0};
    exsa_engine *e = exsa_engine_create(&ep, &err);
    if (!e)
        print_error("engine: %s\n", err.msg);
    assert_non_null(e);
    exsa_request *r[3];
    for (int i = 0; i < 3; i++) {
        exsa_request_params rp;
        exsa_request_params_default(&rp);
        rp.prompt_ids = prompts[i];
        rp.n_prompt_ids = E_PROMPT;
        rp.max_tokens = E_GEN;
        rp.sampling.temperature = 0;
        rp.ignore_eos = 1;
        r[i] = exsa_engine_submit(e, &rp, &err);
        if (!r[i])
            print_error("submit: %s\n", err.msg);
        assert_non_null(r[i]);
    }
    for (int i = 0; i < 3; i++) {
        int n = 0;
        for (;;) {
            exsa_event ev;
            assert_int_equal(exsa_request_next(r[i], &ev, 60000), 0);
            if (ev.type == EXSA_EVENT_DONE) {
                if (ev.finish != EXSA_FINISH_LENGTH)
                    print_error("request %d: finish %d %s\n", i, ev.finish, ev.error);
                assert_int_equal(ev.finish, EXSA_FINISH_LENGTH);
                assert_int_equal(ev.usage.cached_tokens, 0);
                break;
            }
            assert_true(n < E_GEN);
            if (ev.token != want[i][n])
                print_error("request %d token %d: %d, direct %d\n", i, n, ev.token,
                            want[i][n]);
            assert_int_equal(ev.token, want[i][n]);
            n++;
        }
        assert_int_equal(n, E_GEN);
        exsa_request_free(r[i]);
    }
    exsa_engine_free(e);
}

/* ---- the real model ---- */

static void test_real_model(void **state)
{
    (void)state;
    const char *path = exsa_test_model_path("gemma-3-270m-q4_k_m.gguf");
    if (!path)
        skip();
    exsa_model *m = load(path);
    const exsa_hparams *hp = exsa_model_hparams(m);
    assert_string_equal(hp->arch_name, "gemma3");
    assert_int_equal(hp->n_layer, 18);
    assert_int_equal(hp->n_embd, 640);
    assert_int_equal(hp->head_dim, 256);
    assert_int_equal(hp->n_head, 4);
    assert_int_equal(hp->n_head_kv, 1);
    assert_int_equal(hp->n_swa, 512);
    assert_true(fabsf(hp->attn_scale - 1.0f / 16.0f) < 1e-9f);
    assert_true(fabsf(hp->embd_scale - sqrtf(640.0f)) < 1e-4f);
    assert_true(hp->tied_output);
    for (int l = 0; l < 18; l++) {
        const int global = l % 6 == 5;
        assert_int_equal(hp->layer[l].kind, global ? EXSA_LAYER_ATTN : EXSA_LAYER_ATTN_SWA);
        assert_true(hp->layer[l].rope_freq_base == (global ? hp->rope_freq_base : 10000.0f));
    }
    /* KV of a 4096-token sequence: 3 global layers whole, 15 the window */
    const uint64_t row = 256 * 2; /* f16, one kv head */
    assert_int_equal(exsa_model_kv_bytes(m, 4096, EXSA_TYPE_F16),
                     row * 2 * (3 * 4096 + 15 * 512));

    /* 700 tokens (> the window) in chunks: the window group's logits are
     * those of a context keeping the window layers whole, and it holds
     * only window + batch tokens */
    const int V = hp->n_vocab, n = 700, B = 64;
    int32_t *tok = malloc((size_t)n * sizeof *tok);
    float *a = malloc((size_t)V * sizeof *a), *b = malloc((size_t)V * sizeof *b);
    assert_true(tok && a && b);
    uint64_t rng = 0x6e3;
    random_tokens(&rng, tok, n, 20000);
    exsa_model_ctx *cw = make_ctx(m, EXSA_TYPE_F16, 1, B, 1024, 0);
    exsa_model_ctx *cf = make_ctx(m, EXSA_TYPE_F16, 1, B, 1024, 1);
    const int sizes[] = {B};
    forward_chunked(cw, 0, tok, n - 1, 0, sizes, 1, V, NULL);
    forward_chunked(cf, 0, tok, n - 1, 0, sizes, 1, V, NULL);
    assert_int_equal(forward_rows(cw, 0, tok + n - 1, 1, n - 1, a), 0);
    assert_int_equal(forward_rows(cf, 0, tok + n - 1, 1, n - 1, b), 0);
    assert_memory_equal(a, b, (size_t)V * sizeof *a);
    const int held = exsa_kv_swa_seq_blocks(exsa_model_ctx_kv(cw), 0);
    print_message("gemma-3-270m: %d tokens, window layers hold %d blocks\n", n, held);
    assert_true(held <= (512 + B + 15) / 16 + 1 && held < (n + 15) / 16);
    exsa_model_ctx_free(cw);
    exsa_model_ctx_free(cf);
    free(tok);
    free(a);
    free(b);
    exsa_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vs_ref_f32_kv),
        cmocka_unit_test(test_vs_ref_f16_kv),
        cmocka_unit_test(test_window_group_vs_full),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_engine),
        cmocka_unit_test(test_real_model),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
