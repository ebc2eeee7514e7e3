/* `exsa serve` lifecycle: configuration -> app state -> HTTP routes ->
 * signal-driven graceful shutdown. See server.h. */
#include "server/server.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "quant/quant.h"
#include "server/api_anthropic.h"
#include "server/api_native.h"
#include "server/api_openai.h"
#include "server/app.h"
#include "server/http.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timer.h"

struct exsa_server {
    exsa_server_config cfg; /* strings below are our copies */
    char *host, *model_path, *alias, *api_keys, *api_key_file, *cors, *chat_template;
    exsa_app app;
    int app_mu_init;
    exsa_http *http;
    int pipe_rd, pipe_wr;
};

/* The signal handler can only reach the pipe through a global. */
static volatile int g_signal_fd = -1;

static void on_signal(int sig)
{
    int fd = g_signal_fd, saved = errno;
    if (fd >= 0) {
        char c = (char)sig;
        ssize_t r = write(fd, &c, 1);
        (void)r;
    }
    errno = saved;
}

static const exsa_http_route routes[] = {
    {"/health", 0, EXSA_HTTP_GET, exsa_api_health, EXSA_EP_HEALTH, EXSA_ROUTE_PUBLIC},
    {"/v1/health", 0, EXSA_HTTP_GET, exsa_api_health, EXSA_EP_HEALTH, EXSA_ROUTE_PUBLIC},
    {"/v1/status", 0, EXSA_HTTP_GET, exsa_api_status, EXSA_EP_STATUS, 0},
    {"/v1/generate", 0, EXSA_HTTP_POST, exsa_api_generate, EXSA_EP_GENERATE, 0},
    {"/completion", 0, EXSA_HTTP_POST, exsa_api_llama_completion, EXSA_EP_LLAMA_COMPLETION, 0},
    {"/v1/chat/completions", 0, EXSA_HTTP_POST, exsa_api_openai_chat, EXSA_EP_CHAT, 0},
    {"/chat/completions", 0, EXSA_HTTP_POST, exsa_api_openai_chat, EXSA_EP_CHAT, 0},
    {"/v1/completions", 0, EXSA_HTTP_POST, exsa_api_openai_completions, EXSA_EP_COMPLETIONS, 0},
    {"/completions", 0, EXSA_HTTP_POST, exsa_api_openai_completions, EXSA_EP_COMPLETIONS, 0},
    {"/v1/embeddings", 0, EXSA_HTTP_POST, exsa_api_openai_embeddings, EXSA_EP_EMBEDDINGS, 0},
    {"/embeddings", 0, EXSA_HTTP_POST, exsa_api_openai_embeddings, EXSA_EP_EMBEDDINGS, 0},
    {"/v1/models", 0, EXSA_HTTP_GET, exsa_api_openai_models, EXSA_EP_MODELS, 0},
    {"/models", 0, EXSA_HTTP_GET, exsa_api_openai_models, EXSA_EP_MODELS, 0},
    {"/v1/models/load", 0, EXSA_HTTP_POST, exsa_api_models_load, EXSA_EP_MODELS_LOAD, 0},
    {"/v1/models/unload", 0, EXSA_HTTP_POST, exsa_api_models_unload, EXSA_EP_MODELS_UNLOAD, 0},
    {"/v1/models/reload", 0, EXSA_HTTP_POST, exsa_api_models_reload, EXSA_EP_MODELS_RELOAD, 0},
    {"/v1/models/list", 0, EXSA_HTTP_GET, exsa_api_models_list, EXSA_EP_MODELS_LIST, 0},
    {"/v1/models/active", 0, EXSA_HTTP_GET | EXSA_HTTP_POST, exsa_api_models_active,
     EXSA_EP_MODELS_ACTIVE, 0},
    /* GET /v1/models/{id}: after the exact routes above (http.c tries those first). */
    {"/v1/models/", 1, EXSA_HTTP_GET, exsa_api_openai_model, EXSA_EP_MODELS, 0},
    {"/v1/tokenize", 0, EXSA_HTTP_POST, exsa_api_tokenize, EXSA_EP_TOKENIZE, 0},
    {"/tokenize", 0, EXSA_HTTP_POST, exsa_api_tokenize, EXSA_EP_TOKENIZE, 0},
    {"/v1/detokenize", 0, EXSA_HTTP_POST, exsa_api_detokenize, EXSA_EP_DETOKENIZE, 0},
    {"/detokenize", 0, EXSA_HTTP_POST, exsa_api_detokenize, EXSA_EP_DETOKENIZE, 0},
    {"/metrics", 0, EXSA_HTTP_GET, exsa_api_metrics, EXSA_EP_METRICS, 0},
    {"/v1/messages", 0, EXSA_HTTP_POST, exsa_api_anthropic_messages, EXSA_EP_MESSAGES, 0},
};

void exsa_server_config_default(exsa_server_config *c)
{
    memset(c, 0, sizeof *c);
    c->host = "127.0.0.1";
    c->port = 8080;
    exsa_engine_params_default(&c->engine);
    c->max_body_bytes = (size_t)1 << 20;
    c->n_predict = 2048;
    c->request_timeout_s = 600;
    c->shutdown_grace_s = 10;
    c->max_connections = 256;
    c->conn_timeout_s = 60;
}

void exsa_server_default_kv_pool(exsa_engine_params *p)
{
    if (p->kv_tokens > 0 || p->kv_bytes > 0)
        return;
    int64_t ctx = p->n_ctx > 0 ? p->n_ctx : 4096, cap = ctx > 8192 ? ctx : 8192;
    int64_t t = (int64_t)(p->max_batch_size > 0 ? p->max_batch_size : 16) * ctx;
    p->kv_tokens = (int)(t < cap ? t : cap);
}

int exsa_server_kv_type(const char *name)
{
    if (!name)
        return -1;
    if (!strcasecmp(name, "f16"))
        return EXSA_TYPE_F16;
    if (!strcasecmp(name, "f32"))
        return EXSA_TYPE_F32;
    if (!strcasecmp(name, "q8_0"))
        return EXSA_TYPE_Q8_0;
    return -1;
}

int exsa_server_strategy(const char *name)
{
    static const char *const names[] = {"fifo", "shortest", "priority", "dynamic"};
    static const int values[] = {EXSA_SCHED_FIFO, EXSA_SCHED_SHORTEST, EXSA_SCHED_PRIORITY,
                                 EXSA_SCHED_DYNAMIC};
    for (int i = 0; name && i < 4; i++)
        if (!strcasecmp(name, names[i]))
            return values[i];
    return -1;
}

/* ---- policy hooks ---- */

static int admit(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    const exsa_http_route *rt = exsa_http_req_route(rq);
    if (rt->flags & EXSA_ROUTE_PUBLIC)
        return 0;
    /* Rate limit first: a client guessing keys spends its own bucket. */
    double retry = 0;
    if (a->rl && !exsa_ratelimit_take(a->rl, exsa_http_req_client(rq), exsa_time_ns(), &retry)) {
        char ra[32];
        snprintf(ra, sizeof ra, "%d", retry > 1 ? (int)ceil(retry) : 1);
        exsa_http_add_header(rq, "Retry-After", ra);
        exsa_http_reply_error(rq, 429, "rate_limit_error", NULL, "rate_limit_exceeded",
                              "too many requests from %s (limit %g per second, burst %g); retry "
                              "after %s s",
                              exsa_http_req_client(rq), a->cfg->rate_limit, a->cfg->rate_burst, ra);
        return 1;
    }
    if (!exsa_auth_check(a->auth, exsa_http_req_header(rq, "Authorization"),
                         exsa_http_req_header(rq, "X-Api-Key"))) {
        exsa_http_add_header(rq, "WWW-Authenticate", "Bearer");
        int given =
            exsa_http_req_header(rq, "Authorization") || exsa_http_req_header(rq, "X-Api-Key");
        exsa_http_reply_error(rq, 401, "invalid_request_error", NULL, "invalid_api_key",
                              given ? "invalid API key"
                                    : "missing API key: send 'Authorization: "
                                      "Bearer KEY'");
        return 1;
    }
    return 0;
}

/* Anthropic's route answers errors in Anthropic's shape, its clients'
 * SDKs read no other; everything else keeps OpenAI's. */
static json_t *error_body(exsa_http_req *rq, int status, const char *message, void *app)
{
    (void)app;
    const exsa_http_route *rt = exsa_http_req_route(rq);
    if (rt && rt->endpoint == EXSA_EP_MESSAGES)
        return exsa_api_anthropic_error_json(status, message);
    return NULL;
}

static void finished(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    const exsa_http_route *rt = exsa_http_req_route(rq);
    exsa_metrics_request(a->metrics, rt ? rt->endpoint : -1, exsa_http_req_status(rq),
                         exsa_http_req_elapsed_s(rq));
    atomic_fetch_add(&a->requests_served, 1);
}

/* ---- lifecycle ---- */

static int dup_opt(char **dst, const char **field)
{
    if (!*field)
        return 0;
    if (!(*dst = strdup(*field)))
        return -1;
    *field = *dst;
    return 0;
}

exsa_server *exsa_server_create(const exsa_server_config *c, exsa_err *err)
{
    exsa_server *s = calloc(1, sizeof *s);
    if (!s) {
        exsa_err_set(err, EXSA_ENOMEM, "serve: out of memory");
        return NULL;
    }
    s->pipe_rd = s->pipe_wr = -1;
    s->cfg = *c;
    if (dup_opt(&s->host, &s->cfg.host) || dup_opt(&s->model_path, &s->cfg.model_path) ||
        dup_opt(&s->alias, &s->cfg.alias) || dup_opt(&s->api_keys, &s->cfg.api_keys) ||
        dup_opt(&s->api_key_file, &s->cfg.api_key_file) ||
        dup_opt(&s->cors, &s->cfg.cors_origins) ||
        dup_opt(&s->chat_template, &s->cfg.engine.chat_template)) {
        exsa_err_set(err, EXSA_ENOMEM, "serve: out of memory");
        goto fail;
    }
    s->cfg.engine.model_path = NULL;
    s->cfg.engine.name = NULL;
    if (s->cfg.rate_limit > 0 && s->cfg.rate_burst < 1)
        s->cfg.rate_burst = fmax(1.0, ceil(2 * s->cfg.rate_limit));

    exsa_app *a = &s->app;
    a->cfg = &s->cfg;
    a->t_start_ns = exsa_time_ns();
    atomic_init(&a->requests_served, 0);
    atomic_init(&a->loading, 0);
    pthread_mutex_init(&a->mu, NULL);
    s->app_mu_init = 1;
    if (!(a->reg = exsa_registry_create(err)) ||
        !(a->metrics = exsa_metrics_create(exsa_app_endpoint_names, EXSA_EP_COUNT, err)) ||
        !(a->auth = exsa_auth_create(s->cfg.api_keys, s->cfg.api_key_file, err)))
        goto fail;
    if (s->cfg.rate_limit > 0 &&
        !(a->rl = exsa_ratelimit_create(s->cfg.rate_limit, s->cfg.rate_burst, err)))
        goto fail;

    int p[2];
    if (pipe(p) != 0) {
        exsa_err_set(err, EXSA_EIO, "serve: pipe: %s", strerror(errno));
        goto fail;
    }
    s->pipe_rd = p[0];
    s->pipe_wr = p[1];
    fcntl(s->pipe_wr, F_SETFL, O_NONBLOCK);
    fcntl(s->pipe_rd, F_SETFD, FD_CLOEXEC);
    fcntl(s->pipe_wr, F_SETFD, FD_CLOEXEC);
    g_signal_fd = s->pipe_wr;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    exsa_http_config hc = {
        .host = s->cfg.host,
        .port = s->cfg.port,
        .max_connections = s->cfg.max_connections,
        .conn_timeout_s = s->cfg.conn_timeout_s,
        .max_body_bytes = s->cfg.max_body_bytes,
        .routes = routes,
        .n_routes = (int)(sizeof routes / sizeof routes[0]),
        .cors_origins = s->cfg.cors_origins,
        .hooks = {.admit = admit, .finished = finished, .error_body = error_body},
        .app = a,
    };
    if (!(s->http = exsa_http_start(&hc, err)))
        goto fail;
    int v6 = strchr(s->cfg.host, ':') != NULL;
    exsa_log(EXSA_LOG_INFO, NULL, "listening on http://%s%s%s:%d", v6 ? "[" : "", s->cfg.host,
             v6 ? "]" : "", exsa_http_port(s->http));
    if (exsa_auth_count(a->auth))
        exsa_log(EXSA_LOG_INFO, NULL, "API keys required (%d configured)",
                 exsa_auth_count(a->auth));
    else if (strcmp(s->cfg.host, "127.0.0.1") && strcmp(s->cfg.host, "localhost") &&
             strcmp(s->cfg.host, "::1"))
        exsa_log(EXSA_LOG_WARN, NULL,
                 "listening on %s without --api-key: anyone who can reach it can use and "
                 "load models",
                 s->cfg.host);
    return s;
fail:
    exsa_server_free(s);
    return NULL;
}

int exsa_server_port(const exsa_server *s) { return s->http ? exsa_http_port(s->http) : 0; }

int exsa_server_load_initial(exsa_server *s, exsa_err *err)
{
    if (!s->cfg.model_path || !*s->cfg.model_path)
        return 0;
    exsa_engine_params p = s->cfg.engine;
    p.model_path = s->cfg.model_path;
    p.name = s->cfg.alias;
    exsa_log(EXSA_LOG_INFO, NULL, "loading model %s", p.model_path);
    int64_t t0 = exsa_time_ns();
    char name[256] = "";
    atomic_fetch_add(&s->app.loading, 1);
    int rc = exsa_registry_load(s->app.reg, &p, name, sizeof name, err);
    atomic_fetch_sub(&s->app.loading, 1);
    if (rc)
        return rc;
    exsa_model_info info;
    exsa_engine *e = exsa_registry_acquire(s->app.reg, name, NULL);
    if (e) {
        exsa_engine_model_info(e, &info);
        exsa_registry_release(s->app.reg, e);
        exsa_log(EXSA_LOG_INFO, NULL, "model %s: %s %s, %d layers, context %d, %.1f M params", name,
                 info.arch, info.weight_type, info.n_layer, info.n_ctx,
                 (double)info.n_params / 1e6);
    }
    exsa_log(EXSA_LOG_INFO, NULL, "model %s ready in %.2f s", name,
             (double)(exsa_time_ns() - t0) / 1e9);
    return 0;
}

void exsa_server_stop(exsa_server *s)
{
    if (s && s->pipe_wr >= 0) {
        char c = 0;
        ssize_t r = write(s->pipe_wr, &c, 1);
        (void)r;
    }
}

/* Waits up to ms for a byte on the pipe (a signal); 1 if one came. */
static int wait_signal(exsa_server *s, int ms)
{
    struct pollfd p = {.fd = s->pipe_rd, .events = POLLIN};
    int r = poll(&p, 1, ms);
    if (r > 0 && (p.revents & POLLIN)) {
        char buf[16];
        ssize_t n = read(s->pipe_rd, buf, sizeof buf);
        (void)n;
        return 1;
    }
    return 0;
}

int exsa_server_run(exsa_server *s)
{
    /* The main thread only waits: for a signal, and once a second it takes
     * the throughput sample behind /v1/status tokens_per_s. */
    while (!wait_signal(s, 1000))
        exsa_app_sample_throughput(&s->app);
    exsa_log(EXSA_LOG_INFO, NULL,
             "shutting down: no new connections; in-flight requests get up to %g s",
             s->cfg.shutdown_grace_s);
    exsa_http_quiesce(s->http);
    int64_t until = exsa_time_ns() + (int64_t)(s->cfg.shutdown_grace_s * 1e9);
    int left;
    /* In slices, so that a second signal cuts the grace period short. */
    while ((left = exsa_http_wait_idle(s->http, 200)) > 0 && exsa_time_ns() < until)
        if (wait_signal(s, 0)) {
            exsa_log(EXSA_LOG_WARN, NULL, "second signal: not waiting any longer");
            break;
        }
    if (left > 0) {
        exsa_log(EXSA_LOG_WARN, NULL, "cancelling %d request(s) still in flight", left);
        exsa_app_cancel_all(&s->app);
        left = exsa_http_wait_idle(s->http, 5000);
    }
    exsa_http_stop(s->http);
    s->http = NULL;
    exsa_log(EXSA_LOG_INFO, NULL, "stopped%s", left > 0 ? " (some connections were cut)" : "");
    return 0;
}

void exsa_server_free(exsa_server *s)
{
    if (!s)
        return;
    exsa_http_stop(s->http);
    if (g_signal_fd == s->pipe_wr) {
        g_signal_fd = -1;
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
    }
    if (s->pipe_rd >= 0)
        close(s->pipe_rd);
    if (s->pipe_wr >= 0)
        close(s->pipe_wr);
    exsa_registry_free(s->app.reg);
    exsa_metrics_free(s->app.metrics);
    exsa_auth_free(s->app.auth);
    exsa_ratelimit_free(s->app.rl);
    if (s->app_mu_init)
        pthread_mutex_destroy(&s->app.mu);
    free(s->host);
    free(s->model_path);
    free(s->alias);
    if (s->api_keys)
        memset(s->api_keys, 0, strlen(s->api_keys));
    free(s->api_keys);
    free(s->api_key_file);
    free(s->cors);
    free(s->chat_template);
    free(s);
}
