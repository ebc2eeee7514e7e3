/* Engine API extensions: model info, detokenize, chat rendering, logprobs
 * and embeddings, on a tiny random model generated per run.
 *
 * References are independent of the engine code: model info against the
 * generator's parameters; detokenize against the input text (round trip)
 * and raw token bytes from the vocab; chat rendering against prompts
 * written out by hand; logprobs against a log-softmax computed here in
 * double over logits from a direct exsa_model_forward loop; embeddings
 * against hidden states from a direct exsa_model_forward_hidden pass, mean
 * pooled and normalized here, where the hidden states themselves are
 * checked by multiplying them with output.weight read from the file and
 * comparing with the logits of exsa_model_forward.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "exsa.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "quant/quant.h"
#include "test_util.h"
#include "text/vocab.h"

#define N_VOCAB 300
#define N_EMBD 64
#define N_LAYER 2
#define N_HEAD 4
#define N_HEAD_KV 2
#define N_FF 128
#define N_CTX_TRAIN 512

static char g_dir[64];
static char g_model[128];  /* generated: has general.name, no chat template */
static char g_noname[128]; /* copy without general.name, with a broken template */
static char g_tpl[128];    /* copy with a working Jinja template in the GGUF */
static int64_t g_t_gen;

static exsa_engine *make_engine_p(const exsa_engine_params *p)
{
    exsa_err err = {0};
    exsa_engine *e = exsa_engine_create(p, &err);
    if (!e)
        print_error("engine: %s\n", err.msg);
    assert_non_null(e);
    return e;
}

static void engine_params(exsa_engine_params *p, const char *path)
{
    exsa_engine_params_default(p);
    p->model_path = path;
    p->n_threads = 1;
    p->n_ctx = 256;
    p->max_batch_size = 4;
    p->max_batch_tokens = 32;
}

static exsa_engine *make_engine(const char *path)
{
    exsa_engine_params p;
    engine_params(&p, path);
    return make_engine_p(&p);
}

/* Copies src to dst, dropping general.name when drop_name and setting
 * tokenizer.chat_template to tpl when non-NULL. */
static int copy_model(const char *src, const char *dst, int drop_name, const char *tpl)
{
    exsa_err err = {0};
    exsa_gguf *g = exsa_gguf_open(src, &err);
    exsa_gguf_writer *w = exsa_gguf_writer_create(&err);
    int rc = -1;
    if (!g || !w)
        goto done;
    for (int64_t i = 0; i < exsa_gguf_n_kv(g); i++) {
        if (drop_name && strcmp(exsa_gguf_kv_key(g, i), "general.name") == 0)
            continue;
        if (exsa_gguf_writer_copy_kv(w, g, i))
            goto done;
    }
    if (tpl && exsa_gguf_writer_set_str(w, "tokenizer.chat_template", tpl))
        goto done;
    for (int64_t i = 0; i < exsa_gguf_n_tensors(g); i++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(g, i);
        if (exsa_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, &err))
            goto done;
    }
    if (exsa_gguf_writer_begin(w, dst, &err))
        goto done;
    for (int64_t i = 0; i < exsa_gguf_n_tensors(g); i++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(g, i);
        if (exsa_gguf_writer_write_tensor(w, t->data, t->size, &err))
            goto done;
    }
    if (exsa_gguf_writer_finish(w, &err))
        goto done;
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "copy_model: %s\n", err.msg);
    exsa_gguf_writer_free(w);
    exsa_gguf_close(g);
    return rc;
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/exsa_engine_api_XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_model, sizeof g_model, "%s/m.gguf", g_dir);
    snprintf(g_noname, sizeof g_noname, "%s/tiny-noname.gguf", g_dir);
    snprintf(g_tpl, sizeof g_tpl, "%s/tpl.gguf", g_dir);
    exsa_gen_params p;
    exsa_gen_params_default(&p);
    p.arch = "llama";
    p.n_embd = N_EMBD;
    p.n_layer = N_LAYER;
    p.n_head = N_HEAD;
    p.n_head_kv = N_HEAD_KV;
    p.n_ff = N_FF;
    p.n_vocab = N_VOCAB;
    p.n_ctx_train = N_CTX_TRAIN;
    p.tied = 0; /* output.weight present: the embedding test reads it */
    p.seed = 11;
    p.n_threads = 1;
    g_t_gen = (int64_t)time(NULL);
    exsa_err err = {0};
    if (exsa_ftype_parse("F32", &p.ftype, &err) ||
        exsa_model_generate(g_model, &p, NULL, NULL, &err)) {
        fprintf(stderr, "generate: %s\n", err.msg);
        return -1;
    }
    if (copy_model(g_model, g_noname, 1, "{% for m in messages %}{{ m.content }") ||
        copy_model(g_model, g_tpl, 0, "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
                                      "{% endfor %}{% if add_generation_prompt %}<go>{% endif %}"))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(g_model);
    unlink(g_noname);
    unlink(g_tpl);
    rmdir(g_dir);
    return 0;
}

/* ---- model info ---- */

static void test_model_info(void **state)
{
    (void)state;
    exsa_engine *e = make_engine(g_model);
    exsa_model_info mi;
    memset(&mi, 0x5a, sizeof mi);
    exsa_engine_model_info(e, &mi);
    assert_string_equal(mi.name, "exsa random model"); /* general.name of the generator */
    assert_string_equal(mi.path, g_model);
    assert_string_equal(mi.arch, "llama");
    assert_string_equal(mi.weight_type, "F32");
    assert_int_equal(mi.n_ctx, 256);
    assert_int_equal(mi.n_ctx_train, N_CTX_TRAIN);
    assert_int_equal(mi.n_vocab, N_VOCAB);
    assert_int_equal(mi.n_embd, N_EMBD);
    assert_int_equal(mi.n_layer, N_LAYER);
    assert_int_equal(mi.bos, N_VOCAB - 2); /* <s>, </s> are the last two ids */
    assert_int_equal(mi.eos, N_VOCAB - 1);
    /* Every tensor of the file, from the generator's shapes. */
    const uint64_t E = N_EMBD, V = N_VOCAB, F = N_FF, hd = N_EMBD / N_HEAD;
    const uint64_t Q = N_HEAD * hd, KV = N_HEAD_KV * hd;
    uint64_t per_layer = 2 * E + E * Q + 2 * E * KV + Q * E + 3 * E * F;
    uint64_t n_params = 2 * V * E + E + N_LAYER * per_layer;
    assert_int_equal(mi.n_params, n_params);
    assert_int_equal(mi.weight_bytes, 4 * n_params); /* all F32 */
    assert_true(mi.created >= g_t_gen && mi.created <= (int64_t)time(NULL));
    exsa_engine_free(e);

    /* A given name wins; without general.name the file name is used. */
    exsa_engine_params p;
    engine_params(&p, g_model);
    p.name = "my-model";
    e = make_engine_p(&p);
    exsa_engine_model_info(e, &mi);
    assert_string_equal(mi.name, "my-model");
    exsa_engine_free(e);
    e = make_engine(g_noname);
    exsa_engine_model_info(e, &mi);
    assert_string_equal(mi.name, "tiny-noname");
    assert_string_equal(mi.path, g_noname);
    exsa_engine_free(e);
}

/* ---- detokenize ---- */

static void roundtrip(exsa_engine *e, const char *text)
{
    exsa_err err = {0};
    int32_t ids[256];
    int64_t n = exsa_engine_tokenize(e, text, strlen(text), 0, 0, ids, 256, &err);
    assert_true(n > 0 && n <= 256);
    char out[1024];
    int64_t len = exsa_engine_detokenize(e, ids, n, 0, out, sizeof out, &err);
    assert_int_equal(len, (int64_t)strlen(text));
    assert_string_equal(out, text);
}

static const char *const TEXTS[] = {
    "Hello, world! The quick brown fox jumps over 13 lazy dogs.",
    "h\xc3\xa9llo w\xc3\xb6rld \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e "
    "\xf0\x9f\x8e\x89 caf\xc3\xa9",
};

typedef struct detok_worker {
    exsa_engine *e;
    int fails;
} detok_worker;

static void *detok_main(void *arg)
{
    detok_worker *w = arg;
    for (int it = 0; it < 200; it++) {
        const char *text = TEXTS[it % 2];
        int32_t ids[256];
        char out[1024];
        exsa_err err = {0};
        int64_t n = exsa_engine_tokenize(w->e, text, strlen(text), 0, 0, ids, 256, &err);
        int64_t len = exsa_engine_detokenize(w->e, ids, n, it & 1, out, sizeof out, &err);
        if (n <= 0 || len != (int64_t)strlen(text) || strcmp(out, text) != 0)
            w->fails++;
    }
    return NULL;
}

static void test_detokenize(void **state)
{
    (void)state;
    exsa_engine *e = make_engine(g_model);
    exsa_err err = {0};
    for (size_t i = 0; i < sizeof TEXTS / sizeof TEXTS[0]; i++)
        roundtrip(e, TEXTS[i]);

    /* BOS: nothing as plain text, "<s>" with special. */
    const char *t = TEXTS[0];
    int32_t ids[256];
    int64_t n = exsa_engine_tokenize(e, t, strlen(t), 1, 0, ids, 256, &err);
    assert_int_equal(ids[0], N_VOCAB - 2);
    char out[1024];
    assert_int_equal(exsa_engine_detokenize(e, ids, n, 0, out, sizeof out, &err),
                     (int64_t)strlen(t));
    assert_string_equal(out, t);
    assert_int_equal(exsa_engine_detokenize(e, ids, n, 1, out, sizeof out, &err),
                     (int64_t)strlen(t) + 3);
    assert_memory_equal(out, "<s>", 3);
    assert_string_equal(out + 3, t);

    /* A short buffer gets a NUL-terminated prefix; the full length comes
     * back either way, also with no buffer at all. */
    n = exsa_engine_tokenize(e, t, strlen(t), 0, 0, ids, 256, &err);
    char small[5];
    memset(small, 'x', sizeof small);
    assert_int_equal(exsa_engine_detokenize(e, ids, n, 0, small, sizeof small, &err),
                     (int64_t)strlen(t));
    assert_memory_equal(small, t, 4);
    assert_int_equal(small[4], 0);
    assert_int_equal(exsa_engine_detokenize(e, ids, n, 0, NULL, 0, &err), (int64_t)strlen(t));
    assert_int_equal(exsa_engine_detokenize(e, ids, 0, 0, out, sizeof out, &err), 0);
    assert_string_equal(out, "");

    /* Bad ids: EINVAL naming the index. */
    int32_t bad[3] = {ids[0], ids[1], N_VOCAB};
    assert_int_equal(exsa_engine_detokenize(e, bad, 3, 0, out, sizeof out, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "ids[2]"));
    bad[1] = -1;
    assert_int_equal(exsa_engine_detokenize(e, bad, 3, 0, out, sizeof out, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "ids[1]"));

    /* Invalid UTF-8 formed by byte tokens becomes U+FFFD: find the tokens
     * of the single bytes 'A' and 0xC3 (a lead byte) in the vocab. */
    exsa_model *m = exsa_model_load(g_model, &err);
    assert_non_null(m);
    exsa_vocab *v = exsa_vocab_load(exsa_model_gguf(m), &err);
    assert_non_null(v);
    int32_t id_a = -1, id_c3 = -1;
    for (int32_t id = 0; id < N_VOCAB; id++) {
        char piece[16];
        if (exsa_vocab_token_to_piece(v, id, piece, sizeof piece, 0) != 1)
            continue;
        if (piece[0] == 'A')
            id_a = id;
        if ((unsigned char)piece[0] == 0xC3)
            id_c3 = id;
    }
    exsa_vocab_free(v);
    exsa_model_free(m);
    assert_true(id_a >= 0 && id_c3 >= 0);
    int32_t inv[4] = {id_a, id_c3, id_a, id_c3};
    assert_int_equal(exsa_engine_detokenize(e, inv, 4, 0, out, sizeof out, &err), 8);
    assert_string_equal(out, "A\xef\xbf\xbd" "A\xef\xbf\xbd");

    /* Several threads at once get the same answers. */
    detok_worker w[3] = {{e, 0}, {e, 0}, {e, 0}};
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, detok_main, &w[i]), 0);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].fails, 0);
    }
    exsa_engine_free(e);
}

/* ---- chat ---- */

static void expect_render(exsa_engine *e, const char *msgs, const char *tools, int gen,
                          const char *want)
{
    exsa_err err = {0};
    char *s = exsa_engine_chat_render(e, msgs, tools, gen, &err);
    if (!s)
        print_error("render: %s\n", err.msg);
    assert_non_null(s);
    assert_string_equal(s, want);
    free(s);
}

static void expect_render_error(exsa_engine *e, const char *msgs, const char *tools, int code,
                                const char *needle)
{
    exsa_err err = {0};
    char *s = exsa_engine_chat_render(e, msgs, tools, 1, &err);
    assert_null(s);
    assert_int_equal(err.code, code);
    if (!strstr(err.msg, needle))
        print_error("message '%s' does not name '%s'\n", err.msg, needle);
    assert_non_null(strstr(err.msg, needle));
}

static const char *const CONVO =
    "[{\"role\": \"system\", \"content\": \"You are terse.\"},"
    " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Hi \"},"
    "                                   {\"type\": \"text\", \"text\": \"there\"}]},"
    " {\"role\": \"assistant\", \"content\": \"Hello!\"},"
    " {\"role\": \"user\", \"content\": \"Bye\"}]";

static const char *const CONVO_CHATML =
    "<|im_start|>system\nYou are terse.<|im_end|>\n"
    "<|im_start|>user\nHi there<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n"
    "<|im_start|>user\nBye<|im_end|>\n";

static void test_chat_render(void **state)
{
    (void)state;
    char want[1024];
    exsa_engine_params p;
    engine_params(&p, g_model);
    p.chat_template = "chatml";
    exsa_engine *e = make_engine_p(&p);
    snprintf(want, sizeof want, "%s<|im_start|>assistant\n", CONVO_CHATML);
    expect_render(e, CONVO, NULL, 1, want);
    expect_render(e, CONVO, NULL, 0, CONVO_CHATML);
    /* null content is fine for an assistant message with tool calls */
    expect_render(e,
                  "[{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", "
                  "\"content\": null, \"tool_calls\": [{\"id\": \"1\", \"type\": \"function\", "
                  "\"function\": {\"name\": \"f\", \"arguments\": \"{}\"}}]}]",
                  NULL, 0,
                  "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n");

    /* Errors name the message index and field. */
    expect_render_error(e, "{\"role\": \"user\", \"content\": \"x\"}", NULL, EXSA_EINVAL,
                        "messages");
    expect_render_error(e, "[]", NULL, EXSA_EINVAL, "messages");
    expect_render_error(e, "[{\"role\": \"user\", \"content\": \"x\"", NULL, EXSA_EINVAL,
                        "invalid JSON");
    expect_render_error(e, "[{\"role\": \"user\", \"content\": \"x\"}, {\"content\": \"y\"}]",
                        NULL, EXSA_EINVAL, "messages[1].role");
    expect_render_error(e, "[{\"role\": \"user\", \"content\": \"x\"}, 7]", NULL, EXSA_EINVAL,
                        "messages[1]");
    expect_render_error(e, "[{\"role\": 3, \"content\": \"x\"}]", NULL, EXSA_EINVAL,
                        "messages[0].role");
    expect_render_error(e,
                        "[{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", "
                        "\"content\": [{\"type\": \"text\", \"text\": \"a\"}, {\"type\": "
                        "\"image_url\", \"image_url\": {\"url\": \"http://x\"}}]}]",
                        NULL, EXSA_EINVAL, "messages[1].content[1]");
    expect_render_error(e,
                        "[{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": 5}]}]",
                        NULL, EXSA_EINVAL, "messages[0].content[0].text");
    expect_render_error(e, "[{\"role\": \"user\", \"content\": [\"just a string\"]}]", NULL,
                        EXSA_EINVAL, "messages[0].content[0]");
    expect_render_error(e, "[{\"role\": \"user\", \"content\": 42}]", NULL, EXSA_EINVAL,
                        "messages[0].content");
    expect_render_error(e, "[{\"role\": \"user\", \"content\": null}]", NULL, EXSA_EINVAL,
                        "messages[0].content");
    expect_render_error(e, "[{\"role\": \"user\"}]", NULL, EXSA_EINVAL, "messages[0].content");
    expect_render_error(e, "[{\"role\": \"user\", \"content\": \"x\"}]", "{\"a\": 1}",
                        EXSA_EINVAL, "tools");
    expect_render_error(e, "[{\"role\": \"user\", \"content\": \"x\"}]", "[", EXSA_EINVAL,
                        "tools");
    exsa_engine_free(e);

    /* The model has no template of its own: chatml is the default. */
    e = make_engine(g_model);
    expect_render(e, CONVO, NULL, 0, CONVO_CHATML);
    exsa_engine_free(e);

    /* Jinja source as the override, with bos/eos text from the vocab and
     * the tools list passed through. */
    engine_params(&p, g_model);
    p.chat_template = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                      "{% endfor %}{% if tools %}T{{ tools | length }}{% endif %}{{ eos_token }}";
    e = make_engine_p(&p);
    expect_render(e, "[{\"role\": \"user\", \"content\": \"hi\"}]", NULL, 1, "<s>[user]hi</s>");
    expect_render(e, "[{\"role\": \"user\", \"content\": \"hi\"}]",
                  "[{\"type\": \"function\", \"function\": {\"name\": \"a\"}}, "
                  "{\"type\": \"function\", \"function\": {\"name\": \"b\"}}]",
                  1, "<s>[user]hiT2</s>");
    exsa_engine_free(e);

    /* The GGUF's own template is used when there is no override. */
    e = make_engine(g_tpl);
    expect_render(e, CONVO, NULL, 1, "<system>You are terse.<user>Hi there<assistant>Hello!"
                                     "<user>Bye<go>");
    exsa_engine_free(e);

    /* A broken template in the file: the engine still serves, chat does
     * not; a builtin override fixes it. */
    e = make_engine(g_noname);
    expect_render_error(e, "[{\"role\": \"user\", \"content\": \"x\"}]", NULL,
                        EXSA_EUNSUPPORTED, "chat template");
    exsa_engine_free(e);
    engine_params(&p, g_noname);
    p.chat_template = "llama3";
    e = make_engine_p(&p);
    exsa_err err = {0};
    char *s = exsa_engine_chat_render(e, "[{\"role\": \"user\", \"content\": \"x\"}]", NULL, 1,
                                      &err);
    assert_non_null(s);
    assert_non_null(strstr(s, "<|start_header_id|>user<|end_header_id|>"));
    free(s);
    exsa_engine_free(e);

    /* An explicit template that cannot be loaded fails create. */
    engine_params(&p, g_model);
    p.chat_template = "no-such-template";
    assert_null(exsa_engine_create(&p, &err));
    assert_non_null(strstr(err.msg, "chat_template"));
    p.chat_template = "{% for m in messages %}";
    assert_null(exsa_engine_create(&p, &err));
    assert_non_null(strstr(err.msg, "chat_template"));
}

/* ---- logprobs ---- */

#define LP_PROMPT 12
#define LP_GEN 8
#define LP_TOP 5

typedef struct lp_event {
    int32_t token;
    float logprob;
    int n_top;
    exsa_token_logprob top[EXSA_MAX_TOP_LOGPROBS];
} lp_event;

/* Waits until the engine has finished `done` requests in all. */
static void wait_done(exsa_engine *e, int64_t done)
{
    for (int i = 0; i < 20000; i++) {
        exsa_engine_stats s;
        exsa_engine_stats_get(e, &s);
        if (s.requests_done >= done)
            return;
        usleep(1000);
    }
    fail_msg("the engine did not finish in time");
}

/* Reads a whole stream (already finished) into ev[]. */
static int read_all(exsa_request *r, lp_event *ev, int max)
{
    int n = 0;
    for (;;) {
        exsa_event x;
        assert_int_equal(exsa_request_next(r, &x, 20000), 0);
        if (x.type == EXSA_EVENT_DONE) {
            assert_int_equal(x.n_top, 0);
            break;
        }
        assert_true(n < max);
        ev[n].token = x.token;
        ev[n].logprob = x.logprob;
        ev[n].n_top = x.n_top;
        assert_true(x.n_top >= 0 && x.n_top <= EXSA_MAX_TOP_LOGPROBS);
        if (x.n_top > 0) {
            assert_non_null(x.top);
            memcpy(ev[n].top, x.top, (size_t)x.n_top * sizeof *x.top);
        }
        n++;
    }
    return n;
}

static void test_logprobs(void **state)
{
    (void)state;
    int32_t prompt[LP_PROMPT];
    uint64_t st = 99;
    for (int i = 0; i < LP_PROMPT; i++)
        prompt[i] = (int32_t)(exsa_test_rand_u64(&st) % (N_VOCAB - 2));

    exsa_engine *e = make_engine(g_model);
    exsa_request_params rp;
    exsa_request_params_default(&rp);
    rp.prompt_ids = prompt;
    rp.n_prompt_ids = LP_PROMPT;
    rp.max_tokens = LP_GEN;
    rp.sampling.temperature = 0;
    rp.ignore_eos = 1;
    rp.logprobs = 1;
    rp.top_logprobs = LP_TOP;
    exsa_err err = {0};
    exsa_request *r = exsa_engine_submit(e, &rp, &err);
    assert_non_null(r);
    /* A second request without logprobs alongside. */
    exsa_request_params rp2 = rp;
    rp2.logprobs = 0;
    exsa_request *r2 = exsa_engine_submit(e, &rp2, &err);
    assert_non_null(r2);
    /* Read only once both finished: every event waits in the queue, so each
     * must carry its own logprob data. */
    wait_done(e, 2);
    lp_event ev[LP_GEN + 1], ev2[LP_GEN + 1];
    assert_int_equal(read_all(r, ev, LP_GEN + 1), LP_GEN);
    assert_int_equal(read_all(r2, ev2, LP_GEN + 1), LP_GEN);
    exsa_request_free(r);
    exsa_request_free(r2);
    for (int g = 0; g < LP_GEN; g++) {
        assert_int_equal(ev2[g].token, ev[g].token);
        assert_int_equal(ev2[g].n_top, 0);
    }

    /* Reference: direct forward over prompt + generated tokens. */
    exsa_model *m = exsa_model_load(g_model, &err);
    assert_non_null(m);
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = 1;
    cp.n_ctx = 256;
    cp.max_batch = 64;
    exsa_model_ctx *c = exsa_model_ctx_create(m, &cp, &err);
    assert_non_null(c);
    int32_t toks[LP_PROMPT + LP_GEN], pos[LP_PROMPT + LP_GEN], seq[LP_PROMPT + LP_GEN];
    uint8_t want[LP_PROMPT + LP_GEN];
    float logits[N_VOCAB];
    double lp[N_VOCAB];
    memcpy(toks, prompt, sizeof prompt);
    int n = LP_PROMPT, start = 0;
    for (int g = 0; g < LP_GEN; g++) {
        for (int i = start; i < n; i++)
            pos[i - start] = i, seq[i - start] = 0, want[i - start] = i == n - 1;
        exsa_batch b = {.n = n - start, .token = toks + start, .pos = pos, .seq = seq,
                        .logits = want};
        assert_int_equal(exsa_model_forward(c, &b, logits, &err), 0);
        double mx = logits[0], sum = 0;
        for (int v = 1; v < N_VOCAB; v++)
            mx = logits[v] > mx ? logits[v] : mx;
        for (int v = 0; v < N_VOCAB; v++)
            sum += exp((double)logits[v] - mx);
        for (int v = 0; v < N_VOCAB; v++)
            lp[v] = (double)logits[v] - mx - log(sum);
        int best = 0;
        for (int v = 1; v < N_VOCAB; v++)
            if (lp[v] > lp[best])
                best = v;

        const lp_event *x = &ev[g];
        assert_int_equal(x->token, best); /* greedy */
        assert_int_equal(x->n_top, LP_TOP);
        assert_int_equal(x->top[0].token, x->token);
        assert_true(x->logprob == x->top[0].logprob);
        assert_true(fabs(x->logprob - lp[best]) < 1e-4);
        /* top: the LP_TOP largest of the reference, in order */
        uint8_t used[N_VOCAB] = {0};
        for (int k = 0; k < LP_TOP; k++) {
            int kb = -1;
            for (int v = 0; v < N_VOCAB; v++)
                if (!used[v] && (kb < 0 || lp[v] > lp[kb]))
                    kb = v;
            used[kb] = 1;
            assert_int_equal(x->top[k].token, kb);
            assert_true(x->top[k].logprob <= 0);
            assert_true(fabs(x->top[k].logprob - lp[kb]) < 1e-4);
            if (k > 0)
                assert_true(x->top[k].logprob <= x->top[k - 1].logprob);
        }
        toks[n] = best;
        start = n++;
    }
    exsa_model_ctx_free(c);
    exsa_model_free(m);

    /* logprobs without top_logprobs: the value alone, equal to the above. */
    rp.top_logprobs = 0;
    r = exsa_engine_submit(e, &rp, &err);
    assert_non_null(r);
    wait_done(e, 3);
    lp_event ev3[LP_GEN + 1];
    assert_int_equal(read_all(r, ev3, LP_GEN + 1), LP_GEN);
    exsa_request_free(r);
    for (int g = 0; g < LP_GEN; g++) {
        assert_int_equal(ev3[g].n_top, 0);
        assert_true(fabsf(ev3[g].logprob - ev[g].logprob) < 1e-5f);
    }

    /* top_logprobs out of range is refused naming it; the maximum runs. */
    rp.top_logprobs = EXSA_MAX_TOP_LOGPROBS + 1;
    assert_null(exsa_engine_submit(e, &rp, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "top_logprobs"));
    rp.top_logprobs = -1;
    assert_null(exsa_engine_submit(e, &rp, &err));
    assert_non_null(strstr(err.msg, "top_logprobs"));
    rp.top_logprobs = EXSA_MAX_TOP_LOGPROBS;
    rp.max_tokens = 2;
    r = exsa_engine_submit(e, &rp, &err);
    assert_non_null(r);
    wait_done(e, 4);
    assert_int_equal(read_all(r, ev3, LP_GEN + 1), 2);
    assert_int_equal(ev3[0].n_top, EXSA_MAX_TOP_LOGPROBS);
    assert_int_equal(ev3[0].top[0].token, ev[0].token);
    exsa_request_free(r);
    exsa_engine_free(e);
}

/* ---- embeddings ---- */

#define EMB_N 70 /* over max_batch_tokens (32): three chunks in the engine */

/* Reference embedding of ids from a direct forward_hidden pass of all rows,
 * pooled and normalized here in double. The hidden states are checked
 * against the logits: output.weight (F32 in the file) times each hidden
 * row must give exsa_model_forward's logits. */
static void ref_embed(const int32_t *ids, int n, double *emb)
{
    exsa_err err = {0};
    exsa_model *m = exsa_model_load(g_model, &err);
    assert_non_null(m);
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = 1;
    cp.n_ctx = 256;
    cp.n_seq = 2;
    cp.max_batch = 128;
    exsa_model_ctx *c = exsa_model_ctx_create(m, &cp, &err);
    assert_non_null(c);
    int32_t pos[128], seq[128];
    uint8_t want[128];
    assert_true(n <= 128);
    for (int i = 0; i < n; i++)
        pos[i] = i, seq[i] = 0, want[i] = 1;
    float *hidden = malloc((size_t)n * N_EMBD * sizeof(float));
    float *logits = malloc((size_t)n * N_VOCAB * sizeof(float));
    assert_non_null(hidden);
    assert_non_null(logits);
    exsa_batch b = {.n = n, .token = (int32_t *)ids, .pos = pos, .seq = seq, .logits = want};
    assert_int_equal(exsa_model_forward_hidden(c, &b, hidden, &err), 0);
    for (int i = 0; i < n; i++)
        seq[i] = 1; /* a fresh sequence for the logits pass */
    assert_int_equal(exsa_model_forward(c, &b, logits, &err), 0);

    const exsa_gguf_tensor *ow = exsa_gguf_find_tensor(exsa_model_gguf(m), "output.weight");
    assert_non_null(ow);
    assert_int_equal(ow->type, EXSA_TYPE_F32);
    const float *W = ow->data;
    for (int i = 0; i < n; i += 7) {
        double *ref = malloc(N_VOCAB * sizeof(double));
        assert_non_null(ref);
        for (int v = 0; v < N_VOCAB; v++) {
            double s = 0;
            for (int d = 0; d < N_EMBD; d++)
                s += (double)W[(size_t)v * N_EMBD + d] * hidden[(size_t)i * N_EMBD + d];
            ref[v] = s;
        }
        double num = 0, den = 0;
        for (int v = 0; v < N_VOCAB; v++) {
            double dlt = logits[(size_t)i * N_VOCAB + v] - ref[v];
            num += dlt * dlt;
            den += ref[v] * ref[v];
        }
        assert_true(sqrt(num / den) < 1e-5);
        free(ref);
    }

    double ss = 0;
    for (int d = 0; d < N_EMBD; d++) {
        double s = 0;
        for (int i = 0; i < n; i++)
            s += hidden[(size_t)i * N_EMBD + d];
        emb[d] = s / n;
        ss += emb[d] * emb[d];
    }
    for (int d = 0; d < N_EMBD; d++)
        emb[d] /= sqrt(ss);
    free(hidden);
    free(logits);
    exsa_model_ctx_free(c);
    exsa_model_free(m);
}

static void assert_embedding(const float *got, const double *ref)
{
    double ss = 0, diff = 0;
    for (int d = 0; d < N_EMBD; d++) {
        ss += (double)got[d] * got[d];
        diff += ((double)got[d] - ref[d]) * ((double)got[d] - ref[d]);
    }
    assert_true(fabs(sqrt(ss) - 1.0) < 1e-5);
    assert_true(sqrt(diff) < 1e-4);
}

typedef struct gen_worker {
    exsa_engine *e;
    const int32_t *prompt;
    int n_prompt, max_tokens;
    int32_t out[64];
    int n_out;
} gen_worker;

static void *gen_main(void *arg)
{
    gen_worker *w = arg;
    exsa_request_params rp;
    exsa_request_params_default(&rp);
    rp.prompt_ids = w->prompt;
    rp.n_prompt_ids = w->n_prompt;
    rp.max_tokens = w->max_tokens;
    rp.sampling.temperature = 0;
    rp.ignore_eos = 1;
    exsa_err err = {0};
    exsa_request *r = exsa_engine_submit(w->e, &rp, &err);
    if (!r)
        return NULL;
    for (;;) {
        exsa_event ev;
        if (exsa_request_next(r, &ev, 20000) != 0 || ev.type == EXSA_EVENT_DONE)
            break;
        if (w->n_out < 64)
            w->out[w->n_out++] = ev.token;
    }
    exsa_request_free(r);
    return NULL;
}

static void test_embed(void **state)
{
    (void)state;
    int32_t a[EMB_N], bb[EMB_N];
    uint64_t st = 5;
    for (int i = 0; i < EMB_N; i++) {
        a[i] = (int32_t)(exsa_test_rand_u64(&st) % (N_VOCAB - 2));
        bb[i] = (int32_t)(exsa_test_rand_u64(&st) % (N_VOCAB - 2));
    }
    double ref_a[N_EMBD], ref_b[N_EMBD];
    ref_embed(a, EMB_N, ref_a);
    ref_embed(bb, 9, ref_b);

    exsa_engine *e = make_engine(g_model);
    exsa_err err = {0};
    float ea[N_EMBD + 8], ea2[N_EMBD + 8], eb[N_EMBD];
    assert_int_equal(exsa_engine_embed(e, a, EMB_N, ea, N_EMBD + 8, &err), N_EMBD);
    assert_embedding(ea, ref_a);
    assert_int_equal(exsa_engine_embed(e, a, EMB_N, ea2, N_EMBD, &err), N_EMBD);
    assert_memory_equal(ea, ea2, N_EMBD * sizeof(float));
    assert_int_equal(exsa_engine_embed(e, bb, 9, eb, N_EMBD, &err), N_EMBD);
    assert_embedding(eb, ref_b);
    assert_memory_not_equal(ea, eb, N_EMBD * sizeof(float));

    /* Embedding between the steps of running generations changes neither. */
    gen_worker gw[2] = {{e, bb, 20, 40, {0}, 0}, {e, a, 50, 30, {0}, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, gen_main, &gw[i]), 0);
    for (int k = 0; k < 5; k++) {
        assert_int_equal(exsa_engine_embed(e, a, EMB_N, ea2, N_EMBD, &err), N_EMBD);
        assert_memory_equal(ea, ea2, N_EMBD * sizeof(float));
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        gen_worker solo = {e, gw[i].prompt, gw[i].n_prompt, gw[i].max_tokens, {0}, 0};
        gen_main(&solo);
        assert_int_equal(gw[i].n_out, gw[i].max_tokens);
        assert_int_equal(solo.n_out, gw[i].max_tokens);
        assert_memory_equal(gw[i].out, solo.out, (size_t)solo.n_out * sizeof(int32_t));
    }
    exsa_engine_stats s;
    exsa_engine_stats_get(e, &s);
    assert_int_equal(s.kv_blocks_free, s.kv_blocks_total - s.kv_blocks_cached);

    /* Bad arguments. */
    assert_int_equal(exsa_engine_embed(e, a, 0, ea, N_EMBD, &err), EXSA_EINVAL);
    static int32_t big[257];
    assert_int_equal(exsa_engine_embed(e, big, 257, ea, N_EMBD, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "n_ctx"));
    assert_int_equal(exsa_engine_embed(e, a, EMB_N, ea, N_EMBD - 1, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "cap"));
    assert_int_equal(exsa_engine_embed(e, a, EMB_N, NULL, N_EMBD, &err), EXSA_EINVAL);
    int32_t badids[3] = {1, 2, N_VOCAB};
    assert_int_equal(exsa_engine_embed(e, badids, 3, ea, N_EMBD, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "ids[2]"));
    badids[2] = -3;
    assert_int_equal(exsa_engine_embed(e, badids, 3, ea, N_EMBD, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "ids[2]"));
    exsa_engine_free(e);
}

/* A running request holds most of the pool: EXSA_EFULL, then success once
 * it is gone. */
static void test_embed_full(void **state)
{
    (void)state;
    exsa_engine_params p;
    engine_params(&p, g_model);
    p.n_ctx = 512;
    p.max_batch_size = 1;
    p.max_batch_tokens = 64;
    p.kv_tokens = 512; /* 32 blocks */
    p.prefix_cache = 0;
    exsa_engine *e = make_engine_p(&p);
    static int32_t prompt[400];
    uint64_t st = 3;
    for (int i = 0; i < 400; i++)
        prompt[i] = (int32_t)(exsa_test_rand_u64(&st) % (N_VOCAB - 2));
    exsa_request_params rp;
    exsa_request_params_default(&rp);
    rp.prompt_ids = prompt;
    rp.n_prompt_ids = 200;
    rp.max_tokens = 300;
    rp.sampling.temperature = 0;
    rp.ignore_eos = 1;
    exsa_err err = {0};
    exsa_request *r = exsa_engine_submit(e, &rp, &err);
    assert_non_null(r);
    exsa_event ev;
    assert_int_equal(exsa_request_next(r, &ev, 20000), 0); /* admitted: >= 13 blocks held */
    assert_int_equal(ev.type, EXSA_EVENT_TOKEN);
    float out[N_EMBD];
    assert_int_equal(exsa_engine_embed(e, prompt, 400, out, N_EMBD, &err), EXSA_EFULL);
    assert_non_null(strstr(err.msg, "KV blocks"));
    exsa_request_cancel(r);
    while (exsa_request_next(r, &ev, 20000) == 0 && ev.type != EXSA_EVENT_DONE)
        ;
    exsa_request_free(r);
    assert_int_equal(exsa_engine_embed(e, prompt, 400, out, N_EMBD, &err), N_EMBD);
    /* Longer than the whole pool can ever hold: EINVAL, not EFULL. */
    p.kv_tokens = 128;
    exsa_engine_free(e);
    e = make_engine_p(&p);
    assert_int_equal(exsa_engine_embed(e, prompt, 200, out, N_EMBD, &err), EXSA_EINVAL);
    exsa_engine_free(e);
}

typedef struct embed_call {
    exsa_engine *e;
    const int32_t *ids;
    int rc;
    exsa_err err;
} embed_call;

static void *embed_main(void *arg)
{
    embed_call *c = arg;
    float out[N_EMBD];
    c->rc = exsa_engine_embed(c->e, c->ids, 4, out, N_EMBD, &c->err);
    return NULL;
}

/* Embeddings wait while the engine is paused, and fail with a message when
 * it is freed under them. */
static void test_embed_shutdown(void **state)
{
    (void)state;
    exsa_engine *e = make_engine(g_model);
    int32_t ids[4] = {1, 2, 3, 4};
    exsa_engine_pause(e, 1);
    embed_call c = {e, ids, 12345, {0}};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, embed_main, &c), 0);
    usleep(300 * 1000); /* the call is queued and waiting by now */
    assert_int_equal(c.rc, 12345);
    exsa_engine_free(e);
    pthread_join(th, NULL);
    assert_int_equal(c.rc, EXSA_EINVAL);
    assert_non_null(strstr(c.err.msg, "shutting down"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_info),   cmocka_unit_test(test_detokenize),
        cmocka_unit_test(test_chat_render),  cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_embed),        cmocka_unit_test(test_embed_full),
        cmocka_unit_test(test_embed_shutdown),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
