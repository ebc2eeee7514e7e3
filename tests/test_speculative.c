/* Speculative decoding: the n-gram index against hand-made sequences, and
 * the engine with speculation against the same engine without it. Both
 * proposers guess deterministically, and the engine samples each verified
 * row with the sampler state it would have had without guessing, so every
 * request must give the same tokens, text and finish as without
 * speculation: greedy and sampled (with penalties, truncations, mirostat),
 * alone and in mixed batches, with stop strings and max_tokens falling
 * inside an accepted run, with a grammar, under preemption; the pool is
 * full again after each. A two-sample chi-square test over disjoint seeds
 * checks that the first two sampled tokens have the distribution they have
 * without speculation. The draft model is the target itself (every greedy
 * guess right) or its Q4_0 copy (mostly right); a model of
 * another vocabulary is refused with the first difference named. */
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

#include "engine/speculative.h"
#include "exsa.h"
#include "model/model_gen.h"
#include "quant/quant.h"
#include "test_util.h"

#define VOCAB 300
#define MAX_OUT 256

static char g_dir[64], g_model[128], g_other[128], g_badvocab[128], g_gemma[128];
static const char *g_target = g_model; /* the model make_engine serves */

typedef struct result {
    int32_t tok[MAX_OUT];
    int n;
    char text[8192];
    size_t text_len;
    int finish;
    exsa_usage usage;
} result;

static int gen_model(const char *path, int vocab, uint64_t seed, const char *vocab_from,
                     const char *ftype)
{
    exsa_gen_params p;
    exsa_gen_params_default(&p);
    p.arch = "llama";
    p.n_embd = 64;
    p.n_layer = 2;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.n_ff = 128;
    p.n_vocab = vocab;
    p.n_ctx_train = 512;
    p.seed = seed;
    p.n_threads = 1;
    p.vocab_path = vocab_from;
    exsa_err err = {0};
    if (exsa_ftype_parse(ftype, &p.ftype, &err) || exsa_model_generate(path, &p, NULL, NULL, &err)) {
        fprintf(stderr, "generate: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/exsa_spec_XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_model, sizeof g_model, "%s/m.gguf", g_dir);
    snprintf(g_other, sizeof g_other, "%s/o.gguf", g_dir);
    snprintf(g_badvocab, sizeof g_badvocab, "%s/v.gguf", g_dir);
    snprintf(g_gemma, sizeof g_gemma, "%s/g.gguf", g_dir);
    {
        /* gemma3 with a 16-token window on 4 of 5 layers: guesses rolled
         * back across window boundaries */
        exsa_gen_params p;
        exsa_gen_params_default(&p);
        p.arch = "gemma3";
        p.n_embd = 64;
        p.n_layer = 5;
        p.n_head = 4;
        p.n_head_kv = 1;
        p.head_dim = 32;
        p.n_ff = 128;
        p.n_vocab = VOCAB;
        p.n_ctx_train = 512;
        p.n_swa = 16;
        p.swa_pattern = 3;
        p.seed = 11;
        p.n_threads = 1;
        exsa_err err = {0};
        if (exsa_ftype_parse("F32", &p.ftype, &err) ||
            exsa_model_generate(g_gemma, &p, NULL, NULL, &err)) {
            fprintf(stderr, "generate gemma3: %s\n", err.msg);
            return -1;
        }
    }
    /* the other draft: the target's weights in Q4_0 (a lower-bit copy, as
     * users pair them: mostly the same guesses, not always) */
    return gen_model(g_model, VOCAB, 7, NULL, "F32") ||
           gen_model(g_other, VOCAB, 7, g_model, "Q4_0") ||
           gen_model(g_badvocab, VOCAB + 200, 7, NULL, "F32");
}

static int teardown(void **state)
{
    (void)state;
    unlink(g_model);
    unlink(g_other);
    unlink(g_badvocab);
    unlink(g_gemma);
    rmdir(g_dir);
    return 0;
}

/* spec: 0 off, 1 n-gram, 2 draft = the target, 3 draft = another model. */
static exsa_engine *make_engine(int spec, int max_bs, int kv_tokens)
{
    exsa_engine_params p;
    exsa_engine_params_default(&p);
    p.model_path = g_target;
    p.n_threads = 1;
    p.n_ctx = 256;
    p.max_batch_size = max_bs;
    p.max_batch_tokens = 64;
    p.kv_tokens = kv_tokens;
    p.spec = spec != 0;
    p.spec_n_max = 6;
    p.spec_n_min = 1; /* guess whatever the cost model thinks: the path under test */
    p.spec_p_min = 0; /* the draft guesses whatever its confidence */
    p.spec_max_seqs = max_bs;
    if (spec == 2)
        p.draft_model_path = g_target;
    if (spec == 3)
        p.draft_model_path = g_other;
    exsa_err err = {0};
    exsa_engine *e = exsa_engine_create(&p, &err);
    if (!e)
        print_error("engine: %s\n", err.msg);
    assert_non_null(e);
    return e;
}

static void drain(exsa_request *r, result *out)
{
    memset(out, 0, sizeof *out);
    for (;;) {
        exsa_event ev;
        assert_int_equal(exsa_request_next(r, &ev, 30000), 0);
        assert_true(out->text_len + ev.text_len < sizeof out->text);
        memcpy(out->text + out->text_len, ev.text, ev.text_len);
        out->text_len += ev.text_len;
        if (ev.type == EXSA_EVENT_DONE) {
            out->finish = ev.finish;
            out->usage = ev.usage;
            return;
        }
        assert_true(out->n < MAX_OUT);
        out->tok[out->n++] = ev.token;
    }
}

static exsa_request *submit(exsa_engine *e, const exsa_request_params *rp)
{
    exsa_err err = {0};
    exsa_request *r = exsa_engine_submit(e, rp, &err);
    if (!r)
        print_error("submit: %s\n", err.msg);
    assert_non_null(r);
    return r;
}

static void run_one(exsa_engine *e, const exsa_request_params *rp, result *out)
{
    exsa_request *r = submit(e, rp);
    drain(r, out);
    exsa_request_free(r);
}

static void assert_pool_full(exsa_engine *e)
{
    exsa_engine_stats s;
    for (int i = 0; i < 200; i++) { /* the snapshot follows the last DONE */
        exsa_engine_stats_get(e, &s);
        if (s.running == 0 && s.queue_len == 0)
            break;
        usleep(1000);
    }
    assert_int_equal(s.running, 0);
    assert_int_equal(s.queue_len, 0);
    assert_int_equal(s.kv_blocks_free, s.kv_blocks_total - s.kv_blocks_cached);
}

static void assert_same(const result *a, const result *b, const char *what)
{
    if (a->n != b->n || memcmp(a->tok, b->tok, (size_t)a->n * sizeof a->tok[0]) ||
        a->finish != b->finish || a->text_len != b->text_len ||
        memcmp(a->text, b->text, a->text_len)) {
        print_error("%s: %d tokens (finish %d) with speculation, %d (finish %d) without\n", what,
                    a->n, a->finish, b->n, b->finish);
        for (int i = 0; i < a->n && i < b->n; i++)
            if (a->tok[i] != b->tok[i]) {
                print_error("  first difference at token %d: %d vs %d\n", i, a->tok[i],
                            b->tok[i]);
                break;
            }
        fail();
    }
    assert_int_equal(a->usage.generated_tokens, a->n);
    assert_true(a->usage.accepted_tokens <= a->usage.draft_tokens);
    assert_true(a->usage.accepted_tokens < a->n || a->n == 0);
}

/* ---- the n-gram index ---- */

static void test_ngram_propose(void **state)
{
    (void)state;
    exsa_err err = {0};
    exsa_ngram_index *ix = exsa_ngram_index_create(64, &err);
    assert_non_null(ix);
    int32_t out[8];
    /* 1 2 3 4 5 ... 9 1 2 3: the suffix "1 2 3" was followed by 4 5 6. */
    const int32_t a[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3};
    assert_int_equal(exsa_ngram_propose(ix, a, 12, out, 3), 3);
    assert_int_equal(out[0], 4);
    assert_int_equal(out[1], 5);
    assert_int_equal(out[2], 6);
    /* Appending keeps the index; the longest suffix wins: "8 7 2 3" was
     * followed by 9, "7 2 3" alone more recently by 4. */
    exsa_ngram_index_reset(ix);
    const int32_t b[] = {8, 7, 2, 3, 9, 9, 5, 7, 2, 3, 4, 1, 8, 7, 2, 3};
    assert_int_equal(exsa_ngram_propose(ix, b, 12, out, 2), 0); /* "3 4 1": never seen */
    assert_int_equal(exsa_ngram_propose(ix, b, 16, out, 2), 2);
    assert_int_equal(out[0], 9);
    assert_int_equal(out[1], 9);
    const int32_t b2[] = {6, 7, 2, 3, 9, 9, 5, 7, 2, 3, 4, 1, 8, 7, 2, 3};
    exsa_ngram_index_reset(ix);
    assert_int_equal(exsa_ngram_propose(ix, b2, 16, out, 2), 2);
    assert_int_equal(out[0], 4); /* the latest "7 2 3" */
    assert_int_equal(out[1], 1);
    /* A repeating pattern continues into its own guess. */
    exsa_ngram_index_reset(ix);
    const int32_t c[] = {5, 6, 5, 6, 5};
    assert_int_equal(exsa_ngram_propose(ix, c, 5, out, 6), 6);
    const int32_t want[] = {6, 5, 6, 5, 6, 5};
    assert_memory_equal(out, want, sizeof want);
    /* Nothing seen: no guess. Shorter n-grams than EXSA_NGRAM_MIN do not
     * count. */
    exsa_ngram_index_reset(ix);
    const int32_t d[] = {1, 2, 3, 4, 5, 2, 3};
    assert_int_equal(exsa_ngram_propose(ix, d, 7, out, 4), 0);
    exsa_ngram_index_free(ix);
    assert_null(exsa_ngram_index_create(0, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
}

/* ---- the engine ---- */

/* Prompts of several kinds: random, and repetitive (where the n-gram index
 * finds something to guess). */
#define N_PROMPT 6
static void prompt_for(int i, int32_t *p, int *n)
{
    uint64_t st = 1000 + (uint64_t)i;
    int len = 8 + 13 * i;
    for (int j = 0; j < len; j++)
        p[j] = (int32_t)(exsa_test_rand_u64(&st) % (VOCAB - 2));
    if (i % 2 == 1)
        for (int j = 12; j < len; j++)
            p[j] = p[j % 12]; /* a 12-token phrase, repeated */
    *n = len;
}

static void params(exsa_request_params *rp, const int32_t *p, int n, int max_tokens)
{
    exsa_request_params_default(rp);
    rp->prompt_ids = p;
    rp->n_prompt_ids = n;
    rp->max_tokens = max_tokens;
    rp->sampling.temperature = 0;
    rp->ignore_eos = 1;
}

static void sampled(exsa_request_params *rp, int variant, uint64_t seed)
{
    exsa_sampling_params *s = &rp->sampling;
    s->seed = seed;
    s->temperature = 0.9f;
    if (variant == 0) {
        s->top_k = 20, s->top_p = 0.9f, s->min_p = 0.02f;
        s->repeat_penalty = 1.3f, s->presence_penalty = 0.2f, s->frequency_penalty = 0.1f;
    } else if (variant == 1) {
        s->top_k = 0, s->top_p = 1, s->min_p = 0, s->typical_p = 0.9f, s->tfs_z = 0.95f;
    } else {
        s->mirostat = 2;
        s->repeat_penalty = 1.1f;
    }
}

/* Every prompt, greedy and sampled, alone and all at once (every other
 * request with speculation turned off for itself): the same as without. */
static void same_as_without(int spec)
{
    enum { N = 2 * N_PROMPT };
    static int32_t prompts[N_PROMPT][128];
    static int lens[N_PROMPT];
    static result ref[N], got[N];
    exsa_request_params rp[N];
    for (int i = 0; i < N_PROMPT; i++)
        prompt_for(i, prompts[i], &lens[i]);
    for (int i = 0; i < N; i++) {
        params(&rp[i], prompts[i % N_PROMPT], lens[i % N_PROMPT], 40 + i);
        if (i >= N_PROMPT)
            sampled(&rp[i], i % 3, 77 + (uint64_t)i);
    }
    exsa_engine *plain = make_engine(0, 1, 0);
    for (int i = 0; i < N; i++)
        run_one(plain, &rp[i], &ref[i]);
    exsa_engine_free(plain);

    exsa_engine *e = make_engine(spec, 4, 0);
    long drafted = 0, accepted = 0, g_drafted = 0, g_accepted = 0;
    for (int i = 0; i < N; i++) {
        run_one(e, &rp[i], &got[i]);
        assert_same(&got[i], &ref[i], "alone");
        drafted += got[i].usage.draft_tokens;
        accepted += got[i].usage.accepted_tokens;
        if (i < N_PROMPT) { /* greedy */
            g_drafted += got[i].usage.draft_tokens;
            g_accepted += got[i].usage.accepted_tokens;
        }
    }
    assert_pool_full(e);
    /* Guesses were made and some kept: the test exercised speculation. */
    assert_true(drafted > 0);
    assert_true(accepted > 0);
    if (spec == 2) /* its own greedy guesses, on greedy requests */
        assert_true(g_accepted * 10 >= g_drafted * 9);
    print_message("  proposer %d: %ld of %ld guesses kept\n", spec, accepted, drafted);
    exsa_request *r[N];
    for (int i = 0; i < N; i++) {
        rp[i].spec = i % 2 ? 0 : -1;
        r[i] = submit(e, &rp[i]);
    }
    for (int i = 0; i < N; i++) {
        drain(r[i], &got[i]);
        exsa_request_free(r[i]);
        assert_same(&got[i], &ref[i], "in a mixed batch");
        if (i % 2)
            assert_int_equal(got[i].usage.draft_tokens, 0);
    }
    assert_pool_full(e);
    exsa_engine_stats st;
    exsa_engine_stats_get(e, &st);
    assert_true(st.spec_draft_tokens >= drafted);
    assert_true(st.spec_accepted_tokens >= accepted);
    exsa_engine_free(e);

    /* A pool so small that sequences preempt each other. */
    e = make_engine(spec, 4, 160);
    for (int i = 0; i < N; i++) {
        rp[i].spec = -1;
        r[i] = submit(e, &rp[i]);
    }
    for (int i = 0; i < N; i++) {
        drain(r[i], &got[i]);
        exsa_request_free(r[i]);
        assert_same(&got[i], &ref[i], "under preemption");
    }
    assert_pool_full(e);
    exsa_engine_stats_get(e, &st);
    assert_true(st.preemptions > 0);
    exsa_engine_free(e);
}

static void test_ngram_same_as_without(void **state)
{
    (void)state;
    same_as_without(1);
}

static void test_draft_self_same_as_without(void **state)
{
    (void)state;
    same_as_without(2);
}

static void test_draft_other_same_as_without(void **state)
{
    (void)state;
    same_as_without(3);
}

static void test_gemma3_window(void **state)
{
    (void)state;
    g_target = g_gemma;
    same_as_without(1);
    same_as_without(2);
    g_target = g_model;
}

/* Stop strings and max_tokens that end a request inside a run of kept
 * guesses (the draft is the target: every greedy guess is kept). */
static void test_stop_and_max_inside_a_run(void **state)
{
    (void)state;
    int32_t p[128];
    int n;
    prompt_for(1, p, &n);
    exsa_engine *plain = make_engine(0, 1, 0), *e = make_engine(2, 1, 0);
    exsa_request_params rp;
    result ref, got, full;
    params(&rp, p, n, 60);
    run_one(plain, &rp, &full);
    long kept = 0;
    for (int mt = 1; mt <= 14; mt++) {
        params(&rp, p, n, mt);
        run_one(plain, &rp, &ref);
        run_one(e, &rp, &got);
        assert_same(&got, &ref, "max_tokens");
        assert_int_equal(got.finish, EXSA_FINISH_LENGTH);
        kept += got.usage.accepted_tokens;
    }
    /* Stop at texts that first appear at several points of the output. */
    int stops = 0;
    for (int at = 3; at < full.n && at < 40; at += 5) {
        char stop[64];
        /* the text of tokens [at, at + 2) of the full output */
        int64_t k = exsa_engine_detokenize(plain, full.tok + at, 2, 0, stop, sizeof stop, NULL);
        if (k <= 0 || k >= (int64_t)sizeof stop)
            continue;
        stop[k] = 0;
        const char *stopv[1] = {stop};
        params(&rp, p, n, 60);
        rp.stop = stopv;
        rp.n_stop = 1;
        run_one(plain, &rp, &ref);
        run_one(e, &rp, &got);
        assert_same(&got, &ref, "stop string");
        stops += ref.finish == EXSA_FINISH_STOP;
        kept += got.usage.accepted_tokens;
    }
    assert_true(stops > 0);
    assert_true(kept > 0); /* the runs did end inside kept guesses' steps */
    assert_pool_full(e);
    exsa_engine_free(plain);
    exsa_engine_free(e);
}

/* A grammar masks every verified row with its state after the kept
 * guesses. */
static void test_grammar(void **state)
{
    (void)state;
    int32_t p[128];
    int n;
    prompt_for(3, p, &n);
    exsa_engine *plain = make_engine(0, 1, 0);
    for (int spec = 1; spec <= 2; spec++) {
        exsa_engine *e = make_engine(spec, 1, 0);
        long drafted = 0;
        for (int v = 0; v < 2; v++) {
            exsa_request_params rp;
            result ref, got;
            params(&rp, p, n, 40);
            rp.ignore_eos = 0;
            rp.grammar = v ? "root ::= ([a-m]+ \" \")+ \"z\"" : "root ::= [a-z ]+";
            if (v)
                sampled(&rp, 0, 5);
            run_one(plain, &rp, &ref);
            run_one(e, &rp, &got);
            assert_same(&got, &ref, "grammar");
            assert_true(ref.n > 0);
            drafted += got.usage.draft_tokens;
        }
        assert_true(drafted > 0); /* guessed rows were masked and verified */
        assert_pool_full(e);
        exsa_engine_free(e);
    }
    exsa_engine_free(plain);
}

/* Cancelled while guessing: the stream ends with cancel, the pool is full.
 * The engine is paused after the first token so that the cancel lands
 * mid-generation; should the request still finish first (a descheduled
 * test thread), the attempt is repeated. */
static void test_cancel(void **state)
{
    (void)state;
    int32_t p[128];
    int n;
    prompt_for(1, p, &n);
    for (int spec = 1; spec <= 2; spec++) {
        exsa_engine *e = make_engine(spec, 2, 0);
        int cancelled = 0;
        for (int attempt = 0; attempt < 3 && !cancelled; attempt++) {
            exsa_request_params rp;
            params(&rp, p, n, 200);
            exsa_request *r = submit(e, &rp), *r2 = submit(e, &rp);
            exsa_event ev;
            assert_int_equal(exsa_request_next(r, &ev, 30000), 0);
            exsa_engine_pause(e, 1);
            exsa_request_cancel(r);
            exsa_engine_pause(e, 0);
            int fin = -1, got = 1;
            while (exsa_request_next(r, &ev, 30000) == 0)
                if (ev.type == EXSA_EVENT_DONE)
                    fin = ev.finish;
                else
                    got++;
            if (fin == EXSA_FINISH_CANCEL) {
                assert_true(got < 200);
                cancelled = 1;
            } else {
                assert_int_equal(fin, EXSA_FINISH_LENGTH);
            }
            exsa_request_free(r);
            exsa_request_free(r2); /* cancels it too */
            assert_pool_full(e);
        }
        assert_true(cancelled);
        exsa_engine_free(e);
    }
}

/* Two-sample chi-square: the joint distribution of the first two sampled
 * tokens (the second one guessed) with speculation (seeds 1..N) against without (seeds N+1..2N).
 * With top-k 4 there are at most 16 outcomes. Critical value at p = 0.001
 * by Wilson-Hilferty. */
static void chi_square(int spec)
{
    enum { N = 1500, WAVE = 120 };
    int32_t p[64];
    for (int j = 0; j < 24; j++)
        p[j] = (int32_t)(j % 6 + 10); /* repetitive: n-gram guesses too */
    static int cnt[2][VOCAB * 4];
    memset(cnt, 0, sizeof cnt);
    exsa_engine *es[2] = {make_engine(spec, 16, 0), make_engine(0, 16, 0)};
    long drafted = 0;
    for (int side = 0; side < 2; side++) {
        for (int base = 0; base < N; base += WAVE) {
            exsa_request *r[WAVE];
            for (int i = 0; i < WAVE; i++) {
                exsa_request_params rp;
                params(&rp, p, 24, 3); /* 3: the second token can be guessed */
                rp.sampling.temperature = 1.5f;
                rp.sampling.top_k = 4;
                rp.sampling.top_p = 1;
                rp.sampling.min_p = 0;
                rp.sampling.repeat_penalty = 1.2f;
                rp.sampling.seed = (uint64_t)(side * N + base + i + 1);
                r[i] = submit(es[side], &rp);
            }
            for (int i = 0; i < WAVE; i++) {
                result got;
                drain(r[i], &got);
                exsa_request_free(r[i]);
                assert_int_equal(got.n, 3);
                drafted += got.usage.draft_tokens;
                /* both ids hashed into the table (a shared cell only
                 * merges outcomes, which the test allows) */
                int cell = (int)((got.tok[0] * 31 + got.tok[1]) % (VOCAB * 4));
                cnt[side][cell]++;
            }
        }
    }
    assert_true(drafted > 0);
    /* Outcomes seen fewer than 20 times share one cell (expected counts
     * of at least 10 a side keep the statistic near chi-square). */
    double chi = 0;
    int cells = 0, rare[2] = {0, 0};
    for (int c = 0; c <= VOCAB * 4; c++) {
        int a = c < VOCAB * 4 ? cnt[0][c] : rare[0], b = c < VOCAB * 4 ? cnt[1][c] : rare[1];
        if (a + b == 0)
            continue;
        if (c < VOCAB * 4 && a + b < 20) {
            rare[0] += a, rare[1] += b;
            continue;
        }
        double e = (a + b) / 2.0; /* equal sample sizes */
        chi += (a - e) * (a - e) / e + (b - e) * (b - e) / e;
        cells++;
    }
    int k = cells - 1;
    assert_true(k >= 3); /* the test has something to compare */
    double z = 3.09, a = 2.0 / (9.0 * k), crit = k * pow(1 - a + z * sqrt(a), 3);
    if (chi > crit)
        print_error("chi-square %.1f over %d cells > %.1f (p = 0.001)\n", chi, cells, crit);
    assert_true(chi <= crit);
    exsa_engine_free(es[0]);
    exsa_engine_free(es[1]);
}

static void test_chi_square_ngram(void **state)
{
    (void)state;
    chi_square(1);
}

static void test_chi_square_draft(void **state)
{
    (void)state;
    chi_square(2);
}

static void test_bad_draft_and_params(void **state)
{
    (void)state;
    exsa_engine_params p;
    exsa_engine_params_default(&p);
    p.model_path = g_model;
    p.n_threads = 1;
    p.n_ctx = 256;
    p.draft_model_path = g_badvocab;
    exsa_err err = {0};
    assert_null(exsa_engine_create(&p, &err));
    assert_non_null(strstr(err.msg, "draft model"));
    assert_non_null(strstr(err.msg, "vocabulary"));
    p.draft_model_path = "/nonexistent/draft.gguf";
    memset(&err, 0, sizeof err);
    assert_null(exsa_engine_create(&p, &err));
    assert_non_null(strstr(err.msg, "draft.gguf"));
    p.draft_model_path = NULL;
    p.spec_n_min = 20; /* above n_max */
    memset(&err, 0, sizeof err);
    assert_null(exsa_engine_create(&p, &err));
    assert_int_equal(err.code, EXSA_EINVAL);

    exsa_engine *e = make_engine(1, 1, 0);
    exsa_request_params rp;
    int32_t tok[4] = {1, 2, 3, 4};
    params(&rp, tok, 4, 4);
    rp.spec = 3;
    assert_null(exsa_engine_submit(e, &rp, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    params(&rp, tok, 4, 4);
    rp.spec_p_min = 2;
    assert_null(exsa_engine_submit(e, &rp, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    exsa_engine_free(e);
}

/* A real model on a copying task: the same tokens with n-gram guesses (and
 * with the model as its own draft), and guesses kept. */
static void test_smollm2_same_as_without(void **state)
{
    (void)state;
    const char *path = exsa_test_model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    if (!path) {
        print_message("SmolLM2-135M-Instruct.Q4_1.gguf not fetched: skipped\n");
        skip();
    }
    static char model[1024];
    snprintf(model, sizeof model, "%s", path);
    static const char *text =
        "<|im_start|>user\nRewrite this with the spelling fixed: The comittee met on tuesday to "
        "dicuss the new budjet. Several members argued that the proposal was to expensive, "
        "while others beleived it was neccessary for the future of the town.<|im_end|>\n"
        "<|im_start|>assistant\n";
    result ref, got;
    for (int spec = 0; spec <= 2; spec++) {
        exsa_engine_params p;
        exsa_engine_params_default(&p);
        p.model_path = model;
        p.n_threads = 2;
        p.n_ctx = 512;
        p.max_batch_size = 2;
        p.spec = spec != 0;
        p.spec_n_min = 1;
        p.spec_p_min = 0;
        if (spec == 2)
            p.draft_model_path = model;
        exsa_err err = {0};
        exsa_engine *e = exsa_engine_create(&p, &err);
        if (!e)
            print_error("engine: %s\n", err.msg);
        assert_non_null(e);
        exsa_request_params rp;
        exsa_request_params_default(&rp);
        rp.prompt_text = text;
        rp.parse_special = 1;
        rp.max_tokens = 60;
        rp.sampling.temperature = 0;
        run_one(e, &rp, spec ? &got : &ref);
        if (spec == 0) {
            /* its own answer as the predicted output: most of it is kept */
            static char pred[8192];
            memcpy(pred, ref.text, ref.text_len);
            pred[ref.text_len] = 0;
            rp.prediction = pred;
            rp.spec_n_min = 4; /* at least 4 guesses a step, whatever the timings say */
            run_one(e, &rp, &got);
            rp.spec_n_min = -1;
            assert_same(&got, &ref, "SmolLM2, its answer as prediction");
            print_message("  SmolLM2 prediction: %d of %d guesses kept, %d tokens\n",
                          got.usage.accepted_tokens, got.usage.draft_tokens, got.n);
            assert_true(got.usage.accepted_tokens * 10 >= got.n * 7);
        }
        if (spec) {
            assert_same(&got, &ref, spec == 1 ? "SmolLM2, n-gram" : "SmolLM2, self draft");
            assert_true(got.usage.accepted_tokens > 0);
            print_message("  SmolLM2 proposer %d: %d of %d guesses kept, %d tokens\n", spec,
                          got.usage.accepted_tokens, got.usage.draft_tokens, got.n);
        }
        assert_pool_full(e);
        exsa_engine_free(e);
    }
}

/* OpenAI's predicted outputs: the reference output itself, a wrong one and
 * an empty one all give the same tokens as without (on an engine whose
 * requests do not speculate otherwise). A random model's output text does
 * not tokenize back to the same ids, so how much is kept is checked on
 * SmolLM2 below. */
static void test_prediction(void **state)
{
    (void)state;
    int32_t p[128];
    int n;
    prompt_for(2, p, &n);
    exsa_engine *e = make_engine(0, 2, 0);
    exsa_request_params rp;
    result ref, got;
    params(&rp, p, n, 50);
    run_one(e, &rp, &ref);
    assert_int_equal(ref.usage.draft_tokens, 0);
    assert_true(ref.text_len > 20);
    static char pred[8192];
    memcpy(pred, ref.text, ref.text_len);
    pred[ref.text_len] = 0;
    rp.prediction = pred;
    run_one(e, &rp, &got);
    assert_same(&got, &ref, "the right prediction");
    assert_true(got.usage.draft_tokens > 0);
    /* A wrong one (the right one shifted) and an empty one. */
    rp.prediction = pred + ref.text_len / 2;
    run_one(e, &rp, &got);
    assert_same(&got, &ref, "a wrong prediction");
    rp.prediction = "";
    run_one(e, &rp, &got);
    assert_same(&got, &ref, "an empty prediction");
    assert_int_equal(got.usage.draft_tokens, 0);
    /* Off when the request says so. */
    rp.prediction = pred;
    rp.spec = 0;
    run_one(e, &rp, &got);
    assert_same(&got, &ref, "a prediction with speculation off");
    assert_int_equal(got.usage.draft_tokens, 0);
    assert_pool_full(e);
    exsa_engine_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ngram_propose),
        cmocka_unit_test(test_ngram_same_as_without),
        cmocka_unit_test(test_draft_self_same_as_without),
        cmocka_unit_test(test_draft_other_same_as_without),
        cmocka_unit_test(test_gemma3_window),
        cmocka_unit_test(test_stop_and_max_inside_a_run),
        cmocka_unit_test(test_grammar),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_chi_square_ngram),
        cmocka_unit_test(test_chi_square_draft),
        cmocka_unit_test(test_bad_draft_and_params),
        cmocka_unit_test(test_prediction),
        cmocka_unit_test(test_smollm2_same_as_without),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
