/* Prefix cache over the paged KV pool.
 *
 * Every pool block has a slot here. A registered block records its chained
 * key, a copy of its block_size token ids and the identity of its parent
 * (parent block id plus the parent's registration generation). A match
 * accepts a block only when the tokens are equal and the parent is exactly
 * the block matched one step before, so the 64-bit key is only an index:
 * two prefixes whose keys collide can never be confused. A slot's
 * generation changes when it is evicted, so a child whose parent was
 * evicted (and whose id may since hold other content) can never match
 * again; such orphans are evicted before anything else.
 *
 * Keys go into an open-addressing table (linear probing, 2x the pool, with
 * backward-shift deletion so no tombstones accumulate). Recency is an
 * intrusive doubly-linked list of all cached blocks, most recent first.
 * Whether a block is evictable (refcount 1: only our own reference) is read
 * from the pool at eviction time, because sequences drop references without
 * telling us; make_room therefore walks the list once from the cold end.
 * A matched or inserted chain is touched deepest block first, so a parent is
 * always more recent than its children and LRU evicts leaves first, which
 * keeps the surviving part of a chain matchable.
 */
#include "engine/prefix_cache.h"

#include <stdlib.h>
#include <string.h>

#include "util/err.h"
#include "util/hash.h"

/* Tests may map keys onto a few values to force collisions; the real
 * build keeps all 64 bits. */
#ifndef EXSA_PREFIX_CACHE_KEY_MAP
#define EXSA_PREFIX_CACHE_KEY_MAP(k) (k)
#endif

typedef struct pc_slot {
    uint64_t key;
    uint64_t gen;        /* bumped at eviction: names one registration */
    uint64_t parent_gen; /* gen of the parent when this block was registered */
    int32_t parent;      /* parent block id, -1 for the first block */
    int32_t prev, next;  /* recency list, -1 at the ends */
    int cached;
} pc_slot;

struct exsa_prefix_cache {
    exsa_kv_cache *kv;
    int block_size;
    int n_pool;           /* pool blocks */
    int max_chain;        /* blocks per sequence */
    pc_slot *slots;       /* [n_pool] */
    int32_t *tokens;      /* [n_pool][block_size] tokens of each cached block */
    int32_t *table;       /* [table_mask+1] block ids, -1 empty */
    size_t table_mask;
    int32_t *chain;       /* [max_chain] scratch for insert */
    int32_t mru, lru;     /* recency list ends */
    int n_cached;
};

static uint64_t mix64(uint64_t z)
{
    /* FNV-1a's low bits are weak; the table index uses them. */
    z = (z ^ (z >> 33)) * 0xff51afd7ed558ccdull;
    z = (z ^ (z >> 33)) * 0xc4ceb9fe1a85ec53ull;
    return z ^ (z >> 33);
}

static uint64_t block_key(const exsa_prefix_cache *pc, uint64_t parent_key, const int32_t *t)
{
    uint64_t h = exsa_hash_bytes(parent_key, t, (size_t)pc->block_size * sizeof *t);
    return EXSA_PREFIX_CACHE_KEY_MAP(mix64(h));
}

static const int32_t *slot_tokens(const exsa_prefix_cache *pc, int32_t b)
{
    return pc->tokens + (size_t)b * (size_t)pc->block_size;
}

exsa_prefix_cache *exsa_prefix_cache_create(exsa_kv_cache *kv, exsa_err *err)
{
    if (!kv) {
        exsa_err_set(err, EXSA_EINVAL, "prefix cache: kv cache is NULL");
        return NULL;
    }
    const exsa_kv_params *p = exsa_kv_cache_params(kv);
    size_t n_tok, table_size = 2;
    if (__builtin_mul_overflow((size_t)p->n_blocks, (size_t)p->block_size, &n_tok)) {
        exsa_err_set(err, EXSA_ENOMEM, "prefix cache: %d blocks of %d tokens overflow",
                     p->n_blocks, p->block_size);
        return NULL;
    }
    /* Power of two >= 2 * n_blocks keeps probe chains short. */
    while (table_size < (size_t)p->n_blocks * 2)
        table_size *= 2;
    exsa_prefix_cache *pc = calloc(1, sizeof *pc);
    if (!pc) {
        exsa_err_set(err, EXSA_ENOMEM, "prefix cache: out of memory");
        return NULL;
    }
    pc->kv = kv;
    pc->block_size = p->block_size;
    pc->n_pool = p->n_blocks;
    pc->max_chain = (p->max_seq_len + p->block_size - 1) / p->block_size;
    pc->slots = calloc((size_t)p->n_blocks, sizeof *pc->slots);
    pc->tokens = calloc(n_tok, sizeof *pc->tokens);
    pc->table = malloc(table_size * sizeof *pc->table);
    pc->chain = calloc((size_t)pc->max_chain, sizeof *pc->chain);
    if (!pc->slots || !pc->tokens || !pc->table || !pc->chain) {
        exsa_err_set(err, EXSA_ENOMEM,
                     "prefix cache: cannot allocate tables for %d blocks of %d tokens",
                     p->n_blocks, p->block_size);
        exsa_prefix_cache_free(pc);
        return NULL;
    }
    pc->table_mask = table_size - 1;
    for (size_t i = 0; i < table_size; i++)
        pc->table[i] = -1;
    for (int b = 0; b < pc->n_pool; b++)
        pc->slots[b] = (pc_slot){.parent = -1, .prev = -1, .next = -1};
    pc->mru = pc->lru = -1;
    return pc;
}

/* ---- recency list ---- */

static void list_unlink(exsa_prefix_cache *pc, int32_t b)
{
    pc_slot *s = &pc->slots[b];
    if (s->prev >= 0)
        pc->slots[s->prev].next = s->next;
    else
        pc->mru = s->next;
    if (s->next >= 0)
        pc->slots[s->next].prev = s->prev;
    else
        pc->lru = s->prev;
    s->prev = s->next = -1;
}

static void list_push_front(exsa_prefix_cache *pc, int32_t b)
{
    pc_slot *s = &pc->slots[b];
    s->prev = -1;
    s->next = pc->mru;
    if (pc->mru >= 0)
        pc->slots[pc->mru].prev = b;
    else
        pc->lru = b;
    pc->mru = b;
}

/* Marks chain[0..n) used, deepest first so the first block ends up most
 * recent (children are evicted before their parents). */
static void touch_chain(exsa_prefix_cache *pc, const int32_t *chain, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        list_unlink(pc, chain[i]);
        list_push_front(pc, chain[i]);
    }
}

/* ---- key table ---- */

static int32_t table_find(const exsa_prefix_cache *pc, uint64_t key, int32_t parent,
                          uint64_t parent_gen, const int32_t *t)
{
    size_t bytes = (size_t)pc->block_size * sizeof *t;
    for (size_t i = key & pc->table_mask;; i = (i + 1) & pc->table_mask) {
        int32_t b = pc->table[i];
        if (b < 0)
            return -1;
        const pc_slot *s = &pc->slots[b];
        if (s->key == key && s->parent == parent && s->parent_gen == parent_gen &&
            memcmp(slot_tokens(pc, b), t, bytes) == 0)
            return b;
    }
}

static void table_add(exsa_prefix_cache *pc, int32_t b)
{
    size_t i = pc->slots[b].key & pc->table_mask;
    while (pc->table[i] >= 0)
        i = (i + 1) & pc->table_mask;
    pc->table[i] = b;
}

static void table_remove(exsa_prefix_cache *pc, int32_t b)
{
    size_t i = pc->slots[b].key & pc->table_mask;
    while (pc->table[i] != b)
        i = (i + 1) & pc->table_mask;
    pc->table[i] = -1;
    /* Backward shift: pull later entries of the run into the hole unless
     * their home lies cyclically in (hole, j], so every entry stays
     * reachable from its home without tombstones. */
    for (size_t j = (i + 1) & pc->table_mask; pc->table[j] >= 0; j = (j + 1) & pc->table_mask) {
        size_t home = pc->slots[pc->table[j]].key & pc->table_mask;
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays)
            continue;
        pc->table[i] = pc->table[j];
        pc->table[j] = -1;
        i = j;
    }
}

/* ---- registration ---- */

static void evict(exsa_prefix_cache *pc, int32_t b)
{
    pc_slot *s = &pc->slots[b];
    table_remove(pc, b);
    list_unlink(pc, b);
    s->cached = 0;
    s->gen++;
    pc->n_cached--;
    exsa_kv_block_unref(pc->kv, b);
}

void exsa_prefix_cache_free(exsa_prefix_cache *pc)
{
    if (!pc)
        return;
    if (pc->slots)
        for (int32_t b = 0; b < pc->n_pool; b++)
            if (pc->slots[b].cached)
                exsa_kv_block_unref(pc->kv, b);
    free(pc->slots);
    free(pc->tokens);
    free(pc->table);
    free(pc->chain);
    free(pc);
}

int exsa_prefix_cache_match(exsa_prefix_cache *pc, const int32_t *tokens, int n_tokens,
                            int32_t *blocks, int max_blocks)
{
    if (!pc || !tokens || !blocks || n_tokens <= 0 || max_blocks <= 0)
        return 0;
    int limit = n_tokens / pc->block_size;
    if (limit > max_blocks)
        limit = max_blocks;
    int32_t parent = -1;
    uint64_t parent_gen = 0, h = EXSA_HASH_INIT;
    int k = 0;
    for (; k < limit; k++) {
        const int32_t *t = tokens + (size_t)k * (size_t)pc->block_size;
        uint64_t key = block_key(pc, h, t);
        int32_t b = table_find(pc, key, parent, parent_gen, t);
        if (b < 0)
            break;
        blocks[k] = b;
        parent = b;
        parent_gen = pc->slots[b].gen;
        h = key;
    }
    touch_chain(pc, blocks, k);
    return k;
}

void exsa_prefix_cache_insert(exsa_prefix_cache *pc, const int32_t *tokens, int n_full,
                              const int32_t *block_table)
{
    if (!pc || !tokens || !block_table || n_full <= 0)
        return;
    if (n_full > pc->max_chain)
        n_full = pc->max_chain;
    int32_t parent = -1;
    uint64_t parent_gen = 0, h = EXSA_HASH_INIT;
    int n = 0;
    for (; n < n_full; n++) {
        const int32_t *t = tokens + (size_t)n * (size_t)pc->block_size;
        uint64_t key = block_key(pc, h, t);
        /* The same prefix may be cached already in another block (two
         * sequences computed it independently): keep that one and chain
         * this sequence's later blocks to it. */
        int32_t b = table_find(pc, key, parent, parent_gen, t);
        if (b < 0) {
            b = block_table[n];
            /* A block that is not live, or is cached under another prefix,
             * contradicts the caller; register nothing past it. */
            if (b < 0 || b >= pc->n_pool || exsa_kv_block_refcount(pc->kv, b) <= 0 ||
                pc->slots[b].cached)
                break;
            pc_slot *s = &pc->slots[b];
            s->key = key;
            s->parent = parent;
            s->parent_gen = parent_gen;
            s->cached = 1;
            memcpy(pc->tokens + (size_t)b * (size_t)pc->block_size, t,
                   (size_t)pc->block_size * sizeof *t);
            table_add(pc, b);
            list_push_front(pc, b);
            pc->n_cached++;
            exsa_kv_block_ref(pc->kv, b);
        }
        pc->chain[n] = b;
        parent = b;
        parent_gen = pc->slots[b].gen;
        h = key;
    }
    touch_chain(pc, pc->chain, n);
}

static int is_orphan(const exsa_prefix_cache *pc, int32_t b)
{
    const pc_slot *s = &pc->slots[b];
    if (s->parent < 0)
        return 0;
    const pc_slot *ps = &pc->slots[s->parent];
    return !ps->cached || ps->gen != s->parent_gen;
}

int exsa_prefix_cache_make_room(exsa_prefix_cache *pc, int n_free)
{
    if (!pc)
        return 0;
    /* Orphans can never match again: they go first, whatever their age.
     * Evicting one orphans its children, which the same cold-to-hot walk
     * may still meet later. */
    for (int32_t b = pc->lru; b >= 0 && exsa_kv_n_free_blocks(pc->kv) < n_free;) {
        int32_t hotter = pc->slots[b].prev;
        if (exsa_kv_block_refcount(pc->kv, b) == 1 && is_orphan(pc, b))
            evict(pc, b);
        b = hotter;
    }
    for (int32_t b = pc->lru; b >= 0 && exsa_kv_n_free_blocks(pc->kv) < n_free;) {
        int32_t hotter = pc->slots[b].prev;
        if (exsa_kv_block_refcount(pc->kv, b) == 1)
            evict(pc, b);
        b = hotter;
    }
    return exsa_kv_n_free_blocks(pc->kv);
}

int exsa_prefix_cache_n_blocks(const exsa_prefix_cache *pc) { return pc ? pc->n_cached : 0; }

int exsa_prefix_cache_n_evictable(const exsa_prefix_cache *pc)
{
    if (!pc)
        return 0;
    int n = 0;
    for (int32_t b = pc->mru; b >= 0; b = pc->slots[b].next)
        n += exsa_kv_block_refcount(pc->kv, b) == 1;
    return n;
}
