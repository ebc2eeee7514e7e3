/* GGUF v2/v3 reader over mmap, and a streaming writer.
 *
 * The reader validates everything before anyone uses it: every count, string
 * length, dimension, type, offset and size is checked against the file size
 * (no overflow, in bounds, aligned, tensors non-overlapping). A bad file gives
 * EXSA_EFORMAT and a message naming the field and its byte offset; it never
 * crashes and never allocates more than O(file size).
 *
 * Ownership: exsa_gguf owns the mapping; every pointer it hands out (names,
 * strings, tensor data) lives until exsa_gguf_close. Strings from the file
 * are NOT NUL-terminated in general: use the returned length. Keys and tensor
 * names are copied NUL-terminated (a key with an embedded NUL is rejected).
 * Thread safety: read-only after open, safe to share.
 */
#ifndef EXSA_GGUF_H
#define EXSA_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "exsa.h"

enum exsa_gguf_vtype {
    EXSA_GGUF_UINT8 = 0,
    EXSA_GGUF_INT8 = 1,
    EXSA_GGUF_UINT16 = 2,
    EXSA_GGUF_INT16 = 3,
    EXSA_GGUF_UINT32 = 4,
    EXSA_GGUF_INT32 = 5,
    EXSA_GGUF_FLOAT32 = 6,
    EXSA_GGUF_BOOL = 7,
    EXSA_GGUF_STRING = 8,
    EXSA_GGUF_ARRAY = 9,
    EXSA_GGUF_UINT64 = 10,
    EXSA_GGUF_INT64 = 11,
    EXSA_GGUF_FLOAT64 = 12,
    EXSA_GGUF_VTYPE_COUNT
};

#define EXSA_GGUF_MAX_DIMS 4
#define EXSA_GGUF_DEFAULT_ALIGNMENT 32

typedef struct exsa_gguf exsa_gguf;

typedef struct exsa_gguf_tensor {
    const char *name;     /* NUL-terminated copy */
    int type;             /* ggml type id (see quant/quant.h EXSA_TYPE_*) */
    int n_dims;
    int64_t ne[EXSA_GGUF_MAX_DIMS]; /* ne[0] = row length; unused dims = 1 */
    uint64_t offset;      /* from the start of the data section */
    uint64_t size;        /* bytes = n_elements / block * type_size */
    const void *data;     /* inside the mapping */
} exsa_gguf_tensor;

/* --- ggml tensor types known to the file format (sizes for validation) --- */
/* Block size and bytes per block of any ggml type id the format defines;
 * returns 0 and fills them, or EXSA_EFORMAT for an unknown id. */
int exsa_gguf_type_size(int type, int64_t *block_size, int64_t *type_size);
const char *exsa_gguf_type_name(int type); /* "Q4_K", ... or NULL */
const char *exsa_gguf_vtype_name(int vtype); /* "uint32", ... or NULL */

/* --- open / close --- */
exsa_gguf *exsa_gguf_open(const char *path, exsa_err *err);
/* Parses a buffer in memory (tests); the buffer must outlive the handle. */
exsa_gguf *exsa_gguf_open_memory(const void *data, size_t size, exsa_err *err);
void exsa_gguf_close(exsa_gguf *g);

uint32_t exsa_gguf_version(const exsa_gguf *g);
uint64_t exsa_gguf_alignment(const exsa_gguf *g);
uint64_t exsa_gguf_file_size(const exsa_gguf *g);
uint64_t exsa_gguf_data_offset(const exsa_gguf *g); /* start of data section */

/* --- key/values --- */
int64_t exsa_gguf_n_kv(const exsa_gguf *g);
const char *exsa_gguf_kv_key(const exsa_gguf *g, int64_t i);
int64_t exsa_gguf_find_key(const exsa_gguf *g, const char *key); /* -1 if absent */
int exsa_gguf_kv_type(const exsa_gguf *g, int64_t i); /* exsa_gguf_vtype */

/* Scalar getters by index. Integers convert between integer widths (and
 * bool) when the value fits; floats accept float32/float64 and integers.
 * Wrong type -> EXSA_EFORMAT with the key named. */
int exsa_gguf_kv_int(const exsa_gguf *g, int64_t i, int64_t *out);
int exsa_gguf_kv_uint(const exsa_gguf *g, int64_t i, uint64_t *out);
int exsa_gguf_kv_float(const exsa_gguf *g, int64_t i, double *out);
int exsa_gguf_kv_bool(const exsa_gguf *g, int64_t i, int *out);
int exsa_gguf_kv_str(const exsa_gguf *g, int64_t i, const char **s, size_t *len);

/* Arrays (kv type ARRAY). Element type; for nested arrays ARRAY (their
 * elements are validated at open but not exposed). */
int exsa_gguf_arr_type(const exsa_gguf *g, int64_t i);
uint64_t exsa_gguf_arr_n(const exsa_gguf *g, int64_t i);
/* Element j of a numeric/bool array, converted; j must be < arr_n. */
int64_t exsa_gguf_arr_int(const exsa_gguf *g, int64_t i, uint64_t j);
double exsa_gguf_arr_float(const exsa_gguf *g, int64_t i, uint64_t j);
/* Element j of a string array (O(1): offsets are indexed at open). */
const char *exsa_gguf_arr_str(const exsa_gguf *g, int64_t i, uint64_t j, size_t *len);
/* Raw little-endian element bytes of a numeric array (may be unaligned). */
const void *exsa_gguf_arr_data(const exsa_gguf *g, int64_t i);
/* The value of key/value i exactly as stored in the file (the bytes after its
 * type field; for an array: element type, count, elements). For copying a
 * value without interpreting it (writer_copy_kv). NULL if i is out of range. */
const void *exsa_gguf_kv_raw(const exsa_gguf *g, int64_t i, uint64_t *size);

/* Convenience by key name: return EXSA_OK, or EXSA_EINVAL if absent
 * (err says "missing key"), or EXSA_EFORMAT on a wrong type. */
int exsa_gguf_get_int(const exsa_gguf *g, const char *key, int64_t *out, exsa_err *err);
int exsa_gguf_get_float(const exsa_gguf *g, const char *key, double *out, exsa_err *err);
int exsa_gguf_get_bool(const exsa_gguf *g, const char *key, int *out, exsa_err *err);
int exsa_gguf_get_str(const exsa_gguf *g, const char *key, const char **s, size_t *len,
                      exsa_err *err);

/* --- tensors --- */
int64_t exsa_gguf_n_tensors(const exsa_gguf *g);
const exsa_gguf_tensor *exsa_gguf_tensor_at(const exsa_gguf *g, int64_t i);
const exsa_gguf_tensor *exsa_gguf_find_tensor(const exsa_gguf *g, const char *name);

/* --- streaming writer ---
 * Usage: create; set key/values; add every tensor's (name, type, dims);
 * begin(path) writes header + tensor infos; then write_tensor() for each
 * tensor in the order they were added; finish() pads, flushes, closes.
 * Memory: the writer holds metadata only, never tensor data. */
typedef struct exsa_gguf_writer exsa_gguf_writer;

exsa_gguf_writer *exsa_gguf_writer_create(exsa_err *err); /* writes v3 */
void exsa_gguf_writer_free(exsa_gguf_writer *w); /* also closes an unfinished file */

/* Setting an existing key replaces its value (no duplicates are written). */
int exsa_gguf_writer_set_u32(exsa_gguf_writer *w, const char *key, uint32_t v);
int exsa_gguf_writer_set_i32(exsa_gguf_writer *w, const char *key, int32_t v);
int exsa_gguf_writer_set_u64(exsa_gguf_writer *w, const char *key, uint64_t v);
int exsa_gguf_writer_set_f32(exsa_gguf_writer *w, const char *key, float v);
int exsa_gguf_writer_set_bool(exsa_gguf_writer *w, const char *key, int v);
int exsa_gguf_writer_set_str(exsa_gguf_writer *w, const char *key, const char *v);
/* Array of scalars of elem_type (not STRING/ARRAY), n elements, LE bytes. */
int exsa_gguf_writer_set_arr(exsa_gguf_writer *w, const char *key, int elem_type,
                             const void *data, uint64_t n);
int exsa_gguf_writer_set_arr_str(exsa_gguf_writer *w, const char *key,
                                 const char *const *strs, uint64_t n);
/* Copies key/value i of src verbatim (any type, nested arrays included). */
int exsa_gguf_writer_copy_kv(exsa_gguf_writer *w, const exsa_gguf *src, int64_t i);
int exsa_gguf_writer_remove_key(exsa_gguf_writer *w, const char *key);

int exsa_gguf_writer_add_tensor(exsa_gguf_writer *w, const char *name, int type, int n_dims,
                                const int64_t *ne, exsa_err *err);
int exsa_gguf_writer_begin(exsa_gguf_writer *w, const char *path, exsa_err *err);
/* data must hold exactly the tensor's size in bytes. */
int exsa_gguf_writer_write_tensor(exsa_gguf_writer *w, const void *data, uint64_t size,
                                  exsa_err *err);
int exsa_gguf_writer_finish(exsa_gguf_writer *w, exsa_err *err);

#endif
