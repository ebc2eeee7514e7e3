/* Private to the CPU backend: its state and the pieces its .c files share.
 *
 * cpu_backend.c   lifecycle, buffers, get_rows, matmul
 * cpu_ops.c       rms_norm, add, add_bias, scale, rope, softmax, swiglu, geglu
 * cpu_attention.c kv_store, paged attention
 *
 * Scratch memory is owned by the backend and grown on the caller's thread
 * before a pool run (never inside one), so steady-state ops allocate nothing.
 * Ops have no error return (backend.h): when scratch cannot grow, an op
 * writes NaN to its output so the failure cannot pass for a result.
 */
#ifndef EXSA_CPU_BACKEND_IMPL_H
#define EXSA_CPU_BACKEND_IMPL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "util/threadpool.h"

/* Below this many elements a pass is not worth waking the workers. */
#define CPU_PAR_MIN_ELEMS 32768

/* One thread's span of a decode matmul (cpu_backend.c): units [front,
 * back) packed as back << 32 | front, on its own cache line. */
typedef struct {
    _Alignas(64) _Atomic uint64_t fb;
} cpu_span;

/* Rows a cached rope table holds (cpu_rope_table): decode batches. */
#define CPU_ROPE_TABLE_ROWS 64

/* What c->rope_tab was computed for. */
typedef struct {
    int valid;
    int n_rows, n_rot;
    float freq_base, freq_scale;
    int has_factors;
    int32_t pos[CPU_ROPE_TABLE_ROWS];
    float *factors; /* [n_rot / 2] copy of freq_factors */
    size_t factors_cap;
} cpu_rope_key;

/* One piece of K or V context a decode q, k, v run fetches ahead of the
 * attention (cpu_backend.c kv_prefetch): `bytes` of each of `rows` token
 * rows, pf_stride apart. */
typedef struct {
    const char *p;
    size_t bytes;
    int rows;
} cpu_pf_span;

/* What one thread writes during a decode run (n_threads of them, one line
 * each): its prefetch spans [pf_span, pf_end) and its place in them. */
typedef struct {
    _Alignas(64) int pf_span;
    int pf_end;
    int pf_row;
    size_t pf_off;
} cpu_thread_state;

typedef struct cpu_backend {
    exsa_backend base; /* first: an exsa_backend * is a cpu_backend * */
    exsa_threadpool *pool;
    const exsa_cpu_kernels *k;
    int n_threads;
    char desc[64];

    void *act;        /* matmul: activation rows in the weights' vec_dot_type */
    size_t act_cap;   /* bytes */
    float *tls;       /* per-thread scratch, n_threads slices of tls_stride */
    size_t tls_stride; /* floats per thread, a multiple of 16 (64 bytes) */
    cpu_span *spans;  /* n_threads: decode matmul spans */
    float *rope_freq; /* rope: per-pair angle per position */
    size_t rope_cap;  /* bytes */
    float *rope_tab;  /* cpu_rope_table: [n_rows][n_rot] cos, then sin */
    size_t rope_tab_cap;
    cpu_rope_key rope_key;
    cpu_pf_span *pf_spans; /* kv_prefetch: thread t's are [ts[t].pf_span, ts[t].pf_end) */
    size_t pf_cap;         /* bytes */
    int pf_lines_per_unit;
    size_t pf_stride;      /* bytes between the token rows of a span */
    cpu_thread_state *ts;  /* [n_threads] */
} cpu_backend;

static inline cpu_backend *cpu_of(exsa_backend *b)
{
    return (cpu_backend *)b;
}

/* Grows *buf (64-byte aligned, contents not kept) to hold `bytes`. 0 or -1. */
int cpu_reserve(void **buf, size_t *cap, size_t bytes);
/* Makes each thread's scratch slice hold at least n floats. 0 or -1. */
int cpu_tls_reserve(cpu_backend *c, size_t n);
static inline float *cpu_tls(cpu_backend *c, int thread)
{
    return c->tls + (size_t)thread * c->tls_stride;
}

/* Calls fn(ctx, begin, end, thread) over [0, n) in contiguous ranges of at
 * least `grain` items, on the pool when there is enough work for two. */
typedef void (*cpu_range_fn)(void *ctx, int64_t begin, int64_t end, int thread);
void cpu_parallel_for(cpu_backend *c, int64_t n, int64_t grain, cpu_range_fn fn, void *ctx);

void cpu_fill_nan(float *x, int64_t n);

/* cpu_ops.c */
/* One row of rms_norm (w NULL: no weight); y may be x. */
void cpu_rms_norm_row(const exsa_cpu_kernels *k, const float *x, const float *w, float *y,
                      int dim, float eps);
void cpu_rms_norm(exsa_backend *b, const float *x, const float *w, float *y, int n_rows, int dim,
                  float eps);
void cpu_add_bias(exsa_backend *b, float *y, const float *bias, int n_rows, int dim);
void cpu_add(exsa_backend *b, float *y, const float *x, int64_t n);
void cpu_scale(exsa_backend *b, float *x, float s, int64_t n);
void cpu_rope(exsa_backend *b, float *x, const int32_t *pos, const exsa_rope_args *a);
/* EXSA_ROPE_NORMAL on elements [o0, o1) of one row of heads (o0, o1 and
 * head_dim even): what cpu_rope does to them, bit for bit. */
void cpu_rope_normal(float *x, int64_t o0, int64_t o1, int head_dim, int n_rot, const float *cs,
                     const float *sn);
/* The angles of rows pos[0 .. a->n_rows) as [n_rows][n_rot] floats (cos
 * half, then sin half), computed once and kept while the positions and a's
 * frequencies stay the same (every layer of a forward pass); NULL when
 * memory is short or n_rows > CPU_ROPE_TABLE_ROWS. */
const float *cpu_rope_table(cpu_backend *c, const exsa_rope_args *a, const int32_t *pos);
void cpu_softmax(exsa_backend *b, float *x, int n_rows, int n);
void cpu_swiglu(exsa_backend *b, const float *gate, const float *up, float *out, int64_t n);
void cpu_geglu(exsa_backend *b, const float *gate, const float *up, float *out, int64_t n);

/* cpu_attention.c */
void cpu_kv_store(exsa_backend *b, const exsa_kv_layer *kv, const float *k, const float *v,
                  const int32_t *slots, int n_rows);
void cpu_attention(exsa_backend *b, const exsa_attn_args *a);
/* Where attention a splits its heads statically over the threads, the
 * bytes [*lo, *hi) of each K and V token row that thread reads: returns 1;
 * 0 when its tasks are handed out as threads come (cpu_attention.c). */
int cpu_attn_thread_bytes(const cpu_backend *c, const exsa_attn_args *a, int thread, size_t *lo,
                          size_t *hi);
/* Elements [e0, e1) of a K (is_v 0) or V row into slot `slot` of kv, as
 * kv_store writes them; for a Q8_0 cache e0 and e1 are multiples of 32. */
void cpu_kv_store_span(const exsa_cpu_kernels *k, const exsa_kv_layer *kv, int is_v,
                       const float *row, int32_t slot, int64_t e0, int64_t e1);

#endif
