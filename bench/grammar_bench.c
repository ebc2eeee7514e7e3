/* Grammar mask time: loads a GGUF's vocabulary, compiles a GBNF grammar (a
 * file, or the built-in JSON grammar), tokenizes a fixed JSON document (or
 * a given file) and drives the matcher over its tokens, timing
 * exsa_grammar_matcher_mask before each token.
 *
 * "cold" is a fresh matcher (every state met for the first time walks the
 * vocabulary trie); "warm" is the same matcher after reset, whose states and
 * masks are memoized, as a long generation or a reused matcher sees them.
 * Prints mean/p50/p99 microseconds per mask and one JSON line.
 * usage: grammar_bench MODEL.gguf [GRAMMAR.gbnf|-] [DOCUMENT] [reps=5] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/grammar.h"
#include "gguf/gguf.h"
#include "text/tokenizer.h"
#include "text/vocab.h"

static const char *JSON_GBNF =
    "root   ::= object\n"
    "value  ::= object | array | string | number | (\"true\" | \"false\" | \"null\") ws\n"
    "object ::= \"{\" ws ( string \":\" ws value (\",\" ws string \":\" ws value)* )? \"}\" ws\n"
    "array  ::= \"[\" ws ( value (\",\" ws value)* )? \"]\" ws\n"
    "string ::= \"\\\"\" ( [^\"\\\\\\x7F\\x00-\\x1F] |\n"
    "           \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4}) )* \"\\\"\" ws\n"
    "number ::= (\"-\"? ([0-9] | [1-9] [0-9]{0,15})) (\".\" [0-9]+)? ([eE] [-+]? [0-9]+)? ws\n"
    "ws     ::= | \" \" | \"\\n\" [ \\t]{0,20}\n";

static const char *DOC =
    "{\"name\": \"Ada Lovelace\", \"born\": 1815, \"died\": 1852,\n"
    "  \"fields\": [\"mathematics\", \"computing\", \"poetry of science\"],\n"
    "  \"notes\": {\"engine\": \"Analytical Engine\", \"program\": \"Bernoulli numbers\",\n"
    "    \"quote\": \"That brain of mine is something more than merely mortal; as time will "
    "show.\",\n"
    "    \"unicode\": \"caf\\u00e9 na\xC3\xAFve \xE2\x82\xAC 5\", \"ratio\": -0.25e-3},\n"
    "  \"children\": [{\"name\": \"Byron\", \"born\": 1836}, {\"name\": \"Annabella\", "
    "\"born\": 1837},\n"
    "    {\"name\": \"Ralph\", \"born\": 1839}], \"married\": true, \"title\": null,\n"
    "  \"description\": \"An English mathematician and writer, chiefly known for her work on "
    "Charles Babbage's proposed mechanical general-purpose computer, the Analytical Engine. "
    "She was the first to recognise that the machine had applications beyond pure "
    "calculation.\"}";

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = sz >= 0 ? malloc((size_t)sz + 1) : NULL;
    if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[sz] = 0;
        *n = (size_t)sz;
    }
    return b;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double mean, p50, p99, max;
} stats;

static stats summarize(double *t, int n)
{
    stats s = {0};
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += t[i];
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    s.mean = sum / n;
    s.p50 = t[n / 2];
    s.p99 = t[(int)((n - 1) * 0.99)];
    s.max = t[n - 1];
    return s;
}

/* One pass over the document: per-token mask times into t. */
static int pass(exsa_grammar_matcher *m, const int32_t *ids, int n, uint32_t *mask, double *t,
                long *allowed_sum)
{
    for (int i = 0; i < n; i++) {
        double t0 = now_us();
        int c = exsa_grammar_matcher_mask(m, mask);
        t[i] = now_us() - t0;
        if (c < 0) {
            fprintf(stderr, "mask failed at token %d: %s\n", i, exsa_grammar_matcher_error(m));
            return -1;
        }
        *allowed_sum += c;
        if (!((mask[ids[i] >> 5] >> (ids[i] & 31)) & 1)) {
            fprintf(stderr, "token %d (id %d) of the document not allowed\n", i, ids[i]);
            return -1;
        }
        if (exsa_grammar_matcher_accept(m, ids[i])) {
            fprintf(stderr, "accept failed at token %d: %s\n", i, exsa_grammar_matcher_error(m));
            return -1;
        }
    }
    if (!exsa_grammar_matcher_done(m)) {
        fprintf(stderr, "document incomplete for the grammar\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [GRAMMAR.gbnf|-] [DOCUMENT] [reps=5]\n", argv[0]);
        return 2;
    }
    exsa_err err = {0};
    char *gtext = NULL, *dtext = NULL;
    size_t glen = strlen(JSON_GBNF), dlen = strlen(DOC);
    if (argc > 2 && strcmp(argv[2], "-") != 0 && !(gtext = read_all(argv[2], &glen))) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }
    if (argc > 3 && !(dtext = read_all(argv[3], &dlen))) {
        fprintf(stderr, "cannot read %s\n", argv[3]);
        return 1;
    }
    int reps = argc > 4 ? atoi(argv[4]) : 5;
    if (reps < 1)
        reps = 1;
    exsa_gguf *gg = exsa_gguf_open(argv[1], &err);
    exsa_vocab *v = gg ? exsa_vocab_load(gg, &err) : NULL;
    exsa_tokenizer *tk = v ? exsa_tokenizer_create(v, &err) : NULL;
    if (!tk) {
        fprintf(stderr, "%s: %s\n", argv[1], err.msg);
        return 1;
    }
    double t0 = now_us();
    exsa_grammar_vocab *gv = exsa_grammar_vocab_create(v, &err);
    double t_vocab = now_us() - t0;
    t0 = now_us();
    exsa_grammar *g = gv ? exsa_grammar_parse(gtext ? gtext : JSON_GBNF, glen, NULL, &err) : NULL;
    double t_parse = now_us() - t0;
    if (!g) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const char *doc = dtext ? dtext : DOC;
    int64_t n = exsa_tokenize(tk, doc, dlen, 0, NULL, 0, &err);
    int32_t *ids = n > 0 ? malloc((size_t)n * sizeof(int32_t)) : NULL;
    if (!ids || exsa_tokenize(tk, doc, dlen, 0, ids, n, &err) != n) {
        fprintf(stderr, "tokenize: %s\n", err.msg);
        return 1;
    }
    int32_t nv = exsa_grammar_vocab_n_tokens(gv);
    uint32_t *mask = malloc(((size_t)nv + 31) / 32 * sizeof(uint32_t));
    double *tc = malloc((size_t)n * reps * sizeof(double));
    double *tw = malloc((size_t)n * reps * sizeof(double));
    long allowed = 0;
    int rc = 0;
    for (int r = 0; r < reps && !rc; r++) {
        exsa_grammar_matcher *m = exsa_grammar_matcher_create(g, gv, &err);
        if (!m) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        rc = pass(m, ids, (int)n, mask, tc + r * n, &allowed);
        exsa_grammar_matcher_reset(m);
        if (!rc)
            rc = pass(m, ids, (int)n, mask, tw + r * n, &allowed);
        exsa_grammar_matcher_free(m);
    }
    if (rc)
        return 1;
    stats c = summarize(tc, (int)n * reps), w = summarize(tw, (int)n * reps);
    printf("vocab %d tokens (view built in %.1f ms), grammar parsed in %.3f ms, document %lld "
           "tokens, %d reps\n",
           nv, t_vocab / 1e3, t_parse / 1e3, (long long)n, reps);
    printf("cold matcher: mask mean %.1f us  p50 %.1f us  p99 %.1f us  max %.1f us\n", c.mean,
           c.p50, c.p99, c.max);
    printf("warm matcher: mask mean %.1f us  p50 %.1f us  p99 %.1f us  max %.1f us\n", w.mean,
           w.p50, w.p99, w.max);
    printf("{\"bench\":\"grammar_mask\",\"n_vocab\":%d,\"doc_tokens\":%lld,\"reps\":%d,"
           "\"cold_mean_us\":%.2f,\"cold_p50_us\":%.2f,\"cold_p99_us\":%.2f,"
           "\"warm_mean_us\":%.2f,\"warm_p50_us\":%.2f,\"warm_p99_us\":%.2f,"
           "\"mean_allowed\":%.1f}\n",
           nv, (long long)n, reps, c.mean, c.p50, c.p99, w.mean, w.p50, w.p99,
           (double)allowed / (2.0 * (double)n * reps));
    free(tc);
    free(tw);
    free(mask);
    free(ids);
    free(gtext);
    free(dtext);
    exsa_grammar_free(g);
    exsa_grammar_vocab_free(gv);
    exsa_tokenizer_free(tk);
    exsa_vocab_free(v);
    exsa_gguf_close(gg);
    return 0;
}
