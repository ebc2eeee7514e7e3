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
    /* Allocates the ctx's activations (c->acts) for c->p.max_batch rows. */
    int (*ctx_init)(exsa_model_ctx *c, exsa_err *err);
    void (*ctx_free)(exsa_model_ctx *c);
    /* Batch already validated, KV reserved and its metadata (c->meta)
     * uploaded; forward reads the batch only through the metadata. Rows
     * that want output get n_vocab logits in logits_out, or, when
     * hidden_out is non-NULL (then logits_out is NULL), the final hidden
     * state after the output norm (n_embd floats) instead. */
    void (*forward)(exsa_model_ctx *c, const exsa_batch *batch, float *logits_out,
                    float *hidden_out);
} exsa_arch_ops;

/* Where a stage of the forward pass runs: index into the ctx's be[]. */
enum { EXSA_ON_HOST = 0, EXSA_ON_DEV = 1, EXSA_N_PLACES = 2 };

/* What prepare_weight gave back, released when the model is freed. */
typedef struct exsa_prepared {
    int place;
    void *owned;
} exsa_prepared;

struct exsa_model {
    exsa_gguf *gguf;
    exsa_hparams hp;
    const exsa_arch_ops *ops;
    void *weights;
    float *owned;          /* 1-D tensors converted to f32 at load */
    size_t owned_used, owned_cap;
    uint64_t n_params, weight_bytes;
    /* Placement (model_place.c): be[EXSA_ON_HOST] prepares CPU weights,
     * be[EXSA_ON_DEV] (NULL: CPU only) owns the device copies; contexts
     * compute on the device one and a CPU backend of their own. */
    exsa_model_params mp;
    exsa_backend *be[EXSA_N_PLACES];
    uint8_t *layer_place;  /* [n_layer] */
    int head_place;        /* output norm and matrix */
    size_t dev_weight_bytes;
    exsa_prepared *prep;
    int n_prep, prep_cap;
    char placement[160];
};

/* The batch's row metadata in one backend's memory, uploaded once per
 * step (model_ctx.c); each a [max_batch] array, btab / swa_btab
 * [n_tables][bt_stride]. */
typedef struct exsa_step_meta {
    int32_t *buf;          /* the one allocation (NULL: the host staging itself) */
    const int32_t *token, *pos, *n_ctx, *slots, *row_tab, *out_rows, *swa_slots;
    const int32_t *btab, *swa_btab;
} exsa_step_meta;

/* The activations of a decoder-only forward pass for max_batch rows, in
 * one backend's memory, allocated once per context and place in use. */
typedef struct exsa_model_acts {
    float *x;         /* [B][embd] residual stream */
    float *xb;        /* [B][max(embd, n_head*head_dim)] normed input / branch output */
    float *q;         /* [B][n_head*head_dim] */
    float *k, *v;     /* [B][n_head_kv*head_dim] */
    float *att;       /* [B][n_head*head_dim] */
    float *ff1, *ff2; /* [B][n_ff] */
    float *logits;    /* device only: [EXSA_HEAD_CHUNK][max(n_vocab, embd)] */
} exsa_model_acts;

/* Rows the output head computes per pass on a device (bounds its buffer). */
#define EXSA_HEAD_CHUNK 32

struct exsa_model_ctx {
    const exsa_model *m;
    exsa_model_ctx_params p;
    exsa_backend *be[EXSA_N_PLACES]; /* [HOST] owned, [DEV] the model's */
    int used[EXSA_N_PLACES];         /* a layer, the embeddings or the head run there */
    exsa_kv_cache *kv;
    exsa_model_acts acts[EXSA_N_PLACES];
    exsa_step_meta meta[EXSA_N_PLACES];
    /* Host staging of the metadata: [7][max_batch] then the two tables. */
    int32_t *host_meta;
    int n_tables, bt_stride, max_ctx;
    int32_t *seq_tab;      /* [n_seq] -> table index this step, -1 */
    int n_out;
    int32_t *seq_need;     /* [n_seq] scratch for block accounting */
    int has_swa;
};

/* One stage's backend, activations and metadata: layer l (0 <= l <
 * n_layer), the embeddings (l = -1) or the output head (l = n_layer). */
typedef struct exsa_model_stage {
    exsa_backend *be;
    const exsa_backend_ops *op;
    exsa_model_acts *a;
    const exsa_step_meta *meta;
} exsa_model_stage;

int exsa_model_place_of(const exsa_model *m, int l);
static inline exsa_model_stage exsa_model_stage_at(exsa_model_ctx *c, int l)
{
    const int p = exsa_model_place_of(c->m, l);
    return (exsa_model_stage){c->be[p], c->be[p]->ops, &c->acts[p], &c->meta[p]};
}

/* Around the embeddings and layers of a step: when step_begin returns 1 a
 * recording of them was replayed (skip them); step_end always follows. */
int exsa_model_step_begin(exsa_model_ctx *c, int n_rows);
void exsa_model_step_end(exsa_model_ctx *c, int n_rows);

/* Before stage l: when stage l-1 ran on the other backend, copies the
 * residual stream (rows [0, n_rows) of x) across. */
void exsa_model_cross(exsa_model_ctx *c, int l, int n_rows);

/* What layer l's attention reads and writes in this batch: its KV view,
 * the rows' slots and block tables (its group's, in its backend's memory),
 * and its window; attn_args fills an exsa_attn_args from it. */
typedef struct exsa_layer_kv {
    const exsa_kv_layer *kv;
    const int32_t *slots;
    const int32_t *btab;
    int window;
} exsa_layer_kv;

static inline exsa_layer_kv exsa_model_layer_kv(const exsa_model_ctx *c, int l)
{
    const exsa_layer_hparams *lh = &c->m->hp.layer[l];
    const int swa = lh->kind == EXSA_LAYER_ATTN_SWA && c->has_swa;
    const exsa_step_meta *mt = &c->meta[exsa_model_place_of(c->m, l)];
    return (exsa_layer_kv){
        .kv = exsa_kv_layer_at(c->kv, l),
        .slots = swa ? mt->swa_slots : mt->slots,
        .btab = swa ? mt->swa_btab : mt->btab,
        .window = lh->kind == EXSA_LAYER_ATTN_SWA ? lh->window : 0,
    };
}

/* The attention of layer l over n_rows rows: q and out in s's activations. */
static inline exsa_attn_args exsa_model_attn_args(const exsa_model_ctx *c, int l, int n_rows,
                                                  const exsa_model_stage *s, float scale)
{
    const exsa_layer_kv lk = exsa_model_layer_kv(c, l);
    return (exsa_attn_args){
        .n_rows = n_rows, .n_head = c->m->hp.n_head, .q = s->a->q, .out = s->a->att,
        .n_ctx = s->meta->n_ctx, .row_tab = s->meta->row_tab, .block_table = lk.btab,
        .bt_stride = c->bt_stride, .max_ctx = c->max_ctx, .cap_ctx = c->p.n_ctx, .kv = lk.kv,
        .scale = scale, .window = lk.window,
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

/* c->acts of every place in use, sized from c's hparams and max_batch.
 * On failure what was allocated stays there for acts_free. */
int exsa_model_acts_alloc(exsa_model_ctx *c, exsa_err *err);
void exsa_model_acts_free(exsa_model_ctx *c);

/* After the last layer: the rows that want output of the residual stream
 * go through output_norm and, unless hidden_out is given (then they land
 * there, normed), the output matrix into logits_out (both host memory),
 * then the logit softcap when the model has one. */
void exsa_model_output_head(exsa_model_ctx *c, int n_rows, const exsa_tensor *output,
                            const float *output_norm, float *logits_out, float *hidden_out);

/* A 1-D tensor of n elements as float32 in the memory of the place that
 * uses it (a layer's "blk.<l>." tensors: that layer's; output_norm: the
 * head's; others: the host); NULL + error when absent and required. */
const float *exsa_model_bind_vector(exsa_model *m, const char *name, int64_t n, int required,
                                    exsa_err *err);
/* The same host vector placed at `place` (a vector every layer uses, such
 * as rope_freqs, once per place); NULL + error. */
const float *exsa_model_place_vector(exsa_model *m, const float *host, int64_t n, int place,
                                     exsa_err *err);
/* model_place.c: sets up m->be and the placement from m->mp (after the
 * hyperparameters, before any weight is bound), and prepares a matrix or
 * vector on its place's backend, keeping what it owns. */
int exsa_model_place_init(exsa_model *m, exsa_err *err);
int exsa_model_prepare(exsa_model *m, exsa_tensor *t, int place, exsa_err *err);
void exsa_model_place_free(exsa_model *m);
/* The place of a tensor by its GGUF name. */
int exsa_model_place_of_name(const exsa_model *m, const char *name);
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
