/* Weight repacking for the CPU kernels (kernels.h describes the layouts).
 *
 * Done once at model load, on the load thread: a Q4_0 matrix of n_out rows
 * becomes n_out / 8 groups of interleaved block columns. The bytes are the
 * same count, so memory does not grow once the mapping's pages are dropped.
 */
#include "backend/cpu/cpu_repack.h"

#include <stdlib.h>
#include <string.h>

#include "backend/cpu/kernels.h"
#include "util/err.h"

int exsa_cpu_repack(exsa_tensor *w, void **buf, exsa_err *err)
{
    *buf = NULL;
    const char *env = getenv("EXSA_REPACK");
    if (env && strcmp(env, "0") == 0)
        return 0;
    if (w->layout != EXSA_LAYOUT_ROWS || w->type != EXSA_TYPE_Q4_0 || w->n_out % 8 != 0 ||
        w->n_in % 32 != 0 || w->n_in <= 0 || w->n_in > INT32_MAX || !w->data)
        return 0;
    const int64_t nb = w->n_in / 32, ng = w->n_out / 8;
    size_t bytes;
    if (__builtin_mul_overflow((size_t)nb, (size_t)ng, &bytes) ||
        __builtin_mul_overflow(bytes, sizeof(exsa_block_q4_0x8), &bytes) ||
        bytes > SIZE_MAX - 63)
        return exsa_err_set(err, EXSA_ENOMEM, "repack: tensor '%s' too large", w->name);
    exsa_block_q4_0x8 *dst = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!dst)
        return exsa_err_set(err, EXSA_ENOMEM, "repack: out of memory for '%s' (%zu bytes)",
                            w->name, bytes);
    for (int64_t g = 0; g < ng; g++) {
        for (int r = 0; r < 8; r++) {
            const exsa_block_q4_0 *src =
                (const exsa_block_q4_0 *)((const char *)w->data + (size_t)(8 * g + r) * w->row_bytes);
            for (int64_t b = 0; b < nb; b++) {
                exsa_block_q4_0x8 *o = &dst[g * nb + b];
                o->d[r] = src[b].d;
                for (int j = 0; j < 4; j++)
                    memcpy(o->qs + 32 * j + 4 * r, src[b].qs + 4 * j, 4);
            }
        }
    }
    w->data = dst;
    w->layout = EXSA_LAYOUT_Q4_0X8;
    *buf = dst;
    return 0;
}

void exsa_cpu_repacked_row(const exsa_tensor *w, int64_t row, void *out)
{
    const int64_t nb = w->n_in / 32;
    const exsa_block_q4_0x8 *g = (const exsa_block_q4_0x8 *)w->data + (row / 8) * nb;
    const int r = (int)(row % 8);
    exsa_block_q4_0 *dst = out;
    for (int64_t b = 0; b < nb; b++) {
        dst[b].d = g[b].d[r];
        for (int j = 0; j < 4; j++)
            memcpy(dst[b].qs + 4 * j, g[b].qs + 32 * j + 4 * r, 4);
    }
}
