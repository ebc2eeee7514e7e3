/* Serving engine: continuous batching must not change what a greedy request
 * generates. Each case runs a set of requests concurrently (submitted from
 * several threads, mixed prompt lengths, chunked prefill, tiny KV pools that
 * force preemption) and compares the token ids with the same requests run
 * one at a time on an engine with max_batch_size 1, and, for one request,
 * with a direct greedy loop over exsa_model_forward (no engine code). Also:
 * cancellation, queue full, requests that can never fit, stop strings,
 * max_tokens, and that every KV block is back in the pool (or held by the
 * prefix cache) at the end. A tiny random model is generated per run.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "exsa.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "test_util.h"
#include "util/timer.h"

#define N_REQ 6
#define GEN 20
#define MAX_OUT 512

static char g_dir[64];
static char g_model[128];
static int g_vocab = 300;

typedef struct result {
    int32_t tok[MAX_OUT];
    int n;
    char text[8192];
    size_t text_len;
    int finish;
    exsa_usage usage;
} result;

typedef struct req_spec {
    int32_t prompt[400];
    int n_prompt;
    int max_tokens;
} req_spec;

static req_spec g_specs[N_REQ];

static void make_specs(void)
{
    static const int lens[N_REQ] = {5, 150, 40, 3, 90, 60};
    uint64_t st = 1234;
    for (int i = 0; i < N_REQ; i++) {
        g_specs[i].n_prompt = lens[i];
        g_specs[i].max_tokens = GEN + i;
        for (int j = 0; j < lens[i]; j++)
            g_specs[i].prompt[j] = (int32_t)(exsa_test_rand_u64(&st) % (uint64_t)(g_vocab - 2));
    }
    /* Two prompts share a 3-block prefix for the prefix cache. */
    memcpy(g_specs[5].prompt, g_specs[1].prompt, 48 * sizeof(int32_t));
}

static exsa_engine *make_engine(int max_bs, int max_bt, int kv_tokens, int prefix, int queue)
{
    exsa_engine_params p;
    exsa_engine_params_default(&p);
    p.model_path = g_model;
    p.n_threads = 1;
    p.n_ctx = 256;
    p.max_batch_size = max_bs;
    p.max_batch_tokens = max_bt;
    p.kv_tokens = kv_tokens;
    p.prefix_cache = prefix;
    if (queue > 0)
        p.queue_size = queue;
    exsa_err err = {0};
    exsa_engine *e = exsa_engine_create(&p, &err);
    if (!e)
        print_error("engine: %s\n", err.msg);
    assert_non_null(e);
    return e;
}

static void params_for(const req_spec *s, exsa_request_params *rp)
{
    exsa_request_params_default(rp);
    rp->prompt_ids = s->prompt;
    rp->n_prompt_ids = s->n_prompt;
    rp->max_tokens = s->max_tokens;
    rp->sampling.temperature = 0;
    rp->ignore_eos = 1;
}

/* Reads a stream to its end. */
static void drain(exsa_request *r, result *out)
{
    memset(out, 0, sizeof *out);
    for (;;) {
        exsa_event ev;
        int rc = exsa_request_next(r, &ev, 20000);
        assert_int_equal(rc, 0);
        assert_true(ev.text_len == strlen(ev.text));
        assert_true(out->text_len + ev.text_len < sizeof out->text);
        memcpy(out->text + out->text_len, ev.text, ev.text_len);
        out->text_len += ev.text_len;
        if (ev.type == EXSA_EVENT_DONE) {
            out->finish = ev.finish;
            out->usage = ev.usage;
            break;
        }
        assert_int_equal(ev.type, EXSA_EVENT_TOKEN);
        assert_true(out->n < MAX_OUT);
        out->tok[out->n++] = ev.token;
    }
    exsa_event ev;
    assert_int_equal(exsa_request_next(r, &ev, 0), EXSA_EINVAL); /* nothing after DONE */
}

static void run_one(exsa_engine *e, const exsa_request_params *rp, result *out)
{
    exsa_err err = {0};
    exsa_request *r = exsa_engine_submit(e, rp, &err);
    if (!r)
        print_error("submit: %s\n", err.msg);
    assert_non_null(r);
    drain(r, out);
    exsa_request_free(r);
}

static void assert_pool_full(exsa_engine *e)
{
    exsa_engine_stats s;
    exsa_engine_stats_get(e, &s);
    assert_int_equal(s.running, 0);
    assert_int_equal(s.queue_len, 0);
    assert_int_equal(s.kv_blocks_free, s.kv_blocks_total - s.kv_blocks_cached);
}

/* The reference: each request alone. */
static result g_alone[N_REQ];

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/exsa_engine_XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_model, sizeof g_model, "%s/m.gguf", g_dir);
    exsa_gen_params p;
    exsa_gen_params_default(&p);
    p.arch = "llama";
    p.n_embd = 64;
    p.n_layer = 2;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.n_ff = 128;
    p.n_vocab = g_vocab;
    p.n_ctx_train = 512;
    p.seed = 7;
    p.n_threads = 1;
    exsa_err err = {0};
    if (exsa_ftype_parse("F32", &p.ftype, &err) || exsa_model_generate(g_model, &p, NULL, NULL, &err)) {
        fprintf(stderr, "generate: %s\n", err.msg);
        return -1;
    }
    make_specs();
    exsa_engine *e = make_engine(1, 64, 0, 0, 0);
    for (int i = 0; i < N_REQ; i++) {
        exsa_request_params rp;
        params_for(&g_specs[i], &rp);
        run_one(e, &rp, &g_alone[i]);
    }
    exsa_engine_free(e);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(g_model);
    rmdir(g_dir);
    return 0;
}

/* Independent check of the reference: a plain greedy loop on the model. */
static void test_alone_matches_direct_forward(void **state)
{
    (void)state;
    exsa_err err = {0};
    exsa_model *m = exsa_model_load(g_model, &err);
    assert_non_null(m);
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = 1;
    cp.n_ctx = 256;
    cp.max_batch = 256;
    exsa_model_ctx *c = exsa_model_ctx_create(m, &cp, &err);
    assert_non_null(c);
    const req_spec *s = &g_specs[1];
    int32_t toks[400], pos[400], seq[400];
    uint8_t want[400];
    float *logits = malloc((size_t)g_vocab * sizeof(float));
    assert_non_null(logits);
    memcpy(toks, s->prompt, (size_t)s->n_prompt * sizeof(int32_t));
    int n = s->n_prompt, start = 0;
    for (int g = 0; g < s->max_tokens; g++) {
        for (int i = start; i < n; i++)
            pos[i - start] = i, seq[i - start] = 0, want[i - start] = i == n - 1;
        exsa_batch b = {.n = n - start, .token = toks + start, .pos = pos, .seq = seq,
                        .logits = want};
        assert_int_equal(exsa_model_forward(c, &b, logits, &err), 0);
        int best = 0;
        for (int v = 1; v < g_vocab; v++)
            if (logits[v] > logits[best])
                best = v;
        toks[n] = best;
        start = n++;
    }
    assert_int_equal(g_alone[1].n, s->max_tokens);
    assert_memory_equal(g_alone[1].tok, toks + s->n_prompt, (size_t)s->max_tokens * sizeof(int32_t));
    free(logits);
    exsa_model_ctx_free(c);
    exsa_model_free(m);
}

typedef struct worker {
    exsa_engine *e;
    pthread_barrier_t *submitted;
    int first, count;
    result *out;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    exsa_request *r[N_REQ];
    for (int i = 0; i < w->count; i++) {
        exsa_request_params rp;
        params_for(&g_specs[w->first + i], &rp);
        exsa_err err = {0};
        r[i] = exsa_engine_submit(w->e, &rp, &err);
        if (!r[i])
            fprintf(stderr, "submit: %s\n", err.msg);
    }
    pthread_barrier_wait(w->submitted);
    for (int i = 0; i < w->count; i++)
        if (r[i]) {
            drain(r[i], &w->out[w->first + i]);
            exsa_request_free(r[i]);
        }
    return NULL;
}

static void run_concurrent(exsa_engine *e, result *out)
{
    pthread_t th[3];
    worker w[3];
    pthread_barrier_t submitted;
    pthread_barrier_init(&submitted, NULL, 4);
    /* Everything queues first, so the requests really share steps. */
    exsa_engine_pause(e, 1);
    for (int t = 0; t < 3; t++) {
        w[t] = (worker){.e = e, .submitted = &submitted, .first = t * 2, .count = 2, .out = out};
        assert_int_equal(pthread_create(&th[t], NULL, worker_main, &w[t]), 0);
    }
    pthread_barrier_wait(&submitted);
    exsa_engine_pause(e, 0);
    for (int t = 0; t < 3; t++)
        pthread_join(th[t], NULL);
    pthread_barrier_destroy(&submitted);
}

static void check_same_as_alone(const result *got)
{
    for (int i = 0; i < N_REQ; i++) {
        assert_int_equal(got[i].n, g_specs[i].max_tokens);
        assert_int_equal(got[i].finish, EXSA_FINISH_LENGTH);
        assert_int_equal(got[i].usage.prompt_tokens, g_specs[i].n_prompt);
        assert_int_equal(got[i].usage.generated_tokens, g_specs[i].max_tokens);
        assert_memory_equal(got[i].tok, g_alone[i].tok, (size_t)got[i].n * sizeof(int32_t));
        assert_int_equal(got[i].text_len, g_alone[i].text_len);
        assert_memory_equal(got[i].text, g_alone[i].text, got[i].text_len);
    }
}

static void concurrent_case(int max_bs, int max_bt, int kv_tokens, int prefix, int expect_preempt)
{
    static result got[N_REQ];
    exsa_engine *e = make_engine(max_bs, max_bt, kv_tokens, prefix, 0);
    run_concurrent(e, got);
    check_same_as_alone(got);
    assert_pool_full(e);
    exsa_engine_stats s;
    exsa_engine_stats_get(e, &s);
    if (expect_preempt)
        assert_true(s.preemptions > 0);
    int64_t gen = 0;
    for (int i = 0; i < N_REQ; i++)
        gen += g_specs[i].max_tokens;
    assert_int_equal(s.generated_tokens, gen);
    assert_int_equal(s.requests_done, N_REQ);
    exsa_engine_free(e);
}

static void test_concurrent_equals_alone(void **state)
{
    (void)state;
    concurrent_case(4, 48, 0, 0, 0); /* chunked prefill (150 > 48), queueing (6 > 4) */
}

static void test_concurrent_prefix_cache(void **state)
{
    (void)state;
    concurrent_case(4, 48, 0, 1, 0);
}

static void test_concurrent_preemption(void **state)
{
    (void)state;
    /* 16 blocks of 16: the 150-token prompt + 21 alone takes 11. */
    concurrent_case(6, 64, 16 * 16, 0, 0);
    concurrent_case(6, 64, 16 * 16, 1, 0);

    /* Certain preemption: three requests queued together, each 40 + 150
     * tokens (12 blocks) alone, in a pool of 16 blocks. */
    for (int prefix = 0; prefix < 2; prefix++) {
        result alone[3], got[3];
        exsa_request_params rp[3];
        for (int i = 0; i < 3; i++) {
            params_for(&g_specs[i == 0 ? 2 : i == 1 ? 5 : 4], &rp[i]);
            rp[i].n_prompt_ids = 40;
            rp[i].max_tokens = 150;
        }
        exsa_engine *e = make_engine(1, 64, 0, 0, 0);
        for (int i = 0; i < 3; i++)
            run_one(e, &rp[i], &alone[i]);
        exsa_engine_free(e);
        e = make_engine(3, 64, 16 * 16, prefix, 0);
        exsa_engine_pause(e, 1);
        exsa_request *r[3];
        exsa_err err = {0};
        for (int i = 0; i < 3; i++)
            assert_non_null(r[i] = exsa_engine_submit(e, &rp[i], &err));
        exsa_engine_pause(e, 0);
        for (int i = 0; i < 3; i++) {
            drain(r[i], &got[i]);
            exsa_request_free(r[i]);
            assert_int_equal(got[i].n, 150);
            assert_memory_equal(got[i].tok, alone[i].tok, 150 * sizeof(int32_t));
            assert_int_equal(got[i].text_len, alone[i].text_len);
            assert_memory_equal(got[i].text, alone[i].text, got[i].text_len);
        }
        exsa_engine_stats s;
        exsa_engine_stats_get(e, &s);
        assert_true(s.preemptions > 0);
        assert_pool_full(e);
        exsa_engine_free(e);
    }
}

static void test_prefix_cache_hit(void **state)
{
    (void)state;
    exsa_engine *e = make_engine(2, 64, 0, 1, 0);
    exsa_request_params rp;
    result a, b;
    params_for(&g_specs[1], &rp);
    run_one(e, &rp, &a);
    params_for(&g_specs[5], &rp); /* shares 48 tokens (3 blocks) with spec 1 */
    run_one(e, &rp, &b);
    assert_int_equal(b.usage.cached_tokens, 48);
    assert_memory_equal(b.tok, g_alone[5].tok, (size_t)g_alone[5].n * sizeof(int32_t));
    assert_memory_equal(a.tok, g_alone[1].tok, (size_t)g_alone[1].n * sizeof(int32_t));
    exsa_engine_stats s;
    exsa_engine_stats_get(e, &s);
    assert_true(s.prefix_hit_tokens >= 48);
    assert_true(s.kv_blocks_cached > 0);
    assert_pool_full(e);
    exsa_engine_free(e);
}

static void test_cancel(void **state)
{
    (void)state;
    exsa_engine *e = make_engine(2, 64, 0, 1, 0);
    exsa_request_params rp;
    params_for(&g_specs[2], &rp);
    rp.max_tokens = 200;
    exsa_err err = {0};
    exsa_request *r = exsa_engine_submit(e, &rp, &err);
    assert_non_null(r);
    exsa_event ev;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(exsa_request_next(r, &ev, 20000), 0);
        assert_int_equal(ev.type, EXSA_EVENT_TOKEN);
    }
    exsa_request_cancel(r);
    int n = 3;
    for (;;) {
        assert_int_equal(exsa_request_next(r, &ev, 20000), 0);
        if (ev.type == EXSA_EVENT_DONE)
            break;
        n++;
    }
    assert_int_equal(ev.finish, EXSA_FINISH_CANCEL);
    assert_true(n < 200);
    assert_int_equal(ev.usage.generated_tokens, n);
    exsa_request_free(r);
    assert_pool_full(e);

    /* A request freed unread is cancelled too, and a freed engine cancels
     * what is still queued. */
    r = exsa_engine_submit(e, &rp, &err);
    assert_non_null(r);
    exsa_request_free(r);
    exsa_request *q = exsa_engine_submit(e, &rp, &err);
    assert_non_null(q);
    exsa_engine_free(e);
    result res;
    drain(q, &res);
    assert_int_equal(res.finish, EXSA_FINISH_CANCEL);
    exsa_request_free(q);
}

static void test_queue_full_and_never_fits(void **state)
{
    (void)state;
    exsa_engine *e = make_engine(1, 64, 0, 0, 2);
    exsa_request_params rp;
    params_for(&g_specs[2], &rp);
    rp.max_tokens = 200;
    exsa_request *r[8];
    int n = 0, full = 0;
    exsa_engine_pause(e, 1); /* nothing is admitted: the queue holds exactly 2 */
    exsa_err err = {0};
    for (; n < 8; n++) {
        int64_t t0 = exsa_time_ns();
        r[n] = exsa_engine_submit(e, &rp, &err);
        if (!r[n]) {
            assert_int_equal(err.code, EXSA_EFULL);
            /* The engine is paused: a submit that waited for room would never
             * return; 10 s only guards against that, not a speed check. */
            assert_true(exsa_time_ns() - t0 < 10000000000LL);
            full = 1;
            break;
        }
    }
    assert_true(full);
    assert_int_equal(n, 2);
    exsa_engine_pause(e, 0);
    for (int i = 0; i < n; i++) {
        exsa_request_cancel(r[i]);
        result res;
        drain(r[i], &res);
        assert_int_equal(res.finish, EXSA_FINISH_CANCEL);
        exsa_request_free(r[i]);
    }
    assert_pool_full(e);

    /* prompt + max_tokens beyond n_ctx (256) */
    rp.max_tokens = 256 - rp.n_prompt_ids + 1;
    assert_null(exsa_engine_submit(e, &rp, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    rp.max_tokens = 10;
    rp.n_prompt_ids = 0;
    assert_null(exsa_engine_submit(e, &rp, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    int32_t bad = g_vocab;
    rp.prompt_ids = &bad;
    rp.n_prompt_ids = 1;
    assert_null(exsa_engine_submit(e, &rp, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    exsa_engine_free(e);

    /* More blocks than the pool: 6 blocks of 16. */
    e = make_engine(1, 64, 6 * 16, 0, 0);
    params_for(&g_specs[4], &rp); /* 90 + 24 tokens = 8 blocks */
    assert_null(exsa_engine_submit(e, &rp, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    params_for(&g_specs[2], &rp); /* 40 + 22 = 4 blocks: fits */
    result res;
    run_one(e, &rp, &res);
    assert_memory_equal(res.tok, g_alone[2].tok, (size_t)res.n * sizeof(int32_t));
    exsa_engine_free(e);
}

/* Byte length of the UTF-8 character starting at s[0]. */
static size_t char_len(const char *s)
{
    unsigned char c = (unsigned char)s[0];
    return c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
}

static void test_stop_strings_and_max_tokens(void **state)
{
    (void)state;
    exsa_engine *e = make_engine(2, 64, 0, 1, 0);
    exsa_request_params rp;
    result full, res;
    params_for(&g_specs[0], &rp);
    rp.max_tokens = 60;
    run_one(e, &rp, &full);
    assert_int_equal(full.n, 60);
    assert_int_equal(full.finish, EXSA_FINISH_LENGTH);
    assert_true(full.text_len > 8);

    /* A two-character stop string from the middle of the output. */
    size_t at = full.text_len / 2;
    while (at > 0 && ((unsigned char)full.text[at] & 0xc0) == 0x80)
        at--;
    size_t len = char_len(full.text + at);
    len += char_len(full.text + at + len);
    char stop[16] = {0};
    memcpy(stop, full.text + at, len);
    size_t expect = (size_t)(strstr(full.text, stop) - full.text);
    const char *stops[2] = {"\x01never", stop};
    rp.stop = stops;
    rp.n_stop = 2;
    run_one(e, &rp, &res);
    assert_int_equal(res.finish, EXSA_FINISH_STOP);
    assert_int_equal(res.text_len, expect);
    assert_memory_equal(res.text, full.text, expect);
    assert_true(res.n <= full.n);
    assert_memory_equal(res.tok, full.tok, (size_t)res.n * sizeof(int32_t));

    /* max_tokens */
    rp.stop = NULL;
    rp.n_stop = 0;
    rp.max_tokens = 7;
    run_one(e, &rp, &res);
    assert_int_equal(res.n, 7);
    assert_int_equal(res.finish, EXSA_FINISH_LENGTH);
    assert_int_equal(res.usage.generated_tokens, 7);
    assert_memory_equal(res.tok, full.tok, 7 * sizeof(int32_t));
    assert_pool_full(e);
    exsa_engine_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alone_matches_direct_forward),
        cmocka_unit_test(test_concurrent_equals_alone),
        cmocka_unit_test(test_concurrent_prefix_cache),
        cmocka_unit_test(test_concurrent_preemption),
        cmocka_unit_test(test_prefix_cache_hit),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_queue_full_and_never_fits),
        cmocka_unit_test(test_stop_strings_and_max_tokens),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
