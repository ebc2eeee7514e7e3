/* `exsa serve`: the HTTP server's lifecycle.
 *
 * create binds the port and starts answering at once (health says 503
 * "loading" / "no model loaded" until a model is ready); load_initial loads
 * the -m model; run waits for SIGTERM/SIGINT and then shuts down gracefully:
 * stop accepting, let requests in flight finish for up to the grace period,
 * cancel what is left, close every connection, free everything.
 */
#ifndef EXSA_SERVER_SERVER_H
#define EXSA_SERVER_SERVER_H

#include <stddef.h>

#include "exsa.h"

typedef struct exsa_server_config {
    const char *host;       /* "127.0.0.1" */
    int port;               /* 8080; 0 = any free port */
    const char *model_path; /* loaded at start (NULL: none) */
    const char *alias;      /* its name (NULL: from the model) */
    /* Engine settings for the start-up model and the defaults of
     * /v1/models/load (model_path and name are ignored here). */
    exsa_engine_params engine;
    const char *api_keys; /* comma-separated, NULL: none */
    const char *api_key_file;
    const char *cors_origins; /* comma-separated; "*" any; NULL: no CORS */
    double rate_limit;        /* requests per second per client; 0 off */
    double rate_burst;        /* bucket size (>= 1) */
    size_t max_body_bytes;
    int max_prompt_tokens;    /* 0: only the context bounds it */
    int max_tokens_cap;       /* 0: none; a given max_tokens above it is a 400 */
    /* Tokens for a request that names no max_tokens / max_completion_tokens /
     * n_predict (2048); -1: up to the end of the context. */
    int n_predict;
    double request_timeout_s; /* 0: none */
    double shutdown_grace_s;
    int max_connections;
    int conn_timeout_s; /* idle connection timeout */
} exsa_server_config;

void exsa_server_config_default(exsa_server_config *c);

/* With neither kv_tokens nor kv_bytes set: kv_tokens = max_batch_size x
 * n_ctx (4096 when 0), at most max(n_ctx, 8192). The engine's own default
 * (the full product) is sized for the worst case; allocating and touching
 * the pool is most of the start-up time, and the prefix cache and
 * preemption make the most of a smaller one. */
void exsa_server_default_kv_pool(exsa_engine_params *p);

/* "f16" / "f32" / "q8_0" -> the engine's kv_type; -1 if unknown. */
int exsa_server_kv_type(const char *name);
/* "fifo" / "shortest" / "priority" / "dynamic" -> exsa_sched_strategy; -1 if unknown. */
int exsa_server_strategy(const char *name);

typedef struct exsa_server exsa_server;

/* Copies the configuration; binds and serves. Installs SIGTERM/SIGINT
 * handlers (they only write to a pipe) and ignores SIGPIPE. */
exsa_server *exsa_server_create(const exsa_server_config *c, exsa_err *err);
int exsa_server_port(const exsa_server *s);
/* Loads cfg.model_path, if any (blocking; the server answers meanwhile). */
int exsa_server_load_initial(exsa_server *s, exsa_err *err);
/* Serves until SIGTERM/SIGINT (or exsa_server_stop), then shuts down
 * gracefully. Returns 0. */
int exsa_server_run(exsa_server *s);
/* Asks run to return (async-signal-safe). */
void exsa_server_stop(exsa_server *s);
void exsa_server_free(exsa_server *s);

#endif
