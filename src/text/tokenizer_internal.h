/* Shared by the tokenizer files (tokenizer.c dispatches; tokenizer_bpe.c,
 * tokenizer_spm.c, tokenizer_wpm.c encode one fragment of plain text that
 * holds no special tokens). Not visible outside src/text/. */
#ifndef EXSA_TEXT_TOKENIZER_INTERNAL_H
#define EXSA_TEXT_TOKENIZER_INTERNAL_H

#include <stdint.h>
#include <stdlib.h>

#include "text/tokenizer.h"

/* A growable id array owned by the caller of an encode function. */
typedef struct exsa_tokbuf {
    int32_t *ids;
    int64_t n, cap;
} exsa_tokbuf;

static inline int exsa_tokbuf_push(exsa_tokbuf *b, int32_t id)
{
    if (b->n == b->cap) {
        int64_t cap = b->cap ? b->cap * 2 : 64;
        int32_t *p = realloc(b->ids, (size_t)cap * sizeof *p);
        if (!p)
            return EXSA_ENOMEM;
        b->ids = p;
        b->cap = cap;
    }
    b->ids[b->n++] = id;
    return 0;
}

/* Byte-level BPE (tokenizer_bpe.c): merges and the pre-tokenizer regexes
 * chosen by tokenizer.ggml.pre, compiled once with PCRE2 JIT. */
typedef struct exsa_bpe exsa_bpe;
exsa_bpe *exsa_bpe_create(const exsa_vocab *v, exsa_err *err);
void exsa_bpe_free(exsa_bpe *b);
/* text is valid UTF-8 (the caller replaced invalid bytes). */
int exsa_bpe_encode(const exsa_bpe *b, const char *text, size_t len, exsa_tokbuf *out,
                    exsa_err *err);

/* SentencePiece (tokenizer_spm.c): score-based merges, byte fallback. */
typedef struct exsa_spm exsa_spm;
exsa_spm *exsa_spm_create(const exsa_vocab *v, exsa_err *err);
void exsa_spm_free(exsa_spm *s);
int exsa_spm_encode(const exsa_spm *s, const char *text, size_t len, exsa_tokbuf *out,
                    exsa_err *err);

/* WordPiece (tokenizer_wpm.c): BERT normalization, greedy longest match. */
typedef struct exsa_wpm exsa_wpm;
exsa_wpm *exsa_wpm_create(const exsa_vocab *v, exsa_err *err);
void exsa_wpm_free(exsa_wpm *w);
int exsa_wpm_encode(const exsa_wpm *w, const char *text, size_t len, exsa_tokbuf *out,
                    exsa_err *err);

#endif
