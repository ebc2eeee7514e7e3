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

/* ---- swiglu, geglu: out = act(gate) * up ------------------------------------ */

typedef struct {
    void (*kernel)(const float *g, const float *u, float *out, int64_t n);
    const float *gate, *up;
    float *out;
} gated_job;

static void gated_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    gated_job *j = vctx;
    j->kernel(j->gate + begin, j->up + begin, j->out + begin, end - begin);
}

void cpu_swiglu(exsa_backend *b, const float *gate, const float *up, float *out, int64_t n)
{
    cpu_backend *c = cpu_of(b);
    gated_job j = {c->k->swiglu, gate, up, out};
    cpu_parallel_for(c, n, CPU_PAR_MIN_ELEMS / 4, gated_range, &j);
}

void cpu_geglu(exsa_backend *b, const float *gate, const float *up, float *out, int64_t n)
{
    cpu_backend *c = cpu_of(b);
    gated_job j = {c->k->geglu, gate, up, out};
    cpu_parallel_for(c, n, CPU_PAR_MIN_ELEMS / 4, gated_range, &j);
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

/* cos (cs) and sin (sn) of pos * freq[i], i < half: rope's angles. */
static void rope_angles(const float *freq, int half, int32_t pos, float *cs, float *sn)
{
    const float p = (float)pos;
    for (int i = 0; i < half; i++) {
        float theta = p * freq[i];
        cs[i] = cosf(theta);
        sn[i] = sinf(theta);
    }
}

void cpu_rope_normal(float *x, int64_t o0, int64_t o1, int head_dim, int n_rot, const float *cs,
                     const float *sn)
{
    for (int64_t o = o0; o < o1;) {
        const int64_t h0 = o - o % head_dim, end = h0 + n_rot < o1 ? h0 + n_rot : o1;
        for (; o < end; o += 2) {
            const int i = (int)(o - h0) / 2;
            float x0 = x[o], x1 = x[o + 1];
            x[o] = x0 * cs[i] - x1 * sn[i];
            x[o + 1] = x0 * sn[i] + x1 * cs[i];
        }
        if (o < h0 + head_dim) /* dims past n_rot stay as they are */
            o = h0 + head_dim;
    }
}

static void rope_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    rope_job *j = vctx;
    const exsa_rope_args *a = j->a;
    int half = a->n_rot / 2;
    float *cs = cpu_tls(j->c, thread); /* [half] cos, then [half] sin */
    float *sn = cs + half;
    int64_t row_len = (int64_t)a->n_heads * a->head_dim;
    for (int64_t r = begin; r < end; r++) {
        /* One angle per pair, shared by all heads of the row. */
        rope_angles(j->freq, half, j->pos[r], cs, sn);
        float *xr = j->x + r * row_len;
        if (a->mode != EXSA_ROPE_NEOX) {
            cpu_rope_normal(xr, 0, row_len, a->head_dim, a->n_rot, cs, sn);
            continue;
        }
        for (int h = 0; h < a->n_heads; h++) {
            float *x = xr + (int64_t)h * a->head_dim;
            for (int i = 0; i < half; i++) {
                float x0 = x[i], x1 = x[i + half];
                x[i] = x0 * cs[i] - x1 * sn[i];
                x[i + half] = x0 * sn[i] + x1 * cs[i];
            }
        }
    }
}

/* c->rope_freq for a: base^(-2i/n_rot) by powf per pair (no running
 * product, whose rounding error would grow with i), folded with the linear
 * scale and the per-pair divisor. 0, or -1 when it cannot grow. */
static int rope_freqs(cpu_backend *c, const exsa_rope_args *a)
{
    const int half = a->n_rot / 2;
    if (cpu_reserve((void **)&c->rope_freq, &c->rope_cap, (size_t)half * sizeof(float)) != 0)
        return -1;
    for (int i = 0; i < half; i++) {
        float f = a->freq_scale * powf(a->freq_base, -(float)(2 * i) / (float)a->n_rot);
        if (a->freq_factors)
            f /= a->freq_factors[i];
        c->rope_freq[i] = f;
    }
    return 0;
}

void cpu_rope(exsa_backend *b, float *x, const int32_t *pos, const exsa_rope_args *a)
{
    cpu_backend *c = cpu_of(b);
    int half = a->n_rot / 2;
    if (a->n_rows <= 0 || half <= 0 || a->n_heads <= 0 || a->n_rot > a->head_dim)
        return;
    size_t n_rows_elems = (size_t)a->n_rows * (size_t)a->n_heads * (size_t)a->head_dim;
    if (rope_freqs(c, a) != 0 || cpu_tls_reserve(c, (size_t)a->n_rot) != 0) {
        cpu_fill_nan(x, (int64_t)n_rows_elems);
        return;
    }
    rope_job j = {c, x, pos, a, c->rope_freq};
    int64_t per_row = (int64_t)a->n_heads * a->head_dim;
    cpu_parallel_for(c, a->n_rows, CPU_PAR_MIN_ELEMS / 2 / per_row + 1, rope_range, &j);
}

/* The key of c->rope_tab: everything its angles depend on. */
static int rope_key_same(const cpu_backend *c, const exsa_rope_args *a, const int32_t *pos)
{
    const cpu_rope_key *k = &c->rope_key;
    if (!k->valid || k->n_rows != a->n_rows || k->n_rot != a->n_rot ||
        memcmp(&k->freq_base, &a->freq_base, sizeof(float)) != 0 ||
        memcmp(&k->freq_scale, &a->freq_scale, sizeof(float)) != 0 ||
        k->has_factors != (a->freq_factors != NULL) ||
        memcmp(k->pos, pos, (size_t)a->n_rows * sizeof *pos) != 0)
        return 0;
    return !a->freq_factors ||
           memcmp(k->factors, a->freq_factors, (size_t)(a->n_rot / 2) * sizeof(float)) == 0;
}

const float *cpu_rope_table(cpu_backend *c, const exsa_rope_args *a, const int32_t *pos)
{
    const int half = a->n_rot / 2;
    if (a->n_rows <= 0 || a->n_rows > CPU_ROPE_TABLE_ROWS || half <= 0)
        return NULL;
    if (rope_key_same(c, a, pos))
        return c->rope_tab;
    cpu_rope_key *k = &c->rope_key;
    k->valid = 0;
    if (rope_freqs(c, a) != 0 ||
        cpu_reserve((void **)&c->rope_tab, &c->rope_tab_cap,
                    (size_t)a->n_rows * (size_t)a->n_rot * sizeof(float)) != 0 ||
        (a->freq_factors && cpu_reserve((void **)&k->factors, &k->factors_cap,
                                        (size_t)half * sizeof(float)) != 0))
        return NULL;
    for (int r = 0; r < a->n_rows; r++) {
        float *cs = c->rope_tab + (size_t)r * (size_t)a->n_rot;
        rope_angles(c->rope_freq, half, pos[r], cs, cs + half);
    }
    k->n_rows = a->n_rows;
    k->n_rot = a->n_rot;
    k->freq_base = a->freq_base;
    k->freq_scale = a->freq_scale;
    k->has_factors = a->freq_factors != NULL;
    memcpy(k->pos, pos, (size_t)a->n_rows * sizeof *pos);
    if (a->freq_factors)
        memcpy(k->factors, a->freq_factors, (size_t)half * sizeof(float));
    k->valid = 1;
    return c->rope_tab;
}

