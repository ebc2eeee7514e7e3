/* The llama family: Llama 2/3.x, TinyLlama, Mistral (dense), and the Qwen
 * variants that differ only in small ways: qwen2 adds biases to q/k/v, qwen3
 * adds a per-head RMS norm on q and k (and may have head_dim != embd/heads).
 * They share one forward pass; the flags in exsa_hparams switch the extras. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "quant/quant.h"
#include "util/err.h"

typedef struct layer_weights {
    const float *attn_norm, *ffn_norm;
    exsa_tensor wq, wk, wv, wo;
    const float *bq, *bk, *bv;         /* qwen2 */
    const float *q_norm, *k_norm;      /* qwen3 */
    exsa_tensor w_gate, w_up, w_down;
} layer_weights;

typedef struct llama_weights {
    exsa_tensor tok_embd, output;
    const float *output_norm;
    /* optional (llama 3.1 long context), per place: every layer uses it */
    const float *rope_freqs[EXSA_N_PLACES];
    layer_weights *layers;
} llama_weights;

static int load_hparams(exsa_model *m, exsa_err *err)
{
    exsa_hparams *hp = &m->hp;
    int rc = exsa_model_read_hparams(m, err);
    if (rc)
        return rc;
    hp->rope_mode = hp->arch == EXSA_ARCH_LLAMA ? EXSA_ROPE_NORMAL : EXSA_ROPE_NEOX;
    hp->has_qkv_bias = hp->arch == EXSA_ARCH_QWEN2;
    hp->has_qk_norm = hp->arch == EXSA_ARCH_QWEN3;
    return 0;
}

static int load(exsa_model *m, exsa_err *err)
{
    int rc = load_hparams(m, err);
    if (rc)
        return rc;
    exsa_hparams *hp = &m->hp;
    llama_weights *w = calloc(1, sizeof *w);
    if (!w)
        return exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
    m->weights = w;
    w->layers = calloc((size_t)hp->n_layer, sizeof *w->layers);
    if (!w->layers)
        return exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
    const int64_t E = hp->n_embd, Q = (int64_t)hp->n_head * hp->head_dim,
                  KV = (int64_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff;

    if ((rc = exsa_model_bind_head(m, &w->tok_embd, &w->output, &w->output_norm, err)))
        return rc;
    err->code = 0;
    w->rope_freqs[0] = exsa_model_bind_vector(m, "rope_freqs.weight", hp->n_rot / 2, 0, err);
    if (err->code)
        return err->code;
    for (int p = 1; p < EXSA_N_PLACES && w->rope_freqs[0]; p++)
        if (m->be[p] && !(w->rope_freqs[p] = exsa_model_place_vector(m, w->rope_freqs[0],
                                                                     hp->n_rot / 2, p, err)))
            return err->code;
    hp->weight_type = w->tok_embd.type;

    /* Per-layer tensors: name suffix, where it goes, shape, required. */
    const exsa_layer_tensor_spec spec[] = {
        {"attn_norm.weight", offsetof(layer_weights, attn_norm), 0, E, 1, 1},
        {"ffn_norm.weight", offsetof(layer_weights, ffn_norm), 0, E, 1, 1},
        {"attn_q.weight", offsetof(layer_weights, wq), 1, E, Q, 1},
        {"attn_k.weight", offsetof(layer_weights, wk), 1, E, KV, 1},
        {"attn_v.weight", offsetof(layer_weights, wv), 1, E, KV, 1},
        {"attn_output.weight", offsetof(layer_weights, wo), 1, Q, E, 1},
        {"ffn_gate.weight", offsetof(layer_weights, w_gate), 1, E, F, 1},
        {"ffn_up.weight", offsetof(layer_weights, w_up), 1, E, F, 1},
        {"ffn_down.weight", offsetof(layer_weights, w_down), 1, F, E, 1},
        {"attn_q.bias", offsetof(layer_weights, bq), 0, Q, 1, hp->has_qkv_bias},
        {"attn_k.bias", offsetof(layer_weights, bk), 0, KV, 1, hp->has_qkv_bias},
        {"attn_v.bias", offsetof(layer_weights, bv), 0, KV, 1, hp->has_qkv_bias},
        {"attn_q_norm.weight", offsetof(layer_weights, q_norm), 0, hp->head_dim, 1,
         hp->has_qk_norm},
        {"attn_k_norm.weight", offsetof(layer_weights, k_norm), 0, hp->head_dim, 1,
         hp->has_qk_norm},
    };
    if ((rc = exsa_model_bind_layers(m, w->layers, sizeof *w->layers, spec,
                                     sizeof spec / sizeof spec[0], err)))
        return rc;
    hp->weight_type = w->layers[0].wq.type;
    return 0;
}

static void unload(exsa_model *m)
{
    llama_weights *w = m->weights;
    free(w->layers);
    free(w);
    m->weights = NULL;
}

static void forward(exsa_model_ctx *c, const exsa_batch *batch, float *logits_out,
                    float *hidden_out)
{
    const exsa_hparams *hp = &c->m->hp;
    const llama_weights *w = c->m->weights;
    const int n = batch->n, hd = hp->head_dim;
    const int Q = hp->n_head * hd, KV = hp->n_head_kv * hd;
    /* Without ops between the q, k, v matmuls and the cache, rope and the
     * KV store ride on the matmul call (backend.h: exsa_matmul_fuse). */
    const int qkv_fused = !hp->has_qkv_bias && !hp->has_qk_norm;

    if (!exsa_model_step_begin(c, n)) {
        exsa_model_stage s = exsa_model_stage_at(c, -1);
        s.op->get_rows(s.be, &w->tok_embd, s.meta->token, n, s.a->x);
        for (int l = 0; l < hp->n_layer; l++) {
            exsa_model_cross(c, l, n);
            s = exsa_model_stage_at(c, l);
            exsa_backend *be = s.be;
            const exsa_backend_ops *op = s.op;
            exsa_model_acts *a = s.a;
            const layer_weights *L = &w->layers[l];
            const exsa_layer_kv lk = exsa_model_layer_kv(c, l);
            exsa_rope_args rq = {
                .n_rows = n, .n_heads = hp->n_head, .head_dim = hd, .n_rot = hp->n_rot,
                .mode = hp->rope_mode, .freq_base = hp->rope_freq_base,
                .freq_scale = hp->rope_freq_scale,
                .freq_factors = w->rope_freqs[exsa_model_place_of(c->m, l)],
            };
            exsa_rope_args rk = rq;
            rk.n_heads = hp->n_head_kv;

            /* attention */
            exsa_attn_args aa = exsa_model_attn_args(c, l, n, &s, 1.0f / sqrtf((float)hd));
            {
                const exsa_tensor *qkv[3] = {&L->wq, &L->wk, &L->wv};
                float *out[3] = {a->q, a->k, a->v};
                exsa_matmul_fuse f = {.norm = L->attn_norm, .eps = hp->norm_eps,
                                      .scratch = a->xb};
                if (qkv_fused) {
                    f.rope_q = &rq;
                    f.rope_k = &rk;
                    f.pos = s.meta->pos;
                    f.kv = lk.kv;
                    f.slots = lk.slots;
                }
                f.next_attn = &aa;
                op->matmul_fused(be, qkv, 3, a->x, out, n, &f);
            }
            if (hp->has_qkv_bias) {
                op->add_bias(be, a->q, L->bq, n, Q);
                op->add_bias(be, a->k, L->bk, n, KV);
                op->add_bias(be, a->v, L->bv, n, KV);
            }
            if (hp->has_qk_norm) {
                op->rms_norm(be, a->q, L->q_norm, a->q, n * hp->n_head, hd, hp->norm_eps);
                op->rms_norm(be, a->k, L->k_norm, a->k, n * hp->n_head_kv, hd, hp->norm_eps);
            }
            if (!qkv_fused) {
                op->rope(be, a->q, s.meta->pos, &rq);
                op->rope(be, a->k, s.meta->pos, &rk);
                op->kv_store(be, lk.kv, a->k, a->v, lk.slots, n);
            }
            op->attention(be, &aa);
            const exsa_tensor *wo = &L->wo, *down = &L->w_down;
            exsa_matmul_fuse res = {.residual = a->x};
            op->matmul_fused(be, &wo, 1, a->att, &a->xb, n, &res);

            /* feed-forward (SwiGLU) */
            {
                const exsa_tensor *gu[2] = {&L->w_gate, &L->w_up};
                float *out[2] = {a->ff1, a->ff2};
                exsa_matmul_fuse f = {.norm = L->ffn_norm, .eps = hp->norm_eps,
                                      .scratch = a->xb};
                op->matmul_fused(be, gu, 2, a->x, out, n, &f);
            }
            exsa_matmul_fuse act = {.up = a->ff2, .scratch = a->ff1, .residual = a->x};
            op->matmul_fused(be, &down, 1, a->ff1, &a->xb, n, &act);
        }
    }
    exsa_model_step_end(c, n);
    exsa_model_output_head(c, n, &w->output, w->output_norm, logits_out, hidden_out);
}

#define LLAMA_FAMILY(ident, str, id)                                                 \
    const exsa_arch_ops ident = {                                                    \
        .name = str, .arch = id, .load = load, .unload = unload,                     \
        .ctx_init = exsa_model_acts_alloc, .ctx_free = exsa_model_acts_free,         \
        .forward = forward,                                                          \
    }
LLAMA_FAMILY(exsa_arch_llama, "llama", EXSA_ARCH_LLAMA);
LLAMA_FAMILY(exsa_arch_qwen2, "qwen2", EXSA_ARCH_QWEN2);
LLAMA_FAMILY(exsa_arch_qwen3, "qwen3", EXSA_ARCH_QWEN3);
