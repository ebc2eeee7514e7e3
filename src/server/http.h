/* HTTP front end: a thin layer over libmicrohttpd.
 *
 * One thread per connection (MHD_USE_THREAD_PER_CONNECTION), so a handler
 * may block: a non-streaming generation waits on the engine's event stream,
 * and a streaming reply's pull function blocks until it has bytes to send.
 * This layer owns everything about the protocol: routing (404 / 405 with
 * Allow), CORS (allow-list, OPTIONS preflight), request ids (X-Request-Id:
 * the client's when it is sane, else generated), the request body (read into
 * memory up to max_body_bytes, 413 beyond), one reply per request, SSE
 * streaming, the access log line and connection accounting for graceful
 * shutdown. Policy (API keys, rate limits, metrics) comes in through hooks.
 *
 * Thread safety: handlers of different requests run concurrently; an
 * exsa_http_req belongs to the thread running its handler (and then to its
 * stream's pull function, which runs on the same connection thread).
 */
#ifndef EXSA_SERVER_HTTP_H
#define EXSA_SERVER_HTTP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "exsa.h"
#include "server/strbuf.h"

typedef struct exsa_http exsa_http;
typedef struct exsa_http_req exsa_http_req;

enum {
    EXSA_HTTP_GET = 1u, /* HEAD is answered like GET without the body */
    EXSA_HTTP_POST = 2u,
};

enum {
    EXSA_ROUTE_PUBLIC = 1, /* no API key needed (health probes) */
};

typedef void (*exsa_http_handler)(exsa_http_req *rq, void *app);

typedef struct exsa_http_route {
    const char *path; /* exact path; with prefix = 1, "path" + anything */
    int prefix;
    unsigned methods; /* EXSA_HTTP_* mask */
    exsa_http_handler fn;
    int endpoint; /* the application's index for this endpoint (metrics) */
    int flags;    /* EXSA_ROUTE_* */
} exsa_http_route;

typedef struct exsa_http_hooks {
    /* Runs once the route is known and before the body is read. Returns 0 to
     * go on; otherwise it has sent the reply (e.g. 401, 429). */
    int (*admit)(exsa_http_req *rq, void *app);
    /* Runs once per request when it is over (reply sent, or the connection
     * went away); the access log line is written just before. */
    void (*finished)(exsa_http_req *rq, void *app);
    /* Optional: the JSON body of an error reply for this request (a route
     * whose clients expect another shape); NULL keeps OpenAI's shape. */
    json_t *(*error_body)(exsa_http_req *rq, int status, const char *message, void *app);
} exsa_http_hooks;

typedef struct exsa_http_config {
    const char *host; /* address or name to bind */
    int port;         /* 0: any free port (see exsa_http_port) */
    int max_connections;
    int conn_timeout_s; /* idle connection timeout */
    size_t max_body_bytes;
    const exsa_http_route *routes; /* kept by reference: must outlive the server */
    int n_routes;
    const char *cors_origins; /* comma list; "*" any origin; NULL / "" none */
    exsa_http_hooks hooks;
    void *app;
} exsa_http_config;

/* Binds and starts serving. */
exsa_http *exsa_http_start(const exsa_http_config *c, exsa_err *err);
int exsa_http_port(const exsa_http *h);
/* Stops accepting new connections; requests on open connections get 503
 * from now on and replies carry "Connection: close". */
void exsa_http_quiesce(exsa_http *h);
/* Waits until no request is being handled or timeout_ms passes; returns the
 * number still in flight. */
int exsa_http_wait_idle(exsa_http *h, int timeout_ms);
/* Closes every connection (joins their threads) and frees h. */
void exsa_http_stop(exsa_http *h);

/* ---- the request ---- */

const char *exsa_http_req_method(const exsa_http_req *rq);
const char *exsa_http_req_path(const exsa_http_req *rq);
/* Part of the path after a prefix route's path ("" for exact routes). */
const char *exsa_http_req_path_tail(const exsa_http_req *rq);
const exsa_http_route *exsa_http_req_route(const exsa_http_req *rq);
const char *exsa_http_req_header(exsa_http_req *rq, const char *name);
const char *exsa_http_req_id(const exsa_http_req *rq);
const char *exsa_http_req_client(const exsa_http_req *rq); /* peer IP address */
/* The body bytes (not NUL-terminated for the parser's sake: use len). */
const char *exsa_http_req_body(const exsa_http_req *rq, size_t *len);
/* 1 when the peer has closed its side (checked without blocking). */
int exsa_http_req_client_gone(exsa_http_req *rq);
/* For the access log and the finished hook. */
void exsa_http_req_note_tokens(exsa_http_req *rq, int prompt_tokens, int generated_tokens);
void exsa_http_req_note_model(exsa_http_req *rq, const char *model);
int exsa_http_req_status(const exsa_http_req *rq);
double exsa_http_req_elapsed_s(const exsa_http_req *rq);
void exsa_http_req_tokens(const exsa_http_req *rq, int *prompt, int *generated);

/* ---- replies: exactly one per request ---- */

/* Adds a header to the reply to come (copied; up to 8 per request). */
void exsa_http_add_header(exsa_http_req *rq, const char *name, const char *value);
/* Copies body. */
void exsa_http_reply(exsa_http_req *rq, int status, const char *content_type, const char *body,
                     size_t len);
/* Serializes and consumes j (a NULL j, from a failed allocation, gives 500). */
void exsa_http_reply_json(exsa_http_req *rq, int status, json_t *j);
/* OpenAI's error shape {"error": {"message", "type", "param", "code"}};
 * param and code may be NULL (JSON null). */
void exsa_http_reply_error(exsa_http_req *rq, int status, const char *type, const char *param,
                           const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* The OpenAI error object itself (for SSE error events); NULL when out of memory. */
json_t *exsa_http_error_json(const char *type, const char *param, const char *code,
                             const char *message);

/* A streamed reply of unknown length (chunked). pull appends bytes to out
 * and returns 0 (more to come), 1 (this was the end) or -1 (abort the
 * connection); it blocks until it has something to say. free_ctx runs once
 * when the connection is done with the stream, also when the client left
 * early, and must cancel whatever still runs for it. If the reply cannot be
 * queued, free_ctx runs at once. */
typedef int (*exsa_http_pull)(void *ctx, exsa_strbuf *out);
void exsa_http_reply_stream(exsa_http_req *rq, int status, const char *content_type,
                            exsa_http_pull pull, void *ctx, void (*free_ctx)(void *));

#endif
