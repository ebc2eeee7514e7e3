/* Attention table selection: follow the exsa_cpu_kernels table in use.
 *
 * The scores must round like that table's dot_f16_f32, so the choice is
 * made by its isa rather than from the CPU again; EXSA_CPU therefore caps
 * both alike. The kernel getters have already checked the CPU (and run
 * their detection once, thread-safely), so a SIMD attention table is only
 * handed out where its kernel table is.
 */
#include <string.h>

#include "backend/cpu/attn_kernels.h"

const exsa_cpu_attn_kernels *exsa_cpu_attn_kernels_avx2(void)
{
    return exsa_cpu_kernels_avx2() ? exsa_cpu_attn_kernels_avx2_table : NULL;
}

const exsa_cpu_attn_kernels *exsa_cpu_attn_kernels_avx512(void)
{
    return exsa_cpu_kernels_avx512() ? exsa_cpu_attn_kernels_avx512_table : NULL;
}

const exsa_cpu_attn_kernels *exsa_cpu_attn_kernels_for(const exsa_cpu_kernels *k)
{
    const exsa_cpu_attn_kernels *t = NULL;
    if (k && strcmp(k->isa, "avx512") == 0)
        t = exsa_cpu_attn_kernels_avx512();
    else if (k && strcmp(k->isa, "avx2") == 0)
        t = exsa_cpu_attn_kernels_avx2();
    return t ? t : exsa_cpu_attn_kernels_scalar();
}
