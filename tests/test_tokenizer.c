/* Tokenizers and the streaming detokenizer.
 *
 * 1. A small SPM vocab built in memory (hand-written GGUF bytes) with ids
 *    worked out by hand from the merge scores: merges, byte fallback,
 *    special tokens on/off, user-defined tokens, BOS, cap semantics,
 *    invalid UTF-8 (compared with hand-replaced text), detokenizer
 *    streaming across byte tokens and small output buffers.
 * 2. Every vocab of ../shared/fixtures/vocab: each case of NAME.gguf.inp
 *    must give the ids of NAME.gguf.out (llama.cpp's) exactly, and, for
 *    the lossless kinds (SPM, BPE), detokenize back to the input. Random
 *    byte strings must tokenize deterministically to in-range ids. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gguf/gguf.h"
#include "test_util.h"
#include "text/tokenizer.h"
#include "text/vocab.h"

/* ------------------------------------------------ in-memory GGUF builder */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} bytes;

static void put(bytes *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_u32(bytes *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(bytes *b, uint64_t v) { put(b, &v, 8); }
static void put_str(bytes *b, const char *s)
{
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}

enum { T_U32 = 4, T_I32 = 5, T_F32 = 6, T_BOOL = 7, T_STR = 8, T_ARR = 9 };

typedef struct {
    const char *text;
    int type;
    float score;
} vtok;

#define SP "\xe2\x96\x81" /* U+2581 */

/* Ids 0..2 special, 3..258 byte tokens, then these. */
static const vtok NORMAL[] = {
    {SP, 1, -1.0f},       {"a", 1, -2.0f},      {"b", 1, -2.0f},    {"h", 1, -2.0f},
    {"e", 1, -2.0f},      {"l", 1, -2.0f},      {"o", 1, -2.0f},    {"<", 1, -3.0f},
    {">", 1, -3.0f},      {"s", 1, -3.0f},      {"ab", 1, -1.5f},   {SP "a", 1, -1.0f},
    {SP "ab", 1, -0.5f},  {"he", 1, -1.2f},     {"ll", 1, -1.1f},   {"hell", 1, -0.8f},
    {"hello", 1, -0.3f},  {SP "hello", 1, -0.1f}, {"<s", 1, -0.6f}, {"<|u|>", 4, 0.0f},
};
enum { N_NORMAL = sizeof NORMAL / sizeof NORMAL[0], FIRST_NORMAL = 259 };

static int32_t tid(const char *s)
{
    for (int i = 0; i < N_NORMAL; i++)
        if (strcmp(NORMAL[i].text, s) == 0)
            return FIRST_NORMAL + i;
    fail_msg("no token '%s'", s);
    return -1;
}
static int32_t byte_id(unsigned b) { return 3 + (int32_t)b; }

static char *tok_text(int i)
{
    static char buf[8];
    if (i == 0)
        return "<unk>";
    if (i == 1)
        return "<s>";
    if (i == 2)
        return "</s>";
    if (i < FIRST_NORMAL) {
        snprintf(buf, sizeof buf, "<0x%02X>", i - 3);
        return buf;
    }
    return (char *)NORMAL[i - FIRST_NORMAL].text;
}

static bytes build_spm_gguf(void)
{
    int n = FIRST_NORMAL + N_NORMAL;
    bytes b = {0};
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, 0); /* tensors */
    put_u64(&b, 7); /* kvs */
    put_str(&b, "tokenizer.ggml.model");
    put_u32(&b, T_STR);
    put_str(&b, "llama");
    put_str(&b, "tokenizer.ggml.tokens");
    put_u32(&b, T_ARR);
    put_u32(&b, T_STR);
    put_u64(&b, (uint64_t)n);
    for (int i = 0; i < n; i++)
        put_str(&b, tok_text(i));
    put_str(&b, "tokenizer.ggml.scores");
    put_u32(&b, T_ARR);
    put_u32(&b, T_F32);
    put_u64(&b, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        float s = i < FIRST_NORMAL ? 0.0f : NORMAL[i - FIRST_NORMAL].score;
        put(&b, &s, 4);
    }
    put_str(&b, "tokenizer.ggml.token_type");
    put_u32(&b, T_ARR);
    put_u32(&b, T_I32);
    put_u64(&b, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        int32_t t = i == 0 ? 2 : i < 3 ? 3 : i < FIRST_NORMAL ? 6 : NORMAL[i - FIRST_NORMAL].type;
        put(&b, &t, 4);
    }
    put_str(&b, "tokenizer.ggml.bos_token_id");
    put_u32(&b, T_U32);
    put_u32(&b, 1);
    put_str(&b, "tokenizer.ggml.eos_token_id");
    put_u32(&b, T_U32);
    put_u32(&b, 2);
    put_str(&b, "tokenizer.ggml.unknown_token_id");
    put_u32(&b, T_U32);
    put_u32(&b, 0);
    while (b.n % 32)
        put(&b, "", 1);
    return b;
}

typedef struct {
    bytes file;
    exsa_gguf *g;
    exsa_vocab *v;
    exsa_tokenizer *t;
} mem_vocab;

static int setup_spm(void **state)
{
    mem_vocab *m = calloc(1, sizeof *m);
    exsa_err err = {0};
    m->file = build_spm_gguf();
    m->g = exsa_gguf_open_memory(m->file.p, m->file.n, &err);
    if (!m->g)
        fail_msg("gguf: %s", err.msg);
    m->v = exsa_vocab_load(m->g, &err);
    if (!m->v)
        fail_msg("vocab: %s", err.msg);
    m->t = exsa_tokenizer_create(m->v, &err);
    if (!m->t)
        fail_msg("tokenizer: %s", err.msg);
    *state = m;
    return 0;
}

static int teardown_spm(void **state)
{
    mem_vocab *m = *state;
    exsa_tokenizer_free(m->t);
    exsa_vocab_free(m->v);
    exsa_gguf_close(m->g);
    free(m->file.p);
    free(m);
    return 0;
}

/* Tokenizes s and compares with the expected ids (terminated by -100). */
static void expect_ids(const exsa_tokenizer *t, const char *s, size_t len, int flags, ...)
{
    int32_t want[64], got[64];
    int nw = 0;
    va_list ap;
    va_start(ap, flags);
    for (int32_t id; (id = va_arg(ap, int32_t)) != -100;)
        want[nw++] = id;
    va_end(ap);
    exsa_err err = {0};
    int64_t n = exsa_tokenize(t, s, len, flags, got, 64, &err);
    if (n != nw || memcmp(got, want, (size_t)nw * sizeof *got) != 0) {
        fprintf(stderr, "input '%.*s' flags %d: want", (int)len, s, flags);
        for (int i = 0; i < nw; i++)
            fprintf(stderr, " %d", want[i]);
        fprintf(stderr, ", got (%lld)", (long long)n);
        for (int64_t i = 0; i < n && i < 64; i++)
            fprintf(stderr, " %d", got[i]);
        fprintf(stderr, " %s\n", err.msg);
        fail();
    }
}
#define END (-100)
#define S(x) x, sizeof(x) - 1

static void test_spm_merges(void **state)
{
    const exsa_tokenizer *t = ((mem_vocab *)*state)->t;
    /* "▁ab": ▁a (-1.0) beats ab (-1.5), then ▁a+b = ▁ab. */
    expect_ids(t, S("ab"), 0, tid(SP "ab"), END);
    /* ll, he, hell, hello, ▁hello in score order. */
    expect_ids(t, S("hello"), 0, tid(SP "hello"), END);
    expect_ids(t, S("hello ab"), 0, tid(SP "hello"), tid(SP "ab"), END);
    /* Two spaces: ▁▁ is no token. */
    expect_ids(t, S(" a"), 0, tid(SP), tid(SP "a"), END);
    /* Byte fallback for a character with no token. */
    expect_ids(t, S("\xc3\xa9"), 0, tid(SP), byte_id(0xC3), byte_id(0xA9), END);
    expect_ids(t, S(""), 0, END);
    expect_ids(t, S(""), EXSA_TOK_ADD_SPECIAL, 1, END);
    expect_ids(t, S("ab"), EXSA_TOK_ADD_SPECIAL, 1, tid(SP "ab"), END);
}

static void test_special_tokens(void **state)
{
    const exsa_tokenizer *t = ((mem_vocab *)*state)->t;
    /* Plain text: "<s>" may not merge into the control token. */
    expect_ids(t, S("<s>"), 0, tid(SP), tid("<s"), tid(">"), END);
    expect_ids(t, S("<s>"), EXSA_TOK_PARSE_SPECIAL, 1, END);
    /* After a special token the next text gets a space prefix again. */
    expect_ids(t, S("a<s>b"), EXSA_TOK_PARSE_SPECIAL, tid(SP "a"), 1, tid(SP), tid("b"), END);
    expect_ids(t, S("a</s><s>"), EXSA_TOK_PARSE_SPECIAL, tid(SP "a"), 2, 1, END);
    expect_ids(t, S("<unk>"), EXSA_TOK_PARSE_SPECIAL, 0, END);
    /* User-defined tokens split out even without PARSE_SPECIAL. */
    expect_ids(t, S("a<|u|>ab"), 0, tid(SP "a"), tid("<|u|>"), tid(SP "ab"), END);
    expect_ids(t, S("<s>"), EXSA_TOK_PARSE_SPECIAL | EXSA_TOK_ADD_SPECIAL, 1, 1, END);
}

static void test_cap(void **state)
{
    const exsa_tokenizer *t = ((mem_vocab *)*state)->t;
    int32_t ids[4] = {-7, -7, -7, -7};
    exsa_err err = {0};
    assert_int_equal(exsa_tokenize(t, S("hello ab"), 0, ids, 1, &err), 2);
    assert_int_equal(ids[0], tid(SP "hello"));
    assert_int_equal(ids[1], -7); /* nothing past cap */
    assert_int_equal(exsa_tokenize(t, S("hello ab"), 0, NULL, 0, &err), 2);
    assert_int_equal(exsa_tokenize(t, S("hello ab"), 0, ids, 4, &err), 2);
    assert_int_equal(ids[1], tid(SP "ab"));
    assert_true(exsa_tokenize(t, S("x"), 0, ids, -1, &err) < 0);
    assert_true(exsa_tokenize(t, S("x"), 0, NULL, 3, &err) < 0);
    assert_true(exsa_tokenize(t, NULL, 3, 0, ids, 4, &err) < 0);
    assert_true(exsa_tokenize(NULL, S("x"), 0, ids, 4, &err) < 0);
    assert_int_equal(exsa_tokenize(t, NULL, 0, 0, ids, 4, &err), 0);
}

/* Invalid UTF-8 -> U+FFFD per maximal ill-formed subpart (Unicode 3.9),
 * the replacements written out by hand. */
static void test_invalid_utf8(void **state)
{
    const exsa_tokenizer *t = ((mem_vocab *)*state)->t;
    static const struct {
        const char *bad, *good;
    } cases[] = {
        {"\xff", "\xef\xbf\xbd"},
        {"\x80" "a", "\xef\xbf\xbd" "a"},
        {"a\xbf\xbf", "a\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xe2\x96" "a", "\xef\xbf\xbd" "a"},        /* truncated 3-byte */
        {"a\xe2\x96", "a\xef\xbf\xbd"},              /* truncated at the end */
        {"\xf0\x9f\x98", "\xef\xbf\xbd"},            /* truncated 4-byte */
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},    /* overlong '/' */
        {"\xe0\x80\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xf5\x80", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"ab\xc3", "ab\xef\xbf\xbd"},
        {"\xc3\xa9\xc3", "\xc3\xa9\xef\xbf\xbd"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int32_t a[64], b[64], c[64];
        exsa_err err = {0};
        int64_t na = exsa_tokenize(t, cases[i].bad, strlen(cases[i].bad), 0, a, 64, &err);
        int64_t nb = exsa_tokenize(t, cases[i].good, strlen(cases[i].good), 0, b, 64, &err);
        int64_t nc = exsa_tokenize(t, cases[i].bad, strlen(cases[i].bad), 0, c, 64, &err);
        assert_true(na > 0);
        if (na != nb || memcmp(a, b, (size_t)na * 4) != 0)
            fail_msg("case %zu: invalid input tokenized unlike its replacement", i);
        assert_int_equal(na, nc);
        assert_memory_equal(a, c, (size_t)na * 4);
    }
}

/* Pushes ids one at a time; returns the concatenated output (static). */
static const char *detok_all(exsa_detok *d, const int32_t *ids, int n, size_t cap, int flush)
{
    static char acc[4096];
    char out[512];
    size_t m = 0;
    for (int i = 0; i < n; i++) {
        int k = exsa_detok_push(d, ids[i], out, cap);
        assert_true(k >= 0 && (size_t)k < (cap ? cap : 1));
        assert_true(m + (size_t)k < sizeof acc);
        memcpy(acc + m, out, (size_t)k);
        m += (size_t)k;
    }
    for (int k; flush && (k = exsa_detok_flush(d, out, cap)) > 0;) {
        memcpy(acc + m, out, (size_t)k);
        m += (size_t)k;
    }
    acc[m] = 0;
    return acc;
}

static void test_detok_stream(void **state)
{
    const exsa_tokenizer *t = ((mem_vocab *)*state)->t;
    exsa_err err = {0};
    exsa_detok *d = exsa_detok_create(t, 0, &err);
    assert_non_null(d);
    char out[64];
    /* The first piece loses its space prefix, later ones keep theirs. */
    assert_int_equal(exsa_detok_push(d, tid(SP "hello"), out, sizeof out), 5);
    assert_string_equal(out, "hello");
    assert_int_equal(exsa_detok_push(d, tid(SP "ab"), out, sizeof out), 3);
    assert_string_equal(out, " ab");
    /* A 2-byte character split over two byte tokens. */
    assert_int_equal(exsa_detok_push(d, byte_id(0xC3), out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(exsa_detok_push(d, byte_id(0xA9), out, sizeof out), 2);
    assert_string_equal(out, "\xc3\xa9");
    /* A 4-byte emoji over four pushes. */
    const unsigned char emoji[4] = {0xF0, 0x9F, 0x98, 0x80};
    for (int i = 0; i < 3; i++)
        assert_int_equal(exsa_detok_push(d, byte_id(emoji[i]), out, sizeof out), 0);
    assert_int_equal(exsa_detok_push(d, byte_id(emoji[3]), out, sizeof out), 4);
    assert_memory_equal(out, emoji, 4);
    /* A start that can never complete becomes U+FFFD when the next byte
     * shows it. */
    assert_int_equal(exsa_detok_push(d, byte_id(0xE2), out, sizeof out), 0);
    assert_int_equal(exsa_detok_push(d, tid("a"), out, sizeof out), 4);
    assert_string_equal(out, "\xef\xbf\xbd" "a");
    /* ... or at flush. */
    assert_int_equal(exsa_detok_push(d, byte_id(0xF0), out, sizeof out), 0);
    assert_int_equal(exsa_detok_push(d, byte_id(0x9F), out, sizeof out), 0);
    assert_int_equal(exsa_detok_flush(d, out, sizeof out), 3);
    assert_string_equal(out, "\xef\xbf\xbd");
    assert_int_equal(exsa_detok_flush(d, out, sizeof out), 0);
    /* Control tokens are silent unless special. */
    assert_int_equal(exsa_detok_push(d, 1, out, sizeof out), 0);
    assert_true(exsa_detok_push(d, -1, out, sizeof out) < 0);
    assert_true(exsa_detok_push(d, 100000, out, sizeof out) < 0);

    /* Small buffers: text that does not fit waits; characters stay whole. */
    exsa_detok_reset(d);
    assert_int_equal(exsa_detok_push(d, tid(SP "hello"), out, 3), 2);
    assert_string_equal(out, "he");
    assert_int_equal(exsa_detok_push(d, byte_id(0xC3), out, 3), 2);
    assert_string_equal(out, "ll");
    assert_int_equal(exsa_detok_push(d, byte_id(0xA9), out, 3), 1);
    assert_string_equal(out, "o");
    assert_int_equal(exsa_detok_flush(d, out, 2), 0); /* é needs 2 bytes + NUL */
    assert_int_equal(exsa_detok_flush(d, out, 3), 2);
    assert_string_equal(out, "\xc3\xa9");
    assert_int_equal(exsa_detok_push(d, tid("a"), NULL, 0), 0);
    assert_int_equal(exsa_detok_flush(d, out, sizeof out), 1);
    assert_string_equal(out, "a");
    exsa_detok_free(d);

    d = exsa_detok_create(t, 1, &err);
    assert_non_null(d);
    int32_t ids[] = {1, tid(SP "hello"), 2};
    /* The first token (BOS) takes the "first piece" turn, as in llama.cpp. */
    assert_string_equal(detok_all(d, ids, 3, 64, 1), "<s> hello</s>");
    exsa_detok_free(d);
}

/* ------------------------------------------------------ fixture vocabs */

typedef struct {
    char **text;
    size_t *len;
    char **ids;
    int n;
} cases;

/* Splits .inp exactly as llama.cpp's test-tokenizer-0 does: on
 * "\n__ggml_vocab_test__\n", a trailing separator ends the last case. */
static int read_cases(const char *inp, size_t inp_n, char *out, cases *c)
{
    static const char sep[] = "\n__ggml_vocab_test__\n";
    const size_t sl = sizeof sep - 1;
    int cap = 16;
    c->text = malloc(cap * sizeof *c->text);
    c->len = malloc(cap * sizeof *c->len);
    c->ids = malloc(cap * sizeof *c->ids);
    c->n = 0;
    size_t pos = 0;
    while (pos < inp_n) {
        const char *m = memmem(inp + pos, inp_n - pos, sep, sl);
        size_t next = m ? (size_t)(m - inp) : inp_n;
        if (c->n == cap) {
            cap *= 2;
            c->text = realloc(c->text, cap * sizeof *c->text);
            c->len = realloc(c->len, cap * sizeof *c->len);
            c->ids = realloc(c->ids, cap * sizeof *c->ids);
        }
        c->text[c->n] = (char *)inp + pos;
        c->len[c->n] = next - pos;
        c->n++;
        pos = m ? next + sl : inp_n;
    }
    /* .out lines as std::getline sees them. */
    int lines = 0;
    char *p = out, *end = out + strlen(out);
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl)
            *nl = 0;
        if (lines < c->n)
            c->ids[lines] = p;
        lines++;
        p = nl ? nl + 1 : end;
    }
    return lines;
}

static int parse_ids(const char *s, int32_t **ids)
{
    int n = 0, cap = 16;
    *ids = malloc(cap * sizeof **ids);
    for (char *e; *s;) {
        while (*s == ' ')
            s++;
        if (!*s)
            break;
        long v = strtol(s, &e, 10);
        if (e == s)
            break;
        if (n == cap)
            *ids = realloc(*ids, (cap *= 2) * sizeof **ids);
        (*ids)[n++] = (int32_t)v;
        s = e;
    }
    return n;
}

static const char *VOCABS[] = {"llama-spm", "phi-3", "gpt-2", "deepseek-llm", "starcoder",
                               "bert-bge"};

static int g_fixture_fail;

/* Reference replacement of invalid UTF-8, independent of the code under
 * test: the sets of valid sequences and of their proper prefixes come from
 * encoding every Unicode scalar value. */
static uint8_t g_pp1[256], g_pp2[1 << 16], *g_pp3, g_f2[1 << 16], *g_f3;

static void ref_tables(void)
{
    if (g_pp3)
        return;
    g_pp3 = calloc(1 << 24, 1);
    g_f3 = calloc(1 << 24, 1);
    assert_true(g_pp3 && g_f3);
    for (uint32_t cp = 0x80; cp <= 0x10FFFF; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        uint8_t e[4];
        int n;
        if (cp < 0x800) {
            e[0] = (uint8_t)(0xC0 | cp >> 6), e[1] = (uint8_t)(0x80 | (cp & 63)), n = 2;
        } else if (cp < 0x10000) {
            e[0] = (uint8_t)(0xE0 | cp >> 12), e[1] = (uint8_t)(0x80 | (cp >> 6 & 63));
            e[2] = (uint8_t)(0x80 | (cp & 63)), n = 3;
        } else {
            e[0] = (uint8_t)(0xF0 | cp >> 18), e[1] = (uint8_t)(0x80 | (cp >> 12 & 63));
            e[2] = (uint8_t)(0x80 | (cp >> 6 & 63)), e[3] = (uint8_t)(0x80 | (cp & 63)), n = 4;
        }
        g_pp1[e[0]] = 1;
        uint32_t k2 = (uint32_t)e[0] << 8 | e[1], k3 = k2 << 8 | e[2];
        if (n == 2)
            g_f2[k2] = 1;
        if (n >= 3)
            g_pp2[k2] = 1;
        if (n == 3)
            g_f3[k3] = 1;
        if (n == 4)
            g_pp3[k3] = 1;
    }
}

static size_t ref_sanitize(const unsigned char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t left = n - i, k = 0;
        uint32_t k2 = left >= 2 ? (uint32_t)s[i] << 8 | s[i + 1] : 0;
        uint32_t k3 = left >= 3 ? k2 << 8 | s[i + 2] : 0;
        if (s[i] < 0x80)
            k = 1;
        else if (left >= 2 && g_f2[k2])
            k = 2;
        else if (left >= 3 && g_f3[k3])
            k = 3;
        else if (left >= 4 && g_pp3[k3] && (s[i + 3] & 0xC0) == 0x80)
            k = 4;
        if (k) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
            continue;
        }
        /* Maximal subpart: the longest proper prefix of a valid sequence. */
        size_t sub = left >= 3 && g_pp3[k3] ? 3 : left >= 2 && g_pp2[k2] ? 2 : 1;
        memcpy(out + o, "\xef\xbf\xbd", 3);
        o += 3;
        i += sub;
    }
    return o;
}

static void random_bytes_check(const exsa_tokenizer *t, const exsa_vocab *v, exsa_detok *d,
                               const char *name)
{
    ref_tables();
    uint64_t rng = 12345;
    char buf[96];
    int32_t a[512], b[512];
    for (int it = 0; it < 300; it++) {
        size_t n = exsa_test_rand_u64(&rng) % sizeof buf;
        for (size_t i = 0; i < n; i++) {
            uint64_t r = exsa_test_rand_u64(&rng);
            /* Mix ASCII, UTF-8 lead/continuation bytes and junk. */
            buf[i] = (char)(r % 4 == 0 ? 0x80 + (r >> 8) % 0x80 : r % 4 == 1 ? 0xC0 + (r >> 8) % 0x40
                                                                              : 0x20 + (r >> 8) % 0x60);
        }
        int flags = it % 2 ? EXSA_TOK_PARSE_SPECIAL | EXSA_TOK_ADD_SPECIAL : 0;
        exsa_err err = {0};
        int64_t na = exsa_tokenize(t, buf, n, flags, a, 512, &err);
        int64_t nb = exsa_tokenize(t, buf, n, flags, b, 512, &err);
        if (na < 0 || na != nb || memcmp(a, b, (size_t)(na < 512 ? na : 512) * 4) != 0) {
            fprintf(stderr, "%s: random input %d not deterministic (%lld/%lld) %s\n", name, it,
                    (long long)na, (long long)nb, err.msg);
            g_fixture_fail = 1;
            return;
        }
        for (int64_t i = 0; i < na && i < 512; i++)
            if (a[i] < 0 || a[i] >= exsa_vocab_n_tokens(v)) {
                fprintf(stderr, "%s: random input %d gave id %d\n", name, it, a[i]);
                g_fixture_fail = 1;
                return;
            }
        if (flags || exsa_vocab_kind(v) == EXSA_VOCAB_WPM || na > 512)
            continue;
        /* Lossless kinds give back the text with U+FFFD replacements. */
        char want[3 * sizeof buf + 1];
        size_t nw = ref_sanitize((const unsigned char *)buf, n, want);
        exsa_detok_reset(d);
        const char *back = detok_all(d, a, (int)na, 256, 1);
        if (strlen(back) != nw || memcmp(back, want, nw) != 0) {
            fprintf(stderr, "%s: random input %d does not round-trip\n", name, it);
            g_fixture_fail = 1;
            return;
        }
    }
}

static void run_vocab(const char *dir, const char *name)
{
    char path[1024], pinp[1100], pout[1100];
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", dir, name);
    snprintf(pinp, sizeof pinp, "%s.inp", path);
    snprintf(pout, sizeof pout, "%s.out", path);
    exsa_err err = {0};
    exsa_gguf *g = exsa_gguf_open(path, &err);
    exsa_vocab *v = g ? exsa_vocab_load(g, &err) : NULL;
    exsa_tokenizer *t = v ? exsa_tokenizer_create(v, &err) : NULL;
    size_t ni = 0, no = 0;
    char *inp = exsa_test_read_file(pinp, &ni), *out = exsa_test_read_file(pout, &no);
    if (!t || !inp || !out) {
        printf("TOKCASES %s 0/? (cannot load: %s)\n", name, t ? "missing .inp/.out" : err.msg);
        g_fixture_fail = 1;
        goto done;
    }
    out[no] = 0;
    cases c;
    int lines = read_cases(inp, ni, out, &c);
    if (lines != c.n) {
        printf("TOKCASES %s 0/%d (.out has %d lines)\n", name, c.n, lines);
        g_fixture_fail = 1;
        goto free_cases;
    }
    int matched = 0, lossless = exsa_vocab_kind(v) != EXSA_VOCAB_WPM, rt_ok = 0, framing_bad = 0;
    exsa_detok *d = exsa_detok_create(t, 0, &err);
    assert_non_null(d);
    for (int i = 0; i < c.n; i++) {
        int32_t *want;
        int nw = parse_ids(c.ids[i], &want);
        int32_t got[4096];
        int64_t n = exsa_tokenize(t, c.text[i], c.len[i], 0, got, 4096, &err);
        if (n == nw && memcmp(got, want, (size_t)nw * 4) == 0) {
            matched++;
        } else {
            fprintf(stderr, "%s case %d '%.*s':\n  want", name, i, (int)c.len[i], c.text[i]);
            for (int k = 0; k < nw; k++)
                fprintf(stderr, " %d", want[k]);
            fprintf(stderr, "\n  got ");
            for (int64_t k = 0; k < n && k < 4096; k++)
                fprintf(stderr, " %d", got[k]);
            fprintf(stderr, "%s%s\n", n < 0 ? " error: " : "", n < 0 ? err.msg : "");
        }
        /* With ADD_SPECIAL the same ids come framed: "<s>" first for SPM,
         * "[CLS]" ... "[SEP]" for BERT, BOS for BPE vocabs that ask for it. */
        int32_t framed[4096];
        int64_t nf = exsa_tokenize(t, c.text[i], c.len[i], EXSA_TOK_ADD_SPECIAL, framed, 4096,
                                   &err);
        int kind = exsa_vocab_kind(v), pre = 0, post = 0;
        const char *first = NULL, *last = NULL;
        if (kind == EXSA_VOCAB_SPM)
            pre = 1, first = "<s>";
        else if (kind == EXSA_VOCAB_WPM)
            pre = post = 1, first = "[CLS]", last = "[SEP]";
        else if (exsa_vocab_add_bos(v))
            pre = 1;
        size_t sl;
        const char *s0 = nf > 0 ? exsa_vocab_token_str(v, framed[0], &sl) : "";
        int frame_ok = nf == nw + pre + post &&
                       memcmp(framed + pre, want, (size_t)nw * 4) == 0 &&
                       (!first || (sl == strlen(first) && memcmp(s0, first, sl) == 0));
        if (frame_ok && last) {
            const char *sz = exsa_vocab_token_str(v, framed[nf - 1], &sl);
            frame_ok = sl == strlen(last) && memcmp(sz, last, sl) == 0;
        }
        if (!frame_ok) {
            fprintf(stderr, "%s case %d: wrong BOS/EOS framing with ADD_SPECIAL\n", name, i);
            framing_bad++;
        }
        if (lossless) {
            /* Round trip through the streaming detokenizer from the
             * reference ids (independent of our encoder). */
            exsa_detok_reset(d);
            const char *back = detok_all(d, want, nw, 256, 1);
            if (strlen(back) == c.len[i] && memcmp(back, c.text[i], c.len[i]) == 0)
                rt_ok++;
            else
                fprintf(stderr, "%s case %d: detokenized to '%s' not '%.*s'\n", name, i, back,
                        (int)c.len[i], c.text[i]);
        }
        free(want);
    }
    random_bytes_check(t, v, d, name);
    exsa_detok_free(d);
    printf("TOKCASES %s %d/%d", name, matched, c.n);
    if (lossless)
        printf(" (round trip %d/%d)", rt_ok, c.n);
    printf("\n");
    if (matched != c.n || (lossless && rt_ok != c.n) || framing_bad)
        g_fixture_fail = 1;
free_cases:
    free(c.text);
    free(c.len);
    free(c.ids);
done:
    free(inp);
    free(out);
    exsa_tokenizer_free(t);
    exsa_vocab_free(v);
    exsa_gguf_close(g);
}

static void test_fixture_vocabs(void **state)
{
    const char *dir = *state;
    g_fixture_fail = 0;
    for (size_t i = 0; i < sizeof VOCABS / sizeof VOCABS[0]; i++)
        run_vocab(dir, VOCABS[i]);
    free(g_pp3);
    free(g_f3);
    g_pp3 = g_f3 = NULL;
    assert_int_equal(g_fixture_fail, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_spm_merges, setup_spm, teardown_spm),
        cmocka_unit_test_setup_teardown(test_special_tokens, setup_spm, teardown_spm),
        cmocka_unit_test_setup_teardown(test_cap, setup_spm, teardown_spm),
        cmocka_unit_test_setup_teardown(test_invalid_utf8, setup_spm, teardown_spm),
        cmocka_unit_test_setup_teardown(test_detok_stream, setup_spm, teardown_spm),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (rc)
        return rc;
    const char *dir = exsa_test_fixtures_dir();
    if (!dir) {
        printf("test_tokenizer: ../shared/fixtures not found: fixture vocabs skipped\n");
        return 77;
    }
    const struct CMUnitTest ftests[] = {
        cmocka_unit_test_prestate(test_fixture_vocabs, (void *)dir),
    };
    return cmocka_run_group_tests(ftests, NULL, NULL);
}
