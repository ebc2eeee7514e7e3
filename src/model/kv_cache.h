/* Paged KV cache: a pool of fixed-size blocks shared by all sequences.
 *
 * A block holds block_size tokens of K and V for every layer. Each sequence
 * has a block table (logical block i -> pool block id) and a length; the
 * attention op reads K/V through the table, so sequences grow without
 * copying and free blocks go back to the pool at once. Blocks carry
 * reference counts so that the engine can share full prefix blocks between
 * sequences (prefix caching builds on exsa_kv_block_ref / seq_share).
 *
 * Sliding-window layers (params.swa_layer) form a second group with a pool
 * of its own (swa_n_blocks blocks) and per-sequence block tables of the
 * same logical numbering. A sequence holds there only the blocks a query
 * can still see: exsa_kv_swa_prepare, called for each batch, takes blocks
 * for the batch's positions and returns those whose tokens are all older
 * than (newest position + 1) - swa_window - swa_keep. Sized n_seq *
 * (ceil((swa_window + swa_keep) / block_size) + 1) that pool never runs
 * out. Everything else (reserve, lengths, free counts, sharing) speaks of
 * the main group; sharing and attaching blocks is refused while there is
 * a window group (its blocks cannot follow a shared prefix).
 *
 * Memory: all K/V storage is allocated once at create (n_blocks blocks) from
 * the backend; block tables are sized for max_seq_len at create. Nothing is
 * allocated per token. Not thread safe: owned by the engine thread.
 */
#ifndef EXSA_KV_CACHE_H
#define EXSA_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "exsa.h"

typedef struct exsa_kv_cache exsa_kv_cache;

typedef struct exsa_kv_params {
    int n_layer, n_kv_head, head_dim;
    int type;          /* EXSA_TYPE_F32, EXSA_TYPE_F16 or EXSA_TYPE_Q8_0 */
    int block_size;    /* tokens per block (16) */
    int n_blocks;      /* pool size */
    int n_seq;         /* sequence ids are 0 .. n_seq-1 */
    int max_seq_len;   /* tokens per sequence (context length) */
    /* Sliding-window group: swa_layer[l] = 1 puts layer l in it (copied at
     * create; NULL or swa_window 0: no such group). A query at position p
     * of those layers reads keys k with p - k < swa_window; swa_keep more
     * tokens are kept for rollback and the rows of one batch (max_batch). */
    const uint8_t *swa_layer;
    int swa_window, swa_keep;
    int swa_n_blocks;  /* that group's pool */
    /* Where each layer's K/V lives: layer_be[l] allocates it ([n_layer],
     * copied at create; NULL: every layer on create's backend). */
    exsa_backend *const *layer_be;
} exsa_kv_params;

exsa_kv_cache *exsa_kv_cache_create(exsa_backend *b, const exsa_kv_params *p, exsa_err *err);
void exsa_kv_cache_free(exsa_kv_cache *kv);

/* Bytes the pools will take for these params (for `exsa info` and sizing). */
size_t exsa_kv_cache_bytes(const exsa_kv_params *p);
/* Blocks the window group needs so that it never runs out (see above). */
int exsa_kv_swa_blocks_needed(const exsa_kv_params *p);

const exsa_kv_params *exsa_kv_cache_params(const exsa_kv_cache *kv);
int exsa_kv_n_free_blocks(const exsa_kv_cache *kv);

/* Makes positions [0, n_tokens) of seq addressable, taking blocks from the
 * pool as needed. EXSA_EFULL (nothing changed) when the pool is short,
 * EXSA_EINVAL for a bad seq id or n_tokens > max_seq_len. */
int exsa_kv_seq_reserve(exsa_kv_cache *kv, int seq, int n_tokens, exsa_err *err);
/* Tokens reserved for seq (its length so far). */
int exsa_kv_seq_len(const exsa_kv_cache *kv, int seq);
/* Shrinks seq to n_tokens (rollback after rejected speculation), releasing
 * blocks past the end. */
void exsa_kv_seq_truncate(exsa_kv_cache *kv, int seq, int n_tokens);
/* Releases every block of seq. */
void exsa_kv_seq_free(exsa_kv_cache *kv, int seq);
/* Makes dst share src's first n_tokens by reference (n_tokens a multiple of
 * block_size, so shared blocks are full and never written again). dst must
 * be empty. */
int exsa_kv_seq_share(exsa_kv_cache *kv, int dst, int src, int n_tokens, exsa_err *err);

/* Block references for the engine's prefix cache: a cached block holds its
 * own reference, so it survives the sequence that computed it; a block goes
 * back to the pool when its last reference is dropped. */
void exsa_kv_block_ref(exsa_kv_cache *kv, int32_t block);
void exsa_kv_block_unref(exsa_kv_cache *kv, int32_t block);
int exsa_kv_block_refcount(const exsa_kv_cache *kv, int32_t block);
/* Starts empty sequence seq with n_blocks full blocks (taking a reference on
 * each): its first n_blocks * block_size positions are then cached. */
int exsa_kv_seq_attach(exsa_kv_cache *kv, int seq, const int32_t *blocks, int n_blocks,
                       exsa_err *err);

/* ---- the sliding-window group (exsa_kv_has_swa) ---- */
int exsa_kv_has_swa(const exsa_kv_cache *kv);
int exsa_kv_swa_n_free_blocks(const exsa_kv_cache *kv);
/* Blocks seq holds in the window group. */
int exsa_kv_swa_seq_blocks(const exsa_kv_cache *kv, int seq);
/* Checks that a batch (rows seq[i] at pos[i]) can run on the window group:
 * each sequence still holds the window of its first row (EXSA_EINVAL
 * otherwise: it was dropped, recompute the sequence from position 0) and
 * the pool covers the new blocks (EXSA_EFULL). Changes nothing. */
int exsa_kv_swa_check(exsa_kv_cache *kv, const int32_t *seq, const int32_t *pos, int n,
                      exsa_err *err);
/* Then, per sequence of the batch: returns its blocks wholly older than
 * (newest row position + 1) - swa_window - swa_keep and takes blocks for
 * every row's position. Call after a successful exsa_kv_swa_check. */
void exsa_kv_swa_prepare(exsa_kv_cache *kv, const int32_t *seq, const int32_t *pos, int n);
/* Whether seq truncated to n_tokens could go on (its window group still
 * holds the window before n_tokens); 1 without a window group. */
int exsa_kv_seq_resumable(const exsa_kv_cache *kv, int seq, int n_tokens);
int32_t exsa_kv_swa_slot(const exsa_kv_cache *kv, int seq, int pos);
const int32_t *exsa_kv_swa_block_table(const exsa_kv_cache *kv, int seq);

/* Pool slot of (seq, pos); pos must be reserved. */
int32_t exsa_kv_slot(const exsa_kv_cache *kv, int seq, int pos);
const int32_t *exsa_kv_block_table(const exsa_kv_cache *kv, int seq);
/* View of one layer's K/V pool for the backend ops (its group's pool). */
const exsa_kv_layer *exsa_kv_layer_at(const exsa_kv_cache *kv, int layer);

#endif
