/* Serving engine: one engine thread per model runs continuous batching
 * steps over a paged KV cache (include/exsa.h describes the contract).
 *
 * A sequence is its token list (prompt + generated so far) and the number
 * of those tokens already in the KV cache (n_computed). Prefill and decode
 * are the same thing: each step feeds tokens [n_computed, n_tok) of a
 * sequence, up to the step's token budget, and samples when the chunk
 * reaches n_tok. So a preempted sequence only resets n_computed to 0 (its
 * sampler, detokenizer and sent events stay as they were) and recomputes
 * everything on re-admission; nothing is sent twice.
 *
 * Locks: e->mu guards the waiting queue, the embedding job queue, the
 * engine's stop flag and the stats snapshot; r->mu guards one request's
 * event stream. The engine thread never holds r->mu while taking e->mu.
 * Everything else in the engine (running list, KV, prefix cache, samplers)
 * belongs to the engine thread alone.
 *
 * Embeddings run on the engine thread too (only it touches the model ctx):
 * a caller queues a job and sleeps on the job's own condvar; the engine
 * takes one job between steps, runs it in a sequence id reserved for it
 * (max_batch_size, one past the request slots) and wakes the caller.
 */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/grammar.h"
#include "engine/prefix_cache.h"
#include "engine/sampling.h"
#include "exsa.h"
#include "model/model.h"
#include "quant/quant.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"
#include "text/vocab.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timer.h"
#include "engine/engine_internal.h"

/* ---- prefix cache (compiled out until its implementation exists) ---- */

static int pc_match(exsa_engine *e, const int32_t *tok, int n, int32_t *blocks, int max)
{
#if EXSA_ENGINE_HAVE_PREFIX_CACHE
    if (e->pc)
        return exsa_prefix_cache_match(e->pc, tok, n, blocks, max);
#endif
    (void)e, (void)tok, (void)n, (void)blocks, (void)max;
    return 0;
}

static void pc_insert(exsa_engine *e, exsa_request *r)
{
    int n_full = r->n_computed / e->bs;
#if EXSA_ENGINE_HAVE_PREFIX_CACHE
    if (e->pc && n_full > r->n_registered)
        exsa_prefix_cache_insert(e->pc, r->tokens, n_full,
                                 exsa_kv_block_table(e->kv, r->slot));
#endif
    if (n_full > r->n_registered)
        r->n_registered = n_full;
}

static int pc_make_room(exsa_engine *e, int n_free)
{
#if EXSA_ENGINE_HAVE_PREFIX_CACHE
    if (e->pc)
        return exsa_prefix_cache_make_room(e->pc, n_free);
#endif
    (void)n_free;
    return exsa_kv_n_free_blocks(e->kv);
}

static int pc_n_blocks(const exsa_engine *e)
{
#if EXSA_ENGINE_HAVE_PREFIX_CACHE
    if (e->pc)
        return exsa_prefix_cache_n_blocks(e->pc);
#endif
    (void)e;
    return 0;
}

static int pc_n_evictable(const exsa_engine *e)
{
#if EXSA_ENGINE_HAVE_PREFIX_CACHE
    if (e->pc)
        return exsa_prefix_cache_n_evictable(e->pc);
#endif
    (void)e;
    return 0;
}

/* ---- the engine thread ---- */

static void stats_publish(exsa_engine *e)
{
    pthread_mutex_lock(&e->mu);
    exsa_engine_stats s = e->acc;
    s.queue_len = e->n_waiting;
    s.running = e->n_running;
    s.kv_blocks_total = e->n_blocks;
    s.kv_blocks_free = exsa_kv_n_free_blocks(e->kv);
    s.kv_blocks_cached = pc_n_blocks(e);
    s.block_size = e->bs;
    e->stats = s;
    pthread_mutex_unlock(&e->mu);
}

static void remove_running(exsa_engine *e, exsa_request *r)
{
    for (int i = 0; i < e->n_running; i++)
        if (e->running[i] == r) {
            memmove(e->running + i, e->running + i + 1,
                    (size_t)(e->n_running - i - 1) * sizeof *e->running);
            e->n_running--;
            return;
        }
}

static void release_blocks(exsa_engine *e, exsa_request *r)
{
    if (r->slot < 0)
        return;
    pc_insert(e, r); /* full blocks outlive the sequence in the prefix cache */
    exsa_kv_seq_free(e->kv, r->slot);
    exsa_drafter_forget(e->drafter, r->slot);
    e->free_slots[e->n_free_slots++] = r->slot;
    r->slot = -1;
    r->n_registered = 0;
}

/* Ends a request: frees its blocks now; DONE goes out after the step's
 * stats snapshot (see deliver_finished). */
static void retire(exsa_engine *e, exsa_request *r, int finish)
{
    release_blocks(e, r);
    remove_running(e, r);
    r->finish = finish;
    r->t_last = exsa_time_ns();
    e->acc.requests_done++;
    e->finished[e->n_finished++] = r;
}

static void deliver_finished(exsa_engine *e)
{
    for (int i = 0; i < e->n_finished; i++) {
        exsa_request *r = e->finished[i];
        if (engine_push_event(r, EXSA_EVENT_DONE, -1, "", 0, NULL) != 0) {
            /* Out of memory for the event array: the reader would wait
             * forever, so mark the stream as ended in place. */
            pthread_mutex_lock(&r->mu);
            r->done_read = 1;
            pthread_cond_broadcast(&r->cv);
            pthread_mutex_unlock(&r->mu);
        }
        engine_request_unref(r);
    }
    e->n_finished = 0;
}

static void preempt(exsa_engine *e, exsa_request *r)
{
    release_blocks(e, r);
    remove_running(e, r);
    r->n_computed = 0;
    r->plan = 0;
    r->preempted = 1;
    e->acc.preemptions++;
    pthread_mutex_lock(&e->mu);
    /* cap_waiting >= queue_size + max_batch_size, so there is room */
    memmove(e->waiting + 1, e->waiting, (size_t)e->n_waiting * sizeof *e->waiting);
    e->waiting[0] = r;
    e->n_waiting++;
    pthread_mutex_unlock(&e->mu);
}

/* Index of the waiting request to admit next; e->mu held. */
static int pick(exsa_engine *e, int64_t now)
{
    for (int i = 0; i < e->n_waiting; i++)
        if (e->waiting[i]->preempted)
            return i; /* resume preempted work before anything new */
    int strat = e->p.strategy;
    if (strat == EXSA_SCHED_DYNAMIC)
        strat = e->n_waiting >= e->p.dynamic_threshold ? EXSA_SCHED_SHORTEST : EXSA_SCHED_FIFO;
    int best = 0;
    if (strat == EXSA_SCHED_SHORTEST) {
        for (int i = 1; i < e->n_waiting; i++) {
            exsa_request *a = e->waiting[i], *b = e->waiting[best];
            if (a->n_prompt + a->max_gen < b->n_prompt + b->max_gen)
                best = i;
        }
    } else if (strat == EXSA_SCHED_PRIORITY) {
        double bestp = 0;
        for (int i = 0; i < e->n_waiting; i++) {
            exsa_request *a = e->waiting[i];
            double pr = a->priority;
            if (e->p.priority_aging_ms > 0)
                pr += (double)(now - a->t_submit) / 1e6 / e->p.priority_aging_ms;
            if (i == 0 || pr > bestp)
                best = i, bestp = pr;
        }
    }
    return best;
}


/* Makes the pool hold n_tokens for r, evicting cached blocks first and then
 * preempting the most recently admitted other sequences. Returns 0, or -1
 * when r itself is the newest and had to be preempted. */
static int reserve_or_preempt(exsa_engine *e, exsa_request *r, int n_tokens)
{
    for (;;) {
        if (exsa_kv_seq_reserve(e->kv, r->slot, n_tokens, NULL) == 0)
            return 0;
        int need = blocks_for(e, n_tokens) - blocks_for(e, exsa_kv_seq_len(e->kv, r->slot));
        if (pc_make_room(e, need) >= need)
            continue;
        exsa_request *victim = e->running[e->n_running - 1];
        preempt(e, victim);
        if (victim == r)
            return -1;
    }
}

/* Admits waiting requests into the remaining budget; returns it. */
static int admit(exsa_engine *e, int budget)
{
    int64_t now = exsa_time_ns();
    pthread_mutex_lock(&e->mu);
    while (budget > 0 && e->n_waiting > 0 && e->n_running < e->p.max_batch_size) {
        int i = pick(e, now);
        exsa_request *r = e->waiting[i];
        /* Blocks for everything the sequence holds now plus one token, and
         * one spare block per running sequence so decodes do not at once
         * preempt the newcomer. */
        int spare = e->n_running;
        int avail = exsa_kv_n_free_blocks(e->kv) + pc_n_evictable(e);
        int slot = e->free_slots[e->n_free_slots - 1];
        int k = pc_match(e, r->tokens, r->n_tok - 1, e->match, blocks_for(e, e->n_ctx));
        if (blocks_for(e, r->n_tok + 1) - k + spare > avail && e->n_running > 0)
            break; /* head of line waits: no starvation of long prompts */
        if (k > 0 && exsa_kv_seq_attach(e->kv, slot, e->match, k, NULL) != 0)
            k = 0;
        int chunk = r->n_tok - k * e->bs;
        if (chunk > budget)
            chunk = budget;
        int need = blocks_for(e, k * e->bs + chunk) - k;
        if (exsa_kv_n_free_blocks(e->kv) < need)
            pc_make_room(e, need);
        if (exsa_kv_seq_reserve(e->kv, slot, k * e->bs + chunk, NULL) != 0) {
            exsa_kv_seq_free(e->kv, slot);
            break;
        }
        e->n_free_slots--;
        memmove(e->waiting + i, e->waiting + i + 1,
                (size_t)(e->n_waiting - i - 1) * sizeof *e->waiting);
        e->n_waiting--;
        r->slot = slot;
        r->n_computed = k * e->bs;
        r->n_registered = k;
        r->plan = chunk;
        r->preempted = 0;
        e->acc.prefix_hit_tokens += k * e->bs;
        if (!r->admitted) {
            r->admitted = 1;
            r->t_admit = now;
            r->cached_tokens = k * e->bs;
            r->admit_order = ++e->n_admitted;
            e->acc.prompt_tokens += r->n_prompt;
        }
        e->running[e->n_running++] = r;
        budget -= chunk;
    }
    pthread_mutex_unlock(&e->mu);
    return budget;
}

/* Moves text out of r->hold: everything before a complete stop string (then
 * returns 1), else everything that cannot start one (or all of it when
 * final). Sets *emit to the byte count to send. */
static int stop_scan(exsa_request *r, int final, size_t *emit)
{
    size_t n = r->hold_len, first = n;
    int hit = 0;
    for (int s = 0; s < r->n_stop; s++) {
        size_t L = r->stop_len[s];
        if (L == 0 || L > n)
            continue;
        for (size_t i = 0; i + L <= n && i < first; i++)
            if (!memcmp(r->hold + i, r->stop[s], L)) {
                first = i, hit = 1;
                break;
            }
    }
    if (hit) {
        *emit = first;
        return 1;
    }
    size_t keep = 0;
    if (!final)
        for (int s = 0; s < r->n_stop; s++) {
            size_t L = r->stop_len[s];
            if (L == 0)
                continue;
            for (size_t k = L > n ? n : L - 1; k > keep; k--)
                if (!memcmp(r->hold + n - k, r->stop[s], k)) {
                    keep = k;
                    break;
                }
        }
    *emit = n - keep;
    return 0;
}

/* a ranks below b: smaller logit, or equal and a larger id (so ties keep
 * the lowest id, as the greedy sampler's argmax does). */
static int lp_worse(exsa_token_logprob a, exsa_token_logprob b)
{
    return a.logprob < b.logprob || (a.logprob == b.logprob && a.token > b.token);
}

static void heap_down(exsa_token_logprob *h, int n, int i)
{
    for (;;) {
        int w = i, l = 2 * i + 1, rr = l + 1;
        if (l < n && lp_worse(h[l], h[w]))
            w = l;
        if (rr < n && lp_worse(h[rr], h[w]))
            w = rr;
        if (w == i)
            return;
        exsa_token_logprob t = h[i];
        h[i] = h[w], h[w] = t;
        i = w;
    }
}

/* Log-softmax of the raw logits row at token t, and the k most likely
 * tokens, most likely first. One max pass, one exp-sum pass (float exp of
 * max-subtracted values, summed in double: stable and exact to ~1e-7), and
 * a size-k min-heap for the top (O(n log k), no sort of the vocabulary, no
 * allocation). NaN logits count as impossible. */
static void logprobs_of(const float *x, int n, int32_t t, int k, lp_info *out)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > mx)
            mx = x[i];
    double sum = 0;
    if (mx > -INFINITY)
        for (int i = 0; i < n; i++)
            if (x[i] > -INFINITY) /* false for NaN */
                sum += expf(x[i] - mx);
    /* sum >= 1 when any logit is finite (the max contributes exp(0)). */
    double lse = sum > 0 ? (double)mx + log(sum) : INFINITY;
    out->logprob = x[t] > -INFINITY ? (float)((double)x[t] - lse) : -INFINITY;
    if (k > n)
        k = n;
    /* Heap of the best k so far, worst at the root; logits stand in for
     * logprobs until the end (same order). */
    exsa_token_logprob *h = out->top;
    int m = 0;
    for (int i = 0; i < n && k > 0; i++) {
        exsa_token_logprob c = {i, x[i] == x[i] ? x[i] : -INFINITY};
        if (m < k) {
            h[m++] = c;
            for (int j = m - 1; j > 0 && lp_worse(h[j], h[(j - 1) / 2]); j = (j - 1) / 2) {
                exsa_token_logprob tmp = h[j];
                h[j] = h[(j - 1) / 2], h[(j - 1) / 2] = tmp;
            }
        } else if (lp_worse(h[0], c)) {
            h[0] = c;
            heap_down(h, m, 0);
        }
    }
    /* Most likely first: insertion sort of at most 20 entries. */
    for (int i = 1; i < m; i++) {
        exsa_token_logprob c = h[i];
        int j = i;
        for (; j > 0 && lp_worse(h[j - 1], c); j--)
            h[j] = h[j - 1];
        h[j] = c;
    }
    for (int i = 0; i < m; i++)
        h[i].logprob = h[i].logprob > -INFINITY ? (float)((double)h[i].logprob - lse) : -INFINITY;
    out->n_top = m;
}

/* Before sampling: the grammar's disallowed tokens get -inf. 0, or a
 * finish reason when the grammar cannot go on. */
static int grammar_mask(exsa_engine *e, exsa_request *r, float *row)
{
    if (!r->gram_on)
        return EXSA_FINISH_NONE;
    int n = exsa_grammar_matcher_mask(r->gm, r->gmask);
    if (n < 0) {
        snprintf(r->errmsg, sizeof r->errmsg,
                 "grammar: too ambiguous to follow (more states than the matcher keeps)");
        return EXSA_FINISH_ERROR;
    }
    if (n == 0)
        return EXSA_FINISH_STOP; /* complete: nothing may follow */
    /* a word at a time: most of a mask is often allowed (free text) or
     * banned (structure), and only the banned bits are visited */
    const int32_t n_words = (e->n_vocab + 31) / 32;
    for (int32_t w = 0; w < n_words; w++)
        for (uint32_t ban = ~r->gmask[w]; ban; ban &= ban - 1) {
            const int32_t t = w * 32 + __builtin_ctz(ban);
            if (t < e->n_vocab)
                row[t] = -INFINITY;
        }
    return EXSA_FINISH_NONE;
}

/* After sampling t: advance an active grammar, or look for a lazy one's
 * trigger in the output and start it there. */
static void grammar_advance(exsa_engine *e, exsa_request *r, int32_t t)
{
    if (!r->gm)
        return;
    if (r->gram_on) {
        if (exsa_grammar_matcher_accept(r->gm, t) != 0)
            r->gram_on = 0; /* cannot happen after a mask; never loop on it */
        return;
    }
    if (!r->trigger)
        return;
    char piece[256];
    int k = exsa_vocab_token_to_piece(e->voc, t, piece, sizeof piece, 1);
    if (k <= 0)
        return;
    if (k > (int)sizeof piece)
        k = (int)sizeof piece;
    if (engine_grow((void **)&r->lazy, &r->lazy_cap, r->lazy_len + (size_t)k + 1, 1))
        return;
    memcpy(r->lazy + r->lazy_len, piece, (size_t)k);
    r->lazy_len += (size_t)k;
    r->lazy[r->lazy_len] = '\0';
    const size_t tl = strlen(r->trigger);
    const char *at = memmem(r->lazy, r->lazy_len, r->trigger, tl);
    if (!at) {
        /* keep only what may still start the trigger */
        if (r->lazy_len >= tl) {
            memmove(r->lazy, r->lazy + r->lazy_len - (tl - 1), tl - 1);
            r->lazy_len = tl - 1;
        }
        return;
    }
    exsa_grammar_matcher_reset(r->gm);
    if (exsa_grammar_matcher_accept_bytes(r->gm, at, r->lazy_len - (size_t)(at - r->lazy)) == 0)
        r->gram_on = 1;
    free(r->trigger);
    r->trigger = NULL;
}

static void hold_append(exsa_request *r, const char *s, size_t n)
{
    if (n == 0 || engine_grow((void **)&r->hold, &r->hold_cap, r->hold_len + n, 1))
        return;
    memcpy(r->hold + r->hold_len, s, n);
    r->hold_len += n;
}

/* Records the sampled token (lp: its log-probabilities or NULL); returns a
 * finish reason or EXSA_FINISH_NONE. */
static int accept_token(exsa_engine *e, exsa_request *r, int32_t t, const lp_info *lp)
{
    int64_t now = exsa_time_ns();
    exsa_sampler_accept(r->smp, t);
    r->tokens[r->n_tok++] = t;
    r->n_gen++;
    e->acc.generated_tokens++;
    if (!r->t_first) {
        r->t_first = now;
        e->acc.ttft_ms_sum += (double)(now - r->t_submit) / 1e6;
        e->acc.ttft_count++;
    } else {
        double itl = (double)(now - r->t_last) / 1e6;
        e->acc.itl_ms_sum += itl;
        e->acc.itl_count++;
        r->itl_sum_ms += itl;
        if (itl > r->itl_max_ms)
            r->itl_max_ms = itl;
    }
    r->t_last = now;

    int finish = EXSA_FINISH_NONE;
    if (!r->ignore_eos && e->voc && exsa_vocab_is_eog(e->voc, t))
        finish = EXSA_FINISH_STOP;
    else if (r->n_gen >= r->max_gen)
        finish = r->until_ctx ? EXSA_FINISH_CONTEXT : EXSA_FINISH_LENGTH;
    if (r->detok) {
        int k = exsa_detok_push(r->detok, t, e->piece, PIECE_MAX);
        if (k > 0)
            hold_append(r, e->piece, (size_t)k);
        if (finish != EXSA_FINISH_NONE) {
            k = exsa_detok_flush(r->detok, e->piece, PIECE_MAX);
            if (k > 0)
                hold_append(r, e->piece, (size_t)k);
        }
    }
    size_t emit;
    if (stop_scan(r, finish != EXSA_FINISH_NONE, &emit))
        finish = EXSA_FINISH_STOP;
    int rc = engine_push_event(r, EXSA_EVENT_TOKEN, t, r->hold, emit, lp);
    if (emit > 0)
        memmove(r->hold, r->hold + emit, r->hold_len - emit);
    r->hold_len -= emit;
    if (rc != 0) {
        snprintf(r->errmsg, sizeof r->errmsg, "engine: out of memory for the event stream");
        return EXSA_FINISH_ERROR;
    }
    return finish;
}

/* Samples r's output rows in order: row i follows the sequence with its
 * first i guesses, so it is sampled exactly as without speculation (the
 * same sampler state, grammar state and random draws), and the next row
 * counts only while the token sampled equals the guess. Then the K/V of
 * rejected guesses is dropped and the guess length adapts. */
static void sample_rows(exsa_engine *e, exsa_request *r, float *logits, int rows)
{
    const int n_draft = r->n_draft;
    if (n_draft > 0)
        r->n_computed = r->n_tok; /* the last token's row ran; guesses count once kept */
    int acc = 0, live = 1;
    for (int i = 0; i < rows; i++) {
        float *row = logits + (size_t)i * e->n_vocab;
        if (r->gm) {
            int gfin = grammar_mask(e, r, row);
            if (gfin != EXSA_FINISH_NONE) {
                retire(e, r, gfin);
                live = 0;
                break;
            }
        }
        int32_t t = exsa_sampler_sample(r->smp, row);
        grammar_advance(e, r, t);
        lp_info lp;
        if (r->logprobs)
            logprobs_of(row, e->n_vocab, t, r->top_logprobs, &lp);
        int kept = i < n_draft && t == r->draft[i];
        if (kept) {
            acc++;
            r->n_computed++; /* row i + 1 computed this very token */
        }
        int fin = accept_token(e, r, t, r->logprobs ? &lp : NULL);
        if (fin != EXSA_FINISH_NONE) {
            retire(e, r, fin);
            live = 0;
            break;
        }
        if (!kept)
            break;
    }
    if (n_draft == 0)
        return;
    r->n_drafted += n_draft;
    r->n_accepted += acc;
    e->acc.spec_draft_tokens += n_draft;
    e->acc.spec_accepted_tokens += acc;
    r->n_draft = 0;
    if (live)
        exsa_kv_seq_truncate(e->kv, r->slot, r->n_computed);
    r->spec_hit += acc;
    r->spec_try += acc + (acc < n_draft); /* the first miss ends the run */
}

/* Guesses from the request's predicted output into r->draft: while the
 * output so far is the prediction's start, what comes next in it; after
 * that, what follows the output's longest suffix found in it. */
static int pred_propose(exsa_request *r, int max)
{
    const int g = r->n_gen;
    /* only the tokens output since the last call are compared */
    while (r->pred_ok >= 0 && r->pred_ok < g)
        if (r->pred_ok < r->n_pred && r->tokens[r->n_prompt + r->pred_ok] == r->pred[r->pred_ok])
            r->pred_ok++;
        else
            r->pred_ok = -1;
    if (r->pred_ok >= 0) {
        int k = 0;
        for (; k < max && g + k < r->n_pred; k++)
            r->draft[k] = r->pred[g + k];
        if (k > 0)
            return k;
    }
    return exsa_ngram_propose_from(r->pred_ix, r->pred, r->n_pred, r->tokens, r->n_tok, r->draft,
                                   max);
}

/* Estimated forward time of a step of `rows` rows that all give logits:
 * the measured time, else linear between the nearest measured sizes, else
 * from the nearest one with a prior of 15% of a one-row step per extra row
 * (optimistic, so that untried sizes get tried and measured). */
static double step_cost(const exsa_engine *e, int rows)
{
    if (rows < 1)
        rows = 1;
    if (rows <= EXSA_COST_ROWS && e->row_seen[rows])
        return e->row_ms[rows];
    int lo = 0, hi = 0;
    for (int r = (rows <= EXSA_COST_ROWS ? rows : EXSA_COST_ROWS + 1) - 1; r >= 1 && !lo; r--)
        if (e->row_seen[r])
            lo = r;
    for (int r = rows + 1; r <= EXSA_COST_ROWS && !hi; r++)
        if (e->row_seen[r])
            hi = r;
    if (lo && hi)
        return e->row_ms[lo] + (e->row_ms[hi] - e->row_ms[lo]) * (rows - lo) / (hi - lo);
    int at = lo ? lo : hi;
    if (!at)
        return 1.0 + 0.15 * (rows - 1); /* nothing measured: only ratios matter */
    double one = e->row_ms[at] / (1.0 + 0.15 * (at - 1));
    return e->row_ms[at] + 0.15 * one * (rows - at);
}

/* Guess rows for the sequences that only decode this step, from what is
 * left of the token budget. Each one's guess length k maximizes the step's
 * expected tokens per millisecond: with acceptance estimate a, k guesses
 * add a + a^2 + ... + a^k tokens and cost the measured time of k more rows
 * (plus k draft passes with a draft model). So guessing stops by itself
 * where rows are not cheap (a large batch, a compute-bound device) or
 * guesses fail, and none are made while more than spec_max_seqs sequences
 * decode. A request's n_min > 0 makes it guess at least that many whenever
 * it can. KV room is taken without preempting anyone. */
/* r feeds only its last token this step (a decode row, no prefill). */
static int decoding(const exsa_request *r) { return r->plan == 1 && r->n_tok - r->n_computed == 1; }

static void spec_plan(exsa_engine *e, int budget)
{
    int n_dec = 0, n_spec = 0, rows = 0, nq = 0;
    for (int i = 0; i < e->n_running; i++) {
        exsa_request *r = e->running[i];
        r->n_draft = 0;
        rows += r->plan;
        int dec = decoding(r);
        n_dec += dec;
        if (dec && r->spec_on) {
            n_spec++;
            r->spec_hit *= 0.97;
            r->spec_try *= 0.97;
        }
    }
    /* nothing to guess for: no memory taken for guess rows either */
    if (n_spec == 0 || n_dec > e->p.spec_max_seqs)
        return;
    if (e->spec_rows == 0) {
        /* The logits buffer grows for guess rows once, on first use. */
        size_t n = (size_t)e->p.max_batch_size + EXSA_SPEC_ROWS;
        float *l = realloc(e->logits, n * (size_t)e->n_vocab * sizeof *l);
        if (l)
            e->logits = l;
        e->spec_rows = l ? EXSA_SPEC_ROWS : -1;
        if (!l)
            exsa_log(EXSA_LOG_WARN, NULL, "speculative: no memory for %zu logits rows; off", n);
    }
    if (e->spec_rows <= 0)
        return;
    if (budget > e->spec_rows)
        budget = e->spec_rows;
    double tokens = n_dec;
    for (int i = 0; i < e->n_running && budget > 0; i++) {
        exsa_request *r = e->running[i];
        if (!r->spec_on || !decoding(r))
            continue;
        int kmax = r->spec_n_max;
        if (kmax > r->max_gen - r->n_gen - 1)
            kmax = r->max_gen - r->n_gen - 1; /* the step's last row samples one more */
        if (kmax > e->n_ctx - r->n_tok)
            kmax = e->n_ctx - r->n_tok;
        if (kmax > budget)
            kmax = budget;
        const int kmin = r->spec_n_min > 1 ? r->spec_n_min : 1;
        if (kmax < kmin)
            continue;
        /* Guesses already in r->draft: from the predicted output, else the
         * sequence's own n-grams. Without any, the draft model guesses
         * below (have 0), or nothing does. */
        int have = r->n_pred > 0 ? pred_propose(r, kmax) : 0;
        if (have < kmin && !e->drafter)
            have = exsa_ngram_propose(r->ngram, r->tokens, r->n_tok, r->draft, kmax);
        if (have >= kmin)
            kmax = have;
        else if (e->drafter)
            have = 0;
        else
            continue;
        const double a = (r->spec_hit + 1) / (r->spec_try + 2);
        /* n_min > 0 forces a guess of at least n_min (llama-server's meaning) */
        double best = r->spec_n_min > 0 ? -1 : tokens / step_cost(e, rows);
        double gain = 0, ak = 1, best_gain = 0;
        int k = 0;
        for (int j = 1; j <= kmax; j++) {
            gain += ak *= a;
            double v = (tokens + gain) / (step_cost(e, rows + j) + j * e->draft_ms);
            if (v > best && j >= kmin)
                best = v, k = j, best_gain = gain;
        }
        if (k == 0)
            continue;
        tokens += best_gain;
        rows += k;
        budget -= k;
        if (!have) {
            e->dreq[nq] = (exsa_draft_req){.seq = r->slot, .tokens = r->tokens,
                                           .n_tok = r->n_tok, .max = k,
                                           .p_min = r->spec_p_min, .out = r->draft};
            e->dreq_owner[nq++] = r;
        } else {
            r->n_draft = k;
        }
    }
    if (nq > 0) {
        exsa_err err = {0};
        int64_t t0 = exsa_time_ns();
        int deepest = 0;
        for (int q = 0; q < nq; q++)
            deepest = e->dreq[q].max > deepest ? e->dreq[q].max : deepest;
        if (exsa_drafter_propose(e->drafter, e->dreq, nq, &err) != 0)
            exsa_log(EXSA_LOG_WARN, NULL,
                     "speculative: the draft model failed (%s); no guesses this step", err.msg);
        double per = (double)(exsa_time_ns() - t0) / 1e6 / deepest;
        e->draft_ms = e->draft_ms > 0 ? 0.8 * e->draft_ms + 0.2 * per : per;
        for (int q = 0; q < nq; q++)
            e->dreq_owner[q]->n_draft = e->dreq[q].n_out;
    }
    for (int i = 0; i < e->n_running; i++) {
        exsa_request *r = e->running[i];
        if (r->n_draft == 0)
            continue;
        if (r->n_draft < r->spec_n_min) {
            r->n_draft = 0;
            continue;
        }
        int need = r->n_tok + r->n_draft;
        if (exsa_kv_seq_reserve(e->kv, r->slot, need, NULL) != 0) {
            int more = blocks_for(e, need) - blocks_for(e, exsa_kv_seq_len(e->kv, r->slot));
            if (pc_make_room(e, more) < more ||
                exsa_kv_seq_reserve(e->kv, r->slot, need, NULL) != 0) {
                r->n_draft = 0;
                continue;
            }
        }
        r->plan = 1 + r->n_draft;
    }
}

static void step(exsa_engine *e)
{
    /* Cancelled requests leave first, so their blocks serve this step. */
    for (int i = 0; i < e->n_running; i++)
        if (atomic_load(&e->running[i]->cancel)) {
            retire(e, e->running[i], EXSA_FINISH_CANCEL);
            i--;
        }
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->n_waiting; i++)
        if (atomic_load(&e->waiting[i]->cancel)) {
            exsa_request *r = e->waiting[i];
            memmove(e->waiting + i, e->waiting + i + 1,
                    (size_t)(e->n_waiting - i - 1) * sizeof *e->waiting);
            e->n_waiting--;
            i--;
            pthread_mutex_unlock(&e->mu);
            retire(e, r, EXSA_FINISH_CANCEL);
            pthread_mutex_lock(&e->mu);
        }
    pthread_mutex_unlock(&e->mu);

    /* Plan: decode rows first (one per sequence), then prefill chunks, oldest
     * admission first; then newcomers get what is left. */
    int budget = e->p.max_batch_tokens;
    for (int i = 0; i < e->n_running; i++)
        e->running[i]->plan = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < e->n_running && budget > 0; i++) {
            exsa_request *r = e->running[i];
            int want = r->n_tok - r->n_computed;
            if ((pass == 0) != (want == 1) || r->plan)
                continue;
            int chunk = want < budget ? want : budget;
            if (reserve_or_preempt(e, r, r->n_computed + chunk) != 0)
                break; /* r was the newest; nothing after it is left */
            r->plan = chunk;
            budget -= chunk;
        }
    /* Preemption may have dropped planned sequences; recount the budget. */
    budget = e->p.max_batch_tokens;
    for (int i = 0; i < e->n_running; i++)
        budget -= e->running[i]->plan;
    spec_plan(e, admit(e, budget));

    int n = 0, n_out = 0, n_seqs = 0;
    for (int i = 0; i < e->n_running; i++) {
        exsa_request *r = e->running[i];
        n_seqs += r->plan > 0;
        for (int j = 0; j < r->plan; j++, n++) {
            int p = r->n_computed + j;
            /* past the sequence: this step's guesses, each row verified */
            e->b_token[n] = p < r->n_tok ? r->tokens[p] : r->draft[p - r->n_tok];
            e->b_pos[n] = p;
            e->b_seq[n] = r->slot;
            e->b_logits[n] = p >= r->n_tok - 1;
            if (e->b_logits[n])
                e->out_req[n_out++] = r;
        }
    }
    if (n > 0) {
        exsa_batch b = {.n = n, .token = e->b_token, .pos = e->b_pos, .seq = e->b_seq,
                        .logits = e->b_logits};
        exsa_err err = {0};
        int64_t t0 = exsa_time_ns();
        int rc = exsa_model_forward(e->ctx, &b, e->logits, &err);
        if (rc == 0 && n_out == n && n <= EXSA_COST_ROWS) {
            /* every row gave logits: a decode (and guess) step of n rows */
            double ms = (double)(exsa_time_ns() - t0) / 1e6;
            e->row_ms[n] = e->row_seen[n] ? 0.8 * e->row_ms[n] + 0.2 * ms : ms;
            e->row_seen[n] = 1;
        }
        e->acc.steps++;
        if (n_seqs > e->acc.batch_seqs_peak)
            e->acc.batch_seqs_peak = n_seqs;
        if (rc != 0) {
            while (e->n_running > 0) {
                exsa_request *r = e->running[0];
                snprintf(r->errmsg, sizeof r->errmsg, "%s", err.msg);
                retire(e, r, EXSA_FINISH_ERROR);
            }
        } else {
            e->acc.computed_tokens += n;
            for (int i = 0; i < e->n_running; i++) {
                exsa_request *r = e->running[i];
                r->n_computed += r->plan;
                if (r->plan && r->n_computed == r->n_tok && r->n_gen == 0)
                    pc_insert(e, r); /* prompt done: share it with later requests */
                r->plan = 0;
            }
            for (int j = 0; j < n_out;) {
                exsa_request *r = e->out_req[j];
                int rows = 1; /* 1 + its guesses when r speculated */
                while (j + rows < n_out && e->out_req[j + rows] == r)
                    rows++;
                sample_rows(e, r, e->logits + (size_t)j * e->n_vocab, rows);
                j += rows;
            }
        }
    }
    stats_publish(e);
    deliver_finished(e);
}

/* ---- embeddings (engine thread) ---- */

static void job_finish(embed_job *j, int rc)
{
    pthread_mutex_lock(&j->mu);
    j->rc = rc;
    j->done = 1;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

/* Runs the ids through the model in the embedding sequence, max_batch_tokens
 * rows at a time, every row asking for its normed hidden state; mean pools
 * in double and L2-normalizes into j->out. Frees its blocks whatever
 * happens. */
static int run_embed(exsa_engine *e, embed_job *j)
{
    const int E = exsa_model_hparams(e->m)->n_embd, B = e->p.max_batch_tokens;
    if (!e->hidden) {
        size_t nh;
        if (__builtin_mul_overflow((size_t)B, (size_t)E, &nh) ||
            !(e->hidden = malloc(nh * sizeof *e->hidden)) ||
            !(e->pool = malloc((size_t)E * sizeof *e->pool))) {
            free(e->hidden);
            e->hidden = NULL;
            return exsa_err_set(&j->err, EXSA_ENOMEM, "embed: out of memory for %d x %d floats",
                                B, E);
        }
    }
    int need = blocks_for(e, j->n);
    if (exsa_kv_n_free_blocks(e->kv) < need)
        pc_make_room(e, need);
    if (exsa_kv_seq_reserve(e->kv, e->embed_seq, j->n, NULL) != 0)
        return exsa_err_set(&j->err, EXSA_EFULL,
                            "embed: %d tokens need %d KV blocks, %d free right now", j->n, need,
                            exsa_kv_n_free_blocks(e->kv));
    for (int d = 0; d < E; d++)
        e->pool[d] = 0;
    int rc = 0;
    for (int start = 0; start < j->n && rc == 0; start += B) {
        int rows = j->n - start < B ? j->n - start : B;
        for (int i = 0; i < rows; i++) {
            e->b_token[i] = j->ids[start + i];
            e->b_pos[i] = start + i;
            e->b_seq[i] = e->embed_seq;
            e->b_logits[i] = 1;
        }
        exsa_batch b = {.n = rows, .token = e->b_token, .pos = e->b_pos, .seq = e->b_seq,
                        .logits = e->b_logits};
        rc = exsa_model_forward_hidden(e->ctx, &b, e->hidden, &j->err);
        if (rc == 0) {
            e->acc.computed_tokens += rows;
            for (int i = 0; i < rows; i++) {
                const float *h = e->hidden + (size_t)i * E;
                for (int d = 0; d < E; d++)
                    e->pool[d] += h[d];
            }
        }
    }
    exsa_kv_seq_free(e->kv, e->embed_seq);
    if (rc != 0)
        return rc;
    double ss = 0;
    for (int d = 0; d < E; d++) {
        e->pool[d] /= j->n;
        ss += e->pool[d] * e->pool[d];
    }
    double inv = ss > 0 ? 1.0 / sqrt(ss) : 0.0; /* an all-zero mean stays zero */
    for (int d = 0; d < E; d++)
        j->out[d] = (float)(e->pool[d] * inv);
    return E;
}

static void *engine_main(void *arg)
{
    exsa_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stop &&
               (e->paused || (!e->jobs && e->n_waiting == 0 && e->n_running == 0)))
            pthread_cond_wait(&e->cv, &e->mu);
        int stop = e->stop;
        embed_job *job = stop ? NULL : e->jobs;
        if (job && !(e->jobs = job->next))
            e->jobs_tail = NULL;
        int work = e->n_waiting > 0 || e->n_running > 0;
        pthread_mutex_unlock(&e->mu);
        if (stop)
            break;
        if (job) {
            /* One job between two steps, so requests keep moving. */
            int rc = run_embed(e, job);
            if (!work)
                stats_publish(e);
            job_finish(job, rc);
        }
        if (work)
            step(e);
    }
    /* Jobs still queued fail: their callers are waiting. */
    pthread_mutex_lock(&e->mu);
    while (e->jobs) {
        embed_job *job = e->jobs;
        e->jobs = job->next;
        exsa_err_set(&job->err, EXSA_EINVAL, "embed: the engine is shutting down");
        job_finish(job, EXSA_EINVAL);
    }
    e->jobs_tail = NULL;
    pthread_mutex_unlock(&e->mu);
    /* Shutdown: every request still here ends with cancel. */
    while (e->n_running > 0)
        retire(e, e->running[0], EXSA_FINISH_CANCEL);
    pthread_mutex_lock(&e->mu);
    while (e->n_waiting > 0) {
        exsa_request *r = e->waiting[--e->n_waiting];
        pthread_mutex_unlock(&e->mu);
        retire(e, r, EXSA_FINISH_CANCEL);
        pthread_mutex_lock(&e->mu);
    }
    pthread_mutex_unlock(&e->mu);
    stats_publish(e);
    deliver_finished(e);
    return NULL;
}

/* ---- create / free ---- */

void exsa_engine_free(exsa_engine *e)
{
    if (!e)
        return;
    if (e->started) {
        pthread_mutex_lock(&e->mu);
        e->stop = 1;
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->th, NULL);
    }
#if EXSA_ENGINE_HAVE_PREFIX_CACHE
    exsa_prefix_cache_free(e->pc);
#endif
    exsa_drafter_free(e->drafter);
    exsa_model_ctx_free(e->ctx);
    exsa_detok_free(e->dt[0]);
    exsa_detok_free(e->dt[1]);
    exsa_tokenizer_free(e->tok);
    exsa_grammar_vocab_free(e->gvoc);
    exsa_vocab_free(e->voc);
    exsa_model_free(e->m); /* last: the vocab points into its mapping */
    exsa_chat_template_destroy(e->tpl);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->detok_mu);
    pthread_mutex_destroy(&e->gvoc_mu);
    free(e->model_path);
    free(e->name);
    free(e->tpl_override);
    free(e->bos_text);
    free(e->eos_text);
    free(e->hidden);
    free(e->pool);
    free(e->waiting);
    free(e->running);
    free(e->free_slots);
    free(e->finished);
    free(e->b_token);
    free(e->b_pos);
    free(e->b_seq);
    free(e->b_logits);
    free(e->out_req);
    free(e->logits);
    free(e->match);
    free(e->piece);
    free(e->dreq);
    free(e->dreq_owner);
    free(e);
}

static void *alloc_array(size_t n, size_t elem, int *fail)
{
    size_t bytes;
    void *p = NULL;
    if (__builtin_mul_overflow(n, elem, &bytes) || !(p = calloc(1, bytes ? bytes : 1)))
        *fail = 1;
    return p;
}

/* NUL-terminated copy of token id's stored text ("" for none). */
static char *token_text(const exsa_vocab *v, int32_t id)
{
    size_t len = 0;
    const char *s = v && id >= 0 && id < exsa_vocab_n_tokens(v) ? exsa_vocab_token_str(v, id, &len)
                                                                 : NULL;
    char *out = malloc(len + 1);
    if (out) {
        if (len)
            memcpy(out, s, len);
        out[len] = 0;
    }
    return out;
}

/* The engine's name: given, else general.name, else the file name without
 * its directory and ".gguf". */
static int set_name(exsa_engine *e, const char *given, exsa_err *err)
{
    const char *s = given;
    size_t len = given ? strlen(given) : 0;
    if (!given && exsa_gguf_get_str(exsa_model_gguf(e->m), "general.name", &s, &len, NULL) != 0)
        s = NULL;
    if (!s || len == 0) {
        s = strrchr(e->model_path, '/');
        s = s ? s + 1 : e->model_path;
        len = strlen(s);
        if (len > 5 && strcmp(s + len - 5, ".gguf") == 0)
            len -= 5;
    }
    if (len >= sizeof(((exsa_model_info *)0)->name))
        return exsa_err_set(err, EXSA_EINVAL, "engine: name of %zu bytes is longer than %zu",
                            len, sizeof(((exsa_model_info *)0)->name) - 1);
    if (!(e->name = malloc(len + 1)))
        return exsa_err_set(err, EXSA_ENOMEM, "engine: out of memory");
    memcpy(e->name, s, len);
    e->name[len] = 0;
    return 0;
}

/* Jinja source rather than a builtin name or a file path: names and paths
 * never contain template delimiters. */
static int looks_like_jinja(const char *s)
{
    return strstr(s, "{{") || strstr(s, "{%");
}

/* An explicit chat_template that fails is the caller's error (create
 * fails); the model's own template failing only disables chat_render. */
static int load_template(exsa_engine *e, exsa_err *err)
{
    const exsa_gguf *g = exsa_model_gguf(e->m);
    const char *o = e->tpl_override;
    exsa_err local = {0};
    if (o && looks_like_jinja(o))
        e->tpl = exsa_chat_template_create(o, strlen(o), err);
    else if (o)
        e->tpl = exsa_chat_template_for_model(g, o, NULL, err);
    else
        e->tpl = exsa_chat_template_for_model(g, NULL, NULL, &local);
    if (!e->tpl && o)
        return exsa_err_prefix(err, "engine: chat_template");
    if (!e->tpl)
        snprintf(e->tpl_err, sizeof e->tpl_err,
                 "chat: the model's chat template cannot be used (%.360s); "
                 "load the model with a chat template (builtin name or Jinja source)",
                 local.msg);
    if (!(e->bos_text = token_text(e->voc, e->voc ? exsa_vocab_bos(e->voc) : -1)) ||
        !(e->eos_text = token_text(e->voc, e->voc ? exsa_vocab_eos(e->voc) : -1)))
        return exsa_err_set(err, EXSA_ENOMEM, "engine: out of memory");
    return 0;
}

exsa_engine *exsa_engine_create(const exsa_engine_params *p, exsa_err *err)
{
    if (!p || !p->model_path) {
        exsa_err_set(err, EXSA_EINVAL, "engine: model_path is required");
        return NULL;
    }
    if (p->max_batch_size < 1 || p->max_batch_size > 4096) {
        exsa_err_set(err, EXSA_EINVAL, "engine: max_batch_size must be in [1, 4096], got %d",
                     p->max_batch_size);
        return NULL;
    }
    if (p->max_batch_tokens < 1 || p->max_batch_tokens > 65536) {
        exsa_err_set(err, EXSA_EINVAL, "engine: max_batch_tokens must be in [1, 65536], got %d",
                     p->max_batch_tokens);
        return NULL;
    }
    if (p->queue_size < 1 || p->queue_size > (1 << 20)) {
        exsa_err_set(err, EXSA_EINVAL, "engine: queue_size must be in [1, %d], got %d", 1 << 20,
                     p->queue_size);
        return NULL;
    }
    if (p->spec_n_max < 0 || p->spec_n_max > 1024 || p->spec_n_min < 0 ||
        p->spec_n_min > p->spec_n_max || !(p->spec_p_min >= 0 && p->spec_p_min <= 1) ||
        p->spec_max_seqs < 0) {
        exsa_err_set(err, EXSA_EINVAL,
                     "engine: speculative n_max %d (0..1024), n_min %d (0..n_max), p_min %g "
                     "(0..1), max_seqs %d (>= 0) out of range",
                     p->spec_n_max, p->spec_n_min, (double)p->spec_p_min, p->spec_max_seqs);
        return NULL;
    }
    if (p->kv_bytes < 0) {
        exsa_err_set(err, EXSA_EINVAL, "engine: kv_bytes must be >= 0, got %lld",
                     (long long)p->kv_bytes);
        return NULL;
    }
    if (p->strategy < EXSA_SCHED_FIFO || p->strategy > EXSA_SCHED_DYNAMIC) {
        exsa_err_set(err, EXSA_EINVAL, "engine: unknown scheduling strategy %d", p->strategy);
        return NULL;
    }
    exsa_engine *e = calloc(1, sizeof *e);
    if (!e) {
        exsa_err_set(err, EXSA_ENOMEM, "engine: out of memory");
        return NULL;
    }
    e->p = *p;
    e->created = (int64_t)time(NULL);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    pthread_mutex_init(&e->detok_mu, NULL);
    pthread_mutex_init(&e->gvoc_mu, NULL);
    if (!(e->model_path = strdup(p->model_path)) ||
        (p->chat_template && !(e->tpl_override = strdup(p->chat_template)))) {
        exsa_err_set(err, EXSA_ENOMEM, "engine: out of memory");
        goto fail;
    }
    e->p.model_path = e->model_path;
    e->p.chat_template = e->tpl_override;
    exsa_model_params mp;
    exsa_model_params_default(&mp);
    mp.device = p->device;
    mp.n_gpu_layers = p->n_gpu_layers;
    mp.gpu = p->gpu;
    if (!(e->m = exsa_model_load_ex(p->model_path, &mp, err)))
        goto fail;
    if (set_name(e, p->name, err) != 0)
        goto fail;
    e->p.name = e->name;
    const exsa_hparams *hp = exsa_model_hparams(e->m);
    e->n_vocab = hp->n_vocab;
    /* Without a usable tokenizer the engine still serves id prompts. */
    if ((e->voc = exsa_vocab_load(exsa_model_gguf(e->m), NULL)))
        e->tok = exsa_tokenizer_create(e->voc, NULL);
    if (e->tok && (!(e->dt[0] = exsa_detok_create(e->tok, 0, err)) ||
                   !(e->dt[1] = exsa_detok_create(e->tok, 1, err))))
        goto fail;
    if (load_template(e, err) != 0)
        goto fail;

    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = p->n_threads;
    /* Resolved here (as the model ctx would) to size the default pool. */
    cp.n_ctx = p->n_ctx > 0 ? p->n_ctx
               : hp->n_ctx_train > 0 && hp->n_ctx_train < 4096 ? hp->n_ctx_train
                                                                : 4096;
    /* One sequence id past the request slots for embedding jobs. */
    cp.n_seq = p->max_batch_size + 1;
    cp.max_batch = p->max_batch_tokens;
    cp.kv_type = p->kv_type;
    if (p->kv_bytes > 0) {
        /* Whole blocks only, so the pool never exceeds the budget. */
        uint64_t per_block = exsa_model_kv_bytes(e->m, EXSA_KV_BLOCK_SIZE, p->kv_type);
        if (per_block == 0) {
            exsa_err_set(err, EXSA_EINVAL, "engine: kv_type %d has no KV size for this model",
                         p->kv_type);
            goto fail;
        }
        uint64_t nb = (uint64_t)p->kv_bytes / per_block;
        if (nb < 1 || nb > (uint64_t)INT32_MAX) {
            exsa_err_set(err, EXSA_EINVAL,
                         "engine: kv_bytes %lld gives %llu KV blocks of %llu bytes; need 1 to %d",
                         (long long)p->kv_bytes, (unsigned long long)nb,
                         (unsigned long long)per_block, INT32_MAX);
            goto fail;
        }
        cp.kv_blocks = (int)nb;
    } else if (p->kv_tokens > 0) {
        cp.kv_blocks = (int)(((int64_t)p->kv_tokens + EXSA_KV_BLOCK_SIZE - 1) /
                             EXSA_KV_BLOCK_SIZE);
    } else {
        /* max_batch_size * n_ctx tokens: the embedding slot adds none. */
        int64_t nb = (int64_t)p->max_batch_size *
                     (((int64_t)cp.n_ctx + EXSA_KV_BLOCK_SIZE - 1) / EXSA_KV_BLOCK_SIZE);
        if (cp.n_ctx > (1 << 24) || nb > (1 << 26)) {
            exsa_err_set(err, EXSA_EINVAL, "engine: n_ctx %d x max_batch_size %d is too large",
                         cp.n_ctx, p->max_batch_size);
            goto fail;
        }
        cp.kv_blocks = (int)nb;
    }
    if (!(e->ctx = exsa_model_ctx_create(e->m, &cp, err)))
        goto fail;
    e->kv = exsa_model_ctx_kv(e->ctx);
    const exsa_kv_params *kp = exsa_kv_cache_params(e->kv);
    e->n_ctx = exsa_model_ctx_params_get(e->ctx)->n_ctx;
    e->bs = kp->block_size;
    e->n_blocks = kp->n_blocks;
    e->embed_seq = p->max_batch_size;
#if EXSA_ENGINE_HAVE_PREFIX_CACHE
    /* Sliding-window layers keep no blocks a cached prefix could bring
     * back, so such models run without prefix reuse. */
    if (p->prefix_cache && exsa_kv_has_swa(e->kv))
        exsa_log(EXSA_LOG_INFO, NULL,
                 "prefix cache off: the model's sliding-window layers keep only their window");
    else if (p->prefix_cache && !(e->pc = exsa_prefix_cache_create(e->kv, err)))
        goto fail;
#endif

    int fail = 0;
    size_t B = (size_t)p->max_batch_tokens, S = (size_t)p->max_batch_size;
    e->cap_waiting = p->queue_size + p->max_batch_size;
    e->waiting = alloc_array((size_t)e->cap_waiting, sizeof *e->waiting, &fail);
    e->running = alloc_array(S, sizeof *e->running, &fail);
    e->free_slots = alloc_array(S, sizeof *e->free_slots, &fail);
    e->finished = alloc_array((size_t)e->cap_waiting, sizeof *e->finished, &fail);
    e->b_token = alloc_array(B, sizeof(int32_t), &fail);
    e->b_pos = alloc_array(B, sizeof(int32_t), &fail);
    e->b_seq = alloc_array(B, sizeof(int32_t), &fail);
    e->b_logits = alloc_array(B, 1, &fail);
    e->out_req = alloc_array(B, sizeof *e->out_req, &fail);
    size_t nl;
    if (__builtin_mul_overflow(S, (size_t)e->n_vocab, &nl))
        fail = 1;
    else
        e->logits = alloc_array(nl, sizeof(float), &fail);
    e->match = alloc_array((size_t)blocks_for(e, e->n_ctx) + 1, sizeof *e->match, &fail);
    e->piece = alloc_array(PIECE_MAX + 1, 1, &fail);
    e->dreq = alloc_array(S, sizeof *e->dreq, &fail);
    e->dreq_owner = alloc_array(S, sizeof *e->dreq_owner, &fail);
    if (fail) {
        exsa_err_set(err, EXSA_ENOMEM, "engine: out of memory");
        goto fail;
    }
    if (p->draft_model_path) {
        exsa_drafter_params dp = {
            .path = p->draft_model_path, .n_threads = p->n_threads, .n_seq = p->max_batch_size,
            .n_ctx = e->n_ctx, .max_batch = p->max_batch_tokens,
            .kv_tokens = e->n_blocks * e->bs, .device = p->device,
            .n_gpu_layers = p->n_gpu_layers, .gpu = p->gpu};
        if (!e->voc) {
            exsa_err_set(err, EXSA_EINVAL, "engine: a draft model needs the target's vocabulary");
            goto fail;
        }
        if (!(e->drafter = exsa_drafter_create(&dp, e->voc, err)))
            goto fail;
        e->p.draft_model_path = NULL; /* not kept; exsa_drafter_name tells */
    }
    for (int i = 0; i < p->max_batch_size; i++)
        e->free_slots[i] = p->max_batch_size - 1 - i; /* slot 0 first */
    e->n_free_slots = p->max_batch_size;
    stats_publish(e);
    if (pthread_create(&e->th, NULL, engine_main, e) != 0) {
        exsa_err_set(err, EXSA_ENOMEM, "engine: cannot start the engine thread");
        goto fail;
    }
    e->started = 1;
    return e;
fail:
    exsa_engine_free(e);
    return NULL;
}

void exsa_engine_pause(exsa_engine *e, int paused)
{
    pthread_mutex_lock(&e->mu);
    e->paused = paused != 0;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void exsa_engine_stats_get(exsa_engine *e, exsa_engine_stats *out)
{
    pthread_mutex_lock(&e->mu);
    *out = e->stats;
    pthread_mutex_unlock(&e->mu);
}

int exsa_engine_embed(exsa_engine *e, const int32_t *ids, int n, float *out, int cap,
                      exsa_err *err)
{
    if (!e || !ids || !out)
        return exsa_err_set(err, EXSA_EINVAL, "embed: engine, ids and out are required");
    const exsa_hparams *hp = exsa_model_hparams(e->m);
    if (n <= 0 || n > e->n_ctx)
        return exsa_err_set(err, EXSA_EINVAL, "embed: %d tokens; need 1 to n_ctx (%d)", n,
                            e->n_ctx);
    if (cap < hp->n_embd)
        return exsa_err_set(err, EXSA_EINVAL, "embed: cap %d is less than n_embd (%d)", cap,
                            hp->n_embd);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= e->n_vocab)
            return exsa_err_set(err, EXSA_EINVAL,
                                "embed: ids[%d] = %d is out of the vocabulary (%d)", i, ids[i],
                                e->n_vocab);
    if (blocks_for(e, n) > e->n_blocks)
        return exsa_err_set(err, EXSA_EINVAL, "embed: %d tokens need %d KV blocks, the pool has %d",
                            n, blocks_for(e, n), e->n_blocks);
    embed_job j = {.ids = ids, .n = n, .out = out};
    pthread_mutex_init(&j.mu, NULL);
    pthread_cond_init(&j.cv, NULL);
    pthread_mutex_lock(&e->mu);
    int stopping = e->stop;
    if (!stopping) {
        if (e->jobs_tail)
            e->jobs_tail->next = &j;
        else
            e->jobs = &j;
        e->jobs_tail = &j;
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    if (stopping) {
        exsa_err_set(&j.err, EXSA_EINVAL, "embed: the engine is shutting down");
        j.rc = EXSA_EINVAL;
    } else {
        pthread_mutex_lock(&j.mu);
        while (!j.done)
            pthread_cond_wait(&j.cv, &j.mu);
        pthread_mutex_unlock(&j.mu);
    }
    pthread_mutex_destroy(&j.mu);
    pthread_cond_destroy(&j.cv);
    if (j.rc < 0 && err)
        *err = j.err;
    return j.rc;
}
