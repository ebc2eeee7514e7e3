/* Shared between model.c (generic loading, contexts) and the architecture
 * files (llama.c, gemma3.c, ...). Not visible outside src/model/.
 *
 * A new architecture is one file defining an exsa_arch_ops and one entry
 * in model.c's archs[]. Its load() reads the common hyperparameters with
 * exsa_model_read_hparams, its own keys with exsa_model_key_*, and marks
 * per-layer kinds, windows and rope bases in hp.layer
 * (exsa_model_alloc_layers); model.c sizes the KV groups from them and
 * hands forward() each layer's view through exsa_model_layer_kv. */
#ifndef EXSA_MODEL_INTERNAL_H
#define EXSA_MODEL_INTERNAL_H

#include "model/model.h"

typedef struct exsa_arch_ops {
    const char *name; /* general.architecture value */
    int arch;
    /* Reads hyperparameters into m->hp and binds weights into m->weights. */
    int (*load)(exsa_model *m, exsa_err *err);
    void (*unload)(exsa_model *m);
    /* Allocates the ctx's scratch (c->scratch) for c->p.max_batch rows. */
    int (*ctx_init)(exsa_model_ctx *c, exsa_err *err);
    void (*ctx_free)(exsa_model_ctx *c);
    /* Batch already validated and KV reserved; slots/n_ctx/btab filled.
     * Rows in c->out_rows get n_vocab logits in logits_out, or, when
     * hidden_out is non-NULL (then logits_out is NULL), the final hidden
     * state after the output norm (n_embd floats) instead. */
    void (*forward)(exsa_model_ctx *c, const exsa_batch *batch, float *logits_out,
                    float *hidden_out);
} exsa_arch_ops;

struct exsa_model {
    exsa_gguf *gguf;
    exsa_hparams hp;
    const exsa_arch_ops *ops;
    void *weights;
    float *owned;          /* 1-D tensors converted to f32 at load */
    size_t owned_used, owned_cap;
    uint64_t n_params, weight_bytes;
    void **repacked;       /* weights rearranged for the CPU kernels (owned) */
    int n_repacked, repacked_cap;
};

struct exsa_model_ctx {
    const exsa_model *m;
    exsa_model_ctx_params p;
    exsa_backend *be;
    exsa_kv_cache *kv;
    void *scratch;
    /* Per-batch row metadata, sized max_batch. */
    int32_t *slots;
    int32_t *n_ctx;
    const int32_t **btab;
    int32_t *out_rows;     /* indices of rows that want logits */
    int n_out;
    int32_t *seq_need;     /* [n_seq] scratch for block accounting */
    /* The same for the sliding-window group (when the cache has one). */
    int32_t *swa_slots;
    const int32_t **swa_btab;
};

/* What layer l's attention reads and writes in this batch: its KV view,
 * the rows' slots and block tables (its group's), and its window. */
typedef struct exsa_layer_kv {
    const exsa_kv_layer *kv;
    const int32_t *slots;
    const int32_t *const *btab;
    int window;
} exsa_layer_kv;

static inline exsa_layer_kv exsa_model_layer_kv(const exsa_model_ctx *c, int l)
{
    const exsa_layer_hparams *lh = &c->m->hp.layer[l];
    const int swa = lh->kind == EXSA_LAYER_ATTN_SWA;
    return (exsa_layer_kv){
        .kv = exsa_kv_layer_at(c->kv, l),
        .slots = swa && c->swa_slots ? c->swa_slots : c->slots,
        .btab = swa && c->swa_btab ? c->swa_btab : c->btab,
        .window = swa ? lh->window : 0,
    };
}

/* Binds a 2-D weight [n_out][n_in] by name with shape check; optional tensors
 * (required = 0) leave t->data NULL when absent. */
int exsa_model_bind_matrix(exsa_model *m, exsa_tensor *t, const char *name, int64_t n_in,
                           int64_t n_out, int required, exsa_err *err);
/* One per-layer tensor "blk.<l>.<suffix>": where it goes in the family's
 * layer struct (offsetof: an exsa_tensor for a matrix, a const float * for
 * a vector), its shape, and whether it must be there. */
typedef struct exsa_layer_tensor_spec {
    const char *suffix;
    size_t field;
    int is_matrix;
    int64_t n_in, n_out; /* vectors: n_in elements */
    int required;
} exsa_layer_tensor_spec;

/* Binds every spec of every layer: layers points at n_layer structs of
 * layer_size bytes. Returns 0 or the first error. */
int exsa_model_bind_layers(exsa_model *m, void *layers, size_t layer_size,
                           const exsa_layer_tensor_spec *spec, size_t n_spec, exsa_err *err);

/* The tensors every family has around its layers: token_embd, output
 * (absent: tied to token_embd, hp.tied_output set) and output_norm. */
int exsa_model_bind_head(exsa_model *m, exsa_tensor *tok_embd, exsa_tensor *output,
                         const float **output_norm, exsa_err *err);

/* The activations of a decoder-only forward pass for max_batch rows, in
 * backend memory, allocated once per context (c->scratch of the families
 * that use it). */
typedef struct exsa_model_acts {
    float *x;         /* [B][embd] residual stream */
    float *xb;        /* [B][max(embd, n_head*head_dim)] normed input / branch output */
    float *q;         /* [B][n_head*head_dim] */
    float *k, *v;     /* [B][n_head_kv*head_dim] */
    float *att;       /* [B][n_head*head_dim] */
    float *ff1, *ff2; /* [B][n_ff] */
} exsa_model_acts;

/* c->scratch = a new exsa_model_acts sized from c's hparams and max_batch.
 * On failure what was allocated stays in c->scratch for acts_free. */
int exsa_model_acts_alloc(exsa_model_ctx *c, exsa_err *err);
void exsa_model_acts_free(exsa_model_ctx *c);

/* After the last layer: the rows in c->out_rows of the residual stream
 * a->x go through output_norm and, unless hidden_out is given (then they
 * land there, normed), the output matrix into logits_out. */
void exsa_model_output_head(exsa_model_ctx *c, const exsa_model_acts *a,
                            const exsa_tensor *output, const float *output_norm,
                            float *logits_out, float *hidden_out);

/* A 1-D tensor of n elements as float32 (converted into model-owned memory
 * when stored in another type); NULL + error when absent and required. */
const float *exsa_model_bind_vector(exsa_model *m, const char *name, int64_t n, int required,
                                    exsa_err *err);
/* Reads "<arch>.<suffix>" as an integer / float; absent -> dflt, or error
 * when dflt is NULL. */
int exsa_model_key_int(const exsa_model *m, const char *suffix, const int64_t *dflt,
                       int64_t *out, exsa_err *err);
int exsa_model_key_float(const exsa_model *m, const char *suffix, const double *dflt,
                         double *out, exsa_err *err);
/* The hyperparameters every transformer reads the same way (model.c):
 * sizes, head counts and dims, context, RMS epsilon, rope base, dims and
 * linear scaling, vocabulary size from token_embd.weight. */
int exsa_model_read_hparams(exsa_model *m, exsa_err *err);
/* hp.layer for n_layer layers, every one full attention at the global
 * rope; the architecture then marks its other layers. */
int exsa_model_alloc_layers(exsa_model *m, exsa_err *err);

extern const exsa_arch_ops exsa_arch_llama, exsa_arch_qwen2, exsa_arch_qwen3, exsa_arch_gemma3;

#endif
