/* CPU backend: lifecycle, buffers, embedding rows and matmul.
 *
 * matmul converts each activation row once into the format the weight
 * type's dot kernel consumes (Q8_0 / Q8_K blocks for quantized weights, BF16
 * rows for BF16; the float rows as they are for F32/F16), then splits the output rows into
 * chunks over the pool. Each kernel call takes one weight row against a tile
 * of activation rows, so a weight row streams from memory once per tile and
 * the tile's quantized activations stay in L2. Tasks are ordered tile-major
 * so all threads work on the same tile at the same time.
 */
#include "backend/cpu/cpu_backend_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/cpu_repack.h"
#include "quant/quant.h"
#include "util/err.h"

/* Activation rows per kernel call: 64 rows of 4096 Q8_0 values are ~280 KB. */
#define ACT_TILE 64
/* Repacked kernels: activation rows per call (64 rows of 4096 values are
 * 320 KB of Q8_0s blocks or 299 KB of Q8_K, in L2 while the weight group
 * sits in L1). */
#define X8_TILE 64
/* Output rows per task, bounds. */
#define CHUNK_MIN 4
#define CHUNK_MAX 64
/* Batches of up to this many rows (decode) stream the weights in one span
 * per thread with stealing (run_spans); larger ones take claimed chunks. */
#ifndef X8_STREAM_ROWS
#define X8_STREAM_ROWS 8
#endif

/* ---- shared helpers ---------------------------------------------------- */

int cpu_reserve(void **buf, size_t *cap, size_t bytes)
{
    if (bytes <= *cap)
        return 0;
    size_t want = bytes + bytes / 4; /* headroom so slow growth does not realloc each time */
    if (want < bytes || want > SIZE_MAX - 63)
        want = bytes;
    if (bytes > SIZE_MAX - 63)
        return -1;
    want = (want + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, want);
    if (!p)
        return -1;
    free(*buf);
    *buf = p;
    *cap = want;
    return 0;
}

int cpu_tls_reserve(cpu_backend *c, size_t n)
{
    if (n <= c->tls_stride)
        return 0;
    if (n > SIZE_MAX - 15)
        return -1;
    size_t stride = (n + 15) & ~(size_t)15;
    size_t total;
    if (__builtin_mul_overflow(stride, (size_t)c->n_threads, &total) ||
        __builtin_mul_overflow(total, sizeof(float), &total))
        return -1;
    float *p = aligned_alloc(64, total);
    if (!p)
        return -1;
    free(c->tls);
    c->tls = p;
    c->tls_stride = stride;
    return 0;
}

typedef struct {
    cpu_range_fn fn;
    void *ctx;
    int64_t n, chunk;
} range_job;

static void range_task(void *vctx, int task, int thread)
{
    range_job *j = vctx;
    int64_t begin = (int64_t)task * j->chunk;
    int64_t end = begin + j->chunk < j->n ? begin + j->chunk : j->n;
    j->fn(j->ctx, begin, end, thread);
}

void cpu_parallel_for(cpu_backend *c, int64_t n, int64_t grain, cpu_range_fn fn, void *ctx)
{
    if (n <= 0)
        return;
    if (grain < 1)
        grain = 1;
    /* A few tasks per thread so uneven progress balances out. */
    const int T = exsa_threadpool_active(c->pool);
    int64_t max_tasks = (int64_t)T * 4;
    int64_t n_tasks = (n + grain - 1) / grain;
    if (n_tasks > max_tasks)
        n_tasks = max_tasks;
    if (n_tasks <= 1 || T == 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    int64_t chunk = (n + n_tasks - 1) / n_tasks;
    range_job j = {fn, ctx, n, chunk};
    exsa_threadpool_run(c->pool, range_task, &j, (int)((n + chunk - 1) / chunk));
}

void cpu_fill_nan(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = NAN;
}

/* ---- lifecycle and buffers ---------------------------------------------- */

static void cpu_destroy(exsa_backend *b)
{
    if (!b)
        return;
    cpu_backend *c = cpu_of(b);
    exsa_threadpool_free(c->pool);
    free(c->act);
    free(c->tls);
    free(c->spans);
    free(c->rope_freq);
    free(c->rope_tab);
    free(c->rope_key.factors);
    free(c->pf_spans);
    free(c->ts);
    free(c);
}

static const char *cpu_describe(const exsa_backend *b)
{
    return ((const cpu_backend *)b)->desc;
}

/* Buffers carry a 64-byte header saying how they were made. Large ones (the
 * KV pool) come from anonymous mmap: zero pages that become resident only
 * when first written, so start-up does not touch a pool of gigabytes and
 * an idle server's memory is what it has used. */
#define BUF_HEADER 64
#define BUF_MMAP_MIN ((size_t)1 << 20)
typedef struct {
    size_t total; /* bytes of the whole allocation, header included */
    int mapped;
} buf_header;

static void *cpu_alloc(exsa_backend *b, size_t bytes)
{
    (void)b;
    if (bytes > SIZE_MAX - 2 * 4096)
        return NULL;
    size_t n = (bytes ? (bytes + 63) & ~(size_t)63 : 64) + BUF_HEADER;
    char *base;
    int mapped = n >= BUF_MMAP_MIN;
    if (mapped) {
        base = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED)
            return NULL;
    } else {
        base = aligned_alloc(64, n);
        if (!base)
            return NULL;
        memset(base, 0, n);
    }
    buf_header h = {n, mapped};
    memcpy(base, &h, sizeof h);
    return base + BUF_HEADER;
}

static void cpu_free(exsa_backend *b, void *p)
{
    (void)b;
    if (!p)
        return;
    char *base = (char *)p - BUF_HEADER;
    buf_header h;
    memcpy(&h, base, sizeof h);
    if (h.mapped)
        munmap(base, h.total);
    else
        free(base);
}

/* Weights stay host memory: only the kernels' faster layouts change them
 * (exsa_cpu_repack); the repacked copy is the owned part. */
static int cpu_prepare_weight(exsa_backend *b, exsa_tensor *w, void **owned, exsa_err *err)
{
    (void)b;
    *owned = NULL;
    return exsa_cpu_repack(w, owned, err);
}

static void cpu_release(exsa_backend *b, void *owned)
{
    (void)b;
    free(owned);
}

/* The CPU posing as a device (exsa_backend_cpu_create_as_device): weights
 * are copied out of the mapping, as an upload would, then repacked. */
static int cpu_dev_prepare_weight(exsa_backend *b, exsa_tensor *w, void **owned, exsa_err *err)
{
    (void)b;
    *owned = NULL;
    const size_t bytes = w->row_bytes * (size_t)w->n_out;
    void *copy = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!copy)
        return exsa_err_set(err, EXSA_ENOMEM, "cpu device: out of memory");
    memcpy(copy, w->data, bytes);
    w->data = copy;
    void *re = NULL;
    int rc = exsa_cpu_repack(w, &re, err);
    if (rc) {
        free(copy);
        return rc;
    }
    if (re) {
        free(copy);
        copy = re;
    }
    *owned = copy;
    return 0;
}

static void cpu_set(exsa_backend *b, void *dst, const void *src, size_t bytes)
{
    (void)b;
    if (bytes && dst != src)
        memcpy(dst, src, bytes);
}

static int cpu_sync(exsa_backend *b, exsa_err *err)
{
    (void)b;
    (void)err;
    return 0; /* every op has finished when it returns */
}

/* ---- get_rows ------------------------------------------------------------ */

typedef struct {
    cpu_backend *c;
    const exsa_tensor *emb;
    const exsa_type_traits *tr;
    const int32_t *ids;
    float *out;
} rows_job;

static void rows_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    rows_job *j = vctx;
    const exsa_tensor *e = j->emb;
    int64_t n_in = e->n_in;
    for (int64_t i = begin; i < end; i++) {
        float *dst = j->out + i * n_in;
        int32_t id = j->ids[i];
        /* An id past the table is the model layer's bug; never read outside
         * the mapping for it. */
        if (id < 0 || id >= e->n_out) {
            memset(dst, 0, (size_t)n_in * sizeof *dst);
            continue;
        }
        const char *src = (const char *)e->data + (size_t)id * e->row_bytes;
        if (e->layout != EXSA_LAYOUT_ROWS) {
            /* the row back in GGUF form in this thread's scratch */
            float *tmp = cpu_tls(j->c, thread);
            exsa_cpu_repacked_row(e, id, tmp);
            src = (const char *)tmp;
        }
        if (e->type == EXSA_TYPE_F32)
            memcpy(dst, src, (size_t)n_in * sizeof *dst);
        else if (e->type == EXSA_TYPE_F16)
            j->c->k->f16_to_f32((const exsa_fp16 *)src, dst, n_in);
        else if (j->tr && j->tr->to_float)
            j->tr->to_float(src, dst, n_in);
        else
            cpu_fill_nan(dst, n_in);
    }
}

static void cpu_get_rows(exsa_backend *b, const exsa_tensor *emb, const int32_t *ids, int n,
                         float *out)
{
    cpu_backend *c = cpu_of(b);
    if (n <= 0 || emb->n_in <= 0)
        return;
    if (emb->layout != EXSA_LAYOUT_ROWS &&
        cpu_tls_reserve(c, emb->row_bytes / sizeof(float) + 1) != 0) {
        cpu_fill_nan(out, (int64_t)n * emb->n_in);
        return;
    }
    rows_job j = {c, emb, exsa_type_traits_get(emb->type), ids, out};
    int64_t grain = CPU_PAR_MIN_ELEMS / emb->n_in + 1;
    cpu_parallel_for(c, n, grain, rows_range, &j);
}

/* ---- matmul --------------------------------------------------------------- */

typedef void (*act_quant_fn)(const float *x, void *y, int64_t n);

typedef struct {
    act_quant_fn quant;
    const float *x;
    int64_t n_in;
    char *act;
    size_t act_stride;
} quant_job;

static void quant_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    quant_job *j = vctx;
    for (int64_t r = begin; r < end; r++)
        j->quant(j->x + r * j->n_in, j->act + (size_t)r * j->act_stride, j->n_in);
}

/* ---- decode spans ---------------------------------------------------------- */

/* A decode matmul's output rows in units (a few kernel calls each): thread
 * t streams span t front to back, one stream per thread as whole halves
 * did, then takes units from the back of the other spans, so a thread whose
 * stream ran slower no longer holds the op's end alone (1.1B tg64 +3-5%,
 * pool waits 15% -> 5% of a decode step's samples). */
typedef void (*cpu_unit_fn)(const void *ctx, int u, int n, int thread);
/* Work a thread does once before its first unit (its copy of the
 * activation rows), or NULL. */
typedef void (*cpu_prologue_fn)(const void *ctx, int thread);

/* Claims units of span s: from the front a quarter of what is left (at
 * least one unit; the owner), from the back one unit (a thief). A handful
 * of atomics per span (each lock cmpxchg cost 2.4% of a decode step when
 * claims were 2 units) and a tail fine enough to end together. Returns the
 * units claimed, the first in *u; 0 when the span is empty. */
static int span_take(cpu_span *s, int from_back, int *u)
{
    uint64_t v = atomic_load_explicit(&s->fb, memory_order_relaxed);
    for (;;) {
        const uint32_t f = (uint32_t)v, b = (uint32_t)(v >> 32);
        if (f >= b)
            return 0;
        const uint32_t n = from_back || (b - f) < 4 ? 1 : (b - f) / 4;
        const uint32_t first = from_back ? b - n : f;
        const uint64_t rest = from_back ? (uint64_t)(b - n) << 32 | f : (uint64_t)b << 32 | (f + n);
        if (atomic_compare_exchange_weak_explicit(&s->fb, &v, rest, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *u = (int)first;
            return (int)n;
        }
    }
}

typedef struct {
    cpu_span *spans;
    int n_spans;
    cpu_unit_fn fn;
    cpu_prologue_fn prologue;
    cpu_unit_fn finish; /* or NULL */
    const void *ctx;
} span_job;

/* The prologue waits for a first claim: a thread that wakes after the
 * others took every unit does no work at all. */
static void span_run(const span_job *j, int u, int n, int thread, int *ready)
{
    if (!*ready) {
        j->prologue(j->ctx, thread);
        *ready = 1;
    }
    j->fn(j->ctx, u, n, thread);
}

/* The finish of each claim runs after the next claim: a claim is a locked
 * instruction, which waits until this thread's earlier stores are done,
 * and the finish's stores (the residual rows, which the other thread read
 * in its prologue) each wait for that thread's copy to be invalidated; so
 * they drain while the next units compute instead of inside the claim. */
static void span_task(void *vctx, int task, int thread)
{
    const span_job *j = vctx;
    int u, n, ready = !j->prologue, pu = 0, pn = 0;
    for (int k = 0; k < j->n_spans; k++) {
        cpu_span *s = &j->spans[(task + k) % j->n_spans];
        while ((n = span_take(s, k > 0, &u)) > 0) {
            if (pn && j->finish)
                j->finish(j->ctx, pu, pn, thread);
            span_run(j, u, n, thread, &ready);
            pu = u;
            pn = n;
        }
    }
    if (pn && j->finish)
        j->finish(j->ctx, pu, pn, thread);
}

/* fn over units [0, units) in one span per thread taking part (the pool's
 * size, or one while it runs alone), span t offered to thread t first
 * (run_each: the task of a thread the kernel keeps off the CPU is taken by
 * another, which then claims that span as its owner would);
 * units <= INT32_MAX. */
static void run_spans(cpu_backend *c, int64_t units, cpu_unit_fn fn, cpu_prologue_fn prologue,
                      cpu_unit_fn finish, const void *ctx)
{
    const int T = exsa_threadpool_active(c->pool);
    for (int t = 0; t < T; t++) {
        const uint64_t f = (uint64_t)(units * t / T);
        const uint64_t b = (uint64_t)(units * (t + 1) / T);
        atomic_store_explicit(&c->spans[t].fb, b << 32 | f, memory_order_relaxed);
    }
    span_job j = {c->spans, T, fn, prologue, finish, ctx};
    exsa_threadpool_run_each(c->pool, span_task, &j);
}

typedef struct {
    exsa_dot_fn dot;
    const exsa_tensor *w;
    const char *act;
    size_t act_stride;
    int n_act;       /* activation rows in this pass */
    int n_chunks;    /* output-row chunks per tile */
    int chunk_rows;
    float *y;        /* first output row of this pass */
} dot_job;

static void dot_task(void *vctx, int task, int thread)
{
    (void)thread;
    dot_job *j = vctx;
    const exsa_tensor *w = j->w;
    int tile = task / j->n_chunks, chunk = task % j->n_chunks;
    int j0 = tile * ACT_TILE;
    int nj = j->n_act - j0 < ACT_TILE ? j->n_act - j0 : ACT_TILE;
    int64_t o0 = (int64_t)chunk * j->chunk_rows;
    int64_t o1 = o0 + j->chunk_rows < w->n_out ? o0 + j->chunk_rows : w->n_out;
    const char *act = j->act + (size_t)j0 * j->act_stride;
    float *y = j->y + (size_t)j0 * (size_t)w->n_out;
    for (int64_t o = o0; o < o1; o++)
        j->dot((int)w->n_in, (const char *)w->data + (size_t)o * w->row_bytes, act, j->act_stride,
               nj, y + o, (size_t)w->n_out);
}

/* Decode unit of the row layouts: 8 output rows (one tile of activations:
 * decode batches are at most X8_STREAM_ROWS <= ACT_TILE rows). */
#define UNIT_ROWS 8

static void dot_units(const void *ctx, int u, int n, int thread)
{
    (void)thread;
    const dot_job *j = ctx;
    const exsa_tensor *w = j->w;
    const int64_t o0 = (int64_t)u * UNIT_ROWS, o_end = (int64_t)(u + n) * UNIT_ROWS;
    const int64_t o1 = o_end < w->n_out ? o_end : w->n_out;
    for (int64_t o = o0; o < o1; o++)
        j->dot((int)w->n_in, (const char *)w->data + (size_t)o * w->row_bytes, j->act,
               j->act_stride, j->n_act, j->y + o, (size_t)w->n_out);
}

/* Weights of one layout that share their input, multiplied in one pass. */
#define X8_MAX_W 3

typedef struct {
    const exsa_cpu_kernels *k;
    int n_w;
    const exsa_tensor *w[X8_MAX_W];
    size_t group_bytes[X8_MAX_W]; /* one 8-row group of the repacked weights */
    int chunk_groups[X8_MAX_W];
    int chunk_end[X8_MAX_W]; /* chunks of weights 0..i, summed */
    float *y[X8_MAX_W];
    const char *act;   /* activation rows all threads share */
    size_t act_stride;
    int n_act;
    int n_chunks; /* of all weights */
    int64_t unit_end[X8_MAX_W]; /* decode: UNIT_GROUPS units of weights 0..i, summed */
    /* decode: each thread converts the rows itself (x8_prologue) into its
     * slice of act_buf, act_slice bytes apart (0: all share act) */
    cpu_backend *c;
    const float *x;
    const float *norm; /* rms_norm weight, or NULL */
    float eps;
    act_quant_fn quant;
    char *act_buf;
    size_t act_slice;
    const float *up; /* swiglu's up rows (x the gate), or NULL */
    float *residual;
    /* decode q, k, v: rope on the rows a unit wrote of the weights in
     * rope_mask (bit i: weight i), angles rope_tab ([n_act][rope_n_rot]:
     * cos, then sin); then weights 1 and 2 (K, V) into the cache, kv NULL:
     * none */
    unsigned rope_mask;
    const float *rope_tab;
    int rope_n_rot, rope_hd;
    const exsa_kv_layer *kv;
    const int32_t *slots;
    int prefetch; /* c->pf_spans hold the next attention's K and V */
} x8_job;

/* Whether the table has the kernel of w's repacked layout. */
static int x8_has_kernel(const exsa_cpu_kernels *k, const exsa_tensor *w)
{
    switch (w->layout) {
    case EXSA_LAYOUT_Q4_0X8: return k->gemm_q4_0x8 != NULL;
    case EXSA_LAYOUT_Q4_1X8: return k->gemm_q4_1x8 != NULL;
    case EXSA_LAYOUT_Q5_0X8: return k->gemm_q5_0x8 != NULL;
    case EXSA_LAYOUT_Q5_1X8: return k->gemm_q5_1x8 != NULL;
    case EXSA_LAYOUT_Q4_KX8: return k->gemm_q4_Kx8 != NULL;
    case EXSA_LAYOUT_FX8:
        return w->type == EXSA_TYPE_BF16 ? k->gemm_bf16 != NULL : k->gemm_fx != NULL;
    case EXSA_LAYOUT_Q8_0X8: return k->gemm_q8_0x8 != NULL;
    case EXSA_LAYOUT_Q6_KX8: return k->gemm_q6_Kx8 != NULL;
    default: return 0;
    }
}

/* One 8-row group of a repacked block layout against nj activation rows. */
static void x8_group(const exsa_cpu_kernels *k, int layout, int n, const void *wg,
                     const char *act, size_t as, int nj, float *y, size_t os)
{
    const exsa_block_q8_0s *aq = (const exsa_block_q8_0s *)act;
    switch (layout) {
    case EXSA_LAYOUT_Q4_0X8: k->gemm_q4_0x8(n, wg, aq, as, nj, y, os); break;
    case EXSA_LAYOUT_Q4_1X8: k->gemm_q4_1x8(n, wg, aq, as, nj, y, os); break;
    case EXSA_LAYOUT_Q5_0X8: k->gemm_q5_0x8(n, wg, aq, as, nj, y, os); break;
    case EXSA_LAYOUT_Q5_1X8: k->gemm_q5_1x8(n, wg, aq, as, nj, y, os); break;
    case EXSA_LAYOUT_Q8_0X8:
        k->gemm_q8_0x8(n, wg, (const exsa_block_q8_0a *)act, as, nj, y, os);
        break;
    case EXSA_LAYOUT_Q4_KX8:
        k->gemm_q4_Kx8(n, wg, (const exsa_block_q8_K *)act, as, nj, y, os);
        break;
    case EXSA_LAYOUT_Q6_KX8:
        k->gemm_q6_Kx8(n, wg, (const exsa_block_q8_K *)act, as, nj, y, os);
        break;
    default: break;
    }
}

/* K-quant layouts: super-blocks of 256 and Q8_K activations. */
static int x8_is_k(int layout)
{
    return layout == EXSA_LAYOUT_Q4_KX8 || layout == EXSA_LAYOUT_Q6_KX8;
}

/* Elements per block column of w's repacked layout (for float weights 1,
 * BF16 in pairs 2). */
static int64_t x8_block(const exsa_tensor *w)
{
    if (w->layout == EXSA_LAYOUT_FX8)
        return w->type == EXSA_TYPE_BF16 ? 2 : 1;
    return x8_is_k(w->layout) ? EXSA_QK_K : 32;
}

/* The table's two-group form of a layout, NULL if it has none. */
static exsa_gemm_x16_fn x16_kernel(const exsa_cpu_kernels *k, int layout)
{
    switch (layout) {
    case EXSA_LAYOUT_Q4_0X8: return k->gemm_q4_0x16;
    case EXSA_LAYOUT_Q8_0X8: return k->gemm_q8_0x16;
    case EXSA_LAYOUT_Q4_KX8: return k->gemm_q4_Kx16;
    case EXSA_LAYOUT_Q6_KX8: return k->gemm_q6_Kx16;
    default: return NULL;
    }
}

/* Groups [g0, g1) of weight i against activation tile j0 of act. */
static void x8_run(const x8_job *j, int i, const char *act, int j0, int64_t g0, int64_t g1)
{
    const exsa_tensor *w = j->w[i];
    int nj = j->n_act - j0 < X8_TILE ? j->n_act - j0 : X8_TILE;
    act += (size_t)j0 * j->act_stride;
    const char *wd = w->data;
    const size_t gb = j->group_bytes[i], os = (size_t)w->n_out;
    float *y = j->y[i] + (size_t)j0 * os;
    if (w->layout == EXSA_LAYOUT_FX8) {
        /* decode: 4 groups give a lone row 4 independent FMA chains;
         * batches: the table's tile (kernels.h fx_batch_groups) */
        const int gmax = nj <= 3 ? 4 : (int)j->k->fx_batch_groups;
        for (int64_t g = g0; g < g1; g += gmax) {
            const int ng = g1 - g < gmax ? (int)(g1 - g) : gmax;
            if (w->type == EXSA_TYPE_BF16)
                j->k->gemm_bf16((int)w->n_in, wd + (size_t)g * gb, gb, ng,
                                (const exsa_bf16 *)act, j->act_stride, nj, y + 8 * g, os);
            else
                j->k->gemm_fx(w->type, (int)w->n_in, wd + (size_t)g * gb, gb, ng,
                              (const float *)act, j->act_stride, nj, y + 8 * g, os);
        }
        return;
    }
    int64_t g = g0;
    exsa_gemm_x16_fn x16 = x16_kernel(j->k, w->layout);
    /* A Q4_K group decoded for fewer than 4 rows is cheaper in the x8
     * kernel (tg128 1.1B Q4_K_M: x8 51-58 t/s, x16 42-48, interleaved;
     * again with both prefetching into the next call: 69.4 / 62.7);
     * Q6_K's two-group form is the faster one at any batch (1.1B Q6_K
     * tg64 +5%). Both give the same bits, so the choice may follow the
     * batch. */
    const int x8_decode = w->layout == EXSA_LAYOUT_Q4_KX8 && nj < 4;
    /* decode: four groups per call where the table has that form */
    exsa_gemm_x16_fn x32 = nj != 1                               ? NULL
                           : w->layout == EXSA_LAYOUT_Q4_0X8 ? j->k->gemm_q4_0x32
                           : w->layout == EXSA_LAYOUT_Q8_0X8 ? j->k->gemm_q8_0x32
                                                             : NULL;
    if (x32)
        for (; g + 4 <= g1; g += 4)
            x32((int)w->n_in, wd + (size_t)g * gb, gb, act, j->act_stride, nj, y + 8 * g, os);
    if (x16 && !x8_decode)
        for (; g + 2 <= g1; g += 2)
            x16((int)w->n_in, wd + (size_t)g * gb, gb, act, j->act_stride, nj, y + 8 * g, os);
    for (; g < g1; g++)
        x8_group(j->k, w->layout, (int)w->n_in, wd + (size_t)g * gb, act, j->act_stride, nj,
                 y + 8 * g, os);
}

static void x8_task(void *vctx, int task, int thread)
{
    (void)thread;
    x8_job *j = vctx;
    int tile = task / j->n_chunks, chunk = task % j->n_chunks, i = 0;
    while (chunk >= j->chunk_end[i])
        i++;
    if (i > 0)
        chunk -= j->chunk_end[i - 1];
    int64_t n_groups = j->w[i]->n_out / 8;
    int64_t g0 = (int64_t)chunk * j->chunk_groups[i];
    int64_t g1 = g0 + j->chunk_groups[i] < n_groups ? g0 + j->chunk_groups[i] : n_groups;
    x8_run(j, i, j->act, tile * X8_TILE, g0, g1);
}

/* Decode unit of the repacked layouts: one four-group call, 32 rows. */
#define UNIT_GROUPS 4

/* A decode thread's own activation rows: x (normalized first when the job
 * has a norm) converted into the layout's format. Each thread doing all
 * rows costs no more wall time than one thread doing them while the other
 * waits, and no serial op sits between two pool runs. */
static void x8_prologue(const void *ctx, int thread)
{
    const x8_job *j = ctx;
    char *act = j->act_buf + (size_t)thread * j->act_slice;
    const int64_t n_in = j->w[0]->n_in;
    for (int r = 0; r < j->n_act; r++) {
        const float *xr = j->x + (size_t)r * (size_t)n_in;
        char *ar = act + (size_t)r * j->act_stride;
        float *t = j->quant ? cpu_tls(j->c, thread) : (float *)ar;
        if (j->norm) {
            cpu_rms_norm_row(j->k, xr, j->norm, t, (int)n_in, j->eps);
            xr = t;
        } else if (j->up) {
            j->k->swiglu(xr, j->up + (size_t)r * (size_t)n_in, t, n_in);
            xr = t;
        }
        if (j->quant)
            j->quant(xr, ar, n_in);
    }
}

/* Most bytes of one sequence's context, and of all, that a q, k, v run
 * fetches ahead (into L2 where they fit, else the L3 the weights stream
 * through): beyond them the attention tasks fetch their next chunk
 * themselves as they go. 110M tg128 attention -13% (256 KB) -> -25%. */
#define PF_SEQ_BYTES (1024 * 1024)
#define PF_ALL_BYTES (4 * 1024 * 1024)

/* Where thread t's part of attention a lies in each token row: the bytes
 * of the heads it runs where the attention splits statically
 * (cpu_attn_thread_bytes), else whole rows of every T-th block. */
static void pf_thread_part(const cpu_backend *c, const exsa_attn_args *a, int t, int split,
                           size_t *lo, size_t *hi)
{
    *lo = 0;
    *hi = a->kv->token_bytes;
    if (split)
        cpu_attn_thread_bytes(c, a, t, lo, hi);
}

/* The K and V context attention a reads first, as spans (a block's rows,
 * each thread's part of them), thread by thread, one sequence once
 * however many query rows it has; and the lines each unit of a run of
 * `units` should fetch so that the threads are done by the run's middle.
 * Each thread fetches what it will read itself, into its own L2 where it
 * fits. 0, or -1 when there is nothing to fetch or no memory. */
static int kv_prefetch_plan(cpu_backend *c, const exsa_attn_args *a, int64_t units)
{
    const exsa_kv_layer *kv = a->kv;
    const int T = c->n_threads;
    if (!kv || kv->block_size <= 0 || kv->token_bytes == 0 || units <= 0)
        return -1;
    size_t lo, hi;
    const int split = cpu_attn_thread_bytes(c, a, 0, &lo, &hi);
    size_t n = 0, max_lines = 0;
    for (int pass = 0; pass < 2; pass++) {
        n = 0;
        for (int t = 0; t < T; t++) {
            pf_thread_part(c, a, t, split, &lo, &hi);
            size_t lines = 0, all = 0;
            if (pass)
                c->ts[t].pf_span = (int)n;
            for (int r = 0; r < a->n_rows && hi > lo && all < PF_ALL_BYTES / 2; r++) {
                int seen = 0;
                for (int q = 0; q < r && !seen; q++)
                    seen = a->row_tab[q] == a->row_tab[r];
                if (seen)
                    continue;
                int64_t left = a->n_ctx[r] > 0 ? a->n_ctx[r] : 0;
                /* a windowed row reads from its window's first block on */
                const int64_t b0 = a->window > 0 && left > a->window
                                       ? (left - a->window) / kv->block_size : 0;
                left -= b0 * kv->block_size;
                const int64_t cap = (int64_t)(PF_SEQ_BYTES / 2 / kv->token_bytes);
                left = left < cap ? left : cap;
                all += (size_t)left * kv->token_bytes;
                for (int b = (int)b0; left > 0; b++) {
                    const int rows = left < kv->block_size ? (int)left : kv->block_size;
                    left -= rows;
                    if (!split && b % T != t)
                        continue;
                    if (pass) {
                        const size_t off = (size_t)exsa_attn_row_table(a, r)[b] * (size_t)kv->block_size *
                                           kv->token_bytes + lo;
                        c->pf_spans[n] = (cpu_pf_span){(const char *)kv->k + off, hi - lo, rows};
                        c->pf_spans[n + 1] = (cpu_pf_span){(const char *)kv->v + off, hi - lo, rows};
                    }
                    n += 2;
                    lines += 2 * (size_t)rows * ((hi - lo + 63) / 64 + 1);
                }
            }
            if (pass)
                c->ts[t].pf_end = (int)n;
            max_lines = lines > max_lines ? lines : max_lines;
        }
        if (!pass && (n == 0 || n > INT32_MAX ||
                      cpu_reserve((void **)&c->pf_spans, &c->pf_cap, n * sizeof *c->pf_spans) != 0))
            return -1;
    }
    c->pf_stride = kv->token_bytes;
    const size_t per_thread_units = (size_t)(units / T > 0 ? units / T : 1);
    c->pf_lines_per_unit = (int)((2 * max_lines + per_thread_units - 1) / per_thread_units);
    for (int t = 0; t < T; t++)
        c->ts[t].pf_row = 0, c->ts[t].pf_off = 0;
    return 0;
}

/* This thread's next n_units * pf_lines_per_unit lines of the plan. */
static void kv_prefetch(cpu_backend *c, int thread, int n_units)
{
    cpu_thread_state *ts = &c->ts[thread];
    int lines = n_units * c->pf_lines_per_unit;
    while (lines > 0 && ts->pf_span < ts->pf_end) {
        const cpu_pf_span *s = &c->pf_spans[ts->pf_span];
        const char *row = s->p + (size_t)ts->pf_row * c->pf_stride;
        for (; ts->pf_off < s->bytes && lines > 0; ts->pf_off += 64, lines--)
            __builtin_prefetch(row + ts->pf_off, 0, 2);
        if (ts->pf_off < s->bytes)
            break;
        __builtin_prefetch(row + s->bytes - 1, 0, 2); /* a slice's last line */
        ts->pf_off = 0;
        if (++ts->pf_row == s->rows) {
            ts->pf_row = 0;
            ts->pf_span++;
        }
    }
}

/* Calls fn(j, i, g0, g1, act) for each weight i that units [u, u + n) of
 * the job's weights laid end to end cover: its groups [g0, g1). */
typedef void (*x8_part_fn)(const x8_job *j, int i, int64_t g0, int64_t g1, const char *act);
static void x8_each(const x8_job *j, int u, int n, x8_part_fn fn, const char *act)
{
    const int u1 = u + n;
    for (int i = 0; i < j->n_w && u < u1; i++) {
        const int64_t start = i ? j->unit_end[i - 1] : 0, end = j->unit_end[i];
        if (u >= end)
            continue;
        const int b = u1 < end ? u1 : (int)end;
        const int64_t n_groups = j->w[i]->n_out / 8;
        const int64_t g0 = (int64_t)(u - start) * UNIT_GROUPS, g1m = (int64_t)(b - start) * UNIT_GROUPS;
        fn(j, i, g0, g1m < n_groups ? g1m : n_groups, act);
        u = b;
    }
}

static void x8_compute(const x8_job *j, int i, int64_t g0, int64_t g1, const char *act)
{
    x8_run(j, i, act, 0, g0, g1);
}

/* A unit's rows after the matmul: the residual add, rope, the K/V store. */
static void x8_epilogue(const x8_job *j, int i, int64_t g0, int64_t g1, const char *act)
{
    (void)act;
    const size_t os = (size_t)j->w[i]->n_out;
    if (j->residual) /* n_w == 1 */
        for (int r = 0; r < j->n_act; r++)
            j->k->add_f32(j->residual + (size_t)r * os + (size_t)g0 * 8,
                          j->y[i] + (size_t)r * os + (size_t)g0 * 8, (g1 - g0) * 8);
    if (j->rope_mask >> i & 1)
        for (int r = 0; r < j->n_act; r++) {
            const float *cs = j->rope_tab + (size_t)r * (size_t)j->rope_n_rot;
            cpu_rope_normal(j->y[i] + (size_t)r * os, g0 * 8, g1 * 8, j->rope_hd, j->rope_n_rot,
                            cs, cs + j->rope_n_rot / 2);
        }
    if (j->kv && i > 0) /* n_w == 3: K, V; units start at multiples of 32 rows */
        for (int r = 0; r < j->n_act; r++)
            if (j->slots[r] >= 0)
                cpu_kv_store_span(j->k, j->kv, i == 2, j->y[i] + (size_t)r * os, j->slots[r],
                                  g0 * 8, g1 * 8);
}

/* Units [u, u + n) of the job's weights laid end to end. */
static void x8_units(const void *ctx, int u, int n, int thread)
{
    const x8_job *j = ctx;
    x8_each(j, u, n, x8_compute,
            j->act_slice ? j->act_buf + (size_t)thread * j->act_slice : j->act);
}

/* What follows units [u, u + n) once the next claim is made (span_task):
 * the epilogue works on the rows the units just wrote, still in this
 * core's cache; then this thread's share of the K/V prefetch. */
static void x8_finish(const void *ctx, int u, int n, int thread)
{
    const x8_job *j = ctx;
    if (j->residual || j->rope_mask || j->kv)
        x8_each(j, u, n, x8_epilogue, NULL);
    if (j->prefetch)
        kv_prefetch(j->c, thread, n);
}

/* Reserves the activation buffer for as many rows of act_stride bytes as
 * possible, all n_rows at once unless memory is short (then halving).
 * Returns the rows per pass, 0 when not even one fits. */
static int act_rows_per_pass(cpu_backend *c, size_t act_stride, int n_rows)
{
    int rows = n_rows;
    while (rows > 0) {
        size_t need;
        if (!__builtin_mul_overflow(act_stride, (size_t)rows, &need) &&
            cpu_reserve(&c->act, &c->act_cap, need) == 0)
            break;
        rows /= 2;
    }
    return rows;
}

/* Whether matmul_x8 can take w (its layout has a kernel and the shape
 * fits it); otherwise its outputs are NaN. */
static int x8_fits(const cpu_backend *c, const exsa_tensor *w)
{
    const int64_t block = x8_block(w);
    return x8_has_kernel(c->k, w) && w->n_in > 0 && w->n_in <= INT32_MAX &&
           w->n_in % block == 0 && w->n_out > 0 && w->n_out % 8 == 0;
}

/* Repacked weights (EXSA_LAYOUT_*X8), n_w (1..X8_MAX_W) of one layout, type
 * and input size, all of them valid (x8_fits): activations quantized once per
 * pass into the layout's activation format (Q8_0s / Q8_0a / Q8_K / BF16;
 * F32 and F16 weights take the rows as they are), then one pool run of tasks (activation
 * tile, weight, chunk of 8-row groups), tile-major as for the row layout.
 * Several weights (q, k, v; gate, up) in one run share the quantized input
 * and one wait for the pool instead of one each. */
static void matmul_x8_decode(cpu_backend *c, x8_job *d, const float *x, float *const *y,
                             int n_rows, const exsa_matmul_fuse *f);

static void matmul_x8(cpu_backend *c, const exsa_tensor *const *ws, int n_w, const float *x,
                      float *const *y, int n_rows, const exsa_matmul_fuse *f)
{
    const exsa_tensor *w0 = ws[0];
    const int64_t n_in = w0->n_in;
    const int is_k = x8_is_k(w0->layout), is_q8 = w0->layout == EXSA_LAYOUT_Q8_0X8;
    /* F32 / F16 weights take the float rows as they are; BF16 weights
     * BF16 rows (their vec_dot_type). */
    const int is_bf16 = w0->layout == EXSA_LAYOUT_FX8 && w0->type == EXSA_TYPE_BF16;
    const int is_f = w0->layout == EXSA_LAYOUT_FX8 && !is_bf16;
    const int64_t block = x8_block(w0);
    size_t act_stride = is_f      ? (size_t)n_in * sizeof(float)
                        : is_bf16 ? (size_t)n_in * sizeof(exsa_bf16)
                        : is_k    ? exsa_type_row_size(EXSA_TYPE_Q8_K, n_in)
                                  : (size_t)(n_in / 32) * (is_q8 ? sizeof(exsa_block_q8_0a)
                                                                 : sizeof(exsa_block_q8_0s));
    if (!is_f)
        act_stride = (act_stride + 63) & ~(size_t)63;
    /* The layout's activation rows: BF16; Q8_K; Q8_0 with the float scale
     * plus the sum of the values (Q4_x / Q5_x offsets) or their magnitudes
     * (repacked Q8_0). None for F32 / F16. */
    const act_quant_fn quant = is_f      ? NULL
                               : is_bf16 ? exsa_type_traits_get(EXSA_TYPE_BF16)->from_float
                               : is_k    ? c->k->quantize_q8_K
                               : is_q8   ? c->k->quantize_q8_0a
                                         : c->k->quantize_q8_0s;
    x8_job d = {.k = c->k, .n_w = n_w, .act_stride = act_stride, .c = c, .quant = quant};
    int n_chunks = 0;
    for (int i = 0; i < n_w; i++) {
        const exsa_tensor *w = ws[i];
        int64_t n_groups = w->n_out / 8;
        int chunk_groups = (int)(n_groups / ((int64_t)c->n_threads * 4));
        if (chunk_groups < 1)
            chunk_groups = 1;
        if (chunk_groups > CHUNK_MAX / 8)
            chunk_groups = CHUNK_MAX / 8;
        if (x16_kernel(c->k, w->layout) && chunk_groups % 2) /* whole pairs per task */
            chunk_groups++;
        d.unit_end[i] = (i ? d.unit_end[i - 1] : 0) + (n_groups + UNIT_GROUPS - 1) / UNIT_GROUPS;
        d.w[i] = w;
        d.chunk_groups[i] = chunk_groups;
        n_chunks += (int)((n_groups + chunk_groups - 1) / chunk_groups);
        d.chunk_end[i] = n_chunks;
        d.group_bytes[i] = w->layout == EXSA_LAYOUT_FX8
                               ? (size_t)8 * (size_t)n_in * (w->type == EXSA_TYPE_F32 ? 4 : 2)
                               : (size_t)(n_in / block) * exsa_cpu_repacked_col_bytes(w->layout);
    }
    d.n_chunks = n_chunks;
    if (n_rows <= X8_STREAM_ROWS && d.unit_end[n_w - 1] <= INT32_MAX) {
        matmul_x8_decode(c, &d, x, y, n_rows, f);
        return;
    }
    int rows_per_pass = is_f ? n_rows : act_rows_per_pass(c, act_stride, n_rows);
    if (rows_per_pass == 0) {
        for (int i = 0; i < n_w; i++)
            cpu_fill_nan(y[i], (int64_t)n_rows * ws[i]->n_out);
        return;
    }
    for (int r0 = 0; r0 < n_rows; r0 += rows_per_pass) {
        int nr = n_rows - r0 < rows_per_pass ? n_rows - r0 : rows_per_pass;
        const float *xr = x + (size_t)r0 * (size_t)n_in;
        const char *act = is_f ? (const char *)xr : c->act;
        if (quant) {
            quant_job q = {quant, xr, n_in, c->act, act_stride};
            cpu_parallel_for(c, nr, CPU_PAR_MIN_ELEMS / n_in + 1, quant_range, &q);
        }
        int n_tiles = (nr + X8_TILE - 1) / X8_TILE;
        d.act = act;
        d.n_act = nr;
        for (int i = 0; i < n_w; i++)
            d.y[i] = y[i] + (size_t)r0 * (size_t)ws[i]->n_out;
        int64_t n_tasks = (int64_t)n_tiles * n_chunks;
        if (n_tasks > INT32_MAX) {
            for (int i = 0; i < n_w; i++)
                cpu_fill_nan(d.y[i], (int64_t)nr * ws[i]->n_out);
            continue;
        }
        exsa_threadpool_run(c->pool, x8_task, &d, (int)n_tasks);
    }
}

/* Decode (n_rows <= X8_STREAM_ROWS): one span run; each thread prepares
 * the rows (f's norm or swiglu, then the layout's format) in its own slice
 * of c->act (x8_prologue) and adds its units' rows to f's residual (f
 * NULL: plain matmul). */
static void matmul_x8_decode(cpu_backend *c, x8_job *d, const float *x, float *const *y,
                             int n_rows, const exsa_matmul_fuse *f)
{
    const int64_t n_in = d->w[0]->n_in;
    d->x = x;
    d->norm = f ? f->norm : NULL;
    d->eps = f ? f->eps : 0.0f;
    d->up = f && !d->norm ? f->up : NULL;
    d->residual = f ? f->residual : NULL;
    /* cpu_matmul_fused leaves rope and kv set only where they can be
     * fused (fuse_qkv_epilogue) */
    d->rope_mask = 0;
    d->kv = NULL;
    if (f && (f->rope_q || f->rope_k || f->kv)) {
        const exsa_rope_args *ra = f->rope_q ? f->rope_q : f->rope_k;
        if (ra) {
            d->rope_tab = c->rope_tab; /* made current by fuse_qkv_epilogue */
            d->rope_n_rot = ra->n_rot;
            d->rope_hd = ra->head_dim;
            d->rope_mask = (f->rope_q ? 1u : 0u) | (f->rope_k ? 2u : 0u);
        }
        d->kv = f->kv;
        d->slots = f->slots;
    }
    d->prefetch = f && f->next_attn &&
                  kv_prefetch_plan(c, f->next_attn, d->unit_end[d->n_w - 1]) == 0;
    d->n_act = n_rows;
    d->act = (const char *)x; /* F32 / F16 weights without a norm read x itself */
    d->act_buf = NULL;
    d->act_slice = 0;
    for (int i = 0; i < d->n_w; i++)
        d->y[i] = y[i];
    if (d->quant || d->norm || d->up) {
        size_t slice, total;
        int bad = __builtin_mul_overflow(d->act_stride, (size_t)n_rows, &slice) ||
                  slice > SIZE_MAX - 63;
        slice = (slice + 63) & ~(size_t)63;
        bad = bad || __builtin_mul_overflow(slice, (size_t)c->n_threads, &total) ||
              cpu_reserve(&c->act, &c->act_cap, total) != 0 ||
              ((d->norm || d->up) && d->quant && cpu_tls_reserve(c, (size_t)n_in) != 0);
        if (bad) {
            for (int i = 0; i < d->n_w; i++)
                cpu_fill_nan(y[i], (int64_t)n_rows * d->w[i]->n_out);
            if (d->residual)
                cpu_fill_nan(d->residual, (int64_t)n_rows * d->w[0]->n_out);
            if (d->kv) /* what the plain kv_store would keep of NaN rows */
                cpu_kv_store(&c->base, d->kv, y[1], y[2], d->slots, n_rows);
            return;
        }
        d->act_buf = c->act;
        d->act_slice = slice;
    }
    run_spans(c, d->unit_end[d->n_w - 1], x8_units, d->act_slice ? x8_prologue : NULL,
              x8_finish, d);
}

static act_quant_fn quantizer_for(const cpu_backend *c, int type)
{
    if (type == EXSA_TYPE_Q8_0)
        return c->k->quantize_q8_0;
    if (type == EXSA_TYPE_Q8_K)
        return c->k->quantize_q8_K;
    const exsa_type_traits *t = exsa_type_traits_get(type);
    return t ? t->from_float : NULL;
}

static void cpu_matmul(exsa_backend *b, const exsa_tensor *w, const float *x, float *y, int n_rows)
{
    cpu_backend *c = cpu_of(b);
    if (n_rows <= 0 || w->n_out <= 0)
        return;
    if (w->layout != EXSA_LAYOUT_ROWS) {
        if (x8_fits(c, w))
            matmul_x8(c, &w, 1, x, &y, n_rows, NULL);
        else
            cpu_fill_nan(y, (int64_t)n_rows * w->n_out);
        return;
    }
    int64_t n_out = w->n_out, n_in = w->n_in;
    const exsa_type_traits *tr = exsa_type_traits_get(w->type);
    exsa_dot_fn dot = w->type >= 0 && w->type < EXSA_TYPE_COUNT ? c->k->dot[w->type] : NULL;
    if (!tr || !dot || n_in <= 0 || n_in > INT32_MAX) {
        cpu_fill_nan(y, (int64_t)n_rows * n_out);
        return;
    }

    /* F32 / F16 weights take the float rows directly (kernels.h). */
    int float_act = w->type == EXSA_TYPE_F32 || w->type == EXSA_TYPE_F16;
    act_quant_fn quant = NULL;
    size_t act_stride = (size_t)n_in * sizeof(float);
    int rows_per_pass = n_rows;
    if (!float_act) {
        quant = quantizer_for(c, tr->vec_dot_type);
        size_t rs = exsa_type_row_size(tr->vec_dot_type, n_in);
        if (!quant || rs == 0 || rs > SIZE_MAX - 63) {
            cpu_fill_nan(y, (int64_t)n_rows * n_out);
            return;
        }
        act_stride = (rs + 63) & ~(size_t)63; /* each row on its own cache lines */
        rows_per_pass = act_rows_per_pass(c, act_stride, n_rows);
        if (rows_per_pass == 0) {
            cpu_fill_nan(y, (int64_t)n_rows * n_out);
            return;
        }
    }

    int chunk_rows = (int)(n_out / ((int64_t)c->n_threads * 4));
    if (chunk_rows < CHUNK_MIN)
        chunk_rows = CHUNK_MIN;
    if (chunk_rows > CHUNK_MAX)
        chunk_rows = CHUNK_MAX;
    int n_chunks = (int)((n_out + chunk_rows - 1) / chunk_rows);

    for (int r0 = 0; r0 < n_rows; r0 += rows_per_pass) {
        int nr = n_rows - r0 < rows_per_pass ? n_rows - r0 : rows_per_pass;
        const char *act = (const char *)(x + (size_t)r0 * (size_t)n_in);
        if (quant) {
            quant_job q = {quant, x + (size_t)r0 * (size_t)n_in, n_in, c->act, act_stride};
            cpu_parallel_for(c, nr, CPU_PAR_MIN_ELEMS / n_in + 1, quant_range, &q);
            act = c->act;
        }
        int n_tiles = (nr + ACT_TILE - 1) / ACT_TILE;
        dot_job d = {dot, w, act, act_stride, nr, n_chunks, chunk_rows,
                     y + (size_t)r0 * (size_t)n_out};
        if (nr <= X8_STREAM_ROWS && n_out / UNIT_ROWS < INT32_MAX) {
            run_spans(c, (n_out + UNIT_ROWS - 1) / UNIT_ROWS, dot_units, NULL, NULL, &d);
            continue;
        }
        int64_t n_tasks = (int64_t)n_tiles * n_chunks;
        if (n_tasks > INT32_MAX) { /* absurd shapes: one pass per tile */
            for (int t = 0; t < n_tiles; t++) {
                dot_job dt = d;
                dt.act = act + (size_t)t * ACT_TILE * act_stride;
                dt.y = d.y + (size_t)t * ACT_TILE * (size_t)n_out;
                dt.n_act = nr - t * ACT_TILE < ACT_TILE ? nr - t * ACT_TILE : ACT_TILE;
                exsa_threadpool_run(c->pool, dot_task, &dt, n_chunks);
            }
        } else {
            exsa_threadpool_run(c->pool, dot_task, &d, (int)n_tasks);
        }
    }
}

/* ---- creation ------------------------------------------------------------- */

/* The activation format a repacked layout's kernels take (matmul_x8):
 * weights that share it share one converted input. */
enum { ACT_Q8_0S, ACT_Q8_0A, ACT_Q8_K, ACT_BF16, ACT_F32 };
static int x8_act_format(const exsa_tensor *w)
{
    switch (w->layout) {
    case EXSA_LAYOUT_Q8_0X8: return ACT_Q8_0A;
    case EXSA_LAYOUT_Q4_KX8:
    case EXSA_LAYOUT_Q6_KX8: return ACT_Q8_K;
    case EXSA_LAYOUT_FX8: return w->type == EXSA_TYPE_BF16 ? ACT_BF16 : ACT_F32;
    default: return ACT_Q8_0S;
    }
}

/* The end of the run of weights from w[i] that matmul_x8 takes together
 * (repacked, one activation format and input size: Q4_K_M's Q6_K attn_v
 * joins its Q4_K q and k); i + 1 when w[i] goes alone or is not
 * repacked. */
static int x8_run_end(const cpu_backend *c, const exsa_tensor *const *w, int n_w, int i)
{
    int e = i + 1;
    if (w[i]->layout != EXSA_LAYOUT_ROWS && x8_fits(c, w[i]))
        while (e < n_w && e - i < X8_MAX_W && w[e]->layout != EXSA_LAYOUT_ROWS &&
               x8_act_format(w[e]) == x8_act_format(w[i]) && w[e]->n_in == w[i]->n_in &&
               x8_fits(c, w[e]))
            e++;
    return e;
}

/* Runs of weights with one repacked layout, type and input size go through
 * matmul_x8 together; the others one by one. */
static void cpu_matmul_multi(exsa_backend *b, const exsa_tensor *const *w, int n_w,
                             const float *x, float *const *y, int n_rows)
{
    cpu_backend *c = cpu_of(b);
    if (n_rows <= 0)
        return;
    for (int i = 0; i < n_w;) {
        int e = x8_run_end(c, w, n_w, i);
        if (e - i > 1)
            matmul_x8(c, w + i, e - i, x, y + i, n_rows, NULL);
        else
            cpu_matmul(b, w[i], x, y[i], n_rows);
        i = e;
    }
}

/* f's rope and kv_store as the plain ops, on q, k, v (y[0..2]). */
static void qkv_plain_epilogue(exsa_backend *b, float *const *y, int n_rows,
                               const exsa_matmul_fuse *f)
{
    if (f->rope_q)
        cpu_rope(b, y[0], f->pos, f->rope_q);
    if (f->rope_k)
        cpu_rope(b, y[1], f->pos, f->rope_k);
    if (f->kv)
        cpu_kv_store(b, f->kv, y[1], y[2], f->slots, n_rows);
}

/* Whether the rope and kv_store f asks for (q, k, v: n_w == 3) can run
 * on each decode unit's rows as it is written: llama's pairwise rope
 * (a unit's rows hold whole pairs), one angle table for q and k, rows of
 * the shapes the weights give, a cache kv_store writes. */
static int fuse_qkv_epilogue(cpu_backend *c, const exsa_tensor *const *w, int n_w, int n_rows,
                             const exsa_matmul_fuse *f)
{
    if (n_w != 3 || !f->pos)
        return 0;
    const exsa_rope_args *q = f->rope_q, *k = f->rope_k, *a = q ? q : k;
    if (a) {
        if (a->mode != EXSA_ROPE_NORMAL || a->n_rows != n_rows || a->n_rot <= 0 ||
            a->n_rot % 2 || a->head_dim <= 0 || a->head_dim % 2 || a->n_rot > a->head_dim)
            return 0;
        if (q && k &&
            (k->mode != q->mode || k->n_rows != q->n_rows || k->n_rot != q->n_rot ||
             k->head_dim != q->head_dim || k->freq_factors != q->freq_factors ||
             memcmp(&k->freq_base, &q->freq_base, sizeof(float)) != 0 ||
             memcmp(&k->freq_scale, &q->freq_scale, sizeof(float)) != 0))
            return 0;
        if ((q && (int64_t)q->n_heads * q->head_dim != w[0]->n_out) ||
            (k && (int64_t)k->n_heads * k->head_dim != w[1]->n_out))
            return 0;
        if (!cpu_rope_table(c, a, f->pos))
            return 0;
    }
    if (f->kv) {
        const exsa_kv_layer *kv = f->kv;
        const int64_t row = (int64_t)kv->n_kv_head * kv->head_dim;
        if (!f->slots || row <= 0 || row != w[1]->n_out || row != w[2]->n_out ||
            (kv->type != EXSA_TYPE_F32 && kv->type != EXSA_TYPE_F16 &&
             !(kv->type == EXSA_TYPE_Q8_0 && row % EXSA_QK8_0 == 0)))
            return 0;
    }
    return 1;
}

/* Decode batches whose weights matmul_x8 takes in one run get the fused
 * form; everything else runs the plain ops in order (same bits). */
static void cpu_matmul_fused(exsa_backend *b, const exsa_tensor *const *w, int n_w,
                             const float *x, float *const *y, int n_rows,
                             const exsa_matmul_fuse *f)
{
    cpu_backend *c = cpu_of(b);
    if (n_rows <= 0 || n_w <= 0)
        return;
    if ((f->residual && n_w != 1) || ((f->rope_q || f->rope_k || f->kv) && n_w != 3)) {
        for (int i = 0; i < n_w; i++)
            cpu_fill_nan(y[i], (int64_t)n_rows * w[i]->n_out);
        return;
    }
    /* n_out <= INT32_MAX for each of at most X8_MAX_W weights keeps their
     * decode units (32 rows each) within an int: matmul_x8 then always
     * takes its decode path, the one that applies f. */
    int small = 1;
    for (int i = 0; i < n_w; i++)
        small &= w[i]->n_out <= INT32_MAX;
    if (small && n_rows <= X8_STREAM_ROWS && w[0]->layout != EXSA_LAYOUT_ROWS &&
        x8_fits(c, w[0]) && x8_run_end(c, w, n_w, 0) == n_w) {
        if (!(f->rope_q || f->rope_k || f->kv) || fuse_qkv_epilogue(c, w, n_w, n_rows, f)) {
            matmul_x8(c, w, n_w, x, y, n_rows, f);
            return;
        }
        exsa_matmul_fuse mm = {.norm = f->norm, .eps = f->eps, .up = f->up,
                               .next_attn = f->next_attn};
        matmul_x8(c, w, n_w, x, y, n_rows, &mm);
        qkv_plain_epilogue(b, y, n_rows, f);
        return;
    }
    const float *in = x;
    if (f->norm) {
        cpu_rms_norm(b, x, f->norm, f->scratch, n_rows, (int)w[0]->n_in, f->eps);
        in = f->scratch;
    } else if (f->up) {
        cpu_swiglu(b, x, f->up, f->scratch, (int64_t)n_rows * w[0]->n_in);
        in = f->scratch;
    }
    cpu_matmul_multi(b, w, n_w, in, y, n_rows);
    if (f->residual)
        cpu_add(b, f->residual, y[0], (int64_t)n_rows * w[0]->n_out);
    qkv_plain_epilogue(b, y, n_rows, f);
}

/* Every op and buffer function but the memory contract, shared by the
 * CPU backend and the CPU posing as a device. */
#define CPU_OPS_COMMON                                                                        \
    .destroy = cpu_destroy, .describe = cpu_describe, .alloc = cpu_alloc, .free = cpu_free,    \
    .release = cpu_release, .set = cpu_set, .get = cpu_set, .sync = cpu_sync,                 \
    .get_rows = cpu_get_rows, .rms_norm = cpu_rms_norm, .matmul = cpu_matmul,                 \
    .matmul_multi = cpu_matmul_multi, .matmul_fused = cpu_matmul_fused,                       \
    .add_bias = cpu_add_bias, .add = cpu_add, .scale = cpu_scale, .rope = cpu_rope,           \
    .softmax = cpu_softmax, .swiglu = cpu_swiglu, .geglu = cpu_geglu,                         \
    .kv_store = cpu_kv_store, .attention = cpu_attention

static const exsa_backend_ops cpu_ops = {
    .name = "cpu", .host_memory = 1, .prepare_weight = cpu_prepare_weight, CPU_OPS_COMMON,
};

static const exsa_backend_ops cpu_dev_ops = {
    .name = "cpu-device", .host_memory = 0, .prepare_weight = cpu_dev_prepare_weight,
    CPU_OPS_COMMON,
};

exsa_backend *exsa_backend_cpu_create_as_device(int n_threads, exsa_err *err)
{
    exsa_backend *b = exsa_backend_cpu_create(n_threads, err);
    if (!b)
        return NULL;
    /* Same kernels; only the memory contract differs (set/get required). */
    snprintf(cpu_of(b)->desc, sizeof cpu_of(b)->desc, "cpu-device %s x%d", cpu_of(b)->k->isa,
             cpu_of(b)->n_threads);
    b->ops = &cpu_dev_ops;
    return b;
}

exsa_backend *exsa_backend_cpu_create(int n_threads, exsa_err *err)
{
    if (n_threads <= 0)
        n_threads = exsa_cpu_physical_cores();
    if (n_threads <= 0)
        n_threads = 1;
    if (n_threads > 1024) {
        exsa_err_set(err, EXSA_EINVAL, "cpu backend: n_threads %d exceeds 1024", n_threads);
        return NULL;
    }
    cpu_backend *c = calloc(1, sizeof *c);
    if (!c) {
        exsa_err_set(err, EXSA_ENOMEM, "cpu backend: out of memory");
        return NULL;
    }
    c->base.ops = &cpu_ops;
    c->base.impl = c;
    c->n_threads = n_threads;
    c->k = exsa_cpu_kernels_best();
    c->pool = exsa_threadpool_create(n_threads, err);
    if (!c->pool) {
        exsa_err_prefix(err, "cpu backend");
        free(c);
        return NULL;
    }
    c->spans = aligned_alloc(64, sizeof(cpu_span) * (size_t)n_threads);
    if (!c->spans) {
        exsa_err_set(err, EXSA_ENOMEM, "cpu backend: out of memory");
        cpu_destroy(&c->base);
        return NULL;
    }
    for (int t = 0; t < n_threads; t++)
        atomic_init(&c->spans[t].fb, 0);
    c->ts = aligned_alloc(64, sizeof(cpu_thread_state) * (size_t)n_threads);
    if (!c->ts) {
        exsa_err_set(err, EXSA_ENOMEM, "cpu backend: out of memory");
        cpu_destroy(&c->base);
        return NULL;
    }
    /* Room for attention with head_dim up to 256 before any growth. */
    if (cpu_tls_reserve(c, 1024) != 0) {
        exsa_err_set(err, EXSA_ENOMEM, "cpu backend: cannot allocate %d thread scratch buffers",
                     n_threads);
        cpu_destroy(&c->base);
        return NULL;
    }
    snprintf(c->desc, sizeof c->desc, "cpu %s x%d", c->k->isa, n_threads);
    return &c->base;
}
