/* Prefix cache: full KV blocks addressed by their content.
 *
 * A full block's key is a chained hash: hash(parent block's key, the block's
 * block_size token ids), so a key names the whole prefix up to and including
 * that block. Registered blocks hold one reference of their own in the KV
 * pool (exsa_kv_block_ref), so they outlive the sequence that computed them;
 * a block nobody else references is "cached, unused" and is evicted least
 * recently used when the pool needs room. A new request walks its prompt
 * block by block and reuses the longest cached chain.
 *
 * Memory: a table sized at create for every pool block; nothing allocated
 * per request. Not thread safe: owned by the engine thread.
 */
#ifndef EXSA_PREFIX_CACHE_H
#define EXSA_PREFIX_CACHE_H

#include <stdint.h>

#include "exsa.h"
#include "model/kv_cache.h"

typedef struct exsa_prefix_cache exsa_prefix_cache;

exsa_prefix_cache *exsa_prefix_cache_create(exsa_kv_cache *kv, exsa_err *err);
void exsa_prefix_cache_free(exsa_prefix_cache *pc); /* drops every cached reference */

/* Longest chain of cached full blocks that the tokens start with: fills
 * blocks[0..k) and returns k (at most n_tokens / block_size, capped at
 * max_blocks). Marks them recently used. Takes no reference: attach them to
 * a sequence with exsa_kv_seq_attach before anything can evict them. */
int exsa_prefix_cache_match(exsa_prefix_cache *pc, const int32_t *tokens, int n_tokens,
                            int32_t *blocks, int max_blocks);

/* Registers the first n_full full blocks of a sequence (its tokens and its
 * block table) so later requests can reuse them; blocks already registered
 * are only touched. */
void exsa_prefix_cache_insert(exsa_prefix_cache *pc, const int32_t *tokens, int n_full,
                              const int32_t *block_table);

/* Evicts least-recently-used cached blocks that no sequence references
 * until the pool has at least n_free free blocks (or nothing is left to
 * evict). Returns the pool's free block count afterwards. */
int exsa_prefix_cache_make_room(exsa_prefix_cache *pc, int n_free);

/* Blocks the cache holds (referenced by sequences or not). */
int exsa_prefix_cache_n_blocks(const exsa_prefix_cache *pc);
/* Cached blocks no sequence uses (evictable). */
int exsa_prefix_cache_n_evictable(const exsa_prefix_cache *pc);

#endif
