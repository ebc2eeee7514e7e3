/* Placement: which backend each layer, the embeddings and the output head
 * run on, the weights' preparation there (exsa_backend_ops.prepare_weight)
 * and the check that the GPU part fits before anything is uploaded.
 *
 * -ngl N follows llama.cpp: the last N layers go to the GPU and N above
 * n_layer also takes the output head; the embeddings live with layer 0.
 * Activations then cross between backends at most twice per step. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/model_internal.h"
#include "quant/quant.h"
#include "util/err.h"
#include "util/log.h"

/* Device memory a context needs beyond weights and KV (activations,
 * matmul and attention scratch, logits): kept free at load. */
#define DEV_RESERVE_BYTES ((size_t)512 << 20)

void exsa_model_params_default(exsa_model_params *p)
{
    *p = (exsa_model_params){.device = EXSA_DEVICE_AUTO, .n_gpu_layers = -1, .gpu = 0};
    const char *d = getenv("EXSA_DEVICE");
    if (d && *d && exsa_device_from_name(d) >= 0)
        p->device = exsa_device_from_name(d);
}

int exsa_model_place_of(const exsa_model *m, int l)
{
    if (!m->layer_place)
        return EXSA_ON_HOST;
    if (l >= m->hp.n_layer)
        return m->head_place;
    return m->layer_place[l < 0 ? 0 : l];
}

int exsa_model_place_of_name(const exsa_model *m, const char *name)
{
    int l;
    if (sscanf(name, "blk.%d.", &l) == 1 && l >= 0 && l < m->hp.n_layer)
        return exsa_model_place_of(m, l);
    if (strcmp(name, "output.weight") == 0 || strcmp(name, "output_norm.weight") == 0)
        return exsa_model_place_of(m, m->hp.n_layer);
    if (strcmp(name, "token_embd.weight") == 0)
        return exsa_model_place_of(m, -1);
    return EXSA_ON_HOST;
}

/* Bytes of the file's tensors that a given layer (or -1 embeddings,
 * n_layer head) holds. */
static uint64_t stage_bytes(const exsa_model *m, int l)
{
    uint64_t sum = 0;
    char pre[32];
    snprintf(pre, sizeof pre, "blk.%d.", l);
    for (int64_t i = 0; i < exsa_gguf_n_tensors(m->gguf); i++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(m->gguf, i);
        int hit;
        if (l < 0)
            hit = strcmp(t->name, "token_embd.weight") == 0;
        else if (l >= m->hp.n_layer)
            hit = strcmp(t->name, "output.weight") == 0 ||
                  strcmp(t->name, "output_norm.weight") == 0 ||
                  (m->hp.tied_output && strcmp(t->name, "token_embd.weight") == 0) ||
                  (!exsa_gguf_find_tensor(m->gguf, "output.weight") &&
                   strcmp(t->name, "token_embd.weight") == 0);
        else
            hit = strncmp(t->name, pre, strlen(pre)) == 0;
        if (hit)
            sum += t->size;
    }
    return sum;
}

/* Whether the GPU part of placement ngl fits `avail` bytes; the bytes. */
static uint64_t dev_bytes_for(const exsa_model *m, int ngl)
{
    const int L = m->hp.n_layer;
    uint64_t sum = 0;
    for (int l = L - (ngl < L ? ngl : L); l < L; l++)
        sum += stage_bytes(m, l);
    if (ngl >= L)
        sum += stage_bytes(m, -1);
    if (ngl > L)
        sum += stage_bytes(m, L);
    return sum;
}

int exsa_model_place_init(exsa_model *m, exsa_err *err)
{
    const int L = m->hp.n_layer;
    m->layer_place = calloc((size_t)L, 1);
    if (!m->layer_place)
        return exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
    m->head_place = EXSA_ON_HOST;
    if (!(m->be[EXSA_ON_HOST] = exsa_backend_cpu_create(1, err)))
        return err->code;
    snprintf(m->placement, sizeof m->placement, "cpu");
    int ngl = m->mp.n_gpu_layers < 0 || m->mp.n_gpu_layers > L + 1 ? L + 1 : m->mp.n_gpu_layers;
    if (m->mp.device == EXSA_DEVICE_CPU || ngl == 0)
        return 0;
    const char *why = NULL;
    if (m->mp.device == EXSA_DEVICE_CPU_AS_GPU) {
        if (!(m->be[EXSA_ON_DEV] = exsa_backend_cpu_create_as_device(1, err)))
            return err->code;
    } else if (!exsa_cuda_usable(&why)) {
        if (m->mp.device == EXSA_DEVICE_CUDA)
            return exsa_err_set(err, EXSA_EUNSUPPORTED, "model: --device cuda: %s", why);
        if (strcmp(why, "this build has no CUDA backend") != 0)
            exsa_log(EXSA_LOG_INFO, NULL, "cuda: %s; running on the CPU", why);
        return 0;
    } else if (!(m->be[EXSA_ON_DEV] = exsa_backend_cuda_create(m->mp.gpu, err))) {
        return err->code;
    }
    exsa_backend *dev = m->be[EXSA_ON_DEV];
    /* The weights must fit with room for a context; else say which -ngl does. */
    size_t free_b = 0, total_b = 0;
    if (dev->ops->mem_info && dev->ops->mem_info(dev, &free_b, &total_b) == 0) {
        const uint64_t need = dev_bytes_for(m, ngl);
        if (need + DEV_RESERVE_BYTES > free_b) {
            int fit = ngl;
            while (fit > 0 && dev_bytes_for(m, fit) + DEV_RESERVE_BYTES > free_b)
                fit--;
            return exsa_err_set(err, EXSA_ENOMEM,
                                "model: %d of %d layers need %.0f MiB of weights on %s, which "
                                "has %.0f MiB free (of %.0f; %.0f kept for the KV cache and "
                                "scratch); try -ngl %d",
                                ngl > L ? L : ngl, L, (double)need / 1048576.0,
                                exsa_backend_describe(dev), (double)free_b / 1048576.0,
                                (double)total_b / 1048576.0,
                                (double)DEV_RESERVE_BYTES / 1048576.0, fit);
        }
    }
    for (int l = L - (ngl < L ? ngl : L); l < L; l++)
        m->layer_place[l] = EXSA_ON_DEV;
    m->head_place = ngl > L ? EXSA_ON_DEV : EXSA_ON_HOST;
    snprintf(m->placement, sizeof m->placement, "%s, %d/%d layers%s",
             exsa_backend_describe(dev), ngl < L ? ngl : L, L,
             m->head_place == EXSA_ON_DEV ? " + head" : "");
    return 0;
}

static int keep(exsa_model *m, int place, void *owned, exsa_err *err)
{
    if (!owned)
        return 0;
    if (m->n_prep == m->prep_cap) {
        int cap = m->prep_cap ? 2 * m->prep_cap : 64;
        exsa_prepared *p = realloc(m->prep, (size_t)cap * sizeof *p);
        if (!p) {
            m->be[place]->ops->release(m->be[place], owned);
            return exsa_err_set(err, EXSA_ENOMEM, "model: out of memory");
        }
        m->prep = p;
        m->prep_cap = cap;
    }
    m->prep[m->n_prep++] = (exsa_prepared){place, owned};
    return 0;
}

int exsa_model_prepare(exsa_model *m, exsa_tensor *t, int place, exsa_err *err)
{
    if (!m->layer_place) {
        int rc = exsa_model_place_init(m, err);
        if (rc)
            return rc;
    }
    exsa_backend *be = m->be[place];
    const void *src = t->data;
    void *owned = NULL;
    int rc = be->ops->prepare_weight(be, t, &owned, err);
    if (rc)
        return rc;
    if ((rc = keep(m, place, owned, err)))
        return rc;
    if (place == EXSA_ON_DEV)
        m->dev_weight_bytes += t->row_bytes * (size_t)t->n_out;
    /* A copy now serves the weight: drop the mapped pages it came from
     * (clean file pages, re-read on demand if ever touched again), so
     * resident memory does not double. Only whole pages inside it. */
    long page = sysconf(_SC_PAGESIZE);
    if (t->data != src && page > 0 && t->n_out > 1) {
        uintptr_t a = ((uintptr_t)src + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
        uintptr_t e = ((uintptr_t)src + (uintptr_t)(t->row_bytes * (size_t)t->n_out)) &
                      ~((uintptr_t)page - 1);
        if (e > a)
            madvise((void *)a, e - a, MADV_DONTNEED);
    }
    return 0;
}

const float *exsa_model_place_vector(exsa_model *m, const float *host, int64_t n, int place,
                                     exsa_err *err)
{
    if (!host || place == EXSA_ON_HOST)
        return host;
    exsa_tensor t = {.name = "vector", .type = EXSA_TYPE_F32, .n_in = n, .n_out = 1,
                     .row_bytes = (size_t)n * sizeof(float), .data = host};
    if (exsa_model_prepare(m, &t, place, err) != 0)
        return NULL;
    return t.data;
}

void exsa_model_place_free(exsa_model *m)
{
    for (int i = 0; i < m->n_prep; i++)
        m->be[m->prep[i].place]->ops->release(m->be[m->prep[i].place], m->prep[i].owned);
    free(m->prep);
    m->prep = NULL;
    m->n_prep = 0;
    for (int p = 0; p < EXSA_N_PLACES; p++) {
        exsa_backend_free(m->be[p]);
        m->be[p] = NULL;
    }
    free(m->layer_place);
    m->layer_place = NULL;
}

const char *exsa_model_placement(const exsa_model *m)
{
    return m->placement[0] ? m->placement : "cpu";
}

int exsa_model_device(const exsa_model *m)
{
    for (int l = 0; m->layer_place && l < m->hp.n_layer; l++)
        if (m->layer_place[l] == EXSA_ON_DEV)
            return EXSA_DEVICE_CUDA;
    return m->head_place == EXSA_ON_DEV ? EXSA_DEVICE_CUDA : EXSA_DEVICE_CPU;
}

int exsa_model_device_memory(const exsa_model *m, size_t *free_bytes, size_t *total_bytes,
                             size_t *weight_bytes)
{
    exsa_backend *dev = m->be[EXSA_ON_DEV];
    if (!dev || !dev->ops->mem_info || exsa_model_device(m) != EXSA_DEVICE_CUDA)
        return -1;
    size_t f = 0, t = 0;
    if (dev->ops->mem_info(dev, &f, &t) != 0)
        return -1;
    if (free_bytes)
        *free_bytes = f;
    if (total_bytes)
        *total_bytes = t;
    if (weight_bytes)
        *weight_bytes = m->dev_weight_bytes;
    return 0;
}
