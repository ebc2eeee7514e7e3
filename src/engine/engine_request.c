/* Requests: submit (prompt, stop strings, grammar, sampler) on the caller's
 * thread, and the event stream the caller reads while the engine thread
 * writes it (r->mu). */
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

/* ---- defaults ---- */

void exsa_engine_params_default(exsa_engine_params *p)
{
    *p = (exsa_engine_params){
        .model_path = NULL, .n_threads = 0, .n_ctx = 0, .max_batch_tokens = 512,
        .max_batch_size = 16, .kv_type = EXSA_TYPE_F16, .kv_tokens = 0, .queue_size = 256,
        .strategy = EXSA_SCHED_FIFO, .prefix_cache = 1, .priority_aging_ms = 1000,
        .dynamic_threshold = 8, .chat_template = NULL, .name = NULL,
        .spec = 0, .draft_model_path = NULL, .spec_n_max = 16, .spec_n_min = 0,
        .spec_p_min = 0.75f, .spec_max_seqs = 4,
    };
    exsa_model_params mp;
    exsa_model_params_default(&mp); /* EXSA_DEVICE may pin the device */
    p->device = mp.device;
    p->n_gpu_layers = mp.n_gpu_layers;
    p->gpu = mp.gpu;
}

void exsa_request_params_default(exsa_request_params *p)
{
    memset(p, 0, sizeof *p);
    exsa_sampling_params_default(&p->sampling);
    p->add_special = 1;
    p->max_tokens = 256;
    p->spec = -1;
    p->spec_n_max = p->spec_n_min = -1;
    p->spec_p_min = -1.0f;
}

/* ---- requests ---- */

/* The request's speculative decoding settings and proposer state. */
static int spec_setup(exsa_engine *e, exsa_request *r, const exsa_request_params *p,
                      exsa_err *err)
{
    if (p->spec < -1 || p->spec > 1)
        return exsa_err_set(err, EXSA_EINVAL, "speculative: must be -1, 0 or 1, got %d", p->spec);
    if (p->spec_n_max > 1024 || p->spec_n_min > 1024)
        return exsa_err_set(err, EXSA_EINVAL,
                            "speculative.n_max and n_min must be at most 1024, got %d and %d",
                            p->spec_n_max, p->spec_n_min);
    if (p->spec_p_min > 1.0f || p->spec_p_min != p->spec_p_min)
        return exsa_err_set(err, EXSA_EINVAL, "speculative.p_min must be in [0, 1], got %g",
                            (double)p->spec_p_min);
    const int pred = p->prediction && *p->prediction;
    r->spec_on = p->spec < 0 ? e->p.spec != 0 || pred : p->spec;
    r->spec_n_max = p->spec_n_max >= 0 ? p->spec_n_max : e->p.spec_n_max;
    r->spec_n_min = p->spec_n_min >= 0 ? p->spec_n_min : e->p.spec_n_min;
    r->spec_p_min = p->spec_p_min >= 0 ? p->spec_p_min : e->p.spec_p_min;
    if (r->spec_n_max < 1 || r->spec_n_min > r->spec_n_max)
        r->spec_on = 0;
    if (!r->spec_on)
        return 0;
    if (!(r->draft = malloc((size_t)r->spec_n_max * sizeof *r->draft)))
        return exsa_err_set(err, EXSA_ENOMEM, "submit: out of memory");
    if (!e->drafter && !(r->ngram = exsa_ngram_index_create(r->n_prompt + r->max_gen, err)))
        return err->code;
    if (pred) {
        size_t len = strlen(p->prediction);
        int64_t n = exsa_engine_tokenize(e, p->prediction, len, 0, 0, NULL, 0, err);
        if (n < 0)
            return (int)n;
        if (n > e->n_ctx)
            n = e->n_ctx; /* more cannot be output anyway */
        if (n > 0 && (!(r->pred = malloc((size_t)n * sizeof *r->pred)) ||
                      !(r->pred_ix = exsa_ngram_index_create((int)n, err))))
            return err->code ? err->code : exsa_err_set(err, EXSA_ENOMEM, "submit: out of memory");
        if (n > 0 && exsa_engine_tokenize(e, p->prediction, len, 0, 0, r->pred, n, err) < 0)
            return err->code;
        r->n_pred = (int)n;
    }
    return 0;
}

void engine_request_destroy(exsa_request *r)
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
    free(r->tops);
    free(r->hold);
    exsa_sampler_free(r->smp);
    exsa_detok_free(r->detok);
    exsa_grammar_matcher_free(r->gm);
    exsa_grammar_free(r->gram);
    free(r->gmask);
    free(r->trigger);
    free(r->lazy);
    exsa_ngram_index_free(r->ngram);
    exsa_ngram_index_free(r->pred_ix);
    free(r->pred);
    free(r->draft);
    free(r);
}

/* Drops one reference; the last one frees the request. */
void engine_request_unref(exsa_request *r)
{
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left == 0)
        engine_request_destroy(r);
}

int engine_grow(void **buf, size_t *cap, size_t need, size_t elem)
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

/* Appends an event (lp: its log-probabilities or NULL); engine thread. */
int engine_push_event(exsa_request *r, int type, int32_t token, const char *text, size_t len,
                      const lp_info *lp)
{
    int rc = 0;
    int n_top = lp ? lp->n_top : 0;
    pthread_mutex_lock(&r->mu);
    size_t cap_ev = (size_t)r->cap_ev;
    if (engine_grow((void **)&r->ev, &cap_ev, (size_t)r->n_ev + 1, sizeof *r->ev) ||
        engine_grow((void **)&r->txt, &r->txt_cap, r->txt_len + len + 1, 1) ||
        engine_grow((void **)&r->tops, &r->tops_cap, r->tops_len + (size_t)n_top, sizeof *r->tops)) {
        rc = -1;
    } else {
        r->cap_ev = (int)cap_ev;
        if (len > 0)
            memcpy(r->txt + r->txt_len, text, len);
        if (n_top > 0)
            memcpy(r->tops + r->tops_len, lp->top, (size_t)n_top * sizeof *r->tops);
        r->ev[r->n_ev++] = (evt){.type = type, .token = token, .off = r->txt_len, .len = len,
                                 .logprob = lp ? lp->logprob : 0.0f, .n_top = n_top,
                                 .top_off = r->tops_len};
        r->txt_len += len;
        r->tops_len += (size_t)n_top;
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
        if (engine_grow((void **)&r->rbuf, &r->rbuf_cap, x->len + 1, 1)) {
            rc = EXSA_ENOMEM;
        } else {
            memcpy(r->rbuf, r->txt + x->off, x->len);
            r->rbuf[x->len] = 0;
            memset(ev, 0, sizeof *ev);
            ev->type = x->type;
            ev->token = x->token;
            ev->text = r->rbuf;
            ev->text_len = x->len;
            ev->logprob = x->logprob;
            if (x->n_top > 0) {
                memcpy(r->rtop, r->tops + x->top_off, (size_t)x->n_top * sizeof *r->rtop);
                ev->n_top = x->n_top;
                ev->top = r->rtop;
            }
            ev->error = "";
            if (x->type == EXSA_EVENT_DONE) {
                /* The engine filled these before pushing DONE and never
                 * touches them again. */
                ev->finish = r->finish;
                ev->usage = (exsa_usage){r->n_prompt, r->cached_tokens, r->n_gen, r->n_drafted,
                                          r->n_accepted};
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
                r->rd = r->n_ev = 0, r->txt_len = 0, r->tops_len = 0;
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
    engine_request_unref(r);
}

/* ---- constrained output ---- */

/* Compiles the request's grammar and its matcher on the submitting thread
 * (the engine thread only masks and advances). */
static int engine_grammar_setup(exsa_engine *e, exsa_request *r, const exsa_request_params *p,
                         exsa_err *err)
{
    if (!e->voc)
        return exsa_err_set(err, EXSA_EUNSUPPORTED, "grammar: the model has no vocabulary");
    pthread_mutex_lock(&e->gvoc_mu);
    if (!e->gvoc)
        e->gvoc = exsa_grammar_vocab_create(e->voc, err);
    exsa_grammar_vocab *gv = e->gvoc;
    pthread_mutex_unlock(&e->gvoc_mu);
    if (!gv)
        return err->code ? err->code : EXSA_ENOMEM;
    if (!(r->gram = exsa_grammar_parse(p->grammar, strlen(p->grammar), NULL, err)) ||
        !(r->gm = exsa_grammar_matcher_create(r->gram, gv, err)))
        return err->code;
    r->gmask = malloc(((size_t)e->n_vocab + 31) / 32 * sizeof *r->gmask);
    if (!r->gmask)
        return exsa_err_set(err, EXSA_ENOMEM, "grammar: out of memory");
    if (p->grammar_trigger && *p->grammar_trigger) {
        if (!(r->trigger = strdup(p->grammar_trigger)))
            return exsa_err_set(err, EXSA_ENOMEM, "grammar: out of memory");
    } else {
        r->gram_on = 1;
    }
    return 0;
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
    if (p->top_logprobs < 0 || p->top_logprobs > EXSA_MAX_TOP_LOGPROBS) {
        exsa_err_set(err, EXSA_EINVAL, "top_logprobs must be in [0, %d], got %d",
                     EXSA_MAX_TOP_LOGPROBS, p->top_logprobs);
        goto fail;
    }
    r->logprobs = p->logprobs != 0;
    r->top_logprobs = r->logprobs ? p->top_logprobs : 0;
    /* Room for a few queued events' top lists up front; the queue only
     * grows past it when the reader falls behind. */
    if (r->top_logprobs > 0 &&
        engine_grow((void **)&r->tops, &r->tops_cap, (size_t)16 * (size_t)r->top_logprobs,
             sizeof *r->tops)) {
        exsa_err_set(err, EXSA_ENOMEM, "submit: out of memory");
        goto fail;
    }
    if (build_prompt(e, r, p, err) || copy_stops(r, p, err) ||
        exsa_sampling_params_check(&p->sampling, e->n_vocab, err) ||
        !(r->smp = exsa_sampler_create(&p->sampling, e->n_vocab, err)))
        goto fail;
    if (e->tok && !(r->detok = exsa_detok_create(e->tok, 0, err)))
        goto fail;
    if (p->grammar && engine_grammar_setup(e, r, p, err))
        goto fail;
    if (spec_setup(e, r, p, err))
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
    engine_request_destroy(r);
    return NULL;
}
