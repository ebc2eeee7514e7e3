/* The CUDA backend: exsa_backend_ops on one GPU, one stream.
 *
 * Ops queue kernels (cuda_kernels.h) on the stream and return; get and
 * sync wait. Kernel errors are kept (the first one) and reported by the
 * next sync, so a failed step fails its forward pass instead of passing
 * garbage on. Scratch for matmul, attention and fused inputs belongs to
 * the backend and only grows between steps.
 *
 * Steps (exsa_backend_ops.step_begin/end) are recorded as CUDA graphs: the
 * first run of a key runs plainly (and grows every scratch buffer it
 * needs), the second is captured and launched, later ones replay the
 * graph. This takes the per-kernel launch cost off the decode path.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "backend/backend.h"
#include "backend/cuda/cuda_kernels.h"
#include "quant/quant.h"
#include "util/err.h"

/* Recordings kept per backend: decode batch sizes of a few contexts. */
#define CUDA_MAX_STEPS 128

typedef struct {
    uint64_t key;
    int runs;              /* plain runs so far; -1: never record this key */
    cudaGraphExec_t exec;
} cuda_step;

typedef struct {
    void *p;
    size_t cap;
} cuda_buf;

typedef struct cuda_backend {
    exsa_backend base; /* first: an exsa_backend * is a cuda_backend * */
    int ordinal;
    cudaStream_t s;
    char desc[160];
    cuda_buf mm, attn, in; /* matmul scratch, attention scratch, fused input rows */
    cudaError_t first_err;
    const char *first_what;
    cuda_step steps[CUDA_MAX_STEPS];
    int n_steps;
    int capturing;         /* a step is being captured */
    int capture_broken;    /* something in it could not be captured */
} cuda_backend;

static cuda_backend *cu(exsa_backend *b) { return (cuda_backend *)b; }

static void note(cuda_backend *c, cudaError_t e, const char *what)
{
    if (e != cudaSuccess && c->first_err == cudaSuccess) {
        c->first_err = e;
        c->first_what = what;
    }
}

/* Makes buf hold `bytes`; never during a capture (cudaMalloc and the
 * implicit sync of cudaFree would break it): then the step is marked
 * broken and the caller skips its op. 0 or -1. */
static int reserve(cuda_backend *c, cuda_buf *buf, size_t bytes)
{
    if (bytes <= buf->cap)
        return 0;
    if (c->capturing) {
        c->capture_broken = 1;
        return -1;
    }
    size_t cap = bytes + bytes / 4 + 4096;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, cap);
    if (e != cudaSuccess) {
        note(c, e, "scratch allocation");
        return -1;
    }
    if (buf->p)
        cudaFree(buf->p);
    buf->p = p;
    buf->cap = cap;
    return 0;
}

static void cuda_destroy(exsa_backend *b)
{
    cuda_backend *c = cu(b);
    cudaSetDevice(c->ordinal);
    if (c->s)
        cudaStreamSynchronize(c->s);
    for (int i = 0; i < c->n_steps; i++)
        if (c->steps[i].exec)
            cudaGraphExecDestroy(c->steps[i].exec);
    cudaFree(c->mm.p);
    cudaFree(c->attn.p);
    cudaFree(c->in.p);
    if (c->s)
        cudaStreamDestroy(c->s);
    free(c);
}

static const char *cuda_describe(const exsa_backend *b)
{
    return ((const cuda_backend *)b)->desc;
}

static void *cuda_alloc(exsa_backend *b, size_t bytes)
{
    cuda_backend *c = cu(b);
    void *p = NULL;
    cudaSetDevice(c->ordinal);
    if (cudaMalloc(&p, bytes ? bytes : 64) != cudaSuccess) {
        cudaGetLastError(); /* an allocation failure is the caller's to report */
        return NULL;
    }
    if (cudaMemsetAsync(p, 0, bytes ? bytes : 64, c->s) != cudaSuccess) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free(exsa_backend *b, void *p)
{
    (void)b;
    if (p)
        cudaFree(p);
}

static int cuda_prepare_weight(exsa_backend *b, exsa_tensor *w, void **owned, exsa_err *err)
{
    cuda_backend *c = cu(b);
    *owned = NULL;
    if (w->layout != EXSA_LAYOUT_ROWS)
        return exsa_err_set(err, EXSA_EINVAL, "cuda: weight '%s' is not in GGUF row layout",
                            w->name ? w->name : "?");
    if (w->type != EXSA_TYPE_F32 && !exsa_cuda_matmul_supports(w->type)) {
        const exsa_type_traits *tr = exsa_type_traits_get(w->type);
        return exsa_err_set(err, EXSA_EUNSUPPORTED, "cuda: weight '%s' has type %s, which the "
                            "CUDA backend cannot compute with", w->name ? w->name : "?",
                            tr && tr->name ? tr->name : "unknown");
    }
    const size_t bytes = w->row_bytes * (size_t)w->n_out;
    void *p = NULL;
    cudaSetDevice(c->ordinal);
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 64);
    if (e == cudaSuccess)
        e = cudaMemcpy(p, w->data, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        if (p)
            cudaFree(p);
        cudaGetLastError();
        return exsa_err_set(err, EXSA_ENOMEM, "cuda: cannot upload '%s' (%zu bytes): %s",
                            w->name ? w->name : "?", bytes, cudaGetErrorString(e));
    }
    w->data = p;
    *owned = p;
    return 0;
}

static void cuda_release(exsa_backend *b, void *owned)
{
    (void)b;
    cudaFree(owned);
}

static void cuda_set(exsa_backend *b, void *dst, const void *src, size_t bytes)
{
    cuda_backend *c = cu(b);
    if (!bytes)
        return;
    /* set starts every step (the batch metadata): the engine's thread
     * then issues to this GPU */
    cudaSetDevice(c->ordinal);
    /* From pageable memory the copy is staged before this returns, so src
     * may be reused at once (backend.h's promise). */
    note(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->s), "set");
}

static void cuda_get(exsa_backend *b, void *dst, const void *src, size_t bytes)
{
    cuda_backend *c = cu(b);
    if (!bytes)
        return;
    note(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->s), "get");
    note(c, cudaStreamSynchronize(c->s), "get");
}

static int cuda_sync(exsa_backend *b, exsa_err *err)
{
    cuda_backend *c = cu(b);
    note(c, cudaStreamSynchronize(c->s), "sync");
    if (c->first_err == cudaSuccess)
        return 0;
    exsa_err_set(err, EXSA_EIO, "cuda: %s failed: %s", c->first_what ? c->first_what : "an op",
                 cudaGetErrorString(c->first_err));
    /* Report once; a sticky fault will fail the next step again. */
    c->first_err = cudaSuccess;
    c->first_what = NULL;
    return EXSA_EIO;
}

static int cuda_mem_info(exsa_backend *b, size_t *free_b, size_t *total_b)
{
    cuda_backend *c = cu(b);
    cudaSetDevice(c->ordinal);
    if (cudaMemGetInfo(free_b, total_b) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    return 0;
}

/* ---- ops ---- */

static void cuda_get_rows(exsa_backend *b, const exsa_tensor *w, const int32_t *ids, int n,
                          float *out)
{
    cuda_backend *c = cu(b);
    note(c, exsa_cuda_get_rows(w->data, w->type, w->n_in, w->row_bytes, ids, n, 1.0f, out, c->s),
         "get_rows");
}

static void cuda_rms_norm(exsa_backend *b, const float *x, const float *w, float *y, int n_rows,
                          int dim, float eps)
{
    cuda_backend *c = cu(b);
    note(c, exsa_cuda_rms_norm(x, w, y, n_rows, dim, eps, c->s), "rms_norm");
}

static void mm(cuda_backend *c, const exsa_tensor *w, const float *x, float *y, int n_rows,
               int accumulate)
{
    const size_t need = exsa_cuda_matmul_scratch_bytes(w->type, w->n_in, w->n_out, n_rows);
    if (need && reserve(c, &c->mm, need) != 0)
        return;
    note(c, exsa_cuda_matmul(w->data, w->type, w->n_in, w->n_out, w->row_bytes, x, y, w->n_out,
                             n_rows, accumulate, c->mm.p, c->s),
         "matmul");
}

static void cuda_matmul(exsa_backend *b, const exsa_tensor *w, const float *x, float *y,
                        int n_rows)
{
    mm(cu(b), w, x, y, n_rows, 0);
}

static void cuda_matmul_multi(exsa_backend *b, const exsa_tensor *const *w, int n_w,
                              const float *x, float *const *y, int n_rows)
{
    for (int i = 0; i < n_w; i++)
        mm(cu(b), w[i], x, y[i], n_rows, 0);
}

static void cuda_matmul_fused(exsa_backend *b, const exsa_tensor *const *w, int n_w,
                              const float *x, float *const *y, int n_rows,
                              const exsa_matmul_fuse *f)
{
    cuda_backend *c = cu(b);
    const int64_t n_in = w[0]->n_in;
    const float *in = x;
    if (f->norm || f->up) {
        float *dst = f->scratch;
        if (!dst) {
            if (reserve(c, &c->in, (size_t)n_rows * (size_t)n_in * sizeof(float)) != 0)
                return;
            dst = c->in.p;
        }
        if (f->norm)
            note(c, exsa_cuda_rms_norm(x, f->norm, dst, n_rows, (int)n_in, f->eps, c->s),
                 "rms_norm");
        else
            note(c, exsa_cuda_swiglu(x, f->up, dst, (int64_t)n_rows * n_in, c->s), "swiglu");
        in = dst;
    }
    if (f->residual && n_w == 1) {
        mm(c, w[0], in, f->residual, n_rows, 1);
        return;
    }
    for (int i = 0; i < n_w; i++)
        mm(c, w[i], in, y[i], n_rows, 0);
    if (n_w == 3) {
        if (f->rope_q)
            note(c, exsa_cuda_rope(y[0], f->pos, f->rope_q, c->s), "rope");
        if (f->rope_k)
            note(c, exsa_cuda_rope(y[1], f->pos, f->rope_k, c->s), "rope");
        if (f->kv)
            note(c, exsa_cuda_kv_store(f->kv, y[1], y[2], f->slots, n_rows, c->s), "kv_store");
    }
}

static void cuda_add_bias(exsa_backend *b, float *y, const float *bias, int n_rows, int dim)
{
    cuda_backend *c = cu(b);
    note(c, exsa_cuda_add_bias(y, bias, n_rows, dim, c->s), "add_bias");
}

static void cuda_add(exsa_backend *b, float *y, const float *x, int64_t n)
{
    cuda_backend *c = cu(b);
    note(c, exsa_cuda_add(y, x, n, c->s), "add");
}

static void cuda_scale(exsa_backend *b, float *x, float s, int64_t n)
{
    cuda_backend *c = cu(b);
    note(c, exsa_cuda_scale(x, s, n, c->s), "scale");
}

static void cuda_rope(exsa_backend *b, float *x, const int32_t *pos, const exsa_rope_args *a)
{
    cuda_backend *c = cu(b);
    note(c, exsa_cuda_rope(x, pos, a, c->s), "rope");
}

static void cuda_softmax(exsa_backend *b, float *x, int n_rows, int n)
{
    cuda_backend *c = cu(b);
    note(c, exsa_cuda_softmax(x, n_rows, n, c->s), "softmax");
}

static void cuda_swiglu(exsa_backend *b, const float *gate, const float *up, float *out,
                        int64_t n)
{
    cuda_backend *c = cu(b);
    note(c, exsa_cuda_swiglu(gate, up, out, n, c->s), "swiglu");
}

static void cuda_geglu(exsa_backend *b, const float *gate, const float *up, float *out,
                       int64_t n)
{
    cuda_backend *c = cu(b);
    note(c, exsa_cuda_geglu(gate, up, out, n, c->s), "geglu");
}

static void cuda_kv_store(exsa_backend *b, const exsa_kv_layer *kv, const float *k,
                          const float *v, const int32_t *slots, int n_rows)
{
    cuda_backend *c = cu(b);
    note(c, exsa_cuda_kv_store(kv, k, v, slots, n_rows, c->s), "kv_store");
}

static void cuda_attention(exsa_backend *b, const exsa_attn_args *a)
{
    cuda_backend *c = cu(b);
    const size_t need = exsa_cuda_attention_scratch_bytes(a);
    if (need && reserve(c, &c->attn, need) != 0)
        return;
    note(c, exsa_cuda_attention(a, c->attn.p, c->s), "attention");
}

/* ---- recorded steps ---- */

static cuda_step *find_step(cuda_backend *c, uint64_t key)
{
    for (int i = 0; i < c->n_steps; i++)
        if (c->steps[i].key == key)
            return &c->steps[i];
    return NULL;
}

static int cuda_step_begin(exsa_backend *b, uint64_t key)
{
    cuda_backend *c = cu(b);
    if (getenv("EXSA_CUDA_GRAPHS") && strcmp(getenv("EXSA_CUDA_GRAPHS"), "0") == 0)
        return 0;
    cuda_step *st = find_step(c, key);
    if (!st) {
        if (c->n_steps == CUDA_MAX_STEPS)
            return 0;
        st = &c->steps[c->n_steps++];
        *st = (cuda_step){.key = key};
        return 0;
    }
    if (st->exec) {
        note(c, cudaGraphLaunch(st->exec, c->s), "graph launch");
        return 1;
    }
    if (st->runs < 1)
        return 0;
    if (cudaStreamBeginCapture(c->s, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        st->runs = -1;
        return 0;
    }
    c->capturing = 1;
    c->capture_broken = 0;
    return 0;
}

static void cuda_step_end(exsa_backend *b, uint64_t key)
{
    cuda_backend *c = cu(b);
    cuda_step *st = find_step(c, key);
    if (!c->capturing) {
        if (st && st->runs >= 0 && !st->exec)
            st->runs++;
        return;
    }
    c->capturing = 0;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->s, &g);
    cudaGraphExec_t exec = NULL;
    if (e == cudaSuccess && !c->capture_broken)
        e = cudaGraphInstantiate(&exec, g, 0);
    if (g)
        cudaGraphDestroy(g);
    if (e != cudaSuccess || c->capture_broken || !exec) {
        /* The step's ops were recorded, not run: fail it (the caller's
         * sync reports it) and never record this key again. */
        cudaGetLastError();
        if (exec)
            cudaGraphExecDestroy(exec);
        note(c, e != cudaSuccess ? e : cudaErrorStreamCaptureInvalidated, "graph capture");
        if (st)
            st->runs = -1;
        return;
    }
    st->exec = exec;
    note(c, cudaGraphLaunch(exec, c->s), "graph launch");
}

static void cuda_step_forget(exsa_backend *b, uint64_t owner)
{
    cuda_backend *c = cu(b);
    int k = 0;
    for (int i = 0; i < c->n_steps; i++) {
        if (c->steps[i].key >> 8 == owner) {
            if (c->steps[i].exec)
                cudaGraphExecDestroy(c->steps[i].exec);
            continue;
        }
        c->steps[k++] = c->steps[i];
    }
    c->n_steps = k;
}

static const exsa_backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .describe = cuda_describe,
    .host_memory = 0,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .prepare_weight = cuda_prepare_weight,
    .release = cuda_release,
    .set = cuda_set,
    .get = cuda_get,
    .sync = cuda_sync,
    .step_begin = cuda_step_begin,
    .step_end = cuda_step_end,
    .step_forget = cuda_step_forget,
    .mem_info = cuda_mem_info,
    .get_rows = cuda_get_rows,
    .rms_norm = cuda_rms_norm,
    .matmul = cuda_matmul,
    .matmul_multi = cuda_matmul_multi,
    .matmul_fused = cuda_matmul_fused,
    .add_bias = cuda_add_bias,
    .add = cuda_add,
    .scale = cuda_scale,
    .rope = cuda_rope,
    .softmax = cuda_softmax,
    .swiglu = cuda_swiglu,
    .geglu = cuda_geglu,
    .kv_store = cuda_kv_store,
    .attention = cuda_attention,
};

/* The kernels are built for compute capability 8.0 and 9.0 (and PTX for
 * 9.0 and later); anything older cannot run them. */
#define CUDA_MIN_MAJOR 8

int exsa_cuda_usable(const char **why)
{
    static char reason[320];
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        snprintf(reason, sizeof reason, "no usable GPU (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "no device");
        cudaGetLastError();
        if (why)
            *why = reason;
        return 0;
    }
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess && prop.major < CUDA_MIN_MAJOR) {
        snprintf(reason, sizeof reason,
                 "GPU 0 (%.120s) has compute capability %d.%d; Exsa's kernels need %d.0 or newer",
                 prop.name, prop.major, prop.minor, CUDA_MIN_MAJOR);
        if (why)
            *why = reason;
        return 0;
    }
    return 1;
}

exsa_backend *exsa_backend_cuda_create(int ordinal, exsa_err *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || ordinal < 0 || ordinal >= n) {
        cudaGetLastError();
        exsa_err_set(err, EXSA_EUNSUPPORTED, "cuda: no GPU %d (%s)", ordinal,
                     e != cudaSuccess ? cudaGetErrorString(e) : "fewer devices");
        return NULL;
    }
    struct cudaDeviceProp prop;
    if ((e = cudaSetDevice(ordinal)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&prop, ordinal)) != cudaSuccess) {
        cudaGetLastError();
        exsa_err_set(err, EXSA_EIO, "cuda: GPU %d: %s", ordinal, cudaGetErrorString(e));
        return NULL;
    }
    if (prop.major < CUDA_MIN_MAJOR) {
        exsa_err_set(err, EXSA_EUNSUPPORTED,
                     "cuda: GPU %d (%s) has compute capability %d.%d; Exsa needs %d.0 or newer",
                     ordinal, prop.name, prop.major, prop.minor, CUDA_MIN_MAJOR);
        return NULL;
    }
    cuda_backend *c = calloc(1, sizeof *c);
    if (!c) {
        exsa_err_set(err, EXSA_ENOMEM, "cuda: out of memory");
        return NULL;
    }
    c->base.ops = &cuda_ops;
    c->base.impl = c;
    c->ordinal = ordinal;
    if ((e = cudaStreamCreateWithFlags(&c->s, cudaStreamNonBlocking)) != cudaSuccess) {
        exsa_err_set(err, EXSA_EIO, "cuda: cannot create a stream: %s", cudaGetErrorString(e));
        free(c);
        return NULL;
    }
    snprintf(c->desc, sizeof c->desc, "cuda:%d %.120s", ordinal, prop.name);
    return &c->base;
}
