/* Speculative decoding's proposers (speculative.h). */
#include "engine/speculative.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/kv_cache.h"

/* ---- n-gram lookup ---- */

struct exsa_ngram_index {
    int cap;      /* tokens the sequence may reach */
    int done;     /* positions < done have their n-grams indexed */
    uint32_t mask;
    int32_t *pos; /* [mask + 1]: position that followed an n-gram; -1 empty */
};

exsa_ngram_index *exsa_ngram_index_create(int cap_tokens, exsa_err *err)
{
    if (cap_tokens < 1) {
        exsa_err_set(err, EXSA_EINVAL, "ngram index: capacity must be >= 1, got %d", cap_tokens);
        return NULL;
    }
    /* One entry per (position, n) at most, at a load of one half. */
    uint64_t want = (uint64_t)cap_tokens * (EXSA_NGRAM_MAX - EXSA_NGRAM_MIN + 1) * 2, size = 64;
    while (size < want)
        size *= 2;
    exsa_ngram_index *ix = calloc(1, sizeof *ix);
    if (!ix || size > ((uint64_t)1 << 31) || !(ix->pos = malloc(size * sizeof *ix->pos))) {
        free(ix);
        exsa_err_set(err, EXSA_ENOMEM, "ngram index: out of memory for %d tokens", cap_tokens);
        return NULL;
    }
    ix->cap = cap_tokens;
    ix->mask = (uint32_t)(size - 1);
    exsa_ngram_index_reset(ix);
    return ix;
}

void exsa_ngram_index_free(exsa_ngram_index *ix)
{
    if (!ix)
        return;
    free(ix->pos);
    free(ix);
}

void exsa_ngram_index_reset(exsa_ngram_index *ix)
{
    memset(ix->pos, 0xff, ((size_t)ix->mask + 1) * sizeof *ix->pos);
    ix->done = 0;
}

static uint32_t ngram_hash(const int32_t *t, int n)
{
    uint32_t h = 0x9e3779b1u * (uint32_t)n;
    for (int i = 0; i < n; i++) {
        h = (h ^ (uint32_t)t[i]) * 0x85ebca6bu;
        h ^= h >> 15;
    }
    return h;
}

/* The slot holding the n-gram key (tokens[at - n .. at) being the same
 * tokens), or the empty slot where it would go. */
static uint32_t ngram_slot(const exsa_ngram_index *ix, const int32_t *tokens, const int32_t *key,
                           int n)
{
    uint32_t i = ngram_hash(key, n) & ix->mask;
    for (;;) {
        int32_t p = ix->pos[i];
        if (p < 0 || (p >= n && !memcmp(tokens + p - n, key, (size_t)n * sizeof *key)))
            return i;
        i = (i + 1) & ix->mask;
    }
}

/* Indexes the n-grams of seq[0..n) that end just before positions
 * done .. n-1, each pointing at the position after it (the latest
 * occurrence wins); then returns where the longest suffix of
 * query[0..nq) that seq holds is followed in it, or -1. */
static int32_t ngram_index_and_find(exsa_ngram_index *ix, const int32_t *seq, int n,
                                    const int32_t *query, int nq)
{
    if (n > ix->cap)
        n = ix->cap;
    for (int p = ix->done > 1 ? ix->done : 1; p < n; p++)
        for (int s = EXSA_NGRAM_MIN; s <= EXSA_NGRAM_MAX && s <= p; s++)
            ix->pos[ngram_slot(ix, seq, seq + p - s, s)] = p;
    if (ix->done < n)
        ix->done = n;
    for (int s = EXSA_NGRAM_MAX; s >= EXSA_NGRAM_MIN; s--) {
        if (s > nq)
            continue;
        int32_t c = ix->pos[ngram_slot(ix, seq, query + nq - s, s)];
        if (c >= 0)
            return c;
    }
    return -1;
}

int exsa_ngram_propose(exsa_ngram_index *ix, const int32_t *tokens, int n, int32_t *out, int max)
{
    if (!ix || !tokens || n < 1 || max < 1)
        return 0;
    if (n > ix->cap)
        n = ix->cap;
    const int32_t c = ngram_index_and_find(ix, tokens, n, tokens, n);
    if (c < 0)
        return 0;
    /* A match near the end continues into its own proposal (a repeating
     * pattern repeats on). */
    for (int j = 0; j < max; j++)
        out[j] = c + j < n ? tokens[c + j] : out[c + j - n];
    return max;
}

int exsa_ngram_propose_from(exsa_ngram_index *ix, const int32_t *ref, int n_ref,
                            const int32_t *tokens, int n, int32_t *out, int max)
{
    if (!ix || !ref || !tokens || n_ref < 1 || n < 1 || max < 1)
        return 0;
    if (n_ref > ix->cap)
        n_ref = ix->cap;
    const int32_t c = ngram_index_and_find(ix, ref, n_ref, tokens, n);
    int k = 0;
    for (; c >= 0 && k < max && c + k < n_ref; k++)
        out[k] = ref[c + k];
    return k;
}

/* ---- draft model ---- */

struct exsa_drafter {
    exsa_model *m;
    exsa_model_ctx *ctx;
    exsa_kv_cache *kv;
    int n_seq, n_ctx, max_batch;
    int32_t n_vocab, n_vocab_target;
    int32_t *fed; /* [n_seq][n_ctx]: the tokens whose K/V the draft holds */
    int *n_fed;
    int32_t *b_token, *b_pos, *b_seq;
    uint8_t *b_logits;
    int *b_req;   /* logits row -> request index */
    float *logits; /* [n_seq][n_vocab] */
    char name[256];
};

static int vocab_check(const exsa_vocab *d, const exsa_vocab *t, exsa_err *err)
{
    if (exsa_vocab_kind(d) != exsa_vocab_kind(t))
        return exsa_err_set(err, EXSA_EINVAL,
                            "draft model: its tokenizer is of another kind than the target's");
    int32_t nd = exsa_vocab_n_tokens(d), nt = exsa_vocab_n_tokens(t);
    if (abs(nd - nt) > 128)
        return exsa_err_set(err, EXSA_EINVAL,
                            "draft model: %d tokens in its vocabulary, the target has %d",
                            (int)nd, (int)nt);
    if (exsa_vocab_bos(d) != exsa_vocab_bos(t) || exsa_vocab_eos(d) != exsa_vocab_eos(t))
        return exsa_err_set(err, EXSA_EINVAL,
                            "draft model: BOS/EOS %d/%d, the target's are %d/%d",
                            (int)exsa_vocab_bos(d), (int)exsa_vocab_eos(d),
                            (int)exsa_vocab_bos(t), (int)exsa_vocab_eos(t));
    int32_t n = nd < nt ? nd : nt;
    for (int32_t i = 0; i < n; i++) {
        size_t ld = 0, lt = 0;
        const char *sd = exsa_vocab_token_str(d, i, &ld), *st = exsa_vocab_token_str(t, i, &lt);
        if (ld != lt || (ld && memcmp(sd, st, ld)))
            return exsa_err_set(err, EXSA_EINVAL,
                                "draft model: token %d is \"%.*s\" in the draft, \"%.*s\" in the "
                                "target (the vocabularies must match)",
                                (int)i, (int)(ld > 40 ? 40 : ld), sd ? sd : "",
                                (int)(lt > 40 ? 40 : lt), st ? st : "");
    }
    return 0;
}

exsa_drafter *exsa_drafter_create(const exsa_drafter_params *p, const exsa_vocab *target,
                                  exsa_err *err)
{
    if (!p || !p->path || !target || p->n_seq < 1 || p->n_ctx < 1 || p->max_batch < 1) {
        exsa_err_set(err, EXSA_EINVAL, "draft model: path, sequences, context and batch needed");
        return NULL;
    }
    exsa_drafter *d = calloc(1, sizeof *d);
    if (!d) {
        exsa_err_set(err, EXSA_ENOMEM, "draft model: out of memory");
        return NULL;
    }
    exsa_model_params mp;
    exsa_model_params_default(&mp);
    mp.device = p->device;
    mp.n_gpu_layers = p->n_gpu_layers;
    mp.gpu = p->gpu;
    exsa_vocab *dv = NULL;
    if (!(d->m = exsa_model_load_ex(p->path, &mp, err)))
        goto fail;
    if (!(dv = exsa_vocab_load(exsa_model_gguf(d->m), err))) {
        exsa_err_prefix(err, "draft model %s", p->path);
        goto fail;
    }
    int rc = vocab_check(dv, target, err);
    exsa_vocab_free(dv);
    if (rc)
        goto fail;
    d->n_seq = p->n_seq;
    d->n_ctx = p->n_ctx;
    d->max_batch = p->max_batch;
    d->n_vocab = exsa_model_hparams(d->m)->n_vocab;
    d->n_vocab_target = exsa_vocab_n_tokens(target);
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = p->n_threads;
    cp.n_ctx = p->n_ctx;
    cp.n_seq = p->n_seq;
    cp.max_batch = p->max_batch;
    cp.kv_blocks = p->kv_tokens > 0 ? (p->kv_tokens + EXSA_KV_BLOCK_SIZE - 1) / EXSA_KV_BLOCK_SIZE
                                    : 0;
    if (!(d->ctx = exsa_model_ctx_create(d->m, &cp, err)))
        goto fail;
    d->kv = exsa_model_ctx_kv(d->ctx);
    size_t nb = (size_t)p->max_batch;
    d->fed = malloc((size_t)p->n_seq * (size_t)p->n_ctx * sizeof *d->fed);
    d->n_fed = calloc((size_t)p->n_seq, sizeof *d->n_fed);
    d->b_token = malloc(nb * sizeof *d->b_token);
    d->b_pos = malloc(nb * sizeof *d->b_pos);
    d->b_seq = malloc(nb * sizeof *d->b_seq);
    d->b_logits = malloc(nb);
    d->b_req = malloc(nb * sizeof *d->b_req);
    d->logits = malloc((size_t)p->n_seq * (size_t)d->n_vocab * sizeof *d->logits);
    if (!d->fed || !d->n_fed || !d->b_token || !d->b_pos || !d->b_seq || !d->b_logits ||
        !d->b_req || !d->logits) {
        exsa_err_set(err, EXSA_ENOMEM, "draft model: out of memory for its buffers");
        goto fail;
    }
    const char *base = strrchr(p->path, '/');
    snprintf(d->name, sizeof d->name, "%s", base ? base + 1 : p->path);
    return d;
fail:
    exsa_drafter_free(d);
    return NULL;
}

void exsa_drafter_free(exsa_drafter *d)
{
    if (!d)
        return;
    exsa_model_ctx_free(d->ctx);
    exsa_model_free(d->m);
    free(d->fed);
    free(d->n_fed);
    free(d->b_token);
    free(d->b_pos);
    free(d->b_seq);
    free(d->b_logits);
    free(d->b_req);
    free(d->logits);
    free(d);
}

const char *exsa_drafter_name(const exsa_drafter *d) { return d ? d->name : ""; }

void exsa_drafter_forget(exsa_drafter *d, int seq)
{
    if (!d || seq < 0 || seq >= d->n_seq)
        return;
    exsa_kv_seq_free(d->kv, seq);
    d->n_fed[seq] = 0;
}

/* Greedy pick of a logits row and its softmax probability. Ties keep the
 * lowest id, as the greedy sampler does. */
static int32_t argmax_p(const float *x, int32_t n, float *p)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    double sum = 0;
    for (int32_t i = 0; i < n; i++)
        if (x[i] > -INFINITY)
            sum += exp((double)x[i] - x[best]);
    *p = sum > 0 ? (float)(1.0 / sum) : 0.0f;
    return best;
}

static int run(exsa_drafter *d, int n, exsa_err *err)
{
    exsa_batch b = {.n = n, .token = d->b_token, .pos = d->b_pos, .seq = d->b_seq,
                    .logits = d->b_logits};
    return exsa_model_forward(d->ctx, &b, d->logits, err);
}

/* Runs the staged rows; each row that asked for logits gives its request
 * one more guess, or stops it (max made negative) when the draft is unsure
 * (below its p_min) or names a token the target does not have. */
static int flush(exsa_drafter *d, exsa_draft_req *reqs, int rows, exsa_err *err)
{
    int rc = run(d, rows, err);
    for (int r = 0, k = 0; rc == 0 && r < rows; r++) {
        if (!d->b_logits[r])
            continue;
        exsa_draft_req *q = &reqs[d->b_req[r]];
        float p;
        int32_t t = argmax_p(d->logits + (size_t)k++ * d->n_vocab, d->n_vocab, &p);
        if (p < q->p_min || t >= d->n_vocab_target)
            q->max = -q->max;
        else
            q->out[q->n_out++] = t;
    }
    return rc;
}

int exsa_drafter_propose(exsa_drafter *d, exsa_draft_req *reqs, int n, exsa_err *err)
{
    if (!d || (n > 0 && !reqs))
        return exsa_err_set(err, EXSA_EINVAL, "draft: bad arguments");
    /* The draft KV of each sequence is cut back
     * to what still matches its tokens, and room is reserved for the
     * catch-up rows and max - 1 drafted ones. */
    for (int i = 0; i < n; i++) {
        exsa_draft_req *q = &reqs[i];
        q->n_out = 0;
        if (q->seq < 0 || q->seq >= d->n_seq || q->n_tok < 1 || q->max < 1 ||
            q->n_tok + q->max > d->n_ctx) {
            q->max = 0;
            continue;
        }
        int32_t *f = d->fed + (size_t)q->seq * d->n_ctx;
        int c = 0, lim = d->n_fed[q->seq] < q->n_tok - 1 ? d->n_fed[q->seq] : q->n_tok - 1;
        while (c < lim && f[c] == q->tokens[c])
            c++;
        exsa_kv_seq_truncate(d->kv, q->seq, c);
        d->n_fed[q->seq] = c;
        if (exsa_kv_seq_reserve(d->kv, q->seq, q->n_tok + q->max - 1, NULL) != 0 &&
            exsa_kv_seq_reserve(d->kv, q->seq, q->n_tok, NULL) != 0)
            q->max = 0; /* the draft's pool is full: no guess this time */
        else if (exsa_kv_seq_len(d->kv, q->seq) < q->n_tok + q->max - 1)
            q->max = 1;
    }
    /* Catch-up: every sequence's unfed tokens, max_batch rows a pass; a
     * sequence's last row gives its first guess. */
    int rows = 0, rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        exsa_draft_req *q = &reqs[i];
        if (q->max <= 0)
            continue;
        int32_t *f = d->fed + (size_t)q->seq * d->n_ctx;
        for (int p = d->n_fed[q->seq]; p < q->n_tok && rc == 0; p++) {
            if (rows == d->max_batch) {
                rc = flush(d, reqs, rows, err);
                rows = 0;
            }
            f[p] = q->tokens[p];
            d->b_token[rows] = q->tokens[p];
            d->b_pos[rows] = p;
            d->b_seq[rows] = q->seq;
            d->b_logits[rows] = p == q->n_tok - 1;
            d->b_req[rows] = i;
            rows++;
        }
        d->n_fed[q->seq] = q->n_tok;
    }
    if (rc == 0 && rows > 0)
        rc = flush(d, reqs, rows, err);
    /* Then one row per sequence still drafting, per position. */
    while (rc == 0) {
        rows = 0;
        for (int i = 0; i < n && rows < d->max_batch; i++) {
            exsa_draft_req *q = &reqs[i];
            if (q->max <= 0 || q->n_out == 0 || q->n_out >= q->max ||
                d->n_fed[q->seq] != q->n_tok + q->n_out - 1)
                continue;
            int p = d->n_fed[q->seq];
            int32_t t = q->out[q->n_out - 1];
            d->fed[(size_t)q->seq * d->n_ctx + p] = t;
            d->n_fed[q->seq] = p + 1;
            d->b_token[rows] = t;
            d->b_pos[rows] = p;
            d->b_seq[rows] = q->seq;
            d->b_logits[rows] = 1;
            d->b_req[rows] = i;
            rows++;
        }
        if (rows == 0)
            break;
        rc = flush(d, reqs, rows, err);
    }
    for (int i = 0; i < n; i++) {
        exsa_draft_req *q = &reqs[i];
        if (q->max < 0)
            q->max = -q->max;
        if (rc != 0) {
            q->n_out = 0;
            if (q->seq >= 0 && q->seq < d->n_seq)
                exsa_drafter_forget(d, q->seq);
        }
    }
    return rc;
}
