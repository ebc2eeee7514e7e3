/* Token sampling chain (see sampling.h for the order of the stages).
 *
 * Each call copies the logits into a candidate array sized for n_vocab at
 * create time and then shrinks it stage by stage; nothing is allocated per
 * token. The stages follow the well-known semantics of llama.cpp's samplers
 * (min_keep = 1 everywhere) with a few deliberate differences:
 *
 *  - Ties are broken by the lowest token id everywhere (argmax, sorting,
 *    top-k, typical ordering), so results never depend on sort stability.
 *  - NaN and -inf logits (after penalties and bias) are removed before the
 *    truncations; if some logits are +inf, only those are kept, uniformly.
 *  - Temperature is applied as (logit - max) / T, which is the same
 *    distribution as logit / T but cannot overflow to inf.
 *  - The draw is by inversion with a strict "cumulative > u" test, so a
 *    candidate whose probability underflowed to 0 is never drawn.
 *  - temperature <= 0 is greedy even with mirostat on (mu then stays put).
 *    Mirostat updates mu when it draws, not on accept.
 *
 * Cost per token for a vocabulary of n: top-k selects with a size-k heap
 * (O(n log k)); full sorts (tail-free, typical, top-p without top-k) are a
 * linear radix sort; top-p without top-k first narrows the set with a
 * histogram of the probability mass by logit, so usually only a few
 * thousand candidates are sorted.
 *
 * Penalty history: an occurrence count per token (n_vocab entries) plus the
 * list of tokens with a non-zero count, kept up to date on each accept, so
 * applying penalties costs O(distinct tokens in the window), never
 * O(n_vocab), and counting costs O(1) per accepted token.
 *  - repeat_last_n > 0: a ring buffer of the window. It starts at
 *    min(repeat_last_n, 1024) entries and doubles (amortized, only inside
 *    accept) up to repeat_last_n, so a huge window costs memory only for the
 *    history actually seen. If growing fails the window silently stays at
 *    the current capacity (accept cannot report errors).
 *  - repeat_last_n = -1: the whole history. Nothing ever leaves the window,
 *    so no ring is needed at all: the counts (saturating at INT32_MAX) and
 *    the distinct list are bounded by n_vocab. Memory is fixed at create.
 */
#include "engine/sampling.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"
#include "util/rng.h"

/* Mirostat v1's number of top tokens used to estimate the Zipf exponent
 * (the value llama.cpp and the paper use). */
#define MIROSTAT_M 100
/* Top-p narrows large candidate sets by logit buckets before sorting. */
#define TOP_P_PREFILTER_MIN 1024
#define TOP_P_BUCKETS 128
#define PENALTY_RING_INIT 1024

typedef struct cand {
    int32_t id;
    float logit;
    float p;   /* probability, valid right after softmax() */
    float aux; /* per-stage scratch: typical-p score */
} cand;

struct exsa_sampler {
    exsa_sampling_params par; /* par.logit_bias points at bias */
    exsa_logit_bias *bias;
    int32_t n_vocab;

    cand *cand; /* [n_vocab] live candidates cand[0..n) */
    cand *tmp;  /* [n_vocab] scratch: heap for partial sorts, typical reorder */
    int32_t n;
    int sorted; /* cand[0..n) is in best-first order */

    exsa_rng rng;
    double mu; /* mirostat state */

    int penalize;       /* penalties enabled: history is recorded */
    int32_t *count;     /* [n_vocab] occurrences in the window */
    int32_t *distinct;  /* [n_vocab] tokens with count > 0 */
    int32_t *slot;      /* [n_vocab] position of a token in distinct */
    int32_t n_distinct;
    int32_t *ring;      /* window, oldest at ring_head (repeat_last_n > 0) */
    int32_t ring_cap, ring_len, ring_head;
    int32_t window;     /* repeat_last_n, or less if the ring could not grow */
};

/* ---- parameters ---- */

void exsa_sampling_params_default(exsa_sampling_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->typical_p = 1.0f;
    p->tfs_z = 1.0f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->presence_penalty = 0.0f;
    p->frequency_penalty = 0.0f;
    p->mirostat = 0;
    p->mirostat_tau = 5.0f;
    p->mirostat_eta = 0.1f;
    p->seed = EXSA_SEED_RANDOM;
    p->n_logit_bias = 0;
    p->logit_bias = NULL;
}

/* NaN fails every comparison, so each check is written as !(valid). */
static int check_closed(exsa_err *err, const char *name, float v, double lo, double hi)
{
    if (!(v >= lo && v <= hi))
        return exsa_err_set(err, EXSA_EINVAL, "%s must be in [%g, %g], got %g", name, lo, hi,
                            (double)v);
    return 0;
}

static int check_nonneg_finite(exsa_err *err, const char *name, float v)
{
    if (!(isfinite(v) && v >= 0.0f))
        return exsa_err_set(err, EXSA_EINVAL, "%s must be a finite number >= 0, got %g", name,
                            (double)v);
    return 0;
}

int exsa_sampling_params_check(const exsa_sampling_params *p, int32_t n_vocab, exsa_err *err)
{
    int rc;
    if (!p)
        return exsa_err_set(err, EXSA_EINVAL, "sampling params are NULL");
    if (n_vocab <= 0)
        return exsa_err_set(err, EXSA_EINVAL, "n_vocab must be > 0, got %d", (int)n_vocab);
    if ((rc = check_nonneg_finite(err, "temperature", p->temperature)))
        return rc;
    if (p->top_k < 0)
        return exsa_err_set(err, EXSA_EINVAL, "top_k must be >= 0 (0 disables), got %d",
                            (int)p->top_k);
    if ((rc = check_closed(err, "top_p", p->top_p, 0.0, 1.0)))
        return rc;
    if ((rc = check_closed(err, "min_p", p->min_p, 0.0, 1.0)))
        return rc;
    if ((rc = check_closed(err, "typical_p", p->typical_p, 0.0, 1.0)))
        return rc;
    if (!(p->tfs_z > 0.0f && p->tfs_z <= 1.0f))
        return exsa_err_set(err, EXSA_EINVAL, "tfs_z must be in (0, 1], got %g", (double)p->tfs_z);
    if (!(isfinite(p->repeat_penalty) && p->repeat_penalty > 0.0f))
        return exsa_err_set(err, EXSA_EINVAL, "repeat_penalty must be a finite number > 0, got %g",
                            (double)p->repeat_penalty);
    if (p->repeat_last_n < -1)
        return exsa_err_set(err, EXSA_EINVAL,
                            "repeat_last_n must be >= -1 (-1 = whole history, 0 disables), got %d",
                            (int)p->repeat_last_n);
    if ((rc = check_closed(err, "presence_penalty", p->presence_penalty, -2.0, 2.0)))
        return rc;
    if ((rc = check_closed(err, "frequency_penalty", p->frequency_penalty, -2.0, 2.0)))
        return rc;
    if (p->mirostat < 0 || p->mirostat > 2)
        return exsa_err_set(err, EXSA_EINVAL, "mirostat must be 0, 1 or 2, got %d",
                            (int)p->mirostat);
    if ((rc = check_nonneg_finite(err, "mirostat_tau", p->mirostat_tau)))
        return rc;
    if (!(p->mirostat_eta > 0.0f && p->mirostat_eta <= 1.0f))
        return exsa_err_set(err, EXSA_EINVAL, "mirostat_eta must be in (0, 1], got %g",
                            (double)p->mirostat_eta);
    if (p->n_logit_bias < 0)
        return exsa_err_set(err, EXSA_EINVAL, "n_logit_bias must be >= 0, got %d",
                            (int)p->n_logit_bias);
    if (p->n_logit_bias > 0 && !p->logit_bias)
        return exsa_err_set(err, EXSA_EINVAL, "logit_bias is NULL but n_logit_bias is %d",
                            (int)p->n_logit_bias);
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        const exsa_logit_bias *b = &p->logit_bias[i];
        if (b->token < 0 || b->token >= n_vocab)
            return exsa_err_set(err, EXSA_EINVAL, "logit_bias[%d].token must be in [0, %d), got %d",
                                (int)i, (int)n_vocab, (int)b->token);
        if (!(isfinite(b->bias) || b->bias == -INFINITY))
            return exsa_err_set(err, EXSA_EINVAL, "logit_bias[%d].bias must be finite or -inf, got %g",
                                (int)i, (double)b->bias);
    }
    return 0;
}

/* ---- create / free / reset ---- */

static void *alloc_array(size_t n, size_t size)
{
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes))
        return NULL;
    return malloc(bytes ? bytes : 1);
}

static void reseed(exsa_sampler *s)
{
    uint64_t seed = s->par.seed;
    if (seed == EXSA_SEED_RANDOM) /* mix in the address: two samplers created together differ */
        seed = exsa_rng_clock_seed() ^ ((uint64_t)(uintptr_t)s * 0x9e3779b97f4a7c15ULL);
    exsa_rng_seed(&s->rng, seed);
}

exsa_sampler *exsa_sampler_create(const exsa_sampling_params *p, int32_t n_vocab, exsa_err *err)
{
    if (exsa_sampling_params_check(p, n_vocab, err) != 0)
        return NULL;
    exsa_sampler *s = calloc(1, sizeof *s);
    if (!s) {
        exsa_err_set(err, EXSA_ENOMEM, "sampler: out of memory");
        return NULL;
    }
    s->par = *p;
    s->n_vocab = n_vocab;
    size_t nv = (size_t)n_vocab;
    s->cand = alloc_array(nv, sizeof *s->cand);
    s->tmp = alloc_array(nv, sizeof *s->tmp);
    if (!s->cand || !s->tmp)
        goto nomem;
    if (p->n_logit_bias > 0) {
        s->bias = alloc_array((size_t)p->n_logit_bias, sizeof *s->bias);
        if (!s->bias)
            goto nomem;
        memcpy(s->bias, p->logit_bias, (size_t)p->n_logit_bias * sizeof *s->bias);
    }
    s->par.logit_bias = s->bias;

    s->penalize = p->repeat_last_n != 0 &&
                  (p->repeat_penalty != 1.0f || p->frequency_penalty != 0.0f ||
                   p->presence_penalty != 0.0f);
    if (s->penalize) {
        s->count = calloc(nv, sizeof *s->count);
        s->distinct = alloc_array(nv, sizeof *s->distinct);
        s->slot = alloc_array(nv, sizeof *s->slot);
        if (!s->count || !s->distinct || !s->slot)
            goto nomem;
        if (p->repeat_last_n > 0) {
            s->window = p->repeat_last_n;
            s->ring_cap = s->window < PENALTY_RING_INIT ? s->window : PENALTY_RING_INIT;
            s->ring = alloc_array((size_t)s->ring_cap, sizeof *s->ring);
            if (!s->ring)
                goto nomem;
        }
    }
    s->mu = 2.0 * (double)p->mirostat_tau;
    reseed(s);
    return s;

nomem:
    exsa_err_set(err, EXSA_ENOMEM, "sampler: cannot allocate working memory for n_vocab %d",
                 (int)n_vocab);
    exsa_sampler_free(s);
    return NULL;
}

void exsa_sampler_free(exsa_sampler *s)
{
    if (!s)
        return;
    free(s->cand);
    free(s->tmp);
    free(s->bias);
    free(s->count);
    free(s->distinct);
    free(s->slot);
    free(s->ring);
    free(s);
}

void exsa_sampler_reset(exsa_sampler *s)
{
    if (!s)
        return;
    for (int32_t i = 0; i < s->n_distinct; i++)
        s->count[s->distinct[i]] = 0;
    s->n_distinct = 0;
    s->ring_len = 0;
    s->ring_head = 0;
    s->mu = 2.0 * (double)s->par.mirostat_tau;
    reseed(s);
}

double exsa_sampler_mirostat_mu(const exsa_sampler *s)
{
    return s && s->par.mirostat ? s->mu : 0.0;
}

/* ---- penalty history ---- */

static void count_add(exsa_sampler *s, int32_t t)
{
    if (s->count[t] == 0) {
        s->slot[t] = s->n_distinct;
        s->distinct[s->n_distinct++] = t;
    }
    if (s->count[t] < INT32_MAX) /* saturates only with a whole-history window */
        s->count[t]++;
}

static void count_remove(exsa_sampler *s, int32_t t)
{
    if (--s->count[t] == 0) {
        int32_t j = s->slot[t];
        int32_t last = s->distinct[--s->n_distinct];
        s->distinct[j] = last;
        s->slot[last] = j;
    }
}

/* Doubles the ring towards the window size; while it is not full yet the
 * ring has never wrapped (ring_head == 0), so realloc keeps the order. */
static void ring_grow(exsa_sampler *s)
{
    int32_t cap = s->ring_cap > s->window / 2 ? s->window : s->ring_cap * 2;
    int32_t *r = realloc(s->ring, (size_t)cap * sizeof *r);
    if (!r) {
        s->window = s->ring_cap;
        return;
    }
    s->ring = r;
    s->ring_cap = cap;
}

void exsa_sampler_accept(exsa_sampler *s, int32_t token)
{
    if (!s || !s->penalize || token < 0 || token >= s->n_vocab)
        return;
    if (s->par.repeat_last_n > 0) {
        if (s->ring_len == s->ring_cap && s->ring_cap < s->window)
            ring_grow(s);
        if (s->ring_len < s->ring_cap) {
            s->ring[s->ring_len++] = token;
        } else {
            count_remove(s, s->ring[s->ring_head]);
            s->ring[s->ring_head] = token;
            s->ring_head = s->ring_head + 1 == s->ring_cap ? 0 : s->ring_head + 1;
        }
    }
    count_add(s, token);
}

/* ---- candidate helpers ---- */

/* The chain's total order: higher logit first, then lower id. */
static int better(const cand *a, const cand *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cmp_better(const void *pa, const void *pb)
{
    const cand *a = pa, *b = pb;
    return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

/* Radix key: ascending key order is descending logit order (-0 == +0). */
static uint32_t sort_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if (u == 0x80000000u)
        u = 0;
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ~u;
}

/* Best-first sort of c[0..n). qsort costs ~10 ns per comparison through the
 * function pointer, which is milliseconds for a 150k vocabulary; a stable
 * LSD radix sort on the 32-bit logit key (three 11-bit passes) is linear.
 * Stability keeps ties in input order, which is not always id order (after
 * typical-p), so runs of equal logits are then put in id order. */
static void sort_cands(cand *c, cand *tmp, int32_t n)
{
    if (n < 256) {
        qsort(c, (size_t)n, sizeof *c, cmp_better);
        return;
    }
    uint32_t hist[2048];
    cand *src = c, *dst = tmp;
    for (int shift = 0; shift < 32; shift += 11) {
        memset(hist, 0, sizeof hist);
        for (int32_t i = 0; i < n; i++)
            hist[(sort_key(src[i].logit) >> shift) & 2047u]++;
        uint32_t sum = 0;
        for (int d = 0; d < 2048; d++) {
            uint32_t h = hist[d];
            hist[d] = sum;
            sum += h;
        }
        for (int32_t i = 0; i < n; i++)
            dst[hist[(sort_key(src[i].logit) >> shift) & 2047u]++] = src[i];
        cand *t = src;
        src = dst;
        dst = t;
    }
    /* three passes: the result is in tmp */
    memcpy(c, src, (size_t)n * sizeof *c);
    for (int32_t i = 0, j; i < n; i = j) {
        int ordered = 1;
        for (j = i + 1; j < n && c[j].logit == c[i].logit; j++)
            ordered &= c[j].id > c[j - 1].id;
        if (!ordered)
            qsort(c + i, (size_t)(j - i), sizeof *c, cmp_better);
    }
}

static void sort_all(exsa_sampler *s)
{
    if (!s->sorted)
        sort_cands(s->cand, s->tmp, s->n);
    s->sorted = 1;
}

/* Heap whose root is the worst of the kept candidates. */
static void heap_sift(cand *h, int32_t m, int32_t i)
{
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < m && better(&h[w], &h[l]))
            w = l;
        if (r < m && better(&h[w], &h[r]))
            w = r;
        if (w == i)
            return;
        cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* The best m candidates, best first: in cand itself when a full sort is
 * cheap enough, else in tmp via a size-m heap (O(n log m)). cand[0..n) keeps
 * its content either way. */
static const cand *best_prefix(exsa_sampler *s, int32_t m)
{
    if (s->sorted || m >= s->n / 4) {
        sort_all(s);
        return s->cand;
    }
    cand *h = s->tmp;
    memcpy(h, s->cand, (size_t)m * sizeof *h);
    for (int32_t i = m / 2 - 1; i >= 0; i--)
        heap_sift(h, m, i);
    for (int32_t i = m; i < s->n; i++) {
        if (better(&s->cand[i], &h[0])) {
            h[0] = s->cand[i];
            heap_sift(h, m, 0);
        }
    }
    qsort(h, (size_t)m, sizeof *h, cmp_better);
    return h;
}

/* Keeps the best k candidates, sorted. */
static void keep_best(exsa_sampler *s, int32_t k)
{
    if (k >= s->n) {
        sort_all(s);
        return;
    }
    const cand *src = best_prefix(s, k);
    if (src != s->cand)
        memcpy(s->cand, src, (size_t)k * sizeof *s->cand);
    s->n = k;
    s->sorted = 1;
}

static float max_logit(const exsa_sampler *s)
{
    if (s->sorted)
        return s->cand[0].logit;
    float m = s->cand[0].logit;
    for (int32_t i = 1; i < s->n; i++)
        if (s->cand[i].logit > m)
            m = s->cand[i].logit;
    return m;
}

/* Fills .p with the softmax of the logits (all finite, n >= 1). */
static void softmax(exsa_sampler *s)
{
    float mx = max_logit(s);
    double sum = 0.0;
    for (int32_t i = 0; i < s->n; i++) {
        float e = expf(s->cand[i].logit - mx);
        s->cand[i].p = e;
        sum += e;
    }
    /* sum >= 1: the max contributes exp(0). */
    for (int32_t i = 0; i < s->n; i++)
        s->cand[i].p = (float)(s->cand[i].p / sum);
}

/* Argmax of the (penalized, biased) logits over the full vocabulary, lowest
 * id on ties, NaN ignored; 0 if everything is NaN. cand is still in id order. */
static int32_t argmax_all(const exsa_sampler *s)
{
    int32_t best = -1;
    float best_l = -INFINITY;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        float l = s->cand[i].logit;
        if (l > best_l || (best < 0 && l == best_l)) { /* NaN fails both */
            best = i;
            best_l = l;
        }
    }
    return best < 0 ? 0 : best;
}

/* Drops banned (-inf) and NaN candidates; if any logit is +inf, keeps only
 * those, as equals. Returns the number left. */
static int32_t drop_banned(exsa_sampler *s)
{
    int32_t n = 0, n_inf = 0;
    for (int32_t i = 0; i < s->n; i++) {
        float l = s->cand[i].logit;
        if (l > -INFINITY) { /* false for NaN too */
            s->cand[n++] = s->cand[i];
            n_inf += l == INFINITY;
        }
    }
    if (n_inf > 0) {
        int32_t k = 0;
        for (int32_t i = 0; i < n; i++) {
            if (s->cand[i].logit == INFINITY) {
                s->cand[k] = s->cand[i];
                s->cand[k++].logit = 0.0f;
            }
        }
        n = k;
    }
    s->n = n;
    s->sorted = 0;
    return n;
}

/* ---- stages ---- */

static void apply_penalties(exsa_sampler *s)
{
    if (!s->penalize)
        return;
    const float rep = s->par.repeat_penalty, freq = s->par.frequency_penalty,
                pres = s->par.presence_penalty;
    for (int32_t i = 0; i < s->n_distinct; i++) {
        int32_t t = s->distinct[i];
        float l = s->cand[t].logit; /* cand is in id order here */
        /* Dividing a negative logit would raise it: multiply instead. */
        l = l <= 0.0f ? l * rep : l / rep;
        l -= (float)s->count[t] * freq + pres;
        s->cand[t].logit = l;
    }
}

static void apply_bias(exsa_sampler *s)
{
    for (int32_t i = 0; i < s->par.n_logit_bias; i++)
        s->cand[s->bias[i].token].logit += s->bias[i].bias;
}

static void apply_top_k(exsa_sampler *s, int32_t k)
{
    if (k > 0 && k < s->n)
        keep_best(s, k);
}

/* Tail-free sampling: cut where the normalized |second derivative| of the
 * sorted probabilities has accumulated more than z. */
static void apply_tail_free(exsa_sampler *s, float z)
{
    if (z >= 1.0f || s->n <= 2)
        return;
    sort_all(s);
    softmax(s);
    const cand *c = s->cand;
    int32_t nd = s->n - 2;
    double sum = 0.0;
    for (int32_t i = 0; i < nd; i++) {
        float d = fabsf((c[i].p - c[i + 1].p) - (c[i + 1].p - c[i + 2].p));
        s->tmp[i].aux = d;
        sum += d;
    }
    double cum = 0.0;
    for (int32_t i = 0; i < nd; i++) {
        cum += sum > 1e-6 ? s->tmp[i].aux / sum : 1.0 / nd;
        if (cum > z && i >= 1) {
            s->n = i;
            return;
        }
    }
}

static int cmp_typical(const void *pa, const void *pb)
{
    const cand *a = pa, *b = pb;
    if (a->aux != b->aux)
        return a->aux < b->aux ? -1 : 1;
    return cmp_better(a, b);
}

/* Locally typical sampling: keep the tokens whose surprise is closest to the
 * entropy until their mass exceeds p. */
static void apply_typical(exsa_sampler *s, float tp)
{
    if (tp >= 1.0f)
        return;
    softmax(s);
    double h = 0.0;
    for (int32_t i = 0; i < s->n; i++) {
        double p = s->cand[i].p;
        if (p > 0.0)
            h -= p * log(p);
    }
    for (int32_t i = 0; i < s->n; i++) {
        double p = s->cand[i].p;
        s->cand[i].aux = p > 0.0 ? (float)fabs(-log(p) - h) : INFINITY;
    }
    memcpy(s->tmp, s->cand, (size_t)s->n * sizeof *s->tmp);
    qsort(s->tmp, (size_t)s->n, sizeof *s->tmp, cmp_typical);
    double cum = 0.0;
    int32_t keep = s->n;
    for (int32_t i = 0; i < s->n; i++) {
        cum += s->tmp[i].p;
        if (cum > tp) {
            keep = i + 1;
            break;
        }
    }
    memcpy(s->cand, s->tmp, (size_t)keep * sizeof *s->cand);
    s->n = keep;
    s->sorted = 0; /* ordered by typicality now */
}

/* Length of the shortest prefix of c[0..m) whose mass reaches p, or 0. */
static int32_t top_p_prefix(const cand *c, int32_t m, float tp)
{
    double cum = 0.0;
    for (int32_t i = 0; i < m; i++) {
        cum += c[i].p;
        if (cum >= tp)
            return i + 1;
    }
    return 0;
}

/* Bucket of a logit by its distance below the max, in 1/8 nat steps; the
 * last bucket takes everything further down. Monotone in the logit. */
static int top_p_bucket(float mx, float l)
{
    float d = (mx - l) * 8.0f;
    return d < (float)(TOP_P_BUCKETS - 1) ? (int)d : TOP_P_BUCKETS - 1;
}

static void apply_top_p(exsa_sampler *s, float tp)
{
    if (tp >= 1.0f)
        return;
    softmax(s);
    if (!s->sorted && s->n > TOP_P_PREFILTER_MIN) {
        /* Avoid sorting the whole vocabulary: sum the mass per bucket; the
         * buckets nearest the max whose mass reaches p hold the whole top-p
         * prefix (every token in them outranks every token outside). */
        double mass[TOP_P_BUCKETS] = {0};
        float mx = max_logit(s);
        for (int32_t i = 0; i < s->n; i++)
            mass[top_p_bucket(mx, s->cand[i].logit)] += s->cand[i].p;
        double cum = 0.0;
        int last = TOP_P_BUCKETS - 1;
        for (int b = 0; b < TOP_P_BUCKETS - 1; b++) {
            cum += mass[b];
            if (cum >= tp) {
                last = b;
                break;
            }
        }
        if (last < TOP_P_BUCKETS - 1) {
            int32_t k = 0;
            for (int32_t i = 0; i < s->n; i++)
                if (top_p_bucket(mx, s->cand[i].logit) <= last)
                    s->cand[k++] = s->cand[i];
            s->n = k;
        }
    }
    sort_all(s);
    int32_t k = top_p_prefix(s->cand, s->n, tp);
    if (k > 0) /* else rounding left the total just under p: keep all */
        s->n = k;
}

static void apply_min_p(exsa_sampler *s, float mp)
{
    if (mp <= 0.0f)
        return;
    /* p_i >= mp * p_max  <=>  logit_i >= max_logit + log(mp); order kept. */
    float thr = max_logit(s) + logf(mp);
    int32_t k = 0;
    for (int32_t i = 0; i < s->n; i++)
        if (s->cand[i].logit >= thr)
            s->cand[k++] = s->cand[i];
    s->n = k;
}

/* Scales the logits by 1/T around their max (same softmax as logit / T). */
static void apply_temperature(exsa_sampler *s, float t)
{
    float mx = max_logit(s);
    for (int32_t i = 0; i < s->n; i++)
        s->cand[i].logit = (s->cand[i].logit - mx) / t;
}

/* Draws from softmax(logit / t) over cand[0..n); returns the position and
 * leaves the normalized probabilities in .p. */
static int32_t draw(exsa_sampler *s, float t)
{
    float mx = max_logit(s);
    double sum = 0.0;
    for (int32_t i = 0; i < s->n; i++) {
        float e = expf((s->cand[i].logit - mx) / t);
        s->cand[i].p = e;
        sum += e;
    }
    double target = exsa_rng_uniform(&s->rng) * sum;
    double cum = 0.0;
    int32_t pick = -1, last_pos = 0;
    for (int32_t i = 0; i < s->n; i++) {
        if (s->cand[i].p > 0.0f)
            last_pos = i;
        cum += s->cand[i].p;
        if (pick < 0 && cum > target)
            pick = i;
        s->cand[i].p = (float)(s->cand[i].p / sum);
    }
    /* u * sum can round up to sum: fall back to the last possible token. */
    return pick >= 0 ? pick : last_pos;
}

static void mirostat_update(exsa_sampler *s, float p)
{
    double surprise = -log2((double)p);
    s->mu -= (double)s->par.mirostat_eta * (surprise - (double)s->par.mirostat_tau);
}

/* Mirostat v1: estimate the Zipf exponent s_hat from the top m tokens, then
 * keep the k tokens that make the expected surprise approach mu. */
static int32_t mirostat_v1(exsa_sampler *s)
{
    softmax(s);
    int32_t m = s->n < MIROSTAT_M ? s->n : MIROSTAT_M;
    const cand *c = best_prefix(s, m);
    double sum_tb = 0.0, sum_tt = 0.0;
    for (int32_t i = 0; i + 1 < m; i++) {
        if (!(c[i + 1].p > 0.0f)) /* the rest underflowed: no information */
            break;
        double t = log((double)(i + 2) / (double)(i + 1));
        double b = log((double)c[i].p / (double)c[i + 1].p);
        sum_tb += t * b;
        sum_tt += t * t;
    }
    double k = 1.0;
    if (sum_tt > 0.0) {
        double s_hat = sum_tb / sum_tt;
        double eps = s_hat - 1.0;
        double ln_n = log((double)s->n_vocab);
        double den = -expm1(-eps * ln_n); /* 1 - N^-eps */
        double ratio = den != 0.0 ? eps / den : 1.0 / ln_n; /* limit at eps -> 0 */
        k = pow(ratio * exp2(s->mu), 1.0 / s_hat);
    }
    if (!(k >= 1.0)) /* NaN too */
        k = 1.0;
    int32_t ki = k >= (double)s->n ? s->n : (int32_t)k;
    keep_best(s, ki);
    int32_t pick = draw(s, 1.0f);
    mirostat_update(s, s->cand[pick].p);
    return s->cand[pick].id;
}

/* Mirostat v2: keep the tokens whose surprise -log2 p is at most mu (at
 * least the most likely one). */
static int32_t mirostat_v2(exsa_sampler *s)
{
    softmax(s);
    int32_t best = 0;
    for (int32_t i = 1; i < s->n; i++)
        if (better(&s->cand[i], &s->cand[best]))
            best = i;
    /* -log2 p <= mu  <=>  p >= 2^-mu */
    double thr = exp2(-s->mu);
    int32_t k = 0;
    for (int32_t i = 0; i < s->n; i++)
        if ((double)s->cand[i].p >= thr)
            s->cand[k++] = s->cand[i];
    if (k == 0) {
        s->cand[0] = s->cand[best];
        k = 1;
    }
    s->n = k;
    int32_t pick = draw(s, 1.0f);
    mirostat_update(s, s->cand[pick].p);
    return s->cand[pick].id;
}

int32_t exsa_sampler_sample(exsa_sampler *s, const float *logits)
{
    if (!s || !logits)
        return EXSA_EINVAL;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        s->cand[i].id = i;
        s->cand[i].logit = logits[i];
        s->cand[i].p = 0.0f;
    }
    s->n = s->n_vocab;
    s->sorted = 0;

    apply_penalties(s);
    apply_bias(s);
    const exsa_sampling_params *p = &s->par;
    if (p->temperature <= 0.0f)
        return argmax_all(s);
    /* drop_banned only writes kept candidates, so when none is kept cand is
     * untouched and the argmax is still that of the whole vocabulary. */
    if (drop_banned(s) == 0)
        return argmax_all(s);

    if (p->mirostat == 1 || p->mirostat == 2) {
        apply_temperature(s, p->temperature);
        return p->mirostat == 1 ? mirostat_v1(s) : mirostat_v2(s);
    }
    apply_top_k(s, p->top_k);
    apply_tail_free(s, p->tfs_z);
    apply_typical(s, p->typical_p);
    apply_top_p(s, p->top_p);
    apply_min_p(s, p->min_p);
    return s->cand[draw(s, p->temperature)].id;
}
