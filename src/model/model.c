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

/* Rearranges a matrix for the CPU kernels when they have a faster layout
 * for it, keeps the copy, and drops the mapped pages it came from (they are
 * clean file pages: re-read on demand if ever touched again), so resident
 * memory does not double. */
static int repack(exsa_model *m, exsa_tensor *t, exsa_err *err)
{
    if (m->n_repacked == m->repacked_cap) {
        int cap = m->repacked_cap ? 2 * m->repacked_cap : 64;
        void **p = realloc(m->repacked, (size_t)cap * sizeof *p);
        if (!p)
            return exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
        m->repacked = p;
        m->repacked_cap = cap;
    }
    const void *src = t->data;
    void *buf;
    int rc = exsa_cpu_repack(t, &buf, err);
    if (rc || !buf)
        return rc;
    m->repacked[m->n_repacked++] = buf;
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0) {
        uintptr_t a = ((uintptr_t)src + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
        uintptr_t e = ((uintptr_t)src + (uintptr_t)(t->row_bytes * (size_t)t->n_out)) &
                      ~((uintptr_t)page - 1);
        if (e > a)
            madvise((void *)a, e - a, MADV_DONTNEED);
    }
    return 0;
}

int exsa_model_bind_matrix(exsa_model *m, exsa_tensor *t, const char *name, int64_t n_in,
                           int64_t n_out, int required, exsa_err *err)
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
    return repack(m, t, err);
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
    if (m->hp.tied_output)
        *output = *tok_embd;
    if (!(*output_norm = exsa_model_bind_vector(m, "output_norm.weight", E, 1, err)))
        return err->code;
    return 0;
}

int exsa_model_acts_alloc(exsa_model_ctx *c, exsa_err *err)
{
    const exsa_hparams *hp = &c->m->hp;
    exsa_backend *be = c->be;
    const size_t B = (size_t)c->p.max_batch, E = (size_t)hp->n_embd;
    const size_t Q = (size_t)hp->n_head * hp->head_dim, KV = (size_t)hp->n_head_kv * hp->head_dim;
    exsa_model_acts *a = calloc(1, sizeof *a);
    if (!a)
        return exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
    c->scratch = a;
    a->x = be->ops->alloc(be, B * E * sizeof(float));
    a->xb = be->ops->alloc(be, B * (Q > E ? Q : E) * sizeof(float));
    a->q = be->ops->alloc(be, B * Q * sizeof(float));
    a->k = be->ops->alloc(be, B * KV * sizeof(float));
    a->v = be->ops->alloc(be, B * KV * sizeof(float));
    a->att = be->ops->alloc(be, B * Q * sizeof(float));
    a->ff1 = be->ops->alloc(be, B * hp->n_ff * sizeof(float));
    a->ff2 = be->ops->alloc(be, B * hp->n_ff * sizeof(float));
    if (!a->x || !a->xb || !a->q || !a->k || !a->v || !a->att || !a->ff1 || !a->ff2)
        return exsa_err_set(err, EXSA_ENOMEM,
                            "model: cannot allocate activations for a batch of %zu rows", B);
    return 0;
}

void exsa_model_acts_free(exsa_model_ctx *c)
{
    exsa_model_acts *a = c->scratch;
    exsa_backend *be = c->be;
    float *bufs[] = {a->x, a->xb, a->q, a->k, a->v, a->att, a->ff1, a->ff2};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            be->ops->free(be, bufs[i]);
    free(a);
    c->scratch = NULL;
}

void exsa_model_output_head(exsa_model_ctx *c, const exsa_model_acts *a,
                            const exsa_tensor *output, const float *output_norm,
                            float *logits_out, float *hidden_out)
{
    const exsa_hparams *hp = &c->m->hp;
    exsa_backend *be = c->be;
    const int E = hp->n_embd;
    /* Only rows that want logits go through the output head: gather them
     * with get_rows over the residual stream viewed as an f32 matrix. */
    exsa_tensor xs = {.name = "x", .type = EXSA_TYPE_F32, .n_in = E, .n_out = c->p.max_batch,
                      .row_bytes = (size_t)E * sizeof(float), .data = a->x};
    be->ops->get_rows(be, &xs, c->out_rows, c->n_out, a->xb);
    if (hidden_out) { /* embeddings: stop before the output head */
        be->ops->rms_norm(be, a->xb, output_norm, hidden_out, c->n_out, E, hp->norm_eps);
        return;
    }
    exsa_matmul_fuse f = {.norm = output_norm, .eps = hp->norm_eps, .scratch = a->xb};
    be->ops->matmul_fused(be, &output, 1, a->xb, &logits_out, c->n_out, &f);
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

const float *exsa_model_bind_vector(exsa_model *m, const char *name, int64_t n, int required,
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

exsa_model *exsa_model_load(const char *path, exsa_err *err)
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
    free(m->owned);
    free(m->hp.layer);
    for (int i = 0; i < m->n_repacked; i++)
        free(m->repacked[i]);
    free(m->repacked);
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

void exsa_model_ctx_params_default(exsa_model_ctx_params *p)
{
    *p = (exsa_model_ctx_params){
        .n_threads = 0, .n_ctx = 0, .n_seq = 1, .max_batch = 512,
        .kv_type = EXSA_TYPE_F16, .kv_blocks = 0,
    };
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
    if (!c) {
        exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
        return NULL;
    }
    c->m = m;
    c->p = cp;
    c->be = exsa_backend_cpu_create(cp.n_threads, err);
    if (!c->be)
        goto fail;
    exsa_kv_params kp = {
        .n_layer = hp->n_layer, .n_kv_head = hp->n_head_kv, .head_dim = hp->head_dim,
        .type = cp.kv_type, .block_size = EXSA_KV_BLOCK_SIZE, .n_blocks = cp.kv_blocks,
        .n_seq = cp.n_seq, .max_seq_len = cp.n_ctx,
    };
    /* Sliding-window layers whose window is shorter than the context get
     * a group of their own that keeps only the window (and a batch). */
    uint8_t *swa = NULL;
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
    c->kv = exsa_kv_cache_create(c->be, &kp, err);
    free(swa);
    if (!c->kv)
        goto fail;
    size_t B = (size_t)cp.max_batch;
    c->slots = calloc(B, sizeof *c->slots);
    c->n_ctx = calloc(B, sizeof *c->n_ctx);
    c->btab = calloc(B, sizeof *c->btab);
    c->out_rows = calloc(B, sizeof *c->out_rows);
    c->seq_need = calloc((size_t)cp.n_seq, sizeof *c->seq_need);
    if (!c->seq_need || !c->slots || !c->n_ctx || !c->btab || !c->out_rows) {
        exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
        goto fail;
    }
    if (exsa_kv_has_swa(c->kv)) {
        c->swa_slots = calloc(B, sizeof *c->swa_slots);
        c->swa_btab = calloc(B, sizeof *c->swa_btab);
        if (!c->swa_slots || !c->swa_btab) {
            exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
            goto fail;
        }
    }
    if (m->ops->ctx_init(c, err) != 0)
        goto fail;
    return c;
fail:
    exsa_model_ctx_free(c);
    return NULL;
}

void exsa_model_ctx_free(exsa_model_ctx *c)
{
    if (!c)
        return;
    if (c->scratch)
        c->m->ops->ctx_free(c);
    exsa_kv_cache_free(c->kv);
    if (c->be)
        exsa_backend_free(c->be);
    free(c->slots);
    free(c->n_ctx);
    free(c->btab);
    free(c->out_rows);
    free(c->seq_need);
    free(c->swa_slots);
    free(c->swa_btab);
    free(c);
}

exsa_kv_cache *exsa_model_ctx_kv(exsa_model_ctx *c) { return c->kv; }
const exsa_model_ctx_params *exsa_model_ctx_params_get(const exsa_model_ctx *c) { return &c->p; }
const char *exsa_model_ctx_describe(const exsa_model_ctx *c) { return exsa_backend_describe(c->be); }

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
            c->out_rows[c->n_out++] = i;
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
    for (int i = 0; i < b->n; i++) {
        c->slots[i] = exsa_kv_slot(c->kv, b->seq[i], b->pos[i]);
        c->n_ctx[i] = b->pos[i] + 1;
        c->btab[i] = exsa_kv_block_table(c->kv, b->seq[i]);
    }
    if (c->swa_slots) {
        exsa_kv_swa_prepare(c->kv, b->seq, b->pos, b->n);
        for (int i = 0; i < b->n; i++) {
            c->swa_slots[i] = exsa_kv_swa_slot(c->kv, b->seq[i], b->pos[i]);
            c->swa_btab[i] = exsa_kv_swa_block_table(c->kv, b->seq[i]);
        }
    }
    c->m->ops->forward(c, b, hidden_out ? NULL : logits_out, hidden_out);
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
