/* Gemma 3 (GGUF architecture "gemma3").
 *
 * A pre- and post-normed transformer: per layer
 *     h  = x + post_attn_norm(attn(rope(qk_norm(attn_norm(x)))))
 *     x' = h + post_ffw_norm(down(gelu(gate(ffn_norm(h))) * up(ffn_norm(h))))
 * with token embeddings scaled by sqrt(n_embd), q scaled before attention,
 * per-head RMS norms on q and k, NEOX rope, GeGLU (tanh GELU), tied
 * output, optional final logit softcapping. Most layers attend through a
 * sliding window with their own rope base; every sliding_window_pattern-th
 * layer (6 by default: il % 6 == 5) attends to the whole context.
 *
 * The numbers follow llama.cpp's (src/models/gemma3.cpp, llama-hparams):
 *   - the window applies when gemma3.attention.sliding_window > 0; its
 *     layers are those with il % P < P - 1 for P =
 *     gemma3.attention.sliding_window_pattern (a scalar; absent or an
 *     array: 6; 0: every layer);
 *   - window layers rope at gemma3.rope.freq_base_swa (default 10000) and
 *     scale 1; the others at rope.freq_base with the file's linear scaling;
 *   - the attention scale is 1/sqrt(head_dim), except for the 62-layer
 *     (27B) model: 1/sqrt(n_embd / n_head); q is scaled before attention;
 *   - final_logit_softcapping (absent: none) caps the logits.
 * GELU is the tanh form computed in f32; llama.cpp's CPU backend looks it
 * up in an f16 table, a difference of about 1e-3 of the value. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "quant/quant.h"
#include "util/err.h"

typedef struct layer_weights {
    const float *attn_norm, *post_attn_norm, *ffn_norm, *post_ffw_norm;
    const float *q_norm, *k_norm;
    exsa_tensor wq, wk, wv, wo;
    exsa_tensor w_gate, w_up, w_down;
} layer_weights;

typedef struct gemma3_weights {
    exsa_tensor tok_embd, output;
    const float *output_norm;
    layer_weights *layers;
} gemma3_weights;

static int load_hparams(exsa_model *m, exsa_err *err)
{
    exsa_hparams *hp = &m->hp;
    int rc = exsa_model_read_hparams(m, err);
    if (rc)
        return rc;
    hp->rope_mode = EXSA_ROPE_NEOX;
    hp->has_qk_norm = 1;
    hp->embd_scale = sqrtf((float)hp->n_embd);
    hp->attn_scale = hp->n_layer == 62 ? 1.0f / sqrtf((float)(hp->n_embd / hp->n_head))
                                       : 1.0f / sqrtf((float)hp->head_dim);

    const int64_t zero = 0, six = 6;
    const double none = 0.0, base_swa_default = 10000.0;
    int64_t v;
    double f;
    if ((rc = exsa_model_key_float(m, "final_logit_softcapping", &none, &f, err)))
        return rc;
    if (!(f >= 0 && f < 1e6))
        return exsa_err_set(err, EXSA_EFORMAT, "model: final_logit_softcapping %g out of range",
                            f);
    hp->logit_softcap = (float)f;

    if ((rc = exsa_model_alloc_layers(m, err)))
        return rc;
    if ((rc = exsa_model_key_int(m, "attention.sliding_window", &zero, &v, err)))
        return rc;
    if (v < 0 || v > (1 << 24))
        return exsa_err_set(err, EXSA_EFORMAT, "model: sliding_window %lld out of range",
                            (long long)v);
    if (v == 0)
        return 0; /* no window: every layer global */
    hp->n_swa = (int)v;
    /* The pattern is a scalar key; llama.cpp ignores an array there. */
    int64_t period = six;
    char key[160];
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", hp->arch_name);
    int64_t ki = exsa_gguf_find_key(m->gguf, key);
    if (ki >= 0 && exsa_gguf_kv_type(m->gguf, ki) != EXSA_GGUF_ARRAY &&
        exsa_gguf_kv_int(m->gguf, ki, &period) != 0)
        return exsa_err_set(err, EXSA_EFORMAT, "model: key '%s' is not an integer", key);
    if (period < 0 || period > (1 << 20))
        return exsa_err_set(err, EXSA_EFORMAT, "model: %s = %lld out of range", key,
                            (long long)period);
    if ((rc = exsa_model_key_float(m, "rope.freq_base_swa", &base_swa_default, &f, err)))
        return rc;
    if (!(f > 1))
        return exsa_err_set(err, EXSA_EFORMAT, "model: rope.freq_base_swa %g out of range", f);
    for (int l = 0; l < hp->n_layer; l++) {
        if (!(period == 0 || l % period < period - 1))
            continue;
        hp->layer[l] = (exsa_layer_hparams){
            .kind = EXSA_LAYER_ATTN_SWA, .window = hp->n_swa,
            .rope_freq_base = (float)f, .rope_freq_scale = 1.0f,
        };
    }
    return 0;
}

static int load(exsa_model *m, exsa_err *err)
{
    int rc = load_hparams(m, err);
    if (rc)
        return rc;
    exsa_hparams *hp = &m->hp;
    gemma3_weights *w = calloc(1, sizeof *w);
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

    const exsa_layer_tensor_spec spec[] = {
        {"attn_norm.weight", offsetof(layer_weights, attn_norm), 0, E, 1, 1},
        {"post_attention_norm.weight", offsetof(layer_weights, post_attn_norm), 0, E, 1, 1},
        {"ffn_norm.weight", offsetof(layer_weights, ffn_norm), 0, E, 1, 1},
        {"post_ffw_norm.weight", offsetof(layer_weights, post_ffw_norm), 0, E, 1, 1},
        {"attn_q_norm.weight", offsetof(layer_weights, q_norm), 0, hp->head_dim, 1, 1},
        {"attn_k_norm.weight", offsetof(layer_weights, k_norm), 0, hp->head_dim, 1, 1},
        {"attn_q.weight", offsetof(layer_weights, wq), 1, E, Q, 1},
        {"attn_k.weight", offsetof(layer_weights, wk), 1, E, KV, 1},
        {"attn_v.weight", offsetof(layer_weights, wv), 1, E, KV, 1},
        {"attn_output.weight", offsetof(layer_weights, wo), 1, Q, E, 1},
        {"ffn_gate.weight", offsetof(layer_weights, w_gate), 1, E, F, 1},
        {"ffn_up.weight", offsetof(layer_weights, w_up), 1, E, F, 1},
        {"ffn_down.weight", offsetof(layer_weights, w_down), 1, F, E, 1},
    };
    if ((rc = exsa_model_bind_layers(m, w->layers, sizeof *w->layers, spec,
                                     sizeof spec / sizeof spec[0], err)))
        return rc;
    hp->weight_type = w->layers[0].wq.type;
    return 0;
}

static void unload(exsa_model *m)
{
    gemma3_weights *w = m->weights;
    free(w->layers);
    free(w);
    m->weights = NULL;
}

static void forward(exsa_model_ctx *c, const exsa_batch *batch, float *logits_out,
                    float *hidden_out)
{
    const exsa_hparams *hp = &c->m->hp;
    const gemma3_weights *w = c->m->weights;
    const int n = batch->n, E = hp->n_embd, hd = hp->head_dim;
    const int Q = hp->n_head * hd;
    const float eps = hp->norm_eps;

    if (!exsa_model_step_begin(c, n)) {
        exsa_model_stage s = exsa_model_stage_at(c, -1);
        s.op->get_rows(s.be, &w->tok_embd, s.meta->token, n, s.a->x);
        s.op->scale(s.be, s.a->x, hp->embd_scale, (int64_t)n * E);
        for (int l = 0; l < hp->n_layer; l++) {
            exsa_model_cross(c, l, n);
            s = exsa_model_stage_at(c, l);
            exsa_backend *be = s.be;
            const exsa_backend_ops *op = s.op;
            exsa_model_acts *a = s.a;
            const layer_weights *L = &w->layers[l];
            const exsa_layer_hparams *lh = &hp->layer[l];
            const exsa_layer_kv lk = exsa_model_layer_kv(c, l);
            exsa_rope_args rq = {
                .n_rows = n, .n_heads = hp->n_head, .head_dim = hd, .n_rot = hp->n_rot,
                .mode = hp->rope_mode, .freq_base = lh->rope_freq_base,
                .freq_scale = lh->rope_freq_scale,
            };
            exsa_rope_args rk = rq;
            rk.n_heads = hp->n_head_kv;

            /* attention: q, k, v of attn_norm(x); per-head norms; rope; q
             * scaled; K and V to the cache; attention through the window */
            {
                const exsa_tensor *qkv[3] = {&L->wq, &L->wk, &L->wv};
                float *out[3] = {a->q, a->k, a->v};
                exsa_matmul_fuse f = {.norm = L->attn_norm, .eps = eps, .scratch = a->xb};
                op->matmul_fused(be, qkv, 3, a->x, out, n, &f);
            }
            op->rms_norm(be, a->q, L->q_norm, a->q, n * hp->n_head, hd, eps);
            op->rms_norm(be, a->k, L->k_norm, a->k, n * hp->n_head_kv, hd, eps);
            op->rope(be, a->q, s.meta->pos, &rq);
            op->rope(be, a->k, s.meta->pos, &rk);
            op->scale(be, a->q, hp->attn_scale, (int64_t)n * Q);
            op->kv_store(be, lk.kv, a->k, a->v, lk.slots, n);
            exsa_attn_args aa = exsa_model_attn_args(c, l, n, &s, 1.0f);
            op->attention(be, &aa);
            op->matmul(be, &L->wo, a->att, a->xb, n);
            op->rms_norm(be, a->xb, L->post_attn_norm, a->xb, n, E, eps);
            op->add(be, a->x, a->xb, (int64_t)n * E);

            /* feed-forward: GeGLU of ffn_norm(x), post-normed */
            {
                const exsa_tensor *gu[2] = {&L->w_gate, &L->w_up};
                float *out[2] = {a->ff1, a->ff2};
                exsa_matmul_fuse f = {.norm = L->ffn_norm, .eps = eps, .scratch = a->xb};
                op->matmul_fused(be, gu, 2, a->x, out, n, &f);
            }
            op->geglu(be, a->ff1, a->ff2, a->ff1, (int64_t)n * hp->n_ff);
            op->matmul(be, &L->w_down, a->ff1, a->xb, n);
            op->rms_norm(be, a->xb, L->post_ffw_norm, a->xb, n, E, eps);
            op->add(be, a->x, a->xb, (int64_t)n * E);
        }
    }
    exsa_model_step_end(c, n);
    exsa_model_output_head(c, n, &w->output, w->output_norm, logits_out, hidden_out);
}

const exsa_arch_ops exsa_arch_gemma3 = {
    .name = "gemma3", .arch = EXSA_ARCH_GEMMA3, .load = load, .unload = unload,
    .ctx_init = exsa_model_acts_alloc, .ctx_free = exsa_model_acts_free, .forward = forward,
};
