#include "model/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"
#include "util/err.h"

struct exsa_kv_cache {
    exsa_backend *be;
    exsa_kv_params p;
    exsa_kv_layer *layers;  /* [n_layer] */
    void **storage;         /* [2*n_layer] backend buffers */
    int32_t *refcount;      /* [n_blocks] */
    int32_t *free_stack;    /* [n_blocks] ids of free blocks */
    int n_free;
    int max_blocks_per_seq;
    int32_t *tables;        /* [n_seq][max_blocks_per_seq] */
    int32_t *seq_len;       /* [n_seq] tokens reserved */
};

static size_t token_bytes(const exsa_kv_params *p)
{
    return exsa_type_row_size(p->type, (int64_t)p->n_kv_head * p->head_dim);
}

static int check_params(const exsa_kv_params *p, exsa_err *err)
{
    if (p->type != EXSA_TYPE_F32 && p->type != EXSA_TYPE_F16 && p->type != EXSA_TYPE_Q8_0)
        return exsa_err_set(err, EXSA_EINVAL, "kv cache: type must be f32, f16 or q8_0");
    if (p->n_layer <= 0 || p->n_kv_head <= 0 || p->head_dim <= 0 || p->block_size <= 0 ||
        p->n_blocks <= 0 || p->n_seq <= 0 || p->max_seq_len <= 0)
        return exsa_err_set(err, EXSA_EINVAL, "kv cache: every size must be positive");
    if (p->type == EXSA_TYPE_Q8_0 && ((int64_t)p->n_kv_head * p->head_dim) % EXSA_QK8_0 != 0)
        return exsa_err_set(err, EXSA_EINVAL,
                            "kv cache: q8_0 needs n_kv_head*head_dim (%d) to be a multiple of 32",
                            p->n_kv_head * p->head_dim);
    return 0;
}

size_t exsa_kv_cache_bytes(const exsa_kv_params *p)
{
    size_t per_layer;
    if (check_params(p, NULL) != 0)
        return 0;
    if (__builtin_mul_overflow(token_bytes(p), (size_t)p->n_blocks * (size_t)p->block_size,
                               &per_layer))
        return SIZE_MAX;
    size_t total;
    if (__builtin_mul_overflow(per_layer, (size_t)p->n_layer * 2, &total))
        return SIZE_MAX;
    return total;
}

exsa_kv_cache *exsa_kv_cache_create(exsa_backend *b, const exsa_kv_params *p, exsa_err *err)
{
    if (check_params(p, err) != 0)
        return NULL;
    size_t layer_bytes;
    if (__builtin_mul_overflow(token_bytes(p), (size_t)p->n_blocks * (size_t)p->block_size,
                               &layer_bytes)) {
        exsa_err_set(err, EXSA_ENOMEM, "kv cache: %d blocks overflow the address space",
                     p->n_blocks);
        return NULL;
    }
    exsa_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) {
        exsa_err_set(err, EXSA_ENOMEM, "kv cache: out of memory");
        return NULL;
    }
    kv->be = b;
    kv->p = *p;
    kv->max_blocks_per_seq = (p->max_seq_len + p->block_size - 1) / p->block_size;
    kv->layers = calloc((size_t)p->n_layer, sizeof *kv->layers);
    kv->storage = calloc((size_t)p->n_layer * 2, sizeof *kv->storage);
    kv->refcount = calloc((size_t)p->n_blocks, sizeof *kv->refcount);
    kv->free_stack = calloc((size_t)p->n_blocks, sizeof *kv->free_stack);
    kv->tables = calloc((size_t)p->n_seq * (size_t)kv->max_blocks_per_seq, sizeof *kv->tables);
    kv->seq_len = calloc((size_t)p->n_seq, sizeof *kv->seq_len);
    if (!kv->layers || !kv->storage || !kv->refcount || !kv->free_stack || !kv->tables ||
        !kv->seq_len)
        goto oom;
    for (int l = 0; l < p->n_layer; l++) {
        void *k = b->ops->alloc(b, layer_bytes);
        kv->storage[2 * l] = k;
        void *v = k ? b->ops->alloc(b, layer_bytes) : NULL;
        kv->storage[2 * l + 1] = v;
        if (!k || !v)
            goto oom;
        kv->layers[l] = (exsa_kv_layer){
            .k = k, .v = v, .type = p->type, .block_size = p->block_size,
            .n_kv_head = p->n_kv_head, .head_dim = p->head_dim, .token_bytes = token_bytes(p),
        };
    }
    /* Low block ids are handed out first (stack top = last element). */
    for (int i = 0; i < p->n_blocks; i++)
        kv->free_stack[i] = p->n_blocks - 1 - i;
    kv->n_free = p->n_blocks;
    return kv;
oom:
    exsa_err_set(err, EXSA_ENOMEM, "kv cache: cannot allocate %d blocks (%zu bytes per layer)",
                 p->n_blocks, layer_bytes * 2);
    exsa_kv_cache_free(kv);
    return NULL;
}

void exsa_kv_cache_free(exsa_kv_cache *kv)
{
    if (!kv)
        return;
    if (kv->storage)
        for (int i = 0; i < kv->p.n_layer * 2; i++)
            if (kv->storage[i])
                kv->be->ops->free(kv->be, kv->storage[i]);
    free(kv->storage);
    free(kv->layers);
    free(kv->refcount);
    free(kv->free_stack);
    free(kv->tables);
    free(kv->seq_len);
    free(kv);
}

const exsa_kv_params *exsa_kv_cache_params(const exsa_kv_cache *kv) { return &kv->p; }

int exsa_kv_n_free_blocks(const exsa_kv_cache *kv) { return kv->n_free; }

static int32_t *table(const exsa_kv_cache *kv, int seq)
{
    return kv->tables + (size_t)seq * (size_t)kv->max_blocks_per_seq;
}

static int n_blocks_for(const exsa_kv_cache *kv, int n_tokens)
{
    return (n_tokens + kv->p.block_size - 1) / kv->p.block_size;
}

static void release(exsa_kv_cache *kv, int32_t block)
{
    if (--kv->refcount[block] == 0)
        kv->free_stack[kv->n_free++] = block;
}

int exsa_kv_seq_reserve(exsa_kv_cache *kv, int seq, int n_tokens, exsa_err *err)
{
    if (seq < 0 || seq >= kv->p.n_seq)
        return exsa_err_set(err, EXSA_EINVAL, "kv cache: sequence id %d out of range [0, %d)",
                            seq, kv->p.n_seq);
    if (n_tokens < 0 || n_tokens > kv->p.max_seq_len)
        return exsa_err_set(err, EXSA_EINVAL,
                            "kv cache: sequence %d needs %d tokens, context is %d", seq,
                            n_tokens, kv->p.max_seq_len);
    int have = n_blocks_for(kv, kv->seq_len[seq]);
    int need = n_blocks_for(kv, n_tokens);
    if (need - have > kv->n_free)
        return exsa_err_set(err, EXSA_EFULL,
                            "kv cache: sequence %d needs %d more blocks, %d free", seq,
                            need - have, kv->n_free);
    int32_t *t = table(kv, seq);
    for (int i = have; i < need; i++) {
        int32_t b = kv->free_stack[--kv->n_free];
        kv->refcount[b] = 1;
        t[i] = b;
    }
    if (n_tokens > kv->seq_len[seq])
        kv->seq_len[seq] = n_tokens;
    return 0;
}

int exsa_kv_seq_len(const exsa_kv_cache *kv, int seq)
{
    return seq >= 0 && seq < kv->p.n_seq ? kv->seq_len[seq] : 0;
}

void exsa_kv_seq_truncate(exsa_kv_cache *kv, int seq, int n_tokens)
{
    if (seq < 0 || seq >= kv->p.n_seq || n_tokens < 0 || n_tokens >= kv->seq_len[seq])
        return;
    int keep = n_blocks_for(kv, n_tokens);
    int have = n_blocks_for(kv, kv->seq_len[seq]);
    int32_t *t = table(kv, seq);
    for (int i = keep; i < have; i++)
        release(kv, t[i]);
    kv->seq_len[seq] = n_tokens;
}

void exsa_kv_seq_free(exsa_kv_cache *kv, int seq) { exsa_kv_seq_truncate(kv, seq, 0); }

int exsa_kv_seq_share(exsa_kv_cache *kv, int dst, int src, int n_tokens, exsa_err *err)
{
    if (dst < 0 || dst >= kv->p.n_seq || src < 0 || src >= kv->p.n_seq || dst == src)
        return exsa_err_set(err, EXSA_EINVAL, "kv cache: bad sequence ids %d <- %d", dst, src);
    if (kv->seq_len[dst] != 0)
        return exsa_err_set(err, EXSA_EINVAL, "kv cache: sequence %d is not empty", dst);
    if (n_tokens < 0 || n_tokens > kv->seq_len[src] || n_tokens % kv->p.block_size != 0)
        return exsa_err_set(err, EXSA_EINVAL,
                            "kv cache: can share only whole reserved blocks (%d tokens)",
                            n_tokens);
    const int32_t *s = table(kv, src);
    int32_t *d = table(kv, dst);
    for (int i = 0; i < n_tokens / kv->p.block_size; i++) {
        d[i] = s[i];
        kv->refcount[s[i]]++;
    }
    kv->seq_len[dst] = n_tokens;
    return 0;
}

void exsa_kv_block_ref(exsa_kv_cache *kv, int32_t block)
{
    if (block >= 0 && block < kv->p.n_blocks && kv->refcount[block] > 0)
        kv->refcount[block]++;
}

void exsa_kv_block_unref(exsa_kv_cache *kv, int32_t block)
{
    if (block >= 0 && block < kv->p.n_blocks && kv->refcount[block] > 0)
        release(kv, block);
}

int exsa_kv_block_refcount(const exsa_kv_cache *kv, int32_t block)
{
    return block >= 0 && block < kv->p.n_blocks ? kv->refcount[block] : 0;
}

int exsa_kv_seq_attach(exsa_kv_cache *kv, int seq, const int32_t *blocks, int n_blocks,
                       exsa_err *err)
{
    if (seq < 0 || seq >= kv->p.n_seq)
        return exsa_err_set(err, EXSA_EINVAL, "kv cache: sequence id %d out of range", seq);
    if (kv->seq_len[seq] != 0)
        return exsa_err_set(err, EXSA_EINVAL, "kv cache: sequence %d is not empty", seq);
    if (n_blocks < 0 || n_blocks > kv->max_blocks_per_seq)
        return exsa_err_set(err, EXSA_EINVAL, "kv cache: %d blocks exceed the context",
                            n_blocks);
    for (int i = 0; i < n_blocks; i++)
        if (blocks[i] < 0 || blocks[i] >= kv->p.n_blocks || kv->refcount[blocks[i]] <= 0)
            return exsa_err_set(err, EXSA_EINVAL, "kv cache: block %d is not live", blocks[i]);
    int32_t *t = table(kv, seq);
    for (int i = 0; i < n_blocks; i++) {
        t[i] = blocks[i];
        kv->refcount[blocks[i]]++;
    }
    kv->seq_len[seq] = n_blocks * kv->p.block_size;
    return 0;
}

int32_t exsa_kv_slot(const exsa_kv_cache *kv, int seq, int pos)
{
    return table(kv, seq)[pos / kv->p.block_size] * kv->p.block_size + pos % kv->p.block_size;
}

const int32_t *exsa_kv_block_table(const exsa_kv_cache *kv, int seq) { return table(kv, seq); }

const exsa_kv_layer *exsa_kv_layer_at(const exsa_kv_cache *kv, int layer)
{
    return &kv->layers[layer];
}
