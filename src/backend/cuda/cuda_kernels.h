/* The CUDA backend's kernels, as C-callable launchers (cuda_backend.c glues
 * them to exsa_backend_ops; tests call them directly against the scalar
 * references).
 *
 * Every pointer argument is device memory unless it is a struct passed by
 * pointer (exsa_rope_args, exsa_kv_layer, exsa_attn_args): those structs
 * live on the host and the pointers inside them are device memory. Every
 * launcher only enqueues work on `s` (no synchronisation, no allocation, no
 * host reads of device data), so a sequence of launches can be recorded as
 * a CUDA graph and replayed with new data in the same buffers. Launchers
 * return 0 or a cudaError_t value (cudaGetLastError after the launch).
 *
 * Activations are float32 rows; weights are in their GGUF block format,
 * n_out rows of row_bytes (exsa_type_row_size(type, n_in)), 16-byte aligned
 * at the start of the matrix.
 */
#ifndef EXSA_CUDA_KERNELS_H
#define EXSA_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "backend/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- cuda_matmul.cu ---- */

/* Whether matmul supports this weight type (F32, F16, BF16, Q4_0, Q4_1,
 * Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K). */
int exsa_cuda_matmul_supports(int type);
/* Device scratch bytes matmul needs for these sizes (0 allowed). */
size_t exsa_cuda_matmul_scratch_bytes(int type, int64_t n_in, int64_t n_out, int n_rows);
/* y[r][o] (=, or += when accumulate) sum_i W[o][i] * x[r][i] for r < n_rows;
 * x is [n_rows][n_in], y [n_rows][n_out] (y_stride floats apart; y_stride
 * >= n_out). Small n_rows (decode) read each weight row once for all rows;
 * large n_rows run on the tensor cores. scratch: exsa_cuda_matmul_scratch_bytes
 * bytes. */
int exsa_cuda_matmul(const void *w, int type, int64_t n_in, int64_t n_out, size_t row_bytes,
                     const float *x, float *y, int64_t y_stride, int n_rows, int accumulate,
                     void *scratch, cudaStream_t s);
/* out[i][:] = row ids[i] of W (any matmul type, and F32) as float32 times
 * scale; n_in elements per row; ids are device memory. */
int exsa_cuda_get_rows(const void *w, int type, int64_t n_in, size_t row_bytes,
                       const int32_t *ids, int n, float scale, float *out, cudaStream_t s);

/* ---- cuda_ops.cu ---- */

/* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w (w NULL: no weight); y may be x. */
int exsa_cuda_rms_norm(const float *x, const float *w, float *y, int n_rows, int dim, float eps,
                       cudaStream_t s);
/* y[r][i] += bias[i]. */
int exsa_cuda_add_bias(float *y, const float *bias, int n_rows, int dim, cudaStream_t s);
/* y[i] += x[i]. */
int exsa_cuda_add(float *y, const float *x, int64_t n, cudaStream_t s);
/* x[i] *= sc. */
int exsa_cuda_scale(float *x, float sc, int64_t n, cudaStream_t s);
/* backend.h's rope, in place; pos [a->n_rows]; a->freq_factors device or NULL. */
int exsa_cuda_rope(float *x, const int32_t *pos, const exsa_rope_args *a, cudaStream_t s);
/* Row-wise softmax in place on [n_rows][n]. */
int exsa_cuda_softmax(float *x, int n_rows, int n, cudaStream_t s);
/* out[i] = silu(gate[i]) * up[i] (swiglu) or gelu_tanh(gate[i]) * up[i]
 * (geglu); out may alias gate. */
int exsa_cuda_swiglu(const float *gate, const float *up, float *out, int64_t n, cudaStream_t s);
int exsa_cuda_geglu(const float *gate, const float *up, float *out, int64_t n, cudaStream_t s);

/* ---- cuda_attention.cu ---- */

/* backend.h's kv_store: K and V rows r to slot slots[r] of kv (F32, F16 or
 * Q8_0 cache, quantized exactly as the CPU reference does). */
int exsa_cuda_kv_store(const exsa_kv_layer *kv, const float *k, const float *v,
                       const int32_t *slots, int n_rows, cudaStream_t s);
/* Scratch bytes attention needs for these args (depends only on n_rows,
 * n_head, head_dim and cap_ctx, so a recorded graph stays valid). */
size_t exsa_cuda_attention_scratch_bytes(const exsa_attn_args *a);
/* backend.h's paged attention (windowed or not, GQA, F32/F16/Q8_0 KV).
 * Grid sized from a->n_rows and a->cap_ctx only; per-row lengths are read
 * on the device. */
int exsa_cuda_attention(const exsa_attn_args *a, void *scratch, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
