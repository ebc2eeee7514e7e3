#include "model/model_quantize.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gguf/gguf.h"
#include "quant/quant.h"
#include "util/err.h"
#include "backend/cpu/cpu_features.h"

/* Names, base types and llama.cpp's general.file_type ids. */
static const struct {
    exsa_ftype ft;
    int file_type;
} ftypes[] = {
    {{"F32", EXSA_TYPE_F32, 0}, 0},      {{"F16", EXSA_TYPE_F16, 0}, 1},
    {{"BF16", EXSA_TYPE_BF16, 0}, 32},   {{"Q4_0", EXSA_TYPE_Q4_0, 0}, 2},
    {{"Q4_1", EXSA_TYPE_Q4_1, 0}, 3},    {{"Q5_0", EXSA_TYPE_Q5_0, 0}, 8},
    {{"Q5_1", EXSA_TYPE_Q5_1, 0}, 9},    {{"Q8_0", EXSA_TYPE_Q8_0, 0}, 7},
    {{"Q2_K", EXSA_TYPE_Q2_K, 0}, 10},   {{"Q3_K", EXSA_TYPE_Q3_K, 0}, 12},
    {{"Q3_K_S", EXSA_TYPE_Q3_K, 'S'}, 11}, {{"Q3_K_M", EXSA_TYPE_Q3_K, 'M'}, 12},
    {{"Q4_K", EXSA_TYPE_Q4_K, 0}, 15},   {{"Q4_K_S", EXSA_TYPE_Q4_K, 'S'}, 14},
    {{"Q4_K_M", EXSA_TYPE_Q4_K, 'M'}, 15}, {{"Q5_K", EXSA_TYPE_Q5_K, 0}, 17},
    {{"Q5_K_S", EXSA_TYPE_Q5_K, 'S'}, 16}, {{"Q5_K_M", EXSA_TYPE_Q5_K, 'M'}, 17},
    {{"Q6_K", EXSA_TYPE_Q6_K, 0}, 18},
};
#define N_FTYPES (sizeof ftypes / sizeof ftypes[0])

const char *exsa_ftype_names(void)
{
    static char buf[256];
    if (!buf[0])
        for (size_t i = 0; i < N_FTYPES; i++) {
            if (i)
                strcat(buf, ", ");
            strcat(buf, ftypes[i].ft.name);
        }
    return buf;
}

int exsa_ftype_parse(const char *name, exsa_ftype *out, exsa_err *err)
{
    for (size_t i = 0; i < N_FTYPES; i++)
        if (strcasecmp(name, ftypes[i].ft.name) == 0) {
            *out = ftypes[i].ft;
            return 0;
        }
    return exsa_err_set(err, EXSA_EINVAL, "unknown type '%s' (one of %s)", name,
                        exsa_ftype_names());
}

static int file_type_id(const exsa_ftype *ft)
{
    for (size_t i = 0; i < N_FTYPES; i++)
        if (strcmp(ft->name, ftypes[i].ft.name) == 0)
            return ftypes[i].file_type;
    return 0;
}

/* llama.cpp's rule for which layers of attn_v / ffn_down get more bits:
 * the first and last eighth, and every third layer between. */
static int more_bits(int layer, int n_layer)
{
    return layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2;
}

static int fallback(int type, int64_t n_in)
{
    const exsa_type_traits *tr = exsa_type_traits_get(type);
    if (tr && n_in % tr->block_size == 0)
        return type;
    int alt;
    switch (type) {
    case EXSA_TYPE_Q2_K:
    case EXSA_TYPE_Q3_K:
    case EXSA_TYPE_Q4_K: alt = EXSA_TYPE_Q5_0; break;
    case EXSA_TYPE_Q5_K: alt = EXSA_TYPE_Q5_1; break;
    case EXSA_TYPE_Q6_K: alt = EXSA_TYPE_Q8_0; break;
    default: alt = EXSA_TYPE_F16; break;
    }
    return n_in % 32 == 0 ? alt : EXSA_TYPE_F16;
}

int exsa_ftype_tensor_type(const exsa_ftype *ft, const char *name, int n_dims, int64_t n_in,
                           int n_layer)
{
    if (n_dims < 2)
        return EXSA_TYPE_F32;
    int type = ft->base;
    int layer = -1;
    const char *role = name;
    if (sscanf(name, "blk.%d.", &layer) == 1) {
        const char *dot = strchr(name + 4, '.');
        role = dot ? dot + 1 : name;
    }
    int is_k = type >= EXSA_TYPE_Q2_K && type <= EXSA_TYPE_Q6_K;
    if (ft->mix && is_k) {
        if (strcmp(name, "output.weight") == 0) {
            type = EXSA_TYPE_Q6_K;
        } else if (strcmp(role, "attn_v.weight") == 0) {
            if (ft->base == EXSA_TYPE_Q3_K)
                type = ft->mix == 'M' ? (layer < 2 ? EXSA_TYPE_Q5_K : EXSA_TYPE_Q4_K)
                                      : EXSA_TYPE_Q3_K;
            else if (ft->mix == 'M' && more_bits(layer, n_layer))
                type = EXSA_TYPE_Q6_K;
            else if (ft->mix == 'S' && ft->base == EXSA_TYPE_Q4_K && layer < 4)
                type = EXSA_TYPE_Q5_K;
        } else if (strcmp(role, "ffn_down.weight") == 0) {
            if (ft->base == EXSA_TYPE_Q3_K && ft->mix == 'M')
                type = layer < n_layer / 16 ? EXSA_TYPE_Q5_K
                       : more_bits(layer, n_layer) ? EXSA_TYPE_Q4_K : EXSA_TYPE_Q3_K;
            else if (ft->mix == 'M' && more_bits(layer, n_layer))
                type = EXSA_TYPE_Q6_K;
            else if (ft->mix == 'S' && ft->base == EXSA_TYPE_Q4_K && layer < n_layer / 8)
                type = EXSA_TYPE_Q5_K;
        } else if (strcmp(role, "attn_output.weight") == 0 && ft->base == EXSA_TYPE_Q3_K &&
                   ft->mix == 'M') {
            type = EXSA_TYPE_Q4_K;
        }
    }
    return fallback(type, n_in);
}

/* One tensor's conversion, rows split across the pool. */
typedef struct convert_job {
    const exsa_type_traits *src, *dst;
    const uint8_t *in;
    uint8_t *out;
    int64_t n_in, n_rows, rows_per_task;
    size_t in_row, out_row;
    float *tmp; /* [threads][n_in] */
} convert_job;

static void convert_task(void *ctx, int task, int thread)
{
    convert_job *j = ctx;
    float *tmp = j->tmp + (size_t)thread * (size_t)j->n_in;
    int64_t r0 = (int64_t)task * j->rows_per_task, r1 = r0 + j->rows_per_task;
    if (r1 > j->n_rows)
        r1 = j->n_rows;
    for (int64_t r = r0; r < r1; r++) {
        j->src->to_float(j->in + (size_t)r * j->in_row, tmp, j->n_in);
        j->dst->from_float(tmp, j->out + (size_t)r * j->out_row, j->n_in);
    }
}

int exsa_convert_rows(exsa_threadpool *pool, int src_type, const void *in, int dst_type,
                      void *out, int64_t n_in, int64_t n_rows, exsa_err *err)
{
    convert_job j = {
        .src = exsa_type_traits_get(src_type), .dst = exsa_type_traits_get(dst_type),
        .in = in, .out = out, .n_in = n_in, .n_rows = n_rows,
    };
    if (!j.src || !j.src->to_float || !j.dst || !j.dst->from_float)
        return exsa_err_set(err, EXSA_EUNSUPPORTED, "cannot convert %s to %s",
                            j.src ? j.src->name : "?", j.dst ? j.dst->name : "?");
    j.in_row = exsa_type_row_size(src_type, n_in);
    j.out_row = exsa_type_row_size(dst_type, n_in);
    int nt = exsa_threadpool_size(pool);
    j.tmp = malloc((size_t)nt * (size_t)n_in * sizeof(float));
    if (!j.tmp)
        return exsa_err_set(err, EXSA_ENOMEM, "out of memory");
    j.rows_per_task = 16;
    int64_t n_tasks = (n_rows + j.rows_per_task - 1) / j.rows_per_task;
    exsa_threadpool_run(pool, convert_task, &j, (int)n_tasks);
    free(j.tmp);
    return 0;
}

int exsa_model_quantize(const char *in_path, const char *out_path, const exsa_ftype *ft,
                        int n_threads, exsa_progress_fn progress, void *ud, exsa_err *err)
{
    int rc = 0;
    exsa_gguf *g = exsa_gguf_open(in_path, err);
    if (!g)
        return err ? err->code : EXSA_EIO;
    exsa_gguf_writer *w = exsa_gguf_writer_create(err);
    exsa_threadpool *pool =
        exsa_threadpool_create(n_threads > 0 ? n_threads : exsa_cpu_physical_cores(), err);
    void *buf = NULL;
    if (!w || !pool) {
        rc = err ? err->code : EXSA_ENOMEM;
        goto done;
    }
    int64_t n_layer = 0;
    const char *arch = NULL;
    size_t alen = 0;
    if (exsa_gguf_get_str(g, "general.architecture", &arch, &alen, NULL) == 0) {
        char key[96];
        snprintf(key, sizeof key, "%.*s.block_count", (int)(alen > 60 ? 60 : alen), arch);
        exsa_gguf_get_int(g, key, &n_layer, NULL);
    }
    for (int64_t i = 0; i < exsa_gguf_n_kv(g); i++)
        if ((rc = exsa_gguf_writer_copy_kv(w, g, i)) != 0) {
            exsa_err_set(err, rc, "quantize: cannot copy key '%s'", exsa_gguf_kv_key(g, i));
            goto done;
        }
    exsa_gguf_writer_set_u32(w, "general.file_type", (uint32_t)file_type_id(ft));
    exsa_gguf_writer_set_u32(w, "general.quantization_version", 2);

    int64_t nt = exsa_gguf_n_tensors(g);
    size_t max_bytes = 0;
    for (int64_t i = 0; i < nt; i++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(g, i);
        int type = exsa_ftype_tensor_type(ft, t->name, t->n_dims, t->ne[0], (int)n_layer);
        if (!exsa_type_traits_get(t->type) || !exsa_type_traits_get(t->type)->to_float)
            type = t->type; /* a type we cannot read is copied as is */
        if ((rc = exsa_gguf_writer_add_tensor(w, t->name, type, t->n_dims, t->ne, err)) != 0)
            goto done;
        size_t bytes = exsa_type_row_size(type, t->ne[0]) *
                       (size_t)(t->ne[1] * t->ne[2] * t->ne[3]);
        if (bytes > max_bytes)
            max_bytes = bytes;
    }
    buf = malloc(max_bytes ? max_bytes : 1);
    if (!buf) {
        rc = exsa_err_set(err, EXSA_ENOMEM, "quantize: out of memory (%zu bytes)", max_bytes);
        goto done;
    }
    if ((rc = exsa_gguf_writer_begin(w, out_path, err)) != 0)
        goto done;
    for (int64_t i = 0; i < nt; i++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(g, i);
        int type = exsa_ftype_tensor_type(ft, t->name, t->n_dims, t->ne[0], (int)n_layer);
        if (!exsa_type_traits_get(t->type) || !exsa_type_traits_get(t->type)->to_float)
            type = t->type;
        int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
        size_t bytes = exsa_type_row_size(type, t->ne[0]) * (size_t)rows;
        const void *data = t->data;
        if (type != t->type) {
            rc = exsa_convert_rows(pool, t->type, t->data, type, buf, t->ne[0], rows, err);
            if (rc) {
                exsa_err_prefix(err, "quantize: tensor '%s'", t->name);
                goto done;
            }
            data = buf;
        }
        if ((rc = exsa_gguf_writer_write_tensor(w, data, bytes, err)) != 0)
            goto done;
        if (progress)
            progress(ud, i + 1, nt);
    }
    rc = exsa_gguf_writer_finish(w, err);
done:
    free(buf);
    exsa_threadpool_free(pool);
    exsa_gguf_writer_free(w);
    exsa_gguf_close(g);
    return rc;
}
