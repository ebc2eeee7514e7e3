/* Pre-tokenizer of byte-level BPE: splits text into the pieces that merges
 * never cross, with the regex list chosen by tokenizer.ggml.pre.
 *
 * The lists are llama.cpp's (the reference the fixtures come from), run with
 * PCRE2 (UTF + UCP, JIT). Like llama.cpp, the regexes apply in sequence: each
 * one splits every piece produced by the previous one, and the parts of a
 * piece it does not match stay pieces of their own, so the pieces always tile
 * the whole text. A regex sees only its piece (lookaheads and `$` stop at the
 * piece's end).
 *
 * Where llama.cpp's std::regex path differs from PCRE2 the patterns are
 * rewritten at create so the pieces come out the same: `\s` is exactly
 * llama.cpp's whitespace set, `\d` is ASCII, `$` is the end only.
 *
 * Compiled once, read-only afterwards; exsa_pretok_split keeps its scratch in
 * the caller's exsa_pieces, so one exsa_pretok serves many threads. */
#ifndef EXSA_TEXT_PRETOKENIZE_H
#define EXSA_TEXT_PRETOKENIZE_H

#include <stddef.h>

#include "exsa.h"

typedef struct exsa_pretok exsa_pretok;

/* name/len: the tokenizer.ggml.pre value; NULL means absent ("default").
 * Unknown name -> NULL with EXSA_EUNSUPPORTED. */
exsa_pretok *exsa_pretok_create(const char *name, size_t len, exsa_err *err);
void exsa_pretok_free(exsa_pretok *p);

/* 1 when a piece that is itself a token must be taken whole, without merges
 * (llama.cpp's ignore_merges: llama3 family, tekken). */
int exsa_pretok_ignore_merges(const exsa_pretok *p);
/* The canonical name of the regex list in use ("gpt2", "llama3", ...). */
const char *exsa_pretok_name(const exsa_pretok *p);

/* Piece i is text[end[i-1] .. end[i]) with end[-1] = 0. Owned by the caller:
 * zero-initialise, reuse across calls, release with exsa_pieces_free. */
typedef struct exsa_pieces {
    size_t *end;
    size_t n, cap;
    size_t *tmp; /* scratch: the previous regex's pieces */
    size_t tmp_cap;
} exsa_pieces;

void exsa_pieces_free(exsa_pieces *pc);

/* text must be valid UTF-8 (EXSA_EINVAL otherwise, with the byte offset). */
int exsa_pretok_split(const exsa_pretok *p, const char *text, size_t len, exsa_pieces *out,
                      exsa_err *err);

#endif
