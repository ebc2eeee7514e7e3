/* The server's building blocks without a model: UTF-8 sanitizing and base64
 * (RFC 4648 vectors, a naive decoder written here), API-key checks, the
 * per-client token bucket, request-field validation (types, ranges, the
 * field named in errors, numbers beyond 64 bits, logit_bias and stop forms,
 * refused features), the Prometheus exposition, and the HTTP layer itself
 * through real sockets (routing 404/405, CORS preflight, request ids, body
 * limit 413 with and without 100-continue, conflicting Content-Length,
 * streamed replies and a client that leaves mid-stream). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/auth.h"
#include "server/http.h"
#include "server/json_text.h"
#include "server/metrics.h"
#include "server/ratelimit.h"
#include "server/request_params.h"
#include "server/strbuf.h"
#include "util/log.h"

/* ---- UTF-8 and base64 ---- */

static void test_utf8(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int valid;
    } cases[] = {
        {"", 1},
        {"plain ascii", 1},
        {"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 1},
        {"\xc3", 0},             /* cut */
        {"\xc0\xaf", 0},         /* overlong '/' */
        {"\xe0\x80\xaf", 0},     /* overlong */
        {"\xed\xa0\x80", 0},     /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", 0}, /* beyond U+10FFFF */
        {"\xff", 0},
        {"a\x80z", 0},       /* lone continuation */
        {"\xef\xbf\xbd", 1}, /* U+FFFD itself */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].s);
        assert_int_equal(exsa_utf8_valid(cases[i].s, n), cases[i].valid);
        size_t m;
        char *t = exsa_utf8_sanitize(cases[i].s, n, &m);
        assert_non_null(t);
        assert_true(exsa_utf8_valid(t, m));
        if (cases[i].valid)
            assert_memory_equal(t, cases[i].s, n + 1);
        free(t);
        /* Whatever the bytes, the JSON string exists and dumps. */
        json_t *j = exsa_json_text(cases[i].s, n);
        assert_non_null(j);
        json_decref(j);
    }
    size_t m;
    char *t = exsa_utf8_sanitize("a\xff"
                                 "b\xc3",
                                 4, &m);
    assert_string_equal(t, "a\xef\xbf\xbd"
                           "b\xef\xbf\xbd");
    free(t);
    /* Object keys too: invalid bytes in a key become U+FFFD. */
    json_t *o = json_object();
    assert_int_equal(exsa_json_set_text_key(o, "k\xff", 2, json_integer(1)), 0);
    assert_non_null(json_object_get(o, "k\xef\xbf\xbd"));
    json_decref(o);
    /* Non-finite numbers never make invalid JSON. */
    json_t *r = exsa_json_real(-INFINITY);
    assert_true(json_real_value(r) == -9999.0);
    json_decref(r);
}

static int b64val(char c)
{
    const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = strchr(tab, c);
    return p && c ? (int)(p - tab) : -1;
}

/* A naive decoder, to check the encoder on random data. */
static size_t b64decode(const char *s, unsigned char *out)
{
    size_t n = 0, len = strlen(s);
    for (size_t i = 0; i + 4 <= len; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++)
            v[k] = s[i + k] == '=' ? 0 : b64val(s[i + k]);
        uint32_t x =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[n++] = (unsigned char)(x >> 16);
        if (s[i + 2] != '=')
            out[n++] = (unsigned char)(x >> 8);
        if (s[i + 3] != '=')
            out[n++] = (unsigned char)x;
    }
    return n;
}

static void test_base64(void **state)
{
    (void)state;
    static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const out[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        char *e = exsa_base64_encode(in[i], strlen(in[i]));
        assert_string_equal(e, out[i]);
        free(e);
    }
    unsigned char buf[257], dec[300];
    uint64_t x = 12345;
    for (int i = 0; i < 257; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        buf[i] = (unsigned char)(x >> 56);
    }
    for (size_t n = 0; n <= 257; n += 37) {
        char *e = exsa_base64_encode(buf, n);
        assert_int_equal(b64decode(e, dec), n);
        assert_memory_equal(dec, buf, n);
        free(e);
    }
}

static void test_strbuf(void **state)
{
    (void)state;
    exsa_strbuf b;
    exsa_strbuf_init(&b);
    for (int i = 0; i < 1000; i++)
        exsa_strbuf_printf(&b, "%d,", i);
    assert_false(b.oom);
    char out[7];
    size_t total = 0, want = b.len;
    char *all = malloc(want);
    while (exsa_strbuf_pending(&b)) {
        size_t n = exsa_strbuf_take(&b, out, sizeof out);
        memcpy(all + total, out, n);
        total += n;
    }
    assert_int_equal(total, want);
    assert_memory_equal(all, "0,1,2,3,", 8);
    assert_int_equal(b.len, 0); /* reset once everything was read */
    free(all);
    exsa_strbuf_free(&b);
}

/* ---- API keys ---- */

static void test_auth(void **state)
{
    (void)state;
    assert_true(exsa_auth_equal("abc", 3, "abc", 3));
    assert_false(exsa_auth_equal("abc", 3, "abd", 3));
    assert_false(exsa_auth_equal("abc", 3, "abcd", 4));
    assert_false(exsa_auth_equal("", 0, "a", 1));
    assert_true(exsa_auth_equal("", 0, "", 0));

    char path[] = "/tmp/exsa-test-keys-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *file = "# comment\n\n  file-key  \nsecond\n";
    assert_int_equal(write(fd, file, strlen(file)), (ssize_t)strlen(file));
    close(fd);
    exsa_err err = {0};
    exsa_auth *a = exsa_auth_create("k1, k2", path, &err);
    assert_non_null(a);
    assert_int_equal(exsa_auth_count(a), 4);
    assert_true(exsa_auth_check(a, "Bearer k1", NULL));
    assert_true(exsa_auth_check(a, "bearer  k2", NULL));
    assert_true(exsa_auth_check(a, "Bearer file-key", NULL));
    assert_true(exsa_auth_check(a, NULL, "second"));
    assert_false(exsa_auth_check(a, NULL, NULL));
    assert_false(exsa_auth_check(a, "k1", NULL));       /* no scheme */
    assert_false(exsa_auth_check(a, "Bearer k", NULL)); /* prefix */
    assert_false(exsa_auth_check(a, "Bearer k11", NULL));
    assert_false(exsa_auth_check(a, "Basic k1", NULL));
    assert_false(exsa_auth_check(a, "Bearer ", NULL));
    exsa_auth_free(a);
    unlink(path);

    assert_null(exsa_auth_create("a,,b", NULL, &err));
    assert_non_null(strstr(err.msg, "empty"));
    assert_null(exsa_auth_create("has space", NULL, &err));
    assert_null(exsa_auth_create(NULL, "/nonexistent/keys", &err));
    assert_non_null(strstr(err.msg, "/nonexistent/keys"));
    a = exsa_auth_create(NULL, NULL, &err);
    assert_int_equal(exsa_auth_count(a), 0);
    assert_true(exsa_auth_check(a, NULL, NULL)); /* no keys: open */
    exsa_auth_free(a);
}

/* ---- rate limit ---- */

static void test_ratelimit(void **state)
{
    (void)state;
    exsa_err err = {0};
    assert_null(exsa_ratelimit_create(0, 1, &err));
    assert_null(exsa_ratelimit_create(1, 0.5, &err));
    exsa_ratelimit *r = exsa_ratelimit_create(2.0, 3.0, &err);
    assert_non_null(r);
    int64_t t = 1000000000;
    double retry = 0;
    for (int i = 0; i < 3; i++)
        assert_true(exsa_ratelimit_take(r, "10.0.0.1", t, &retry));
    assert_false(exsa_ratelimit_take(r, "10.0.0.1", t, &retry));
    assert_true(retry > 0.49 && retry < 0.51);                  /* one token at 2/s */
    assert_true(exsa_ratelimit_take(r, "10.0.0.2", t, &retry)); /* others unaffected */
    assert_false(exsa_ratelimit_take(r, "10.0.0.1", t + 400000000, &retry));
    assert_true(exsa_ratelimit_take(r, "10.0.0.1", t + 600000000, &retry));
    /* Refill stops at the burst. */
    t += 100 * 1000000000ll;
    for (int i = 0; i < 3; i++)
        assert_true(exsa_ratelimit_take(r, "10.0.0.1", t, &retry));
    assert_false(exsa_ratelimit_take(r, "10.0.0.1", t, &retry));
    /* Many clients: bounded table, still answers, a busy client stays limited. */
    char ip[32];
    for (int i = 0; i < 50000; i++) {
        snprintf(ip, sizeof ip, "192.168.%d.%d", i / 256 % 256, i % 256);
        exsa_ratelimit_take(r, ip, t, &retry);
    }
    exsa_ratelimit_free(r);
}

/* ---- request fields ---- */

static json_t *parse(const char *s, exsa_param_err *pe)
{
    memset(pe, 0, sizeof *pe);
    return exsa_reqparams_body(s, strlen(s), pe);
}

/* Parses body as a generation request of kind; returns the EXSA code and
 * leaves the error in pe. */
static int gen(const char *body, int kind, exsa_gen_params *g, exsa_param_err *pe)
{
    json_t *j = parse(body, pe);
    if (!j)
        return EXSA_EINVAL;
    int rc = exsa_reqparams_parse(j, kind, 1000, g, pe);
    json_decref(j);
    return rc;
}

static void expect_bad(const char *body, int kind, const char *param)
{
    exsa_gen_params g;
    exsa_param_err pe;
    int rc = gen(body, kind, &g, &pe);
    if (rc == 0 || strcmp(pe.param, param))
        fail_msg("%s: expected a 400 naming '%s', got rc %d param '%s' (%s)", body, param, rc,
                 pe.param, pe.msg);
    assert_int_equal(pe.status, 400);
    exsa_reqparams_free(&g);
}

static void test_params_errors(void **state)
{
    (void)state;
    exsa_param_err pe;
    assert_null(parse("", &pe));
    assert_string_equal(pe.code, "invalid_json");
    assert_null(parse("{\"a\":", &pe));
    assert_non_null(strstr(pe.msg, "line 1"));
    assert_null(parse("[1,2]", &pe));
    assert_null(parse("{\"s\":\"\\ud800\"}", &pe)); /* lone surrogate */
    assert_null(parse("{\"s\":\"\xff\"}", &pe));    /* invalid UTF-8 */
    assert_null(parse("{\"x\":1e999}", &pe));
    /* Integers beyond 64 bits are valid JSON: the field is named. */
    assert_null(parse("{\"prompt\":\"x\",\"max_tokens\":9223372036854775808}", &pe));
    assert_string_equal(pe.param, "max_tokens");
    assert_null(parse("{\"logit_bias\":{\"5\":-99999999999999999999}}", &pe));
    assert_string_equal(pe.param, "logit_bias");

    expect_bad("{\"temperature\":\"hot\"}", EXSA_API_CHAT, "temperature");
    expect_bad("{\"temperature\":-1}", EXSA_API_CHAT, "temperature");
    expect_bad("{\"temperature\":1e300}", EXSA_API_CHAT, "temperature");
    expect_bad("{\"top_p\":2}", EXSA_API_CHAT, "top_p");
    expect_bad("{\"top_k\":-3}", EXSA_API_NATIVE, "top_k");
    expect_bad("{\"top_k\":1.5}", EXSA_API_NATIVE, "top_k");
    expect_bad("{\"mirostat\":3}", EXSA_API_NATIVE, "mirostat");
    expect_bad("{\"max_tokens\":0}", EXSA_API_CHAT, "max_tokens");
    expect_bad("{\"max_tokens\":\"8\"}", EXSA_API_CHAT, "max_tokens");
    expect_bad("{\"max_tokens\":-5}", EXSA_API_COMPLETION, "max_tokens");
    expect_bad("{\"n_predict\":0}", EXSA_API_NATIVE, "n_predict");
    expect_bad("{\"max_completion_tokens\":5}", EXSA_API_COMPLETION, "max_completion_tokens");
    expect_bad("{\"n\":0}", EXSA_API_CHAT, "n");
    expect_bad("{\"n\":1000}", EXSA_API_CHAT, "n");
    expect_bad("{\"stream\":1}", EXSA_API_CHAT, "stream");
    expect_bad("{\"stream_options\":{\"include_usage\":\"yes\"}}", EXSA_API_CHAT,
               "stream_options.include_usage");
    expect_bad("{\"seed\":-2}", EXSA_API_CHAT, "seed");
    expect_bad("{\"stop\":5}", EXSA_API_CHAT, "stop");
    expect_bad("{\"stop\":[\"a\",7]}", EXSA_API_CHAT, "stop");
    expect_bad("{\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\","
               "\"m\",\"n\",\"o\",\"p\",\"q\"]}",
               EXSA_API_CHAT, "stop");
    expect_bad("{\"logit_bias\":{\"abc\":1}}", EXSA_API_CHAT, "logit_bias");
    expect_bad("{\"logit_bias\":{\"1000\":1}}", EXSA_API_CHAT, "logit_bias"); /* n_vocab 1000 */
    expect_bad("{\"logit_bias\":{\"5\":101}}", EXSA_API_CHAT, "logit_bias");
    expect_bad("{\"logit_bias\":[[5]]}", EXSA_API_NATIVE, "logit_bias");
    expect_bad("{\"logit_bias\":7}", EXSA_API_NATIVE, "logit_bias");
    expect_bad("{\"top_logprobs\":3}", EXSA_API_CHAT, "top_logprobs"); /* without logprobs */
    expect_bad("{\"logprobs\":true,\"top_logprobs\":21}", EXSA_API_CHAT, "top_logprobs");
    expect_bad("{\"logprobs\":true}", EXSA_API_COMPLETION, "logprobs");
    expect_bad("{\"response_format\":{}}", EXSA_API_CHAT, "response_format");
    expect_bad("{\"response_format\":{\"type\":\"xml\"}}", EXSA_API_CHAT,
               "response_format.type");
    expect_bad("{\"response_format\":{\"type\":\"json_schema\"}}", EXSA_API_CHAT,
               "response_format.json_schema");
    expect_bad("{\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\","
               "\"schema\":{\"type\":\"object\",\"not\":{}}}}}",
               EXSA_API_CHAT, "response_format.json_schema.schema");
    expect_bad("{\"grammar\":5}", EXSA_API_NATIVE, "grammar");
    expect_bad("{\"grammar\":\"root ::= \\\"a\\\"\",\"json_schema\":{}}", EXSA_API_NATIVE,
               "json_schema");
    expect_bad("{\"json_schema\":{\"type\":\"object\",\"if\":{}}}", EXSA_API_NATIVE,
               "json_schema");
    expect_bad("{\"echo\":true}", EXSA_API_COMPLETION, "echo");
    expect_bad("{\"best_of\":3}", EXSA_API_COMPLETION, "best_of");
    expect_bad("{\"cache_prompt\":\"x\"}", EXSA_API_NATIVE, "cache_prompt");
    expect_bad("{\"user\":5}", EXSA_API_CHAT, "user");
}

static void test_params_values(void **state)
{
    (void)state;
    exsa_gen_params g;
    exsa_param_err pe;
    assert_int_equal(gen("{\"temperature\":0.5,\"top_k\":7,\"top_p\":0.9,\"min_p\":0.1,"
                         "\"typical_p\":0.8,\"tfs_z\":0.7,\"repeat_penalty\":1.2,"
                         "\"repeat_last_n\":-1,\"presence_penalty\":-0.5,"
                         "\"frequency_penalty\":0.25,\"mirostat\":2,\"mirostat_tau\":4,"
                         "\"mirostat_eta\":0.2,\"seed\":99,\"n_predict\":-1,\"priority\":3,"
                         "\"ignore_eos\":true,\"stop\":\"x\",\"user\":\"u\","
                         "\"cache_prompt\":true,\"response_format\":{\"type\":\"text\"},"
                         "\"tools\":[],\"unknown_harmless\":1}",
                         EXSA_API_NATIVE, &g, &pe),
                     0);
    const exsa_sampling_params *s = &g.rp.sampling;
    assert_true(s->temperature == 0.5f && s->top_k == 7 && s->top_p == 0.9f && s->min_p == 0.1f);
    assert_true(s->typical_p == 0.8f && s->tfs_z == 0.7f && s->repeat_penalty == 1.2f);
    assert_true(s->repeat_last_n == -1 && s->presence_penalty == -0.5f);
    assert_true(s->frequency_penalty == 0.25f && s->mirostat == 2 && s->mirostat_tau == 4.0f);
    assert_true(s->mirostat_eta == 0.2f && s->seed == 99 && g.seed_given);
    assert_int_equal(g.max_tokens, -1);
    assert_int_equal(g.rp.priority, 3);
    assert_int_equal(g.rp.ignore_eos, 1);
    assert_int_equal(g.rp.n_stop, 1);
    assert_string_equal(g.rp.stop[0], "x");
    exsa_reqparams_free(&g);

    /* logit_bias both ways; false bans; an integral real is an integer. */
    assert_int_equal(
        gen("{\"logit_bias\":{\"5\":2.5,\"7\":-100},\"max_tokens\":8.0}", EXSA_API_CHAT, &g, &pe),
        0);
    assert_int_equal(g.rp.sampling.n_logit_bias, 2);
    assert_int_equal(g.max_tokens, 8);
    exsa_reqparams_free(&g);
    assert_int_equal(
        gen("{\"logit_bias\":[[3,false],[4,1]],\"stop\":[\"\",\"ab\"]}", EXSA_API_NATIVE, &g, &pe),
        0);
    assert_int_equal(g.rp.sampling.logit_bias[0].token, 3);
    assert_true(isinf(g.rp.sampling.logit_bias[0].bias) && g.rp.sampling.logit_bias[0].bias < 0);
    assert_int_equal(g.rp.n_stop, 1); /* the empty stop string is dropped */
    exsa_reqparams_free(&g);

    /* chat: max_completion_tokens wins; logprobs + top_logprobs; n. */
    assert_int_equal(gen("{\"max_tokens\":5,\"max_completion_tokens\":9,\"logprobs\":true,"
                         "\"top_logprobs\":4,\"n\":3,\"stream\":true,"
                         "\"stream_options\":{\"include_usage\":true}}",
                         EXSA_API_CHAT, &g, &pe),
                     0);
    assert_int_equal(g.max_tokens, 9);
    assert_true(g.rp.logprobs && g.rp.top_logprobs == 4 && g.n == 3);
    assert_true(g.stream && g.include_usage);
    assert_false(g.seed_given);
    exsa_reqparams_free(&g);
    /* completions: logprobs is the number of alternatives. */
    assert_int_equal(gen("{\"logprobs\":2}", EXSA_API_COMPLETION, &g, &pe), 0);
    assert_true(g.rp.logprobs && g.rp.top_logprobs == 2);
    exsa_reqparams_free(&g);

    /* Budget: room in the context, caps, the server default (-n), the
     * prompt limit. Arguments: n_prompt, n_ctx, cap, n_predict, max_prompt. */
    int out = 0;
    assert_int_equal(gen("{}", EXSA_API_CHAT, &g, &pe), 0);
    assert_int_equal(exsa_reqparams_budget(&g, 10, 100, 0, -1, 0, "messages", &out, &pe), 0);
    assert_int_equal(out, 90); /* -n -1: to the end of the context */
    assert_int_equal(exsa_reqparams_budget(&g, 10, 100, 0, 7, 0, "messages", &out, &pe), 0);
    assert_int_equal(out, 7); /* no max_tokens: the server default */
    assert_int_equal(exsa_reqparams_budget(&g, 10, 100, 0, 2048, 0, "messages", &out, &pe), 0);
    assert_int_equal(out, 90); /* a default beyond the room stops at the context */
    assert_int_equal(exsa_reqparams_budget(&g, 10, 100, 5, 7, 0, "messages", &out, &pe), 0);
    assert_int_equal(out, 5); /* the cap bounds the default too */
    assert_int_equal(exsa_reqparams_budget(&g, 10, 100, 50, -1, 0, "messages", &out, &pe), 0);
    assert_int_equal(out, 50);
    assert_int_not_equal(exsa_reqparams_budget(&g, 100, 100, 0, 7, 0, "messages", &out, &pe), 0);
    assert_string_equal(pe.param, "messages");
    assert_string_equal(pe.code, "context_length_exceeded");
    assert_int_not_equal(exsa_reqparams_budget(&g, 20, 100, 0, 7, 10, "prompt", &out, &pe), 0);
    assert_string_equal(pe.param, "prompt");
    assert_int_not_equal(exsa_reqparams_budget(&g, 0, 100, 0, 7, 0, "prompt", &out, &pe), 0);
    exsa_reqparams_free(&g);
    /* n_predict -1 in the request: to the end of the context, whatever -n says. */
    assert_int_equal(gen("{\"n_predict\":-1}", EXSA_API_NATIVE, &g, &pe), 0);
    assert_int_equal(exsa_reqparams_budget(&g, 10, 100, 0, 7, 0, "prompt", &out, &pe), 0);
    assert_int_equal(out, 90);
    exsa_reqparams_free(&g);
    assert_int_equal(gen("{}", EXSA_API_CHAT, &g, &pe), 0);
    g.max_tokens = 95;
    assert_int_not_equal(exsa_reqparams_budget(&g, 10, 100, 0, 7, 0, "prompt", &out, &pe), 0);
    assert_string_equal(pe.param, "max_tokens");
    g.max_tokens = 60;
    assert_int_not_equal(exsa_reqparams_budget(&g, 10, 100, 50, 7, 0, "prompt", &out, &pe), 0);
    assert_string_equal(pe.param, "max_tokens");
    /* A given max_tokens wins over the default (either way). */
    assert_int_equal(exsa_reqparams_budget(&g, 10, 100, 0, 7, 0, "prompt", &out, &pe), 0);
    assert_int_equal(out, 60);
    exsa_reqparams_free(&g);

    /* Token id lists. */
    json_t *j = parse("{\"t\":[1,2,999],\"u\":[1,-1],\"v\":[1,\"a\"]}", &pe);
    int32_t *ids;
    int n;
    assert_int_equal(exsa_reqparams_ids(json_object_get(j, "t"), "t", 1000, &ids, &n, &pe), 0);
    assert_int_equal(n, 3);
    assert_int_equal(ids[2], 999);
    free(ids);
    assert_int_not_equal(exsa_reqparams_ids(json_object_get(j, "t"), "t", 999, &ids, &n, &pe), 0);
    assert_int_not_equal(exsa_reqparams_ids(json_object_get(j, "u"), "u", 1000, &ids, &n, &pe), 0);
    assert_int_not_equal(exsa_reqparams_ids(json_object_get(j, "v"), "v", 1000, &ids, &n, &pe), 0);
    assert_string_equal(pe.param, "v");
    json_decref(j);
}

/* ---- metrics ---- */

static long long metric(const char *text, const char *line_prefix)
{
    const char *p = strstr(text, line_prefix);
    return p ? atoll(p + strlen(line_prefix)) : -1;
}

static void test_metrics(void **state)
{
    (void)state;
    static const char *const eps[] = {"/a", "/b"};
    exsa_err err = {0};
    exsa_metrics *m = exsa_metrics_create(eps, 2, &err);
    assert_non_null(m);
    exsa_metrics_request(m, 0, 200, 0.003);
    exsa_metrics_request(m, 0, 200, 0.2);
    exsa_metrics_request(m, 1, 404, 0.001);
    exsa_metrics_request(m, 7, 418, 0.001); /* unknown endpoint, unlisted status */
    exsa_model_metrics *mm = exsa_metrics_model(m, "m\"x");
    assert_ptr_equal(mm, exsa_metrics_model(m, "m\"x"));
    exsa_metrics_prompt_tokens(mm, 12);
    exsa_metrics_token(mm, -1);
    exsa_metrics_token(mm, 0.004);
    exsa_metrics_token(mm, 0.3);
    exsa_metrics_ttft(mm, 0.02);
    exsa_metrics_engine e = {.model = "m\"x",
                             .ready = 1,
                             .queue_len = 2,
                             .running = 3,
                             .kv_blocks_total = 10,
                             .kv_blocks_free = 4,
                             .kv_blocks_cached = 1,
                             .prefix_hit_tokens = 5,
                             .preemptions = 6};
    exsa_strbuf o;
    exsa_strbuf_init(&o);
    assert_int_equal(exsa_metrics_render(m, &e, 1, 1.5, &o), 0);
    const char *t = o.p;
    assert_int_equal(metric(t, "exsa_requests_total{endpoint=\"/a\",status=\"200\"} "), 2);
    assert_int_equal(metric(t, "exsa_requests_total{endpoint=\"/b\",status=\"404\"} "), 1);
    assert_int_equal(metric(t, "exsa_requests_total{endpoint=\"other\",status=\"other\"} "), 1);
    /* Cumulative buckets: 0.003 <= 0.005; 0.2 <= 0.25. */
    assert_int_equal(
        metric(t, "exsa_request_duration_seconds_bucket{endpoint=\"/a\",le=\"0.005\"} "), 1);
    assert_int_equal(
        metric(t, "exsa_request_duration_seconds_bucket{endpoint=\"/a\",le=\"0.25\"} "), 2);
    assert_int_equal(
        metric(t, "exsa_request_duration_seconds_bucket{endpoint=\"/a\",le=\"+Inf\"} "), 2);
    assert_int_equal(metric(t, "exsa_request_duration_seconds_count{endpoint=\"/a\"} "), 2);
    /* The label value is escaped. */
    assert_int_equal(metric(t, "exsa_generated_tokens_total{model=\"m\\\"x\"} "), 3);
    assert_int_equal(metric(t, "exsa_prompt_tokens_total{model=\"m\\\"x\"} "), 12);
    assert_int_equal(metric(t, "exsa_inter_token_latency_seconds_count{model=\"m\\\"x\"} "), 2);
    assert_int_equal(
        metric(t, "exsa_inter_token_latency_seconds_bucket{model=\"m\\\"x\",le=\"0.005\"} "), 1);
    assert_int_equal(metric(t, "exsa_time_to_first_token_seconds_count{model=\"m\\\"x\"} "), 1);
    assert_int_equal(metric(t, "exsa_kv_blocks_used{model=\"m\\\"x\"} "), 6);
    assert_int_equal(metric(t, "exsa_queue_length{model=\"m\\\"x\"} "), 2);
    assert_int_equal(metric(t, "exsa_preemptions_total{model=\"m\\\"x\"} "), 6);
    assert_non_null(strstr(t, "# TYPE exsa_time_to_first_token_seconds histogram\n"));
    /* Every line is a comment or "name{labels} value". */
    for (const char *l = t; *l; l = strchr(l, '\n') + 1) {
        assert_true(l[0] == '#' || (l[0] >= 'a' && l[0] <= 'z'));
        assert_non_null(strchr(l, '\n'));
    }
    exsa_strbuf_free(&o);
    exsa_metrics_free(m);
}

/* ---- HTTP through sockets ---- */

static atomic_int stream_freed;

static void h_echo(exsa_http_req *rq, void *app)
{
    (void)app;
    size_t n;
    const char *b = exsa_http_req_body(rq, &n);
    exsa_http_reply(rq, 200, "text/plain", b, n);
}

static void h_tail(exsa_http_req *rq, void *app)
{
    (void)app;
    const char *t = exsa_http_req_path_tail(rq);
    exsa_http_reply(rq, 200, "text/plain", t, strlen(t));
}

static void h_none(exsa_http_req *rq, void *app)
{
    (void)rq;
    (void)app; /* no reply: the layer must answer 500 */
}

typedef struct {
    int left;
} counter;

static int pull(void *ctx, exsa_strbuf *out)
{
    counter *c = ctx;
    if (c->left-- <= 0)
        return 1;
    exsa_strbuf_printf(out, "data: %d\n\n", c->left);
    usleep(2000);
    return 0;
}

static void free_counter(void *ctx)
{
    free(ctx);
    atomic_fetch_add(&stream_freed, 1);
}

static void h_stream(exsa_http_req *rq, void *app)
{
    (void)app;
    counter *c = malloc(sizeof *c);
    size_t n;
    const char *b = exsa_http_req_body(rq, &n);
    c->left = n ? atoi(b) : 5;
    exsa_http_reply_stream(rq, 200, "text/event-stream", pull, c, free_counter);
}

static int admit_key(exsa_http_req *rq, void *app)
{
    (void)app;
    const char *k = exsa_http_req_header(rq, "X-Key");
    if (k && !strcmp(k, "no")) {
        exsa_http_reply_error(rq, 401, "invalid_request_error", NULL, "invalid_api_key", "no");
        return 1;
    }
    return 0;
}

static atomic_int finished_count;
static void on_finished(exsa_http_req *rq, void *app)
{
    (void)rq;
    (void)app;
    atomic_fetch_add(&finished_count, 1);
}

static const exsa_http_route test_routes[] = {
    {"/echo", 0, EXSA_HTTP_POST, h_echo, 0, 0},     {"/get", 0, EXSA_HTTP_GET, h_echo, 1, 0},
    {"/items/", 1, EXSA_HTTP_GET, h_tail, 2, 0},    {"/none", 0, EXSA_HTTP_GET, h_none, 3, 0},
    {"/stream", 0, EXSA_HTTP_POST, h_stream, 4, 0},
};

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* Sends raw bytes, reads until the peer closes (or 5 s); malloc'd reply. */
static char *roundtrip(int port, const char *req, size_t len)
{
    int fd = connect_to(port);
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) <= 0)
            break;
        ssize_t r = recv(fd, buf + n, cap - n, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
    }
    buf[n] = '\0';
    close(fd);
    return buf;
}

static int status_of(const char *reply)
{
    return strncmp(reply, "HTTP/1.1 ", 9) ? -1 : atoi(reply + 9);
}

static char *req(int port, const char *method, const char *path, const char *headers,
                 const char *body)
{
    char head[1024];
    size_t bl = body ? strlen(body) : 0;
    int hl =
        snprintf(head, sizeof head,
                 "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%sContent-Length: %zu\r\n\r\n",
                 method, path, headers ? headers : "", bl);
    char *all = malloc((size_t)hl + bl + 1);
    memcpy(all, head, (size_t)hl);
    if (bl)
        memcpy(all + hl, body, bl);
    char *r = roundtrip(port, all, (size_t)hl + bl);
    free(all);
    return r;
}

static void test_http(void **state)
{
    (void)state;
    exsa_log_configure("error", NULL, NULL);
    exsa_http_config c = {
        .host = "127.0.0.1",
        .port = 0,
        .max_connections = 16,
        .conn_timeout_s = 5,
        .max_body_bytes = 100,
        .routes = test_routes,
        .n_routes = (int)(sizeof test_routes / sizeof test_routes[0]),
        .cors_origins = "http://ok.example, http://two.example",
        .hooks = {.admit = admit_key, .finished = on_finished},
    };
    exsa_err err = {0};
    exsa_http *h = exsa_http_start(&c, &err);
    assert_non_null(h);
    int port = exsa_http_port(h);
    assert_true(port > 0);

    char *r = req(port, "POST", "/echo", NULL, "hello");
    assert_int_equal(status_of(r), 200);
    assert_non_null(strstr(r, "\r\n\r\nhello"));
    assert_non_null(strstr(r, "X-Request-Id: "));
    free(r);
    r = req(port, "POST", "/echo", "X-Request-Id: my-id-1\r\n", "x");
    assert_non_null(strstr(r, "X-Request-Id: my-id-1\r\n"));
    free(r);
    r = req(port, "POST", "/echo", "X-Request-Id: has space\r\n", "x");
    assert_null(strstr(r, "has space"));
    free(r);
    r = req(port, "GET", "/nope", NULL, NULL);
    assert_int_equal(status_of(r), 404);
    assert_non_null(strstr(r, "\"error\""));
    free(r);
    r = req(port, "GET", "/echo", NULL, NULL);
    assert_int_equal(status_of(r), 405);
    assert_non_null(strstr(r, "Allow: POST, OPTIONS"));
    free(r);
    r = req(port, "PUT", "/echo", NULL, "x");
    assert_int_equal(status_of(r), 405);
    free(r);
    r = req(port, "GET", "/items/abc", NULL, NULL);
    assert_int_equal(status_of(r), 200);
    assert_non_null(strstr(r, "\r\n\r\nabc"));
    free(r);
    r = req(port, "GET", "/none", NULL, NULL);
    assert_int_equal(status_of(r), 500);
    free(r);
    r = req(port, "POST", "/echo", "X-Key: no\r\n", "x");
    assert_int_equal(status_of(r), 401);
    free(r);

    /* Body limit: 100 bytes. */
    char big[201];
    memset(big, 'a', 200);
    big[200] = '\0';
    r = req(port, "POST", "/echo", NULL, big);
    assert_int_equal(status_of(r), 413);
    free(r);
    r = req(port, "POST", "/echo", "Expect: 100-continue\r\n", big);
    assert_int_equal(status_of(r), 413);
    free(r);
    big[100] = '\0';
    r = req(port, "POST", "/echo", NULL, big);
    assert_int_equal(status_of(r), 200);
    free(r);
    /* Chunked body beyond the limit. */
    const char *chunked =
        "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
        "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n"
        "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n"
        "0\r\n\r\n";
    r = roundtrip(port, chunked, strlen(chunked));
    assert_int_equal(status_of(r), 413);
    free(r);
    const char *dup = "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      "Content-Length: 2\r\nContent-Length: 3\r\n\r\nabc";
    r = roundtrip(port, dup, strlen(dup));
    assert_int_equal(status_of(r), 400);
    free(r);
    const char *nohost = "GET /get HTTP/1.1\r\nConnection: close\r\n\r\n";
    r = roundtrip(port, nohost, strlen(nohost));
    assert_int_equal(status_of(r), 400);
    free(r);

    /* CORS. */
    r = req(port, "OPTIONS", "/echo", "Origin: http://two.example\r\n", NULL);
    assert_int_equal(status_of(r), 204);
    assert_non_null(strstr(r, "Access-Control-Allow-Origin: http://two.example\r\n"));
    assert_non_null(strstr(r, "Access-Control-Allow-Methods: POST"));
    free(r);
    r = req(port, "OPTIONS", "/echo", "Origin: http://evil.example\r\n", NULL);
    assert_null(strstr(r, "Access-Control-Allow-Origin"));
    free(r);
    r = req(port, "POST", "/echo", "Origin: http://ok.example\r\n", "x");
    assert_non_null(strstr(r, "Access-Control-Allow-Origin: http://ok.example\r\n"));
    free(r);

    /* Streams: chunked, every frame, the context freed once. */
    atomic_store(&stream_freed, 0);
    r = req(port, "POST", "/stream", NULL, "4");
    assert_int_equal(status_of(r), 200);
    assert_non_null(strstr(r, "Transfer-Encoding: chunked"));
    assert_non_null(strstr(r, "data: 3\n\n"));
    assert_non_null(strstr(r, "data: 0\n\n"));
    free(r);
    /* A client that leaves mid-stream: the context is still freed. */
    int fd = connect_to(port);
    const char *s = "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n10000";
    assert_int_equal(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
    char tmp[256];
    assert_true(recv(fd, tmp, sizeof tmp, 0) > 0);
    close(fd);
    for (int i = 0; i < 500 && atomic_load(&stream_freed) < 2; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&stream_freed), 2);
    assert_int_equal(exsa_http_wait_idle(h, 2000), 0);
    assert_true(atomic_load(&finished_count) >= 20);

    /* After quiesce new connections are refused. */
    exsa_http_quiesce(h);
    int fd2 = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_not_equal(connect(fd2, (struct sockaddr *)&a, sizeof a), 0);
    close(fd2);
    exsa_http_stop(h);

    c.host = "no.such.host.invalid";
    assert_null(exsa_http_start(&c, &err));
    assert_non_null(strstr(err.msg, "--host"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8),          cmocka_unit_test(test_base64),
        cmocka_unit_test(test_strbuf),        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_ratelimit),     cmocka_unit_test(test_params_errors),
        cmocka_unit_test(test_params_values), cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
