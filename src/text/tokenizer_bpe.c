/* Byte-level BPE (GPT-2 style), as llama.cpp's llm_tokenizer_bpe encodes:
 *
 *   1. the pre-tokenizer (pretokenize.c) splits the text into pieces;
 *   2. each byte of a piece becomes one character of GPT-2's byte-to-unicode
 *      table, i.e. one initial symbol;
 *   3. adjacent symbols merge by rank (position in tokenizer.ggml.merges),
 *      lowest rank first, leftmost first on ties, until no pair has a rank;
 *   4. each final symbol is looked up in the vocab.
 *
 * Symbols are interned strings: a token id when the string is in the vocab,
 * else an "extra" id (>= n_vocab) for merge parts the vocab lacks. A merge
 * table maps the id pair (left, right) to (rank, id of the concatenation),
 * so encoding never builds or hashes strings. A binary heap of candidate
 * pairs keeps a piece of n bytes at O(n log n): a 1 MB single word is fine.
 *
 * All per-call state lives on the call's stack/heap: encode is thread-safe. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "text/pretokenize.h"
#include "text/tokenizer_internal.h"
#include "text/vocab.h"
#include "util/err.h"
#include "util/hash.h"

typedef struct {
    uint64_t key;   /* (left << 32) | right */
    int32_t rank;   /* -1: empty slot */
    int32_t result; /* symbol id of left+right, -1 if it has none */
} merge_ent;

struct exsa_bpe {
    const exsa_vocab *v;
    exsa_pretok *pre;
    int32_t n_vocab;
    int32_t unk;
    int ignore_merges;

    merge_ent *mt;
    size_t mt_mask;

    /* extra symbols: strings that occur in merges but not in the vocab */
    char **xs;
    size_t *xlen;
    int32_t nx, xcap;
    int32_t *xh; /* open addressing over extras, -1 empty */
    size_t xh_mask;

    /* GPT-2 byte map: byte -> its character (UTF-8) and that symbol's id */
    char bchr[256][2];
    uint8_t blen[256];
    int32_t bsym[256];
};

/* ---------------------------------------------------------------------- */
/* interning */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static int32_t extra_find(const exsa_bpe *b, const char *s, size_t len)
{
    if (!b->xh)
        return -1;
    size_t h = (size_t)exsa_hash_bytes(EXSA_HASH_INIT, s, len) & b->xh_mask;
    for (;; h = (h + 1) & b->xh_mask) {
        int32_t j = b->xh[h];
        if (j < 0)
            return -1;
        if (b->xlen[j] == len && memcmp(b->xs[j], s, len) == 0)
            return j;
    }
}

static int extra_rehash(exsa_bpe *b, size_t cap)
{
    int32_t *h = malloc(cap * sizeof *h);
    if (!h)
        return EXSA_ENOMEM;
    for (size_t i = 0; i < cap; i++)
        h[i] = -1;
    for (int32_t j = 0; j < b->nx; j++) {
        size_t k = (size_t)exsa_hash_bytes(EXSA_HASH_INIT, b->xs[j], b->xlen[j]) & (cap - 1);
        while (h[k] >= 0)
            k = (k + 1) & (cap - 1);
        h[k] = j;
    }
    free(b->xh);
    b->xh = h;
    b->xh_mask = cap - 1;
    return 0;
}

/* Symbol id of s: token id, extra id, or (create) a new extra id. -1 when
 * absent and !create; < -1 (EXSA_ENOMEM) on allocation failure. */
static int32_t intern(exsa_bpe *b, const char *s, size_t len, int create)
{
    int32_t id = exsa_vocab_find(b->v, s, len);
    if (id >= 0)
        return id;
    int32_t j = extra_find(b, s, len);
    if (j >= 0)
        return b->n_vocab + j;
    if (!create)
        return -1;
    if (b->nx >= INT32_MAX - b->n_vocab - 1)
        return EXSA_ENOMEM;
    if (b->nx == b->xcap) {
        int32_t nc = b->xcap ? b->xcap * 2 : 64;
        char **xs = realloc(b->xs, (size_t)nc * sizeof *xs);
        if (!xs)
            return EXSA_ENOMEM;
        b->xs = xs;
        size_t *xl = realloc(b->xlen, (size_t)nc * sizeof *xl);
        if (!xl)
            return EXSA_ENOMEM;
        b->xlen = xl;
        b->xcap = nc;
    }
    char *copy = malloc(len ? len : 1);
    if (!copy)
        return EXSA_ENOMEM;
    memcpy(copy, s, len);
    b->xs[b->nx] = copy;
    b->xlen[b->nx] = len;
    b->nx++;
    /* keep the table at most half full */
    if ((size_t)b->nx * 2 > (b->xh ? b->xh_mask + 1 : 0)) {
        size_t cap = 64;
        while (cap < (size_t)b->nx * 4)
            cap *= 2;
        if (extra_rehash(b, cap))
            return EXSA_ENOMEM;
    } else {
        size_t k = (size_t)exsa_hash_bytes(EXSA_HASH_INIT, copy, len) & b->xh_mask;
        while (b->xh[k] >= 0)
            k = (k + 1) & b->xh_mask;
        b->xh[k] = b->nx - 1;
    }
    return b->n_vocab + b->nx - 1;
}

static const merge_ent *merge_find(const exsa_bpe *b, int32_t l, int32_t r)
{
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    size_t h = (size_t)mix64(key) & b->mt_mask;
    for (;; h = (h + 1) & b->mt_mask) {
        const merge_ent *e = &b->mt[h];
        if (e->rank < 0)
            return NULL;
        if (e->key == key)
            return e;
    }
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 bytes to U+0100.. in byte order. */
static void byte_map_init(exsa_bpe *b)
{
    int n = 0;
    for (int c = 0; c < 256; c++) {
        int printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE);
        unsigned cp = printable ? (unsigned)c : 256u + (unsigned)n++;
        if (cp < 0x80) {
            b->bchr[c][0] = (char)cp;
            b->blen[c] = 1;
        } else {
            b->bchr[c][0] = (char)(0xC0 | (cp >> 6));
            b->bchr[c][1] = (char)(0x80 | (cp & 0x3F));
            b->blen[c] = 2;
        }
    }
}

/* ---------------------------------------------------------------------- */
/* create / free */

static int load_merges(exsa_bpe *b, const exsa_gguf *g, exsa_err *err)
{
    int64_t km = exsa_gguf_find_key(g, "tokenizer.ggml.merges");
    if (km < 0)
        return exsa_err_set(err, EXSA_EFORMAT,
                            "tokenizer: BPE vocab has no tokenizer.ggml.merges");
    if (exsa_gguf_kv_type(g, km) != EXSA_GGUF_ARRAY ||
        exsa_gguf_arr_type(g, km) != EXSA_GGUF_STRING)
        return exsa_err_set(err, EXSA_EFORMAT,
                            "tokenizer: tokenizer.ggml.merges is not an array of strings");
    uint64_t n = exsa_gguf_arr_n(g, km);
    if (n > (uint64_t)INT32_MAX / 4)
        return exsa_err_set(err, EXSA_EFORMAT,
                            "tokenizer: tokenizer.ggml.merges has %llu entries (too many)",
                            (unsigned long long)n);
    size_t cap = 16;
    while (cap < n * 2)
        cap *= 2;
    b->mt = malloc(cap * sizeof *b->mt);
    if (!b->mt)
        return exsa_err_set(err, EXSA_ENOMEM, "tokenizer: out of memory for %zu merges",
                            (size_t)n);
    for (size_t i = 0; i < cap; i++)
        b->mt[i].rank = -1;
    b->mt_mask = cap - 1;

    char *cat = NULL;
    size_t cat_cap = 0;
    int rc = 0;
    for (uint64_t j = 0; j < n; j++) {
        size_t len;
        const char *s = exsa_gguf_arr_str(g, km, j, &len);
        /* the separator is the first space after the first byte: a left part
         * may itself be a space */
        const char *sp = s && len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp) {
            rc = exsa_err_set(err, EXSA_EFORMAT,
                              "tokenizer: tokenizer.ggml.merges[%llu] has no space separator",
                              (unsigned long long)j);
            break;
        }
        size_t ll = (size_t)(sp - s), rl = len - ll - 1;
        int32_t l = intern(b, s, ll, 1), r = intern(b, sp + 1, rl, 1);
        if (ll + rl > cat_cap) {
            cat_cap = (ll + rl) * 2;
            char *c2 = realloc(cat, cat_cap);
            if (!c2) {
                rc = EXSA_ENOMEM;
                break;
            }
            cat = c2;
        }
        memcpy(cat, s, ll);
        memcpy(cat + ll, sp + 1, rl);
        int32_t res = intern(b, cat, ll + rl, 1);
        if (l < 0 || r < 0 || res < 0) {
            rc = EXSA_ENOMEM;
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
        size_t h = (size_t)mix64(key) & b->mt_mask;
        while (b->mt[h].rank >= 0 && b->mt[h].key != key)
            h = (h + 1) & b->mt_mask;
        if (b->mt[h].rank < 0) { /* a duplicate keeps its first (lowest) rank */
            b->mt[h].key = key;
            b->mt[h].rank = (int32_t)j;
            b->mt[h].result = res;
        }
    }
    free(cat);
    if (rc == EXSA_ENOMEM)
        exsa_err_set(err, rc, "tokenizer: out of memory reading merges");
    return rc;
}

exsa_bpe *exsa_bpe_create(const exsa_vocab *v, exsa_err *err)
{
    if (!v) {
        exsa_err_set(err, EXSA_EINVAL, "tokenizer: no vocab");
        return NULL;
    }
    const exsa_gguf *g = exsa_vocab_gguf(v);
    const char *pre = NULL;
    size_t pre_len = 0;
    if (exsa_gguf_find_key(g, "tokenizer.ggml.pre") >= 0 &&
        exsa_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pre_len, err) != 0)
        return NULL;

    exsa_bpe *b = calloc(1, sizeof *b);
    if (!b) {
        exsa_err_set(err, EXSA_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    b->v = v;
    b->n_vocab = exsa_vocab_n_tokens(v);
    b->unk = exsa_vocab_unk(v);
    b->pre = exsa_pretok_create(pre, pre_len, err);
    if (!b->pre)
        goto fail;
    b->ignore_merges = exsa_pretok_ignore_merges(b->pre);
    if (load_merges(b, g, err))
        goto fail;
    byte_map_init(b);
    for (int c = 0; c < 256; c++)
        b->bsym[c] = intern(b, b->bchr[c], b->blen[c], 0);
    return b;
fail:
    exsa_bpe_free(b);
    return NULL;
}

void exsa_bpe_free(exsa_bpe *b)
{
    if (!b)
        return;
    exsa_pretok_free(b->pre);
    free(b->mt);
    for (int32_t j = 0; j < b->nx; j++)
        free(b->xs[j]);
    free(b->xs);
    free(b->xlen);
    free(b->xh);
    free(b);
}

/* ---------------------------------------------------------------------- */
/* encode */

typedef struct {
    int32_t rank, left, right;
    int32_t result; /* symbol id of the merged pair */
    uint32_t len;   /* left+right bytes when pushed: detects stale pairs */
} pair;

typedef struct {
    int32_t *id;   /* symbol id, -1: not mergeable */
    uint32_t *len; /* bytes of the piece it covers; 0 once merged away */
    int32_t *prev, *next;
    pair *heap;
    size_t nheap, cap; /* cap: symbols (and heap) capacity */
    char *str;         /* mapped piece for the whole-token fast path */
} scratch;

static int pair_less(const pair *a, const pair *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(scratch *s, pair p)
{
    size_t i = s->nheap++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!pair_less(&p, &s->heap[up]))
            break;
        s->heap[i] = s->heap[up];
        i = up;
    }
    s->heap[i] = p;
}

static pair heap_pop(scratch *s)
{
    pair top = s->heap[0], last = s->heap[--s->nheap];
    size_t i = 0, n = s->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && pair_less(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!pair_less(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n)
        s->heap[i] = last;
    return top;
}

static int scratch_reserve(scratch *s, size_t n)
{
    if (n <= s->cap)
        return 0;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < n)
        cap *= 2;
    size_t b4, bp, bs;
    /* the heap holds at most one live pair per adjacency plus stale ones:
     * each merge pushes at most 2, so 3 * n bounds it */
    if (__builtin_mul_overflow(cap, sizeof(int32_t), &b4) ||
        __builtin_mul_overflow(cap, 3 * sizeof(pair), &bp) ||
        __builtin_mul_overflow(cap, (size_t)2, &bs))
        return EXSA_ENOMEM;
    int32_t *id = realloc(s->id, b4);
    if (id)
        s->id = id;
    uint32_t *len = realloc(s->len, b4);
    if (len)
        s->len = len;
    int32_t *prev = realloc(s->prev, b4);
    if (prev)
        s->prev = prev;
    int32_t *next = realloc(s->next, b4);
    if (next)
        s->next = next;
    pair *heap = realloc(s->heap, bp);
    if (heap)
        s->heap = heap;
    char *str = realloc(s->str, bs);
    if (str)
        s->str = str;
    if (!id || !len || !prev || !next || !heap || !str)
        return EXSA_ENOMEM;
    s->cap = cap;
    return 0;
}

static void scratch_free(scratch *s)
{
    free(s->id);
    free(s->len);
    free(s->prev);
    free(s->next);
    free(s->heap);
    free(s->str);
}

static void try_pair(const exsa_bpe *b, scratch *s, int32_t l, int32_t r)
{
    if (l < 0 || r < 0 || s->id[l] < 0 || s->id[r] < 0)
        return;
    const merge_ent *e = merge_find(b, s->id[l], s->id[r]);
    if (!e)
        return;
    pair p = {e->rank, l, r, e->result, s->len[l] + s->len[r]};
    heap_push(s, p);
}

/* Emits the ids of a final symbol covering piece bytes p[0..n). */
static int emit(const exsa_bpe *b, int32_t id, const unsigned char *p, size_t n,
                exsa_tokbuf *out)
{
    if (id >= 0 && id < b->n_vocab)
        return exsa_tokbuf_push(out, id);
    /* not a token (a merge result the vocab lacks, or an unmapped byte):
     * one token per byte, else unk, else nothing */
    for (size_t i = 0; i < n; i++) {
        int32_t t = b->bsym[p[i]];
        if (t < 0 || t >= b->n_vocab)
            t = b->unk;
        if (t >= 0) {
            int rc = exsa_tokbuf_push(out, t);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int encode_piece(const exsa_bpe *b, scratch *s, const unsigned char *p, size_t n,
                        exsa_tokbuf *out)
{
    if (n == 1)
        return emit(b, b->bsym[p[0]], p, 1, out);
    if (b->ignore_merges) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(s->str + m, b->bchr[p[i]], b->blen[p[i]]);
            m += b->blen[p[i]];
        }
        int32_t id = exsa_vocab_find(b->v, s->str, m);
        if (id >= 0)
            return exsa_tokbuf_push(out, id);
    }
    s->nheap = 0;
    for (size_t i = 0; i < n; i++) {
        s->id[i] = b->bsym[p[i]];
        s->len[i] = 1;
        s->prev[i] = (int32_t)i - 1;
        s->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 1; i < n; i++)
        try_pair(b, s, (int32_t)i - 1, (int32_t)i);
    while (s->nheap) {
        pair q = heap_pop(s);
        int32_t l = q.left, r = q.right;
        /* stale: one side merged away or grew since the pair was queued */
        if (s->len[l] == 0 || s->len[r] == 0 || s->next[l] != r ||
            s->len[l] + s->len[r] != q.len)
            continue;
        s->id[l] = q.result;
        s->len[l] += s->len[r];
        s->len[r] = 0;
        s->next[l] = s->next[r];
        if (s->next[r] >= 0)
            s->prev[s->next[r]] = l;
        try_pair(b, s, s->prev[l], l);
        try_pair(b, s, l, s->next[l]);
    }
    for (int32_t i = 0; i >= 0; i = s->next[i]) {
        int rc = emit(b, s->id[i], p + i, s->len[i], out);
        if (rc)
            return rc;
    }
    return 0;
}

int exsa_bpe_encode(const exsa_bpe *b, const char *text, size_t len, exsa_tokbuf *out,
                    exsa_err *err)
{
    if (!b || !out || (!text && len))
        return exsa_err_set(err, EXSA_EINVAL, "tokenizer: bad argument to exsa_bpe_encode");
    if (len > (size_t)UINT32_MAX / 2)
        return exsa_err_set(err, EXSA_EINVAL, "tokenizer: text of %zu bytes is too long", len);
    exsa_pieces pc = {0};
    int rc = exsa_pretok_split(b->pre, text, len, &pc, err);
    if (rc) {
        exsa_pieces_free(&pc);
        return rc;
    }
    scratch s = {0};
    size_t start = 0;
    for (size_t k = 0; k < pc.n && rc == 0; k++) {
        size_t n = pc.end[k] - start;
        rc = scratch_reserve(&s, n);
        if (rc == 0)
            rc = encode_piece(b, &s, (const unsigned char *)text + start, n, out);
        if (rc)
            exsa_err_set(err, rc, "tokenizer: out of memory encoding %zu bytes", len);
        start = pc.end[k];
    }
    scratch_free(&s);
    exsa_pieces_free(&pc);
    return rc;
}
