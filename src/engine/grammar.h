/* Grammar-constrained sampling: GBNF (llama.cpp's grammar syntax) compiled
 * once into an immutable exsa_grammar, and a per-sequence matcher that says
 * which tokens of a vocabulary may come next.
 *
 * Syntax: rules `name ::= alternatives` (names of letters, digits, '-' and
 * '_'), alternation `|`, grouping `( )`, repetition `* + ? {m} {m,} {m,n}`,
 * string literals "..." with escapes \n \t \r \\ \" \' \[ \] \- \^ \/ \xHH
 * \uHHHH \UHHHHHHHH, character classes [a-z] / [^...] with the same escapes,
 * `.` (any code point), comments `#` to end of line, UTF-8 anywhere, and
 * tokens: `<[123]>` (token id 123) or `<|name|>` / `<think>` (the one token
 * whose text is exactly that), each negatable with a leading `!` (any
 * non-end-of-generation token but that one). Newlines end a rule except
 * inside parentheses, right after `|`, or before a line that starts with
 * `|`. Terminals are Unicode code points; token elements match whole tokens.
 *
 * Matching: a pushdown matcher over code points whose state is a
 * deduplicated set of stacks of rule positions (right recursion does not
 * grow a stack); left recursion is rejected at parse time. Bytes of a token
 * may end inside a UTF-8 sequence: the partial code point is carried in the
 * state. Each matcher memoizes its states (interned stack sets) and their
 * byte transitions, so the mask is one walk of the vocabulary's byte trie
 * with table lookups, pruned where no stack can continue, and the mask of
 * a state already seen is a copy.
 *
 * Threads: exsa_grammar and exsa_grammar_vocab are read-only after creation
 * and may be shared; a matcher belongs to one sequence (one thread at a
 * time). The grammar and the vocabulary view must outlive their matchers. */
#ifndef EXSA_ENGINE_GRAMMAR_H
#define EXSA_ENGINE_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

#include "exsa.h"

typedef struct exsa_grammar exsa_grammar;
typedef struct exsa_grammar_vocab exsa_grammar_vocab;
typedef struct exsa_grammar_matcher exsa_grammar_matcher;
struct exsa_vocab;

/* Compiles GBNF text[0..len). root: the start rule (NULL: "root"). NULL
 * with err set ("grammar: line L col C: what") on any error: undefined
 * rule, unbalanced parenthesis, bad escape, empty grammar, missing root,
 * left recursion, nesting deeper than 128, more than 1M elements after
 * repetitions are expanded. */
exsa_grammar *exsa_grammar_parse(const char *text, size_t len, const char *root, exsa_err *err);
void exsa_grammar_free(exsa_grammar *g);
/* Rules after expansion (groups and repetitions add rules); for tests. */
int exsa_grammar_n_rules(const exsa_grammar *g);

/* The byte view of a model's vocabulary, built once per model: each token's
 * bytes (exsa_vocab_token_to_piece), its text with specials rendered (for
 * `<|name|>` references) and whether it ends generation. Control tokens
 * whose bytes are empty can only be produced through token elements. */
exsa_grammar_vocab *exsa_grammar_vocab_create(const struct exsa_vocab *v, exsa_err *err);
/* For tests: token i is tokens[i][0..lens[i]) (both its bytes and its
 * text); eog lists the end-of-generation ids. */
exsa_grammar_vocab *exsa_grammar_vocab_from_strings(const char *const *tokens, const size_t *lens,
                                                    int n, const int32_t *eog, int n_eog,
                                                    exsa_err *err);
void exsa_grammar_vocab_free(exsa_grammar_vocab *gv);
int32_t exsa_grammar_vocab_n_tokens(const exsa_grammar_vocab *gv);

/* Fails (NULL, err set) when a token element names text that is not
 * exactly one token, or an id outside the vocabulary. */
exsa_grammar_matcher *exsa_grammar_matcher_create(const exsa_grammar *g,
                                                  const exsa_grammar_vocab *gv, exsa_err *err);
void exsa_grammar_matcher_free(exsa_grammar_matcher *m);
/* Back to the start of the grammar (memoized states are kept). */
void exsa_grammar_matcher_reset(exsa_grammar_matcher *m);
/* Writes the allowed next tokens into allowed (ceil(n_vocab / 32) words,
 * bit i of word i/32 = token i). End-of-generation tokens are allowed
 * exactly when the output so far is complete. Returns the number allowed
 * (0 after an end-of-generation token was accepted), or a negative code
 * (EXSA_EFULL: the grammar is too ambiguous: over 16384 stacks or the
 * state tables' bounds). */
int exsa_grammar_matcher_mask(exsa_grammar_matcher *m, uint32_t *allowed);
/* Advances over one token. EXSA_EINVAL when the token is not allowed (the
 * state is unchanged). Accepting an end-of-generation token finishes the
 * matcher. */
int exsa_grammar_matcher_accept(exsa_grammar_matcher *m, int32_t token);
/* Advances over raw output bytes (lazy grammars replay the text after a
 * trigger). EXSA_EINVAL when they leave the grammar (state unchanged). */
int exsa_grammar_matcher_accept_bytes(exsa_grammar_matcher *m, const char *s, size_t n);
/* 1 when the output so far is a complete sentence of the grammar (or an
 * end-of-generation token was accepted), else 0. */
int exsa_grammar_matcher_done(const exsa_grammar_matcher *m);
/* The last error of mask/accept (a static-lifetime-of-m message). */
const char *exsa_grammar_matcher_error(const exsa_grammar_matcher *m);

#endif
