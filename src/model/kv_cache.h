/* Paged KV cache: a pool of fixed-size blocks shared by all sequences.
 *
 * A block holds block_size tokens of K and V for every layer. Each sequence
 * has a block table (logical block i -> pool block id) and a length; the
 * attention op reads K/V through the table, so sequences grow without
 * copying and free blocks go back to the pool at once. Blocks carry
 * reference counts so that the engine can share full prefix blocks between
 * sequences (prefix caching builds on exsa_kv_block_ref / seq_share).
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
} exsa_kv_params;

exsa_kv_cache *exsa_kv_cache_create(exsa_backend *b, const exsa_kv_params *p, exsa_err *err);
void exsa_kv_cache_free(exsa_kv_cache *kv);

/* Bytes the pool will take for these params (for `exsa info` and sizing). */
size_t exsa_kv_cache_bytes(const exsa_kv_params *p);

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

/* Pool slot of (seq, pos); pos must be reserved. */
int32_t exsa_kv_slot(const exsa_kv_cache *kv, int seq, int pos);
const int32_t *exsa_kv_block_table(const exsa_kv_cache *kv, int seq);
/* View of one layer's K/V pool for the backend ops. */
const exsa_kv_layer *exsa_kv_layer_at(const exsa_kv_cache *kv, int layer);

#endif
