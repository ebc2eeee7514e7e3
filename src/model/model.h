/* Models: hyperparameters from GGUF, weights bound to the mapped file, and
 * forward(batch) over a paged KV cache.
 *
 * exsa_model is immutable after load (shareable across contexts).
 * exsa_model_ctx holds what a forward pass needs: a backend, the KV cache
 * and scratch buffers sized once for max_batch rows; forward allocates
 * nothing. One ctx per engine thread.
 */
#ifndef EXSA_MODEL_H
#define EXSA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "exsa.h"
#include "gguf/gguf.h"
#include "model/kv_cache.h"

enum exsa_arch {
    EXSA_ARCH_LLAMA = 0, /* Llama 2/3.x, TinyLlama, Mistral dense */
    EXSA_ARCH_QWEN2,     /* + q/k/v biases */
    EXSA_ARCH_QWEN3,     /* + per-head q/k RMS norm */
    EXSA_ARCH_GEMMA3,    /* Gemma 3: post-norms, GeGLU, sliding-window layers */
};

/* What a layer is decides its cache: full attention layers use the paged
 * KV's main group, sliding-window ones a group that drops blocks behind
 * the window (kv_cache.h). */
enum exsa_layer_kind {
    EXSA_LAYER_ATTN = 0,     /* causal attention over the whole context */
    EXSA_LAYER_ATTN_SWA = 1, /* a query at p sees keys k with p - k < window */
};

typedef struct exsa_layer_hparams {
    int kind;              /* exsa_layer_kind */
    int window;            /* EXSA_LAYER_ATTN_SWA: tokens; else 0 */
    float rope_freq_base, rope_freq_scale;
} exsa_layer_hparams;

typedef struct exsa_hparams {
    int arch;              /* exsa_arch */
    const char *arch_name; /* "llama", "qwen2", "qwen3", "gemma3" */
    int n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    int n_ctx_train;
    float norm_eps;
    int n_rot, rope_mode;
    float rope_freq_base, rope_freq_scale;
    int has_qkv_bias, has_qk_norm, tied_output;
    int weight_type;       /* type of most matrices (for display) */
    /* Per layer ([n_layer], owned by the model); every architecture has it
     * (model.c fills full attention at the global rope when the
     * architecture file does not). */
    exsa_layer_hparams *layer;
    int n_swa;             /* window of the sliding-window layers; 0: none */
    float embd_scale;      /* token embeddings are multiplied by it (1: none) */
    float attn_scale;      /* q.k scale (usually 1/sqrt(head_dim)) */
    float logit_softcap;   /* > 0: logits = cap * tanh(logits / cap) */
} exsa_hparams;

typedef struct exsa_model exsa_model;

/* Where a model's layers run. */
typedef struct exsa_model_params {
    int device;       /* exsa_device; AUTO: a usable CUDA GPU, else the CPU */
    /* Layers on the GPU, counted from the last (llama.cpp's -ngl): more
     * than n_layer also puts the output head there; < 0: everything. */
    int n_gpu_layers;
    int gpu;          /* CUDA device ordinal */
} exsa_model_params;
/* AUTO, every layer, GPU 0; EXSA_DEVICE (auto|cpu|cuda) in the environment
 * overrides the device (what tests and scripts use to pin one). */
void exsa_model_params_default(exsa_model_params *p);

/* Opens and validates a GGUF model: architecture, every hyperparameter, every
 * required tensor's type and shape. Weights stay in the mapping. */
exsa_model *exsa_model_load(const char *path, exsa_err *err);
/* The same with a placement: weights of GPU layers are uploaded at load
 * (their mapped pages dropped), and a model that does not fit the GPU's
 * free memory fails naming the sizes and the -ngl that would fit. With
 * device AUTO and no usable GPU it loads on the CPU and logs one line. */
exsa_model *exsa_model_load_ex(const char *path, const exsa_model_params *p, exsa_err *err);
/* Where it runs, e.g. "cuda:0 NVIDIA H100 80GB HBM3, 30/30 layers + head"
 * or "cpu". */
const char *exsa_model_placement(const exsa_model *m);
/* EXSA_DEVICE_CUDA when any layer runs on the GPU, else EXSA_DEVICE_CPU. */
int exsa_model_device(const exsa_model *m);
/* The GPU's free and total memory now and the bytes of weights the model
 * put there; -1 when the model has no GPU part. */
int exsa_model_device_memory(const exsa_model *m, size_t *free_bytes, size_t *total_bytes,
                             size_t *weight_bytes);
void exsa_model_free(exsa_model *m);
/* The quick check before a slow load: path is a readable, well-formed GGUF
 * file (header, metadata, tensor table inside the file) whose architecture
 * exsa_model_load knows. Reads no weights. 0, or an error naming the file. */
int exsa_model_probe(const char *path, exsa_err *err);

const exsa_hparams *exsa_model_hparams(const exsa_model *m);
const exsa_gguf *exsa_model_gguf(const exsa_model *m);
/* Parameters (elements) and bytes of every tensor in the file. */
uint64_t exsa_model_n_params(const exsa_model *m);
uint64_t exsa_model_weight_bytes(const exsa_model *m);

/* Tokens per KV block of every model context (the paged cache's page). */
#define EXSA_KV_BLOCK_SIZE 16

typedef struct exsa_model_ctx_params {
    int n_threads;    /* <= 0: physical cores */
    int n_ctx;        /* tokens per sequence; <= 0: min(n_ctx_train, 4096) */
    int n_seq;        /* concurrent sequences (ids 0..n_seq-1) */
    int max_batch;    /* rows per forward pass */
    int kv_type;      /* EXSA_TYPE_F16 (default), F32 or Q8_0 */
    int kv_blocks;    /* pool size in blocks; <= 0: n_seq * ceil(n_ctx / 16) */
    int swa_full;     /* 1: sliding-window layers keep the whole context in the
                       * main pool (no window group; a reference for tests) */
} exsa_model_ctx_params;

void exsa_model_ctx_params_default(exsa_model_ctx_params *p);

typedef struct exsa_model_ctx exsa_model_ctx;

exsa_model_ctx *exsa_model_ctx_create(const exsa_model *m, const exsa_model_ctx_params *p,
                                      exsa_err *err);
void exsa_model_ctx_free(exsa_model_ctx *c);
exsa_kv_cache *exsa_model_ctx_kv(exsa_model_ctx *c);
const exsa_model_ctx_params *exsa_model_ctx_params_get(const exsa_model_ctx *c);
const char *exsa_model_ctx_describe(const exsa_model_ctx *c); /* backend, ISA, threads */

/* Runs the batch: writes K/V of every row at (seq, pos) (reserving KV
 * blocks as needed), and for each row with logits[i] = 1, in row order,
 * writes n_vocab floats to logits_out. Rows of one sequence must be in
 * position order and every earlier position of that sequence must be in the
 * cache or earlier in this batch. Bad rows (token, pos, seq out of range)
 * give EXSA_EINVAL before anything is computed; EXSA_EFULL when KV blocks
 * run out. */
int exsa_model_forward(exsa_model_ctx *c, const exsa_batch *batch, float *logits_out,
                       exsa_err *err);
/* The same pass, but each row with logits[i] = 1 gets the final hidden
 * state after the output norm (n_embd floats, in row order) in hidden_out
 * instead of logits: what embeddings are pooled from. */
int exsa_model_forward_hidden(exsa_model_ctx *c, const exsa_batch *batch, float *hidden_out,
                              exsa_err *err);

/* Bytes of the KV cache for n_ctx tokens of one sequence at kv_type:
 * sliding-window layers count at most their window. */
uint64_t exsa_model_kv_bytes(const exsa_model *m, int n_ctx, int kv_type);

#endif
