#include "server/app.h"

#include <stdio.h>
#include <string.h>

#include "server/gen_job.h"
#include "util/err.h"
#include "util/timer.h"

/* Labels are the canonical paths (aliases like /chat/completions count
 * under /v1/chat/completions). */
const char *const exsa_app_endpoint_names[EXSA_EP_COUNT] = {
    [EXSA_EP_HEALTH] = "/health",
    [EXSA_EP_STATUS] = "/v1/status",
    [EXSA_EP_GENERATE] = "/v1/generate",
    [EXSA_EP_LLAMA_COMPLETION] = "/completion",
    [EXSA_EP_CHAT] = "/v1/chat/completions",
    [EXSA_EP_COMPLETIONS] = "/v1/completions",
    [EXSA_EP_EMBEDDINGS] = "/v1/embeddings",
    [EXSA_EP_MODELS] = "/v1/models",
    [EXSA_EP_MODELS_LOAD] = "/v1/models/load",
    [EXSA_EP_MODELS_UNLOAD] = "/v1/models/unload",
    [EXSA_EP_MODELS_RELOAD] = "/v1/models/reload",
    [EXSA_EP_MODELS_LIST] = "/v1/models/list",
    [EXSA_EP_MODELS_ACTIVE] = "/v1/models/active",
    [EXSA_EP_TOKENIZE] = "/v1/tokenize",
    [EXSA_EP_DETOKENIZE] = "/v1/detokenize",
    [EXSA_EP_METRICS] = "/metrics",
    [EXSA_EP_MESSAGES] = "/v1/messages",
};

#define LIST_MAX 64

exsa_engine *exsa_app_acquire(exsa_app *a, exsa_http_req *rq, const char *model)
{
    exsa_err err = {0};
    if (model && !*model)
        model = NULL;
    exsa_engine *e = exsa_registry_acquire(a->reg, model, &err);
    if (e) {
        exsa_model_info info;
        exsa_engine_model_info(e, &info);
        exsa_http_req_note_model(rq, info.name);
        return e;
    }
    /* Why not: loading, unknown, or nothing loaded. */
    exsa_registry_entry ent[LIST_MAX];
    int n = exsa_registry_list(a->reg, ent, LIST_MAX);
    if (n > LIST_MAX)
        n = LIST_MAX;
    int loading = 0;
    char names[512] = "";
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        if (ent[i].state == EXSA_MODEL_LOADING && (!model || !strcmp(model, ent[i].name)))
            loading = 1;
        if (ent[i].state == EXSA_MODEL_READY && used + strlen(ent[i].name) + 3 < sizeof names) {
            used += (size_t)snprintf(names + used, sizeof names - used, "%s'%s'", used ? ", " : "",
                                     ent[i].name);
        }
    }
    if (loading || (!model && atomic_load(&a->loading) > 0)) {
        exsa_http_add_header(rq, "Retry-After", "1");
        exsa_http_reply_error(rq, 503, "unavailable_error", "model", "model_loading",
                              "the model %s%s%sis loading; retry shortly", model ? "'" : "",
                              model ? model : "", model ? "' " : "");
        return NULL;
    }
    if (!model) {
        exsa_http_reply_error(rq, 503, "unavailable_error", "model", "no_model_loaded",
                              "no model loaded (start with -m MODEL or POST /v1/models/load)");
        return NULL;
    }
    exsa_http_reply_error(rq, 404, "invalid_request_error", "model", "model_not_found",
                          "the model '%.200s' does not exist or is not loaded (loaded: %s)", model,
                          used ? names : "none");
    return NULL;
}

void exsa_app_reply_param(exsa_http_req *rq, const exsa_param_err *pe)
{
    int status = pe->status >= 400 ? pe->status : 400;
    const char *type = status == 400   ? "invalid_request_error"
                       : status == 404 ? "invalid_request_error"
                       : status == 503 ? "unavailable_error"
                                       : "server_error";
    exsa_http_reply_error(rq, status, type, pe->param[0] ? pe->param : NULL, pe->code, "%s",
                          pe->msg);
}

void exsa_app_reply_engine(exsa_http_req *rq, const exsa_err *e, const char *param)
{
    switch (e->code) {
    case EXSA_EFULL:
        exsa_http_add_header(rq, "Retry-After", "1");
        exsa_http_reply_error(rq, 503, "unavailable_error", NULL, "server_busy", "%s", e->msg);
        return;
    case EXSA_EINVAL:
        exsa_http_reply_error(rq, 400, "invalid_request_error", param, "invalid_value", "%s",
                              e->msg);
        return;
    case EXSA_EUNSUPPORTED:
        exsa_http_reply_error(rq, 400, "invalid_request_error", param, "unsupported", "%s", e->msg);
        return;
    default:
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "%s",
                              e->msg[0] ? e->msg : exsa_strerror(e->code));
        return;
    }
}

void exsa_app_sample_throughput(exsa_app *a)
{
    exsa_registry_entry ent[LIST_MAX];
    int n = exsa_registry_list(a->reg, ent, LIST_MAX);
    if (n > LIST_MAX)
        n = LIST_MAX;
    for (int i = 0; i < n; i++) {
        if (ent[i].state != EXSA_MODEL_READY)
            continue;
        exsa_engine *e = exsa_registry_acquire(a->reg, ent[i].name, NULL);
        if (!e)
            continue;
        exsa_engine_stats st;
        exsa_engine_stats_get(e, &st);
        exsa_registry_release(a->reg, e);
        int64_t now = exsa_time_ns();
        pthread_mutex_lock(&a->mu);
        int slot = -1, empty = -1;
        for (int k = 0; k < EXSA_APP_TPUT_MODELS; k++) {
            if (!strcmp(a->tput[k].name, ent[i].name))
                slot = k;
            else if (empty < 0 && !a->tput[k].name[0])
                empty = k;
        }
        if (slot < 0 && empty >= 0) {
            slot = empty;
            memcpy(a->tput[slot].name, ent[i].name, sizeof a->tput[slot].name);
            a->tput[slot].name[sizeof a->tput[slot].name - 1] = '\0';
            a->tput[slot].n = a->tput[slot].head = 0;
        }
        if (slot >= 0) {
            int h = a->tput[slot].head;
            /* A reloaded engine restarts its counters: start the window over. */
            int prev = (h + EXSA_APP_TPUT_WINDOW - 1) % EXSA_APP_TPUT_WINDOW;
            if (a->tput[slot].n && a->tput[slot].gen[prev] > st.generated_tokens)
                a->tput[slot].n = 0;
            a->tput[slot].t_ns[h] = now;
            a->tput[slot].gen[h] = st.generated_tokens;
            a->tput[slot].head = (h + 1) % EXSA_APP_TPUT_WINDOW;
            if (a->tput[slot].n < EXSA_APP_TPUT_WINDOW)
                a->tput[slot].n++;
        }
        pthread_mutex_unlock(&a->mu);
    }
    /* Forget models that are gone so their slots can be reused. */
    pthread_mutex_lock(&a->mu);
    for (int k = 0; k < EXSA_APP_TPUT_MODELS; k++) {
        int found = 0;
        for (int i = 0; i < n && !found; i++)
            found = !strcmp(a->tput[k].name, ent[i].name);
        if (!found)
            a->tput[k].name[0] = '\0';
    }
    pthread_mutex_unlock(&a->mu);
}

double exsa_app_tokens_per_s(exsa_app *a, const char *model)
{
    double r = 0;
    pthread_mutex_lock(&a->mu);
    for (int k = 0; k < EXSA_APP_TPUT_MODELS; k++) {
        if (strcmp(a->tput[k].name, model) || a->tput[k].n < 2)
            continue;
        int last = (a->tput[k].head + EXSA_APP_TPUT_WINDOW - 1) % EXSA_APP_TPUT_WINDOW;
        int first = (a->tput[k].head + EXSA_APP_TPUT_WINDOW - a->tput[k].n) % EXSA_APP_TPUT_WINDOW;
        double dt = (double)(a->tput[k].t_ns[last] - a->tput[k].t_ns[first]) / 1e9;
        if (dt > 0)
            r = (double)(a->tput[k].gen[last] - a->tput[k].gen[first]) / dt;
    }
    pthread_mutex_unlock(&a->mu);
    return r;
}

void exsa_app_cancel_all(exsa_app *a)
{
    pthread_mutex_lock(&a->mu);
    a->cancel_all = 1;
    for (exsa_gen_job *j = a->jobs; j; j = exsa_gen_job_next_in_list(j))
        exsa_gen_job_cancel(j);
    pthread_mutex_unlock(&a->mu);
}
