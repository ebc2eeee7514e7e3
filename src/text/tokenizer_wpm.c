/* WordPiece (BERT) encoder as llama.cpp runs it on GGUF vocabs. The GGUF
 * conversion stores word-initial pieces with a U+2581 prefix and
 * continuation pieces ("##xx" in BERT) bare, so a word is matched as
 * U+2581 + word, greedily longest-first from the left.
 *
 * Normalization (BERT's BasicTokenizer as llama.cpp runs it, which the
 * reference ids come from), under the GGUF keys
 * tokenizer.ggml.normalizer.lowercase (default on) and .strip_accents
 * (default: as lowercase): with strip_accents every code point is replaced
 * by the first code point of its canonical decomposition and combining
 * marks (category M: accents, but also the vowel signs and viramas of Indic
 * scripts) are dropped; with lowercase it is lowercased; whitespace splits
 * words; NUL, U+FFFD and control characters are dropped; punctuation, ASCII
 * symbols and CJK ideographs become one-character words. */
#include <string.h>
#include <utf8proc.h>

#include "text/tokenizer_internal.h"
#include "util/err.h"

struct exsa_wpm {
    const exsa_vocab *v;
    size_t max_token_len; /* bytes; bounds the longest-match search */
    int32_t unk;
    int lowercase, strip_accents;
};

exsa_wpm *exsa_wpm_create(const exsa_vocab *v, exsa_err *err)
{
    exsa_wpm *w = calloc(1, sizeof *w);
    if (!w) {
        exsa_err_set(err, EXSA_ENOMEM, "wpm: out of memory");
        return NULL;
    }
    w->v = v;
    w->lowercase = 1;
    exsa_gguf_get_bool(exsa_vocab_gguf(v), "tokenizer.ggml.normalizer.lowercase", &w->lowercase, NULL);
    w->strip_accents = w->lowercase;
    exsa_gguf_get_bool(exsa_vocab_gguf(v), "tokenizer.ggml.normalizer.strip_accents", &w->strip_accents,
                       NULL);
    w->unk = exsa_vocab_unk(v);
    if (w->unk < 0 && exsa_vocab_n_tokens(v) > 100)
        w->unk = 100; /* BERT's [UNK], llama.cpp's default too */
    for (int32_t id = 0; id < exsa_vocab_n_tokens(v); id++) {
        size_t len;
        exsa_vocab_token_str(v, id, &len);
        if (len > w->max_token_len)
            w->max_token_len = len;
    }
    return w;
}

void exsa_wpm_free(exsa_wpm *w) { free(w); }

static int is_whitespace(utf8proc_int32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* BERT's CJK ranges (0x2B920 rather than 0x2B820, as HF's Rust code has it). */
static int is_chinese(utf8proc_int32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* First code point of the canonical decomposition of c. */
static utf8proc_int32_t nfd_first(utf8proc_int32_t c)
{
    utf8proc_int32_t buf[8];
    int boundclass = 0;
    utf8proc_ssize_t n = utf8proc_decompose_char(c, buf, 8, UTF8PROC_DECOMPOSE, &boundclass);
    return n >= 1 && n <= 8 ? buf[0] : c;
}

/* Greedy longest match of word[0..n) (which starts with U+2581). */
static int match_word(const exsa_wpm *w, const char *word, size_t n, exsa_tokbuf *out)
{
    int64_t start = out->n;
    for (size_t i = 0; i < n;) {
        size_t j = i + w->max_token_len < n ? i + w->max_token_len : n;
        int32_t id = -1;
        for (; j > i; j--)
            if ((id = exsa_vocab_find(w->v, word + i, j - i)) >= 0)
                break;
        if (id < 0) {
            out->n = start; /* one unmatched piece discards the word */
            break;
        }
        if (exsa_tokbuf_push(out, id))
            return EXSA_ENOMEM;
        i = j;
    }
    if (out->n == start && w->unk >= 0 && exsa_tokbuf_push(out, w->unk))
        return EXSA_ENOMEM;
    return 0;
}

int exsa_wpm_encode(const exsa_wpm *w, const char *text, size_t len, exsa_tokbuf *out,
                    exsa_err *err)
{
    /* A word is at most the whole text lowercased (up to 4 bytes per code
     * point from any 1..4-byte input char) plus the 3-byte prefix. */
    size_t cap;
    if (__builtin_mul_overflow(len, (size_t)4, &cap) || __builtin_add_overflow(cap, 8, &cap))
        return exsa_err_set(err, EXSA_ENOMEM, "wpm: text of %zu bytes too large", len);
    char *word = malloc(cap);
    if (!word)
        return exsa_err_set(err, EXSA_ENOMEM, "wpm: out of memory (%zu bytes)", cap);
    memcpy(word, "\xe2\x96\x81", 3);
    size_t wn = 3; /* bytes in word, prefix included */
    int rc = 0;
    const utf8proc_uint8_t *s = (const utf8proc_uint8_t *)text;
    for (size_t i = 0; i < len && rc == 0;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(len - i), &c);
        if (k <= 0) {
            c = 0xFFFD; /* caller promised valid UTF-8; stay safe anyway */
            k = 1;
        }
        i += (size_t)k;
        if (w->strip_accents)
            c = nfd_first(c);
        if (is_whitespace(c)) {
            if (wn > 3)
                rc = match_word(w, word, wn, out);
            wn = 3;
            continue;
        }
        utf8proc_category_t cat = utf8proc_category(c);
        int control = cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF ||
                      cat == UTF8PROC_CATEGORY_CS || cat == UTF8PROC_CATEGORY_CO;
        if (c == 0 || c == 0xFFFD || control)
            continue;
        if (w->strip_accents && cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME)
            continue;
        int punct = cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
        int symbol = cat >= UTF8PROC_CATEGORY_SM && cat <= UTF8PROC_CATEGORY_SO;
        utf8proc_uint8_t enc[4];
        utf8proc_ssize_t el = utf8proc_encode_char(w->lowercase ? utf8proc_tolower(c) : c, enc);
        if (punct || (c < 0x7F && symbol) || is_chinese(c)) {
            if (wn > 3)
                rc = match_word(w, word, wn, out);
            if (rc == 0)
                memcpy(word + 3, enc, (size_t)el);
            if (rc == 0)
                rc = match_word(w, word, 3 + (size_t)el, out);
            wn = 3;
        } else {
            memcpy(word + wn, enc, (size_t)el);
            wn += (size_t)el;
        }
    }
    if (rc == 0 && wn > 3)
        rc = match_word(w, word, wn, out);
    free(word);
    if (rc)
        exsa_err_set(err, rc, "wpm: out of memory");
    return rc;
}
