/* Model contexts: the KV cache, activations and batch metadata on each
 * backend a model's stages use, and the step that validates a batch,
 * reserves its KV blocks, uploads its metadata once and runs the family's
 * forward pass and the output head.
 *
 * The metadata is staged on the host in one int32 array of fixed layout
 * (seven [max_batch] arrays, then the block tables of the batch's
 * sequences, main group and window group, [max_tables][bt_stride] each) so
 * that a device copy sits at fixed addresses and a recorded step replays
 * with the next step's contents. The CPU reads the staging in place. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "quant/quant.h"
#include "util/err.h"

enum { META_TOKEN, META_POS, META_NCTX, META_SLOTS, META_ROWTAB, META_OUT, META_SWASLOTS,
       META_ROWS };

void exsa_model_ctx_params_default(exsa_model_ctx_params *p)
{
    *p = (exsa_model_ctx_params){
        .n_threads = 0, .n_ctx = 0, .n_seq = 1, .max_batch = 512,
        .kv_type = EXSA_TYPE_F16, .kv_blocks = 0,
    };
}

static size_t max_tables(const exsa_model_ctx *c)
{
    return (size_t)(c->p.max_batch < c->p.n_seq ? c->p.max_batch : c->p.n_seq);
}

/* Points mt's arrays into base (the staging or its device copy). */
static void meta_bind(exsa_model_ctx *c, exsa_step_meta *mt, int32_t *base)
{
    const size_t B = (size_t)c->p.max_batch, T = max_tables(c);
    mt->token = base + META_TOKEN * B;
    mt->pos = base + META_POS * B;
    mt->n_ctx = base + META_NCTX * B;
    mt->slots = base + META_SLOTS * B;
    mt->row_tab = base + META_ROWTAB * B;
    mt->out_rows = base + META_OUT * B;
    mt->swa_slots = base + META_SWASLOTS * B;
    mt->btab = base + META_ROWS * B;
    mt->swa_btab = mt->btab + T * (size_t)c->bt_stride;
}

static size_t meta_ints(const exsa_model_ctx *c)
{
    return META_ROWS * (size_t)c->p.max_batch + 2 * max_tables(c) * (size_t)c->bt_stride;
}

int exsa_model_acts_alloc(exsa_model_ctx *c, exsa_err *err)
{
    const exsa_hparams *hp = &c->m->hp;
    const size_t B = (size_t)c->p.max_batch, E = (size_t)hp->n_embd;
    const size_t Q = (size_t)hp->n_head * hp->head_dim, KV = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t V = (size_t)hp->n_vocab > E ? (size_t)hp->n_vocab : E;
    for (int p = 0; p < EXSA_N_PLACES; p++) {
        if (!c->used[p])
            continue;
        exsa_backend *be = c->be[p];
        exsa_model_acts *a = &c->acts[p];
        a->x = be->ops->alloc(be, B * E * sizeof(float));
        a->xb = be->ops->alloc(be, B * (Q > E ? Q : E) * sizeof(float));
        a->q = be->ops->alloc(be, B * Q * sizeof(float));
        a->k = be->ops->alloc(be, B * KV * sizeof(float));
        a->v = be->ops->alloc(be, B * KV * sizeof(float));
        a->att = be->ops->alloc(be, B * Q * sizeof(float));
        a->ff1 = be->ops->alloc(be, B * hp->n_ff * sizeof(float));
        a->ff2 = be->ops->alloc(be, B * hp->n_ff * sizeof(float));
        /* a device computes the head's rows in chunks into here */
        if (!be->ops->host_memory)
            a->logits = be->ops->alloc(be, EXSA_HEAD_CHUNK * V * sizeof(float));
        if (!a->x || !a->xb || !a->q || !a->k || !a->v || !a->att || !a->ff1 || !a->ff2 ||
            (!be->ops->host_memory && !a->logits))
            return exsa_err_set(err, EXSA_ENOMEM,
                                "model: cannot allocate activations for a batch of %zu rows on %s",
                                B, exsa_backend_describe(be));
    }
    return 0;
}

void exsa_model_acts_free(exsa_model_ctx *c)
{
    for (int p = 0; p < EXSA_N_PLACES; p++) {
        exsa_model_acts *a = &c->acts[p];
        exsa_backend *be = c->be[p];
        float *bufs[] = {a->x, a->xb, a->q, a->k, a->v, a->att, a->ff1, a->ff2, a->logits};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            if (bufs[i])
                be->ops->free(be, bufs[i]);
        memset(a, 0, sizeof *a);
    }
}

exsa_model_ctx *exsa_model_ctx_create(const exsa_model *m, const exsa_model_ctx_params *p,
                                      exsa_err *err)
{
    const exsa_hparams *hp = &m->hp;
    exsa_model_ctx_params cp = *p;
    if (cp.n_ctx <= 0)
        cp.n_ctx = hp->n_ctx_train > 0 && hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (cp.n_seq <= 0 || cp.n_seq > 4096) {
        exsa_err_set(err, EXSA_EINVAL, "n_seq must be in [1, 4096], got %d", cp.n_seq);
        return NULL;
    }
    if (cp.max_batch <= 0 || cp.max_batch > 65536) {
        exsa_err_set(err, EXSA_EINVAL, "batch size must be in [1, 65536], got %d", cp.max_batch);
        return NULL;
    }
    if (cp.n_ctx > (1 << 24)) {
        exsa_err_set(err, EXSA_EINVAL, "context size %d is too large", cp.n_ctx);
        return NULL;
    }
    if (cp.kv_type != EXSA_TYPE_F16 && cp.kv_type != EXSA_TYPE_F32 &&
        cp.kv_type != EXSA_TYPE_Q8_0) {
        exsa_err_set(err, EXSA_EINVAL, "kv type must be f16, f32 or q8_0");
        return NULL;
    }
    int per_seq = (cp.n_ctx + EXSA_KV_BLOCK_SIZE - 1) / EXSA_KV_BLOCK_SIZE;
    if (cp.kv_blocks <= 0) {
        int64_t nb = (int64_t)per_seq * cp.n_seq;
        if (nb > (1 << 26)) {
            exsa_err_set(err, EXSA_EINVAL, "kv cache of %lld blocks is too large", (long long)nb);
            return NULL;
        }
        cp.kv_blocks = (int)nb;
    }

    exsa_model_ctx *c = calloc(1, sizeof *c);
    exsa_backend **layer_be = calloc((size_t)hp->n_layer, sizeof *layer_be);
    uint8_t *swa = NULL;
    if (!c || !layer_be) {
        free(c);
        free(layer_be);
        exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
        return NULL;
    }
    c->m = m;
    c->p = cp;
    c->bt_stride = per_seq;
    for (int l = -1; l <= hp->n_layer; l++)
        c->used[exsa_model_place_of(m, l)] = 1;
    if (c->used[EXSA_ON_HOST] && !(c->be[EXSA_ON_HOST] = exsa_backend_cpu_create(cp.n_threads, err)))
        goto fail;
    c->be[EXSA_ON_DEV] = m->be[EXSA_ON_DEV];
    for (int l = 0; l < hp->n_layer; l++)
        layer_be[l] = c->be[exsa_model_place_of(m, l)];
    exsa_kv_params kp = {
        .n_layer = hp->n_layer, .n_kv_head = hp->n_head_kv, .head_dim = hp->head_dim,
        .type = cp.kv_type, .block_size = EXSA_KV_BLOCK_SIZE, .n_blocks = cp.kv_blocks,
        .n_seq = cp.n_seq, .max_seq_len = cp.n_ctx, .layer_be = layer_be,
    };
    /* Sliding-window layers whose window is shorter than the context get
     * a group of their own that keeps only the window (and a batch). */
    if (hp->n_swa > 0 && hp->n_swa < cp.n_ctx && !cp.swa_full) {
        swa = calloc((size_t)hp->n_layer, 1);
        if (!swa) {
            exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
            goto fail;
        }
        for (int l = 0; l < hp->n_layer; l++)
            swa[l] = hp->layer[l].kind == EXSA_LAYER_ATTN_SWA;
        kp.swa_layer = swa;
        kp.swa_window = hp->n_swa;
        kp.swa_keep = cp.max_batch;
        kp.swa_n_blocks = exsa_kv_swa_blocks_needed(&kp);
    }
    c->kv = exsa_kv_cache_create(c->be[exsa_model_place_of(m, 0)], &kp, err);
    if (!c->kv) {
        if (c->used[EXSA_ON_DEV])
            exsa_err_prefix(err, "%s (a smaller --ctx-size, --parallel or -ngl needs less)",
                            exsa_model_placement(m));
        goto fail;
    }
    c->has_swa = exsa_kv_has_swa(c->kv);
    const size_t nm = meta_ints(c);
    c->host_meta = calloc(nm, sizeof *c->host_meta);
    c->seq_tab = malloc((size_t)cp.n_seq * sizeof *c->seq_tab);
    c->seq_need = calloc((size_t)cp.n_seq, sizeof *c->seq_need);
    if (!c->host_meta || !c->seq_tab || !c->seq_need) {
        exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
        goto fail;
    }
    for (int s = 0; s < cp.n_seq; s++)
        c->seq_tab[s] = -1;
    for (int p = 0; p < EXSA_N_PLACES; p++) {
        if (!c->used[p])
            continue;
        exsa_backend *be = c->be[p];
        int32_t *base = c->host_meta;
        if (!be->ops->host_memory) {
            if (!(c->meta[p].buf = be->ops->alloc(be, nm * sizeof(int32_t)))) {
                exsa_err_set(err, EXSA_ENOMEM, "model: cannot allocate batch metadata on %s",
                             exsa_backend_describe(be));
                goto fail;
            }
            base = c->meta[p].buf;
        }
        meta_bind(c, &c->meta[p], base);
    }
    if (m->ops->ctx_init(c, err) != 0)
        goto fail;
    free(layer_be);
    free(swa);
    return c;
fail:
    free(layer_be);
    free(swa);
    exsa_model_ctx_free(c);
    return NULL;
}

void exsa_model_ctx_free(exsa_model_ctx *c)
{
    if (!c)
        return;
    exsa_backend *dev = c->be[EXSA_ON_DEV];
    if (dev && dev->ops->sync)
        dev->ops->sync(dev, NULL);
    if (dev && dev->ops->step_forget)
        dev->ops->step_forget(dev, (uint64_t)(uintptr_t)c);
    c->m->ops->ctx_free(c);
    exsa_kv_cache_free(c->kv);
    for (int p = 0; p < EXSA_N_PLACES; p++)
        if (c->meta[p].buf)
            c->be[p]->ops->free(c->be[p], c->meta[p].buf);
    if (c->be[EXSA_ON_HOST])
        exsa_backend_free(c->be[EXSA_ON_HOST]);
    free(c->host_meta);
    free(c->seq_tab);
    free(c->seq_need);
    free(c);
}

exsa_kv_cache *exsa_model_ctx_kv(exsa_model_ctx *c) { return c->kv; }
const exsa_model_ctx_params *exsa_model_ctx_params_get(const exsa_model_ctx *c) { return &c->p; }

const char *exsa_model_ctx_describe(const exsa_model_ctx *c)
{
    if (c->used[EXSA_ON_DEV])
        return exsa_model_placement(c->m);
    return exsa_backend_describe(c->be[EXSA_ON_HOST]);
}

void exsa_model_cross(exsa_model_ctx *c, int l, int n_rows)
{
    const int from = exsa_model_place_of(c->m, l - 1), to = exsa_model_place_of(c->m, l);
    if (from == to)
        return;
    const size_t bytes = (size_t)n_rows * (size_t)c->m->hp.n_embd * sizeof(float);
    exsa_backend *bf = c->be[from], *bt = c->be[to];
    if (bf->ops->host_memory)
        bt->ops->set(bt, c->acts[to].x, c->acts[from].x, bytes);
    else
        bf->ops->get(bf, c->acts[to].x, c->acts[from].x, bytes);
}

/* A recorded step is the layers of n_rows rows on one device (what a
 * decode step is): the key is the context and the row count. */
#define STEP_MAX_ROWS 255

static int step_key_ok(const exsa_model_ctx *c, int n_rows)
{
    exsa_backend *dev = c->be[EXSA_ON_DEV];
    return dev && !c->used[EXSA_ON_HOST] && dev->ops->step_begin && n_rows <= STEP_MAX_ROWS;
}

int exsa_model_step_begin(exsa_model_ctx *c, int n_rows)
{
    if (!step_key_ok(c, n_rows))
        return 0;
    exsa_backend *dev = c->be[EXSA_ON_DEV];
    return dev->ops->step_begin(dev, ((uint64_t)(uintptr_t)c << 8) | (uint64_t)n_rows);
}

void exsa_model_step_end(exsa_model_ctx *c, int n_rows)
{
    if (!step_key_ok(c, n_rows))
        return;
    exsa_backend *dev = c->be[EXSA_ON_DEV];
    dev->ops->step_end(dev, ((uint64_t)(uintptr_t)c << 8) | (uint64_t)n_rows);
}

void exsa_model_output_head(exsa_model_ctx *c, int n_rows, const exsa_tensor *output,
                            const float *output_norm, float *logits_out, float *hidden_out)
{
    const exsa_hparams *hp = &c->m->hp;
    const int E = hp->n_embd, V = hp->n_vocab, L = hp->n_layer;
    if (c->n_out == 0)
        return;
    exsa_model_cross(c, L, n_rows);
    const exsa_model_stage s = exsa_model_stage_at(c, L);
    exsa_model_acts *a = s.a;
    /* Only rows that want logits go through the output head: gather them
     * with get_rows over the residual stream viewed as an f32 matrix. */
    exsa_tensor xs = {.name = "x", .type = EXSA_TYPE_F32, .n_in = E, .n_out = c->p.max_batch,
                      .row_bytes = (size_t)E * sizeof(float), .data = a->x};
    if (s.op->host_memory) {
        s.op->get_rows(s.be, &xs, s.meta->out_rows, c->n_out, a->xb);
        if (hidden_out) { /* embeddings: stop before the output head */
            s.op->rms_norm(s.be, a->xb, output_norm, hidden_out, c->n_out, E, hp->norm_eps);
            return;
        }
        exsa_matmul_fuse f = {.norm = output_norm, .eps = hp->norm_eps, .scratch = a->xb};
        s.op->matmul_fused(s.be, &output, 1, a->xb, &logits_out, c->n_out, &f);
    } else {
        /* A device computes EXSA_HEAD_CHUNK rows at a time into its own
         * buffer and copies them out. */
        for (int k0 = 0; k0 < c->n_out; k0 += EXSA_HEAD_CHUNK) {
            const int nk = c->n_out - k0 < EXSA_HEAD_CHUNK ? c->n_out - k0 : EXSA_HEAD_CHUNK;
            s.op->get_rows(s.be, &xs, s.meta->out_rows + k0, nk, a->xb);
            if (hidden_out) {
                s.op->rms_norm(s.be, a->xb, output_norm, a->logits, nk, E, hp->norm_eps);
                s.op->get(s.be, hidden_out + (size_t)k0 * E, a->logits,
                          (size_t)nk * E * sizeof(float));
                continue;
            }
            exsa_matmul_fuse f = {.norm = output_norm, .eps = hp->norm_eps, .scratch = a->xb};
            s.op->matmul_fused(s.be, &output, 1, a->xb, &a->logits, nk, &f);
            s.op->get(s.be, logits_out + (size_t)k0 * V, a->logits,
                      (size_t)nk * V * sizeof(float));
        }
    }
    if (!hidden_out && hp->logit_softcap > 0) {
        /* logits_out is the caller's host memory */
        const float cap = hp->logit_softcap;
        const size_t nl = (size_t)c->n_out * (size_t)V;
        for (size_t i = 0; i < nl; i++)
            logits_out[i] = tanhf(logits_out[i] * (1.0f / cap)) * cap;
    }
}

/* Fills the staging for batch b (KV reserved) and copies it to every
 * device in use. */
static void stage_meta(exsa_model_ctx *c, const exsa_batch *b)
{
    exsa_step_meta h;
    meta_bind(c, &h, c->host_meta);
    int32_t *token = (int32_t *)h.token, *pos = (int32_t *)h.pos, *nctx = (int32_t *)h.n_ctx;
    int32_t *slots = (int32_t *)h.slots, *rtab = (int32_t *)h.row_tab;
    int32_t *out = (int32_t *)h.out_rows, *sslots = (int32_t *)h.swa_slots;
    int32_t *bt = (int32_t *)h.btab, *sbt = (int32_t *)h.swa_btab;
    const int bs = EXSA_KV_BLOCK_SIZE;
    int nt = 0, no = 0, maxc = 0;
    for (int i = 0; i < b->n; i++) {
        const int s = b->seq[i];
        token[i] = b->token[i];
        pos[i] = b->pos[i];
        nctx[i] = b->pos[i] + 1;
        maxc = nctx[i] > maxc ? nctx[i] : maxc;
        slots[i] = exsa_kv_slot(c->kv, s, b->pos[i]);
        if (c->has_swa)
            sslots[i] = exsa_kv_swa_slot(c->kv, s, b->pos[i]);
        if (b->logits[i])
            out[no++] = i;
        if (c->seq_tab[s] < 0) {
            /* the sequence's table, as far as it is reserved */
            const size_t nb = (size_t)(exsa_kv_seq_len(c->kv, s) + bs - 1) / bs;
            memcpy(bt + (size_t)nt * c->bt_stride, exsa_kv_block_table(c->kv, s),
                   nb * sizeof *bt);
            if (c->has_swa)
                memcpy(sbt + (size_t)nt * c->bt_stride, exsa_kv_swa_block_table(c->kv, s),
                       nb * sizeof *sbt);
            c->seq_tab[s] = nt++;
        }
        rtab[i] = c->seq_tab[s];
    }
    for (int i = 0; i < b->n; i++)
        c->seq_tab[b->seq[i]] = -1;
    c->n_tables = nt;
    c->max_ctx = maxc;
    for (int p = 0; p < EXSA_N_PLACES; p++) {
        exsa_backend *be = c->be[p];
        if (!c->used[p] || be->ops->host_memory)
            continue;
        const size_t B = (size_t)c->p.max_batch, tab = (size_t)nt * c->bt_stride;
        be->ops->set(be, c->meta[p].buf, c->host_meta, META_ROWS * B * sizeof(int32_t));
        be->ops->set(be, (int32_t *)c->meta[p].btab, h.btab, tab * sizeof(int32_t));
        if (c->has_swa)
            be->ops->set(be, (int32_t *)c->meta[p].swa_btab, h.swa_btab, tab * sizeof(int32_t));
    }
}

/* forward and forward_hidden: one validation and KV path; exactly one of
 * logits_out / hidden_out is the output. */
static int run_batch(exsa_model_ctx *c, const exsa_batch *b, float *logits_out,
                     float *hidden_out, exsa_err *err)
{
    const exsa_hparams *hp = &c->m->hp;
    if (!b || b->n <= 0 || b->n > c->p.max_batch)
        return exsa_err_set(err, EXSA_EINVAL, "forward: batch of %d rows (max %d)",
                            b ? b->n : 0, c->p.max_batch);
    if (!b->token || !b->pos || !b->seq || !b->logits)
        return exsa_err_set(err, EXSA_EINVAL, "forward: batch arrays must all be set");
    c->n_out = 0;
    for (int i = 0; i < b->n; i++) {
        if (b->token[i] < 0 || b->token[i] >= hp->n_vocab)
            return exsa_err_set(err, EXSA_EINVAL, "forward: row %d: token %d out of range [0, %d)",
                                i, b->token[i], hp->n_vocab);
        if (b->seq[i] < 0 || b->seq[i] >= c->p.n_seq)
            return exsa_err_set(err, EXSA_EINVAL,
                                "forward: row %d: sequence %d out of range [0, %d)", i,
                                b->seq[i], c->p.n_seq);
        if (b->pos[i] < 0 || b->pos[i] >= c->p.n_ctx)
            return exsa_err_set(err, EXSA_EINVAL,
                                "forward: row %d: position %d beyond the context (%d)", i,
                                b->pos[i], c->p.n_ctx);
        if (b->logits[i])
            c->n_out++;
    }
    if (c->n_out > 0 && !logits_out && !hidden_out)
        return exsa_err_set(err, EXSA_EINVAL, "forward: output requested but no output buffer");
    /* Check the pool covers every sequence's growth before reserving any,
     * so a pool that runs short fails with nothing changed. */
    int64_t blocks_needed = 0;
    const int bs = exsa_kv_cache_params(c->kv)->block_size;
    for (int i = 0; i < b->n; i++)
        if (b->pos[i] + 1 > c->seq_need[b->seq[i]])
            c->seq_need[b->seq[i]] = b->pos[i] + 1;
    for (int i = 0; i < b->n; i++) {
        int s = b->seq[i], have = exsa_kv_seq_len(c->kv, s);
        if (c->seq_need[s] > have)
            blocks_needed += (c->seq_need[s] + bs - 1) / bs - (have + bs - 1) / bs;
        c->seq_need[s] = 0; /* count each sequence once */
    }
    if (blocks_needed > exsa_kv_n_free_blocks(c->kv))
        return exsa_err_set(err, EXSA_EFULL, "forward: batch needs %lld kv blocks, %d free",
                            (long long)blocks_needed, exsa_kv_n_free_blocks(c->kv));
    int rc = exsa_kv_swa_check(c->kv, b->seq, b->pos, b->n, err);
    if (rc != 0)
        return rc;
    for (int i = 0; i < b->n; i++) {
        int s = b->seq[i];
        if (exsa_kv_seq_len(c->kv, s) < b->pos[i] + 1) {
            rc = exsa_kv_seq_reserve(c->kv, s, b->pos[i] + 1, err);
            if (rc != 0)
                return rc;
        }
    }
    if (c->has_swa)
        exsa_kv_swa_prepare(c->kv, b->seq, b->pos, b->n);
    stage_meta(c, b);
    c->m->ops->forward(c, b, hidden_out ? NULL : logits_out, hidden_out);
    for (int p = 0; p < EXSA_N_PLACES; p++) {
        exsa_backend *be = c->be[p];
        if (c->used[p] && !be->ops->host_memory && be->ops->sync(be, err) != 0)
            return err->code;
    }
    return 0;
}

int exsa_model_forward(exsa_model_ctx *c, const exsa_batch *b, float *logits_out, exsa_err *err)
{
    return run_batch(c, b, logits_out, NULL, err);
}

int exsa_model_forward_hidden(exsa_model_ctx *c, const exsa_batch *b, float *hidden_out,
                              exsa_err *err)
{
    if (!hidden_out)
        return exsa_err_set(err, EXSA_EINVAL, "forward_hidden: hidden_out is NULL");
    return run_batch(c, b, NULL, hidden_out, err);
}
