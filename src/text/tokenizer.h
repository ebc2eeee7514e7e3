/* Text -> token ids for every GGUF tokenizer kind, and the streaming
 * detokenizer.
 *
 * A tokenizer is built once from a vocab (exsa_vocab_load) and is read-only
 * afterwards: safe to share between threads. Special/control tokens are
 * recognised in the text only with EXSA_TOK_PARSE_SPECIAL (chat templates
 * ask for it; raw user text does not); merges never produce them. Invalid
 * UTF-8 in the input is replaced by U+FFFD deterministically.
 */
#ifndef EXSA_TEXT_TOKENIZER_H
#define EXSA_TEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "exsa.h"
#include "text/vocab.h"

enum {
    EXSA_TOK_ADD_SPECIAL = 1,   /* add BOS/EOS as the model's add_bos/add_eos say */
    EXSA_TOK_PARSE_SPECIAL = 2, /* match special/control token strings in the text */
};

typedef struct exsa_tokenizer exsa_tokenizer;

/* Does not take ownership of v (which must outlive the tokenizer). Fails
 * with a clear message for an unknown pre-tokenizer (tokenizer.ggml.pre) or
 * malformed merges. */
exsa_tokenizer *exsa_tokenizer_create(const exsa_vocab *v, exsa_err *err);
void exsa_tokenizer_free(exsa_tokenizer *t);
const exsa_vocab *exsa_tokenizer_vocab(const exsa_tokenizer *t);

/* Tokenizes text[0..len). Writes at most cap ids and returns the total
 * count (call again with a bigger buffer when it exceeds cap), or a
 * negative EXSA_E* code with err set. */
int64_t exsa_tokenize(const exsa_tokenizer *t, const char *text, size_t len, int flags,
                      int32_t *ids, int64_t cap, exsa_err *err);

/* Streaming detokenizer: feed ids one at a time; text comes out only as
 * complete UTF-8 characters (byte-fallback tokens are reassembled; the SPM
 * leading space of the first piece is removed as llama.cpp does). A
 * sequence that can never complete is flushed as U+FFFD. */
typedef struct exsa_detok exsa_detok;

/* special: render control tokens as their text (else they give ""). */
exsa_detok *exsa_detok_create(const exsa_tokenizer *t, int special, exsa_err *err);
void exsa_detok_free(exsa_detok *d);
/* Appends the text completed by id to out (at most cap bytes, always
 * NUL-terminated when cap > 0); returns the byte count written, < 0 on a bad
 * id. Text that does not fit is kept for the next call. */
int exsa_detok_push(exsa_detok *d, int32_t id, char *out, size_t cap);
/* Writes whatever is pending (an incomplete character becomes U+FFFD). */
int exsa_detok_flush(exsa_detok *d, char *out, size_t cap);
void exsa_detok_reset(exsa_detok *d);

#endif
