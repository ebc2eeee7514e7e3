/* Naive double-precision llama-family forward pass (see ref_forward.h).
 *
 * Deliberately simple: every weight dequantized to a dense double matrix
 * W[n_out][n_in], every position recomputed with full causal attention over
 * the whole sequence. Speed does not matter (test models are tiny); being
 * obviously right does. */
#include "ref_forward.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf/gguf.h"
#include "quant/quant.h"

/* A weight matrix [n_out][n_in] and the type it is stored in. */
typedef struct ref_mat {
    double *w;
    int type;
} ref_mat;

typedef struct ref_layer {
    double *attn_norm, *ffn_norm;
    ref_mat wq, wk, wv, wo;          /* [Q][E], [KV][E], [KV][E], [E][Q] */
    double *bq, *bk, *bv;            /* optional biases (qwen2) */
    double *q_norm, *k_norm;         /* [head_dim] (qwen3, gemma3) */
    double *post_attn_norm, *post_ffw_norm; /* [E] (gemma3) */
    ref_mat w_gate, w_up, w_down;    /* [F][E], [F][E], [E][F] */
} ref_layer;

struct exsa_ref_model {
    exsa_ref_hparams hp;
    ref_mat tok_embd;     /* [V][E] */
    ref_mat output;       /* [V][E]; w NULL when tied */
    double *output_norm;  /* [E] */
    double *rope_factors; /* [n_rot/2] or NULL */
    ref_layer *layers;
    int act_quant;        /* see exsa_ref_set_act_quant */
};

static void set_msg(char *msg, size_t len, const char *fmt, ...)
{
    if (!msg || !len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
}

/* "<arch>.<suffix>" as an integer; absent -> dflt (or failure when
 * required). Returns 0 or -1. */
static int key_int(const exsa_gguf *g, const char *arch, const char *suffix, int required,
                   int64_t dflt, int64_t *out, char *msg, size_t msg_len)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int64_t i = exsa_gguf_find_key(g, key);
    if (i < 0) {
        if (required) {
            set_msg(msg, msg_len, "ref: missing key %s", key);
            return -1;
        }
        *out = dflt;
        return 0;
    }
    if (exsa_gguf_kv_int(g, i, out) != 0) {
        set_msg(msg, msg_len, "ref: key %s is not an integer", key);
        return -1;
    }
    return 0;
}

static int key_float(const exsa_gguf *g, const char *arch, const char *suffix, double dflt,
                     double *out, char *msg, size_t msg_len)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int64_t i = exsa_gguf_find_key(g, key);
    if (i < 0) {
        *out = dflt;
        return 0;
    }
    if (exsa_gguf_kv_float(g, i, out) != 0) {
        set_msg(msg, msg_len, "ref: key %s is not a number", key);
        return -1;
    }
    return 0;
}

/* Tensor `name` of ne0 x ne1 elements (ne0 = row length) dequantized to
 * double. *absent is set (and NULL returned without an error) when the
 * tensor is missing and not required. */
static double *load_tensor(const exsa_gguf *g, const char *name, int64_t ne0, int64_t ne1,
                           int required, int *absent, int *type, char *msg, size_t msg_len)
{
    if (absent)
        *absent = 0;
    const exsa_gguf_tensor *t = exsa_gguf_find_tensor(g, name);
    if (!t) {
        if (!required) {
            if (absent)
                *absent = 1;
            return NULL;
        }
        set_msg(msg, msg_len, "ref: missing tensor %s", name);
        return NULL;
    }
    int64_t total = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    if (t->ne[0] != ne0 || total != ne0 * ne1) {
        set_msg(msg, msg_len, "ref: tensor %s has shape [%lld, %lld], expected [%lld, %lld]",
                name, (long long)t->ne[0], (long long)t->ne[1], (long long)ne0,
                (long long)ne1);
        return NULL;
    }
    if (type)
        *type = t->type;
    const exsa_type_traits *tr = exsa_type_traits_get(t->type);
    size_t row_bytes = exsa_type_row_size(t->type, ne0);
    if (!tr || !tr->to_float || row_bytes == 0) {
        set_msg(msg, msg_len, "ref: tensor %s: type %d cannot be dequantized", name, t->type);
        return NULL;
    }
    double *out = malloc((size_t)total * sizeof *out);
    float *row = malloc((size_t)ne0 * sizeof *row);
    if (!out || !row) {
        free(out);
        free(row);
        set_msg(msg, msg_len, "ref: out of memory for %s", name);
        return NULL;
    }
    const uint8_t *src = t->data;
    for (int64_t r = 0; r < ne1; r++) {
        tr->to_float(src + (size_t)r * row_bytes, row, ne0);
        for (int64_t i = 0; i < ne0; i++)
            out[r * ne0 + i] = row[i];
    }
    free(row);
    return out;
}

static int load_hparams(const exsa_gguf *g, exsa_ref_hparams *hp, char *msg, size_t msg_len)
{
    const char *arch;
    size_t alen;
    if (exsa_gguf_get_str(g, "general.architecture", &arch, &alen, NULL) != 0) {
        set_msg(msg, msg_len, "ref: no general.architecture");
        return -1;
    }
    if (alen >= sizeof hp->arch) {
        set_msg(msg, msg_len, "ref: architecture name too long");
        return -1;
    }
    memcpy(hp->arch, arch, alen);
    hp->arch[alen] = '\0';
    int is_llama = strcmp(hp->arch, "llama") == 0, is_qwen2 = strcmp(hp->arch, "qwen2") == 0,
        is_qwen3 = strcmp(hp->arch, "qwen3") == 0, is_gemma3 = strcmp(hp->arch, "gemma3") == 0;
    if (!is_llama && !is_qwen2 && !is_qwen3 && !is_gemma3) {
        set_msg(msg, msg_len, "ref: architecture %s not handled", hp->arch);
        return -1;
    }
    const char *a = hp->arch;
    int64_t v;
    if (key_int(g, a, "embedding_length", 1, 0, &v, msg, msg_len)) return -1;
    hp->n_embd = (int)v;
    if (key_int(g, a, "block_count", 1, 0, &v, msg, msg_len)) return -1;
    hp->n_layer = (int)v;
    if (key_int(g, a, "feed_forward_length", 1, 0, &v, msg, msg_len)) return -1;
    hp->n_ff = (int)v;
    if (key_int(g, a, "attention.head_count", 1, 0, &v, msg, msg_len)) return -1;
    hp->n_head = (int)v;
    if (key_int(g, a, "attention.head_count_kv", 0, hp->n_head, &v, msg, msg_len)) return -1;
    hp->n_head_kv = (int)v;
    if (hp->n_embd <= 0 || hp->n_layer <= 0 || hp->n_ff <= 0 || hp->n_head <= 0 ||
        hp->n_head_kv <= 0 || hp->n_head % hp->n_head_kv != 0) {
        set_msg(msg, msg_len, "ref: bad shape hyperparameters");
        return -1;
    }
    if (key_int(g, a, "attention.key_length", 0, hp->n_embd / hp->n_head, &v, msg, msg_len))
        return -1;
    hp->head_dim = (int)v;
    if (key_int(g, a, "rope.dimension_count", 0, hp->head_dim, &v, msg, msg_len)) return -1;
    hp->n_rot = (int)v;
    if (hp->head_dim <= 0 || hp->n_rot <= 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2) {
        set_msg(msg, msg_len, "ref: bad head_dim %d / n_rot %d", hp->head_dim, hp->n_rot);
        return -1;
    }
    if (key_float(g, a, "attention.layer_norm_rms_epsilon", 1e-5, &hp->norm_eps, msg, msg_len))
        return -1;
    if (key_float(g, a, "rope.freq_base", 10000.0, &hp->rope_base, msg, msg_len)) return -1;
    /* Linear rope scaling divides positions by the factor. Like llama.cpp
     * the factor applies when the scaling type is absent or "linear". */
    double factor = 0;
    if (key_float(g, a, "rope.scaling.factor", 0.0, &factor, msg, msg_len)) return -1;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    int64_t ti = exsa_gguf_find_key(g, key);
    int linear = 1;
    if (ti >= 0) {
        const char *s;
        size_t sl;
        linear = exsa_gguf_kv_str(g, ti, &s, &sl) == 0 && sl == 6 && memcmp(s, "linear", 6) == 0;
    }
    hp->rope_freq_scale = linear && factor > 0 ? 1.0 / factor : 1.0;
    hp->neox = !is_llama;
    hp->qkv_bias = is_qwen2;
    hp->qk_norm = is_qwen3 || is_gemma3;
    hp->gemma3 = is_gemma3;
    hp->embd_scale = is_gemma3 ? sqrt((double)hp->n_embd) : 1.0;
    hp->attn_scale = 1.0 / sqrt((double)hp->head_dim);
    if (is_gemma3 && hp->n_layer == 62)
        hp->attn_scale = 1.0 / sqrt((double)(hp->n_embd / hp->n_head));
    if (key_float(g, a, "final_logit_softcapping", 0.0, &hp->logit_softcap, msg, msg_len))
        return -1;
    if (!is_gemma3)
        hp->logit_softcap = 0;
    if (key_int(g, a, "attention.sliding_window", 0, 0, &v, msg, msg_len)) return -1;
    hp->n_swa = is_gemma3 ? (int)v : 0;
    if (key_int(g, a, "attention.sliding_window_pattern", 0, 6, &v, msg, msg_len)) return -1;
    hp->swa_pattern = (int)v;
    if (key_float(g, a, "rope.freq_base_swa", 10000.0, &hp->rope_base_swa, msg, msg_len))
        return -1;

    const exsa_gguf_tensor *emb = exsa_gguf_find_tensor(g, "token_embd.weight");
    if (!emb || emb->ne[0] != hp->n_embd || emb->ne[1] <= 0) {
        set_msg(msg, msg_len, "ref: token_embd.weight missing or misshapen");
        return -1;
    }
    hp->n_vocab = (int)emb->ne[1];
    hp->tied = exsa_gguf_find_tensor(g, "output.weight") == NULL;
    return 0;
}

static int load_layer(const exsa_gguf *g, const exsa_ref_hparams *hp, int l, ref_layer *L,
                      char *msg, size_t msg_len)
{
    const int64_t E = hp->n_embd, Q = (int64_t)hp->n_head * hp->head_dim,
                  KV = (int64_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff;
    const struct {
        const char *suffix;
        double **dst;
        int *type;
        int64_t ne0, ne1;
        int required;
    } spec[] = {
        {"attn_norm.weight", &L->attn_norm, NULL, E, 1, 1},
        {"attn_q.weight", &L->wq.w, &L->wq.type, E, Q, 1},
        {"attn_k.weight", &L->wk.w, &L->wk.type, E, KV, 1},
        {"attn_v.weight", &L->wv.w, &L->wv.type, E, KV, 1},
        {"attn_output.weight", &L->wo.w, &L->wo.type, Q, E, 1},
        {"ffn_norm.weight", &L->ffn_norm, NULL, E, 1, 1},
        {"ffn_gate.weight", &L->w_gate.w, &L->w_gate.type, E, F, 1},
        {"ffn_up.weight", &L->w_up.w, &L->w_up.type, E, F, 1},
        {"ffn_down.weight", &L->w_down.w, &L->w_down.type, F, E, 1},
        {"attn_q.bias", &L->bq, NULL, Q, 1, hp->qkv_bias},
        {"attn_k.bias", &L->bk, NULL, KV, 1, hp->qkv_bias},
        {"attn_v.bias", &L->bv, NULL, KV, 1, hp->qkv_bias},
        {"attn_q_norm.weight", &L->q_norm, NULL, hp->head_dim, 1, hp->qk_norm},
        {"attn_k_norm.weight", &L->k_norm, NULL, hp->head_dim, 1, hp->qk_norm},
        {"post_attention_norm.weight", &L->post_attn_norm, NULL, E, 1, hp->gemma3},
        {"post_ffw_norm.weight", &L->post_ffw_norm, NULL, E, 1, hp->gemma3},
    };
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        char name[96];
        snprintf(name, sizeof name, "blk.%d.%s", l, spec[i].suffix);
        /* Biases are only part of the qwen2 graph; q/k norms only of qwen3. */
        int is_bias = i >= 9 && i < 12, is_qk = i >= 12 && i < 14, is_post = i >= 14;
        if ((is_bias && !hp->qkv_bias) || (is_qk && !hp->qk_norm) || (is_post && !hp->gemma3))
            continue;
        int absent;
        *spec[i].dst = load_tensor(g, name, spec[i].ne0, spec[i].ne1, spec[i].required,
                                   &absent, spec[i].type, msg, msg_len);
        if (!*spec[i].dst && !absent)
            return -1;
    }
    return 0;
}

exsa_ref_model *exsa_ref_load(const char *path, char *msg, size_t msg_len)
{
    exsa_err err = {0};
    exsa_gguf *g = exsa_gguf_open(path, &err);
    if (!g) {
        set_msg(msg, msg_len, "ref: %s", err.msg);
        return NULL;
    }
    exsa_ref_model *r = calloc(1, sizeof *r);
    if (!r) {
        exsa_gguf_close(g);
        set_msg(msg, msg_len, "ref: out of memory");
        return NULL;
    }
    exsa_ref_hparams *hp = &r->hp;
    if (load_hparams(g, hp, msg, msg_len) != 0)
        goto fail;
    r->layers = calloc((size_t)hp->n_layer, sizeof *r->layers);
    if (!r->layers) {
        set_msg(msg, msg_len, "ref: out of memory");
        goto fail;
    }
    const int64_t E = hp->n_embd, V = hp->n_vocab;
    int absent;
    r->tok_embd.w = load_tensor(g, "token_embd.weight", E, V, 1, NULL, &r->tok_embd.type, msg,
                                msg_len);
    if (!r->tok_embd.w)
        goto fail;
    r->output_norm = load_tensor(g, "output_norm.weight", E, 1, 1, NULL, NULL, msg, msg_len);
    if (!r->output_norm)
        goto fail;
    r->output.w = load_tensor(g, "output.weight", E, V, 0, &absent, &r->output.type, msg,
                              msg_len);
    if (!r->output.w && !absent)
        goto fail;
    r->rope_factors = load_tensor(g, "rope_freqs.weight", hp->n_rot / 2, 1, 0, &absent, NULL,
                                  msg, msg_len);
    if (!r->rope_factors && !absent)
        goto fail;
    for (int l = 0; l < hp->n_layer; l++)
        if (load_layer(g, hp, l, &r->layers[l], msg, msg_len) != 0)
            goto fail;
    exsa_gguf_close(g);
    return r;
fail:
    exsa_gguf_close(g);
    exsa_ref_free(r);
    return NULL;
}

void exsa_ref_free(exsa_ref_model *r)
{
    if (!r)
        return;
    if (r->layers) {
        for (int l = 0; l < r->hp.n_layer; l++) {
            ref_layer *L = &r->layers[l];
            double *p[] = {L->attn_norm, L->ffn_norm, L->wq.w, L->wk.w, L->wv.w, L->wo.w,
                           L->bq, L->bk, L->bv, L->q_norm, L->k_norm, L->w_gate.w, L->w_up.w,
                           L->w_down.w, L->post_attn_norm, L->post_ffw_norm};
            for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
                free(p[i]);
        }
        free(r->layers);
    }
    free(r->tok_embd.w);
    free(r->output.w);
    free(r->output_norm);
    free(r->rope_factors);
    free(r);
}

const exsa_ref_hparams *exsa_ref_hparams_get(const exsa_ref_model *r) { return &r->hp; }

void exsa_ref_set_act_quant(exsa_ref_model *r, int on) { r->act_quant = on; }

/* ---- the math ---- */

/* y = x / sqrt(mean(x^2) + eps) * w */
static void rms_norm(const double *x, const double *w, double *y, int n, double eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    double k = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++)
        y[i] = x[i] * k * w[i];
}

/* y[o] = sum_i W[o][i] x[i] (+ b[o]). With act_quant, x first goes
 * through the weight type's activation format (vec_dot_type) and back
 * (unrounded if that scratch cannot be allocated: tests then fail loudly). */
static void matvec(const exsa_ref_model *r, const ref_mat *W, const double *b, const double *x,
                   double *y, int n_in, int n_out)
{
    const exsa_type_traits *tr = exsa_type_traits_get(W->type);
    const exsa_type_traits *at = tr ? exsa_type_traits_get(tr->vec_dot_type) : NULL;
    double *xq = NULL;
    if (r->act_quant && at && tr->vec_dot_type != EXSA_TYPE_F32 && n_in % at->block_size == 0) {
        float *xf = malloc((size_t)n_in * sizeof *xf);
        void *qb = malloc(exsa_type_row_size(tr->vec_dot_type, n_in));
        xq = malloc((size_t)n_in * sizeof *xq);
        if (xf && qb && xq) {
            for (int i = 0; i < n_in; i++)
                xf[i] = (float)x[i];
            at->from_float(xf, qb, n_in);
            at->to_float(qb, xf, n_in);
            for (int i = 0; i < n_in; i++)
                xq[i] = xf[i];
            x = xq;
        }
        free(xf);
        free(qb);
    }
    for (int o = 0; o < n_out; o++) {
        const double *w = W->w + (size_t)o * n_in;
        double s = 0;
        for (int i = 0; i < n_in; i++)
            s += w[i] * x[i];
        y[o] = s + (b ? b[o] : 0.0);
    }
    free(xq);
}

/* Rotates each of n_heads heads of x at position pos. Pair i (i < n_rot/2)
 * turns by theta_i = pos * freq_scale * base^(-2i/n_rot) (/ factor_i). */
static void rope(const exsa_ref_model *r, double *x, int n_heads, int pos, double base,
                 double freq_scale)
{
    const exsa_ref_hparams *hp = &r->hp;
    const int half = hp->n_rot / 2;
    for (int h = 0; h < n_heads; h++) {
        double *v = x + (size_t)h * hp->head_dim;
        for (int i = 0; i < half; i++) {
            double theta = pos * freq_scale * pow(base, -2.0 * i / hp->n_rot);
            if (r->rope_factors)
                theta /= r->rope_factors[i];
            double c = cos(theta), s = sin(theta);
            int a = hp->neox ? i : 2 * i, b = hp->neox ? i + half : 2 * i + 1;
            double x0 = v[a], x1 = v[b];
            v[a] = x0 * c - x1 * s;
            v[b] = x0 * s + x1 * c;
        }
    }
}

/* Logits of rows [first_out, n) into logits[(n - first_out)][n_vocab]. */
static int forward_rows(const exsa_ref_model *r, const int32_t *tok, int n, int first_out,
                        double *logits)
{
    const exsa_ref_hparams *hp = &r->hp;
    const int E = hp->n_embd, F = hp->n_ff, hd = hp->head_dim, H = hp->n_head,
              HKV = hp->n_head_kv, Q = H * hd, KV = HKV * hd, V = hp->n_vocab;
    for (int t = 0; t < n; t++)
        if (tok[t] < 0 || tok[t] >= V)
            return -1;
    size_t N = (size_t)n;
    double *x = malloc(N * E * sizeof *x);       /* residual stream */
    double *xn = malloc((size_t)(E > Q ? E : Q) * sizeof *xn);
    double *q = malloc(N * Q * sizeof *q);
    double *k = malloc(N * KV * sizeof *k);
    double *v = malloc(N * KV * sizeof *v);
    double *att = malloc((size_t)Q * sizeof *att);
    double *sc = malloc(N * sizeof *sc);
    double *g = malloc((size_t)F * sizeof *g), *u = malloc((size_t)F * sizeof *u);
    double *tmp = malloc((size_t)(E > Q ? E : Q) * sizeof *tmp);
    int rc = -1;
    if (!x || !xn || !q || !k || !v || !att || !sc || !g || !u || !tmp)
        goto done;

    for (int t = 0; t < n; t++)
        for (int i = 0; i < E; i++)
            x[(size_t)t * E + i] = r->tok_embd.w[(size_t)tok[t] * E + i] * hp->embd_scale;

    const double scale = hp->attn_scale;
    for (int l = 0; l < hp->n_layer; l++) {
        const ref_layer *L = &r->layers[l];
        /* a sliding-window layer: keys within n_swa positions, own rope */
        const int swa = hp->n_swa > 0 &&
                        (hp->swa_pattern == 0 || l % hp->swa_pattern < hp->swa_pattern - 1);
        const double base = swa ? hp->rope_base_swa : hp->rope_base;
        const double fscale = swa ? 1.0 : hp->rope_freq_scale;
        for (int t = 0; t < n; t++) {
            double *qt = q + (size_t)t * Q, *kt = k + (size_t)t * KV, *vt = v + (size_t)t * KV;
            rms_norm(x + (size_t)t * E, L->attn_norm, xn, E, hp->norm_eps);
            matvec(r, &L->wq, L->bq, xn, qt, E, Q);
            matvec(r, &L->wk, L->bk, xn, kt, E, KV);
            matvec(r, &L->wv, L->bv, xn, vt, E, KV);
            if (hp->qk_norm) {
                for (int h = 0; h < H; h++)
                    rms_norm(qt + h * hd, L->q_norm, qt + h * hd, hd, hp->norm_eps);
                for (int h = 0; h < HKV; h++)
                    rms_norm(kt + h * hd, L->k_norm, kt + h * hd, hd, hp->norm_eps);
            }
            rope(r, qt, H, t, base, fscale);
            rope(r, kt, HKV, t, base, fscale);
        }
        /* Causal attention: row t sees positions 0..t; query head h reads
         * kv head h / (H / HKV). */
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < H; h++) {
                const double *qh = q + (size_t)t * Q + h * hd;
                int kvh = h / (H / HKV);
                double mx = -INFINITY;
                const int j0 = swa && t - hp->n_swa + 1 > 0 ? t - hp->n_swa + 1 : 0;
                for (int j = j0; j <= t; j++) {
                    const double *kj = k + (size_t)j * KV + kvh * hd;
                    double s = 0;
                    for (int d = 0; d < hd; d++)
                        s += qh[d] * kj[d];
                    sc[j] = s * scale;
                    if (sc[j] > mx)
                        mx = sc[j];
                }
                double sum = 0;
                for (int j = j0; j <= t; j++) {
                    sc[j] = exp(sc[j] - mx);
                    sum += sc[j];
                }
                double *o = att + h * hd;
                for (int d = 0; d < hd; d++)
                    o[d] = 0;
                for (int j = j0; j <= t; j++) {
                    const double *vj = v + (size_t)j * KV + kvh * hd;
                    double p = sc[j] / sum;
                    for (int d = 0; d < hd; d++)
                        o[d] += p * vj[d];
                }
            }
            matvec(r, &L->wo, NULL, att, tmp, Q, E);
            if (L->post_attn_norm)
                rms_norm(tmp, L->post_attn_norm, tmp, E, hp->norm_eps);
            double *xt = x + (size_t)t * E;
            for (int i = 0; i < E; i++)
                xt[i] += tmp[i];
        }
        /* SwiGLU feed-forward. */
        for (int t = 0; t < n; t++) {
            double *xt = x + (size_t)t * E;
            rms_norm(xt, L->ffn_norm, xn, E, hp->norm_eps);
            matvec(r, &L->w_gate, NULL, xn, g, E, F);
            matvec(r, &L->w_up, NULL, xn, u, E, F);
            if (hp->gemma3) /* GeGLU, GELU's tanh form */
                for (int i = 0; i < F; i++)
                    g[i] = 0.5 * g[i] *
                           (1.0 + tanh(sqrt(2.0 / M_PI) * (g[i] + 0.044715 * g[i] * g[i] * g[i]))) *
                           u[i];
            else
                for (int i = 0; i < F; i++)
                    g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            matvec(r, &L->w_down, NULL, g, tmp, F, E);
            if (L->post_ffw_norm)
                rms_norm(tmp, L->post_ffw_norm, tmp, E, hp->norm_eps);
            for (int i = 0; i < E; i++)
                xt[i] += tmp[i];
        }
    }
    const ref_mat *W_out = r->output.w ? &r->output : &r->tok_embd;
    for (int t = first_out; t < n; t++) {
        rms_norm(x + (size_t)t * E, r->output_norm, xn, E, hp->norm_eps);
        double *lg = logits + (size_t)(t - first_out) * V;
        matvec(r, W_out, NULL, xn, lg, E, V);
        for (int i = 0; i < V && hp->logit_softcap > 0; i++)
            lg[i] = tanh(lg[i] / hp->logit_softcap) * hp->logit_softcap;
    }
    rc = 0;
done:
    free(x);
    free(xn);
    free(q);
    free(k);
    free(v);
    free(att);
    free(sc);
    free(g);
    free(u);
    free(tmp);
    return rc;
}

int exsa_ref_forward(const exsa_ref_model *r, const int32_t *tokens, int n, double *logits)
{
    if (n <= 0)
        return -1;
    return forward_rows(r, tokens, n, 0, logits);
}

int exsa_ref_greedy(const exsa_ref_model *r, int32_t *seq, int n_prompt, int n_gen)
{
    double *last = malloc((size_t)r->hp.n_vocab * sizeof *last);
    if (!last)
        return -1;
    int rc = 0;
    for (int i = 0; i < n_gen && rc == 0; i++) {
        int n = n_prompt + i;
        rc = forward_rows(r, seq, n, n - 1, last);
        if (rc == 0)
            seq[n] = exsa_ref_argmax_d(last, r->hp.n_vocab);
    }
    free(last);
    return rc;
}

double exsa_ref_rel_l2(const float *a, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

int exsa_ref_argmax_d(const double *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

int exsa_ref_argmax_f(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}
