/* Tokenizer front: picks the encoder for the vocab kind, replaces invalid
 * UTF-8, splits the text around special-token strings, adds BOS/EOS; and the
 * streaming detokenizer.
 *
 * Behaviour follows llama.cpp's llama_vocab::tokenize (the reference the
 * fixtures were made with):
 * - special tokens are the CONTROL, USER_DEFINED and UNKNOWN ones, tried
 *   longest first; USER_DEFINED strings are always split out (as HF
 *   tokenizers do for added tokens), CONTROL/UNKNOWN only with
 *   EXSA_TOK_PARSE_SPECIAL;
 * - SPM prefixes a space to a text fragment at the start and after a
 *   special token when the vocab asks for a space prefix;
 * - WPM wraps the ids in [CLS] ... [SEP].
 */
#include <stdlib.h>
#include <string.h>

#include "text/tokenizer_internal.h"
#include "util/err.h"

enum { STRIP_L = 1, STRIP_R = 2 };

typedef struct {
    int32_t id;
    uint32_t len;
    int type;
    int strip;
} special_tok;

struct exsa_tokenizer {
    const exsa_vocab *v;
    int kind;
    exsa_spm *spm;
    exsa_bpe *bpe;
    exsa_wpm *wpm;
    special_tok *special; /* longest first */
    int32_t n_special;
    int32_t wpm_cls, wpm_sep; /* BERT's framing tokens, -1 if none */
};

/* ---------------------------------------------------------------- UTF-8 */

/* Checks the character at s[0..n), n >= 1. Returns its length when it is
 * well-formed; otherwise -k where k >= 1 is the length of the maximal
 * ill-formed subpart (Unicode 3.9, "substitution of maximal subparts"), one
 * U+FFFD replaces it. *incomplete is set when the bytes are a valid prefix
 * cut short by n (more bytes could still complete it). */
static int utf8_check(const unsigned char *s, size_t n, int *incomplete)
{
    unsigned c = s[0];
    *incomplete = 0;
    if (c < 0x80)
        return 1;
    int need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        if (c == 0xF4)
            hi = 0x8F; /* > U+10FFFF */
    } else {
        return -1; /* continuation byte, C0/C1, F5..FF */
    }
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= n) {
            *incomplete = 1;
            return -k;
        }
        unsigned b = s[k];
        if (b < lo || b > hi)
            return -k;
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* Returns text itself when it is valid UTF-8, else a malloc'd copy with
 * every ill-formed subpart replaced by U+FFFD (*owned set). */
static const char *utf8_sanitize(const char *text, size_t len, size_t *out_len, char **owned,
                                 exsa_err *err)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    int inc;
    *owned = NULL;
    while (i < len) {
        int r = utf8_check(s + i, len - i, &inc);
        if (r < 0)
            break;
        i += (size_t)r;
    }
    *out_len = len;
    if (i == len)
        return text;
    /* Each bad byte grows to at most 3 bytes. */
    size_t cap;
    if (__builtin_mul_overflow(len, (size_t)3, &cap)) {
        exsa_err_set(err, EXSA_ENOMEM, "tokenize: text of %zu bytes too large", len);
        return NULL;
    }
    char *o = malloc(cap ? cap : 1);
    if (!o) {
        exsa_err_set(err, EXSA_ENOMEM, "tokenize: out of memory (%zu bytes)", cap);
        return NULL;
    }
    memcpy(o, text, i);
    size_t n = i;
    while (i < len) {
        int r = utf8_check(s + i, len - i, &inc);
        if (r > 0) {
            memcpy(o + n, text + i, (size_t)r);
            n += (size_t)r;
            i += (size_t)r;
        } else {
            memcpy(o + n, REPLACEMENT, 3);
            n += 3;
            i += (size_t)-r;
        }
    }
    *owned = o;
    *out_len = n;
    return o;
}

/* ------------------------------------------------------------ create/free */

static int cmp_special(const void *a, const void *b)
{
    const special_tok *x = a, *y = b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Case-insensitive substring test for ASCII names. */
static int name_contains(const char *s, size_t len, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= len; i++) {
        size_t k = 0;
        while (k < m) {
            char c = s[i + k];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            if (c != needle[k])
                break;
            k++;
        }
        if (k == m)
            return 1;
    }
    return 0;
}

static int token_is(const exsa_vocab *v, int32_t id, const char *s)
{
    size_t len;
    const char *t = exsa_vocab_token_str(v, id, &len);
    return len == strlen(s) && memcmp(t, s, len) == 0;
}

/* Per-token whitespace stripping around special tokens: GGUF does not store
 * it, llama.cpp sets it by model name (Phi-3 special tokens eat the spaces
 * after them; jina's <mask> the spaces before it). */
static void set_strip_attrs(exsa_tokenizer *t)
{
    const exsa_gguf *g = exsa_vocab_gguf(t->v);
    const char *name = NULL, *pre = NULL;
    size_t nlen = 0, plen = 0;
    if (exsa_gguf_get_str(g, "general.name", &name, &nlen, NULL) != 0)
        nlen = 0;
    if (exsa_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &plen, NULL) != 0)
        plen = 0;
    int jina = plen && (name_contains(pre, plen, "jina-v2-de") ||
                        name_contains(pre, plen, "jina-v2-es") ||
                        name_contains(pre, plen, "jina-v2-code"));
    int phi3 = !jina && nlen && (name_contains(name, nlen, "phi-3") ||
                                 name_contains(name, nlen, "phi3"));
    for (int32_t i = 0; i < t->n_special; i++) {
        special_tok *s = &t->special[i];
        if (jina && token_is(t->v, s->id, "<mask>"))
            s->strip |= STRIP_L;
        if (phi3 && !token_is(t->v, s->id, "<unk>") && !token_is(t->v, s->id, "<s>") &&
            !token_is(t->v, s->id, "<|endoftext|>"))
            s->strip |= STRIP_R;
    }
}

static int32_t id_key(const exsa_vocab *v, const char *key)
{
    int64_t id;
    if (exsa_gguf_get_int(exsa_vocab_gguf(v), key, &id, NULL) != 0 || id < 0 ||
        id >= exsa_vocab_n_tokens(v))
        return -1;
    return (int32_t)id;
}

/* BERT GGUFs name [CLS] in tokenizer.ggml.cls_token_id rather than as BOS;
 * llama.cpp falls back to BERT's fixed ids 101 / 102. */
static void wpm_framing(exsa_tokenizer *t)
{
    const exsa_vocab *v = t->v;
    int32_t n = exsa_vocab_n_tokens(v);
    t->wpm_cls = exsa_vocab_bos(v);
    if (t->wpm_cls < 0)
        t->wpm_cls = id_key(v, "tokenizer.ggml.cls_token_id");
    if (t->wpm_cls < 0 && n > 101)
        t->wpm_cls = 101;
    t->wpm_sep = exsa_vocab_sep(v);
    if (t->wpm_sep < 0 && n > 102)
        t->wpm_sep = 102;
}

exsa_tokenizer *exsa_tokenizer_create(const exsa_vocab *v, exsa_err *err)
{
    if (!v) {
        exsa_err_set(err, EXSA_EINVAL, "tokenizer: vocab is NULL");
        return NULL;
    }
    exsa_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        exsa_err_set(err, EXSA_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    t->v = v;
    t->kind = exsa_vocab_kind(v);
    switch (t->kind) {
    case EXSA_VOCAB_SPM:
        t->spm = exsa_spm_create(v, err);
        break;
    case EXSA_VOCAB_BPE:
        t->bpe = exsa_bpe_create(v, err);
        break;
    case EXSA_VOCAB_WPM:
        t->wpm = exsa_wpm_create(v, err);
        break;
    default:
        exsa_err_set(err, EXSA_EUNSUPPORTED, "tokenizer: vocab kind %d not supported", t->kind);
        free(t);
        return NULL;
    }
    if (!t->spm && !t->bpe && !t->wpm) {
        free(t);
        return NULL;
    }

    int32_t n = exsa_vocab_n_tokens(v), ns = 0;
    for (int32_t id = 0; id < n; id++) {
        int ty = exsa_vocab_token_type(v, id);
        ns += ty == EXSA_TOKEN_CONTROL || ty == EXSA_TOKEN_USER_DEFINED || ty == EXSA_TOKEN_UNKNOWN;
    }
    if (ns > 0) {
        t->special = calloc((size_t)ns, sizeof *t->special);
        if (!t->special) {
            exsa_err_set(err, EXSA_ENOMEM, "tokenizer: out of memory (%d special tokens)", ns);
            exsa_tokenizer_free(t);
            return NULL;
        }
    }
    for (int32_t id = 0; id < n; id++) {
        int ty = exsa_vocab_token_type(v, id);
        if (ty != EXSA_TOKEN_CONTROL && ty != EXSA_TOKEN_USER_DEFINED && ty != EXSA_TOKEN_UNKNOWN)
            continue;
        size_t len;
        exsa_vocab_token_str(v, id, &len);
        if (len == 0 || len > UINT32_MAX)
            continue; /* an empty string would match everywhere */
        t->special[t->n_special++] = (special_tok){id, (uint32_t)len, ty, 0};
    }
    if (t->n_special > 1)
        qsort(t->special, (size_t)t->n_special, sizeof *t->special, cmp_special);
    set_strip_attrs(t);
    if (t->kind == EXSA_VOCAB_WPM)
        wpm_framing(t);
    return t;
}

void exsa_tokenizer_free(exsa_tokenizer *t)
{
    if (!t)
        return;
    exsa_spm_free(t->spm);
    exsa_bpe_free(t->bpe);
    exsa_wpm_free(t->wpm);
    free(t->special);
    free(t);
}

const exsa_vocab *exsa_tokenizer_vocab(const exsa_tokenizer *t) { return t ? t->v : NULL; }

/* ------------------------------------------------------------ partition */

typedef struct {
    size_t off, len;
    int32_t tok; /* -1: raw text */
} fragment;

typedef struct {
    fragment *f;
    size_t n, cap;
} fraglist;

static int frag_push(fraglist *l, size_t off, size_t len, int32_t tok)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        fragment *p = realloc(l->f, cap * sizeof *p);
        if (!p)
            return EXSA_ENOMEM;
        l->f = p;
        l->cap = cap;
    }
    l->f[l->n++] = (fragment){off, len, tok};
    return 0;
}

static int is_ascii_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Splits the raw-text fragments of *cur around every occurrence of one
 * special token, left to right, into *next (then swaps them). */
static int split_one(const char *text, const char *s, size_t slen, const special_tok *sp,
                     fraglist *cur, fraglist *next)
{
    next->n = 0;
    for (size_t i = 0; i < cur->n; i++) {
        fragment fr = cur->f[i];
        if (fr.tok >= 0) {
            if (frag_push(next, fr.off, fr.len, fr.tok))
                return EXSA_ENOMEM;
            continue;
        }
        size_t base = fr.off, blen = fr.len;
        while (blen > 0) {
            const char *m = blen >= slen ? memmem(text + base, blen, s, slen) : NULL;
            if (!m) {
                if (frag_push(next, base, blen, -1))
                    return EXSA_ENOMEM;
                break;
            }
            size_t at = (size_t)(m - text), left = at - base;
            if (sp->strip & STRIP_L)
                while (left > 0 && is_ascii_space(text[base + left - 1]))
                    left--;
            if (left > 0 && frag_push(next, base, left, -1))
                return EXSA_ENOMEM;
            if (frag_push(next, at, slen, sp->id))
                return EXSA_ENOMEM;
            size_t rbase = at + slen, rlen = base + blen - rbase;
            if (sp->strip & STRIP_R)
                while (rlen > 0 && is_ascii_space(text[rbase])) {
                    rbase++;
                    rlen--;
                }
            base = rbase;
            blen = rlen;
        }
    }
    fraglist tmp = *cur;
    *cur = *next;
    *next = tmp;
    return 0;
}

static int partition(const exsa_tokenizer *t, const char *text, size_t len, int parse_special,
                     fraglist *out)
{
    fraglist other = {0};
    int rc = 0;
    out->n = 0;
    if (len > 0 && (rc = frag_push(out, 0, len, -1)) != 0)
        return rc;
    for (int32_t i = 0; i < t->n_special && out->n > 0; i++) {
        const special_tok *sp = &t->special[i];
        if (!parse_special && (sp->type == EXSA_TOKEN_CONTROL || sp->type == EXSA_TOKEN_UNKNOWN))
            continue;
        size_t slen;
        const char *s = exsa_vocab_token_str(t->v, sp->id, &slen);
        if ((rc = split_one(text, s, slen, sp, out, &other)) != 0)
            break;
    }
    free(other.f);
    return rc;
}

/* ------------------------------------------------------------- tokenize */

static int encode_fragments(const exsa_tokenizer *t, const char *text, const fraglist *fl,
                            exsa_tokbuf *out, exsa_err *err)
{
    const exsa_vocab *v = t->v;
    int rc = 0;
    char *scratch = NULL;
    size_t scratch_cap = 0;
    /* SPM: a space goes before the first text and before text that follows
     * a special token (is_prev_special in llama.cpp). */
    int prev_special = 1, prefix = exsa_vocab_add_space_prefix(v);
    for (size_t i = 0; i < fl->n && rc == 0; i++) {
        const fragment *fr = &fl->f[i];
        if (fr->tok >= 0) {
            rc = exsa_tokbuf_push(out, fr->tok);
            prev_special = 1;
            continue;
        }
        const char *s = text + fr->off;
        switch (t->kind) {
        case EXSA_VOCAB_SPM:
            if (prefix && prev_special) {
                if (scratch_cap < fr->len + 1) {
                    free(scratch);
                    scratch_cap = fr->len + 1;
                    scratch = malloc(scratch_cap);
                    if (!scratch) {
                        rc = exsa_err_set(err, EXSA_ENOMEM, "tokenize: out of memory");
                        break;
                    }
                }
                scratch[0] = ' ';
                memcpy(scratch + 1, s, fr->len);
                rc = exsa_spm_encode(t->spm, scratch, fr->len + 1, out, err);
            } else {
                rc = exsa_spm_encode(t->spm, s, fr->len, out, err);
            }
            break;
        case EXSA_VOCAB_BPE:
            rc = exsa_bpe_encode(t->bpe, s, fr->len, out, err);
            break;
        default:
            rc = exsa_wpm_encode(t->wpm, s, fr->len, out, err);
            break;
        }
        prev_special = 0;
    }
    free(scratch);
    if (rc == EXSA_ENOMEM && err && err->code != EXSA_ENOMEM)
        exsa_err_set(err, EXSA_ENOMEM, "tokenize: out of memory");
    return rc;
}

int64_t exsa_tokenize(const exsa_tokenizer *t, const char *text, size_t len, int flags,
                      int32_t *ids, int64_t cap, exsa_err *err)
{
    if (!t)
        return exsa_err_set(err, EXSA_EINVAL, "tokenize: tokenizer is NULL");
    if (!text && len > 0)
        return exsa_err_set(err, EXSA_EINVAL, "tokenize: text is NULL with len %zu", len);
    if (cap < 0 || (cap > 0 && !ids))
        return exsa_err_set(err, EXSA_EINVAL, "tokenize: bad output buffer (cap %lld)",
                            (long long)cap);
    if (flags & ~(EXSA_TOK_ADD_SPECIAL | EXSA_TOK_PARSE_SPECIAL))
        return exsa_err_set(err, EXSA_EINVAL, "tokenize: unknown flags 0x%x", (unsigned)flags);

    const exsa_vocab *v = t->v;
    char *owned = NULL;
    size_t n;
    const char *s = len ? utf8_sanitize(text, len, &n, &owned, err) : "";
    if (!s)
        return err ? err->code : EXSA_ENOMEM;
    if (!len)
        n = 0;

    fraglist fl = {0};
    exsa_tokbuf out = {0};
    int add = (flags & EXSA_TOK_ADD_SPECIAL) != 0;
    int rc = partition(t, s, n, (flags & EXSA_TOK_PARSE_SPECIAL) != 0, &fl);
    if (rc) {
        exsa_err_set(err, rc, "tokenize: out of memory splitting special tokens");
        goto done;
    }
    if (t->kind == EXSA_VOCAB_WPM) {
        /* BERT always frames the text as [CLS] ... [SEP]. */
        if (add && t->wpm_cls >= 0 && (rc = exsa_tokbuf_push(&out, t->wpm_cls)))
            goto oom;
    } else if (add && exsa_vocab_add_bos(v)) {
        if ((rc = exsa_tokbuf_push(&out, exsa_vocab_bos(v))))
            goto oom;
    }
    if ((rc = encode_fragments(t, s, &fl, &out, err)) != 0)
        goto done;
    if (t->kind == EXSA_VOCAB_WPM) {
        if (add && t->wpm_sep >= 0 && (rc = exsa_tokbuf_push(&out, t->wpm_sep)))
            goto oom;
    } else if (add && exsa_vocab_add_eos(v)) {
        if ((rc = exsa_tokbuf_push(&out, exsa_vocab_eos(v))))
            goto oom;
    }
    if (cap > 0 && out.n > 0)
        memcpy(ids, out.ids, (size_t)(out.n < cap ? out.n : cap) * sizeof *ids);
    goto done;
oom:
    exsa_err_set(err, rc, "tokenize: out of memory");
done:
    free(out.ids);
    free(fl.f);
    free(owned);
    return rc ? rc : out.n;
}

/* ---------------------------------------------------------- detokenizer */

struct exsa_detok {
    const exsa_vocab *v;
    int special;
    int first;            /* nothing pushed yet: SPM's leading space goes */
    int strip_space;      /* the vocab adds a space prefix */
    char *piece;          /* scratch of the longest piece */
    size_t piece_cap;
    unsigned char pend[4]; /* start of a character still incomplete */
    int npend;
    char *q;              /* complete text not yet handed out */
    size_t qlen, qcap;
};

static int q_reserve(exsa_detok *d, size_t extra)
{
    if (d->qcap - d->qlen >= extra)
        return 0;
    /* Only when the caller leaves text behind (small out buffers). */
    size_t need;
    if (__builtin_add_overflow(d->qlen, extra, &need))
        return EXSA_ENOMEM;
    size_t cap = d->qcap;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(d->q, cap);
    if (!p)
        return EXSA_ENOMEM;
    d->q = p;
    d->qcap = cap;
    return 0;
}

/* Moves complete characters from pend into the queue; ill-formed subparts
 * become U+FFFD. With final set, an incomplete tail is ill-formed too. */
static void pend_drain(exsa_detok *d, int final)
{
    while (d->npend > 0) {
        int inc, r = utf8_check(d->pend, (size_t)d->npend, &inc);
        if (r > 0) {
            memcpy(d->q + d->qlen, d->pend, (size_t)r);
            d->qlen += (size_t)r;
        } else if (inc && !final) {
            return;
        } else {
            memcpy(d->q + d->qlen, REPLACEMENT, 3);
            d->qlen += 3;
            r = -r;
        }
        memmove(d->pend, d->pend + r, (size_t)(d->npend - r));
        d->npend -= r;
    }
}

/* Feeds bytes: ASCII and whole valid runs go straight to the queue. */
static int feed(exsa_detok *d, const char *p, size_t n)
{
    size_t need;
    /* Worst case every byte (and the 3 pending) becomes a 3-byte U+FFFD. */
    if (__builtin_mul_overflow(n + 4, (size_t)3, &need) || q_reserve(d, need))
        return EXSA_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        d->pend[d->npend++] = (unsigned char)p[i];
        pend_drain(d, 0);
    }
    return 0;
}

/* Copies whole characters from the queue to out (NUL-terminated). */
static int deliver(exsa_detok *d, char *out, size_t cap)
{
    if (!out || cap == 0)
        return 0;
    size_t room = cap - 1 < (size_t)INT32_MAX ? cap - 1 : (size_t)INT32_MAX;
    size_t k = d->qlen < room ? d->qlen : room;
    if (k < d->qlen)
        while (k > 0 && ((unsigned char)d->q[k] & 0xC0) == 0x80)
            k--; /* never cut a character */
    memcpy(out, d->q, k);
    out[k] = 0;
    memmove(d->q, d->q + k, d->qlen - k);
    d->qlen -= k;
    return (int)k;
}

exsa_detok *exsa_detok_create(const exsa_tokenizer *t, int special, exsa_err *err)
{
    if (!t) {
        exsa_err_set(err, EXSA_EINVAL, "detok: tokenizer is NULL");
        return NULL;
    }
    exsa_detok *d = calloc(1, sizeof *d);
    if (!d) {
        exsa_err_set(err, EXSA_ENOMEM, "detok: out of memory");
        return NULL;
    }
    d->v = t->v;
    d->special = special != 0;
    d->strip_space = exsa_vocab_add_space_prefix(t->v);
    d->first = 1;
    /* Size the scratch for the longest piece so push never allocates. */
    size_t maxlen = 16;
    for (int32_t id = 0; id < exsa_vocab_n_tokens(t->v); id++) {
        int l = exsa_vocab_token_to_piece(t->v, id, NULL, 0, d->special);
        if (l > 0 && (size_t)l > maxlen)
            maxlen = (size_t)l;
    }
    d->piece_cap = maxlen;
    d->qcap = 3 * (maxlen + 4) + 64;
    d->piece = malloc(d->piece_cap);
    d->q = malloc(d->qcap);
    if (!d->piece || !d->q) {
        exsa_err_set(err, EXSA_ENOMEM, "detok: out of memory");
        exsa_detok_free(d);
        return NULL;
    }
    return d;
}

void exsa_detok_free(exsa_detok *d)
{
    if (!d)
        return;
    free(d->piece);
    free(d->q);
    free(d);
}

int exsa_detok_push(exsa_detok *d, int32_t id, char *out, size_t cap)
{
    if (!d)
        return EXSA_EINVAL;
    if (out && cap > 0)
        out[0] = 0;
    int n = exsa_vocab_token_to_piece(d->v, id, d->piece, d->piece_cap, d->special);
    if (n < 0)
        return EXSA_EINVAL;
    if ((size_t)n > d->piece_cap)
        return EXSA_EINVAL; /* cannot happen: sized at create */
    const char *p = d->piece;
    /* llama.cpp's detokenize strips one leading space of the very first
     * token when the vocab adds a space prefix. */
    if (d->first && d->strip_space && n > 0 && p[0] == ' ') {
        p++;
        n--;
    }
    d->first = 0;
    int rc = feed(d, p, (size_t)n);
    if (rc)
        return rc;
    return deliver(d, out, cap);
}

int exsa_detok_flush(exsa_detok *d, char *out, size_t cap)
{
    if (!d)
        return EXSA_EINVAL;
    if (d->npend > 0) {
        if (q_reserve(d, 12))
            return EXSA_ENOMEM;
        pend_drain(d, 1);
    }
    return deliver(d, out, cap);
}

void exsa_detok_reset(exsa_detok *d)
{
    if (!d)
        return;
    d->first = 1;
    d->npend = 0;
    d->qlen = 0;
}
