/* CUDA matmul and get_rows against the scalar dequantizers.
 *
 * For every weight format: random weights quantized with quant.c's reference
 * quantizers (F16/BF16 with its converters), and the reference
 *   ref[r][o] = sum_i dequant(W)[o][i] * x[r][i]   in double
 * from the scalar exsa_dequantize_row_* output. Awkward sizes: n_in of one
 * and of several blocks (and, for the float formats, lengths that are not a
 * multiple of 8), odd n_out, n_rows on both sides of the decode / tensor-core
 * switch (8) and of the 64-row tile, both accumulate modes (y prefilled with
 * known values), padded y rows (y_stride > n_out, the padding must stay
 * untouched) and a misaligned x (scalar loads in the decode kernel).
 *
 * Tolerance (rel L2 over the outputs) 1e-5 on both paths: outside F32
 * weights the kernels multiply f16-rounded W and x (exact products, f32
 * sums), and the reference rounds them the same way, so only the order of
 * the f32 sums remains.
 * get_rows: bit-equal to the scalar dequantizer times scale, every format.
 *
 * Outputs are poisoned with 0xFF bytes (NaN) before each launch. The seed is
 * printed; EXSA_TEST_SEED=<n> replays a run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "backend/cuda/cuda_kernels.h"
#include "quant/quant.h"
#include "test_util.h"

#define TOL_F32 1e-5
#define DECODE_MAX_ROWS 8

static const int weight_types[] = {
    EXSA_TYPE_F32,  EXSA_TYPE_F16,  EXSA_TYPE_BF16, EXSA_TYPE_Q4_0, EXSA_TYPE_Q4_1,
    EXSA_TYPE_Q5_0, EXSA_TYPE_Q5_1, EXSA_TYPE_Q8_0, EXSA_TYPE_Q2_K, EXSA_TYPE_Q3_K,
    EXSA_TYPE_Q4_K, EXSA_TYPE_Q5_K, EXSA_TYPE_Q6_K,
};
#define N_TYPES (int)(sizeof(weight_types) / sizeof(weight_types[0]))
#define ARRAY_LEN(a) (int)(sizeof(a) / sizeof((a)[0]))

/* 7 and 100: not a multiple of 8 (one element at a time); 264: 8-chunks
 * with a partial last k-step. */
static const int64_t n_in_float[] = {7, 100, 264};
static const int64_t n_in_b32[] = {32, 96};
static const int64_t n_in_k[] = {256, 2304};
static const int64_t n_outs[] = {1, 7, 67, 333};
static const int n_rows_list[] = {1, 2, 3, 8, 9, 17, 64, 100};

static uint64_t g_seed;

#define CUDA_OK(call) assert_int_equal((int)(call), 0)

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static void *dmalloc(size_t n)
{
    void *p = NULL;
    CUDA_OK(cudaMalloc(&p, n ? n : 1));
    return p;
}

static void upload(void *dst, const void *src, size_t n)
{
    CUDA_OK(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
}

static void download(void *dst, const void *src, size_t n)
{
    CUDA_OK(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost));
}

/* Normal values with a per-32 magnitude drift, so blocks differ in scale. */
static void fill_random(float *x, int64_t n, uint64_t *rng)
{
    float scale = 1.0f;
    for (int64_t i = 0; i < n; i++) {
        if (i % 32 == 0)
            scale = 0.05f + 2.0f * exsa_test_rand_uniform(rng);
        x[i] = scale * exsa_test_rand_normal(rng);
    }
}

static uint64_t rng_for(int type, int salt)
{
    return g_seed ^ ((uint64_t)(type + 1) * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)salt << 40);
}

/* x through f16 and back when `on` (what the kernels multiply). */
static float round_f16(float x, int on)
{
    return on ? exsa_fp16_to_fp32(exsa_fp32_to_fp16(x)) : x;
}

/* A weight matrix: the GGUF bytes (host and device) and its dequantized
 * values per the scalar reference. */
typedef struct {
    int type;
    int64_t n_in, n_out;
    size_t row_bytes;
    unsigned char *raw;
    float *deq;
    void *dev;
} weight;

static void weight_make(weight *w, int type, int64_t n_in, int64_t n_out, uint64_t *rng)
{
    const exsa_type_traits *tr = exsa_type_traits_get(type);
    assert_non_null(tr);
    w->type = type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->row_bytes = exsa_type_row_size(type, n_in);
    assert_true(w->row_bytes > 0);
    w->raw = xmalloc(w->row_bytes * (size_t)n_out);
    w->deq = xmalloc(sizeof(float) * (size_t)(n_in * n_out));
    float *src = xmalloc(sizeof(float) * (size_t)n_in);
    for (int64_t o = 0; o < n_out; o++) {
        fill_random(src, n_in, rng);
        tr->from_float(src, w->raw + (size_t)o * w->row_bytes, n_in);
        tr->to_float(w->raw + (size_t)o * w->row_bytes, w->deq + o * n_in, n_in);
    }
    free(src);
    w->dev = dmalloc(w->row_bytes * (size_t)n_out);
    upload(w->dev, w->raw, w->row_bytes * (size_t)n_out);
}

static void weight_free(weight *w)
{
    free(w->raw);
    free(w->deq);
    CUDA_OK(cudaFree(w->dev));
}

static int is_poison(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof(u));
    return u == 0xffffffffu;
}

/* One launch: y = W x (+ y0 when accumulate), rows y_stride apart. */
static void run_case(const weight *w, int n_rows, const float *x, const double *ref,
                     int accumulate, uint64_t *rng)
{
    const int64_t n_in = w->n_in, n_out = w->n_out;
    /* padded rows for accumulate and odd row counts */
    const int64_t y_stride = (accumulate || n_rows % 2) ? n_out + 5 : n_out;
    const size_t y_len = (size_t)(n_rows * y_stride);
    /* n_rows == 3: x one float past an aligned address */
    const int x_off = n_rows == 3 ? 1 : 0;

    float *y0 = xmalloc(sizeof(float) * y_len);
    memset(y0, 0xff, sizeof(float) * y_len);
    if (accumulate)
        for (int r = 0; r < n_rows; r++)
            fill_random(y0 + r * y_stride, n_out, rng);

    float *dx = dmalloc(sizeof(float) * (size_t)(n_rows * n_in + x_off));
    float *dy = dmalloc(sizeof(float) * y_len);
    upload(dx + x_off, x, sizeof(float) * (size_t)(n_rows * n_in));
    upload(dy, y0, sizeof(float) * y_len);

    const size_t scratch_bytes = exsa_cuda_matmul_scratch_bytes(w->type, n_in, n_out, n_rows);
    if (n_rows <= DECODE_MAX_ROWS)
        assert_int_equal(scratch_bytes, 0);
    void *scratch = scratch_bytes ? dmalloc(scratch_bytes) : NULL;

    CUDA_OK(exsa_cuda_matmul(w->dev, w->type, n_in, n_out, w->row_bytes, dx + x_off, dy,
                             y_stride, n_rows, accumulate, scratch, 0));
    CUDA_OK(cudaStreamSynchronize(0));

    float *y = xmalloc(sizeof(float) * y_len);
    download(y, dy, sizeof(float) * y_len);

    double num = 0.0, den = 0.0, max_abs = 0.0;
    int bad_pad = 0, non_finite = 0;
    for (int r = 0; r < n_rows; r++) {
        for (int64_t o = 0; o < y_stride; o++) {
            const float got = y[r * y_stride + o];
            if (o >= n_out) {
                bad_pad += !is_poison(got);
                continue;
            }
            const double want = ref[r * n_out + o] + (accumulate ? (double)y0[r * y_stride + o] : 0.0);
            non_finite += !isfinite(got);
            const double d = (double)got - want;
            num += d * d;
            den += want * want;
            if (fabs(d) > max_abs)
                max_abs = fabs(d);
        }
    }
    const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    const double tol = TOL_F32;
    printf("  %-4s n_in=%-4lld n_out=%-3lld rows=%-3d acc=%d stride=%-3lld%s: max_abs=%.3g "
           "rel_l2=%.3g (tol %.0e)\n",
           exsa_type_traits_get(w->type)->name, (long long)n_in, (long long)n_out, n_rows,
           accumulate, (long long)y_stride, x_off ? " x+1" : "", max_abs, rel, tol);
    assert_int_equal(non_finite, 0);
    assert_int_equal(bad_pad, 0);
    assert_true(rel < tol);

    free(y);
    free(y0);
    if (scratch)
        CUDA_OK(cudaFree(scratch));
    CUDA_OK(cudaFree(dx));
    CUDA_OK(cudaFree(dy));
}

static void n_in_sizes(int type, const int64_t **sizes, int *n)
{
    if (type == EXSA_TYPE_F32 || type == EXSA_TYPE_F16 || type == EXSA_TYPE_BF16) {
        *sizes = n_in_float;
        *n = ARRAY_LEN(n_in_float);
    } else if (exsa_type_traits_get(type)->block_size == 32) {
        *sizes = n_in_b32;
        *n = ARRAY_LEN(n_in_b32);
    } else {
        *sizes = n_in_k;
        *n = ARRAY_LEN(n_in_k);
    }
}

static void test_matmul(void **state)
{
    const int type = *(const int *)*state;
    uint64_t rng = rng_for(type, 1);
    const int64_t *sizes;
    int n_sizes;
    n_in_sizes(type, &sizes, &n_sizes);

    for (int si = 0; si < n_sizes; si++) {
        for (int oi = 0; oi < ARRAY_LEN(n_outs); oi++) {
            const int64_t n_in = sizes[si], n_out = n_outs[oi];
            weight w;
            weight_make(&w, type, n_in, n_out, &rng);
            for (int ri = 0; ri < ARRAY_LEN(n_rows_list); ri++) {
                const int n_rows = n_rows_list[ri];
                float *x = xmalloc(sizeof(float) * (size_t)(n_rows * n_in));
                double *ref = xmalloc(sizeof(double) * (size_t)(n_rows * n_out));
                fill_random(x, n_rows * n_in, &rng);
                /* Outside F32 weights both paths take W and x as f16
                 * (batch invariance, cuda_matmul.cu): the reference does too,
                 * so only the order of f32 sums separates them from it. */
                const int h = type != EXSA_TYPE_F32;
                for (int r = 0; r < n_rows; r++) {
                    for (int64_t o = 0; o < n_out; o++) {
                        double s = 0.0;
                        for (int64_t i = 0; i < n_in; i++)
                            s += (double)round_f16(w.deq[o * n_in + i], h) *
                                 round_f16(x[r * n_in + i], h);
                        ref[r * n_out + o] = s;
                    }
                }
                run_case(&w, n_rows, x, ref, 0, &rng);
                run_case(&w, n_rows, x, ref, 1, &rng);
                free(x);
                free(ref);
            }
            weight_free(&w);
        }
    }
}

static void test_get_rows(void **state)
{
    const int type = *(const int *)*state;
    uint64_t rng = rng_for(type, 2);
    const int64_t *sizes;
    int n_sizes;
    n_in_sizes(type, &sizes, &n_sizes);
    const int64_t n_out = 67;
    /* repeats, both ends, and a negative id (the kernel writes zeros) */
    const int32_t ids[] = {0, 66, 5, 5, 33, 1, -1, 66, 12, 40};
    const int n = ARRAY_LEN(ids);
    const float scales[] = {1.0f, 0.37f, 45.254834f};

    for (int si = 0; si < n_sizes; si++) {
        const int64_t n_in = sizes[si];
        weight w;
        weight_make(&w, type, n_in, n_out, &rng);
        int32_t *dids = dmalloc(sizeof(ids));
        upload(dids, ids, sizeof(ids));
        const size_t out_bytes = sizeof(float) * (size_t)(n * n_in);
        float *dout = dmalloc(out_bytes);
        float *out = xmalloc(out_bytes);
        for (int ci = 0; ci < ARRAY_LEN(scales); ci++) {
            const float scale = scales[ci];
            CUDA_OK(cudaMemset(dout, 0xff, out_bytes));
            CUDA_OK(exsa_cuda_get_rows(w.dev, type, n_in, w.row_bytes, dids, n, scale, dout, 0));
            CUDA_OK(cudaStreamSynchronize(0));
            download(out, dout, out_bytes);
            int mismatches = 0;
            for (int i = 0; i < n; i++) {
                for (int64_t k = 0; k < n_in; k++) {
                    const float want = ids[i] < 0 ? 0.0f : w.deq[ids[i] * n_in + k] * scale;
                    const float got = out[i * n_in + k];
                    if (memcmp(&want, &got, sizeof(float)) != 0) {
                        if (mismatches < 5)
                            printf("    row %d (id %d) [%lld]: got %.9g want %.9g\n", i,
                                   ids[i], (long long)k, got, want);
                        mismatches++;
                    }
                }
            }
            printf("  get_rows %-4s n_in=%-4lld scale=%g: %d of %lld differ\n",
                   exsa_type_traits_get(type)->name, (long long)n_in, scale, mismatches,
                   (long long)(n * n_in));
            assert_int_equal(mismatches, 0);
        }
        free(out);
        CUDA_OK(cudaFree(dout));
        CUDA_OK(cudaFree(dids));
        weight_free(&w);
    }
}

static void test_supports_and_args(void **state)
{
    (void)state;
    for (int i = 0; i < N_TYPES; i++)
        assert_true(exsa_cuda_matmul_supports(weight_types[i]));
    assert_false(exsa_cuda_matmul_supports(EXSA_TYPE_Q8_1));
    assert_false(exsa_cuda_matmul_supports(EXSA_TYPE_Q8_K));
    assert_false(exsa_cuda_matmul_supports(99));
    assert_int_equal(exsa_cuda_matmul_scratch_bytes(EXSA_TYPE_Q4_K, 256, 10, 8), 0);
    assert_int_equal(exsa_cuda_matmul_scratch_bytes(EXSA_TYPE_F32, 256, 10, 100), 0);
    assert_true(exsa_cuda_matmul_scratch_bytes(EXSA_TYPE_Q4_K, 256, 10, 9) >= 9 * 256 * 2);

    /* refused before any launch: n_in not whole blocks, y_stride < n_out */
    void *w = dmalloc(4096);
    float *x = dmalloc(4096), *y = dmalloc(4096);
    assert_int_not_equal(exsa_cuda_matmul(w, EXSA_TYPE_Q4_0, 48, 2, 27, x, y, 2, 1, 0, NULL, 0),
                         0);
    assert_int_not_equal(exsa_cuda_matmul(w, EXSA_TYPE_Q4_0, 32, 4, 18, x, y, 3, 1, 0, NULL, 0),
                         0);
    assert_int_not_equal(exsa_cuda_matmul(w, EXSA_TYPE_Q8_K, 256, 1, 292, x, y, 1, 1, 0, NULL, 0),
                         0);
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaFree(w));
    CUDA_OK(cudaFree(x));
    CUDA_OK(cudaFree(y));
}

int main(void)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    const char *env = getenv("EXSA_TEST_SEED");
    g_seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("seed %llu (EXSA_TEST_SEED=%llu replays it)\n", (unsigned long long)g_seed,
           (unsigned long long)g_seed);

    static char names[2 * N_TYPES][32];
    struct CMUnitTest tests[2 * N_TYPES + 1];
    tests[0] = (struct CMUnitTest)cmocka_unit_test(test_supports_and_args);
    for (int i = 0; i < N_TYPES; i++) {
        const char *tn = exsa_type_traits_get(weight_types[i])->name;
        snprintf(names[2 * i], sizeof(names[0]), "get_rows %s", tn);
        snprintf(names[2 * i + 1], sizeof(names[0]), "matmul %s", tn);
        tests[1 + 2 * i] = (struct CMUnitTest){names[2 * i], test_get_rows, NULL, NULL,
                                               (void *)&weight_types[i]};
        tests[2 + 2 * i] = (struct CMUnitTest){names[2 * i + 1], test_matmul, NULL, NULL,
                                               (void *)&weight_types[i]};
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
