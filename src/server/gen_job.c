#include "server/gen_job.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/json_text.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timer.h"

exsa_gen_job *exsa_gen_job_create(exsa_app *app, exsa_http_req *rq, exsa_engine *eng)
{
    exsa_gen_job *j = calloc(1, sizeof *j);
    if (!j) {
        exsa_registry_release(app->reg, eng);
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        return NULL;
    }
    j->app = app;
    j->rq = rq;
    j->eng = eng;
    atomic_init(&j->cancelled, 0);
    /* Streams notice a closed connection when a write fails, but a request
     * still queued writes nothing for a while: look at the socket too. */
    j->watch_client = 1;
    exsa_engine_model_info(eng, &j->info);
    j->mm = exsa_metrics_model(app->metrics, j->info.name);
    if (app->cfg->request_timeout_s > 0)
        j->deadline_ns = exsa_time_ns() + (int64_t)(app->cfg->request_timeout_s * 1e9);
    pthread_mutex_lock(&app->mu);
    j->next = app->jobs;
    if (app->jobs)
        app->jobs->prev = j;
    app->jobs = j;
    /* Shutdown already cancelled everything: this one too. */
    if (app->cancel_all)
        atomic_store(&j->cancelled, 1);
    pthread_mutex_unlock(&app->mu);
    return j;
}

exsa_gen_job *exsa_gen_job_begin(exsa_app *app, exsa_http_req *rq, int kind, json_t **body,
                                 exsa_gen_params *g)
{
    exsa_param_err pe = {0};
    size_t len;
    const char *b = exsa_http_req_body(rq, &len);
    memset(g, 0, sizeof *g);
    *body = exsa_reqparams_body(b, len, &pe);
    if (!*body) {
        exsa_app_reply_param(rq, &pe);
        return NULL;
    }
    const char *model;
    if (exsa_reqparams_model(*body, &model, &pe)) {
        exsa_app_reply_param(rq, &pe);
        goto fail;
    }
    exsa_engine *e = exsa_app_acquire(app, rq, model);
    if (!e)
        goto fail;
    exsa_gen_job *j = exsa_gen_job_create(app, rq, e);
    if (!j)
        goto fail;
    if (exsa_reqparams_parse(*body, kind, j->info.n_vocab, g, &pe)) {
        exsa_app_reply_param(rq, &pe);
        exsa_reqparams_free(g);
        exsa_gen_job_free(j);
        goto fail;
    }
    return j;
fail:
    json_decref(*body);
    *body = NULL;
    return NULL;
}

int exsa_gen_job_tokenize(exsa_gen_job *j, const char *text, size_t len, int add_special,
                          int parse_special, const char *field, exsa_gen_prompt *out)
{
    exsa_err err = {0};
    out->ids = NULL;
    out->n = 0;
    int64_t n = exsa_engine_tokenize(j->eng, text, len, add_special, parse_special, NULL, 0, &err);
    if (n < 0) {
        exsa_app_reply_engine(j->rq, &err, field);
        return (int)n;
    }
    /* The context bounds any prompt; refuse absurd ones before allocating. */
    if (n > (int64_t)j->info.n_ctx * 4 + 1024 || n > INT32_MAX / 8) {
        exsa_param_err pe = {0};
        exsa_param_fail(&pe, field, "context_length_exceeded",
                        "'%s' has %lld tokens; this model's context is %d tokens", field,
                        (long long)n, j->info.n_ctx);
        exsa_app_reply_param(j->rq, &pe);
        return EXSA_EINVAL;
    }
    out->ids = malloc((size_t)(n ? n : 1) * sizeof *out->ids);
    if (!out->ids) {
        exsa_http_reply_error(j->rq, 500, "server_error", NULL, "internal_error", "out of memory");
        return EXSA_ENOMEM;
    }
    if (n > 0 && exsa_engine_tokenize(j->eng, text, len, add_special, parse_special, out->ids, n,
                                      &err) != n) {
        free(out->ids);
        out->ids = NULL;
        exsa_http_reply_error(j->rq, 500, "server_error", NULL, "internal_error",
                              "tokenizing '%s' failed", field);
        return EXSA_EINVAL;
    }
    out->n = (int)n;
    return 0;
}

int exsa_gen_job_chat_prompt(exsa_gen_job *j, const json_t *messages, const json_t *tools,
                             const json_t *kwargs, const char *prefill, exsa_gen_prompt *out,
                             char **text)
{
    exsa_err err = {0};
    char *mj = exsa_json_dump(messages);
    char *tj = tools ? exsa_json_dump(tools) : NULL;
    char *kj = kwargs ? exsa_json_dump(kwargs) : NULL;
    char *prompt = NULL;
    out->ids = NULL;
    out->n = 0;
    if (text)
        *text = NULL;
    if (mj && (tj || !tools) && (kj || !kwargs))
        prompt = exsa_engine_chat_render_kw(j->eng, mj, tj, kj, 1, &err);
    free(mj);
    free(tj);
    free(kj);
    if (prompt && prefill && *prefill) {
        size_t a = strlen(prompt), b = strlen(prefill);
        char *p = realloc(prompt, a + b + 1);
        if (!p) {
            free(prompt);
            prompt = NULL;
        } else {
            memcpy(p + a, prefill, b + 1);
            prompt = p;
        }
    }
    if (!prompt) {
        if (!err.code)
            err.code = EXSA_ENOMEM, snprintf(err.msg, sizeof err.msg, "out of memory");
        exsa_app_reply_engine(j->rq, &err, "messages");
        return err.code;
    }
    /* BOS unless the template wrote it already (as exsa chat does). */
    int add_bos = 1;
    if (j->info.bos >= 0) {
        char bos[128];
        size_t bl = exsa_gen_job_token_text(j, j->info.bos, bos, sizeof bos);
        if (bl > 0 && !strncmp(prompt, bos, bl))
            add_bos = 0;
    }
    int rc = exsa_gen_job_tokenize(j, prompt, strlen(prompt), add_bos, 1, "messages", out);
    if (rc == 0 && text)
        *text = prompt;
    else
        free(prompt);
    return rc;
}

void exsa_gen_job_cancel(exsa_gen_job *j)
{
    atomic_store(&j->cancelled, 1);
    for (int i = 0; i < j->n_ch; i++)
        if (j->ch[i].req)
            exsa_request_cancel(j->ch[i].req);
}

exsa_gen_job *exsa_gen_job_next_in_list(exsa_gen_job *j) { return j->next; }

void exsa_gen_job_free(exsa_gen_job *j)
{
    if (!j)
        return;
    exsa_app *a = j->app;
    /* Unlink first so that cancel_all never sees requests being freed. */
    pthread_mutex_lock(&a->mu);
    if (j->prev)
        j->prev->next = j->next;
    else
        a->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    pthread_mutex_unlock(&a->mu);
    for (int i = 0; i < j->n_ch; i++)
        exsa_request_free(j->ch[i].req); /* cancels one that still runs */
    free(j->ch);
    exsa_registry_release(a->reg, j->eng);
    free(j);
}

int exsa_gen_job_submit(exsa_gen_job *j, const exsa_gen_params *g, const exsa_gen_prompt *prompts,
                        int n_prompts, const char *prompt_field)
{
    exsa_http_req *rq = j->rq;
    const exsa_server_config *cfg = j->app->cfg;
    exsa_param_err pe = {0};
    if (n_prompts <= 0 || n_prompts > 64 || (long)n_prompts * g->n > 64) {
        exsa_param_fail(&pe, prompt_field, "invalid_value",
                        "%d prompts x n = %d choices: at most 64 choices per request", n_prompts,
                        n_prompts * g->n);
        exsa_app_reply_param(rq, &pe);
        return EXSA_EINVAL;
    }
    /* The KV pool can be smaller than one context: never ask for more. */
    exsa_engine_stats st;
    exsa_engine_stats_get(j->eng, &st);
    int n_ctx = j->info.n_ctx;
    if (st.block_size > 0 && (int64_t)st.kv_blocks_total * st.block_size < n_ctx)
        n_ctx = st.kv_blocks_total * st.block_size;
    int *budget = calloc((size_t)n_prompts, sizeof *budget);
    exsa_gen_choice *ch = calloc((size_t)n_prompts * (size_t)g->n, sizeof *ch);
    /* exsa_app_cancel_all reads ch / n_ch under app->mu: publish under it. */
    pthread_mutex_lock(&j->app->mu);
    j->ch = ch;
    pthread_mutex_unlock(&j->app->mu);
    if (!budget || !j->ch) {
        free(budget);
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        return EXSA_ENOMEM;
    }
    for (int p = 0; p < n_prompts; p++) {
        char field[64];
        if (n_prompts > 1)
            snprintf(field, sizeof field, "%s[%d]", prompt_field, p);
        else
            snprintf(field, sizeof field, "%s", prompt_field);
        if (exsa_reqparams_budget(g, prompts[p].n, n_ctx, cfg->max_tokens_cap, cfg->n_predict,
                                  cfg->max_prompt_tokens, field, &budget[p], &pe)) {
            free(budget);
            exsa_app_reply_param(rq, &pe);
            return EXSA_EINVAL;
        }
    }
    j->n_prompts = n_prompts;
    for (int p = 0; p < n_prompts; p++) {
        for (int k = 0; k < g->n; k++) {
            exsa_request_params rp = g->rp;
            rp.prompt_ids = prompts[p].ids;
            rp.n_prompt_ids = prompts[p].n;
            rp.prompt_text = NULL;
            rp.max_tokens = budget[p];
            /* Seeds: seed, seed+1, ... for the choices of a prompt, so the
             * first choice equals the same request with n = 1. */
            rp.sampling.seed = g->seed + (uint64_t)k;
            if (rp.sampling.seed == EXSA_SEED_RANDOM)
                rp.sampling.seed = 0;
            exsa_gen_choice *c = &j->ch[j->n_ch];
            c->index = p * g->n + k;
            c->prompt = p;
            c->n_prompt = prompts[p].n;
            exsa_err err = {0};
            exsa_request *r = exsa_engine_submit(j->eng, &rp, &err);
            if (!r) {
                free(budget);
                exsa_gen_job_cancel(j);
                /* a grammar's errors are the field's that made it */
                const char *param = err.code != EXSA_EINVAL ? NULL
                                    : !strncmp(err.msg, "grammar", 7)
                                        ? (g->grammar_field ? g->grammar_field : "grammar")
                                        : prompt_field;
                exsa_app_reply_engine(rq, &err, param);
                return err.code ? err.code : EXSA_EINVAL;
            }
            pthread_mutex_lock(&j->app->mu);
            c->req = r;
            j->n_ch++;
            pthread_mutex_unlock(&j->app->mu);
            exsa_metrics_prompt_tokens(j->mm, prompts[p].n);
        }
    }
    free(budget);
    /* A job created while shutting down is cancelled as it starts. */
    if (atomic_load(&j->cancelled))
        exsa_gen_job_cancel(j);
    return 0;
}

static void note(exsa_gen_job *j)
{
    exsa_http_req_note_tokens(j->rq, exsa_gen_job_prompt_tokens(j),
                              exsa_gen_job_generated_tokens(j));
}

int exsa_gen_job_next(exsa_gen_job *j, int wait_ms, int *idx, exsa_event *ev)
{
    const int64_t t0 = exsa_time_ns();
    for (;;) {
        if (j->timed_out)
            return EXSA_GEN_TIMEOUT;
        if (j->client_gone)
            return EXSA_GEN_GONE;
        while (j->cur < j->n_ch && j->ch[j->cur].done)
            j->cur++;
        if (j->cur >= j->n_ch)
            return EXSA_GEN_END;
        exsa_gen_choice *c = &j->ch[j->cur];
        int64_t now = exsa_time_ns();
        /* Wait in slices no longer than what is left of the caller's wait,
         * of the request deadline and, without a stream (nobody notices a
         * closed connection then), one second between looks at the socket. */
        int64_t slice_ms = wait_ms < 0 ? -1 : wait_ms - (now - t0) / 1000000;
        if (wait_ms >= 0 && slice_ms <= 0)
            return EXSA_GEN_IDLE;
        if (j->deadline_ns) {
            if (now >= j->deadline_ns) {
                j->timed_out = 1;
                exsa_gen_job_cancel(j);
                exsa_log(EXSA_LOG_WARN, exsa_http_req_id(j->rq),
                         "request timed out after %.1f s (--timeout); cancelled",
                         j->app->cfg->request_timeout_s);
                return EXSA_GEN_TIMEOUT;
            }
            int64_t left_ms = (j->deadline_ns - now + 999999) / 1000000;
            if (slice_ms < 0 || left_ms < slice_ms)
                slice_ms = left_ms;
        }
        if (j->watch_client && (slice_ms < 0 || slice_ms > 1000))
            slice_ms = 1000;
        int rc = exsa_request_next(c->req, ev, (int)slice_ms);
        if (rc == EXSA_ETIMEDOUT) {
            if (j->watch_client && exsa_http_req_client_gone(j->rq)) {
                j->client_gone = 1;
                exsa_gen_job_cancel(j);
                exsa_log(EXSA_LOG_INFO, exsa_http_req_id(j->rq),
                         "client closed the connection; generation cancelled");
                return EXSA_GEN_GONE;
            }
            continue;
        }
        if (rc != 0) {
            /* Cannot happen for a live stream (EINVAL only after DONE, ENOMEM
             * copying an event): end the choice as an error. */
            c->done = 1;
            c->finish = EXSA_FINISH_ERROR;
            snprintf(c->error, sizeof c->error, "reading the event stream failed: %s",
                     exsa_strerror(rc));
            continue;
        }
        *idx = j->cur;
        now = exsa_time_ns();
        if (ev->type == EXSA_EVENT_TOKEN) {
            exsa_metrics_token(j->mm, c->n_gen ? (double)(now - c->t_prev_ns) / 1e9 : -1.0);
            c->n_gen++;
            c->t_prev_ns = now;
        } else {
            c->done = 1;
            c->finish = ev->finish;
            c->usage = ev->usage;
            c->timings = ev->timings;
            snprintf(c->error, sizeof c->error, "%s", ev->error ? ev->error : "");
            if (ev->usage.generated_tokens > 0 && ev->timings.ttft_ms > 0)
                exsa_metrics_ttft(j->mm, ev->timings.ttft_ms / 1e3);
            note(j);
        }
        return EXSA_GEN_EVENT;
    }
}

int exsa_gen_job_prompt_tokens(const exsa_gen_job *j)
{
    /* n choices of one prompt share it: count each prompt once. */
    int sum = 0, last = -1;
    for (int i = 0; i < j->n_ch; i++)
        if (j->ch[i].prompt != last) {
            sum += j->ch[i].n_prompt;
            last = j->ch[i].prompt;
        }
    return sum;
}

int exsa_gen_job_generated_tokens(const exsa_gen_job *j)
{
    int sum = 0;
    for (int i = 0; i < j->n_ch; i++)
        sum += j->ch[i].done ? j->ch[i].usage.generated_tokens : j->ch[i].n_gen;
    return sum;
}

size_t exsa_gen_job_token_text(exsa_gen_job *j, int32_t token, char *buf, size_t cap)
{
    int64_t n = exsa_engine_detokenize(j->eng, &token, 1, 1, buf, cap, NULL);
    if (n < 0) {
        buf[0] = '\0';
        return 0;
    }
    return (size_t)n < cap ? (size_t)n : cap - 1;
}

size_t exsa_gen_job_token_bytes(exsa_gen_job *j, int32_t token, char *buf, size_t cap)
{
    int64_t n = exsa_engine_token_bytes(j->eng, token, 1, buf, cap, NULL);
    if (n < 0)
        return 0;
    return (size_t)n < cap ? (size_t)n : cap;
}

const char *exsa_gen_finish_name(int finish)
{
    switch (finish) {
    case EXSA_FINISH_STOP: return "stop";
    case EXSA_FINISH_LENGTH:
    case EXSA_FINISH_CONTEXT: return "length";
    case EXSA_FINISH_CANCEL: return "cancelled";
    case EXSA_FINISH_ERROR: return "error";
    default: return NULL;
    }
}

json_t *exsa_gen_timings_json(const exsa_gen_choice *c)
{
    json_t *t = json_object();
    if (!t)
        return NULL;
    double gen_ms = c->timings.total_ms - c->timings.ttft_ms;
    int n = c->usage.generated_tokens;
    json_object_set_new(t, "prompt_n",
                        json_integer(c->usage.prompt_tokens - c->usage.cached_tokens));
    json_object_set_new(t, "prompt_ms", exsa_json_real(c->timings.ttft_ms - c->timings.queue_ms));
    json_object_set_new(t, "predicted_n", json_integer(n));
    json_object_set_new(t, "predicted_ms", exsa_json_real(gen_ms));
    json_object_set_new(t, "predicted_per_second",
                        exsa_json_real(n > 1 && gen_ms > 0 ? (n - 1) * 1e3 / gen_ms : 0));
    json_object_set_new(t, "cached_n", json_integer(c->usage.cached_tokens));
    /* llama-server's names for speculative decoding's counts */
    json_object_set_new(t, "draft_n", json_integer(c->usage.draft_tokens));
    json_object_set_new(t, "draft_n_accepted", json_integer(c->usage.accepted_tokens));
    json_object_set_new(t, "queue_ms", exsa_json_real(c->timings.queue_ms));
    json_object_set_new(t, "ttft_ms", exsa_json_real(c->timings.ttft_ms));
    json_object_set_new(t, "total_ms", exsa_json_real(c->timings.total_ms));
    return t;
}

int exsa_gen_job_reply_cut(exsa_gen_job *j, int st)
{
    if (st == EXSA_GEN_TIMEOUT) {
        exsa_http_reply_error(j->rq, 504, "timeout_error", NULL, "timeout",
                              "request timed out after %g s (--timeout); generation cancelled",
                              j->app->cfg->request_timeout_s);
        return 1;
    }
    if (st == EXSA_GEN_GONE) {
        exsa_http_reply_error(j->rq, 499, "invalid_request_error", NULL, "client_closed",
                              "client closed the connection");
        return 1;
    }
    return 0;
}
