/* Weight repacking for the CPU kernels (kernels.h describes the layouts).
 *
 * Done once at model load, on the load thread: an F32, F16, BF16, Q4_0,
 * Q4_1, Q5_0, Q5_1, Q8_0, Q4_K or Q6_K matrix of n_out rows becomes n_out / 8
 * groups of interleaved columns. All but Q4_K keep their byte count; Q4_K
 * grows by 2.8% (its 6-bit scales and mins are unpacked to bytes). Both are lossless: exsa_cpu_repacked_row gives back
 * the GGUF bytes exactly.
 */
#include "backend/cpu/cpu_repack.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

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

static void pack_q4_0(const exsa_tensor *w, exsa_block_q4_0x8 *dst, int64_t nb, int64_t g0,
                      int64_t g1)
{
    for (int64_t g = g0; g < g1; g++) {
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
static int pack_q8_0(const exsa_tensor *w, exsa_block_q8_0x8 *dst, int64_t nb, int64_t g0,
                     int64_t g1)
{
    for (int64_t g = g0; g < g1; g++) {
        for (int r = 0; r < 8; r++) {
            const char *row = (const char *)w->data + (size_t)(8 * g + r) * w->row_bytes;
            const exsa_block_q8_0 *src = (const exsa_block_q8_0 *)row;
            for (int64_t b = 0; b < nb; b++) {
                exsa_block_q8_0x8 *o = &dst[g * nb + b];
                o->d[r] = src[b].d;
                int bad = 0; /* no early exit: the loop vectorizes */
                for (int i = 0; i < 32; i++)
                    bad |= src[b].qs[i] == INT8_MIN;
                if (bad)
                    return -1;
                for (int k = 0; k < 8; k++)
                    memcpy(o->qs + 32 * k + 4 * r, src[b].qs + 4 * k, 4);
            }
        }
    }
    return 0;
}

static void pack_q4_1(const exsa_tensor *w, exsa_block_q4_1x8 *dst, int64_t nb, int64_t g0,
                      int64_t g1)
{
    for (int64_t g = g0; g < g1; g++) {
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
                    int64_t g0, int64_t g1)
{
    const size_t src_bytes = has_min ? sizeof(exsa_block_q5_1) : sizeof(exsa_block_q5_0);
    for (int64_t g = g0; g < g1; g++) {
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

static void pack_q4_K(const exsa_tensor *w, exsa_block_q4_Kx8 *dst, int64_t nb, int64_t g0,
                      int64_t g1)
{
    for (int64_t g = g0; g < g1; g++) {
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

static void q6_K_set(exsa_block_q6_K *b, int e, int v)
{
    const int n = e / 128, m = e % 128 / 32, l = e % 32;
    uint8_t *lo = &b->ql[64 * n + l + 32 * (m & 1)];
    *lo = (uint8_t)(m >> 1 ? (*lo & 0x0F) | (v & 15) << 4 : (*lo & 0xF0) | (v & 15));
    uint8_t *hi = &b->qh[32 * n + l];
    *hi = (uint8_t)((*hi & ~(3 << (2 * m))) | ((v >> 4) & 3) << (2 * m));
}

static void pack_q6_K(const exsa_tensor *w, exsa_block_q6_Kx8 *dst, int64_t nb, int64_t g0,
                      int64_t g1)
{
    memset(&dst[g0 * nb], 0, (size_t)((g1 - g0) * nb) * sizeof dst[0]); /* bits are OR-ed in */
    for (int64_t g = g0; g < g1; g++) {
        for (int r = 0; r < 8; r++) {
            const char *row = (const char *)w->data + (size_t)(8 * g + r) * w->row_bytes;
            const exsa_block_q6_K *src = (const exsa_block_q6_K *)row;
            for (int64_t b = 0; b < nb; b++) {
                exsa_block_q6_Kx8 *o = &dst[g * nb + b];
                o->d[r] = src[b].d;
                for (int j = 0; j < 16; j++)
                    o->scales[8 * j + r] = src[b].scales[j];
                /* four elements (one quad) per step, as bytes of a word:
                 * element e = 32 s + 4 t + i is, in GGUF, nibble m / 2 of
                 * ql[64 n + l + 32 (m & 1)] and bits 2m of qh[32 n + l],
                 * n = s / 4, m = s % 4, l = 4 t + i (q6_K_get) */
                for (int sb = 0; sb < 8; sb++) {
                    const int n = sb / 4, m = sb % 4;
                    for (int t = 0; t < 8; t++) {
                        uint32_t lo, hi, ol, oh;
                        memcpy(&lo, src[b].ql + 64 * n + 4 * t + 32 * (m & 1), 4);
                        memcpy(&hi, src[b].qh + 32 * n + 4 * t, 4);
                        lo = (m >> 1 ? lo >> 4 : lo) & 0x0F0F0F0Fu;
                        hi = (hi >> (2 * m)) & 0x03030303u;
                        uint8_t *pl = o->ql + 256 * (sb / 2) + 32 * t + 4 * r;
                        uint8_t *ph = o->qh + 256 * (sb / 4) + 32 * t + 4 * r;
                        memcpy(&ol, pl, 4);
                        memcpy(&oh, ph, 4);
                        ol |= lo << (4 * (sb % 2));
                        oh |= hi << (2 * (sb % 4));
                        memcpy(pl, &ol, 4);
                        memcpy(ph, &oh, 4);
                    }
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

/* Writes each group in order, reading its 8 rows side by side. */
static void pack_float(const exsa_tensor *w, char *dst, int64_t g0, int64_t g1)
{
    const size_t n = (size_t)w->n_in;
    for (int64_t g = g0; g < g1; g++) {
        const char *rows[8];
        for (int r = 0; r < 8; r++)
            rows[r] = (const char *)w->data + (size_t)(8 * g + r) * w->row_bytes;
        if (w->type == EXSA_TYPE_F16) {
            uint16_t *o = (uint16_t *)dst + (size_t)g * 8 * n;
            for (size_t k = 0; k < n; k++)
                for (int r = 0; r < 8; r++)
                    memcpy(&o[8 * k + (size_t)r], rows[r] + 2 * k, 2);
        } else { /* F32 element k, or a BF16 pair p, is 4 bytes: dword 8 k + r */
            uint32_t *o = (uint32_t *)dst + (size_t)g * 8 * (w->type == EXSA_TYPE_F32 ? n : n / 2);
            const size_t words = w->type == EXSA_TYPE_F32 ? n : n / 2;
            for (size_t k = 0; k < words; k++)
                for (int r = 0; r < 8; r++)
                    memcpy(&o[8 * k + (size_t)r], rows[r] + 4 * k, 4);
        }
    }
}

/* Groups [g0, g1) of one tensor; rc -1 when Q8_0 meets -128. */
typedef struct {
    const exsa_tensor *w;
    void *dst;
    int64_t nb, g0, g1;
    size_t col_bytes;
    int rc;
} pack_job;

static void pack_range(pack_job *j)
{
    const exsa_tensor *w = j->w;
    switch (w->type) {
    case EXSA_TYPE_Q4_0: pack_q4_0(w, j->dst, j->nb, j->g0, j->g1); break;
    case EXSA_TYPE_Q4_1: pack_q4_1(w, j->dst, j->nb, j->g0, j->g1); break;
    case EXSA_TYPE_Q8_0: j->rc = pack_q8_0(w, j->dst, j->nb, j->g0, j->g1); break;
    case EXSA_TYPE_Q5_0:
    case EXSA_TYPE_Q5_1:
        pack_q5(w, j->dst, j->col_bytes, w->type == EXSA_TYPE_Q5_1, j->nb, j->g0, j->g1);
        break;
    case EXSA_TYPE_Q4_K: pack_q4_K(w, j->dst, j->nb, j->g0, j->g1); break;
    case EXSA_TYPE_Q6_K: pack_q6_K(w, j->dst, j->nb, j->g0, j->g1); break;
    default: pack_float(w, j->dst, j->g0, j->g1); break;
    }
}

static void *pack_thread(void *arg)
{
    pack_range(arg);
    return NULL;
}

/* Large tensors are packed by one thread per CPU (at most PACK_THREADS),
 * each on its own groups: the copy and the first touch of the new pages
 * (the kernel zeroing them, a third of a load) run side by side. A thread
 * that cannot start leaves its groups to this one. */
#define PACK_THREADS 8
#define PACK_MIN_BYTES ((size_t)4 << 20)
static void pack_parallel(pack_job *job, size_t bytes)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t nt = bytes < PACK_MIN_BYTES || cpus < 2 ? 1 : cpus > PACK_THREADS ? PACK_THREADS : cpus;
    if (nt > job->g1 - job->g0)
        nt = job->g1 - job->g0;
    if (nt <= 1) {
        pack_range(job);
        return;
    }
    pack_job parts[PACK_THREADS];
    pthread_t tid[PACK_THREADS];
    int started[PACK_THREADS] = {0};
    const int64_t ng = job->g1 - job->g0;
    for (int64_t t = 0; t < nt; t++) {
        parts[t] = *job;
        parts[t].g0 = job->g0 + ng * t / nt;
        parts[t].g1 = job->g0 + ng * (t + 1) / nt;
        if (t > 0)
            started[t] = pthread_create(&tid[t], NULL, pack_thread, &parts[t]) == 0;
    }
    pack_range(&parts[0]);
    for (int64_t t = 1; t < nt; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            pack_range(&parts[t]);
    }
    for (int64_t t = 0; t < nt; t++)
        if (parts[t].rc != 0)
            job->rc = parts[t].rc;
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
    pack_job job = {w, dst, nb, 0, ng, col_bytes, 0};
    pack_parallel(&job, bytes);
    if (job.rc != 0) { /* Q8_0 holding -128: keeps the row layout */
        free(dst);
        return 0;
    }
    switch (w->type) {
    case EXSA_TYPE_Q4_0: w->layout = EXSA_LAYOUT_Q4_0X8; break;
    case EXSA_TYPE_Q4_1: w->layout = EXSA_LAYOUT_Q4_1X8; break;
    case EXSA_TYPE_Q5_0: w->layout = EXSA_LAYOUT_Q5_0X8; break;
    case EXSA_TYPE_Q5_1: w->layout = EXSA_LAYOUT_Q5_1X8; break;
    case EXSA_TYPE_Q8_0: w->layout = EXSA_LAYOUT_Q8_0X8; break;
    case EXSA_TYPE_Q4_K: w->layout = EXSA_LAYOUT_Q4_KX8; break;
    case EXSA_TYPE_Q6_K: w->layout = EXSA_LAYOUT_Q6_KX8; break;
    default: w->layout = EXSA_LAYOUT_FX8; break;
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
