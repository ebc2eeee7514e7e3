#include "server/api_native.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/app.h"
#include "server/gen_job.h"
#include "server/json_text.h"
#include "server/request_params.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timer.h"

#define KEEPALIVE_MS 10000
#define LIST_MAX 64

static void reply_oom(exsa_http_req *rq)
{
    exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
}

/* ---- health and status ---- */

/* "ok", "loading" or "no model loaded". */
static const char *overall_state(exsa_app *a)
{
    if (exsa_registry_ready(a->reg))
        return "ok";
    if (atomic_load(&a->loading) > 0)
        return "loading";
    exsa_registry_entry ent[LIST_MAX];
    int n = exsa_registry_list(a->reg, ent, LIST_MAX);
    for (int i = 0; i < n && i < LIST_MAX; i++)
        if (ent[i].state == EXSA_MODEL_LOADING)
            return "loading";
    return "no model loaded";
}

void exsa_api_health(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    const char *st = overall_state(a);
    if (!strcmp(st, "ok")) {
        json_t *j = json_object();
        if (j)
            json_object_set_new(j, "status", json_string("ok"));
        exsa_http_reply_json(rq, 200, j);
        return;
    }
    /* llama-server's shape while loading, plus a status word. */
    int loading = !strcmp(st, "loading");
    json_t *j = exsa_http_error_json("unavailable_error", NULL,
                                     loading ? "model_loading" : "no_model_loaded",
                                     loading ? "loading model" : "no model loaded");
    if (j)
        json_object_set_new(j, "status", json_string(st));
    if (loading)
        exsa_http_add_header(rq, "Retry-After", "1");
    exsa_http_reply_json(rq, 503, j);
}

static const char *state_name(int s)
{
    return s == EXSA_MODEL_LOADING ? "loading" : s == EXSA_MODEL_READY ? "ready" : "draining";
}

/* A registry entry's common fields as a new JSON object; *eng receives the
 * entry's engine, acquired (the caller releases it), when the model is
 * ready, else NULL. NULL when out of memory. */
static json_t *entry_json(exsa_app *a, const exsa_registry_entry *ent, exsa_engine **eng)
{
    *eng = NULL;
    json_t *m = json_object();
    if (!m)
        return NULL;
    json_object_set_new(m, "name", exsa_json_str(ent->name));
    json_object_set_new(m, "path", exsa_json_str(ent->path));
    json_object_set_new(m, "state", json_string(state_name(ent->state)));
    json_object_set_new(m, "active", json_boolean(ent->active));
    json_object_set_new(m, "holders", json_integer(ent->holders));
    if (ent->state == EXSA_MODEL_READY)
        *eng = exsa_registry_acquire(a->reg, ent->name, NULL);
    return m;
}

void exsa_api_status(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    exsa_registry_entry ent[LIST_MAX];
    int n = exsa_registry_list(a->reg, ent, LIST_MAX);
    if (n > LIST_MAX)
        n = LIST_MAX;
    json_t *r = json_object(), *models = json_array();
    if (!r || !models) {
        json_decref(r);
        json_decref(models);
        reply_oom(rq);
        return;
    }
    long long queue = 0, running = 0, total = 0, free_b = 0, cached = 0, hits = 0, pre = 0,
              done = 0, gen = 0, seqs_peak = 0, drafted = 0, accepted = 0;
    double tps = 0;
    const char *active = NULL;
    for (int i = 0; i < n; i++) {
        exsa_engine *e;
        json_t *m = entry_json(a, &ent[i], &e);
        if (!m)
            continue;
        if (ent[i].active)
            active = ent[i].name;
        if (e) {
            exsa_engine_stats st;
            exsa_model_info info;
            exsa_engine_stats_get(e, &st);
            exsa_engine_model_info(e, &info);
            exsa_registry_release(a->reg, e);
            double t = exsa_app_tokens_per_s(a, ent[i].name);
            json_object_set_new(m, "n_ctx", json_integer(info.n_ctx));
            json_object_set_new(m, "backend", exsa_json_str(info.backend));
            json_object_set_new(m, "device", exsa_json_str(info.device));
            if (info.gpu_total_bytes) {
                json_object_set_new(m, "gpu_memory_total",
                                    json_integer((json_int_t)info.gpu_total_bytes));
                json_object_set_new(m, "gpu_memory_used",
                                    json_integer((json_int_t)(info.gpu_total_bytes -
                                                              info.gpu_free_bytes)));
                json_object_set_new(m, "gpu_weight_bytes",
                                    json_integer((json_int_t)info.gpu_weight_bytes));
            }
            json_object_set_new(m, "queue", json_integer(st.queue_len));
            json_object_set_new(m, "running", json_integer(st.running));
            json_object_set_new(m, "batch_seqs_peak", json_integer(st.batch_seqs_peak));
            json_object_set_new(m, "spec_draft_tokens", json_integer(st.spec_draft_tokens));
            json_object_set_new(m, "spec_accepted_tokens",
                                json_integer(st.spec_accepted_tokens));
            json_object_set_new(m, "kv_block_size", json_integer(st.block_size));
            json_object_set_new(m, "kv_blocks_total", json_integer(st.kv_blocks_total));
            json_object_set_new(m, "kv_blocks_used",
                                json_integer(st.kv_blocks_total - st.kv_blocks_free));
            json_object_set_new(m, "kv_blocks_free", json_integer(st.kv_blocks_free));
            json_object_set_new(m, "kv_blocks_cached", json_integer(st.kv_blocks_cached));
            json_object_set_new(m, "prefix_hit_tokens", json_integer(st.prefix_hit_tokens));
            json_object_set_new(m, "preemptions", json_integer(st.preemptions));
            json_object_set_new(m, "prompt_tokens", json_integer(st.prompt_tokens));
            json_object_set_new(m, "generated_tokens", json_integer(st.generated_tokens));
            json_object_set_new(m, "requests_done", json_integer(st.requests_done));
            json_object_set_new(m, "tokens_per_s", exsa_json_real(t));
            queue += st.queue_len;
            running += st.running;
            drafted += st.spec_draft_tokens;
            accepted += st.spec_accepted_tokens;
            if (st.batch_seqs_peak > seqs_peak)
                seqs_peak = st.batch_seqs_peak;
            total += st.kv_blocks_total;
            free_b += st.kv_blocks_free;
            cached += st.kv_blocks_cached;
            hits += st.prefix_hit_tokens;
            pre += st.preemptions;
            done += st.requests_done;
            gen += st.generated_tokens;
            tps += t;
        }
        json_array_append_new(models, m);
    }
    double up = (double)(exsa_time_ns() - a->t_start_ns) / 1e9;
    json_object_set_new(r, "status", json_string(overall_state(a)));
    json_object_set_new(r, "version", json_string(EXSA_VERSION));
    json_object_set_new(r, "model", active ? exsa_json_str(active) : json_null());
    json_object_set_new(r, "uptime_s", exsa_json_real(up));
    json_object_set_new(r, "queue", json_integer(queue));
    json_object_set_new(r, "running", json_integer(running));
    json_object_set_new(r, "batch_seqs_peak", json_integer(seqs_peak));
    json_object_set_new(r, "spec_draft_tokens", json_integer(drafted));
    json_object_set_new(r, "spec_accepted_tokens", json_integer(accepted));
    json_object_set_new(r, "kv_blocks_total", json_integer(total));
    json_object_set_new(r, "kv_blocks_used", json_integer(total - free_b));
    json_object_set_new(r, "kv_blocks_free", json_integer(free_b));
    json_object_set_new(r, "kv_blocks_cached", json_integer(cached));
    json_object_set_new(r, "prefix_hit_tokens", json_integer(hits));
    json_object_set_new(r, "preemptions", json_integer(pre));
    json_object_set_new(r, "tokens_per_s", exsa_json_real(tps));
    json_object_set_new(r, "generated_tokens", json_integer(gen));
    json_object_set_new(r, "requests_done", json_integer(done));
    json_object_set_new(r, "requests_served", json_integer(atomic_load(&a->requests_served)));
    json_object_set_new(r, "models", models);
    exsa_http_reply_json(rq, 200, r);
}

void exsa_api_metrics(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    exsa_registry_entry ent[LIST_MAX];
    exsa_metrics_engine eng[LIST_MAX];
    int n = exsa_registry_list(a->reg, ent, LIST_MAX), k = 0;
    if (n > LIST_MAX)
        n = LIST_MAX;
    for (int i = 0; i < n; i++) {
        exsa_metrics_engine *m = &eng[k];
        memset(m, 0, sizeof *m);
        m->model = ent[i].name;
        m->ready = ent[i].state == EXSA_MODEL_READY;
        exsa_engine *e = m->ready ? exsa_registry_acquire(a->reg, ent[i].name, NULL) : NULL;
        if (e) {
            exsa_engine_stats st;
            exsa_model_info info;
            exsa_engine_stats_get(e, &st);
            exsa_engine_model_info(e, &info);
            exsa_registry_release(a->reg, e);
            m->gpu = info.gpu_total_bytes > 0;
            m->gpu_used_bytes = (int64_t)(info.gpu_total_bytes - info.gpu_free_bytes);
            m->gpu_total_bytes = (int64_t)info.gpu_total_bytes;
            m->gpu_weight_bytes = (int64_t)info.gpu_weight_bytes;
            m->queue_len = st.queue_len;
            m->running = st.running;
            m->batch_seqs_peak = st.batch_seqs_peak;
            m->spec_draft_tokens = st.spec_draft_tokens;
            m->spec_accepted_tokens = st.spec_accepted_tokens;
            m->kv_blocks_total = st.kv_blocks_total;
            m->kv_blocks_free = st.kv_blocks_free;
            m->kv_blocks_cached = st.kv_blocks_cached;
            m->prefix_hit_tokens = st.prefix_hit_tokens;
            m->preemptions = st.preemptions;
        }
        k++;
    }
    exsa_strbuf out;
    exsa_strbuf_init(&out);
    if (exsa_metrics_render(a->metrics, eng, k, (double)(exsa_time_ns() - a->t_start_ns) / 1e9,
                            &out)) {
        exsa_strbuf_free(&out);
        reply_oom(rq);
        return;
    }
    exsa_http_reply(rq, 200, "text/plain; version=0.0.4; charset=utf-8", out.p, out.len);
    exsa_strbuf_free(&out);
}

/* ---- /v1/generate ---- */

typedef struct nat {
    exsa_gen_job *job;
    exsa_gen_params g;
    exsa_gen_prompt prompt;
    exsa_strbuf text;
    int32_t *toks;
    int n_toks, cap_toks;
    json_t *lp;
    int llama; /* llama-server's /completion shapes */
    int ended;
} nat;

static void nat_free(void *ctx)
{
    nat *o = ctx;
    if (!o)
        return;
    exsa_gen_job_free(o->job);
    exsa_reqparams_free(&o->g);
    free(o->prompt.ids);
    exsa_strbuf_free(&o->text);
    free(o->toks);
    json_decref(o->lp);
    free(o);
}

/* {"logprob": x, "top_logprobs": [{"id", "token", "logprob"}]} fields of a token. */
static void add_logprobs(nat *o, json_t *obj, const exsa_event *ev)
{
    char t[512];
    json_object_set_new(obj, "logprob", exsa_json_real(ev->logprob));
    json_t *top = json_array();
    for (int i = 0; top && i < ev->n_top; i++) {
        size_t n = exsa_gen_job_token_text(o->job, ev->top[i].token, t, sizeof t);
        json_t *x = json_object();
        if (!x)
            break;
        json_object_set_new(x, "id", json_integer(ev->top[i].token));
        json_object_set_new(x, "token", exsa_json_text(t, n));
        json_object_set_new(x, "logprob", exsa_json_real(ev->top[i].logprob));
        json_array_append_new(top, x);
    }
    json_object_set_new(obj, "top_logprobs", top);
}

static json_t *nat_usage(const exsa_gen_choice *c)
{
    json_t *u = json_object();
    if (!u)
        return NULL;
    json_object_set_new(u, "prompt_tokens", json_integer(c->usage.prompt_tokens));
    json_object_set_new(u, "completion_tokens", json_integer(c->usage.generated_tokens));
    json_object_set_new(
        u, "total_tokens",
        json_integer((json_int_t)c->usage.prompt_tokens + c->usage.generated_tokens));
    json_object_set_new(u, "cached_tokens", json_integer(c->usage.cached_tokens));
    json_object_set_new(u, "draft_tokens", json_integer(c->usage.draft_tokens));
    json_object_set_new(u, "accepted_tokens", json_integer(c->usage.accepted_tokens));
    return u;
}

static void sse(exsa_strbuf *out, json_t *j)
{
    char *s = j ? exsa_json_dump(j) : NULL;
    json_decref(j);
    if (!s) {
        out->oom = 1;
        return;
    }
    exsa_strbuf_puts(out, "data: ");
    exsa_strbuf_puts(out, s);
    exsa_strbuf_puts(out, "\n\n");
    free(s);
}

/* llama-server's stop_type: "eos" (end token or stop word), "limit". */
static const char *llama_stop_type(int finish)
{
    return finish == EXSA_FINISH_STOP                                      ? "eos"
           : finish == EXSA_FINISH_LENGTH || finish == EXSA_FINISH_CONTEXT ? "limit"
                                                                           : "none";
}

/* The last event: done, with why and (when it ended normally) usage. */
static void nat_done_event(nat *o, exsa_strbuf *out, const char *finish, const char *err_type,
                           const char *err_code, const char *err_msg)
{
    json_t *j = json_object();
    if (!j) {
        out->oom = 1;
        return;
    }
    exsa_gen_choice *c = &o->job->ch[0];
    if (o->llama) {
        json_object_set_new(j, "content", json_string(""));
        json_object_set_new(j, "stop", json_true());
        json_object_set_new(j, "stop_type", json_string(llama_stop_type(c->finish)));
        json_object_set_new(j, "tokens_predicted", json_integer(c->usage.generated_tokens));
        json_object_set_new(j, "tokens_evaluated", json_integer(c->usage.prompt_tokens));
        json_object_set_new(j, "tokens_cached", json_integer(c->usage.cached_tokens));
    } else {
        json_object_set_new(j, "token", json_string(""));
        json_object_set_new(j, "done", json_true());
    }
    json_object_set_new(j, "finish_reason", exsa_json_str(finish));
    json_object_set_new(j, "model", exsa_json_str(o->job->info.name));
    if (c->done) {
        json_object_set_new(j, "usage", nat_usage(c));
        json_object_set_new(j, "timings", exsa_gen_timings_json(c));
    }
    if (err_msg) {
        json_t *e = exsa_http_error_json(err_type, NULL, err_code, err_msg);
        if (e) {
            json_object_set(j, "error", json_object_get(e, "error"));
            json_decref(e);
        }
    }
    sse(out, j);
}

static int nat_pull(void *ctx, exsa_strbuf *out)
{
    nat *o = ctx;
    if (o->ended)
        return 1;
    int idx = 0;
    exsa_event ev;
    int st = exsa_gen_job_next(o->job, KEEPALIVE_MS, &idx, &ev);
    switch (st) {
    case EXSA_GEN_IDLE: exsa_strbuf_puts(out, ": keep-alive\n\n"); return 0;
    case EXSA_GEN_TIMEOUT: {
        char msg[128];
        snprintf(msg, sizeof msg, "request timed out after %g s (--timeout); generation cancelled",
                 o->job->app->cfg->request_timeout_s);
        nat_done_event(o, out, "timeout", "timeout_error", "timeout", msg);
        o->ended = 1;
        return 1;
    }
    case EXSA_GEN_GONE: return -1;
    case EXSA_GEN_END: o->ended = 1; return 1;
    default: break;
    }
    if (ev.type == EXSA_EVENT_TOKEN) {
        json_t *j = json_object();
        if (!j) {
            out->oom = 1;
            return -1;
        }
        if (o->llama) {
            json_object_set_new(j, "content", exsa_json_text(ev.text, ev.text_len));
            json_t *t = json_array();
            if (t)
                json_array_append_new(t, json_integer(ev.token));
            json_object_set_new(j, "tokens", t);
            json_object_set_new(j, "stop", json_false());
        } else {
            json_object_set_new(j, "token", exsa_json_text(ev.text, ev.text_len));
            json_object_set_new(j, "id", json_integer(ev.token));
            json_object_set_new(j, "done", json_false());
        }
        if (o->g.logprobs)
            add_logprobs(o, j, &ev);
        sse(out, j);
        return 0;
    }
    exsa_gen_choice *c = &o->job->ch[idx];
    if (c->finish == EXSA_FINISH_CANCEL)
        nat_done_event(o, out, "cancelled", "server_error", "cancelled",
                       "generation cancelled (the server is shutting down)");
    else if (c->finish == EXSA_FINISH_ERROR)
        nat_done_event(o, out, "error", "server_error", "generation_error",
                       c->error[0] ? c->error : "generation failed");
    else
        nat_done_event(o, out, exsa_gen_finish_name(c->finish), NULL, NULL, NULL);
    o->ended = 1;
    return 1;
}

static void nat_collect_and_reply(nat *o, exsa_http_req *rq)
{
    exsa_gen_job *j = o->job;
    j->watch_client = 1;
    if (o->g.logprobs && !(o->lp = json_array())) {
        reply_oom(rq);
        return;
    }
    for (;;) {
        int idx = 0;
        exsa_event ev;
        int st = exsa_gen_job_next(j, -1, &idx, &ev);
        if (st == EXSA_GEN_END)
            break;
        if (exsa_gen_job_reply_cut(j, st))
            return;
        if (st != EXSA_GEN_EVENT || ev.type != EXSA_EVENT_TOKEN)
            continue;
        exsa_strbuf_append(&o->text, ev.text, ev.text_len);
        if (o->n_toks == o->cap_toks) {
            int cap = o->cap_toks ? o->cap_toks * 2 : 64;
            int32_t *t = realloc(o->toks, (size_t)cap * sizeof *t);
            if (!t) {
                reply_oom(rq);
                return;
            }
            o->toks = t;
            o->cap_toks = cap;
        }
        o->toks[o->n_toks++] = ev.token;
        if (o->lp) {
            char t[512];
            size_t n = exsa_gen_job_token_text(j, ev.token, t, sizeof t);
            json_t *x = json_object();
            if (x) {
                json_object_set_new(x, "id", json_integer(ev.token));
                json_object_set_new(x, "token", exsa_json_text(t, n));
                add_logprobs(o, x, &ev);
                json_array_append_new(o->lp, x);
            }
        }
    }
    exsa_gen_choice *c = &j->ch[0];
    if (c->finish == EXSA_FINISH_CANCEL) {
        exsa_http_reply_error(rq, 503, "unavailable_error", NULL, "cancelled",
                              "generation cancelled (the server is shutting down)");
        return;
    }
    if (c->finish == EXSA_FINISH_ERROR) {
        exsa_http_reply_error(rq, 500, "server_error", NULL, "generation_error", "%s",
                              c->error[0] ? c->error : "generation failed");
        return;
    }
    json_t *r = json_object(), *toks = json_array();
    if (!r || !toks || o->text.oom) {
        json_decref(r);
        json_decref(toks);
        reply_oom(rq);
        return;
    }
    for (int i = 0; i < o->n_toks; i++)
        json_array_append_new(toks, json_integer(o->toks[i]));
    json_object_set_new(r, "model", exsa_json_str(j->info.name));
    json_object_set_new(r, o->llama ? "content" : "text", exsa_json_text(o->text.p, o->text.len));
    json_object_set_new(r, "tokens", toks);
    if (o->llama) {
        json_object_set_new(r, "stop", json_true());
        json_object_set_new(r, "stop_type", json_string(llama_stop_type(c->finish)));
        json_object_set_new(r, "tokens_predicted", json_integer(c->usage.generated_tokens));
        json_object_set_new(r, "tokens_evaluated", json_integer(c->usage.prompt_tokens));
        json_object_set_new(r, "tokens_cached", json_integer(c->usage.cached_tokens));
    }
    json_object_set_new(r, "finish_reason", exsa_json_str(exsa_gen_finish_name(c->finish)));
    json_object_set_new(r, "usage", nat_usage(c));
    json_object_set_new(r, "timings", exsa_gen_timings_json(c));
    if (o->lp) {
        json_object_set_new(r, "logprobs", o->lp);
        o->lp = NULL;
    }
    exsa_http_reply_json(rq, 200, r);
}

static void generate(exsa_http_req *rq, exsa_app *a, int llama)
{
    nat *o = calloc(1, sizeof *o);
    if (!o) {
        reply_oom(rq);
        return;
    }
    o->llama = llama;
    exsa_strbuf_init(&o->text);
    json_t *body = NULL;
    if (!(o->job = exsa_gen_job_begin(a, rq, EXSA_API_NATIVE, &body, &o->g))) {
        nat_free(o);
        return;
    }
    exsa_param_err pe = {0};
    const json_t *pr = json_object_get(body, "prompt"), *tk = json_object_get(body, "tokens");
    if (json_is_null(pr))
        pr = NULL;
    if (json_is_null(tk))
        tk = NULL;
    int add_special = 1, parse_special = 1;
    const char *field = tk ? "tokens" : "prompt";
    if (o->g.n > 1) {
        exsa_param_fail(&pe, "n", "invalid_value",
                        "'n' > 1 is not supported on /v1/generate; use /v1/completions");
    } else if (pr && tk) {
        exsa_param_fail(&pe, "tokens", "invalid_value",
                        "give either 'prompt' or 'tokens', not both");
    } else if (!pr && !tk) {
        exsa_param_fail(&pe, "prompt", "missing_required_parameter",
                        "'prompt' (text or token ids) or 'tokens' is required");
    } else if (exsa_reqparams_bool(body, "add_special", &add_special, NULL, &pe) ||
               exsa_reqparams_bool(body, "parse_special", &parse_special, NULL, &pe)) {
        /* pe filled */
    } else if (pr && json_is_string(pr)) {
        if (exsa_gen_job_tokenize(o->job, json_string_value(pr), json_string_length(pr),
                                  add_special, parse_special, "prompt", &o->prompt))
            goto done;
    } else if (json_is_array(pr ? pr : tk)) {
        exsa_reqparams_ids(pr ? pr : tk, field, o->job->info.n_vocab, &o->prompt.ids, &o->prompt.n,
                           &pe);
    } else {
        exsa_param_fail(&pe, field, "invalid_type", "'%s' must be a string or a list of token ids",
                        field);
    }
    if (pe.status) {
        exsa_app_reply_param(rq, &pe);
        goto done;
    }
    json_decref(body);
    body = NULL;
    if (exsa_gen_job_submit(o->job, &o->g, &o->prompt, 1, field))
        goto done;
    if (o->g.stream) {
        exsa_http_reply_stream(rq, 200, "text/event-stream", nat_pull, o, nat_free);
        return;
    }
    nat_collect_and_reply(o, rq);
done:
    json_decref(body);
    nat_free(o);
}

void exsa_api_generate(exsa_http_req *rq, void *app) { generate(rq, app, 0); }
void exsa_api_llama_completion(exsa_http_req *rq, void *app) { generate(rq, app, 1); }

/* ---- tokenize / detokenize ---- */

void exsa_api_tokenize(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    exsa_param_err pe = {0};
    size_t len;
    const char *b = exsa_http_req_body(rq, &len);
    json_t *body = exsa_reqparams_body(b, len, &pe);
    exsa_engine *e = NULL;
    int32_t *ids = NULL;
    const char *model = NULL, *text = NULL, *key = "content";
    int has, add_special = 0, parse_special = 1, pieces = 0;
    if (!body || exsa_reqparams_model(body, &model, &pe) ||
        exsa_reqparams_str(body, "content", &text, &has, &pe))
        goto bad;
    if (!has) {
        key = "text";
        if (exsa_reqparams_str(body, "text", &text, &has, &pe))
            goto bad;
        if (!has) {
            exsa_param_fail(&pe, "content", "missing_required_parameter",
                            "'content' (or 'text') is required");
            goto bad;
        }
    }
    if (exsa_reqparams_bool(body, "add_special", &add_special, NULL, &pe) ||
        exsa_reqparams_bool(body, "parse_special", &parse_special, NULL, &pe) ||
        exsa_reqparams_bool(body, "with_pieces", &pieces, NULL, &pe))
        goto bad;
    if (!(e = exsa_app_acquire(a, rq, model)))
        goto out;
    exsa_err err = {0};
    size_t tl = strlen(text);
    int64_t n = exsa_engine_tokenize(e, text, tl, add_special, parse_special, NULL, 0, &err);
    if (n < 0) {
        exsa_app_reply_engine(rq, &err, key);
        goto out;
    }
    if (!(ids = malloc((size_t)(n ? n : 1) * sizeof *ids)))
        goto oom;
    if (n > 0 && exsa_engine_tokenize(e, text, tl, add_special, parse_special, ids, n, &err) != n)
        goto oom;
    json_t *r = json_object(), *arr = json_array();
    if (!r || !arr) {
        json_decref(r);
        json_decref(arr);
        goto oom;
    }
    for (int64_t i = 0; i < n; i++) {
        if (!pieces) {
            json_array_append_new(arr, json_integer(ids[i]));
            continue;
        }
        char t[512];
        int64_t m = exsa_engine_detokenize(e, &ids[i], 1, 1, t, sizeof t, NULL);
        json_t *x = json_object();
        if (!x)
            continue;
        json_object_set_new(x, "id", json_integer(ids[i]));
        json_object_set_new(x, "piece",
                            exsa_json_text(t, m < 0                  ? 0
                                              : (size_t)m < sizeof t ? (size_t)m
                                                                     : sizeof t - 1));
        json_array_append_new(arr, x);
    }
    json_object_set_new(r, "tokens", arr);
    exsa_http_reply_json(rq, 200, r);
    goto out;
oom:
    reply_oom(rq);
    goto out;
bad:
    exsa_app_reply_param(rq, &pe);
out:
    free(ids);
    json_decref(body);
    if (e)
        exsa_registry_release(a->reg, e);
}

void exsa_api_detokenize(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    exsa_param_err pe = {0};
    size_t len;
    const char *b = exsa_http_req_body(rq, &len);
    json_t *body = exsa_reqparams_body(b, len, &pe);
    exsa_engine *e = NULL;
    int32_t *ids = NULL;
    char *text = NULL;
    const char *model = NULL;
    int n = 0, special = 0;
    if (!body || exsa_reqparams_model(body, &model, &pe) ||
        exsa_reqparams_bool(body, "special", &special, NULL, &pe))
        goto bad;
    const json_t *tk = json_object_get(body, "tokens");
    if (!tk || json_is_null(tk)) {
        exsa_param_fail(&pe, "tokens", "missing_required_parameter", "'tokens' is required");
        goto bad;
    }
    if (!(e = exsa_app_acquire(a, rq, model)))
        goto out;
    exsa_model_info info;
    exsa_engine_model_info(e, &info);
    if (exsa_reqparams_ids(tk, "tokens", info.n_vocab, &ids, &n, &pe))
        goto bad;
    exsa_err err = {0};
    char small[4096];
    int64_t m = exsa_engine_detokenize(e, ids, n, special, small, sizeof small, &err);
    if (m < 0) {
        exsa_app_reply_engine(rq, &err, "tokens");
        goto out;
    }
    const char *res = small;
    if ((size_t)m >= sizeof small) {
        if (!(text = malloc((size_t)m + 1)))
            goto oom;
        if (exsa_engine_detokenize(e, ids, n, special, text, (size_t)m + 1, &err) != m)
            goto oom;
        res = text;
    }
    json_t *r = json_object();
    if (!r)
        goto oom;
    json_object_set_new(r, "content", exsa_json_text(res, (size_t)m));
    exsa_http_reply_json(rq, 200, r);
    goto out;
oom:
    reply_oom(rq);
    goto out;
bad:
    exsa_app_reply_param(rq, &pe);
out:
    free(text);
    free(ids);
    json_decref(body);
    if (e)
        exsa_registry_release(a->reg, e);
}

/* ---- model registry ---- */

static int find_entry(exsa_app *a, const char *name, exsa_registry_entry *out)
{
    exsa_registry_entry ent[LIST_MAX];
    int n = exsa_registry_list(a->reg, ent, LIST_MAX);
    for (int i = 0; i < n && i < LIST_MAX; i++)
        if (!strcmp(ent[i].name, name)) {
            *out = ent[i];
            return 1;
        }
    return 0;
}

/* Engine options of load / reload, over the server's defaults. Returns 0,
 * or EXSA_EINVAL with pe; *given counts the options present. */
static int engine_options(const json_t *body, exsa_engine_params *p, int *given, exsa_param_err *pe)
{
    static const struct {
        const char *name, *alias;
        long long lo, hi;
        size_t off;
    } ints[] = {
        {"n_ctx", "ctx_size", 0, 1 << 24, offsetof(exsa_engine_params, n_ctx)},
        {"n_threads", "threads", 0, 4096, offsetof(exsa_engine_params, n_threads)},
        {"max_batch_size", "parallel", 1, 4096, offsetof(exsa_engine_params, max_batch_size)},
        {"max_batch_tokens", "batch_size", 1, 1 << 20,
         offsetof(exsa_engine_params, max_batch_tokens)},
        {"kv_tokens", "kv_pool_tokens", 0, 1 << 30, offsetof(exsa_engine_params, kv_tokens)},
        {"queue_size", NULL, 1, 1 << 20, offsetof(exsa_engine_params, queue_size)},
    };
    *given = 0;
    int sized = 0; /* n_ctx / max_batch_size changed, KV pool not given */
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        for (int k = 0; k < 2; k++) {
            const char *key = k ? ints[i].alias : ints[i].name;
            long long v;
            int has;
            if (!key)
                continue;
            if (exsa_reqparams_int(body, key, ints[i].lo, ints[i].hi, &v, &has, pe))
                return EXSA_EINVAL;
            if (has) {
                *(int *)(void *)((char *)p + ints[i].off) = (int)v;
                (*given)++;
                if (i == 0 || i == 2)
                    sized = 1;
                if (i == 4)
                    sized = -1000;
            }
        }
    }
    long long mb;
    int has;
    if (exsa_reqparams_int(body, "kv_pool_mb", 0, 1 << 24, &mb, &has, pe))
        return EXSA_EINVAL;
    if (has) {
        p->kv_bytes = (int64_t)mb << 20;
        (*given)++;
        sized = -1000;
    }
    if (sized > 0) {
        /* The server's default pool follows the new context / parallelism. */
        p->kv_tokens = 0;
        p->kv_bytes = 0;
        exsa_server_default_kv_pool(p);
    }
    const char *s;
    for (int k = 0; k < 2; k++) {
        const char *key = k ? "cache_type_k" : "kv_type";
        if (exsa_reqparams_str(body, key, &s, &has, pe))
            return EXSA_EINVAL;
        if (has) {
            int t = exsa_server_kv_type(s);
            if (t < 0)
                return exsa_param_fail(pe, key, "invalid_value",
                                       "'%s' must be f16, f32 or q8_0, got '%.40s'", key, s);
            p->kv_type = t;
            (*given)++;
        }
    }
    if (exsa_reqparams_str(body, "scheduling", &s, &has, pe))
        return EXSA_EINVAL;
    if (has) {
        int t = exsa_server_strategy(s);
        if (t < 0)
            return exsa_param_fail(pe, "scheduling", "invalid_value",
                                   "'scheduling' must be fifo, shortest, priority or dynamic, got "
                                   "'%.40s'",
                                   s);
        p->strategy = t;
        (*given)++;
    }
    int b;
    if (exsa_reqparams_bool(body, "prefix_cache", &b, &has, pe))
        return EXSA_EINVAL;
    if (has) {
        p->prefix_cache = b;
        (*given)++;
    }
    /* A draft model for speculative decoding ("" or null: none), and
     * whether requests speculate when they do not say. */
    s = NULL;
    if (exsa_reqparams_str(body, "draft_model", &s, &has, pe))
        return EXSA_EINVAL;
    if (has || json_is_null(json_object_get(body, "draft_model"))) {
        p->draft_model_path = s && *s ? s : NULL;
        p->spec = p->spec || p->draft_model_path;
        (*given)++;
    }
    if (exsa_reqparams_bool(body, "speculative", &b, &has, pe))
        return EXSA_EINVAL;
    if (has) {
        p->spec = b;
        (*given)++;
    }
    if (exsa_reqparams_str(body, "chat_template", &s, &has, pe))
        return EXSA_EINVAL;
    if (has) {
        p->chat_template = s;
        (*given)++;
    }
    return 0;
}

static void reply_load_error(exsa_http_req *rq, const exsa_err *err, const char *name)
{
    switch (err->code) {
    case EXSA_EINVAL:
        exsa_http_reply_error(rq, 400, "invalid_request_error", name ? "name" : "path",
                              "invalid_value", "%s", err->msg);
        return;
    case EXSA_EIO:
    case EXSA_EFORMAT:
    case EXSA_EUNSUPPORTED:
        exsa_http_reply_error(rq, 400, "invalid_request_error", "path",
                              err->code == EXSA_EIO ? "file_not_readable" : "invalid_model", "%s",
                              err->msg);
        return;
    default: exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "%s", err->msg);
    }
}

void exsa_api_models_load(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    exsa_param_err pe = {0};
    size_t len;
    const char *b = exsa_http_req_body(rq, &len);
    json_t *body = exsa_reqparams_body(b, len, &pe);
    const char *path = NULL, *name = NULL;
    int has, given, make_active = 0, rc;
    if (!body || exsa_reqparams_str(body, "path", &path, &has, &pe))
        goto bad;
    if (!has || !*path) {
        exsa_param_fail(&pe, "path", "missing_required_parameter",
                        "'path' (the GGUF file to load) is required");
        goto bad;
    }
    if (exsa_reqparams_str(body, "name", &name, &has, &pe))
        goto bad;
    if (!has && exsa_reqparams_str(body, "alias", &name, &has, &pe))
        goto bad;
    if (name && (!*name || strlen(name) > 200)) {
        exsa_param_fail(&pe, "name", "invalid_value", "'name' must be 1 to 200 characters");
        goto bad;
    }
    exsa_engine_params p = a->cfg->engine;
    p.model_path = path;
    p.name = name;
    p.draft_model_path = NULL; /* the server's draft is the served model's; one per load */
    if (engine_options(body, &p, &given, &pe) ||
        exsa_reqparams_bool(body, "active", &make_active, NULL, &pe))
        goto bad;
    exsa_registry_entry ent;
    char def_name[256];
    if (!name) {
        exsa_registry_default_name(path, def_name, sizeof def_name);
        if (find_entry(a, def_name, &ent)) {
            exsa_param_fail(&pe, "name", "model_exists",
                            "a model named '%.200s' (the default name, from the file name) is "
                            "already loaded from %.300s; to load %.300s as well, give it "
                            "another \"name\"",
                            def_name, ent.path, path);
            goto bad;
        }
    } else if (find_entry(a, name, &ent)) {
        exsa_param_fail(&pe, "name", "model_exists",
                        "a model named '%.200s' is already loaded (or loading) from %.300s; "
                        "unload or reload it, or give %.300s another \"name\"",
                        name, ent.path, path);
        goto bad;
    }
    char got[256] = "";
    exsa_err err = {0};
    int64_t t0 = exsa_time_ns();
    exsa_log(EXSA_LOG_INFO, exsa_http_req_id(rq), "loading model %.300s", path);
    atomic_fetch_add(&a->loading, 1);
    rc = exsa_registry_load(a->reg, &p, got, sizeof got, &err);
    atomic_fetch_sub(&a->loading, 1);
    if (rc) {
        exsa_log(EXSA_LOG_WARN, exsa_http_req_id(rq), "loading %.300s failed: %s", path, err.msg);
        reply_load_error(rq, &err, name);
        goto out;
    }
    double secs = (double)(exsa_time_ns() - t0) / 1e9;
    exsa_log(EXSA_LOG_INFO, exsa_http_req_id(rq), "model %s ready in %.2f s", got, secs);
    if (make_active)
        exsa_registry_set_active(a->reg, got, NULL);
    exsa_http_req_note_model(rq, got);
    json_t *r = json_object();
    if (r) {
        json_object_set_new(r, "name", exsa_json_str(got));
        json_object_set_new(r, "status", json_string("ready"));
        json_object_set_new(r, "load_s", exsa_json_real(secs));
        json_object_set_new(r, "active", json_boolean(find_entry(a, got, &ent) && ent.active));
    }
    exsa_http_reply_json(rq, 200, r);
    goto out;
bad:
    exsa_app_reply_param(rq, &pe);
out:
    json_decref(body);
}

/* Reads the required "name" of unload / reload / active. */
static int name_field(const json_t *body, const char **name, exsa_param_err *pe)
{
    int has;
    if (exsa_reqparams_str(body, "name", name, &has, pe))
        return EXSA_EINVAL;
    if (!has && exsa_reqparams_str(body, "model", name, &has, pe))
        return EXSA_EINVAL;
    if (!has || !**name)
        return exsa_param_fail(pe, "name", "missing_required_parameter", "'name' is required");
    return 0;
}

static void reply_unknown_model(exsa_http_req *rq, const char *name)
{
    exsa_http_reply_error(rq, 404, "invalid_request_error", "name", "model_not_found",
                          "no model named '%.200s' is loaded", name);
}

void exsa_api_models_unload(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    exsa_param_err pe = {0};
    size_t len;
    const char *b = exsa_http_req_body(rq, &len);
    json_t *body = exsa_reqparams_body(b, len, &pe);
    const char *name;
    if (!body || name_field(body, &name, &pe)) {
        exsa_app_reply_param(rq, &pe);
        json_decref(body);
        return;
    }
    exsa_err err = {0};
    if (exsa_registry_unload(a->reg, name, &err)) {
        if (err.code == EXSA_EINVAL)
            reply_unknown_model(rq, name);
        else
            exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "%s", err.msg);
    } else {
        exsa_log(EXSA_LOG_INFO, exsa_http_req_id(rq), "model %s unloaded", name);
        json_t *r = json_object();
        if (r) {
            json_object_set_new(r, "name", exsa_json_str(name));
            json_object_set_new(r, "status", json_string("unloaded"));
        }
        exsa_http_reply_json(rq, 200, r);
    }
    json_decref(body);
}

void exsa_api_models_reload(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    exsa_param_err pe = {0};
    size_t len;
    const char *b = exsa_http_req_body(rq, &len);
    json_t *body = exsa_reqparams_body(b, len, &pe);
    const char *name, *path = NULL;
    exsa_registry_entry ent;
    int given = 0, has;
    if (!body || name_field(body, &name, &pe))
        goto bad;
    if (!find_entry(a, name, &ent)) {
        reply_unknown_model(rq, name);
        goto out;
    }
    exsa_engine_params p = a->cfg->engine;
    p.model_path = ent.path;
    p.name = name;
    if (!a->cfg->model_path || strcmp(ent.path, a->cfg->model_path))
        p.draft_model_path = NULL; /* the server's draft is the served model's */
    if (exsa_reqparams_str(body, "path", &path, &has, &pe) || engine_options(body, &p, &given, &pe))
        goto bad;
    if (has && *path) {
        p.model_path = path;
        given++;
    }
    exsa_err err = {0};
    int64_t t0 = exsa_time_ns();
    exsa_log(EXSA_LOG_INFO, exsa_http_req_id(rq), "reloading model %s", name);
    /* Without options: the parameters it was loaded with. */
    if (exsa_registry_reload(a->reg, name, given ? &p : NULL, &err)) {
        if (err.code == EXSA_EINVAL && !find_entry(a, name, &ent))
            reply_unknown_model(rq, name);
        else
            reply_load_error(rq, &err, NULL);
        goto out;
    }
    double secs = (double)(exsa_time_ns() - t0) / 1e9;
    exsa_log(EXSA_LOG_INFO, exsa_http_req_id(rq), "model %s ready in %.2f s (reloaded)", name,
             secs);
    json_t *r = json_object();
    if (r) {
        json_object_set_new(r, "name", exsa_json_str(name));
        json_object_set_new(r, "status", json_string("ready"));
        json_object_set_new(r, "load_s", exsa_json_real(secs));
    }
    exsa_http_reply_json(rq, 200, r);
    goto out;
bad:
    exsa_app_reply_param(rq, &pe);
out:
    json_decref(body);
}

void exsa_api_models_list(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    exsa_registry_entry ent[LIST_MAX];
    int n = exsa_registry_list(a->reg, ent, LIST_MAX);
    if (n > LIST_MAX)
        n = LIST_MAX;
    json_t *r = json_object(), *arr = json_array();
    if (!r || !arr) {
        json_decref(r);
        json_decref(arr);
        reply_oom(rq);
        return;
    }
    const char *active = NULL;
    for (int i = 0; i < n; i++) {
        exsa_engine *e;
        json_t *m = entry_json(a, &ent[i], &e);
        if (!m)
            continue;
        if (ent[i].active)
            active = ent[i].name;
        if (e) {
            exsa_model_info info;
            exsa_engine_model_info(e, &info);
            exsa_registry_release(a->reg, e);
            json_object_set_new(m, "arch", exsa_json_str(info.arch));
            json_object_set_new(m, "weight_type", exsa_json_str(info.weight_type));
            json_object_set_new(m, "n_ctx", json_integer(info.n_ctx));
            json_object_set_new(m, "n_vocab", json_integer(info.n_vocab));
            json_object_set_new(m, "n_embd", json_integer(info.n_embd));
            json_object_set_new(m, "n_params", json_integer((json_int_t)info.n_params));
            json_object_set_new(m, "created", json_integer(info.created));
        }
        json_array_append_new(arr, m);
    }
    json_object_set_new(r, "object", json_string("list"));
    json_object_set_new(r, "active", active ? exsa_json_str(active) : json_null());
    json_object_set_new(r, "models", arr);
    exsa_http_reply_json(rq, 200, r);
}

void exsa_api_models_active(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    if (!strcmp(exsa_http_req_method(rq), "POST")) {
        exsa_param_err pe = {0};
        size_t len;
        const char *b = exsa_http_req_body(rq, &len);
        json_t *body = exsa_reqparams_body(b, len, &pe);
        const char *name;
        if (!body || name_field(body, &name, &pe)) {
            exsa_app_reply_param(rq, &pe);
            json_decref(body);
            return;
        }
        exsa_err err = {0};
        if (exsa_registry_set_active(a->reg, name, &err)) {
            reply_unknown_model(rq, name);
            json_decref(body);
            return;
        }
        exsa_log(EXSA_LOG_INFO, exsa_http_req_id(rq), "model %s is now the active model", name);
        json_decref(body);
    }
    exsa_registry_entry ent[LIST_MAX];
    int n = exsa_registry_list(a->reg, ent, LIST_MAX);
    const char *active = NULL;
    for (int i = 0; i < n && i < LIST_MAX; i++)
        if (ent[i].active)
            active = ent[i].name;
    json_t *r = json_object();
    if (r) {
        json_object_set_new(r, "name", active ? exsa_json_str(active) : json_null());
        json_object_set_new(r, "model", active ? exsa_json_str(active) : json_null());
    }
    exsa_http_reply_json(rq, 200, r);
}
