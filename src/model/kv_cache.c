#include "model/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"
#include "util/err.h"

struct exsa_kv_cache {
    exsa_backend *be;
    exsa_backend **layer_be; /* [n_layer]: whose memory each layer's K/V is */
    exsa_kv_params p;
    exsa_kv_layer *layers;  /* [n_layer] */
    void **storage;         /* [2*n_layer] backend buffers */
    int32_t *refcount;      /* [n_blocks] */
    int32_t *free_stack;    /* [n_blocks] ids of free blocks */
    int n_free;
    int max_blocks_per_seq;
    int32_t *tables;        /* [n_seq][max_blocks_per_seq] */
    int32_t *seq_len;       /* [n_seq] tokens reserved */
    /* The sliding-window group (n_swa_layers > 0): layer_swa[l] says which
     * group layer l is in. A sequence holds logical blocks [swa_lo, swa_hi)
     * of its table (-1 elsewhere); one owner per block, no sharing. */
    uint8_t *layer_swa;     /* [n_layer] */
    int n_swa_layers;
    int32_t *swa_free;      /* [swa_n_blocks] */
    int swa_n_free;
    int32_t *swa_tables;    /* [n_seq][max_blocks_per_seq] */
    int32_t *swa_lo, *swa_hi; /* [n_seq] */
    int32_t *swa_pmin, *swa_pmax; /* [n_seq] batch scratch (-1: not in it) */
};

static size_t token_bytes(const exsa_kv_params *p)
{
    return exsa_type_row_size(p->type, (int64_t)p->n_kv_head * p->head_dim);
}

static int n_swa(const exsa_kv_params *p)
{
    int n = 0;
    if (p->swa_layer && p->swa_window > 0)
        for (int l = 0; l < p->n_layer; l++)
            n += p->swa_layer[l] != 0;
    return n;
}

int exsa_kv_swa_blocks_needed(const exsa_kv_params *p)
{
    if (!n_swa(p) || p->block_size <= 0 || p->n_seq <= 0 || p->max_seq_len <= 0)
        return 0;
    int64_t per = ((int64_t)p->swa_window + (p->swa_keep > 0 ? p->swa_keep : 0) +
                   p->block_size - 1) / p->block_size + 1;
    int64_t most = ((int64_t)p->max_seq_len + p->block_size - 1) / p->block_size;
    per = per < most ? per : most;
    int64_t n = per * p->n_seq;
    return n > INT32_MAX ? INT32_MAX : (int)n;
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
    if (n_swa(p) && (p->swa_n_blocks <= 0 || p->swa_keep < 0))
        return exsa_err_set(err, EXSA_EINVAL, "kv cache: the window group needs blocks");
    return 0;
}

size_t exsa_kv_cache_bytes(const exsa_kv_params *p)
{
    size_t per_layer, per_swa_layer;
    if (check_params(p, NULL) != 0)
        return 0;
    const int ns = n_swa(p);
    if (__builtin_mul_overflow(token_bytes(p), (size_t)p->n_blocks * (size_t)p->block_size,
                               &per_layer) ||
        __builtin_mul_overflow(token_bytes(p),
                               (size_t)(ns ? p->swa_n_blocks : 0) * (size_t)p->block_size,
                               &per_swa_layer))
        return SIZE_MAX;
    size_t full, swa, total;
    if (__builtin_mul_overflow(per_layer, (size_t)(p->n_layer - ns) * 2, &full) ||
        __builtin_mul_overflow(per_swa_layer, (size_t)ns * 2, &swa) ||
        __builtin_add_overflow(full, swa, &total))
        return SIZE_MAX;
    return total;
}

exsa_kv_cache *exsa_kv_cache_create(exsa_backend *b, const exsa_kv_params *p, exsa_err *err)
{
    if (check_params(p, err) != 0)
        return NULL;
    size_t layer_bytes, swa_bytes = 0;
    const int ns = n_swa(p);
    if (__builtin_mul_overflow(token_bytes(p), (size_t)p->n_blocks * (size_t)p->block_size,
                               &layer_bytes) ||
        (ns && __builtin_mul_overflow(token_bytes(p),
                                      (size_t)p->swa_n_blocks * (size_t)p->block_size,
                                      &swa_bytes))) {
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
    kv->layer_be = calloc((size_t)p->n_layer, sizeof *kv->layer_be);
    kv->p.layer_be = NULL;
    if (!kv->layer_be || !kv->layers || !kv->storage || !kv->refcount || !kv->free_stack || !kv->tables ||
        !kv->seq_len)
        goto oom;
    kv->p.swa_layer = NULL;
    if (ns) {
        const size_t nt = (size_t)p->n_seq * (size_t)kv->max_blocks_per_seq;
        kv->n_swa_layers = ns;
        kv->layer_swa = calloc((size_t)p->n_layer, 1);
        kv->swa_free = calloc((size_t)p->swa_n_blocks, sizeof *kv->swa_free);
        kv->swa_tables = malloc(nt * sizeof *kv->swa_tables);
        kv->swa_lo = calloc((size_t)p->n_seq, sizeof *kv->swa_lo);
        kv->swa_hi = calloc((size_t)p->n_seq, sizeof *kv->swa_hi);
        kv->swa_pmin = malloc((size_t)p->n_seq * sizeof *kv->swa_pmin);
        kv->swa_pmax = malloc((size_t)p->n_seq * sizeof *kv->swa_pmax);
        if (!kv->layer_swa || !kv->swa_free || !kv->swa_tables || !kv->swa_lo || !kv->swa_hi ||
            !kv->swa_pmin || !kv->swa_pmax)
            goto oom;
        for (int l = 0; l < p->n_layer; l++)
            kv->layer_swa[l] = p->swa_layer[l] != 0;
        kv->p.swa_layer = kv->layer_swa;
        for (size_t i = 0; i < nt; i++)
            kv->swa_tables[i] = -1;
        for (int i = 0; i < p->n_seq; i++)
            kv->swa_pmin[i] = kv->swa_pmax[i] = -1;
        for (int i = 0; i < p->swa_n_blocks; i++)
            kv->swa_free[i] = p->swa_n_blocks - 1 - i;
        kv->swa_n_free = p->swa_n_blocks;
    } else {
        kv->p.swa_window = kv->p.swa_keep = kv->p.swa_n_blocks = 0;
    }
    for (int l = 0; l < p->n_layer; l++) {
        const size_t bytes = kv->layer_swa && kv->layer_swa[l] ? swa_bytes : layer_bytes;
        exsa_backend *lb = p->layer_be && p->layer_be[l] ? p->layer_be[l] : b;
        kv->layer_be[l] = lb;
        void *k = lb->ops->alloc(lb, bytes);
        kv->storage[2 * l] = k;
        void *v = k ? lb->ops->alloc(lb, bytes) : NULL;
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
            if (kv->storage[i]) {
                exsa_backend *lb = kv->layer_be[i / 2];
                lb->ops->free(lb, kv->storage[i]);
            }
    free(kv->storage);
    free(kv->layer_be);
    free(kv->layers);
    free(kv->refcount);
    free(kv->free_stack);
    free(kv->tables);
    free(kv->seq_len);
    free(kv->layer_swa);
    free(kv->swa_free);
    free(kv->swa_tables);
    free(kv->swa_lo);
    free(kv->swa_hi);
    free(kv->swa_pmin);
    free(kv->swa_pmax);
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

static int32_t *swa_table(const exsa_kv_cache *kv, int seq)
{
    return kv->swa_tables + (size_t)seq * (size_t)kv->max_blocks_per_seq;
}

/* Returns seq's window blocks from logical block `keep` on. */
static void swa_truncate(exsa_kv_cache *kv, int seq, int keep)
{
    int32_t *t = swa_table(kv, seq);
    for (int i = keep > kv->swa_lo[seq] ? keep : kv->swa_lo[seq]; i < kv->swa_hi[seq]; i++) {
        kv->swa_free[kv->swa_n_free++] = t[i];
        t[i] = -1;
    }
    if (kv->swa_hi[seq] > keep)
        kv->swa_hi[seq] = keep;
    if (kv->swa_lo[seq] > kv->swa_hi[seq] || keep == 0)
        kv->swa_lo[seq] = kv->swa_hi[seq];
}

void exsa_kv_seq_truncate(exsa_kv_cache *kv, int seq, int n_tokens)
{
    if (seq < 0 || seq >= kv->p.n_seq || n_tokens < 0)
        return;
    if (kv->n_swa_layers)
        swa_truncate(kv, seq, n_blocks_for(kv, n_tokens));
    if (n_tokens >= kv->seq_len[seq])
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
    if (kv->n_swa_layers && n_tokens > 0)
        return exsa_err_set(err, EXSA_EUNSUPPORTED,
                            "kv cache: sliding-window layers cannot share blocks");
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
    if (kv->n_swa_layers && n_blocks > 0)
        return exsa_err_set(err, EXSA_EUNSUPPORTED,
                            "kv cache: sliding-window layers cannot attach cached blocks");
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

int exsa_kv_has_swa(const exsa_kv_cache *kv) { return kv->n_swa_layers > 0; }

int exsa_kv_swa_n_free_blocks(const exsa_kv_cache *kv) { return kv->swa_n_free; }

int exsa_kv_swa_seq_blocks(const exsa_kv_cache *kv, int seq)
{
    return kv->n_swa_layers && seq >= 0 && seq < kv->p.n_seq ? kv->swa_hi[seq] - kv->swa_lo[seq]
                                                             : 0;
}

/* The first position seq still holds in the window group. */
static int swa_first_held(const exsa_kv_cache *kv, int seq)
{
    return kv->swa_lo[seq] * kv->p.block_size;
}

int exsa_kv_seq_resumable(const exsa_kv_cache *kv, int seq, int n_tokens)
{
    if (!kv->n_swa_layers || seq < 0 || seq >= kv->p.n_seq || n_tokens <= 0)
        return 1;
    /* a query at n_tokens reads from n_tokens + 1 - window; its keys
     * before n_tokens must still be held */
    const int first = n_tokens + 1 - kv->p.swa_window;
    return (first > 0 ? first : 0) >= swa_first_held(kv, seq);
}

/* Per sequence of the batch, its lowest and highest row position
 * (swa_pmin / swa_pmax, -1 when absent); swa_reset clears them. */
static void swa_gather(exsa_kv_cache *kv, const int32_t *seq, const int32_t *pos, int n)
{
    for (int i = 0; i < n; i++) {
        int s = seq[i];
        if (kv->swa_pmin[s] < 0 || pos[i] < kv->swa_pmin[s])
            kv->swa_pmin[s] = pos[i];
        if (pos[i] > kv->swa_pmax[s])
            kv->swa_pmax[s] = pos[i];
    }
}

static void swa_reset(exsa_kv_cache *kv, const int32_t *seq, int n)
{
    for (int i = 0; i < n; i++)
        kv->swa_pmin[seq[i]] = kv->swa_pmax[seq[i]] = -1;
}

/* What a batch whose rows of seq s span [pmin, pmax] does to s's window
 * blocks: returns those below the first it keeps (*n_ret of them; *lo_out
 * is then its first held block), and, if that leaves none, starts again
 * at pmin's block; then takes blocks up to pmax's (*n_new). */
static void swa_plan(const exsa_kv_cache *kv, int s, int pmin, int pmax, int *lo_out,
                     int *n_ret, int *n_new)
{
    const int bs = kv->p.block_size, hi = kv->swa_hi[s];
    const int oldest = pmax + 1 - kv->p.swa_window - kv->p.swa_keep;
    const int keep = oldest > 0 ? oldest / bs : 0;
    int lo = kv->swa_lo[s] > keep ? kv->swa_lo[s] : keep;
    lo = lo < hi ? lo : hi;
    *n_ret = lo - kv->swa_lo[s];
    int from = hi;
    if (lo == hi) /* nothing held: start at the batch */
        lo = from = pmin / bs;
    *lo_out = lo;
    *n_new = pmax / bs + 1 > from ? pmax / bs + 1 - from : 0;
}

int exsa_kv_swa_check(exsa_kv_cache *kv, const int32_t *seq, const int32_t *pos, int n,
                      exsa_err *err)
{
    if (!kv->n_swa_layers)
        return 0;
    for (int i = 0; i < n; i++)
        if (seq[i] < 0 || seq[i] >= kv->p.n_seq || pos[i] < 0 || pos[i] >= kv->p.max_seq_len)
            return exsa_err_set(err, EXSA_EINVAL, "kv cache: row %d: bad sequence or position",
                                i);
    swa_gather(kv, seq, pos, n);
    int rc = 0;
    int64_t need = 0, ret = 0;
    for (int i = 0; i < n; i++) {
        const int s = seq[i], pmin = kv->swa_pmin[s], pmax = kv->swa_pmax[s];
        if (pmax < 0)
            continue; /* counted already */
        kv->swa_pmax[s] = -1;
        if (!exsa_kv_seq_resumable(kv, s, pmin)) {
            rc = exsa_err_set(err, EXSA_EINVAL,
                              "kv cache: sequence %d: the sliding window before position %d "
                              "was dropped; recompute it from position 0", s, pmin);
            break;
        }
        int lo, n_ret, n_new;
        swa_plan(kv, s, pmin, pmax, &lo, &n_ret, &n_new);
        ret += n_ret;
        need += n_new;
    }
    swa_reset(kv, seq, n);
    if (rc == 0 && need > kv->swa_n_free + ret)
        rc = exsa_err_set(err, EXSA_EFULL,
                          "kv cache: the sliding-window pool is short (%lld blocks needed, %d "
                          "free)", (long long)need, kv->swa_n_free);
    return rc;
}

void exsa_kv_swa_prepare(exsa_kv_cache *kv, const int32_t *seq, const int32_t *pos, int n)
{
    if (!kv->n_swa_layers)
        return;
    swa_gather(kv, seq, pos, n);
    for (int i = 0; i < n; i++) {
        const int s = seq[i], pmin = kv->swa_pmin[s], pmax = kv->swa_pmax[s];
        if (pmax < 0)
            continue;
        kv->swa_pmax[s] = -1;
        int lo, n_ret, n_new;
        swa_plan(kv, s, pmin, pmax, &lo, &n_ret, &n_new);
        int32_t *t = swa_table(kv, s);
        for (int b = kv->swa_lo[s]; b < kv->swa_hi[s] && b < kv->swa_lo[s] + n_ret; b++) {
            kv->swa_free[kv->swa_n_free++] = t[b];
            t[b] = -1;
        }
        kv->swa_lo[s] += n_ret;
        if (kv->swa_lo[s] == kv->swa_hi[s])
            kv->swa_hi[s] = lo;
        kv->swa_lo[s] = lo;
        for (int k = 0; k < n_new && kv->swa_n_free > 0; k++)
            t[kv->swa_hi[s]++] = kv->swa_free[--kv->swa_n_free];
    }
    swa_reset(kv, seq, n);
}

int32_t exsa_kv_swa_slot(const exsa_kv_cache *kv, int seq, int pos)
{
    return swa_table(kv, seq)[pos / kv->p.block_size] * kv->p.block_size +
           pos % kv->p.block_size;
}

const int32_t *exsa_kv_swa_block_table(const exsa_kv_cache *kv, int seq)
{
    return swa_table(kv, seq);
}

const exsa_kv_layer *exsa_kv_layer_at(const exsa_kv_cache *kv, int layer)
{
    return &kv->layers[layer];
}
