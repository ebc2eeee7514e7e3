/* The state every HTTP handler shares, and the helpers they have in common
 * (choosing the model, mapping errors to replies, throughput figures).
 *
 * Created and owned by server.c; handlers get it as the `app` argument.
 * Everything here is either immutable after start-up or thread safe.
 */
#ifndef EXSA_SERVER_APP_H
#define EXSA_SERVER_APP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "exsa.h"
#include "server/auth.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/ratelimit.h"
#include "server/request_params.h"
#include "server/server.h"

/* Endpoint indices: metrics labels (exsa_app_endpoint_names). */
enum exsa_endpoint {
    EXSA_EP_HEALTH,
    EXSA_EP_STATUS,
    EXSA_EP_GENERATE,
    EXSA_EP_LLAMA_COMPLETION,
    EXSA_EP_CHAT,
    EXSA_EP_COMPLETIONS,
    EXSA_EP_EMBEDDINGS,
    EXSA_EP_MODELS,
    EXSA_EP_MODELS_LOAD,
    EXSA_EP_MODELS_UNLOAD,
    EXSA_EP_MODELS_RELOAD,
    EXSA_EP_MODELS_LIST,
    EXSA_EP_MODELS_ACTIVE,
    EXSA_EP_TOKENIZE,
    EXSA_EP_DETOKENIZE,
    EXSA_EP_METRICS,
    EXSA_EP_MESSAGES,
    EXSA_EP_COUNT
};
extern const char *const exsa_app_endpoint_names[EXSA_EP_COUNT];

typedef struct exsa_gen_job exsa_gen_job;

#define EXSA_APP_TPUT_MODELS 16
#define EXSA_APP_TPUT_WINDOW 11 /* one sample a second: a 10 s window */

typedef struct exsa_app {
    const exsa_server_config *cfg; /* owned by the server */
    exsa_registry *reg;
    exsa_metrics *metrics;
    exsa_auth *auth;
    exsa_ratelimit *rl; /* NULL: no rate limit */
    int64_t t_start_ns;
    atomic_llong requests_served;
    /* Loads in progress (start-up model, /v1/models/load): a model whose
     * name comes from its file is not in the registry until it is loaded,
     * and /health must say "loading" meanwhile. */
    atomic_int loading;

    pthread_mutex_t mu; /* guards jobs, cancel_all and tput */
    exsa_gen_job *jobs; /* generations in flight (for shutdown) */
    int cancel_all;
    struct {
        char name[256];
        int64_t t_ns[EXSA_APP_TPUT_WINDOW];
        int64_t gen[EXSA_APP_TPUT_WINDOW];
        int n, head;
    } tput[EXSA_APP_TPUT_MODELS];
} exsa_app;

/* The engine for the request's "model" (NULL: the active model). On failure
 * it has replied: 404 model_not_found for an unknown name, 503 while the
 * model loads or when none is loaded. Release with exsa_registry_release. */
exsa_engine *exsa_app_acquire(exsa_app *a, exsa_http_req *rq, const char *model);

/* Replies with a parameter error (its status, param and code). */
void exsa_app_reply_param(exsa_http_req *rq, const exsa_param_err *pe);
/* Replies for a failed engine call: EXSA_EFULL -> 503 + Retry-After,
 * EXSA_EINVAL -> 400 (param given), others 500. */
void exsa_app_reply_engine(exsa_http_req *rq, const exsa_err *e, const char *param);

/* Records one throughput sample of every loaded model (server.c calls it
 * once a second). */
void exsa_app_sample_throughput(exsa_app *a);
/* Generated tokens per second of a model over the last ~10 s (0 if unknown). */
double exsa_app_tokens_per_s(exsa_app *a, const char *model);

/* Cancels every generation in flight (shutdown after the grace period). */
void exsa_app_cancel_all(exsa_app *a);

#endif
