/* SentencePiece (BPE model) encoder as llama.cpp runs it on GGUF vocabs:
 * spaces become U+2581, the text is split into UTF-8 characters, then the
 * adjacent pair whose concatenation is the highest-scoring vocab token is
 * merged repeatedly (ties: leftmost first). Symbols that are not tokens in
 * the end are emitted byte by byte through the <0xNN> tokens.
 *
 * Every merged symbol is a vocab token by construction, so the final
 * "resegment" step only has to fall back to bytes for single characters.
 * Control and unknown tokens never take part in merges: their text in raw
 * input is plain text (sentencepiece does the same). */
#include <string.h>

#include "text/tokenizer_internal.h"
#include "util/err.h"

struct exsa_spm {
    const exsa_vocab *v;
    int32_t byte_tok[256]; /* -1: no token for this byte */
    int32_t unk;
};

typedef struct {
    const char *text;
    int32_t prev, next; /* -1 at the ends */
    uint32_t n;         /* bytes; 0 once merged into the left neighbour */
} symbol;

typedef struct {
    int32_t left, right;
    float score;
    uint32_t size;
} bigram;

/* a before b in the queue: higher score, then leftmost. */
static int bigram_before(const bigram *a, const bigram *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct {
    bigram *h;
    size_t n, cap;
} heap;

static int heap_push(heap *q, bigram b)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        bigram *p = realloc(q->h, cap * sizeof *p);
        if (!p)
            return EXSA_ENOMEM;
        q->h = p;
        q->cap = cap;
    }
    size_t i = q->n++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!bigram_before(&b, &q->h[up]))
            break;
        q->h[i] = q->h[up];
        i = up;
    }
    q->h[i] = b;
    return 0;
}

static bigram heap_pop(heap *q)
{
    bigram top = q->h[0], last = q->h[--q->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= q->n)
            break;
        if (c + 1 < q->n && bigram_before(&q->h[c + 1], &q->h[c]))
            c++;
        if (!bigram_before(&q->h[c], &last))
            break;
        q->h[i] = q->h[c];
        i = c;
    }
    if (q->n > 0)
        q->h[i] = last;
    return top;
}

/* Token id for s[0..n) if it may be produced from plain text, else -1. */
static int32_t mergeable(const exsa_spm *s, const char *text, size_t n)
{
    int32_t id = exsa_vocab_find(s->v, text, n);
    if (id < 0)
        return -1;
    int ty = exsa_vocab_token_type(s->v, id);
    return ty == EXSA_TOKEN_CONTROL || ty == EXSA_TOKEN_UNKNOWN ? -1 : id;
}

static int try_add(const exsa_spm *s, const symbol *sym, int32_t l, int32_t r, heap *q)
{
    if (l < 0 || r < 0)
        return 0;
    size_t n = (size_t)sym[l].n + sym[r].n; /* adjacent: contiguous text */
    int32_t id = mergeable(s, sym[l].text, n);
    if (id < 0)
        return 0;
    return heap_push(q, (bigram){l, r, exsa_vocab_score(s->v, id), (uint32_t)n});
}

exsa_spm *exsa_spm_create(const exsa_vocab *v, exsa_err *err)
{
    exsa_spm *s = calloc(1, sizeof *s);
    if (!s) {
        exsa_err_set(err, EXSA_ENOMEM, "spm: out of memory");
        return NULL;
    }
    s->v = v;
    s->unk = exsa_vocab_unk(v);
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        char one = (char)b;
        int32_t id = exsa_vocab_find(v, name, 6);
        /* Vocabs without byte tokens may hold the byte itself. */
        s->byte_tok[b] = id >= 0 ? id : exsa_vocab_find(v, &one, 1);
    }
    return s;
}

void exsa_spm_free(exsa_spm *s) { free(s); }

static int emit_symbol(const exsa_spm *s, const symbol *sym, exsa_tokbuf *out, exsa_err *err)
{
    int32_t id = mergeable(s, sym->text, sym->n);
    if (id >= 0)
        return exsa_tokbuf_push(out, id) ? exsa_err_set(err, EXSA_ENOMEM, "spm: out of memory")
                                         : 0;
    for (uint32_t j = 0; j < sym->n; j++) {
        unsigned char b = (unsigned char)sym->text[j];
        id = s->byte_tok[b] >= 0 ? s->byte_tok[b] : s->unk;
        if (id < 0)
            return exsa_err_set(err, EXSA_EUNSUPPORTED,
                                "spm: no token for byte 0x%02X and no unknown token", b);
        if (exsa_tokbuf_push(out, id))
            return exsa_err_set(err, EXSA_ENOMEM, "spm: out of memory");
    }
    return 0;
}

static size_t utf8_len(unsigned char c)
{
    return c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

int exsa_spm_encode(const exsa_spm *s, const char *text, size_t len, exsa_tokbuf *out,
                    exsa_err *err)
{
    if (len == 0)
        return 0;
    /* Escape spaces as U+2581 (3 bytes each). */
    size_t cap;
    if (__builtin_mul_overflow(len, (size_t)3, &cap) || len > INT32_MAX / 3)
        return exsa_err_set(err, EXSA_ENOMEM, "spm: text of %zu bytes too large", len);
    char *esc = malloc(cap);
    symbol *sym = NULL;
    heap q = {0};
    int rc = 0;
    if (!esc) {
        rc = exsa_err_set(err, EXSA_ENOMEM, "spm: out of memory (%zu bytes)", len);
        goto done;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(esc + n, "\xe2\x96\x81", 3);
            n += 3;
        } else {
            esc[n++] = text[i];
        }
    }

    /* One symbol per character: at most n (even for bytes that are not
     * UTF-8, which the caller should have replaced). */
    sym = malloc(n * sizeof *sym);
    if (!sym) {
        rc = exsa_err_set(err, EXSA_ENOMEM, "spm: out of memory (%zu symbols)", n);
        goto done;
    }
    int32_t ns = 0;
    for (size_t off = 0; off < n;) {
        size_t l = utf8_len((unsigned char)esc[off]);
        if (l > n - off)
            l = n - off;
        sym[ns] = (symbol){esc + off, ns - 1, -1, (uint32_t)l};
        off += l;
        if (off < n)
            sym[ns].next = ns + 1;
        ns++;
    }
    for (int32_t i = 1; i < ns && rc == 0; i++)
        rc = try_add(s, sym, i - 1, i, &q);

    while (q.n > 0 && rc == 0) {
        bigram b = heap_pop(&q);
        symbol *l = &sym[b.left], *r = &sym[b.right];
        /* Stale: one side was merged away or grew since it was queued. */
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            sym[r->next].prev = b.left;
        rc = try_add(s, sym, l->prev, b.left, &q);
        if (rc == 0)
            rc = try_add(s, sym, b.left, l->next, &q);
    }
    if (rc == EXSA_ENOMEM)
        exsa_err_set(err, rc, "spm: out of memory");
    for (int32_t i = 0; rc == 0 && i >= 0 && ns > 0; i = sym[i].next)
        rc = emit_symbol(s, &sym[i], out, err);
done:
    free(q.h);
    free(sym);
    free(esc);
    return rc;
}
