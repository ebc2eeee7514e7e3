/* Grammar engine tests.
 *
 * Each small grammar comes with an independent recognizer written here in
 * plain C (ref) and, for the recursive ones, a hand-written viable-prefix
 * predicate; for the others a prefix is viable when some string of at most
 * M bytes over the case's alphabet that extends it is accepted by ref (their
 * completions are at most 3 bytes, and M leaves 6 beyond every compared
 * prefix). For every string up to N bytes the test checks that the matcher
 * accepts exactly the viable prefixes, reports done() exactly for sentences,
 * and that its mask over a synthetic vocabulary (every single byte of the
 * alphabet, every pair, some triples, a duplicate and an end-of-generation
 * token) allows a token iff the reference says the extended prefix is
 * viable, and iff accepting the token really succeeds.
 * Then token elements, malformed grammars (each error must name the
 * problem), and a fuzz loop over random and mutated grammars that also
 * accepts random allowed tokens (every allowed token must be accepted).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/grammar.h"
#include "test_util.h"

typedef int (*lang_fn)(const unsigned char *s, size_t n);

typedef struct {
    const char *name;
    const char *gbnf;
    const char *alpha; /* bytes of the enumeration alphabet */
    int n_alpha;
    int max_len;   /* N: prefixes compared */
    lang_fn ref;   /* sentence? */
    lang_fn viable; /* prefix of a sentence? NULL: by enumeration */
} gcase;

/* Strict UTF-8 to code points; -1 when invalid. */
static int decode(const unsigned char *s, size_t n, uint32_t *cp, int cap)
{
    int k = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        uint32_t v;
        int len;
        if (c < 0x80)
            v = c, len = 1;
        else if (c >= 0xC2 && c <= 0xDF)
            v = c & 0x1F, len = 2;
        else if (c >= 0xE0 && c <= 0xEF)
            v = c & 0x0F, len = 3;
        else
            return -1;
        if (i + (size_t)len > n)
            return -1;
        for (int j = 1; j < len; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return -1;
            v = (v << 6) | (s[i + j] & 0x3F);
        }
        if ((len == 3 && v < 0x800) || k >= cap)
            return -1;
        cp[k++] = v;
        i += (size_t)len;
    }
    return k;
}

static int is_str(const unsigned char *s, size_t n, const char *t)
{
    return n == strlen(t) && memcmp(s, t, n) == 0;
}

static int ref_lit(const unsigned char *s, size_t n)
{
    return is_str(s, n, "ab") || is_str(s, n, "ba");
}

static int ref_plus(const unsigned char *s, size_t n)
{
    if (n < 2 || s[n - 1] != 'c')
        return 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (s[i] != 'a' && s[i] != 'b')
            return 0;
    return 1;
}

static int ref_neg(const unsigned char *s, size_t n)
{
    if (n < 1 || s[n - 1] != 'a')
        return 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (s[i] == 'a')
            return 0;
    return 1;
}

static int ref_bounds(const unsigned char *s, size_t n)
{
    size_t k = 0;
    while (k < n && s[k] == 'a')
        k++;
    return k >= 2 && k <= 4 && (k == n || (k + 1 == n && s[k] == 'b'));
}

static int ref_exact(const unsigned char *s, size_t n)
{
    if (is_str(s, n, "abab"))
        return 1;
    if (n < 3)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] != 'c')
            return 0;
    return 1;
}

static int ref_balanced(const unsigned char *s, size_t n)
{
    int d = 0;
    for (size_t i = 0; i < n; i++) {
        d += s[i] == '(' ? 1 : s[i] == ')' ? -1 : 1000;
        if (d < 0 || d >= 1000)
            return 0;
    }
    return d == 0;
}

static int via_balanced(const unsigned char *s, size_t n)
{
    int d = 0;
    for (size_t i = 0; i < n; i++) {
        d += s[i] == '(' ? 1 : s[i] == ')' ? -1 : 1000;
        if (d < 0 || d >= 1000)
            return 0;
    }
    return 1;
}

/* [^k x ]^k */
static int brackets(const unsigned char *s, size_t n, int prefix)
{
    size_t i = 0, open = 0, close = 0;
    while (i < n && s[i] == '[')
        i++, open++;
    if (i == n)
        return prefix;
    if (s[i++] != 'x')
        return 0;
    while (i < n && s[i] == ']')
        i++, close++;
    if (i != n || close > open)
        return 0;
    return prefix || close == open;
}

static int ref_brackets(const unsigned char *s, size_t n)
{
    return brackets(s, n, 0);
}

static int via_brackets(const unsigned char *s, size_t n)
{
    return brackets(s, n, 1);
}

static int ref_nullable(const unsigned char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == 'x')
        i++;
    while (i < n && s[i] == 'y')
        i++;
    return i == n;
}

static int ref_groups(const unsigned char *s, size_t n)
{
    if (is_str(s, n, "d") || is_str(s, n, "da") || is_str(s, n, "dac"))
        return 1;
    if (n == 0 || n % 2)
        return 0;
    for (size_t i = 0; i < n; i += 2)
        if ((s[i] != 'a' && s[i] != 'b') || s[i + 1] != 'c')
            return 0;
    return 1;
}

static int ref_utf8_class(const unsigned char *s, size_t n)
{
    uint32_t cp[16];
    int k = decode(s, n, cp, 16);
    if (k < 1)
        return 0;
    for (int i = 0; i < k; i++)
        if (cp[i] < 0x3B1 || cp[i] > 0x3B3)
            return 0;
    return 1;
}

static int ref_any(const unsigned char *s, size_t n)
{
    uint32_t cp[16];
    int k = decode(s, n, cp, 16);
    return k == 2 && cp[1] == 'z';
}

static int ref_escapes(const unsigned char *s, size_t n)
{
    if (n < 3 || s[0] != 'A' || s[1] != 'B')
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] != '\t' && s[i] != '\n')
            return 0;
    return 1;
}

static int ref_negrange(const unsigned char *s, size_t n)
{
    if (n != 2)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == 'a' || s[i] == 'b' || s[i] == ']')
            return 0;
    return 1;
}

static int anbn(const unsigned char *s, size_t n, int prefix)
{
    size_t i = 0, a = 0, b = 0;
    while (i < n && s[i] == 'a')
        i++, a++;
    while (i < n && s[i] == 'b')
        i++, b++;
    if (i != n || b > a)
        return 0;
    return prefix || a == b;
}

static int ref_anbn(const unsigned char *s, size_t n)
{
    return anbn(s, n, 0);
}

static int via_anbn(const unsigned char *s, size_t n)
{
    return anbn(s, n, 1);
}

static int ref_optstar(const unsigned char *s, size_t n)
{
    if (n < 1 || s[n - 1] != 'b')
        return 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (s[i] != 'a')
            return 0;
    return 1;
}

static int ref_utf8_lit(const unsigned char *s, size_t n)
{
    return is_str(s, n, "\xC3\xA9") || is_str(s, n, "\xC3\xA9x");
}

static int ref_seq_rep(const unsigned char *s, size_t n)
{
    /* ("ab" | "c"){1,3} "." */
    if (n < 2 || s[n - 1] != '.')
        return 0;
    int items = 0;
    for (size_t i = 0; i + 1 < n;) {
        if (s[i] == 'c')
            i++;
        else if (s[i] == 'a' && i + 2 < n && s[i + 1] == 'b')
            i += 2;
        else
            return 0;
        items++;
    }
    return items >= 1 && items <= 3;
}

static const gcase CASES[] = {
    {"literals", "root ::= \"ab\" | \"ba\"", "abc", 3, 6, ref_lit, NULL},
    {"class-plus", "root ::= [a-b]+ \"c\"", "abc", 3, 6, ref_plus, NULL},
    {"negated-star", "root ::= [^a]* \"a\"  # comment", "abc", 3, 6, ref_neg, NULL},
    {"bounds", "root ::= \"a\"{2,4} \"b\"?", "ab", 2, 7, ref_bounds, NULL},
    {"exact-and-min", "root ::= (\"ab\"){2} | \"c\"{3,}", "abc", 3, 6, ref_exact, NULL},
    {"balanced", "root ::= (\"(\" root \")\")*", "()", 2, 8, ref_balanced, via_balanced},
    {"nested-rules", "root ::= \"[\" root \"]\" | x\nx ::= \"x\"", "[]x", 3, 6, ref_brackets,
     via_brackets},
    {"nullable", "root ::= a b\na ::= \"x\"?\nb ::= \"y\"*", "xyz", 3, 6, ref_nullable, NULL},
    {"groups", "root ::= ((\"a\" | \"b\") \"c\")+ | \"d\" (\"a\" (\"c\")?)?", "abcd", 4, 5,
     ref_groups, NULL},
    {"utf8-class", "root ::= [\xCE\xB1-\xCE\xB3]+", "\xCE\xB1\xB4x", 4, 5, ref_utf8_class, NULL},
    {"any-char", "root ::= . \"z\"", "az\xCE\xB1", 4, 5, ref_any, NULL},
    {"escapes", "root ::= \"\\x41\\u0042\" [\\t\\n]+", "AB\t\n", 4, 5, ref_escapes, NULL},
    {"negated-range", "root ::= [^\\x61-\\x62\\]]{2}", "ab]c", 4, 5, ref_negrange, NULL},
    {"anbn", "root ::= | \"a\" root \"b\"", "ab", 2, 8, ref_anbn, via_anbn},
    {"nullable-loop", "root ::= (\"a\"?)* \"b\"", "ab", 2, 7, ref_optstar, NULL},
    {"utf8-literal", "root ::= \"\xC3\xA9\" \"x\"?", "\xC3\xA9x", 3, 6, ref_utf8_lit, NULL},
    {"seq-repeat", "root ::=\n  (\"ab\"\n   | \"c\"){1,3} \".\"", "abc.", 4, 5, ref_seq_rep,
     NULL},
};

#define EXT 6 /* enumeration bytes beyond a compared string (incl. a token) */

/* Viability by enumeration: viab[idx(s)] for every s of length <= M. */
typedef struct {
    const gcase *c;
    int M;
    size_t *base; /* index of the first string of each length */
    unsigned char *viab;
} refvi;

static size_t str_index(const refvi *r, const unsigned char *s, size_t n)
{
    size_t v = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = memchr(r->c->alpha, s[i], (size_t)r->c->n_alpha);
        v = v * (size_t)r->c->n_alpha + (size_t)(p - r->c->alpha);
    }
    return r->base[n] + v;
}

static void refvi_build(refvi *r, const gcase *c)
{
    r->c = c;
    r->M = c->max_len + EXT;
    r->base = calloc((size_t)r->M + 2, sizeof(size_t));
    size_t total = 0, pw = 1;
    for (int L = 0; L <= r->M; L++) {
        r->base[L] = total;
        total += pw;
        pw *= (size_t)c->n_alpha;
    }
    r->base[r->M + 1] = total;
    r->viab = calloc(total, 1);
    assert_non_null(r->viab);
    unsigned char s[64];
    for (int L = r->M; L >= 0; L--) {
        size_t cnt = r->base[L + 1] - r->base[L];
        for (size_t v = 0; v < cnt; v++) {
            size_t x = v;
            for (int i = L - 1; i >= 0; i--) {
                s[i] = (unsigned char)c->alpha[x % (size_t)c->n_alpha];
                x /= (size_t)c->n_alpha;
            }
            int ok = c->ref(s, (size_t)L);
            for (int a = 0; !ok && L < r->M && a < c->n_alpha; a++) {
                s[L] = (unsigned char)c->alpha[a];
                ok = r->viab[str_index(r, s, (size_t)L + 1)];
            }
            r->viab[r->base[L] + v] = (unsigned char)ok;
        }
    }
}

static int ref_viable(const refvi *r, const unsigned char *s, size_t n)
{
    if (r->c->viable)
        return r->c->viable(s, n);
    assert_true(n <= (size_t)r->M);
    return r->viab[str_index(r, s, n)];
}

/* Synthetic vocabulary over an alphabet: singles, pairs, 8 triples, a
 * duplicate of token 0 and an EOG token (last). */
typedef struct {
    char tok[64][4];
    size_t len[64];
    int n;
    int32_t eog;
    exsa_grammar_vocab *gv;
} synvocab;

static void synvocab_build(synvocab *v, const char *alpha, int na)
{
    memset(v, 0, sizeof *v);
    for (int a = 0; a < na; a++) {
        v->tok[v->n][0] = alpha[a];
        v->len[v->n++] = 1;
    }
    for (int a = 0; a < na; a++)
        for (int b = 0; b < na; b++) {
            v->tok[v->n][0] = alpha[a];
            v->tok[v->n][1] = alpha[b];
            v->len[v->n++] = 2;
        }
    for (int t = 0; t < 8; t++) {
        for (int i = 0; i < 3; i++)
            v->tok[v->n][i] = alpha[(t * 7 + i * 3 + i * t) % na];
        v->len[v->n++] = 3;
    }
    v->tok[v->n][0] = alpha[0];
    v->len[v->n++] = 1;
    memcpy(v->tok[v->n], "EOS", 3);
    v->len[v->n] = 3;
    v->eog = v->n++;
    const char *ptr[64];
    for (int i = 0; i < v->n; i++)
        ptr[i] = v->tok[i];
    exsa_err err = {0};
    v->gv = exsa_grammar_vocab_from_strings(ptr, v->len, v->n, &v->eog, 1, &err);
    if (!v->gv)
        print_error("vocab: %s\n", err.msg);
    assert_non_null(v->gv);
}

static int bit(const uint32_t *m, int i)
{
    return (m[i >> 5] >> (i & 31)) & 1;
}

typedef struct {
    const gcase *c;
    refvi *r;
    synvocab *v;
    exsa_grammar_matcher *m;
    long checked;
} walkctx;

static void check_prefix(walkctx *w, unsigned char *s, size_t n)
{
    exsa_grammar_matcher *m = w->m;
    exsa_grammar_matcher_reset(m);
    int rc = exsa_grammar_matcher_accept_bytes(m, (const char *)s, n);
    int viable = ref_viable(w->r, s, n);
    if ((rc == 0) != viable)
        print_error("%s: prefix of %zu bytes: matcher %s, reference %s\n", w->c->name, n,
                    rc == 0 ? "alive" : "dead", viable ? "viable" : "dead");
    assert_int_equal(rc == 0, viable);
    if (!viable)
        return;
    int sentence = w->c->ref(s, n);
    if (exsa_grammar_matcher_done(m) != sentence)
        print_error("%s: '%.*s' done=%d ref=%d\n", w->c->name, (int)n, s,
                    exsa_grammar_matcher_done(m), sentence);
    assert_int_equal(exsa_grammar_matcher_done(m), sentence);
    uint32_t mask[4];
    int count = exsa_grammar_matcher_mask(m, mask);
    assert_true(count >= 0);
    int pop = 0;
    for (int t = 0; t < w->v->n; t++)
        pop += bit(mask, t);
    assert_int_equal(count, pop);
    assert_int_equal(bit(mask, w->v->eog), sentence);
    unsigned char e[64];
    memcpy(e, s, n);
    for (int t = 0; t < w->v->n; t++) {
        if (t == w->v->eog)
            continue;
        memcpy(e + n, w->v->tok[t], w->v->len[t]);
        int want = ref_viable(w->r, e, n + w->v->len[t]);
        if (bit(mask, t) != want)
            print_error("%s: after '%.*s' token '%.*s': mask %d, reference %d\n", w->c->name,
                        (int)n, s, (int)w->v->len[t], w->v->tok[t], bit(mask, t), want);
        assert_int_equal(bit(mask, t), want);
        /* Brute force on the matcher itself: accept must agree with the mask. */
        exsa_grammar_matcher_reset(m);
        assert_int_equal(exsa_grammar_matcher_accept_bytes(m, (const char *)s, n), 0);
        int arc = exsa_grammar_matcher_accept(m, t);
        assert_int_equal(arc == 0, want);
        w->checked++;
    }
    /* A rejected token leaves the state as it was. */
    exsa_grammar_matcher_reset(m);
    assert_int_equal(exsa_grammar_matcher_accept_bytes(m, (const char *)s, n), 0);
    for (int t = 0; t < w->v->n; t++)
        if (!bit(mask, t)) {
            assert_int_equal(exsa_grammar_matcher_accept(m, t), EXSA_EINVAL);
            uint32_t again[4];
            assert_int_equal(exsa_grammar_matcher_mask(m, again), count);
            assert_memory_equal(again, mask, sizeof(uint32_t) * ((size_t)(w->v->n + 31) / 32));
            break;
        }
    if (n >= (size_t)w->c->max_len)
        return;
    for (int a = 0; a < w->c->n_alpha; a++) {
        s[n] = (unsigned char)w->c->alpha[a];
        check_prefix(w, s, n + 1);
    }
}

static void test_reference_grammars(void **state)
{
    (void)state;
    for (size_t ci = 0; ci < sizeof CASES / sizeof CASES[0]; ci++) {
        const gcase *c = &CASES[ci];
        exsa_err err = {0};
        exsa_grammar *g = exsa_grammar_parse(c->gbnf, strlen(c->gbnf), NULL, &err);
        if (!g)
            print_error("%s: %s\n", c->name, err.msg);
        assert_non_null(g);
        synvocab v;
        synvocab_build(&v, c->alpha, c->n_alpha);
        exsa_grammar_matcher *m = exsa_grammar_matcher_create(g, v.gv, &err);
        assert_non_null(m);
        refvi r = {0};
        if (!c->viable)
            refvi_build(&r, c);
        r.c = c;
        walkctx w = {c, &r, &v, m, 0};
        unsigned char s[64];
        check_prefix(&w, s, 0);
        assert_true(w.checked > 0);
        free(r.base);
        free(r.viab);
        exsa_grammar_matcher_free(m);
        exsa_grammar_vocab_free(v.gv);
        exsa_grammar_free(g);
    }
}

/* The reference itself must reject: a sanity check that the cases can fail
 * (a matcher that allowed everything would disagree here). */
static void test_reference_is_discriminating(void **state)
{
    (void)state;
    const gcase *c = &CASES[5]; /* balanced */
    exsa_err err = {0};
    exsa_grammar *g = exsa_grammar_parse(c->gbnf, strlen(c->gbnf), NULL, &err);
    assert_non_null(g);
    synvocab v;
    synvocab_build(&v, c->alpha, c->n_alpha);
    exsa_grammar_matcher *m = exsa_grammar_matcher_create(g, v.gv, &err);
    assert_non_null(m);
    assert_int_equal(exsa_grammar_matcher_accept_bytes(m, "(()", 3), 0);
    assert_false(exsa_grammar_matcher_done(m));
    assert_int_equal(exsa_grammar_matcher_accept_bytes(m, "))", 2), EXSA_EINVAL);
    assert_int_equal(exsa_grammar_matcher_accept_bytes(m, ")", 1), 0);
    assert_true(exsa_grammar_matcher_done(m));
    exsa_grammar_matcher_free(m);
    exsa_grammar_vocab_free(v.gv);
    exsa_grammar_free(g);
}

static void test_token_elements(void **state)
{
    (void)state;
    const char *toks[] = {"a", "b", "<|x|>", "c", "</s>", "<think>"};
    size_t lens[6];
    for (int i = 0; i < 6; i++)
        lens[i] = strlen(toks[i]);
    int32_t eog = 4;
    exsa_err err = {0};
    exsa_grammar_vocab *gv = exsa_grammar_vocab_from_strings(toks, lens, 6, &eog, 1, &err);
    assert_non_null(gv);
    const char *src = "root ::= \"a\" <|x|> \"b\" | <[3]> !<[0]> | <think> \"a\"";
    exsa_grammar *g = exsa_grammar_parse(src, strlen(src), NULL, &err);
    if (!g)
        print_error("%s\n", err.msg);
    assert_non_null(g);
    exsa_grammar_matcher *m = exsa_grammar_matcher_create(g, gv, &err);
    assert_non_null(m);
    uint32_t mask[1];
    assert_int_equal(exsa_grammar_matcher_mask(m, mask), 3);
    assert_int_equal(mask[0], (1u << 0) | (1u << 3) | (1u << 5));
    assert_int_equal(exsa_grammar_matcher_accept(m, 0), 0);
    assert_int_equal(exsa_grammar_matcher_mask(m, mask), 1);
    assert_int_equal(mask[0], 1u << 2);
    /* The special token is matched as a token, not by its text's bytes. */
    assert_int_equal(exsa_grammar_matcher_accept_bytes(m, "<|x|>", 5), EXSA_EINVAL);
    assert_int_equal(exsa_grammar_matcher_accept(m, 1), EXSA_EINVAL);
    assert_int_equal(exsa_grammar_matcher_accept(m, 2), 0);
    assert_int_equal(exsa_grammar_matcher_accept(m, 1), 0);
    assert_true(exsa_grammar_matcher_done(m));
    assert_int_equal(exsa_grammar_matcher_mask(m, mask), 1);
    assert_int_equal(mask[0], 1u << 4);
    assert_int_equal(exsa_grammar_matcher_accept(m, 4), 0);
    assert_int_equal(exsa_grammar_matcher_mask(m, mask), 0);
    assert_int_equal(exsa_grammar_matcher_accept(m, 0), EXSA_EINVAL);

    exsa_grammar_matcher_reset(m);
    assert_false(exsa_grammar_matcher_done(m));
    assert_int_equal(exsa_grammar_matcher_accept(m, 4), EXSA_EINVAL); /* EOG too early */
    assert_int_equal(exsa_grammar_matcher_accept(m, 3), 0);
    /* !<[0]>: every non-EOG token but 0. */
    assert_int_equal(exsa_grammar_matcher_mask(m, mask), 4);
    assert_int_equal(mask[0], (1u << 1) | (1u << 2) | (1u << 3) | (1u << 5));
    assert_int_equal(exsa_grammar_matcher_accept(m, 0), EXSA_EINVAL);
    assert_int_equal(exsa_grammar_matcher_accept(m, 5), 0);
    assert_true(exsa_grammar_matcher_done(m));

    exsa_grammar_matcher_reset(m);
    assert_int_equal(exsa_grammar_matcher_accept(m, 5), 0);
    assert_int_equal(exsa_grammar_matcher_accept(m, 0), 0);
    assert_true(exsa_grammar_matcher_done(m));
    exsa_grammar_matcher_free(m);
    exsa_grammar_free(g);

    /* Token text that is not one token of the vocabulary; id out of range. */
    const char *bad[] = {"root ::= <|nope|>", "root ::= <[99]>"};
    const char *want[] = {"<|nope|>", "out of range"};
    for (int i = 0; i < 2; i++) {
        g = exsa_grammar_parse(bad[i], strlen(bad[i]), NULL, &err);
        assert_non_null(g);
        memset(&err, 0, sizeof err);
        assert_null(exsa_grammar_matcher_create(g, gv, &err));
        if (!strstr(err.msg, want[i]))
            print_error("got '%s'\n", err.msg);
        assert_non_null(strstr(err.msg, want[i]));
        exsa_grammar_free(g);
    }
    exsa_grammar_vocab_free(gv);
}

static const char *JSON_GBNF =
    "root   ::= object\n"
    "value  ::= object | array | string | number | (\"true\" | \"false\" | \"null\") ws\n"
    "object ::=\n"
    "  \"{\" ws (\n"
    "            string \":\" ws value\n"
    "    (\",\" ws string \":\" ws value)*\n"
    "  )? \"}\" ws\n"
    "array  ::=\n"
    "  \"[\" ws (\n"
    "            value\n"
    "    (\",\" ws value)*\n"
    "  )? \"]\" ws\n"
    "string ::=\n"
    "  \"\\\"\" (\n"
    "    [^\"\\\\\\x7F\\x00-\\x1F] |\n"
    "    \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4}) # escapes\n"
    "  )* \"\\\"\" ws\n"
    "number ::= (\"-\"? ([0-9] | [1-9] [0-9]{0,15})) (\".\" [0-9]+)? ([eE] [-+]? [0-9]+)? ws\n"
    "ws ::= | \" \" | \"\\n\" [ \\t]{0,20}\n";

static void test_json_grammar(void **state)
{
    (void)state;
    exsa_err err = {0};
    exsa_grammar *g = exsa_grammar_parse(JSON_GBNF, strlen(JSON_GBNF), NULL, &err);
    if (!g)
        print_error("%s\n", err.msg);
    assert_non_null(g);
    const char *toks[] = {"{", "}", "\"", "a", "\":", " ", "1", "[", "]", ",", "\xCE", "\xB1",
                          "\xCE\xB1", "</s>"};
    size_t lens[14];
    for (int i = 0; i < 14; i++)
        lens[i] = strlen(toks[i]);
    int32_t eog = 13;
    exsa_grammar_vocab *gv = exsa_grammar_vocab_from_strings(toks, lens, 14, &eog, 1, &err);
    assert_non_null(gv);
    exsa_grammar_matcher *m = exsa_grammar_matcher_create(g, gv, &err);
    assert_non_null(m);
    const char *good[] = {"{}", "{\"a\": [1, 2.5e-3, true, null, \"x\\u00e9y\"]}",
                          "{\"\xCE\xB1\xE2\x82\xAC\": {\"b\": []}}", "{ \"k\":\n  \"v\"}"};
    const char *bad[] = {"{", "{\"a\" 1}", "[1]", "{\"a\": 01}", "{\"a\": \"\x01\"}",
                         "{\"a\": tru}", "{}}"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        exsa_grammar_matcher_reset(m);
        assert_int_equal(exsa_grammar_matcher_accept_bytes(m, good[i], strlen(good[i])), 0);
        assert_true(exsa_grammar_matcher_done(m));
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        exsa_grammar_matcher_reset(m);
        int rc = exsa_grammar_matcher_accept_bytes(m, bad[i], strlen(bad[i]));
        assert_true(rc != 0 || !exsa_grammar_matcher_done(m));
    }
    /* Byte-level tokens splitting a code point inside a string. */
    exsa_grammar_matcher_reset(m);
    int32_t seq[] = {0, 2, 10, 11, 4, 5, 6, 1};
    uint32_t mask[1];
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        assert_true(exsa_grammar_matcher_mask(m, mask) > 0);
        assert_true(bit(mask, seq[i]));
        assert_int_equal(exsa_grammar_matcher_accept(m, seq[i]), 0);
    }
    assert_true(exsa_grammar_matcher_done(m));
    assert_int_equal(exsa_grammar_matcher_mask(m, mask), 2); /* " " and EOG */
    assert_true(bit(mask, 13) && bit(mask, 5));
    /* Mid-code-point: only continuation bytes that stay in the string. */
    exsa_grammar_matcher_reset(m);
    assert_int_equal(exsa_grammar_matcher_accept_bytes(m, "{\"\xCE", 3), 0);
    assert_int_equal(exsa_grammar_matcher_mask(m, mask), 1);
    assert_int_equal(mask[0], 1u << 11);
    exsa_grammar_matcher_free(m);
    exsa_grammar_vocab_free(gv);
    exsa_grammar_free(g);
}

static void test_malformed(void **state)
{
    (void)state;
    static const struct {
        const char *src, *want;
    } bad[] = {
        {"", "empty grammar"},
        {"   # only a comment\n\n", "empty grammar"},
        {"root ::= foo", "undefined rule 'foo'"},
        {"root ::= (\"a\"", "unbalanced '('"},
        {"root ::= (\"a\" | \"b\" ]", "expected ')'"},
        {"root ::= \"a\")", "unbalanced ')'"},
        {"root ::= \"\\q\"", "bad escape '\\q'"},
        {"root ::= \"\\xZZ\"", "bad escape '\\x'"},
        {"root ::= \"\\U00110000\"", "beyond U+10FFFF"},
        {"foo ::= \"a\"", "missing root rule 'root'"},
        {"root ::= root \"a\" | \"b\"", "left recursion"},
        {"root ::= a\na ::= b \"x\"\nb ::= \"\" a", "left recursion"},
        {"root ::= \"abc", "unterminated string"},
        {"root ::= [abc", "unterminated character class"},
        {"root ::= [z-a]", "bad range"},
        {"root ::= []", "empty character class"},
        {"root ::= \"a\"{3,2}", "max below min"},
        {"root ::= \"a\"{2", "unterminated repetition"},
        {"root ::= \"a\"{99999999}", "too large"},
        {"root ::= * \"a\"", "nothing to repeat"},
        {"root \"a\"", "expected '::='"},
        {"root ::= \"a\"\nroot ::= \"b\"", "defined twice"},
        {"root ::= <[abc]>", "bad token id"},
        {"root ::= !\"a\"", "expected '<'"},
        {"root ::= <|x", "unterminated token"},
        {"root ::= \"\xFF\"", "invalid UTF-8"},
        {"root ::= \"a\" $", "unexpected '$'"},
        {"root ::= \"abcdefghijklmnop\"{90000}", "grammar too large"},
        {"::= \"a\"", "expected a rule name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        exsa_err err = {0};
        exsa_grammar *g = exsa_grammar_parse(bad[i].src, strlen(bad[i].src), NULL, &err);
        if (g || !strstr(err.msg, bad[i].want) || !strstr(err.msg, "grammar"))
            print_error("case %zu '%s': got '%s', want '%s'\n", i, bad[i].src,
                        g ? "(parsed)" : err.msg, bad[i].want);
        assert_null(g);
        assert_non_null(strstr(err.msg, bad[i].want));
        assert_int_not_equal(err.code, 0);
    }
    /* Positions: line and column of the fault. */
    exsa_err err = {0};
    const char *src = "root ::= a\na ::= \"x\" | (\"y\" \"\\k\")";
    assert_null(exsa_grammar_parse(src, strlen(src), NULL, &err));
    assert_non_null(strstr(err.msg, "line 2 col 19"));
    /* Nesting bound. */
    char deep[600];
    strcpy(deep, "root ::= ");
    size_t k = strlen(deep);
    for (int i = 0; i < 200; i++)
        deep[k++] = '(';
    deep[k] = 0;
    assert_null(exsa_grammar_parse(deep, k, NULL, &err));
    assert_non_null(strstr(err.msg, "nested deeper"));
    /* Other root name. */
    const char *alt = "start ::= \"s\"";
    exsa_grammar *g = exsa_grammar_parse(alt, strlen(alt), "start", &err);
    assert_non_null(g);
    exsa_grammar_free(g);
}

static void test_syntax_variants(void **state)
{
    (void)state;
    /* Each parses and accepts the given sentence. */
    static const struct {
        const char *src, *sentence;
    } ok[] = {
        {"root ::= rule-1 rule_2\nrule-1 ::= \"a\"\nrule_2 ::= \"b\"", "ab"},
        {"root ::= \"a\"\n  | \"b\"", "b"},
        {"root ::= \"a\" |\n  \"b\"", "b"},
        {"root ::= (\n  \"a\"   # inner comment\n  \"b\"\n)", "ab"},
        {"root ::= [\\[\\]\\-]{3}", "[-]"},
        {"root ::= [^\\n]+ \"\\n\"", "x y\n"},
        {"root ::= \"\\\"\\\\\\/\"", "\"\\/"},
        {"root ::= \"\\u00e9\\U0001F600\"", "\xC3\xA9\xF0\x9F\x98\x80"},
        {"root ::= [\xE3\x81\x81-\xE3\x82\x9F]+", "\xE3\x81\x82\xE3\x82\x93"},
        {"root ::= \"a\"{0,2} \"b\"{2,} \"c\"{0}", "abbb"},
        {"root ::= ()\"x\"", "x"},
        {"root ::= \"\" | \"a\"", ""},
        {"root ::= (\"a\" | \"b\"){2}*", "abba"},
        {"\r\nroot ::= \"a\"\r\n\r\n", "a"},
        {"root ::= x\nx ::= y\ny ::= \"a\" | \"b\" x", "ba"},
    };
    const char *toks[] = {"a"};
    size_t lens[] = {1};
    exsa_err err = {0};
    exsa_grammar_vocab *gv = exsa_grammar_vocab_from_strings(toks, lens, 1, NULL, 0, &err);
    assert_non_null(gv);
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        exsa_grammar *g = exsa_grammar_parse(ok[i].src, strlen(ok[i].src), NULL, &err);
        if (!g)
            print_error("case %zu: %s\n", i, err.msg);
        assert_non_null(g);
        exsa_grammar_matcher *m = exsa_grammar_matcher_create(g, gv, &err);
        assert_non_null(m);
        int rc = exsa_grammar_matcher_accept_bytes(m, ok[i].sentence, strlen(ok[i].sentence));
        if (rc || !exsa_grammar_matcher_done(m))
            print_error("case %zu: '%s' rc=%d done=%d\n", i, ok[i].sentence, rc,
                        exsa_grammar_matcher_done(m));
        assert_int_equal(rc, 0);
        assert_true(exsa_grammar_matcher_done(m));
        exsa_grammar_matcher_free(m);
        exsa_grammar_free(g);
    }
    exsa_grammar_vocab_free(gv);
}

/* Deep nesting grows stacks, not recursion: 20000 open brackets. */
static void test_deep_input(void **state)
{
    (void)state;
    const char *src = "root ::= \"[\" root \"]\" | \"x\"";
    exsa_err err = {0};
    exsa_grammar *g = exsa_grammar_parse(src, strlen(src), NULL, &err);
    assert_non_null(g);
    const char *toks[] = {"[", "]", "x", "[[", "]]"};
    size_t lens[] = {1, 1, 1, 2, 2};
    exsa_grammar_vocab *gv = exsa_grammar_vocab_from_strings(toks, lens, 5, NULL, 0, &err);
    assert_non_null(gv);
    exsa_grammar_matcher *m = exsa_grammar_matcher_create(g, gv, &err);
    assert_non_null(m);
    uint32_t mask[1];
    for (int i = 0; i < 10000; i++) {
        assert_int_equal(exsa_grammar_matcher_mask(m, mask), 3);
        assert_int_equal(exsa_grammar_matcher_accept(m, 3), 0);
    }
    assert_int_equal(exsa_grammar_matcher_accept(m, 2), 0);
    for (int i = 0; i < 10000; i++) {
        assert_false(exsa_grammar_matcher_done(m));
        assert_int_equal(exsa_grammar_matcher_accept(m, 4), 0);
    }
    assert_true(exsa_grammar_matcher_done(m));
    assert_int_equal(exsa_grammar_matcher_mask(m, mask), 0);
    exsa_grammar_matcher_free(m);
    exsa_grammar_vocab_free(gv);
    exsa_grammar_free(g);
}

/* A grammar whose stacks double with every byte must fail with an error,
 * not hang or eat memory: 2^k distinct stacks after k 'a's. */
static void test_explosion_bounded(void **state)
{
    (void)state;
    const char *src = "root ::= \"a\" root \"b\" | \"a\" root \"c\" | \"\"";
    exsa_err err = {0};
    exsa_grammar *g = exsa_grammar_parse(src, strlen(src), NULL, &err);
    assert_non_null(g);
    const char *toks[] = {"a", "b", "c"};
    size_t lens[] = {1, 1, 1};
    exsa_grammar_vocab *gv = exsa_grammar_vocab_from_strings(toks, lens, 3, NULL, 0, &err);
    assert_non_null(gv);
    exsa_grammar_matcher *m = exsa_grammar_matcher_create(g, gv, &err);
    assert_non_null(m);
    int rc = 0, k = 0;
    for (; k < 40 && rc == 0; k++)
        rc = exsa_grammar_matcher_accept_bytes(m, "a", 1);
    assert_int_equal(rc, EXSA_EFULL);
    assert_true(k >= 10 && k <= 16);
    assert_non_null(strstr(exsa_grammar_matcher_error(m), "ambiguous"));
    /* The state before the failing byte is kept and still usable. */
    uint32_t mask[1];
    assert_true(exsa_grammar_matcher_mask(m, mask) < 0 || mask[0] != 0);
    exsa_grammar_matcher_reset(m);
    assert_int_equal(exsa_grammar_matcher_accept_bytes(m, "aab", 3), 0);
    assert_int_equal(exsa_grammar_matcher_accept_bytes(m, "c", 1), 0);
    assert_true(exsa_grammar_matcher_done(m));
    exsa_grammar_matcher_free(m);
    exsa_grammar_vocab_free(gv);
    exsa_grammar_free(g);
}

/* Random and mutated grammars must parse or fail cleanly; when they parse,
 * a random walk of allowed tokens must be accepted. */
static void test_fuzz(void **state)
{
    (void)state;
    static const char *seeds[] = {
        "root ::= \"ab\" | [c-e]+ x\nx ::= (\"f\" x)? \"g\"",
        "root ::= ([^a] | \"\\x41\"){1,3} . <[2]>",
        "root ::= | \"a\" root \"b\"",
        "root ::= (\"(\" root \")\")* \"\\u00e9\"?",
    };
    const char *toks[] = {"a", "b", "c", "ab", "(", ")", "\xC3", "\xA9", "g", "f", "</s>"};
    size_t lens[11];
    for (int i = 0; i < 11; i++)
        lens[i] = strlen(toks[i]);
    int32_t eog = 10;
    exsa_err err = {0};
    exsa_grammar_vocab *gv = exsa_grammar_vocab_from_strings(toks, lens, 11, &eog, 1, &err);
    assert_non_null(gv);
    static const char charset[] = "root::=|()[]^-*+?{},0123456789\"\\xu.ab#<>!\n ";
    uint64_t rng = 42;
    char buf[256];
    int parsed = 0;
    for (int it = 0; it < 6000; it++) {
        size_t n;
        if (it % 2) {
            n = exsa_test_rand_u64(&rng) % 64;
            for (size_t i = 0; i < n; i++) {
                uint64_t r = exsa_test_rand_u64(&rng);
                buf[i] = r % 8 == 0 ? (char)(r >> 8) : charset[(r >> 8) % (sizeof charset - 1)];
            }
        } else {
            const char *s = seeds[exsa_test_rand_u64(&rng) % 4];
            n = strlen(s);
            memcpy(buf, s, n);
            int muts = 1 + (int)(exsa_test_rand_u64(&rng) % 3);
            for (int k = 0; k < muts && n > 0; k++) {
                uint64_t r = exsa_test_rand_u64(&rng);
                size_t at = (r >> 8) % n;
                char c = charset[(r >> 20) % (sizeof charset - 1)];
                if (r % 3 == 0) {
                    buf[at] = c;
                } else if (r % 3 == 1 && n + 1 < sizeof buf) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = c;
                    n++;
                } else {
                    memmove(buf + at, buf + at + 1, n - at - 1);
                    n--;
                }
            }
        }
        exsa_grammar *g = exsa_grammar_parse(buf, n, NULL, &err);
        if (!g) {
            assert_true(err.msg[0] != 0);
            continue;
        }
        parsed++;
        exsa_grammar_matcher *m = exsa_grammar_matcher_create(g, gv, &err);
        if (m) {
            for (int step = 0; step < 12; step++) {
                uint32_t mask[1];
                int c = exsa_grammar_matcher_mask(m, mask);
                if (c <= 0)
                    break;
                int pick = (int)(exsa_test_rand_u64(&rng) % (uint64_t)c);
                int t = 0;
                for (;; t++)
                    if (bit(mask, t) && pick-- == 0)
                        break;
                assert_int_equal(exsa_grammar_matcher_accept(m, t), 0);
            }
            exsa_grammar_matcher_free(m);
        }
        exsa_grammar_free(g);
    }
    assert_true(parsed > 100);
    exsa_grammar_vocab_free(gv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_grammars),
        cmocka_unit_test(test_reference_is_discriminating),
        cmocka_unit_test(test_token_elements),
        cmocka_unit_test(test_json_grammar),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_syntax_variants),
        cmocka_unit_test(test_deep_input),
        cmocka_unit_test(test_explosion_bounded),
        cmocka_unit_test(test_fuzz),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
