/* Model file types ("Q4_K_M", "Q8_0", "F16", ...) and whole-model
 * quantization. A file type maps each tensor, by its role in the model, to
 * a storage type: the _S/_M mixes keep the most sensitive tensors (output,
 * some attn_v / ffn_down layers) at higher precision, as llama.cpp's
 * quantizer does, and rows whose length does not fit a K-quant block fall
 * back to a 32-block format. 1-D tensors (norms, biases) stay F32. */
#ifndef EXSA_MODEL_QUANTIZE_H
#define EXSA_MODEL_QUANTIZE_H

#include <stdint.h>

#include "exsa.h"
#include "util/threadpool.h"

typedef struct exsa_ftype {
    const char *name;  /* "Q4_K_M" */
    int base;          /* main storage type */
    int mix;           /* 0 plain, 'S', 'M' */
} exsa_ftype;

/* Case-insensitive; EXSA_EINVAL listing the valid names when unknown. */
int exsa_ftype_parse(const char *name, exsa_ftype *out, exsa_err *err);
/* Comma-separated list of every accepted name (for --help). */
const char *exsa_ftype_names(void);

/* Storage type for a tensor: name as in GGUF ("blk.3.attn_v.weight"),
 * n_dims, row length n_in, and the model's layer count. */
int exsa_ftype_tensor_type(const exsa_ftype *ft, const char *name, int n_dims, int64_t n_in,
                           int n_layer);

/* Converts n_rows rows of n_in elements from src_type to dst_type (any two
 * types with to_float / from_float), rows split over the pool. */
int exsa_convert_rows(exsa_threadpool *pool, int src_type, const void *in, int dst_type,
                      void *out, int64_t n_in, int64_t n_rows, exsa_err *err);

/* Progress: called with (tensors done, tensors total). */
typedef void (*exsa_progress_fn)(void *ud, int64_t done, int64_t total);

/* Reads in_path, writes out_path with every tensor converted per ft, all
 * metadata kept (general.file_type updated). n_threads <= 0: all cores. */
int exsa_model_quantize(const char *in_path, const char *out_path, const exsa_ftype *ft,
                        int n_threads, exsa_progress_fn progress, void *ud, exsa_err *err);

#endif
