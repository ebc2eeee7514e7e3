/* Weight repacking for the CPU kernels (kernels.h describes the layouts).
 *
 * Done once at model load, on the load thread: an F32, F16, BF16, Q4_0,
 * Q4_1, Q5_0, Q5_1, Q8_0, Q4_K or Q6_K matrix of n_out rows becomes n_out / 8
 * groups of interleaved columns. All but Q4_K keep their byte count; Q4_K
 * grows by 2.8% (its 6-bit scales and mins are unpacked to bytes). Both are lossless: exsa_cpu_repacked_row gives back
 * the GGUF bytes exactly.
 */
#include "backend/cpu/cpu_repack.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backend/cpu/kernels.h"
#include "util/err.h"

/* Weights bigger than a huge page start on one and ask for transparent
 * huge pages (where THP is in madvise mode, as Debian's default): decode
 * streams every weight byte per token, and with 4 KB pages that is a TLB
 * miss every 4 KB. Before the first touch, so the faults take huge pages.
 * The alignment costs address space only: untouched pages stay unmapped. */
#define HUGE_PAGE ((size_t)2 << 20)
static void *alloc_weights(size_t bytes)
{
    if (bytes < HUGE_PAGE)
        return aligned_alloc(64, bytes);
    void *p = NULL; /* posix_memalign: C11's aligned_alloc wants whole huge pages */
    if (posix_memalign(&p, HUGE_PAGE, bytes) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (p)
        (void)madvise(p, bytes & ~(size_t)4095, MADV_HUGEPAGE); /* a hint: failure is harmless */
#endif
    return p;
}

static void pack_q4_0(const exsa_tensor *w, exsa_block_q4_0x8 *dst, int64_t nb, int64_t ng)
{
    for (int64_t g = 0; g < ng; g++) {
        for (int r = 0; r < 8; r++) {
            const char *row = (const char *)w->data + (size_t)(8 * g + r) * w->row_bytes;
            const exsa_block_q4_0 *src = (const exsa_block_q4_0 *)row;
            for (int64_t b = 0; b < nb; b++) {
                exsa_block_q4_0x8 *o = &dst[g * nb + b];
                o->d[r] = src[b].d;
                for (int j = 0; j < 4; j++)
                    memcpy(o->qs + 32 * j + 4 * r, src[b].qs + 4 * j, 4);
            }
        }
    }
}

/* Returns -1, leaving dst partly written, at a value of -128 (llama.cpp's
 * quantizer never writes one, a file may): the repacked kernel negates
 * weights (kernels.h, exsa_block_q8_0a), so such a tensor keeps the row
 * layout, whose kernel takes any value. */
static int pack_q8_0(const exsa_tensor *w, exsa_block_q8_0x8 *dst, int64_t nb, int64_t ng)
{
    for (int64_t g = 0; g < ng; g++) {
        for (int r = 0; r < 8; r++) {
            const char *row = (const char *)w->data + (size_t)(8 * g + r) * w->row_bytes;
            const exsa_block_q8_0 *src = (const exsa_block_q8_0 *)row;
            for (int64_t b = 0; b < nb; b++) {
                exsa_block_q8_0x8 *o = &dst[g * nb + b];
                o->d[r] = src[b].d;
                for (int i = 0; i < 32; i++)
                    if (src[b].qs[i] == INT8_MIN)
                        return -1;
                for (int k = 0; k < 8; k++)
                    memcpy(o->qs + 32 * k + 4 * r, src[b].qs + 4 * k, 4);
            }
        }
    }
    return 0;
}

static void pack_q4_1(const exsa_tensor *w, exsa_block_q4_1x8 *dst, int64_t nb, int64_t ng)
{
    for (int64_t g = 0; g < ng; g++) {
        for (int r = 0; r < 8; r++) {
            const char *row = (const char *)w->data + (size_t)(8 * g + r) * w->row_bytes;
            const exsa_block_q4_1 *src = (const exsa_block_q4_1 *)row;
            for (int64_t b = 0; b < nb; b++) {
                exsa_block_q4_1x8 *o = &dst[g * nb + b];
                o->d[r] = src[b].d;
                o->m[r] = src[b].m;
                for (int j = 0; j < 4; j++)
                    memcpy(o->qs + 32 * j + 4 * r, src[b].qs + 4 * j, 4);
            }
        }
    }
}

/* Q5_0 / Q5_1: the nibbles as Q4_x, the fifth bits regrouped per quad
 * (kernels.h: qh[8 * j + r]). dst points at the first block column; the
 * columns are col_bytes apart. */
static void pack_q5(const exsa_tensor *w, char *dst, size_t col_bytes, int has_min, int64_t nb,
                    int64_t ng)
{
    const size_t src_bytes = has_min ? sizeof(exsa_block_q5_1) : sizeof(exsa_block_q5_0);
    for (int64_t g = 0; g < ng; g++) {
        for (int r = 0; r < 8; r++) {
            const char *row = (const char *)w->data + (size_t)(8 * g + r) * w->row_bytes;
            for (int64_t b = 0; b < nb; b++) {
                const char *src = row + (size_t)b * src_bytes;
                char *o = dst + (size_t)(g * nb + b) * col_bytes;
                memcpy(o + 2 * r, src, 2); /* d */
                if (has_min)
                    memcpy(o + 16 + 2 * r, src + 2, 2); /* m */
                uint32_t qh;
                memcpy(&qh, src + 2 + 2 * has_min, 4);
                uint8_t *oqh = (uint8_t *)o + 16 + 16 * has_min;
                for (int j = 0; j < 4; j++)
                    oqh[8 * j + r] = (uint8_t)(((qh >> (4 * j)) & 0x0F) |
                                               ((qh >> (16 + 4 * j)) & 0x0F) << 4);
                const uint8_t *qs = (const uint8_t *)src + 6 + 2 * has_min;
                for (int j = 0; j < 4; j++)
                    memcpy(oqh + 32 + 32 * j + 4 * r, qs + 4 * j, 4);
            }
        }
    }
}

static void unpack_q5(const exsa_tensor *w, int64_t row, int has_min, size_t col_bytes,
                      char *out)
{
    const int64_t nb = w->n_in / 32;
    const int r = (int)(row % 8);
    const size_t dst_bytes = has_min ? sizeof(exsa_block_q5_1) : sizeof(exsa_block_q5_0);
    const char *g = (const char *)w->data + (size_t)(row / 8) * (size_t)nb * col_bytes;
    for (int64_t b = 0; b < nb; b++) {
        const char *c = g + (size_t)b * col_bytes;
        char *dst = out + (size_t)b * dst_bytes;
        memcpy(dst, c + 2 * r, 2);
        if (has_min)
            memcpy(dst + 2, c + 16 + 2 * r, 2);
        const uint8_t *cqh = (const uint8_t *)c + 16 + 16 * has_min;
        uint32_t qh = 0;
        for (int j = 0; j < 4; j++) {
            qh |= (uint32_t)(cqh[8 * j + r] & 0x0F) << (4 * j);
            qh |= (uint32_t)(cqh[8 * j + r] >> 4) << (16 + 4 * j);
        }
        memcpy(dst + 2 + 2 * has_min, &qh, 4);
        for (int j = 0; j < 4; j++)
            memcpy(dst + 6 + 2 * has_min + 4 * j, cqh + 32 + 32 * j + 4 * r, 4);
    }
}

static void pack_q4_K(const exsa_tensor *w, exsa_block_q4_Kx8 *dst, int64_t nb, int64_t ng)
{
    for (int64_t g = 0; g < ng; g++) {
        for (int r = 0; r < 8; r++) {
            const char *row = (const char *)w->data + (size_t)(8 * g + r) * w->row_bytes;
            const exsa_block_q4_K *src = (const exsa_block_q4_K *)row;
            for (int64_t b = 0; b < nb; b++) {
                exsa_block_q4_Kx8 *o = &dst[g * nb + b];
                o->d[r] = src[b].d;
                o->dmin[r] = src[b].dmin;
                for (int s = 0; s < 8; s++) {
                    uint8_t sc, mn;
                    exsa_get_scale_min_k4(s, src[b].scales, &sc, &mn);
                    o->scales[8 * s + r] = sc;
                    o->mins[16 * (s / 2) + 2 * r + s % 2] = mn;
                }
                for (int c = 0; c < 4; c++)
                    for (int t = 0; t < 8; t++)
                        memcpy(o->qs + 256 * c + 32 * t + 4 * r, src[b].qs + 32 * c + 4 * t, 4);
            }
        }
    }
}

/* Value e (0..63, stored +32) of a GGUF Q6_K block. */
static int q6_K_get(const exsa_block_q6_K *b, int e)
{
    const int n = e / 128, m = e % 128 / 32, l = e % 32;
    const uint8_t lo = b->ql[64 * n + l + 32 * (m & 1)];
    return ((m >> 1 ? lo >> 4 : lo) & 15) | ((b->qh[32 * n + l] >> (2 * m)) & 3) << 4;
}

static void q6_K_set(exsa_block_q6_K *b, int e, int v)
{
    const int n = e / 128, m = e % 128 / 32, l = e % 32;
    uint8_t *lo = &b->ql[64 * n + l + 32 * (m & 1)];
    *lo = (uint8_t)(m >> 1 ? (*lo & 0x0F) | (v & 15) << 4 : (*lo & 0xF0) | (v & 15));
    uint8_t *hi = &b->qh[32 * n + l];
    *hi = (uint8_t)((*hi & ~(3 << (2 * m))) | ((v >> 4) & 3) << (2 * m));
}

static void pack_q6_K(const exsa_tensor *w, exsa_block_q6_Kx8 *dst, int64_t nb, int64_t ng)
{
    memset(dst, 0, (size_t)(ng * nb) * sizeof dst[0]); /* the bits are OR-ed in */
    for (int64_t g = 0; g < ng; g++) {
        for (int r = 0; r < 8; r++) {
            const char *row = (const char *)w->data + (size_t)(8 * g + r) * w->row_bytes;
            const exsa_block_q6_K *src = (const exsa_block_q6_K *)row;
            for (int64_t b = 0; b < nb; b++) {
                exsa_block_q6_Kx8 *o = &dst[g * nb + b];
                o->d[r] = src[b].d;
                for (int j = 0; j < 16; j++)
                    o->scales[8 * j + r] = src[b].scales[j];
                for (int e = 0; e < EXSA_QK_K; e++) {
                    const int v = q6_K_get(&src[b], e);
                    const int sb = e / 32, oi = 32 * (e % 32 / 4) + 4 * r + e % 4;
                    o->ql[256 * (sb / 2) + oi] |= (uint8_t)((v & 15) << (4 * (sb % 2)));
                    o->qh[256 * (sb / 4) + oi] |= (uint8_t)((v >> 4) << (2 * (sb % 4)));
                }
            }
        }
    }
}

/* Where element k of row r (of 8) sits in a float group, in elements:
 * F32 / F16 element k of the 8 rows side by side; BF16 in pairs, row r's
 * elements 2p and 2p + 1 in dword r of pair p (kernels.h). */
static size_t fx_index(int type, size_t k, int r)
{
    if (type == EXSA_TYPE_BF16)
        return 16 * (k / 2) + 2 * (size_t)r + k % 2;
    return 8 * k + (size_t)r;
}

static void pack_float(const exsa_tensor *w, char *dst, size_t elem, int64_t ng)
{
    const size_t n = (size_t)w->n_in;
    for (int64_t g = 0; g < ng; g++)
        for (int r = 0; r < 8; r++) {
            const char *row = (const char *)w->data + (size_t)(8 * g + r) * w->row_bytes;
            char *o = dst + (size_t)g * 8 * n * elem;
            for (size_t k = 0; k < n; k++)
                memcpy(o + fx_index(w->type, k, r) * elem, row + k * elem, elem);
        }
}

size_t exsa_cpu_repacked_col_bytes(int layout)
{
    switch (layout) {
    case EXSA_LAYOUT_Q4_0X8: return sizeof(exsa_block_q4_0x8);
    case EXSA_LAYOUT_Q4_1X8: return sizeof(exsa_block_q4_1x8);
    case EXSA_LAYOUT_Q5_0X8: return sizeof(exsa_block_q5_0x8);
    case EXSA_LAYOUT_Q5_1X8: return sizeof(exsa_block_q5_1x8);
    case EXSA_LAYOUT_Q4_KX8: return sizeof(exsa_block_q4_Kx8);
    case EXSA_LAYOUT_Q8_0X8: return sizeof(exsa_block_q8_0x8);
    case EXSA_LAYOUT_Q6_KX8: return sizeof(exsa_block_q6_Kx8);
    default: return 0;
    }
}

int exsa_cpu_repack(exsa_tensor *w, void **buf, exsa_err *err)
{
    *buf = NULL;
    const char *env = getenv("EXSA_REPACK");
    if (env && strcmp(env, "0") == 0)
        return 0;
    if (w->layout != EXSA_LAYOUT_ROWS || w->n_out % 8 != 0 || w->n_in <= 0 ||
        w->n_in > INT32_MAX || !w->data)
        return 0;
    int64_t block;
    size_t col_bytes;
    if (w->type == EXSA_TYPE_Q4_0 && w->n_in % 32 == 0) {
        block = 32;
        col_bytes = sizeof(exsa_block_q4_0x8);
    } else if (w->type == EXSA_TYPE_Q4_1 && w->n_in % 32 == 0) {
        block = 32;
        col_bytes = sizeof(exsa_block_q4_1x8);
    } else if (w->type == EXSA_TYPE_Q8_0 && w->n_in % 32 == 0) {
        block = 32;
        col_bytes = sizeof(exsa_block_q8_0x8);
    } else if (w->type == EXSA_TYPE_F32 || w->type == EXSA_TYPE_F16 ||
               (w->type == EXSA_TYPE_BF16 && w->n_in % 2 == 0)) {
        block = 1;
        col_bytes = 8 * (w->type == EXSA_TYPE_F32 ? 4 : 2);
    } else if (w->type == EXSA_TYPE_Q5_0 && w->n_in % 32 == 0) {
        block = 32;
        col_bytes = sizeof(exsa_block_q5_0x8);
    } else if (w->type == EXSA_TYPE_Q5_1 && w->n_in % 32 == 0) {
        block = 32;
        col_bytes = sizeof(exsa_block_q5_1x8);
    } else if (w->type == EXSA_TYPE_Q4_K && w->n_in % EXSA_QK_K == 0) {
        block = EXSA_QK_K;
        col_bytes = sizeof(exsa_block_q4_Kx8);
    } else if (w->type == EXSA_TYPE_Q6_K && w->n_in % EXSA_QK_K == 0) {
        block = EXSA_QK_K;
        col_bytes = sizeof(exsa_block_q6_Kx8);
    } else {
        return 0;
    }
    const int64_t nb = w->n_in / block, ng = w->n_out / 8;
    size_t bytes;
    if (__builtin_mul_overflow((size_t)nb, (size_t)ng, &bytes) ||
        __builtin_mul_overflow(bytes, col_bytes, &bytes) || bytes > SIZE_MAX - 63)
        return exsa_err_set(err, EXSA_ENOMEM, "repack: tensor '%s' too large", w->name);
    void *dst = alloc_weights((bytes + 63) & ~(size_t)63);
    if (!dst)
        return exsa_err_set(err, EXSA_ENOMEM, "repack: out of memory for '%s' (%zu bytes)",
                            w->name, bytes);
    if (w->type == EXSA_TYPE_Q4_0) {
        pack_q4_0(w, dst, nb, ng);
        w->layout = EXSA_LAYOUT_Q4_0X8;
    } else if (w->type == EXSA_TYPE_Q8_0) {
        if (pack_q8_0(w, dst, nb, ng) != 0) {
            free(dst);
            return 0;
        }
        w->layout = EXSA_LAYOUT_Q8_0X8;
    } else if (w->type == EXSA_TYPE_Q6_K) {
        pack_q6_K(w, dst, nb, ng);
        w->layout = EXSA_LAYOUT_Q6_KX8;
    } else if (w->type == EXSA_TYPE_Q4_1) {
        pack_q4_1(w, dst, nb, ng);
        w->layout = EXSA_LAYOUT_Q4_1X8;
    } else if (block == 1) {
        pack_float(w, dst, col_bytes / 8, ng);
        w->layout = EXSA_LAYOUT_FX8;
    } else if (w->type == EXSA_TYPE_Q5_0 || w->type == EXSA_TYPE_Q5_1) {
        pack_q5(w, dst, col_bytes, w->type == EXSA_TYPE_Q5_1, nb, ng);
        w->layout = w->type == EXSA_TYPE_Q5_1 ? EXSA_LAYOUT_Q5_1X8 : EXSA_LAYOUT_Q5_0X8;
    } else {
        pack_q4_K(w, dst, nb, ng);
        w->layout = EXSA_LAYOUT_Q4_KX8;
    }
    w->data = dst;
    *buf = dst;
    return 0;
}

/* The inverse of exsa_get_scale_min_k4: 8 6-bit (scale, min) pairs into
 * Q4_K's 12 bytes (every bit is used, so this restores the GGUF bytes). */
static void pack_scale_min_k4(const uint8_t *sc, const uint8_t *mn, uint8_t *q)
{
    for (int j = 0; j < 4; j++) {
        q[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        q[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
        q[j + 8] = (uint8_t)((sc[j + 4] & 0x0F) | (mn[j + 4] & 0x0F) << 4);
    }
}

void exsa_cpu_repacked_row(const exsa_tensor *w, int64_t row, void *out)
{
    const int r = (int)(row % 8);
    if (w->layout == EXSA_LAYOUT_Q4_KX8) {
        const int64_t nb = w->n_in / EXSA_QK_K;
        const exsa_block_q4_Kx8 *g = (const exsa_block_q4_Kx8 *)w->data + (row / 8) * nb;
        exsa_block_q4_K *dst = out;
        for (int64_t b = 0; b < nb; b++) {
            uint8_t sc[8], mn[8];
            for (int s = 0; s < 8; s++) {
                sc[s] = g[b].scales[8 * s + r];
                mn[s] = g[b].mins[16 * (s / 2) + 2 * r + s % 2];
            }
            dst[b].d = g[b].d[r];
            dst[b].dmin = g[b].dmin[r];
            pack_scale_min_k4(sc, mn, dst[b].scales);
            for (int c = 0; c < 4; c++)
                for (int t = 0; t < 8; t++)
                    memcpy(dst[b].qs + 32 * c + 4 * t, g[b].qs + 256 * c + 32 * t + 4 * r, 4);
        }
        return;
    }
    if (w->layout == EXSA_LAYOUT_Q6_KX8) {
        const int64_t nb = w->n_in / EXSA_QK_K;
        const exsa_block_q6_Kx8 *g = (const exsa_block_q6_Kx8 *)w->data + (row / 8) * nb;
        exsa_block_q6_K *dst = out;
        for (int64_t b = 0; b < nb; b++) {
            memset(&dst[b], 0, sizeof dst[b]);
            dst[b].d = g[b].d[r];
            for (int j = 0; j < 16; j++)
                dst[b].scales[j] = g[b].scales[8 * j + r];
            for (int e = 0; e < EXSA_QK_K; e++)
                q6_K_set(&dst[b], e, exsa_q6_Kx8_value(&g[b], r, e));
        }
        return;
    }
    if (w->layout == EXSA_LAYOUT_FX8) {
        const size_t elem = w->type == EXSA_TYPE_F32 ? 4 : 2, n = (size_t)w->n_in;
        const char *g = (const char *)w->data + (size_t)(row / 8) * 8 * n * elem;
        for (size_t k = 0; k < n; k++)
            memcpy((char *)out + k * elem, g + fx_index(w->type, k, r) * elem, elem);
        return;
    }
    if (w->layout == EXSA_LAYOUT_Q5_0X8 || w->layout == EXSA_LAYOUT_Q5_1X8) {
        const int has_min = w->layout == EXSA_LAYOUT_Q5_1X8;
        unpack_q5(w, row, has_min, has_min ? sizeof(exsa_block_q5_1x8) : sizeof(exsa_block_q5_0x8),
                  out);
        return;
    }
    const int64_t nb = w->n_in / 32;
    if (w->layout == EXSA_LAYOUT_Q8_0X8) {
        const exsa_block_q8_0x8 *g = (const exsa_block_q8_0x8 *)w->data + (row / 8) * nb;
        exsa_block_q8_0 *dst = out;
        for (int64_t b = 0; b < nb; b++) {
            dst[b].d = g[b].d[r];
            for (int k = 0; k < 8; k++)
                memcpy(dst[b].qs + 4 * k, g[b].qs + 32 * k + 4 * r, 4);
        }
        return;
    }
    if (w->layout == EXSA_LAYOUT_Q4_1X8) {
        const exsa_block_q4_1x8 *g = (const exsa_block_q4_1x8 *)w->data + (row / 8) * nb;
        exsa_block_q4_1 *dst = out;
        for (int64_t b = 0; b < nb; b++) {
            dst[b].d = g[b].d[r];
            dst[b].m = g[b].m[r];
            for (int j = 0; j < 4; j++)
                memcpy(dst[b].qs + 4 * j, g[b].qs + 32 * j + 4 * r, 4);
        }
        return;
    }
    const exsa_block_q4_0x8 *g = (const exsa_block_q4_0x8 *)w->data + (row / 8) * nb;
    exsa_block_q4_0 *dst = out;
    for (int64_t b = 0; b < nb; b++) {
        dst[b].d = g[b].d[r];
        for (int j = 0; j < 4; j++)
            memcpy(dst[b].qs + 4 * j, g[b].qs + 32 * j + 4 * r, 4);
    }
}
