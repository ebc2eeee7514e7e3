/* Kernel table selection: detect the CPU once, hand out the best table.
 *
 * EXSA_CPU=scalar|avx2|avx512 caps the choice (an unknown value is ignored).
 * Detection and the assembly of the AVX-512 tables (AVX-512 entries over
 * the AVX2 table) run once under pthread_once, so every getter is
 * thread-safe and cheap after the first call.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/kernels_internal.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static const exsa_cpu_kernels *avx2_ok;      /* NULL: not built or not supported */
static exsa_cpu_kernels avx512_tables[2];    /* [vnni] */
static const exsa_cpu_kernels *avx512_ok[2];
static exsa_cpu_kernels avx512bf16_table;
static const exsa_cpu_kernels *avx512bf16_ok;
static const exsa_cpu_kernels *avx512_best; /* bf16 over vnni over plain */
static const exsa_cpu_kernels *best;

/* Every entry of the table after dot[]; the size check below fails the
 * build when an entry is added to exsa_cpu_kernels but not here, so an
 * AVX-512 kernel can never be silently dropped by overlay(). */
#define HELPERS(X)                                                                 \
    X(quantize_q8_0) X(quantize_q8_K) X(quantize_q8_0s) X(quantize_q8_0a)          \
    X(dot_f32) X(dot_f16_f32) X(axpy_f32) X(axpy_f16) X(f32_to_f16) X(f16_to_f32)  \
    X(gemm_q4_0x8) X(gemm_q4_Kx8) X(gemm_q4_1x8) X(gemm_q5_0x8) X(gemm_q5_1x8) X(gemm_fx) X(fx_batch_groups) X(swiglu) X(gemm_q8_0x8)    \
    X(gemm_q4_0x16) X(gemm_q8_0x16) X(gemm_q4_Kx16) X(gemm_q6_Kx8)     \
    X(gemm_q6_Kx16) X(gemm_q4_0x32) X(gemm_q8_0x32) X(gemm_bf16)  \
    X(scale_mul) X(add_f32) X(geglu)
#define SIZE_OF(f) +sizeof(((exsa_cpu_kernels *)0)->f)
_Static_assert(sizeof(exsa_cpu_kernels) ==
                   offsetof(exsa_cpu_kernels, dot) + sizeof(((exsa_cpu_kernels *)0)->dot)
                       HELPERS(SIZE_OF),
               "kernels.c: HELPERS() must list every exsa_cpu_kernels entry");
#undef SIZE_OF

/* Copies base, then every non-NULL entry of over on top of it. */
static void overlay(exsa_cpu_kernels *dst, const exsa_cpu_kernels *base,
                    const exsa_cpu_kernels *over)
{
    *dst = *base;
    dst->isa = over->isa;
    for (int t = 0; t < EXSA_TYPE_COUNT; t++)
        if (over->dot[t])
            dst->dot[t] = over->dot[t];
#define COPY(f)                                                                    \
    if (over->f)                                                                   \
        dst->f = over->f;
    HELPERS(COPY)
#undef COPY
}

static void detect(void)
{
    exsa_cpu_features f;
    exsa_cpu_features_detect(&f);

    const int has_avx2 = f.avx2 && f.fma && f.f16c;
    if (has_avx2 && exsa_cpu_kernels_avx2_table)
        avx2_ok = exsa_cpu_kernels_avx2_table;

    const int has_avx512 = avx2_ok && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
    const exsa_cpu_kernels *partial[2] = {exsa_cpu_kernels_avx512_partial,
                                          exsa_cpu_kernels_avx512vnni_partial};
    for (int v = 0; v < 2; v++) {
        if (!has_avx512 || !partial[v] || (v == 1 && !f.avx512vnni))
            continue;
        overlay(&avx512_tables[v], avx2_ok, partial[v]);
        avx512_ok[v] = &avx512_tables[v];
    }

    if (avx512_ok[1] && f.avx512bf16 && exsa_cpu_kernels_avx512bf16_partial) {
        overlay(&avx512bf16_table, avx512_ok[1], exsa_cpu_kernels_avx512bf16_partial);
        avx512bf16_ok = &avx512bf16_table;
    }

    avx512_best = avx512bf16_ok ? avx512bf16_ok : avx512_ok[1] ? avx512_ok[1] : avx512_ok[0];

    /* cap: 0 scalar, 1 avx2, 2 avx512 */
    int cap = 2;
    const char *env = getenv("EXSA_CPU");
    if (env && strcmp(env, "scalar") == 0)
        cap = 0;
    else if (env && strcmp(env, "avx2") == 0)
        cap = 1;

    best = exsa_cpu_kernels_scalar();
    if (cap >= 1 && avx2_ok)
        best = avx2_ok;
    if (cap >= 2 && avx512_best)
        best = avx512_best;
}

const exsa_cpu_kernels *exsa_cpu_kernels_avx2(void)
{
    pthread_once(&once, detect);
    return avx2_ok;
}

const exsa_cpu_kernels *exsa_cpu_kernels_avx512(void)
{
    pthread_once(&once, detect);
    return avx512_best;
}

const exsa_cpu_kernels *exsa_cpu_kernels_avx512_bf16(void)
{
    pthread_once(&once, detect);
    return avx512bf16_ok;
}

const exsa_cpu_kernels *exsa_cpu_kernels_avx512_variant(int vnni)
{
    pthread_once(&once, detect);
    return avx512_ok[vnni ? 1 : 0];
}

const exsa_cpu_kernels *exsa_cpu_kernels_best(void)
{
    pthread_once(&once, detect);
    return best;
}
