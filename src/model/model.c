#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/model_internal.h"
#include "quant/quant.h"
#include "util/err.h"

/* One entry per architecture file. */
static const exsa_arch_ops *const archs[] = {&exsa_arch_llama, &exsa_arch_qwen2,
                                             &exsa_arch_qwen3, &exsa_arch_gemma3};

int exsa_model_key_int(const exsa_model *m, const char *suffix, const int64_t *dflt,
                       int64_t *out, exsa_err *err)
{
    char key[160];
    snprintf(key, sizeof key, "%s.%s", m->hp.arch_name, suffix);
    int64_t i = exsa_gguf_find_key(m->gguf, key);
    if (i < 0) {
        if (!dflt)
            return exsa_err_set(err, EXSA_EFORMAT, "model: missing key '%s'", key);
        *out = *dflt;
        return 0;
    }
    return exsa_gguf_kv_int(m->gguf, i, out) == 0
               ? 0
               : exsa_err_set(err, EXSA_EFORMAT, "model: key '%s' is not an integer", key);
}

int exsa_model_key_float(const exsa_model *m, const char *suffix, const double *dflt,
                         double *out, exsa_err *err)
{
    char key[160];
    snprintf(key, sizeof key, "%s.%s", m->hp.arch_name, suffix);
    int64_t i = exsa_gguf_find_key(m->gguf, key);
    if (i < 0) {
        if (!dflt)
            return exsa_err_set(err, EXSA_EFORMAT, "model: missing key '%s'", key);
        *out = *dflt;
        return 0;
    }
    return exsa_gguf_kv_float(m->gguf, i, out) == 0
               ? 0
               : exsa_err_set(err, EXSA_EFORMAT, "model: key '%s' is not a number", key);
}

int exsa_model_read_hparams(exsa_model *m, exsa_err *err)
{
    exsa_hparams *hp = &m->hp;
    int64_t v, zero = 0;
    double f;
    const double eps_default = 1e-5, base_default = 10000.0;
    if (exsa_model_key_int(m, "embedding_length", NULL, &v, err)) return err->code;
    hp->n_embd = (int)v;
    if (v <= 0 || v > (1 << 16)) goto range;
    if (exsa_model_key_int(m, "block_count", NULL, &v, err)) return err->code;
    hp->n_layer = (int)v;
    if (v <= 0 || v > 1024) goto range;
    if (exsa_model_key_int(m, "feed_forward_length", NULL, &v, err)) return err->code;
    hp->n_ff = (int)v;
    if (v <= 0 || v > (1 << 20)) goto range;
    if (exsa_model_key_int(m, "attention.head_count", NULL, &v, err)) return err->code;
    hp->n_head = (int)v;
    if (v <= 0 || v > 4096) goto range;
    int64_t dflt_kv = hp->n_head;
    if (exsa_model_key_int(m, "attention.head_count_kv", &dflt_kv, &v, err)) return err->code;
    hp->n_head_kv = (int)v;
    if (v <= 0 || v > hp->n_head || hp->n_head % v != 0) {
        return exsa_err_set(err, EXSA_EFORMAT,
                            "model: %s.attention.head_count_kv = %lld must divide head_count = %d",
                            hp->arch_name, (long long)v, hp->n_head);
    }
    int64_t dflt_hd = hp->n_embd / hp->n_head;
    if (exsa_model_key_int(m, "attention.key_length", &dflt_hd, &v, err)) return err->code;
    hp->head_dim = (int)v;
    if (v <= 0 || v > 1024 || v % 2) goto range;
    if (exsa_model_key_int(m, "attention.value_length", &dflt_hd, &v, err)) return err->code;
    if (v != hp->head_dim)
        return exsa_err_set(err, EXSA_EUNSUPPORTED, "model: value_length != key_length");
    if (exsa_model_key_int(m, "context_length", &zero, &v, err)) return err->code;
    hp->n_ctx_train = v > 0 && v < (1 << 24) ? (int)v : 0;
    if (exsa_model_key_float(m, "attention.layer_norm_rms_epsilon", &eps_default, &f, err))
        return err->code;
    if (!(f > 0 && f < 1))
        return exsa_err_set(err, EXSA_EFORMAT, "model: rms epsilon %g out of range", f);
    hp->norm_eps = (float)f;
    if (exsa_model_key_float(m, "rope.freq_base", &base_default, &f, err)) return err->code;
    if (!(f > 1))
        return exsa_err_set(err, EXSA_EFORMAT, "model: rope.freq_base %g out of range", f);
    hp->rope_freq_base = (float)f;
    int64_t dflt_rot = hp->head_dim;
    if (exsa_model_key_int(m, "rope.dimension_count", &dflt_rot, &v, err)) return err->code;
    if (v <= 0 || v > hp->head_dim || v % 2)
        return exsa_err_set(err, EXSA_EFORMAT, "model: rope.dimension_count %lld out of range",
                            (long long)v);
    hp->n_rot = (int)v;
    /* Linear scaling: positions are divided by the factor. */
    hp->rope_freq_scale = 1.0f;
    const double one = 1.0;
    char key[160];
    snprintf(key, sizeof key, "%s.rope.scaling.type", hp->arch_name);
    int64_t ti = exsa_gguf_find_key(m->gguf, key);
    const char *st = NULL;
    size_t stl = 0;
    if (ti >= 0 && exsa_gguf_kv_str(m->gguf, ti, &st, &stl) == 0 &&
        !(stl == 6 && memcmp(st, "linear", 6) == 0) && !(stl == 4 && memcmp(st, "none", 4) == 0))
        return exsa_err_set(err, EXSA_EUNSUPPORTED, "model: rope scaling '%.*s' not supported",
                            (int)(stl > 32 ? 32 : stl), st);
    if (exsa_model_key_float(m, "rope.scaling.factor", &one, &f, err)) return err->code;
    if (f > 0 && (ti < 0 || (stl == 6)))
        hp->rope_freq_scale = (float)(1.0 / f);

    const exsa_gguf_tensor *emb = exsa_gguf_find_tensor(m->gguf, "token_embd.weight");
    if (!emb)
        return exsa_err_set(err, EXSA_EFORMAT, "model: missing tensor 'token_embd.weight'");
    if (emb->ne[1] <= 0 || emb->ne[1] > (1 << 24))
        return exsa_err_set(err, EXSA_EFORMAT, "model: vocabulary size %lld out of range",
                            (long long)emb->ne[1]);
    hp->n_vocab = (int)emb->ne[1];
    return 0;
range:
    return exsa_err_set(err, EXSA_EFORMAT, "model: %s hyperparameter %lld out of range",
                        hp->arch_name, (long long)v);
}

int exsa_model_alloc_layers(exsa_model *m, exsa_err *err)
{
    exsa_hparams *hp = &m->hp;
    free(hp->layer);
    hp->layer = calloc((size_t)hp->n_layer, sizeof *hp->layer);
    if (!hp->layer)
        return exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
    for (int l = 0; l < hp->n_layer; l++)
        hp->layer[l] = (exsa_layer_hparams){
            .kind = EXSA_LAYER_ATTN, .rope_freq_base = hp->rope_freq_base,
            .rope_freq_scale = hp->rope_freq_scale,
        };
    return 0;
}

static int bind_matrix_at(exsa_model *m, exsa_tensor *t, const char *name, int64_t n_in,
                          int64_t n_out, int required, int place, exsa_err *err)
{
    memset(t, 0, sizeof *t);
    const exsa_gguf_tensor *gt = exsa_gguf_find_tensor(m->gguf, name);
    if (!gt)
        return required ? exsa_err_set(err, EXSA_EFORMAT, "model: missing tensor '%s'", name)
                        : 0;
    if (gt->n_dims > 2 || gt->ne[0] != n_in || gt->ne[1] != n_out)
        return exsa_err_set(err, EXSA_EFORMAT,
                            "model: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]",
                            name, (long long)gt->ne[0], (long long)gt->ne[1],
                            (long long)n_in, (long long)n_out);
    const exsa_type_traits *tr = exsa_type_traits_get(gt->type);
    if (!tr || gt->type == EXSA_TYPE_Q8_K || gt->type == EXSA_TYPE_Q8_1) {
        const char *tn = exsa_gguf_type_name(gt->type);
        return exsa_err_set(err, EXSA_EUNSUPPORTED,
                            "model: tensor '%s' has type %s, which Exsa cannot compute with",
                            name, tn ? tn : "unknown");
    }
    t->name = gt->name;
    t->type = gt->type;
    t->n_in = n_in;
    t->n_out = n_out;
    t->row_bytes = exsa_type_row_size(gt->type, n_in);
    t->data = gt->data;
    return exsa_model_prepare(m, t, place, err);
}

int exsa_model_bind_matrix(exsa_model *m, exsa_tensor *t, const char *name, int64_t n_in,
                           int64_t n_out, int required, exsa_err *err)
{
    if (!m->layer_place) {
        int rc = exsa_model_place_init(m, err);
        if (rc)
            return rc;
    }
    return bind_matrix_at(m, t, name, n_in, n_out, required, exsa_model_place_of_name(m, name),
                          err);
}

int exsa_model_bind_head(exsa_model *m, exsa_tensor *tok_embd, exsa_tensor *output,
                         const float **output_norm, exsa_err *err)
{
    const int64_t E = m->hp.n_embd, V = m->hp.n_vocab;
    int rc;
    if ((rc = exsa_model_bind_matrix(m, tok_embd, "token_embd.weight", E, V, 1, err)))
        return rc;
    if ((rc = exsa_model_bind_matrix(m, output, "output.weight", E, V, 0, err)))
        return rc;
    m->hp.tied_output = output->data == NULL;
    /* Tied: the head uses the embeddings' matrix, a copy of its own when
     * the head runs on the other backend. */
    const int hp_ = exsa_model_place_of(m, m->hp.n_layer);
    if (m->hp.tied_output && hp_ == exsa_model_place_of(m, -1))
        *output = *tok_embd;
    else if (m->hp.tied_output &&
             (rc = bind_matrix_at(m, output, "token_embd.weight", E, V, 1, hp_, err)))
        return rc;
    if (!(*output_norm = exsa_model_bind_vector(m, "output_norm.weight", E, 1, err)))
        return err->code;
    return 0;
}

int exsa_model_bind_layers(exsa_model *m, void *layers, size_t layer_size,
                           const exsa_layer_tensor_spec *spec, size_t n_spec, exsa_err *err)
{
    for (int l = 0; l < m->hp.n_layer; l++) {
        char *L = (char *)layers + (size_t)l * layer_size;
        for (size_t i = 0; i < n_spec; i++) {
            char name[128];
            snprintf(name, sizeof name, "blk.%d.%s", l, spec[i].suffix);
            int rc;
            if (spec[i].is_matrix) {
                rc = exsa_model_bind_matrix(m, (exsa_tensor *)(L + spec[i].field), name,
                                            spec[i].n_in, spec[i].n_out, spec[i].required, err);
            } else {
                err->code = 0;
                *(const float **)(L + spec[i].field) =
                    exsa_model_bind_vector(m, name, spec[i].n_in, spec[i].required, err);
                rc = err->code;
            }
            if (rc)
                return rc;
        }
    }
    return 0;
}

static const float *host_vector(exsa_model *m, const char *name, int64_t n, int required,
                                exsa_err *err)
{
    const exsa_gguf_tensor *gt = exsa_gguf_find_tensor(m->gguf, name);
    if (!gt) {
        if (required)
            exsa_err_set(err, EXSA_EFORMAT, "model: missing tensor '%s'", name);
        return NULL;
    }
    int64_t ne = gt->ne[0] * gt->ne[1] * gt->ne[2] * gt->ne[3];
    if (ne != n) {
        exsa_err_set(err, EXSA_EFORMAT, "model: tensor '%s' has %lld elements, expected %lld",
                     name, (long long)ne, (long long)n);
        return NULL;
    }
    /* Float32 in the file: use in place when aligned (GGUF aligns data to
     * at least 4 in practice; a packed file falls back to a copy). */
    if (gt->type == EXSA_TYPE_F32 && ((uintptr_t)gt->data & 3) == 0)
        return gt->data;
    const exsa_type_traits *tr = exsa_type_traits_get(gt->type);
    if (!tr || !tr->to_float || n % tr->block_size != 0) {
        exsa_err_set(err, EXSA_EUNSUPPORTED, "model: tensor '%s' has an unusable type", name);
        return NULL;
    }
    if (m->owned_used + (size_t)n > m->owned_cap) {
        exsa_err_set(err, EXSA_ENOMEM, "model: out of room for converted vector '%s'", name);
        return NULL;
    }
    float *dst = m->owned + m->owned_used;
    m->owned_used += (size_t)n;
    tr->to_float(gt->data, dst, n);
    return dst;
}

const float *exsa_model_bind_vector(exsa_model *m, const char *name, int64_t n, int required,
                                    exsa_err *err)
{
    if (!m->layer_place && exsa_model_place_init(m, err) != 0)
        return NULL;
    const float *h = host_vector(m, name, n, required, err);
    return h ? exsa_model_place_vector(m, h, n, exsa_model_place_of_name(m, name), err) : NULL;
}

exsa_model *exsa_model_load(const char *path, exsa_err *err)
{
    exsa_model_params p;
    exsa_model_params_default(&p);
    return exsa_model_load_ex(path, &p, err);
}

exsa_model *exsa_model_load_ex(const char *path, const exsa_model_params *mp, exsa_err *err)
{
    exsa_err local;
    if (!err)
        err = &local;
    exsa_gguf *g = exsa_gguf_open(path, err);
    if (!g)
        return NULL;
    exsa_model *m = calloc(1, sizeof *m);
    if (!m) {
        exsa_gguf_close(g);
        exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
        return NULL;
    }
    m->gguf = g;
    m->mp = *mp;
    const char *arch;
    size_t alen;
    if (exsa_gguf_get_str(g, "general.architecture", &arch, &alen, err) != 0)
        goto fail;
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (strlen(archs[i]->name) == alen && memcmp(archs[i]->name, arch, alen) == 0)
            m->ops = archs[i];
    if (!m->ops) {
        exsa_err_set(err, EXSA_EUNSUPPORTED,
                     "model: architecture '%.*s' is not supported (llama, qwen2, qwen3, gemma3)",
                     (int)(alen > 64 ? 64 : alen), arch);
        goto fail;
    }
    m->hp.arch = m->ops->arch;
    m->hp.arch_name = m->ops->name;

    /* Room for every 1-D tensor converted to f32 (only used when needed). */
    size_t n1d = 0;
    for (int64_t i = 0; i < exsa_gguf_n_tensors(g); i++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(g, i);
        m->n_params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        m->weight_bytes += t->size;
        if (t->n_dims == 1)
            n1d += (size_t)t->ne[0];
    }
    if (n1d) {
        m->owned = malloc(n1d * sizeof(float));
        if (!m->owned) {
            exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
            goto fail;
        }
        m->owned_cap = n1d;
    }
    m->hp.embd_scale = 1.0f;
    m->hp.attn_scale = 0.0f;
    if (m->ops->load(m, err) != 0 || (!m->hp.layer && exsa_model_alloc_layers(m, err) != 0)) {
        exsa_err_prefix(err, "%s", path);
        goto fail;
    }
    if (!(m->hp.attn_scale > 0))
        m->hp.attn_scale = 1.0f / sqrtf((float)m->hp.head_dim);
    return m;
fail:
    exsa_model_free(m);
    return NULL;
}

int exsa_model_probe(const char *path, exsa_err *err)
{
    exsa_err local = {0};
    if (!err)
        err = &local;
    exsa_gguf *g = exsa_gguf_open(path, err);
    const char *arch;
    size_t alen;
    int rc = 0;
    if (!g)
        rc = err->code ? err->code : EXSA_EIO;
    else if ((rc = exsa_gguf_get_str(g, "general.architecture", &arch, &alen, err)) == 0) {
        rc = EXSA_EUNSUPPORTED;
        for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
            if (strlen(archs[i]->name) == alen && memcmp(archs[i]->name, arch, alen) == 0)
                rc = 0;
        if (rc) {
            char known[256] = "";
            for (size_t i = 0, k = 0; i < sizeof archs / sizeof archs[0] && k < sizeof known;
                 i++)
                k += (size_t)snprintf(known + k, sizeof known - k, "%s%s", i ? ", " : "",
                                      archs[i]->name);
            exsa_err_set(err, rc, "model: architecture '%.*s' is not supported (%s)",
                         (int)(alen > 64 ? 64 : alen), arch, known);
        }
    }
    exsa_gguf_close(g);
    if (rc && path && !strstr(err->msg, path))
        exsa_err_prefix(err, "%s", path);
    return rc;
}

void exsa_model_free(exsa_model *m)
{
    if (!m)
        return;
    if (m->ops && m->weights)
        m->ops->unload(m);
    exsa_model_place_free(m);
    free(m->owned);
    free(m->hp.layer);
    exsa_gguf_close(m->gguf);
    free(m);
}

const exsa_hparams *exsa_model_hparams(const exsa_model *m) { return &m->hp; }
const exsa_gguf *exsa_model_gguf(const exsa_model *m) { return m->gguf; }
uint64_t exsa_model_n_params(const exsa_model *m) { return m->n_params; }
uint64_t exsa_model_weight_bytes(const exsa_model *m) { return m->weight_bytes; }

uint64_t exsa_model_kv_bytes(const exsa_model *m, int n_ctx, int kv_type)
{
    const exsa_hparams *hp = &m->hp;
    size_t row = exsa_type_row_size(kv_type, (int64_t)hp->n_head_kv * hp->head_dim);
    uint64_t tokens = 0;
    for (int l = 0; l < hp->n_layer; l++) {
        const int w = hp->layer[l].kind == EXSA_LAYER_ATTN_SWA ? hp->layer[l].window : 0;
        tokens += (uint64_t)(w > 0 && w < n_ctx ? w : n_ctx);
    }
    return (uint64_t)row * tokens * 2;
}

