/* The backend interface: a small fixed set of ops on backend buffers.
 *
 * Models call these in order to build their forward pass; a backend knows
 * nothing of models. Buffers come from ops->alloc (host memory for the CPU
 * backend, device memory for CUDA); activations are float32 rows, weights
 * stay in their GGUF format (prepare_weight places them: kept in the mapped
 * file, repacked for the CPU, or uploaded).
 *
 * Every op works on n_rows rows at once (the batch). Every pointer an op
 * takes is backend memory (alloc, prepare_weight, or a struct's fields),
 * except the structs passed by pointer themselves, which live on the host.
 * Ops are ordered: a device backend queues them, and get/sync wait. Sizes
 * are trusted here: the model layer validated them at load.
 */
#ifndef EXSA_BACKEND_H
#define EXSA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "exsa.h"

enum exsa_tensor_layout {
    EXSA_LAYOUT_ROWS = 0,    /* GGUF's: n_out rows, row_bytes apart */
    EXSA_LAYOUT_Q4_0X8 = 1,  /* Q4_0 in groups of 8 interleaved rows (CPU) */
    EXSA_LAYOUT_Q4_KX8 = 2,  /* Q4_K in groups of 8 interleaved rows (CPU) */
    EXSA_LAYOUT_Q4_1X8 = 3,  /* Q4_1 in groups of 8 interleaved rows (CPU) */
    EXSA_LAYOUT_Q5_0X8 = 4,  /* Q5_0 in groups of 8 interleaved rows (CPU) */
    EXSA_LAYOUT_Q5_1X8 = 5,  /* Q5_1 in groups of 8 interleaved rows (CPU) */
    EXSA_LAYOUT_FX8 = 6,     /* F32/F16/BF16, 8 rows' elements side by side (CPU) */
    EXSA_LAYOUT_Q8_0X8 = 7,  /* Q8_0 in groups of 8 interleaved rows (CPU) */
    EXSA_LAYOUT_Q6_KX8 = 8,  /* Q6_K in groups of 8 interleaved rows (CPU) */
};

/* A 2-D weight: n_out rows of n_in elements of `type`, row_bytes apart
 * (or, for another layout, the same values arranged as that layout says). */
typedef struct exsa_tensor {
    const char *name;
    int type;
    int64_t n_in, n_out;
    size_t row_bytes;
    const void *data;
    int layout;              /* exsa_tensor_layout */
} exsa_tensor;

/* One layer's slice of the paged KV pool. A token's K (and V) row holds
 * n_kv_head * head_dim elements of `type` (F32, F16 or Q8_0), token_bytes
 * long; slot s (= block * block_size + offset) starts at s * token_bytes. */
typedef struct exsa_kv_layer {
    void *k, *v;
    int type;
    int block_size;
    int n_kv_head, head_dim;
    size_t token_bytes;
} exsa_kv_layer;

/* Paged causal attention for n_rows query rows. Row r attends to the first
 * n_ctx[r] tokens of its sequence, whose blocks are the row_tab[r]-th
 * table of block_table ([n_tables][bt_stride] block ids, one table per
 * sequence of the batch, exsa_attn_row_table); with a sliding window
 * (window > 0) only to its last `window` of them, positions
 * [n_ctx[r] - window, n_ctx[r]): a query at position p sees keys at k with
 * p - k < window (llama.cpp's standard SWA). A windowed row never reads a
 * position before its window (their blocks may be gone).
 *
 * Every pointer is in the backend's memory (batch metadata the model
 * uploaded for this step). max_ctx bounds every n_ctx[r] and cap_ctx every
 * max_ctx of the context (n_ctx of a sequence): a device backend may size
 * its grid from cap_ctx, which stays the same from step to step, so that a
 * recorded step (graph) replays with new metadata. */
typedef struct exsa_attn_args {
    int n_rows;
    int n_head;                 /* query heads; n_head % kv->n_kv_head == 0 */
    const float *q;             /* [n_rows][n_head * head_dim] */
    float *out;                 /* [n_rows][n_head * head_dim] */
    const int32_t *n_ctx;       /* [n_rows] */
    const int32_t *row_tab;     /* [n_rows] -> table index */
    const int32_t *block_table; /* [n_tables][bt_stride] */
    int bt_stride;
    int max_ctx, cap_ctx;       /* host-side bounds (see above) */
    const exsa_kv_layer *kv;
    float scale;                /* usually 1/sqrt(head_dim) */
    int window;                 /* 0: none (full causal) */
} exsa_attn_args;

/* Row r's block table (host backends, or device code with device a). */
#define exsa_attn_row_table(a, r) \
    ((a)->block_table + (size_t)(a)->row_tab[(r)] * (size_t)(a)->bt_stride)

enum exsa_rope_mode {
    EXSA_ROPE_NORMAL = 0, /* rotate pairs (x[2i], x[2i+1]) : llama */
    EXSA_ROPE_NEOX = 2,   /* rotate pairs (x[i], x[i + n_rot/2]) : qwen, gpt-neox */
};

typedef struct exsa_rope_args {
    int n_rows, n_heads, head_dim;
    int n_rot;                  /* rotated dims per head (<= head_dim, even) */
    int mode;                   /* exsa_rope_mode */
    float freq_base;            /* theta_i = pos * freq_scale * base^(-2i/n_rot) */
    float freq_scale;           /* 1 / linear scaling factor */
    const float *freq_factors;  /* [n_rot/2] divisors of theta (llama 3.1), or NULL */
} exsa_rope_args;

/* What matmul_fused does around its matmuls: the same bits as the plain
 * ops in order (rms_norm or swiglu, matmul_multi, add; for q, k, v: rope,
 * rope, kv_store). Fused, a backend can have each thread prepare the input
 * rows itself and finish the rows it produced, instead of a serial op
 * between two parallel ones. */
typedef struct exsa_matmul_fuse {
    const float *norm; /* the weights take rms_norm(x, eps) * norm, or */
    float eps;
    const float *up;   /* the weights take swiglu(x, up) (x the gate) */
    float *scratch;    /* [n_rows][n_in] for that input (may be x); unspecified after */
    float *residual;   /* non-NULL (n_w == 1): residual += W x, y[0] scratch */
    /* n_w == 3 (q, k, v): after the matmuls, rope(y[0], pos, rope_q) and
     * rope(y[1], pos, rope_k) where non-NULL, then kv_store(kv, y[1],
     * y[2], slots, n_rows) where kv is non-NULL. */
    const exsa_rope_args *rope_q, *rope_k;
    const int32_t *pos;
    const exsa_kv_layer *kv;
    const int32_t *slots;
    /* A hint, no effect on results: the attention the q, k, v feed. A
     * backend may fetch its K and V rows meanwhile (they are cold: every
     * layer has its own cache, and a step streams all weights). */
    const exsa_attn_args *next_attn;
} exsa_matmul_fuse;

typedef struct exsa_backend exsa_backend;

typedef struct exsa_backend_ops {
    const char *name;
    void (*destroy)(exsa_backend *b);          /* frees b itself */
    const char *(*describe)(const exsa_backend *b);
    /* 1: the backend's buffers are host memory the caller may read and
     * write directly (the CPU); 0: only through set and get (a device). */
    int host_memory;
    /* Backend memory, 64-byte aligned, zeroed; NULL on failure. */
    void *(*alloc)(exsa_backend *b, size_t bytes);
    void (*free)(exsa_backend *b, void *p);
    /* Makes weight w usable by this backend's ops. On entry w->data holds
     * the GGUF rows in host memory; the backend may rearrange them (the
     * CPU's interleaved layouts) or upload them (a device), changing
     * w->data and w->layout. *owned receives what release() frees once no
     * context uses the weight (NULL: nothing, w->data is still the host's).
     * Returns 0 or an error code with err set. */
    int (*prepare_weight)(exsa_backend *b, exsa_tensor *w, void **owned, exsa_err *err);
    void (*release)(exsa_backend *b, void *owned);
    /* Copies between host and backend memory, ordered with the ops: set
     * reads src before it returns (src may be reused at once); get returns
     * when the bytes are on the host. */
    void (*set)(exsa_backend *b, void *dst, const void *src_host, size_t bytes);
    void (*get)(exsa_backend *b, void *dst_host, const void *src, size_t bytes);
    /* Returns when every op issued so far has finished; 0, or an error code
     * with err set when one of them failed (a device fault). */
    int (*sync)(exsa_backend *b, exsa_err *err);
    /* Optional (NULL: ops run as called). The ops issued between
     * step_begin(key) and step_end may be recorded once and replayed for
     * later steps with the same key (a CUDA graph): the caller promises
     * that the same key means the same ops on the same buffers, with only
     * the buffers' contents different. step_begin returns 1 when it
     * replayed a recording: the caller skips the ops and calls step_end. */
    int (*step_begin)(exsa_backend *b, uint64_t key);
    void (*step_end)(exsa_backend *b, uint64_t key);
    /* Drops every recording whose key >> 8 is owner (its buffers are going). */
    void (*step_forget)(exsa_backend *b, uint64_t owner);
    /* Optional: device memory free and total bytes; 0 or -1. */
    int (*mem_info)(exsa_backend *b, size_t *free_bytes, size_t *total_bytes);

    /* out[i] = row ids[i] of emb as float32 (any weight type). */
    void (*get_rows)(exsa_backend *b, const exsa_tensor *emb, const int32_t *ids, int n,
                     float *out);
    /* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w (w NULL: no weight). y may be x. */
    void (*rms_norm)(exsa_backend *b, const float *x, const float *w, float *y, int n_rows,
                     int dim, float eps);
    /* y[r][o] = sum_i W[o][i] * x[r][i]; x is [n_rows][n_in], y [n_rows][n_out]. */
    void (*matmul)(exsa_backend *b, const exsa_tensor *w, const float *x, float *y, int n_rows);
    /* matmul of n_w weights that take the same x: y[i] = W_i x. One call
     * lets the backend convert x once and run all weights' rows as one
     * parallel job (q, k, v; gate, up). */
    void (*matmul_multi)(exsa_backend *b, const exsa_tensor *const *w, int n_w, const float *x,
                         float *const *y, int n_rows);
    /* matmul_multi with the prologue and epilogue f describes (above). */
    void (*matmul_fused)(exsa_backend *b, const exsa_tensor *const *w, int n_w, const float *x,
                         float *const *y, int n_rows, const exsa_matmul_fuse *f);
    /* y[r][i] += bias[i] for each of n_rows rows of dim. */
    void (*add_bias)(exsa_backend *b, float *y, const float *bias, int n_rows, int dim);
    /* y[i] += x[i]. */
    void (*add)(exsa_backend *b, float *y, const float *x, int64_t n);
    /* x[i] *= s. */
    void (*scale)(exsa_backend *b, float *x, float s, int64_t n);
    /* In place on x [n_rows][n_heads*head_dim] at positions pos[n_rows]. */
    void (*rope)(exsa_backend *b, float *x, const int32_t *pos, const exsa_rope_args *a);
    /* Row-wise softmax in place on x [n_rows][n]. */
    void (*softmax)(exsa_backend *b, float *x, int n_rows, int n);
    /* out[i] = silu(gate[i]) * up[i]; out may alias gate. */
    void (*swiglu)(exsa_backend *b, const float *gate, const float *up, float *out, int64_t n);
    /* out[i] = gelu(gate[i]) * up[i], GELU's tanh form
     * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); out may alias gate. */
    void (*geglu)(exsa_backend *b, const float *gate, const float *up, float *out, int64_t n);
    /* Writes K and V rows r (each n_kv_head*head_dim floats) to slot slots[r]. */
    void (*kv_store)(exsa_backend *b, const exsa_kv_layer *kv, const float *k, const float *v,
                     const int32_t *slots, int n_rows);
    void (*attention)(exsa_backend *b, const exsa_attn_args *a);
} exsa_backend_ops;

struct exsa_backend {
    const exsa_backend_ops *ops;
    void *impl;
};

/* Rearranges a host weight into the CPU kernels' faster layout when there is
 * one for its type and shape (Q4_0 or Q4_K with n_out % 8 == 0): *buf
 * receives the new bytes (64-byte aligned; Q4_0 the same size, Q4_K 2.8%
 * more; the caller owns them and frees them with free() after the tensor's
 * last use) and w->data / w->layout change. Nothing happens (*buf NULL) for
 * other tensors, or when EXSA_REPACK=0 is set in the environment. Returns 0
 * or EXSA_ENOMEM. */
int exsa_cpu_repack(exsa_tensor *w, void **buf, exsa_err *err);

/* CPU backend with n_threads workers (<= 0: physical cores). */
exsa_backend *exsa_backend_cpu_create(int n_threads, exsa_err *err);

/* The CPU backend under a device's memory contract (host_memory 0: weights
 * copied at prepare, activations only through set/get): what tests of
 * placement, partial offload and the copies between backends run on where
 * there is no GPU. Results equal the CPU backend's. */
exsa_backend *exsa_backend_cpu_create_as_device(int n_threads, exsa_err *err);

/* Where a model runs. */
enum exsa_device {
    EXSA_DEVICE_AUTO = 0, /* a CUDA GPU when one is usable, else the CPU */
    EXSA_DEVICE_CPU = 1,
    EXSA_DEVICE_CUDA = 2,
    EXSA_DEVICE_CPU_AS_GPU = 3, /* tests: the "GPU" is exsa_backend_cpu_create_as_device */
};
/* "auto", "cpu", "cuda" -> exsa_device; -1 for anything else. */
int exsa_device_from_name(const char *name);
const char *exsa_device_name(int device);
/* 1 when this binary has the CUDA backend and a GPU it can use (driver and
 * device present); *why (may be NULL) gets the reason when not. */
int exsa_cuda_usable(const char **why);
/* The CUDA backend on GPU `ordinal`, or NULL with err set (no GPU, no
 * driver, or built without CUDA). */
exsa_backend *exsa_backend_cuda_create(int ordinal, exsa_err *err);
void exsa_backend_free(exsa_backend *b);
/* Threads and ISA in use, e.g. "cpu avx2 x2". */
const char *exsa_backend_describe(const exsa_backend *b);

#endif
