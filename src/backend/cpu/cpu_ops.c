/* CPU backend: row-wise and elementwise ops.
 *
 * Plain loops the compiler vectorizes, split over the pool only when a call
 * has enough elements to pay for waking the workers (prefill); decode-sized
 * calls run on the caller's thread.
 */
#include "backend/cpu/cpu_backend_impl.h"

#include <math.h>
#include <string.h>

/* ---- rms_norm ----------------------------------------------------------- */

typedef struct {
    const exsa_cpu_kernels *k;
    const float *x, *w;
    float *y;
    int dim;
    float eps;
} norm_job;

void cpu_rms_norm_row(const exsa_cpu_kernels *k, const float *x, const float *w, float *y,
                      int dim, float eps)
{
    float ss = k->dot_f32(dim, x, x);
    k->scale_mul(x, 1.0f / sqrtf(ss / (float)dim + eps), w, y, dim);
}

static void norm_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    norm_job *j = vctx;
    int dim = j->dim;
    for (int64_t r = begin; r < end; r++)
        cpu_rms_norm_row(j->k, j->x + r * dim, j->w, j->y + r * dim, dim, j->eps);
}

void cpu_rms_norm(exsa_backend *b, const float *x, const float *w, float *y, int n_rows, int dim,
                  float eps)
{
    cpu_backend *c = cpu_of(b);
    if (n_rows <= 0 || dim <= 0)
        return;
    norm_job j = {c->k, x, w, y, dim, eps};
    cpu_parallel_for(c, n_rows, CPU_PAR_MIN_ELEMS / dim + 1, norm_range, &j);
}

/* ---- add_bias, add, scale ----------------------------------------------- */

typedef struct {
    float *y;
    const float *x;
    int dim;
    float s;
    const exsa_cpu_kernels *k;
} vec_job;

static void bias_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    vec_job *j = vctx;
    for (int64_t r = begin; r < end; r++) {
        float *y = j->y + r * j->dim;
        for (int i = 0; i < j->dim; i++)
            y[i] += j->x[i];
    }
}

void cpu_add_bias(exsa_backend *b, float *y, const float *bias, int n_rows, int dim)
{
    if (n_rows <= 0 || dim <= 0)
        return;
    vec_job j = {y, bias, dim, 0, NULL};
    cpu_parallel_for(cpu_of(b), n_rows, CPU_PAR_MIN_ELEMS / dim + 1, bias_range, &j);
}

static void add_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    vec_job *j = vctx;
    j->k->add_f32(j->y + begin, j->x + begin, end - begin);
}

void cpu_add(exsa_backend *b, float *y, const float *x, int64_t n)
{
    vec_job j = {y, x, 0, 0, cpu_of(b)->k};
    cpu_parallel_for(cpu_of(b), n, CPU_PAR_MIN_ELEMS, add_range, &j);
}

static void scale_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    vec_job *j = vctx;
    j->k->scale_mul(j->y + begin, j->s, NULL, j->y + begin, end - begin);
}

void cpu_scale(exsa_backend *b, float *x, float s, int64_t n)
{
    vec_job j = {x, NULL, 0, s, cpu_of(b)->k};
    cpu_parallel_for(cpu_of(b), n, CPU_PAR_MIN_ELEMS, scale_range, &j);
}

/* ---- swiglu --------------------------------------------------------------- */

typedef struct {
    const exsa_cpu_kernels *k;
    const float *gate, *up;
    float *out;
} swiglu_job;

static void swiglu_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    swiglu_job *j = vctx;
    j->k->swiglu(j->gate + begin, j->up + begin, j->out + begin, end - begin);
}

void cpu_swiglu(exsa_backend *b, const float *gate, const float *up, float *out, int64_t n)
{
    cpu_backend *c = cpu_of(b);
    swiglu_job j = {c->k, gate, up, out};
    cpu_parallel_for(c, n, CPU_PAR_MIN_ELEMS / 4, swiglu_range, &j);
}

/* ---- softmax ---------------------------------------------------------------- */

typedef struct {
    float *x;
    int n;
} softmax_job;

static void softmax_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    softmax_job *j = vctx;
    int n = j->n;
    for (int64_t r = begin; r < end; r++) {
        float *x = j->x + r * n;
        float max = -INFINITY;
        for (int i = 0; i < n; i++)
            max = x[i] > max ? x[i] : max;
        if (max == -INFINITY) {
            /* Every entry masked: no distribution; zeros rather than NaN. */
            memset(x, 0, (size_t)n * sizeof *x);
            continue;
        }
        double sum = 0; /* double: a long row of tiny terms stays exact enough */
        for (int i = 0; i < n; i++) {
            float e = expf(x[i] - max);
            x[i] = e;
            sum += e;
        }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < n; i++)
            x[i] *= inv;
    }
}

void cpu_softmax(exsa_backend *b, float *x, int n_rows, int n)
{
    if (n_rows <= 0 || n <= 0)
        return;
    softmax_job j = {x, n};
    cpu_parallel_for(cpu_of(b), n_rows, CPU_PAR_MIN_ELEMS / 4 / n + 1, softmax_range, &j);
}

/* ---- rope ---------------------------------------------------------------------- */

typedef struct {
    cpu_backend *c;
    float *x;
    const int32_t *pos;
    const exsa_rope_args *a;
    const float *freq; /* [n_rot/2] angle per unit position */
} rope_job;

static void rope_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    rope_job *j = vctx;
    const exsa_rope_args *a = j->a;
    int half = a->n_rot / 2;
    float *cs = cpu_tls(j->c, thread); /* [half] cos, then [half] sin */
    float *sn = cs + half;
    int64_t row_len = (int64_t)a->n_heads * a->head_dim;
    for (int64_t r = begin; r < end; r++) {
        float p = (float)j->pos[r];
        /* One angle per pair, shared by all heads of the row. */
        for (int i = 0; i < half; i++) {
            float theta = p * j->freq[i];
            cs[i] = cosf(theta);
            sn[i] = sinf(theta);
        }
        for (int h = 0; h < a->n_heads; h++) {
            float *x = j->x + r * row_len + (int64_t)h * a->head_dim;
            if (a->mode == EXSA_ROPE_NEOX) {
                for (int i = 0; i < half; i++) {
                    float x0 = x[i], x1 = x[i + half];
                    x[i] = x0 * cs[i] - x1 * sn[i];
                    x[i + half] = x0 * sn[i] + x1 * cs[i];
                }
            } else {
                for (int i = 0; i < half; i++) {
                    float x0 = x[2 * i], x1 = x[2 * i + 1];
                    x[2 * i] = x0 * cs[i] - x1 * sn[i];
                    x[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
                }
            }
        }
    }
}

void cpu_rope(exsa_backend *b, float *x, const int32_t *pos, const exsa_rope_args *a)
{
    cpu_backend *c = cpu_of(b);
    int half = a->n_rot / 2;
    if (a->n_rows <= 0 || half <= 0 || a->n_heads <= 0 || a->n_rot > a->head_dim)
        return;
    size_t n_rows_elems = (size_t)a->n_rows * (size_t)a->n_heads * (size_t)a->head_dim;
    if (cpu_reserve((void **)&c->rope_freq, &c->rope_cap, (size_t)half * sizeof(float)) != 0 ||
        cpu_tls_reserve(c, (size_t)a->n_rot) != 0) {
        cpu_fill_nan(x, (int64_t)n_rows_elems);
        return;
    }
    /* base^(-2i/n_rot) by powf per pair (no running product, whose rounding
     * error would grow with i), folded with the linear scale and the
     * per-pair divisor. */
    for (int i = 0; i < half; i++) {
        float f = a->freq_scale * powf(a->freq_base, -(float)(2 * i) / (float)a->n_rot);
        if (a->freq_factors)
            f /= a->freq_factors[i];
        c->rope_freq[i] = f;
    }
    rope_job j = {c, x, pos, a, c->rope_freq};
    int64_t per_row = (int64_t)a->n_heads * a->head_dim;
    cpu_parallel_for(c, a->n_rows, CPU_PAR_MIN_ELEMS / 2 / per_row + 1, rope_range, &j);
}
