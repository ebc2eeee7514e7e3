/* Speculative decoding's proposers: what a sequence is guessed to say next.
 *
 * The engine verifies the guesses (engine.c): a speculating sequence puts
 * its last token and k guessed tokens into the step's batch, samples each
 * row in order with its own sampler chain, and keeps guesses while the
 * sampled token equals the guess. Both proposers here are deterministic (a
 * point-mass proposal), for which the rejection rule of speculative
 * sampling (accept with min(1, p/q), else resample from max(0, p - q))
 * reduces to exactly that: sample the target and compare. So the output is
 * the target's distribution, and for a given seed even the same tokens as
 * without speculation.
 *
 *  - n-gram lookup (exsa_ngram_*): no weights. The sequence's n-grams
 *    (n = EXSA_NGRAM_MIN..EXSA_NGRAM_MAX) are hashed to the position that
 *    followed their latest occurrence; the longest suffix found proposes
 *    what came after it. Wins where output copies input (editing code,
 *    rewriting or quoting a document).
 *  - a draft model (exsa_drafter_*): a small GGUF with the target's
 *    vocabulary, on its own KV cache, proposing its greedy continuation for
 *    every speculating sequence in one batched pass per drafted position.
 */
#ifndef EXSA_SPECULATIVE_H
#define EXSA_SPECULATIVE_H

#include <stdint.h>

#include "exsa.h"
#include "model/model.h"
#include "text/vocab.h"
#include "util/err.h"

#define EXSA_NGRAM_MIN 3
#define EXSA_NGRAM_MAX 4

/* ---- n-gram lookup (one index per sequence; not thread safe) ---- */

typedef struct exsa_ngram_index exsa_ngram_index;

/* An index for a sequence of at most cap_tokens tokens. NULL + err. */
exsa_ngram_index *exsa_ngram_index_create(int cap_tokens, exsa_err *err);
void exsa_ngram_index_free(exsa_ngram_index *ix);
/* Forgets everything (the sequence is replaced). */
void exsa_ngram_index_reset(exsa_ngram_index *ix);
/* Indexes tokens[0..n) (the sequence so far; tokens before the last call's
 * n are assumed unchanged), then proposes up to max tokens that continue it
 * into out. Returns how many (0: no n-gram of the suffix was seen before). */
int exsa_ngram_propose(exsa_ngram_index *ix, const int32_t *tokens, int n, int32_t *out, int max);

/* Proposes from another token array: ix indexes ref[0..n_ref) (once),
 * and the longest suffix of tokens[0..n) found in it proposes what follows
 * it there (up to the end of ref). For a request's predicted output. */
int exsa_ngram_propose_from(exsa_ngram_index *ix, const int32_t *ref, int n_ref,
                            const int32_t *tokens, int n, int32_t *out, int max);

/* ---- draft model ---- */

typedef struct exsa_drafter exsa_drafter;

typedef struct exsa_drafter_params {
    const char *path;     /* GGUF file */
    int n_threads;
    int n_seq;            /* sequence ids 0 .. n_seq-1 (the engine's slots) */
    int n_ctx;            /* tokens per sequence */
    int max_batch;        /* rows per draft forward pass */
    int kv_tokens;        /* the draft's KV pool in tokens */
    int device, n_gpu_layers, gpu; /* placement, as the target's */
} exsa_drafter_params;

/* Loads the draft model and checks its vocabulary against the target's:
 * same kind, same special tokens, the same text for every token id both
 * have, at most 128 ids more or fewer. The error names the first
 * difference. */
exsa_drafter *exsa_drafter_create(const exsa_drafter_params *p, const exsa_vocab *target,
                                  exsa_err *err);
void exsa_drafter_free(exsa_drafter *d);
const char *exsa_drafter_name(const exsa_drafter *d);

/* One sequence's share of a drafting pass. */
typedef struct exsa_draft_req {
    int seq;              /* sequence id */
    const int32_t *tokens; /* the sequence so far */
    int n_tok;
    int max;              /* tokens to propose at most (>= 1) */
    float p_min;          /* stop below this draft probability */
    int32_t *out;         /* [max] */
    int n_out;            /* set: tokens proposed */
} exsa_draft_req;

/* Proposes for n sequences at once: each sequence's new tokens are run
 * through the draft (its KV keeps what still matches, the rest is
 * recomputed), then its greedy continuation is drafted one batched pass per
 * position, stopping early for a sequence whose draft probability falls
 * below its p_min or whose KV pool share is full. 0, or an error code (then
 * every n_out is 0). */
int exsa_drafter_propose(exsa_drafter *d, exsa_draft_req *reqs, int n, exsa_err *err);
/* The sequence ended: its draft KV goes back to the pool. */
void exsa_drafter_forget(exsa_drafter *d, int seq);

#endif
