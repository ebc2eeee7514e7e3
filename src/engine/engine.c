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
 * Locks: e->mu guards the waiting queue, the engine's stop flag and the
 * stats snapshot; r->mu guards one request's event stream. The engine
 * thread never holds r->mu while taking e->mu. Everything else in the
 * engine (running list, KV, prefix cache, samplers) belongs to the engine
 * thread alone.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/prefix_cache.h"
#include "engine/sampling.h"
#include "exsa.h"
#include "model/model.h"
#include "quant/quant.h"
#include "text/tokenizer.h"
#include "text/vocab.h"
#include "util/err.h"
#include "util/timer.h"

/* 0 builds the engine without src/engine/prefix_cache.c. */
#ifndef EXSA_ENGINE_HAVE_PREFIX_CACHE
#define EXSA_ENGINE_HAVE_PREFIX_CACHE 1
#endif

#define PIECE_MAX 4096 /* bytes one token (plus a detok flush) may complete */

typedef struct evt {
    int type;
    int32_t token;
    size_t off, len; /* text in r->txt */
} evt;

struct exsa_request {
    /* Fixed at submit. */
    uint64_t id;
    int priority;
    int64_t t_submit;
    int32_t *tokens; /* [n_prompt + max_gen] */
    int n_prompt, max_gen;
    char **stop;
    size_t *stop_len;
    int n_stop;
    int ignore_eos;
    int until_ctx; /* max_tokens <= 0: generate until the context is full */

    /* Event stream, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    evt *ev;
    int n_ev, cap_ev, rd;
    char *txt;
    size_t txt_len, txt_cap;
    char *rbuf; /* the reader's copy of the current event's text */
    size_t rbuf_cap;
    int done_read;
    int refs; /* caller + engine */
    char errmsg[sizeof(((exsa_err *)0)->msg)];
    atomic_int cancel;

    /* Engine thread only. */
    int n_tok, n_computed, n_gen, n_registered;
    int slot;
    int plan;      /* rows to feed this step */
    int preempted; /* requeued by preemption: resumes first */
    int admitted;  /* ever admitted (queue time, cached tokens counted once) */
    int cached_tokens;
    int finish;
    exsa_sampler *smp;
    exsa_detok *detok;
    char *hold; /* generated text not yet sent (a possible stop-string prefix) */
    size_t hold_len, hold_cap;
    int64_t t_admit, t_first, t_last;
    int64_t admit_order; /* rank of the first admission (exsa_event.admit_order) */
    double itl_sum_ms, itl_max_ms;
};

struct exsa_engine {
    exsa_engine_params p;
    char *model_path;
    exsa_model *m;
    exsa_model_ctx *ctx;
    exsa_kv_cache *kv;
    exsa_prefix_cache *pc;
    exsa_vocab *voc;
    exsa_tokenizer *tok;
    int n_vocab, n_ctx, bs, n_blocks;

    pthread_t th;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int paused;
    uint64_t next_id;
    exsa_request **waiting; /* arrival order; preempted ones at the front */
    int n_waiting, cap_waiting;
    exsa_engine_stats stats;

    /* Engine thread only. */
    exsa_request **running; /* admission order */
    int n_running;
    int *free_slots;
    int n_free_slots;
    exsa_request **finished;
    int n_finished;
    int32_t *b_token, *b_pos, *b_seq;
    uint8_t *b_logits;
    exsa_request **out_req; /* logits row -> request */
    float *logits;
    int32_t *match;
    char *piece;
    exsa_engine_stats acc; /* counters; copied into stats at the end of a step */
    int64_t n_admitted;    /* first admissions so far */
};

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

/* ---- defaults ---- */

void exsa_engine_params_default(exsa_engine_params *p)
{
    *p = (exsa_engine_params){
        .model_path = NULL, .n_threads = 0, .n_ctx = 0, .max_batch_tokens = 512,
        .max_batch_size = 16, .kv_type = EXSA_TYPE_F16, .kv_tokens = 0, .queue_size = 256,
        .strategy = EXSA_SCHED_FIFO, .prefix_cache = 1, .priority_aging_ms = 1000,
        .dynamic_threshold = 8,
    };
}

void exsa_request_params_default(exsa_request_params *p)
{
    memset(p, 0, sizeof *p);
    exsa_sampling_params_default(&p->sampling);
    p->add_special = 1;
    p->max_tokens = 256;
}

/* ---- requests ---- */

static void request_destroy(exsa_request *r)
{
    if (!r)
        return;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r->stop_len);
    free(r->tokens);
    free(r->ev);
    free(r->txt);
    free(r->rbuf);
    free(r->hold);
    exsa_sampler_free(r->smp);
    exsa_detok_free(r->detok);
    free(r);
}

/* Drops one reference; the last one frees the request. */
static void request_unref(exsa_request *r)
{
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left == 0)
        request_destroy(r);
}

static int grow(void **buf, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 16, bytes;
    while (n < need)
        n *= 2;
    if (__builtin_mul_overflow(n, elem, &bytes))
        return -1;
    void *p = realloc(*buf, bytes);
    if (!p)
        return -1;
    *buf = p;
    *cap = n;
    return 0;
}

/* Appends an event; engine thread. */
static int push_event(exsa_request *r, int type, int32_t token, const char *text, size_t len)
{
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    size_t cap_ev = (size_t)r->cap_ev;
    if (grow((void **)&r->ev, &cap_ev, (size_t)r->n_ev + 1, sizeof *r->ev) ||
        grow((void **)&r->txt, &r->txt_cap, r->txt_len + len + 1, 1)) {
        rc = -1;
    } else {
        r->cap_ev = (int)cap_ev;
        if (len > 0)
            memcpy(r->txt + r->txt_len, text, len);
        r->ev[r->n_ev++] = (evt){.type = type, .token = token, .off = r->txt_len, .len = len};
        r->txt_len += len;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int exsa_request_next(exsa_request *r, exsa_event *ev, int timeout_ms)
{
    if (!r || !ev)
        return EXSA_EINVAL;
    struct timespec until;
    if (timeout_ms > 0) {
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&r->mu);
    int rc = 0;
    while (!r->done_read && r->rd == r->n_ev) {
        if (timeout_ms == 0) {
            rc = EXSA_ETIMEDOUT;
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&r->cv, &r->mu);
        } else if (pthread_cond_timedwait(&r->cv, &r->mu, &until) != 0 && r->rd == r->n_ev) {
            rc = EXSA_ETIMEDOUT;
            break;
        }
    }
    if (rc == 0 && r->done_read)
        rc = EXSA_EINVAL;
    if (rc == 0) {
        evt *x = &r->ev[r->rd];
        if (grow((void **)&r->rbuf, &r->rbuf_cap, x->len + 1, 1)) {
            rc = EXSA_ENOMEM;
        } else {
            memcpy(r->rbuf, r->txt + x->off, x->len);
            r->rbuf[x->len] = 0;
            memset(ev, 0, sizeof *ev);
            ev->type = x->type;
            ev->token = x->token;
            ev->text = r->rbuf;
            ev->text_len = x->len;
            ev->error = "";
            if (x->type == EXSA_EVENT_DONE) {
                /* The engine filled these before pushing DONE and never
                 * touches them again. */
                ev->finish = r->finish;
                ev->usage = (exsa_usage){r->n_prompt, r->cached_tokens, r->n_gen};
                ev->timings.queue_ms =
                    r->admitted ? (double)(r->t_admit - r->t_submit) / 1e6 : 0;
                ev->timings.ttft_ms = r->t_first ? (double)(r->t_first - r->t_submit) / 1e6 : 0;
                ev->timings.total_ms = (double)(r->t_last - r->t_submit) / 1e6;
                if (r->n_gen > 1) {
                    ev->timings.itl_mean_ms = r->itl_sum_ms / (r->n_gen - 1);
                    ev->timings.itl_max_ms = r->itl_max_ms;
                }
                ev->admit_order = r->admit_order;
                ev->error = r->errmsg;
                r->done_read = 1;
            }
            if (++r->rd == r->n_ev)
                r->rd = r->n_ev = 0, r->txt_len = 0;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

void exsa_request_cancel(exsa_request *r)
{
    if (r)
        atomic_store(&r->cancel, 1);
}

void exsa_request_free(exsa_request *r)
{
    if (!r)
        return;
    atomic_store(&r->cancel, 1);
    request_unref(r);
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
        if (push_event(r, EXSA_EVENT_DONE, -1, "", 0) != 0) {
            /* Out of memory for the event array: the reader would wait
             * forever, so mark the stream as ended in place. */
            pthread_mutex_lock(&r->mu);
            r->done_read = 1;
            pthread_cond_broadcast(&r->cv);
            pthread_mutex_unlock(&r->mu);
        }
        request_unref(r);
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

static int blocks_for(const exsa_engine *e, int n_tokens) { return (n_tokens + e->bs - 1) / e->bs; }

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

static void hold_append(exsa_request *r, const char *s, size_t n)
{
    if (n == 0 || grow((void **)&r->hold, &r->hold_cap, r->hold_len + n, 1))
        return;
    memcpy(r->hold + r->hold_len, s, n);
    r->hold_len += n;
}

/* Records the sampled token; returns a finish reason or EXSA_FINISH_NONE. */
static int accept_token(exsa_engine *e, exsa_request *r, int32_t t)
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
    int rc = push_event(r, EXSA_EVENT_TOKEN, t, r->hold, emit);
    if (emit > 0)
        memmove(r->hold, r->hold + emit, r->hold_len - emit);
    r->hold_len -= emit;
    if (rc != 0) {
        snprintf(r->errmsg, sizeof r->errmsg, "engine: out of memory for the event stream");
        return EXSA_FINISH_ERROR;
    }
    return finish;
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
    admit(e, budget);

    int n = 0, n_out = 0;
    for (int i = 0; i < e->n_running; i++) {
        exsa_request *r = e->running[i];
        for (int j = 0; j < r->plan; j++, n++) {
            int p = r->n_computed + j;
            e->b_token[n] = r->tokens[p];
            e->b_pos[n] = p;
            e->b_seq[n] = r->slot;
            e->b_logits[n] = p == r->n_tok - 1;
            if (e->b_logits[n])
                e->out_req[n_out++] = r;
        }
    }
    if (n > 0) {
        exsa_batch b = {.n = n, .token = e->b_token, .pos = e->b_pos, .seq = e->b_seq,
                        .logits = e->b_logits};
        exsa_err err = {0};
        int rc = exsa_model_forward(e->ctx, &b, e->logits, &err);
        e->acc.steps++;
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
            for (int j = 0; j < n_out; j++) {
                exsa_request *r = e->out_req[j];
                int32_t t = exsa_sampler_sample(r->smp, e->logits + (size_t)j * e->n_vocab);
                int fin = accept_token(e, r, t);
                if (fin != EXSA_FINISH_NONE)
                    retire(e, r, fin);
            }
        }
    }
    stats_publish(e);
    deliver_finished(e);
}

static void *engine_main(void *arg)
{
    exsa_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stop && (e->paused || (e->n_waiting == 0 && e->n_running == 0)))
            pthread_cond_wait(&e->cv, &e->mu);
        int stop = e->stop;
        pthread_mutex_unlock(&e->mu);
        if (stop)
            break;
        step(e);
    }
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
    exsa_model_ctx_free(e->ctx);
    exsa_model_free(e->m);
    exsa_tokenizer_free(e->tok);
    exsa_vocab_free(e->voc);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e->model_path);
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
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if (!(e->model_path = strdup(p->model_path))) {
        exsa_err_set(err, EXSA_ENOMEM, "engine: out of memory");
        goto fail;
    }
    e->p.model_path = e->model_path;
    if (!(e->m = exsa_model_load(p->model_path, err)))
        goto fail;
    const exsa_hparams *hp = exsa_model_hparams(e->m);
    e->n_vocab = hp->n_vocab;
    /* Without a usable tokenizer the engine still serves id prompts. */
    if ((e->voc = exsa_vocab_load(exsa_model_gguf(e->m), NULL)))
        e->tok = exsa_tokenizer_create(e->voc, NULL);

    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = p->n_threads;
    cp.n_ctx = p->n_ctx;
    cp.n_seq = p->max_batch_size;
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
    }
    if (!(e->ctx = exsa_model_ctx_create(e->m, &cp, err)))
        goto fail;
    e->kv = exsa_model_ctx_kv(e->ctx);
    const exsa_kv_params *kp = exsa_kv_cache_params(e->kv);
    e->n_ctx = exsa_model_ctx_params_get(e->ctx)->n_ctx;
    e->bs = kp->block_size;
    e->n_blocks = kp->n_blocks;
#if EXSA_ENGINE_HAVE_PREFIX_CACHE
    if (p->prefix_cache && !(e->pc = exsa_prefix_cache_create(e->kv, err)))
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
    if (fail) {
        exsa_err_set(err, EXSA_ENOMEM, "engine: out of memory");
        goto fail;
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

/* ---- submit ---- */

int64_t exsa_engine_tokenize(exsa_engine *e, const char *text, size_t len, int add_special,
                             int parse_special, int32_t *ids, int64_t cap, exsa_err *err)
{
    if (!e || !text)
        return exsa_err_set(err, EXSA_EINVAL, "tokenize: engine and text are required");
    if (!e->tok)
        return exsa_err_set(err, EXSA_EUNSUPPORTED, "tokenize: the model has no usable tokenizer");
    int flags = (add_special ? EXSA_TOK_ADD_SPECIAL : 0) | (parse_special ? EXSA_TOK_PARSE_SPECIAL : 0);
    return exsa_tokenize(e->tok, text, len, flags, ids, cap, err);
}

static int copy_stops(exsa_request *r, const exsa_request_params *p, exsa_err *err)
{
    if (p->n_stop < 0 || p->n_stop > 64 || (p->n_stop > 0 && !p->stop))
        return exsa_err_set(err, EXSA_EINVAL, "stop: between 0 and 64 stop strings, got %d",
                            p->n_stop);
    if (p->n_stop == 0)
        return 0;
    r->stop = calloc((size_t)p->n_stop, sizeof *r->stop);
    r->stop_len = calloc((size_t)p->n_stop, sizeof *r->stop_len);
    if (!r->stop || !r->stop_len)
        return exsa_err_set(err, EXSA_ENOMEM, "submit: out of memory");
    for (int i = 0; i < p->n_stop; i++) {
        if (!p->stop[i])
            return exsa_err_set(err, EXSA_EINVAL, "stop[%d] is NULL", i);
        size_t L = strlen(p->stop[i]);
        if (L > 1024)
            return exsa_err_set(err, EXSA_EINVAL, "stop[%d] is longer than 1024 bytes", i);
        if (!(r->stop[i] = strdup(p->stop[i])))
            return exsa_err_set(err, EXSA_ENOMEM, "submit: out of memory");
        r->stop_len[i] = L;
        r->n_stop = i + 1;
    }
    return 0;
}

static int build_prompt(exsa_engine *e, exsa_request *r, const exsa_request_params *p,
                        exsa_err *err)
{
    int32_t *ids = NULL;
    int64_t n;
    if (p->n_prompt_ids > 0) {
        if (!p->prompt_ids)
            return exsa_err_set(err, EXSA_EINVAL, "prompt_ids is NULL with n_prompt_ids %d",
                                p->n_prompt_ids);
        n = p->n_prompt_ids;
    } else if (p->prompt_text) {
        size_t len = strlen(p->prompt_text);
        n = exsa_engine_tokenize(e, p->prompt_text, len, p->add_special, p->parse_special, NULL,
                                 0, err);
        if (n < 0)
            return (int)n;
    } else {
        return exsa_err_set(err, EXSA_EINVAL, "request has no prompt (prompt_ids or prompt_text)");
    }
    if (n <= 0)
        return exsa_err_set(err, EXSA_EINVAL, "the prompt has no tokens");
    if (n >= e->n_ctx)
        return exsa_err_set(err, EXSA_EINVAL,
                            "prompt of %lld tokens leaves no room in the context (%d)",
                            (long long)n, e->n_ctx);
    int max_gen = p->max_tokens > 0 ? p->max_tokens : e->n_ctx - (int)n;
    if (p->max_tokens > 0 && (int64_t)p->max_tokens + n > e->n_ctx)
        return exsa_err_set(err, EXSA_EINVAL,
                            "prompt (%lld tokens) + max_tokens (%d) exceeds the context (%d)",
                            (long long)n, p->max_tokens, e->n_ctx);
    if (blocks_for(e, (int)n + max_gen) > e->n_blocks)
        return exsa_err_set(err, EXSA_EINVAL,
                            "prompt + max_tokens need %d KV blocks, the pool has %d",
                            blocks_for(e, (int)n + max_gen), e->n_blocks);
    if (!(ids = malloc((size_t)(n + max_gen) * sizeof *ids)))
        return exsa_err_set(err, EXSA_ENOMEM, "submit: out of memory");
    if (p->n_prompt_ids > 0) {
        memcpy(ids, p->prompt_ids, (size_t)n * sizeof *ids);
    } else if (exsa_engine_tokenize(e, p->prompt_text, strlen(p->prompt_text), p->add_special,
                                    p->parse_special, ids, n, err) != n) {
        free(ids);
        return exsa_err_set(err, EXSA_EINVAL, "tokenize: prompt changed size");
    }
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= e->n_vocab) {
            int32_t bad = ids[i];
            free(ids);
            return exsa_err_set(err, EXSA_EINVAL,
                                "prompt token %lld (id %d) is out of the vocabulary (%d)",
                                (long long)i, bad, e->n_vocab);
        }
    r->tokens = ids;
    r->n_prompt = r->n_tok = (int)n;
    r->max_gen = max_gen;
    r->until_ctx = p->max_tokens <= 0;
    return 0;
}

exsa_request *exsa_engine_submit(exsa_engine *e, const exsa_request_params *p, exsa_err *err)
{
    if (!e || !p) {
        exsa_err_set(err, EXSA_EINVAL, "submit: engine and params are required");
        return NULL;
    }
    /* Fail fast before any work when the queue is full. */
    pthread_mutex_lock(&e->mu);
    int full = e->n_waiting >= e->p.queue_size;
    pthread_mutex_unlock(&e->mu);
    if (full) {
        exsa_err_set(err, EXSA_EFULL, "submit: the queue is full (%d waiting)", e->p.queue_size);
        return NULL;
    }
    exsa_request *r = calloc(1, sizeof *r);
    if (!r) {
        exsa_err_set(err, EXSA_ENOMEM, "submit: out of memory");
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    atomic_init(&r->cancel, 0);
    r->slot = -1;
    r->refs = 2;
    r->priority = p->priority;
    r->ignore_eos = p->ignore_eos;
    if (build_prompt(e, r, p, err) || copy_stops(r, p, err) ||
        exsa_sampling_params_check(&p->sampling, e->n_vocab, err) ||
        !(r->smp = exsa_sampler_create(&p->sampling, e->n_vocab, err)))
        goto fail;
    if (e->tok && !(r->detok = exsa_detok_create(e->tok, 0, err)))
        goto fail;
    for (int i = 0; i < r->n_prompt; i++)
        exsa_sampler_accept(r->smp, r->tokens[i]);
    r->t_submit = exsa_time_ns();
    pthread_mutex_lock(&e->mu);
    if (e->n_waiting >= e->p.queue_size || e->stop) {
        pthread_mutex_unlock(&e->mu);
        exsa_err_set(err, EXSA_EFULL, "submit: the queue is full (%d waiting)", e->p.queue_size);
        goto fail;
    }
    r->id = e->next_id++;
    e->waiting[e->n_waiting++] = r;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return r;
fail:
    request_destroy(r);
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
