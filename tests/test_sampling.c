/* Sampling chain tests.
 *
 * Each stage is checked on small vocabularies whose logits are logs of
 * chosen probabilities, so the kept set and the renormalized distribution
 * can be worked out by hand (the expected sets are written in the comments
 * and the probabilities are computed here in double). The sampler is then
 * drawn N_DRAWS times with a fixed seed and every token's count c must
 * satisfy |c - N p| <= 5 sqrt(N p (1 - p)) + 5 (five standard deviations,
 * plus a few counts so that tokens expected only a handful of times, where
 * the normal approximation is poor, do not trip it), while a token outside
 * the kept set must never appear. Larger cases compare against a
 * naive double-precision implementation of the chain written in this file.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampling.h"
#include "test_util.h"
#include "util/rng.h"

#define N_DRAWS 20000

/* ---- helpers ---- */

/* Everything off: plain softmax at temperature 1. */
static exsa_sampling_params neutral(void)
{
    exsa_sampling_params p;
    exsa_sampling_params_default(&p);
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.typical_p = 1.0f;
    p.tfs_z = 1.0f;
    p.repeat_penalty = 1.0f;
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.0f;
    p.mirostat = 0;
    p.seed = 1234;
    return p;
}

static exsa_sampler *make(const exsa_sampling_params *p, int32_t n_vocab)
{
    exsa_err err = {0};
    exsa_sampler *s = exsa_sampler_create(p, n_vocab, &err);
    if (!s)
        print_error("create failed: %s\n", err.msg);
    assert_non_null(s);
    return s;
}

static void draw_counts(exsa_sampler *s, const float *logits, int v, int n, long *counts)
{
    memset(counts, 0, (size_t)v * sizeof *counts);
    for (int i = 0; i < n; i++) {
        int32_t t = exsa_sampler_sample(s, logits);
        assert_true(t >= 0 && t < v);
        counts[t]++;
    }
}

static void check_freq(const long *counts, const double *expect, int v, int n, const char *what)
{
    int bad = 0;
    for (int i = 0; i < v; i++) {
        double p = expect[i], mean = p * n;
        double tol = 5.0 * sqrt(mean * (1.0 - p)) + 5.0;
        if ((p == 0.0 && counts[i] != 0) || fabs((double)counts[i] - mean) > tol) {
            print_error("%s: token %d: count %ld, expected %.1f (tol %.1f)\n", what, i, counts[i],
                        mean, tol);
            bad = 1;
        }
    }
    if (bad)
        fail();
}

static void run_and_check(const exsa_sampling_params *p, const float *logits, int v,
                          const double *expect, const char *what)
{
    exsa_sampler *s = make(p, v);
    long *counts = calloc((size_t)v, sizeof *counts);
    assert_non_null(counts);
    draw_counts(s, logits, v, N_DRAWS, counts);
    check_freq(counts, expect, v, N_DRAWS, what);
    free(counts);
    exsa_sampler_free(s);
}

static void normalize(double *e, int v)
{
    double sum = 0.0;
    for (int i = 0; i < v; i++)
        sum += e[i];
    for (int i = 0; i < v; i++)
        e[i] /= sum;
}

/* The six-token fixture: probabilities by rank, placed on shuffled ids so
 * that "sorted" and "id order" differ. logit = ln p, so softmax gives p. */
static const double P6[6] = {0.40, 0.25, 0.15, 0.10, 0.06, 0.04};
static const int ID6[6] = {3, 0, 5, 1, 4, 2};

static void logits6(float *l)
{
    for (int r = 0; r < 6; r++)
        l[ID6[r]] = (float)log(P6[r]);
}

/* Expected distribution over the ranks listed in keep (a bitmask of ranks),
 * each proportional to P6[r]^power (power = 1 / temperature). */
static void expect6(double *e, unsigned keep, double power)
{
    for (int r = 0; r < 6; r++)
        e[ID6[r]] = (keep >> r & 1u) ? pow(P6[r], power) : 0.0;
    normalize(e, 6);
}

static void check6(const exsa_sampling_params *p, unsigned keep, double power, const char *what)
{
    float l[6];
    double e[6];
    logits6(l);
    expect6(e, keep, power);
    run_and_check(p, l, 6, e, what);
}

#define RANKS(...) ranks_mask((int[]){__VA_ARGS__, -1})
static unsigned ranks_mask(const int *r)
{
    unsigned m = 0;
    for (; *r >= 0; r++)
        m |= 1u << *r;
    return m;
}

/* ---- stages on the six-token fixture ---- */

static void test_plain_softmax(void **state)
{
    (void)state;
    exsa_sampling_params p = neutral();
    check6(&p, RANKS(0, 1, 2, 3, 4, 5), 1.0, "plain");
}

static void test_top_k(void **state)
{
    (void)state;
    exsa_sampling_params p = neutral();
    p.top_k = 2; /* ranks 0, 1: 0.4/0.65, 0.25/0.65 */
    check6(&p, RANKS(0, 1), 1.0, "top_k 2");
    p.top_k = 1;
    check6(&p, RANKS(0), 1.0, "top_k 1");
    p.top_k = 6;
    check6(&p, RANKS(0, 1, 2, 3, 4, 5), 1.0, "top_k 6");
    p.top_k = 100; /* larger than the vocabulary: no-op */
    check6(&p, RANKS(0, 1, 2, 3, 4, 5), 1.0, "top_k 100");
}

static void test_top_p(void **state)
{
    (void)state;
    exsa_sampling_params p = neutral();
    p.top_p = 0.7f; /* cumulative 0.40, 0.65, 0.80 >= 0.7: ranks 0..2 */
    check6(&p, RANKS(0, 1, 2), 1.0, "top_p 0.7");
    p.top_p = 0.5f; /* 0.40, 0.65: ranks 0, 1 */
    check6(&p, RANKS(0, 1), 1.0, "top_p 0.5");
    p.top_p = 0.0f; /* min_keep 1: the best token only */
    check6(&p, RANKS(0), 1.0, "top_p 0");
    p.top_p = 0.95f; /* 0.40 .. 0.90, 0.96 >= 0.95: ranks 0..4 */
    check6(&p, RANKS(0, 1, 2, 3, 4), 1.0, "top_p 0.95");
}

static void test_min_p(void **state)
{
    (void)state;
    exsa_sampling_params p = neutral();
    p.min_p = 0.3f; /* p >= 0.3 * 0.4 = 0.12: ranks 0..2 */
    check6(&p, RANKS(0, 1, 2), 1.0, "min_p 0.3");
    p.min_p = 0.2f; /* p >= 0.08: ranks 0..3 */
    check6(&p, RANKS(0, 1, 2, 3), 1.0, "min_p 0.2");
    p.min_p = 1.0f; /* only the max */
    check6(&p, RANKS(0), 1.0, "min_p 1");
}

static void test_typical_p(void **state)
{
    (void)state;
    /* H = -sum p ln p = 1.52548; |-ln p - H| by rank: 0.609, 0.139, 0.372,
     * 0.777, 1.288, 1.693, so the typicality order is ranks 1, 2, 0, 3, 4, 5.
     * typical_p 0.3: cumulative 0.25, 0.40 > 0.3 -> ranks 1, 2 (the most
     * likely token is not typical). */
    exsa_sampling_params p = neutral();
    p.typical_p = 0.3f;
    check6(&p, RANKS(1, 2), 1.0, "typical 0.3");
    p.typical_p = 0.5f; /* 0.25, 0.40, 0.80 > 0.5 -> ranks 1, 2, 0 */
    check6(&p, RANKS(0, 1, 2), 1.0, "typical 0.5");
    p.typical_p = 0.0f; /* the single most typical token */
    check6(&p, RANKS(1), 1.0, "typical 0");

    /* Independent check of the hand numbers above. */
    double h = 0.0;
    for (int r = 0; r < 6; r++)
        h -= P6[r] * log(P6[r]);
    assert_true(fabs(h - 1.52548) < 1e-5);
}

static void test_tail_free(void **state)
{
    (void)state;
    /* Sorted p: .40 .25 .15 .10 .06 .04; first differences .15 .10 .05 .04
     * .02; |second differences| .05 .05 .01 .02 (sum .13), normalized 5/13,
     * 5/13, 1/13, 2/13; cumulative .385 .769 .846 1. The cut is at the
     * first index i >= 1 where the cumulative exceeds z, keeping i tokens. */
    exsa_sampling_params p = neutral();
    p.tfs_z = 0.8f; /* i = 2 (.846 > .8): ranks 0, 1 */
    check6(&p, RANKS(0, 1), 1.0, "tfs 0.8");
    p.tfs_z = 0.9f; /* i = 3: ranks 0..2 */
    check6(&p, RANKS(0, 1, 2), 1.0, "tfs 0.9");
    p.tfs_z = 0.5f; /* i = 1 (.769 > .5): rank 0 */
    check6(&p, RANKS(0), 1.0, "tfs 0.5");
    p.tfs_z = 0.3f; /* .385 > .3 at i = 0 but min_keep holds: i = 1 */
    check6(&p, RANKS(0), 1.0, "tfs 0.3");
}

static void test_temperature(void **state)
{
    (void)state;
    exsa_sampling_params p = neutral();
    p.temperature = 0.5f; /* p^2 renormalized */
    check6(&p, RANKS(0, 1, 2, 3, 4, 5), 2.0, "temperature 0.5");
    p.temperature = 2.0f; /* sqrt(p) renormalized */
    check6(&p, RANKS(0, 1, 2, 3, 4, 5), 0.5, "temperature 2");
}

static void test_chain_order(void **state)
{
    (void)state;
    /* top_k 5 drops rank 5; top-p 0.8 on the untempered renormalized
     * (.4 .25 .15 .1 .06)/.96 has cumulative .417 .677 .833 -> ranks 0..2;
     * min-p 0.05 keeps them; then temperature 0.5 squares. Had temperature
     * come first, top-p would see .619 .861 and keep only two tokens. */
    exsa_sampling_params p = neutral();
    p.top_k = 5;
    p.top_p = 0.8f;
    p.min_p = 0.05f;
    p.temperature = 0.5f;
    check6(&p, RANKS(0, 1, 2), 2.0, "top_k+top_p+min_p+temp");

    /* top-k runs before typical: top_k 1 leaves rank 0, which typical then
     * keeps (typical first would have kept ranks 1, 2). */
    p = neutral();
    p.top_k = 1;
    p.typical_p = 0.3f;
    check6(&p, RANKS(0), 1.0, "top_k before typical");

    /* typical (ranks 1, 2) before top-p 0.5: of .25/.4, .15/.4 = .625 .375,
     * top-p 0.5 keeps rank 1 alone. */
    p = neutral();
    p.typical_p = 0.3f;
    p.top_p = 0.5f;
    check6(&p, RANKS(1), 1.0, "typical before top_p");
}

static void test_ties_lowest_id(void **state)
{
    (void)state;
    float l[8] = {0};
    double e[8] = {0};
    exsa_sampling_params p = neutral();
    p.top_k = 3; /* all equal: the three lowest ids */
    e[0] = e[1] = e[2] = 1.0 / 3.0;
    run_and_check(&p, l, 8, e, "top_k ties");

    /* Exact boundaries, four equal tokens (p = 1/4 exactly in binary):
     * top-p keeps the shortest prefix with mass >= p, so 0.5 keeps two;
     * typical keeps tokens until the mass is > p, so 0.5 keeps three. */
    float l4[4] = {0};
    double e4[4] = {0.5, 0.5, 0.0, 0.0};
    p = neutral();
    p.top_p = 0.5f;
    run_and_check(&p, l4, 4, e4, "top_p boundary");
    e4[0] = e4[1] = e4[2] = 1.0 / 3.0;
    p = neutral();
    p.typical_p = 0.5f;
    run_and_check(&p, l4, 4, e4, "typical boundary");

    /* top-p over 100 equal tokens: cumulative .01 i, first >= .505 at i = 51. */
    float l100[100] = {0};
    double e100[100] = {0};
    p = neutral();
    p.top_p = 0.505f;
    for (int i = 0; i < 51; i++)
        e100[i] = 1.0 / 51.0;
    run_and_check(&p, l100, 100, e100, "top_p ties");
}

/* ---- greedy ---- */

static void test_greedy(void **state)
{
    (void)state;
    exsa_sampling_params p = neutral();
    p.temperature = 0.0f;
    float l[5] = {1.0f, 3.0f, 3.0f, 2.0f, -1.0f};
    exsa_sampler *s = make(&p, 5);
    for (int i = 0; i < 10; i++)
        assert_int_equal(exsa_sampler_sample(s, l), 1); /* tie 1/2: lowest id */
    exsa_sampler_free(s);

    /* Greedy wins over mirostat and truncations. */
    p.mirostat = 2;
    p.top_k = 1;
    s = make(&p, 5);
    assert_int_equal(exsa_sampler_sample(s, l), 1);
    exsa_sampler_free(s);

    /* After penalties: token 1 seen, 3 / 2 = 1.5 < 3 -> token 2. */
    p = neutral();
    p.temperature = 0.0f;
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 4;
    s = make(&p, 5);
    exsa_sampler_accept(s, 1);
    assert_int_equal(exsa_sampler_sample(s, l), 2);
    exsa_sampler_accept(s, 2); /* both seen: 1.5 each -> token 3 (2.0) */
    assert_int_equal(exsa_sampler_sample(s, l), 3);
    exsa_sampler_free(s);

    /* After bias: token 4 gets +5 -> 4.0. */
    exsa_logit_bias b = {4, 5.0f};
    p = neutral();
    p.temperature = 0.0f;
    p.n_logit_bias = 1;
    p.logit_bias = &b;
    s = make(&p, 5);
    assert_int_equal(exsa_sampler_sample(s, l), 4);
    exsa_sampler_free(s);

    /* Ignores NaN. */
    float ln[4] = {NAN, 1.0f, NAN, 0.5f};
    p = neutral();
    p.temperature = 0.0f;
    s = make(&p, 4);
    assert_int_equal(exsa_sampler_sample(s, ln), 1);
    exsa_sampler_free(s);
}

/* ---- penalties ---- */

/* Naive reference: penalize each token of the last `last_n` history entries
 * (all of them for -1) once, with its count in that window. */
static void ref_penalize(const float *logits, int v, const int32_t *hist, int n_hist, int last_n,
                         double rep, double freq, double pres, double *out)
{
    int start = last_n < 0 || last_n >= n_hist ? 0 : n_hist - last_n;
    for (int t = 0; t < v; t++) {
        int c = 0;
        for (int i = start; i < n_hist; i++)
            c += hist[i] == t;
        double l = logits[t];
        if (c > 0 && last_n != 0) {
            l = l <= 0.0 ? l * rep : l / rep;
            l -= c * freq + pres;
        }
        out[t] = l;
    }
}

static void softmax_d(const double *l, int v, double *e)
{
    double mx = -INFINITY;
    for (int i = 0; i < v; i++)
        mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < v; i++)
        e[i] = exp(l[i] - mx);
    normalize(e, v);
}

static void test_repeat_penalty_window(void **state)
{
    (void)state;
    /* logits 2, -1, .5, 1, 0; history 0 0 2 1 3 0, window 3 = {1, 3, 0}:
     * token 0: 2 / 2 = 1; token 1: -1 * 2 = -2; token 3: 1 / 2 = .5;
     * token 2 (outside the window) stays .5; token 4 stays 0. */
    float l[5] = {2.0f, -1.0f, 0.5f, 1.0f, 0.0f};
    const double want[5] = {1.0, -2.0, 0.5, 0.5, 0.0};
    const int32_t hist[6] = {0, 0, 2, 1, 3, 0};
    double e[5];
    exsa_sampling_params p = neutral();
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 3;
    exsa_sampler *s = make(&p, 5);
    for (int i = 0; i < 6; i++)
        exsa_sampler_accept(s, hist[i]);
    softmax_d(want, 5, e);
    long counts[5];
    draw_counts(s, l, 5, N_DRAWS, counts);
    check_freq(counts, e, 5, N_DRAWS, "repeat window 3");

    /* reset clears the history: plain softmax of the logits again */
    exsa_sampler_reset(s);
    double raw[5];
    for (int i = 0; i < 5; i++)
        raw[i] = l[i];
    softmax_d(raw, 5, e);
    draw_counts(s, l, 5, N_DRAWS, counts);
    check_freq(counts, e, 5, N_DRAWS, "after reset");

    /* Out-of-range tokens are ignored. */
    exsa_sampler_accept(s, -1);
    exsa_sampler_accept(s, 5);
    exsa_sampler_accept(s, INT32_MAX);
    draw_counts(s, l, 5, N_DRAWS, counts);
    check_freq(counts, e, 5, N_DRAWS, "out-of-range accepts");
    exsa_sampler_free(s);
}

static void test_frequency_presence_whole_history(void **state)
{
    (void)state;
    /* Same logits and history, window -1, repeat 2, frequency .5, presence
     * .25; counts: token 0 three times, 1, 2 and 3 once:
     * token 0: 2/2 - 3*.5 - .25 = -.75; token 1: -1*2 - .5 - .25 = -2.75;
     * token 2: .5/2 - .75 = -.5; token 3: 1/2 - .75 = -.25; token 4: 0. */
    float l[5] = {2.0f, -1.0f, 0.5f, 1.0f, 0.0f};
    const double want[5] = {-0.75, -2.75, -0.5, -0.25, 0.0};
    const int32_t hist[6] = {0, 0, 2, 1, 3, 0};
    double e[5];
    exsa_sampling_params p = neutral();
    p.repeat_penalty = 2.0f;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    p.repeat_last_n = -1;
    exsa_sampler *s = make(&p, 5);
    for (int i = 0; i < 6; i++)
        exsa_sampler_accept(s, hist[i]);
    softmax_d(want, 5, e);
    long counts[5];
    draw_counts(s, l, 5, N_DRAWS, counts);
    check_freq(counts, e, 5, N_DRAWS, "frequency+presence");
    exsa_sampler_free(s);

    /* Negative presence / frequency raise seen tokens: token 4 (logit 0),
     * seen twice with frequency -1 and presence -.5, goes to 2.5 under
     * greedy (0 * repeat stays 0). */
    p = neutral();
    p.temperature = 0.0f;
    p.repeat_penalty = 1.5f;
    p.frequency_penalty = -1.0f;
    p.presence_penalty = -0.5f;
    s = make(&p, 5);
    exsa_sampler_accept(s, 4);
    exsa_sampler_accept(s, 4);
    assert_int_equal(exsa_sampler_sample(s, l), 4);
    exsa_sampler_free(s);
}

/* Random histories against the naive window, including a window (3000)
 * larger than the ring's initial size, so the ring grows and then wraps. */
static void check_history_case(int last_n, int n_hist, uint64_t seed)
{
    const int v = 6;
    float l[6] = {0.5f, -0.3f, 1.2f, 0.0f, -1.0f, 0.8f};
    int32_t *hist = malloc((size_t)n_hist * sizeof *hist);
    assert_non_null(hist);
    uint64_t st = seed;
    exsa_sampling_params p = neutral();
    p.repeat_penalty = 1.3f;
    p.frequency_penalty = last_n > 100 || last_n < 0 ? 0.001f : 0.2f;
    p.presence_penalty = 0.1f;
    p.repeat_last_n = last_n;
    exsa_sampler *s = make(&p, v);
    int checkpoints[3] = {n_hist / 7, n_hist / 2, n_hist};
    int next = 0;
    for (int i = 0; i < n_hist; i++) {
        /* skewed so that the counts differ between tokens */
        float u = exsa_test_rand_uniform(&st);
        hist[i] = (int32_t)(u * u * v);
        exsa_sampler_accept(s, hist[i]);
        if (next < 3 && i + 1 == checkpoints[next]) {
            double pl[6], e[6];
            long counts[6];
            ref_penalize(l, v, hist, i + 1, last_n, p.repeat_penalty, p.frequency_penalty,
                         p.presence_penalty, pl);
            softmax_d(pl, v, e);
            draw_counts(s, l, v, N_DRAWS, counts);
            char what[64];
            snprintf(what, sizeof what, "window %d after %d", last_n, i + 1);
            check_freq(counts, e, v, N_DRAWS, what);
            next++;
        }
    }
    exsa_sampler_free(s);
    free(hist);
}

static void test_penalty_history_vs_naive(void **state)
{
    (void)state;
    /* The exact edge of a window larger than the ring's first allocation:
     * token 0 (logit 1) is penalized to .5 < .8 (token 2) while it is among
     * the last 3000 accepted tokens, and wins again once it slides out. */
    {
        float l[3] = {1.0f, -10.0f, 0.8f};
        exsa_sampling_params p = neutral();
        p.temperature = 0.0f;
        p.repeat_penalty = 2.0f;
        p.repeat_last_n = 3000;
        exsa_sampler *s = make(&p, 3);
        for (int round = 0; round < 3; round++) {
            exsa_sampler_accept(s, 0);
            for (int i = 0; i < 2999; i++)
                exsa_sampler_accept(s, 1);
            assert_int_equal(exsa_sampler_sample(s, l), 2);
            exsa_sampler_accept(s, 1);
            assert_int_equal(exsa_sampler_sample(s, l), 0);
            for (int i = 0; i < round * 1000; i++) /* shift the ring's phase */
                exsa_sampler_accept(s, 1);
        }
        exsa_sampler_free(s);
    }
    check_history_case(5, 200, 11);
    check_history_case(64, 700, 12);
    check_history_case(3000, 7000, 13);
    check_history_case(-1, 500, 14);
}

/* ---- logit bias ---- */

static void test_logit_bias(void **state)
{
    (void)state;
    /* zeros; token 2 banned, token 1 +ln 2: weights 1, 2, 0, 1 */
    float l[4] = {0};
    exsa_logit_bias b[2] = {{2, -INFINITY}, {1, (float)log(2.0)}};
    exsa_sampling_params p = neutral();
    p.n_logit_bias = 2;
    p.logit_bias = b;
    exsa_sampler *s = make(&p, 4);
    b[1].bias = 100.0f; /* the sampler copied the list at create */
    const double e[4] = {0.25, 0.5, 0.0, 0.25};
    long counts[4];
    draw_counts(s, l, 4, N_DRAWS, counts);
    check_freq(counts, e, 4, N_DRAWS, "logit bias");
    exsa_sampler_free(s);

    /* A banned token stays banned even when it has by far the largest logit,
     * with every stage and with mirostat. */
    float big[4] = {-1.0f, 0.0f, 50.0f, -2.0f};
    exsa_logit_bias ban = {2, -INFINITY};
    for (int mode = 0; mode < 3; mode++) {
        p = neutral();
        p.mirostat = mode;
        p.top_k = 2;
        p.top_p = 0.9f;
        p.n_logit_bias = 1;
        p.logit_bias = &ban;
        s = make(&p, 4);
        for (int i = 0; i < 2000; i++)
            assert_int_not_equal(exsa_sampler_sample(s, big), 2);
        exsa_sampler_free(s);
    }

    /* Everything banned: the argmax of the biased logits (all -inf, lowest
     * id), not a crash. */
    exsa_logit_bias all[3] = {{0, -INFINITY}, {1, -INFINITY}, {2, -INFINITY}};
    float l3[3] = {0.0f, 5.0f, 1.0f};
    p = neutral();
    p.n_logit_bias = 3;
    p.logit_bias = all;
    s = make(&p, 3);
    assert_int_equal(exsa_sampler_sample(s, l3), 0);
    exsa_sampler_free(s);
}

/* ---- mirostat ---- */

/* Expected first-draw distribution: many samplers, one draw each. */
static void first_draws(const exsa_sampling_params *base, const float *l, int v, long *counts)
{
    memset(counts, 0, (size_t)v * sizeof *counts);
    exsa_sampling_params p = *base;
    for (int i = 0; i < N_DRAWS; i++) {
        p.seed = 1000 + (uint64_t)i;
        exsa_sampler *s = make(&p, v);
        counts[exsa_sampler_sample(s, l)]++;
        exsa_sampler_free(s);
    }
}

static void test_mirostat_first_draw(void **state)
{
    (void)state;
    float l[6];
    double e[6];
    long counts[6];
    logits6(l);

    /* v1: with N = 6 and all five rank pairs, s_hat = 1.033073 (least
     * squares of ln(p_i / p_i+1) on ln((i+2)/(i+1))). For tau 1.5 (mu = 3),
     * k = (eps 2^mu / (1 - N^-eps))^(1/s_hat) = 4.38 -> ranks 0..3; for
     * tau 1 (mu = 2), k = 2.24 -> ranks 0, 1. */
    exsa_sampling_params p = neutral();
    p.mirostat = 1;
    p.mirostat_tau = 1.5f;
    first_draws(&p, l, 6, counts);
    expect6(e, RANKS(0, 1, 2, 3), 1.0);
    check_freq(counts, e, 6, N_DRAWS, "mirostat v1 tau 1.5");
    p.mirostat_tau = 1.0f;
    first_draws(&p, l, 6, counts);
    expect6(e, RANKS(0, 1), 1.0);
    check_freq(counts, e, 6, N_DRAWS, "mirostat v1 tau 1");

    /* N is the vocabulary size, not the number of candidates left: with
     * four more (banned) tokens N = 10 and tau 1.5 gives k = 3.46 -> ranks
     * 0..2 (N = 6 would keep four). */
    {
        float l10[10] = {0};
        double e10[10] = {0};
        long c10[10];
        exsa_logit_bias ban[4] = {{6, -INFINITY}, {7, -INFINITY}, {8, -INFINITY}, {9, -INFINITY}};
        logits6(l10);
        expect6(e10, RANKS(0, 1, 2), 1.0);
        exsa_sampling_params q = neutral();
        q.mirostat = 1;
        q.mirostat_tau = 1.5f;
        q.n_logit_bias = 4;
        q.logit_bias = ban;
        first_draws(&q, l10, 10, c10);
        check_freq(c10, e10, 10, N_DRAWS, "mirostat v1 N = n_vocab");
    }

    /* v2: mu = 3 keeps surprise -log2 p <= 3, i.e. p >= .125: ranks 0..2
     * (-log2 .15 = 2.74, -log2 .10 = 3.32). */
    p.mirostat = 2;
    p.mirostat_tau = 1.5f;
    first_draws(&p, l, 6, counts);
    expect6(e, RANKS(0, 1, 2), 1.0);
    check_freq(counts, e, 6, N_DRAWS, "mirostat v2 tau 1.5");
    /* mu = 0.2 keeps nothing: the best token alone */
    p.mirostat_tau = 0.1f;
    first_draws(&p, l, 6, counts);
    expect6(e, RANKS(0), 1.0);
    check_freq(counts, e, 6, N_DRAWS, "mirostat v2 tau 0.1");
}

/* Replays mu step by step: from the sampler's mu the test computes the kept
 * set and the renormalized probability q of the drawn token in double, and
 * checks the drawn token is kept and mu' = mu - eta (-log2 q - tau). */
static void check_mirostat_trajectory(int version, float temp, float tau, float eta)
{
    enum { V = 10, STEPS = 600 };
    float l[V];
    uint64_t st = 77 + (uint64_t)version;
    for (int i = 0; i < V; i++)
        l[i] = 1.5f * exsa_test_rand_normal(&st);
    /* probabilities after temperature, and the ids sorted by them */
    double q[V];
    int order[V];
    for (int i = 0; i < V; i++)
        q[i] = (double)l[i] / temp;
    softmax_d(q, V, q);
    for (int i = 0; i < V; i++)
        order[i] = i;
    for (int i = 0; i < V; i++) /* insertion sort: best first, ties lowest id */
        for (int j = i; j > 0 && (q[order[j]] > q[order[j - 1]] ||
                                  (q[order[j]] == q[order[j - 1]] && order[j] < order[j - 1]));
             j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }

    exsa_sampling_params p = neutral();
    p.mirostat = version;
    p.temperature = temp;
    p.mirostat_tau = tau;
    p.mirostat_eta = eta;
    p.seed = 99;
    exsa_sampler *s = make(&p, V);
    assert_true(fabs(exsa_sampler_mirostat_mu(s) - 2.0 * tau) < 1e-6);
    int checked = 0, kept_sizes = 0;
    unsigned seen_sizes = 0;
    for (int step = 0; step < STEPS; step++) {
        double mu = exsa_sampler_mirostat_mu(s);
        int keep[V] = {0};
        int ambiguous = 0, n_keep = 0;
        if (version == 1) {
            double tb = 0.0, tt = 0.0;
            for (int i = 0; i + 1 < V; i++) {
                double t = log((i + 2.0) / (i + 1.0));
                tb += t * log(q[order[i]] / q[order[i + 1]]);
                tt += t * t;
            }
            double sh = tb / tt, eps = sh - 1.0;
            double k = pow(eps * pow(2.0, mu) / (1.0 - pow(V, -eps)), 1.0 / sh);
            /* float vs double could round k to different integers */
            ambiguous = fabs(k - floor(k + 0.5)) < 1e-3 && k > 1.5 && k < V + 0.5;
            if (!(k >= 1.0))
                k = 1.0;
            if (k > V)
                k = V;
            n_keep = (int)k;
            for (int i = 0; i < n_keep; i++)
                keep[order[i]] = 1;
        } else {
            for (int i = 0; i < V; i++) {
                double sur = -log2(q[i]);
                ambiguous |= fabs(sur - mu) < 1e-4;
                if (sur <= mu) {
                    keep[i] = 1;
                    n_keep++;
                }
            }
            if (n_keep == 0) {
                keep[order[0]] = 1;
                n_keep = 1;
            }
        }
        int32_t tok = exsa_sampler_sample(s, l);
        assert_true(tok >= 0 && tok < V);
        double mu_after = exsa_sampler_mirostat_mu(s);
        assert_true(isfinite(mu_after));
        if (ambiguous)
            continue;
        if (!keep[tok]) {
            print_error("mirostat v%d step %d: token %d outside the kept set (mu %g)\n", version,
                        step, tok, mu);
            fail();
        }
        double mass = 0.0;
        for (int i = 0; i < V; i++)
            mass += keep[i] ? q[i] : 0.0;
        double want = mu - eta * (-log2(q[tok] / mass) - tau);
        if (fabs(want - mu_after) > 1e-4) {
            print_error("mirostat v%d step %d: mu %.6f, expected %.6f\n", version, step, mu_after,
                        want);
            fail();
        }
        checked++;
        if (n_keep < 32 && !(seen_sizes >> n_keep & 1u)) {
            seen_sizes |= 1u << n_keep;
            kept_sizes++;
        }
    }
    assert_true(checked > STEPS * 9 / 10);
    assert_true(kept_sizes >= 2); /* mu moved the cut around */

    exsa_sampler_reset(s);
    assert_true(fabs(exsa_sampler_mirostat_mu(s) - 2.0 * tau) < 1e-6);
    exsa_sampler_free(s);
}

static void test_mirostat_mu_update(void **state)
{
    (void)state;
    check_mirostat_trajectory(1, 1.0f, 2.0f, 0.1f);
    check_mirostat_trajectory(1, 0.7f, 1.5f, 0.3f);
    check_mirostat_trajectory(2, 1.0f, 2.0f, 0.1f);
    check_mirostat_trajectory(2, 1.3f, 1.0f, 0.5f);

    exsa_sampling_params p = neutral();
    exsa_sampler *s = make(&p, 4);
    assert_true(exsa_sampler_mirostat_mu(s) == 0.0); /* mirostat off */
    exsa_sampler_free(s);
}

/* ---- reproducibility ---- */

static void sequence(const exsa_sampling_params *p, const float *l, int v, int32_t *out, int n)
{
    exsa_sampler *s = make(p, v);
    for (int i = 0; i < n; i++) {
        out[i] = exsa_sampler_sample(s, l);
        exsa_sampler_accept(s, out[i]);
    }
    exsa_sampler_free(s);
}

static void test_reproducible(void **state)
{
    (void)state;
    enum { V = 50, N = 1000 };
    float l[V];
    uint64_t st = 5;
    for (int i = 0; i < V; i++)
        l[i] = exsa_test_rand_normal(&st);
    exsa_sampling_params p;
    exsa_sampling_params_default(&p); /* the default chain, penalties on */
    p.repeat_penalty = 1.1f;
    p.seed = 42;
    int32_t a[N], b[N], c[N];
    sequence(&p, l, V, a, N);
    sequence(&p, l, V, b, N);
    assert_memory_equal(a, b, sizeof a);
    p.seed = 43;
    sequence(&p, l, V, c, N);
    assert_memory_not_equal(a, c, sizeof a);

    /* reset replays the same sequence (history and RNG both restart) */
    p.seed = 42;
    exsa_sampler *s = make(&p, V);
    for (int i = 0; i < N; i++)
        exsa_sampler_accept(s, exsa_sampler_sample(s, l));
    exsa_sampler_reset(s);
    for (int i = 0; i < N; i++) {
        c[i] = exsa_sampler_sample(s, l);
        exsa_sampler_accept(s, c[i]);
    }
    assert_memory_equal(a, c, sizeof a);
    exsa_sampler_free(s);

    /* mirostat runs are reproducible too */
    p.mirostat = 2;
    sequence(&p, l, V, a, N);
    sequence(&p, l, V, b, N);
    assert_memory_equal(a, b, sizeof a);

    /* random seeds: two samplers differ (1000 tokens, flat distribution) */
    float flat[1000] = {0};
    exsa_sampling_params r = neutral();
    r.seed = EXSA_SEED_RANDOM;
    int32_t x[100], y[100];
    sequence(&r, flat, 1000, x, 100);
    sequence(&r, flat, 1000, y, 100);
    assert_memory_not_equal(x, y, sizeof x);
}

static void test_rng(void **state)
{
    (void)state;
    exsa_rng a, b;
    exsa_rng_seed(&a, 0);
    exsa_rng_seed(&b, 0);
    double sum = 0.0;
    int hist[10] = {0};
    for (int i = 0; i < 100000; i++) {
        double u = exsa_rng_uniform(&a);
        assert_true(u >= 0.0 && u < 1.0);
        assert_true(u == exsa_rng_uniform(&b));
        sum += u;
        hist[(int)(u * 10)]++;
    }
    assert_true(fabs(sum / 100000 - 0.5) < 0.005);
    for (int i = 0; i < 10; i++)
        assert_true(abs(hist[i] - 10000) < 500);
    exsa_rng_seed(&b, 1);
    exsa_rng_seed(&a, 0);
    assert_true(exsa_rng_next(&a) != exsa_rng_next(&b));
}

/* ---- parameter checks ---- */

static const exsa_logit_bias bias_bad_tok[2] = {{1, 1.0f}, {10, 0.5f}};
static const exsa_logit_bias bias_neg_tok[1] = {{-1, 1.0f}};
static const exsa_logit_bias bias_nan[1] = {{3, NAN}};
static const exsa_logit_bias bias_inf[1] = {{3, INFINITY}};

struct bad_case {
    const char *field; /* must appear in the message */
    const char *value; /* and so must the value */
};

static struct bad_case mutate(exsa_sampling_params *p, int i)
{
    switch (i) {
    case 0: p->temperature = -0.5f; return (struct bad_case){"temperature", "-0.5"};
    case 1: p->temperature = NAN; return (struct bad_case){"temperature", "nan"};
    case 2: p->temperature = INFINITY; return (struct bad_case){"temperature", "inf"};
    case 3: p->top_k = -1; return (struct bad_case){"top_k", "-1"};
    case 4: p->top_p = 1.5f; return (struct bad_case){"top_p", "1.5"};
    case 5: p->top_p = -0.25f; return (struct bad_case){"top_p", "-0.25"};
    case 6: p->top_p = NAN; return (struct bad_case){"top_p", "nan"};
    case 7: p->min_p = 2.0f; return (struct bad_case){"min_p", "2"};
    case 8: p->typical_p = -1.0f; return (struct bad_case){"typical_p", "-1"};
    case 9: p->tfs_z = 0.0f; return (struct bad_case){"tfs_z", "0"};
    case 10: p->tfs_z = 1.5f; return (struct bad_case){"tfs_z", "1.5"};
    case 11: p->repeat_penalty = 0.0f; return (struct bad_case){"repeat_penalty", "0"};
    case 12: p->repeat_penalty = NAN; return (struct bad_case){"repeat_penalty", "nan"};
    case 13: p->repeat_penalty = -1.0f; return (struct bad_case){"repeat_penalty", "-1"};
    case 14: p->repeat_last_n = -2; return (struct bad_case){"repeat_last_n", "-2"};
    case 15: p->presence_penalty = 2.5f; return (struct bad_case){"presence_penalty", "2.5"};
    case 16: p->frequency_penalty = -3.0f; return (struct bad_case){"frequency_penalty", "-3"};
    case 17: p->frequency_penalty = NAN; return (struct bad_case){"frequency_penalty", "nan"};
    case 18: p->mirostat = 3; return (struct bad_case){"mirostat", "3"};
    case 19: p->mirostat = -1; return (struct bad_case){"mirostat", "-1"};
    case 20: p->mirostat_tau = -1.0f; return (struct bad_case){"mirostat_tau", "-1"};
    case 21: p->mirostat_tau = INFINITY; return (struct bad_case){"mirostat_tau", "inf"};
    case 22: p->mirostat_eta = 0.0f; return (struct bad_case){"mirostat_eta", "0"};
    case 23: p->mirostat_eta = 1.5f; return (struct bad_case){"mirostat_eta", "1.5"};
    case 24:
        p->n_logit_bias = 2;
        p->logit_bias = bias_bad_tok;
        return (struct bad_case){"logit_bias[1].token", "10"};
    case 25:
        p->n_logit_bias = 1;
        p->logit_bias = bias_neg_tok;
        return (struct bad_case){"logit_bias[0].token", "-1"};
    case 26:
        p->n_logit_bias = 1;
        p->logit_bias = bias_nan;
        return (struct bad_case){"logit_bias[0].bias", "nan"};
    case 27:
        p->n_logit_bias = 1;
        p->logit_bias = bias_inf;
        return (struct bad_case){"logit_bias[0].bias", "inf"};
    case 28: p->n_logit_bias = -1; return (struct bad_case){"n_logit_bias", "-1"};
    case 29:
        p->n_logit_bias = 2;
        p->logit_bias = NULL;
        return (struct bad_case){"logit_bias", "2"};
    case 30: p->presence_penalty = -INFINITY; return (struct bad_case){"presence_penalty", "-inf"};
    default: return (struct bad_case){NULL, NULL};
    }
}

static void test_param_checks(void **state)
{
    (void)state;
    exsa_sampling_params p;
    exsa_err err = {0};
    exsa_sampling_params_default(&p);
    assert_int_equal(exsa_sampling_params_check(&p, 10, &err), 0);
    for (int i = 0;; i++) {
        exsa_sampling_params_default(&p);
        struct bad_case c = mutate(&p, i);
        if (!c.field)
            break;
        memset(&err, 0, sizeof err);
        int rc = exsa_sampling_params_check(&p, 10, &err);
        if (rc != EXSA_EINVAL || !strstr(err.msg, c.field) || !strstr(err.msg, c.value)) {
            print_error("case %d (%s = %s): rc %d, message '%s'\n", i, c.field, c.value, rc,
                        err.msg);
            fail();
        }
        memset(&err, 0, sizeof err);
        assert_null(exsa_sampler_create(&p, 10, &err));
        assert_int_equal(err.code, EXSA_EINVAL);
        assert_non_null(strstr(err.msg, c.field));
    }
    exsa_sampling_params_default(&p);
    assert_int_equal(exsa_sampling_params_check(&p, 0, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "n_vocab"));
    assert_int_equal(exsa_sampling_params_check(NULL, 10, &err), EXSA_EINVAL);
    assert_int_equal(exsa_sampling_params_check(&p, 10, NULL), 0); /* NULL err is fine */

    /* The edges of each range are accepted. */
    static const exsa_logit_bias edge_bias[2] = {{0, -INFINITY}, {9, -1e30f}};
    p.temperature = 0.0f;
    p.top_k = 0;
    p.top_p = 0.0f;
    p.min_p = 1.0f;
    p.typical_p = 0.0f;
    p.tfs_z = 1.0f;
    p.repeat_last_n = -1;
    p.presence_penalty = -2.0f;
    p.frequency_penalty = 2.0f;
    p.mirostat = 2;
    p.mirostat_tau = 0.0f;
    p.mirostat_eta = 1.0f;
    p.n_logit_bias = 2;
    p.logit_bias = edge_bias;
    assert_int_equal(exsa_sampling_params_check(&p, 10, &err), 0);
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.typical_p = 1.0f;
    p.tfs_z = 1e-6f;
    p.mirostat_eta = 1e-6f;
    p.repeat_penalty = 1e-3f;
    assert_int_equal(exsa_sampling_params_check(&p, 10, &err), 0);

    /* NULL arguments to the sampler calls */
    assert_int_equal(exsa_sampler_sample(NULL, NULL), EXSA_EINVAL);
    exsa_sampling_params_default(&p);
    exsa_sampler *s = make(&p, 4);
    assert_int_equal(exsa_sampler_sample(s, NULL), EXSA_EINVAL);
    exsa_sampler_free(s);
    exsa_sampler_accept(NULL, 1);
    exsa_sampler_reset(NULL);
    exsa_sampler_free(NULL);
}

/* ---- awkward logits ---- */

static void test_special_values(void **state)
{
    (void)state;
    exsa_sampling_params p = neutral();

    /* +inf logits win, equally: ids 1 and 3 */
    float li[4] = {1.0f, INFINITY, 2.0f, INFINITY};
    double ei[4] = {0.0, 0.5, 0.0, 0.5};
    run_and_check(&p, li, 4, ei, "+inf logits");

    /* huge finite values: the difference overflows to -inf, no NaN */
    float lh[3] = {3e38f, -3e38f, 3e38f};
    double eh[3] = {0.5, 0.0, 0.5};
    p.temperature = 0.5f;
    run_and_check(&p, lh, 3, eh, "huge logits, T 0.5");
    p.temperature = 1e-30f; /* tiny temperature: argmax-like, no overflow */
    float ls[3] = {1.0f, 2.0f, 1.5f};
    double es[3] = {0.0, 1.0, 0.0};
    run_and_check(&p, ls, 3, es, "tiny temperature");

    /* NaN and -inf are never drawn */
    float ln[5] = {NAN, 0.0f, -INFINITY, 0.0f, NAN};
    double en[5] = {0.0, 0.5, 0.0, 0.5, 0.0};
    p = neutral();
    p.top_p = 0.99f;
    p.typical_p = 0.99f;
    p.tfs_z = 0.99f;
    run_and_check(&p, ln, 5, en, "NaN and -inf");

    /* all -inf or all NaN: a defined answer */
    float all_ninf[3] = {-INFINITY, -INFINITY, -INFINITY};
    float all_nan[3] = {NAN, NAN, NAN};
    float one_ok[3] = {NAN, -INFINITY, NAN};
    for (int mode = 0; mode < 3; mode++) {
        p = neutral();
        p.mirostat = mode;
        exsa_sampler *s = make(&p, 3);
        assert_int_equal(exsa_sampler_sample(s, all_ninf), 0);
        assert_int_equal(exsa_sampler_sample(s, all_nan), 0);
        assert_int_equal(exsa_sampler_sample(s, one_ok), 1);
        assert_true(isfinite(exsa_sampler_mirostat_mu(s)));
        exsa_sampler_free(s);
    }

    /* a vocabulary of one */
    float l1[1] = {0.3f};
    for (int mode = 0; mode < 3; mode++) {
        exsa_sampling_params d;
        exsa_sampling_params_default(&d);
        d.mirostat = mode;
        d.tfs_z = 0.5f;
        d.typical_p = 0.5f;
        d.seed = 3;
        exsa_sampler *s = make(&d, 1);
        for (int i = 0; i < 10; i++) {
            assert_int_equal(exsa_sampler_sample(s, l1), 0);
            exsa_sampler_accept(s, 0);
        }
        assert_true(isfinite(exsa_sampler_mirostat_mu(s)));
        exsa_sampler_free(s);
    }
}

/* Random vocabularies, logits and valid parameters. Invariants: the token is
 * in range; if some token is eligible (raw logit neither NaN nor -inf, bias
 * not -inf), the token is eligible; if some eligible token is +inf, the
 * token is one of those; mirostat's mu stays finite. */
static void test_fuzz(void **state)
{
    (void)state;
    uint64_t st = 2024;
    float *l = malloc(2000 * sizeof *l);
    assert_non_null(l);
    for (int iter = 0; iter < 3000; iter++) {
        int v = 1 + (int)(exsa_test_rand_uniform(&st) * (iter % 10 == 0 ? 2000 : 40));
        int equal = exsa_test_rand_uniform(&st) < 0.1f;
        for (int i = 0; i < v; i++) {
            float u = exsa_test_rand_uniform(&st);
            l[i] = equal ? 1.0f
                   : u < 0.08f ? -INFINITY
                   : u < 0.10f ? INFINITY
                   : u < 0.13f ? NAN
                   : u < 0.15f ? 1e30f
                   : u < 0.17f ? -1e30f
                               : 4.0f * exsa_test_rand_normal(&st);
        }
        exsa_sampling_params p;
        exsa_sampling_params_default(&p);
        p.seed = (uint64_t)iter;
        p.temperature = exsa_test_rand_uniform(&st) < 0.1f ? 0.0f : 3.0f * exsa_test_rand_uniform(&st);
        p.top_k = (int32_t)(exsa_test_rand_uniform(&st) * 1.5f * v);
        p.top_p = exsa_test_rand_uniform(&st) < 0.3f ? 1.0f : exsa_test_rand_uniform(&st);
        p.min_p = exsa_test_rand_uniform(&st) < 0.5f ? 0.0f : exsa_test_rand_uniform(&st);
        p.typical_p = exsa_test_rand_uniform(&st) < 0.5f ? 1.0f : exsa_test_rand_uniform(&st);
        p.tfs_z = exsa_test_rand_uniform(&st) < 0.5f ? 1.0f : 0.01f + 0.99f * exsa_test_rand_uniform(&st);
        p.repeat_penalty = 0.5f + 1.5f * exsa_test_rand_uniform(&st);
        p.repeat_last_n = (int32_t)(exsa_test_rand_uniform(&st) * 40) - 1;
        p.presence_penalty = 4.0f * exsa_test_rand_uniform(&st) - 2.0f;
        p.frequency_penalty = 4.0f * exsa_test_rand_uniform(&st) - 2.0f;
        p.mirostat = (int32_t)(exsa_test_rand_uniform(&st) * 3);
        p.mirostat_tau = 10.0f * exsa_test_rand_uniform(&st);
        p.mirostat_eta = 0.001f + 0.999f * exsa_test_rand_uniform(&st);
        exsa_logit_bias bias[4];
        p.n_logit_bias = (int32_t)(exsa_test_rand_uniform(&st) * 4);
        for (int i = 0; i < p.n_logit_bias; i++) {
            bias[i].token = (int32_t)(exsa_test_rand_uniform(&st) * v);
            bias[i].bias = exsa_test_rand_uniform(&st) < 0.5f ? -INFINITY
                                                               : 10.0f * exsa_test_rand_normal(&st);
        }
        p.logit_bias = bias;
        exsa_err err = {0};
        exsa_sampler *s = exsa_sampler_create(&p, v, &err);
        if (!s) {
            print_error("fuzz %d: %s\n", iter, err.msg);
            fail();
        }
        unsigned char *elig = calloc((size_t)v, 1);
        assert_non_null(elig);
        int any = 0, any_inf = 0;
        for (int i = 0; i < v; i++)
            elig[i] = !isnan(l[i]) && l[i] != -INFINITY;
        for (int i = 0; i < p.n_logit_bias; i++)
            if (bias[i].bias == -INFINITY)
                elig[bias[i].token] = 0;
        for (int i = 0; i < v; i++) {
            any |= elig[i];
            any_inf |= elig[i] && l[i] == INFINITY;
        }
        for (int k = 0; k < 8; k++) {
            int32_t t = exsa_sampler_sample(s, l);
            assert_true(t >= 0 && t < v);
            if (any && !elig[t]) {
                print_error("fuzz %d: drew ineligible token %d (logit %g)\n", iter, t, l[t]);
                fail();
            }
            if (any_inf && l[t] != INFINITY) {
                print_error("fuzz %d: drew finite token %d beside +inf ones\n", iter, t);
                fail();
            }
            assert_true(isfinite(exsa_sampler_mirostat_mu(s)));
            /* prompt-like and out-of-range accepts */
            exsa_sampler_accept(s, k == 3 ? v + 5 : t);
        }
        free(elig);
        exsa_sampler_free(s);
    }
    free(l);
}

/* ---- larger vocabularies against a naive chain ---- */

typedef struct {
    int id;
    double l;
} ref_tok;

static int ref_cmp(const void *pa, const void *pb)
{
    const ref_tok *a = pa, *b = pb;
    if (a->l != b->l)
        return a->l > b->l ? -1 : 1;
    return a->id - b->id;
}

/* top-k -> top-p -> min-p -> temperature, in double; also returns the
 * smallest distance of any cut decision from its threshold. */
static void ref_chain(const float *logits, int v, const exsa_sampling_params *p, double *expect,
                      double *margin)
{
    ref_tok *t = malloc((size_t)v * sizeof *t);
    double *q = malloc((size_t)v * sizeof *q);
    assert_true(t && q);
    for (int i = 0; i < v; i++)
        t[i] = (ref_tok){i, logits[i]};
    qsort(t, (size_t)v, sizeof *t, ref_cmp);
    int n = v;
    *margin = INFINITY;
    if (p->top_k > 0 && p->top_k < n)
        n = p->top_k;
    if (p->top_p < 1.0f) {
        double sum = 0.0, cum = 0.0;
        for (int i = 0; i < n; i++)
            sum += exp(t[i].l - t[0].l);
        for (int i = 0; i < n; i++) {
            cum += exp(t[i].l - t[0].l) / sum;
            double d = fabs(cum - p->top_p);
            *margin = d < *margin ? d : *margin;
            if (cum >= p->top_p) {
                n = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) {
        int k = 0;
        for (int i = 0; i < n; i++) {
            double r = exp(t[i].l - t[0].l);
            double d = fabs(r - p->min_p);
            *margin = d < *margin ? d : *margin;
            if (r >= p->min_p)
                k = i + 1;
        }
        n = k;
    }
    memset(expect, 0, (size_t)v * sizeof *expect);
    for (int i = 0; i < n; i++)
        expect[t[i].id] = exp((t[i].l - t[0].l) / p->temperature);
    normalize(expect, v);
    free(t);
    free(q);
}

static void check_large(int v, float scale, int top_k, float top_p, float min_p, float temp,
                        uint64_t seed, int draws)
{
    float *l = malloc((size_t)v * sizeof *l);
    double *e = malloc((size_t)v * sizeof *e);
    long *counts = malloc((size_t)v * sizeof *counts);
    assert_true(l && e && counts);
    uint64_t st = seed;
    for (int i = 0; i < v; i++)
        l[i] = scale * exsa_test_rand_normal(&st);
    exsa_sampling_params p = neutral();
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.temperature = temp;
    double margin;
    ref_chain(l, v, &p, e, &margin);
    assert_true(margin > 1e-5); /* the case is not decided by rounding */
    int kept = 0;
    for (int i = 0; i < v; i++)
        kept += e[i] > 0.0;
    exsa_sampler *s = make(&p, v);
    draw_counts(s, l, v, draws, counts);
    char what[96];
    snprintf(what, sizeof what, "v %d k %d p %.2f min_p %.2f T %.2f (%d kept)", v, top_k,
             (double)top_p, (double)min_p, (double)temp, kept);
    check_freq(counts, e, v, draws, what);
    exsa_sampler_free(s);
    free(l);
    free(e);
    free(counts);
}

static void test_large_vocab_vs_naive(void **state)
{
    (void)state;
    /* top-k through the heap (40 << 4096/4), then top-p and min-p */
    check_large(4096, 3.0f, 40, 0.95f, 0.05f, 0.8f, 1, N_DRAWS);
    /* top-p alone, peaked logits: the 256-candidate first try suffices */
    check_large(2048, 4.0f, 0, 0.6f, 0.0f, 1.0f, 2, 10000);
    /* top-p alone, flat logits: needs far more than 256, falls back to a
     * full (radix) sort */
    check_large(2048, 0.5f, 0, 0.9f, 0.0f, 1.2f, 3, 10000);
    /* min-p alone on an unsorted set */
    check_large(4096, 2.0f, 0, 1.0f, 0.1f, 0.9f, 4, N_DRAWS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_softmax),
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_typical_p),
        cmocka_unit_test(test_tail_free),
        cmocka_unit_test(test_temperature),
        cmocka_unit_test(test_chain_order),
        cmocka_unit_test(test_ties_lowest_id),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_repeat_penalty_window),
        cmocka_unit_test(test_frequency_presence_whole_history),
        cmocka_unit_test(test_penalty_history_vs_naive),
        cmocka_unit_test(test_logit_bias),
        cmocka_unit_test(test_mirostat_first_draw),
        cmocka_unit_test(test_mirostat_mu_update),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_rng),
        cmocka_unit_test(test_param_checks),
        cmocka_unit_test(test_special_values),
        cmocka_unit_test(test_fuzz),
        cmocka_unit_test(test_large_vocab_vs_naive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
