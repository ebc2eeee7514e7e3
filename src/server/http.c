/* libmicrohttpd wrapper: see http.h. */
#include "server/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/json_text.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timer.h"

#define MAX_EXTRA_HEADERS 8
#define MAX_PATH_LEN 2048
/* A chunked body beyond the limit is read and dropped (MHD cannot answer in
 * the middle of an upload) up to this much more, then the connection is cut. */
#define MAX_DISCARD_BYTES ((size_t)16 << 20)

struct exsa_http {
    struct MHD_Daemon *d;
    exsa_http_config c;
    char *cors; /* own copy of c.cors_origins */
    int port;
    MHD_socket listen_fd;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;
    atomic_int closing;
    atomic_uint_fast64_t next_id;
    uint64_t id_seed;
};

struct exsa_http_req {
    exsa_http *h;
    struct MHD_Connection *conn;
    const exsa_http_route *route;
    const char *tail;
    char method[16];
    char *path;
    char id[132];
    char client[64];
    char model[128];
    int64_t t_start;
    exsa_strbuf body;
    size_t discarded;
    int too_large;
    int replied, queue_failed, status;
    char *hdr_name[MAX_EXTRA_HEADERS], *hdr_val[MAX_EXTRA_HEADERS];
    int n_hdr;
    atomic_int refs;
    atomic_int prompt_tokens, gen_tokens;
    int fd;
};

/* ---- request lifetime ---- */

static void req_unref(exsa_http_req *rq)
{
    if (atomic_fetch_sub(&rq->refs, 1) != 1)
        return;
    for (int i = 0; i < rq->n_hdr; i++) {
        free(rq->hdr_name[i]);
        free(rq->hdr_val[i]);
    }
    exsa_strbuf_free(&rq->body);
    free(rq->path);
    free(rq);
}

static int sane_request_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= 128 || (unsigned char)s[n] < 0x21 || (unsigned char)s[n] > 0x7E || s[n] == '"' ||
            s[n] == '\\')
            return 0;
    return n > 0;
}

static void make_request_id(exsa_http *h, char *out, size_t cap)
{
    /* splitmix64 of a random seed + counter: unique and unguessable enough
     * for correlating logs (not a secret). */
    uint64_t z = h->id_seed + 0x9E3779B97F4A7C15ull * (atomic_fetch_add(&h->next_id, 1) + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    snprintf(out, cap, "%016llx", (unsigned long long)z);
}

static const exsa_http_route *find_route(exsa_http *h, const char *path, const char **tail)
{
    for (int i = 0; i < h->c.n_routes; i++) {
        const exsa_http_route *r = &h->c.routes[i];
        if (!r->prefix && !strcmp(path, r->path)) {
            *tail = "";
            return r;
        }
    }
    for (int i = 0; i < h->c.n_routes; i++) {
        const exsa_http_route *r = &h->c.routes[i];
        size_t n = strlen(r->path);
        if (r->prefix && !strncmp(path, r->path, n) && path[n]) {
            *tail = path + n;
            return r;
        }
    }
    return NULL;
}

static unsigned method_bit(const char *m)
{
    if (!strcmp(m, "GET") || !strcmp(m, "HEAD"))
        return EXSA_HTTP_GET;
    if (!strcmp(m, "POST"))
        return EXSA_HTTP_POST;
    return 0;
}

static void allow_list(unsigned methods, char *out, size_t cap)
{
    snprintf(out, cap, "%s%s%sOPTIONS", (methods & EXSA_HTTP_GET) ? "GET, HEAD, " : "",
             (methods & EXSA_HTTP_POST) ? "POST" : "", (methods & EXSA_HTTP_POST) ? ", " : "");
}

/* ---- CORS ---- */

/* The value for Access-Control-Allow-Origin, or NULL when origin is not
 * allowed. */
static const char *cors_allow(const exsa_http *h, const char *origin)
{
    if (!origin || !h->cors || !*h->cors)
        return NULL;
    size_t on = strlen(origin);
    for (const char *p = h->cors; *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && (*p == ' ' || *p == '\t'))
            p++, n--;
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == 1 && *p == '*')
            return "*";
        if (n == on && !strncasecmp(p, origin, n))
            return origin;
        if (!e)
            break;
        p = e + 1;
    }
    return NULL;
}

/* ---- replies ---- */

void exsa_http_add_header(exsa_http_req *rq, const char *name, const char *value)
{
    if (rq->n_hdr >= MAX_EXTRA_HEADERS)
        return;
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        return;
    }
    rq->hdr_name[rq->n_hdr] = n;
    rq->hdr_val[rq->n_hdr++] = v;
}

static void queue(exsa_http_req *rq, int status, struct MHD_Response *resp)
{
    if (!resp) {
        rq->queue_failed = 1;
        rq->replied = 1;
        rq->status = 500;
        return;
    }
    for (int i = 0; i < rq->n_hdr; i++)
        MHD_add_response_header(resp, rq->hdr_name[i], rq->hdr_val[i]);
    MHD_add_response_header(resp, "X-Request-Id", rq->id);
    const char *origin = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "Origin");
    const char *allow = cors_allow(rq->h, origin);
    if (allow) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", allow);
        MHD_add_response_header(resp, "Access-Control-Expose-Headers", "X-Request-Id, Retry-After");
        if (strcmp(allow, "*"))
            MHD_add_response_header(resp, "Vary", "Origin");
    }
    if (atomic_load(&rq->h->closing))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    if (MHD_queue_response(rq->conn, (unsigned)status, resp) != MHD_YES)
        rq->queue_failed = 1;
    MHD_destroy_response(resp);
    rq->replied = 1;
    rq->status = status;
}

void exsa_http_reply(exsa_http_req *rq, int status, const char *content_type, const char *body,
                     size_t len)
{
    if (rq->replied)
        return;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (resp && content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    queue(rq, status, resp);
}

static const char oom_body[] =
    "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
    "\"code\":\"internal_error\"}}";

void exsa_http_reply_json(exsa_http_req *rq, int status, json_t *j)
{
    char *s = j ? exsa_json_dump(j) : NULL;
    json_decref(j);
    if (!s) {
        exsa_http_reply(rq, 500, "application/json", oom_body, sizeof oom_body - 1);
        return;
    }
    exsa_http_reply(rq, status, "application/json", s, strlen(s));
    free(s);
}

json_t *exsa_http_error_json(const char *type, const char *param, const char *code,
                             const char *message)
{
    json_t *e = json_object();
    if (!e)
        return NULL;
    json_object_set_new(e, "message", exsa_json_str(message));
    json_object_set_new(e, "type", exsa_json_str(type));
    json_object_set_new(e, "param", param ? exsa_json_str(param) : json_null());
    json_object_set_new(e, "code", code ? exsa_json_str(code) : json_null());
    json_t *o = json_object();
    if (!o) {
        json_decref(e);
        return NULL;
    }
    json_object_set_new(o, "error", e);
    return o;
}

void exsa_http_reply_error(exsa_http_req *rq, int status, const char *type, const char *param,
                           const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (status >= 500 && status != 503 && status != 504)
        exsa_log(EXSA_LOG_ERROR, rq->id, "%s %s: %d %s", rq->method, rq->path, status, msg);
    else
        exsa_log(EXSA_LOG_DEBUG, rq->id, "%s %s: %d %s", rq->method, rq->path, status, msg);
    json_t *j = rq->route && rq->h->c.hooks.error_body
                    ? rq->h->c.hooks.error_body(rq, status, msg, rq->h->c.app)
                    : NULL;
    exsa_http_reply_json(rq, status, j ? j : exsa_http_error_json(type, param, code, msg));
}

/* ---- streams ---- */

typedef struct stream {
    exsa_http_req *rq;
    exsa_http_pull pull;
    void *ctx;
    void (*free_ctx)(void *);
    exsa_strbuf out;
    int ended;
} stream;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream *s = cls;
    while (!exsa_strbuf_pending(&s->out)) {
        if (s->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        int rc = s->pull(s->ctx, &s->out);
        if (rc < 0 || s->out.oom)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (rc > 0)
            s->ended = 1;
    }
    return (ssize_t)exsa_strbuf_take(&s->out, buf, max);
}

static void stream_free(void *cls)
{
    stream *s = cls;
    if (s->free_ctx)
        s->free_ctx(s->ctx);
    exsa_strbuf_free(&s->out);
    req_unref(s->rq);
    free(s);
}

void exsa_http_reply_stream(exsa_http_req *rq, int status, const char *content_type,
                            exsa_http_pull pull, void *ctx, void (*free_ctx)(void *))
{
    stream *s = rq->replied ? NULL : calloc(1, sizeof *s);
    if (!s) {
        if (free_ctx)
            free_ctx(ctx);
        if (!rq->replied)
            exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        return;
    }
    s->rq = rq;
    s->pull = pull;
    s->ctx = ctx;
    s->free_ctx = free_ctx;
    exsa_strbuf_init(&s->out);
    atomic_fetch_add(&rq->refs, 1);
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, s, stream_free);
    if (!resp) {
        stream_free(s);
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        return;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    queue(rq, status, resp);
}

/* ---- request accessors ---- */

const char *exsa_http_req_method(const exsa_http_req *rq) { return rq->method; }
const char *exsa_http_req_path(const exsa_http_req *rq) { return rq->path; }
const char *exsa_http_req_path_tail(const exsa_http_req *rq) { return rq->tail ? rq->tail : ""; }
const exsa_http_route *exsa_http_req_route(const exsa_http_req *rq) { return rq->route; }
const char *exsa_http_req_id(const exsa_http_req *rq) { return rq->id; }
const char *exsa_http_req_client(const exsa_http_req *rq) { return rq->client; }
int exsa_http_req_status(const exsa_http_req *rq) { return rq->status; }

const char *exsa_http_req_header(exsa_http_req *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, name);
}

const char *exsa_http_req_body(const exsa_http_req *rq, size_t *len)
{
    *len = rq->body.len;
    return rq->body.p ? rq->body.p : "";
}

int exsa_http_req_client_gone(exsa_http_req *rq)
{
    if (rq->fd < 0)
        return 0;
    struct pollfd p = {.fd = rq->fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0)
        return 0;
    if (p.revents & (POLLHUP | POLLERR | POLLNVAL))
        return 1;
    if (p.revents & POLLIN) {
        char c;
        ssize_t n = recv(rq->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }
    return 0;
}

void exsa_http_req_note_tokens(exsa_http_req *rq, int prompt_tokens, int generated_tokens)
{
    atomic_store(&rq->prompt_tokens, prompt_tokens);
    atomic_store(&rq->gen_tokens, generated_tokens);
}

void exsa_http_req_note_model(exsa_http_req *rq, const char *model)
{
    snprintf(rq->model, sizeof rq->model, "%s", model ? model : "");
}

void exsa_http_req_tokens(const exsa_http_req *rq, int *prompt, int *generated)
{
    *prompt = atomic_load(&rq->prompt_tokens);
    *generated = atomic_load(&rq->gen_tokens);
}

double exsa_http_req_elapsed_s(const exsa_http_req *rq)
{
    return (double)(exsa_time_ns() - rq->t_start) / 1e9;
}

/* ---- MHD callbacks ---- */

static exsa_http_req *req_new(exsa_http *h, struct MHD_Connection *conn, const char *url,
                              const char *method)
{
    exsa_http_req *rq = calloc(1, sizeof *rq);
    if (!rq)
        return NULL;
    rq->h = h;
    rq->conn = conn;
    rq->t_start = exsa_time_ns();
    rq->fd = -1;
    atomic_init(&rq->refs, 1);
    atomic_init(&rq->prompt_tokens, 0);
    atomic_init(&rq->gen_tokens, 0);
    exsa_strbuf_init(&rq->body);
    snprintf(rq->method, sizeof rq->method, "%s", method ? method : "?");
    size_t n = url ? strnlen(url, MAX_PATH_LEN + 1) : 0;
    if (!(rq->path = malloc(n + 1))) {
        free(rq);
        return NULL;
    }
    memcpy(rq->path, url ? url : "", n);
    rq->path[n] = '\0';
    /* "/v1/models/" and "/v1/models" are the same route. */
    if (n > 1 && rq->path[n - 1] == '/')
        rq->path[n - 1] = '\0';
    const char *id = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (id && sane_request_id(id))
        snprintf(rq->id, sizeof rq->id, "%s", id);
    else
        make_request_id(h, rq->id, sizeof rq->id);
    snprintf(rq->client, sizeof rq->client, "?");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr,
                      rq->client, sizeof rq->client);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
                      rq->client, sizeof rq->client);
    }
    ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci)
        rq->fd = ci->connect_fd;
    pthread_mutex_lock(&h->mu);
    h->inflight++;
    pthread_mutex_unlock(&h->mu);
    return rq;
}

/* First call for a request: everything decided from the headers alone. */
static void begin(exsa_http_req *rq)
{
    exsa_http *h = rq->h;
    if (atomic_load(&h->closing)) {
        exsa_http_reply_error(rq, 503, "unavailable_error", NULL, "shutting_down",
                              "the server is shutting down");
        return;
    }
    if (strlen(rq->path) > MAX_PATH_LEN - 1) {
        exsa_http_reply_error(rq, 414, "invalid_request_error", NULL, "uri_too_long",
                              "request path longer than %d bytes", MAX_PATH_LEN - 1);
        return;
    }
    rq->route = find_route(h, rq->path, &rq->tail);
    if (!rq->route) {
        exsa_http_reply_error(rq, 404, "invalid_request_error", NULL, "not_found",
                              "no route for %s %.200s", rq->method, rq->path);
        return;
    }
    char allow[64];
    allow_list(rq->route->methods, allow, sizeof allow);
    if (!strcmp(rq->method, "OPTIONS")) {
        /* CORS preflight (or a plain OPTIONS): no key needed, browsers send
         * none. The allow headers only go to allowed origins (queue()). */
        exsa_http_add_header(rq, "Allow", allow);
        const char *origin = exsa_http_req_header(rq, "Origin");
        if (cors_allow(h, origin)) {
            exsa_http_add_header(rq, "Access-Control-Allow-Methods", allow);
            exsa_http_add_header(rq, "Access-Control-Allow-Headers",
                                 "Authorization, Content-Type, X-Request-Id, X-Api-Key");
            exsa_http_add_header(rq, "Access-Control-Max-Age", "600");
        }
        exsa_http_reply(rq, 204, NULL, "", 0);
        return;
    }
    if (!(method_bit(rq->method) & rq->route->methods)) {
        exsa_http_add_header(rq, "Allow", allow);
        exsa_http_reply_error(rq, 405, "invalid_request_error", NULL, "method_not_allowed",
                              "method %s is not allowed on %s (allowed: %s)", rq->method,
                              rq->route->path, allow);
        return;
    }
    if (h->c.hooks.admit && h->c.hooks.admit(rq, h->c.app) != 0)
        return;
    const char *cl = exsa_http_req_header(rq, "Content-Length");
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(cl, &end, 10);
        if (!errno && end != cl && *end == '\0' && v > h->c.max_body_bytes) {
            /* A client that sends nothing yet (waiting for "100 Continue",
             * or for an answer) is told now. One already sending the body
             * would get a connection reset if we answered and closed: read
             * and drop its body (never stored), then answer 413. Absurd
             * sizes are cut off at once. */
            const char *expect = exsa_http_req_header(rq, "Expect");
            char c;
            int sending = rq->fd >= 0 && recv(rq->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
            if ((expect && !strcasecmp(expect, "100-continue")) || v > MAX_DISCARD_BYTES ||
                !sending)
                exsa_http_reply_error(rq, 413, "invalid_request_error", NULL, "body_too_large",
                                      "request body of %llu bytes is larger than the limit (%zu "
                                      "bytes, --max-body-bytes)",
                                      v, h->c.max_body_bytes);
            else
                rq->too_large = 1;
            return;
        }
    }
}

/* MHD takes the first of several Content-Length headers; a request with
 * disagreeing ones is ambiguous (request smuggling) and refused. */
static enum MHD_Result count_cl(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    (void)kind;
    const char **first = ((const char **)cls);
    if (strcasecmp(key, "Content-Length"))
        return MHD_YES;
    if (!first[0])
        first[0] = value;
    else if (strcmp(first[0], value))
        first[1] = value;
    return MHD_YES;
}

/* Protocol checks before anything else: 400 for what HTTP/1.1 forbids. */
static int bad_request(exsa_http_req *rq, const char *version)
{
    const char *cl[2] = {NULL, NULL};
    MHD_get_connection_values(rq->conn, MHD_HEADER_KIND, count_cl, cl);
    if (cl[1]) {
        exsa_http_reply_error(rq, 400, "invalid_request_error", NULL, "bad_request",
                              "conflicting Content-Length headers");
        return 1;
    }
    if (version && !strcmp(version, MHD_HTTP_VERSION_1_1) && !exsa_http_req_header(rq, "Host")) {
        exsa_http_reply_error(rq, 400, "invalid_request_error", NULL, "bad_request",
                              "HTTP/1.1 request without a Host header");
        return 1;
    }
    return 0;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    exsa_http *h = cls;
    exsa_http_req *rq = *con_cls;
    if (!rq) {
        if (!(rq = req_new(h, conn, url, method)))
            return MHD_NO;
        *con_cls = rq;
        if (!bad_request(rq, version))
            begin(rq);
        return rq->queue_failed ? MHD_NO : MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (rq->replied)
            return MHD_YES;
        if (!rq->too_large && rq->body.len + n > h->c.max_body_bytes) {
            rq->too_large = 1;
            exsa_strbuf_free(&rq->body);
        }
        if (rq->too_large) {
            rq->discarded += n;
            return rq->discarded > MAX_DISCARD_BYTES ? MHD_NO : MHD_YES;
        }
        if (exsa_strbuf_append(&rq->body, upload, n))
            return MHD_NO;
        return MHD_YES;
    }
    if (!rq->replied) {
        if (rq->too_large) {
            exsa_http_reply_error(rq, 413, "invalid_request_error", NULL, "body_too_large",
                                  "request body is larger than the limit (%zu bytes, "
                                  "--max-body-bytes)",
                                  h->c.max_body_bytes);
        } else {
            rq->route->fn(rq, h->c.app);
            if (!rq->replied)
                exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error",
                                      "the handler for %s sent no reply", rq->path);
        }
    }
    return rq->queue_failed ? MHD_NO : MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    exsa_http *h = cls;
    exsa_http_req *rq = *con_cls;
    if (!rq)
        return;
    *con_cls = NULL;
    if (!rq->replied)
        rq->status = 499; /* the client left before a reply (nginx's code for it) */
    int pt = atomic_load(&rq->prompt_tokens), gt = atomic_load(&rq->gen_tokens);
    double ms = exsa_http_req_elapsed_s(rq) * 1e3;
    const char *how = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK      ? ""
                      : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? " (connection timed out)"
                      : toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT    ? " (client closed)"
                      : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN ? " (shutdown)"
                      : rq->status == 499 || toe == MHD_REQUEST_TERMINATED_READ_ERROR
                          ? " (connection closed)"
                          : " (connection error)";
    if (exsa_log_enabled(EXSA_LOG_INFO)) {
        char tok[64] = "";
        if (pt || gt)
            snprintf(tok, sizeof tok, " prompt_tokens=%d gen_tokens=%d", pt, gt);
        exsa_log(EXSA_LOG_INFO, rq->id, "%s %.300s %d %.1fms client=%s%s%s%.130s%s", rq->method,
                 rq->path, rq->status, ms, rq->client, tok, rq->model[0] ? " model=" : "",
                 rq->model, how);
    }
    if (h->c.hooks.finished)
        h->c.hooks.finished(rq, h->c.app);
    pthread_mutex_lock(&h->mu);
    h->inflight--;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    req_unref(rq);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    exsa_log(EXSA_LOG_DEBUG, NULL, "http: %s", msg);
}

/* ---- daemon ---- */

/* The listening socket, bound here rather than by MHD so that a port in use
 * is a clear error. SO_REUSEADDR only lets a restarted server take its port
 * back from connections in TIME_WAIT; SO_REUSEPORT is not set, so a second
 * server on a port in use fails instead of sharing it. */
static int listen_socket(const struct sockaddr_storage *ss, socklen_t len, const char *host,
                         int port, exsa_err *err)
{
    int v6 = ss->ss_family == AF_INET6;
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        exsa_err_set(err, EXSA_EIO, "cannot listen on %s:%d: socket: %s", host, port,
                     strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (v6) /* "::" means IPv6 only, as MHD does it */
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    const char *lb = v6 ? "[" : "", *rb = v6 ? "]" : "";
    if (bind(fd, (const struct sockaddr *)ss, len) != 0) {
        int e = errno;
        close(fd);
        if (e == EADDRINUSE)
            exsa_err_set(err, EXSA_EIO,
                         "cannot listen on %s%s%s:%d: address already in use (another "
                         "server?); pick another with --port",
                         lb, host, rb, port);
        else if (e == EADDRNOTAVAIL)
            exsa_err_set(err, EXSA_EIO,
                         "cannot listen on %s%s%s:%d: no interface has that address (--host)", lb,
                         host, rb, port);
        else
            exsa_err_set(err, EXSA_EIO, "cannot listen on %s%s%s:%d: %s", lb, host, rb, port,
                         strerror(e));
        return -1;
    }
    if (listen(fd, 128) != 0) {
        int e = errno;
        close(fd);
        exsa_err_set(err, EXSA_EIO, "cannot listen on %s%s%s:%d: %s", lb, host, rb, port,
                     strerror(e));
        return -1;
    }
    return fd;
}

exsa_http *exsa_http_start(const exsa_http_config *c, exsa_err *err)
{
    if (!c || !c->routes || c->n_routes <= 0 || c->port < 0 || c->port > 65535) {
        exsa_err_set(err, EXSA_EINVAL, "http: bad configuration (routes, port %d)",
                     c ? c->port : -1);
        return NULL;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE},
                    *ai = NULL;
    const char *host = c->host && *c->host ? c->host : "127.0.0.1";
    int gai = getaddrinfo(host, NULL, &hints, &ai);
    if (gai != 0 || !ai) {
        exsa_err_set(err, EXSA_EINVAL, "--host '%s': cannot resolve (%s)", host, gai_strerror(gai));
        return NULL;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    int v6 = ai->ai_family == AF_INET6;
    socklen_t ss_len = ai->ai_addrlen < sizeof ss ? ai->ai_addrlen : sizeof ss;
    memcpy(&ss, ai->ai_addr, ss_len);
    freeaddrinfo(ai);
    if (v6)
        ((struct sockaddr_in6 *)(void *)&ss)->sin6_port = htons((uint16_t)c->port);
    else
        ((struct sockaddr_in *)(void *)&ss)->sin_port = htons((uint16_t)c->port);
    int fd = listen_socket(&ss, ss_len, host, c->port, err);
    if (fd < 0)
        return NULL;

    exsa_http *h = calloc(1, sizeof *h);
    if (!h) {
        close(fd);
        exsa_err_set(err, EXSA_ENOMEM, "http: out of memory");
        return NULL;
    }
    h->c = *c;
    h->listen_fd = MHD_INVALID_SOCKET;
    if (c->cors_origins && !(h->cors = strdup(c->cors_origins))) {
        close(fd);
        free(h);
        exsa_err_set(err, EXSA_ENOMEM, "http: out of memory");
        return NULL;
    }
    h->c.cors_origins = h->cors;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    atomic_init(&h->closing, 0);
    atomic_init(&h->next_id, 0);
    if (getrandom(&h->id_seed, sizeof h->id_seed, GRND_NONBLOCK) != (ssize_t)sizeof h->id_seed)
        h->id_seed = (uint64_t)exsa_time_ns() ^ ((uint64_t)getpid() << 32);

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_POLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (v6)
        flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(
        flags, (uint16_t)c->port, NULL, NULL, on_access, h, MHD_OPTION_LISTEN_SOCKET,
        (MHD_socket)fd, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(c->max_connections > 0 ? c->max_connections : 256),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(c->conn_timeout_s > 0 ? c->conn_timeout_s : 0),
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
    if (!h->d) {
        int e = errno;
        close(fd); /* MHD owns the socket only once it started */
        exsa_err_set(err, EXSA_EIO, "cannot listen on %s:%d: %s", host, c->port,
                     e ? strerror(e) : "libmicrohttpd failed to start");
        exsa_http_stop(h);
        return NULL;
    }
    h->port = c->port;
    struct sockaddr_storage bound;
    socklen_t bl = sizeof bound;
    if (getsockname(fd, (struct sockaddr *)&bound, &bl) == 0)
        h->port = ntohs(bound.ss_family == AF_INET6
                            ? ((struct sockaddr_in6 *)(void *)&bound)->sin6_port
                            : ((struct sockaddr_in *)(void *)&bound)->sin_port);
    return h;
}

int exsa_http_port(const exsa_http *h) { return h->port; }

void exsa_http_quiesce(exsa_http *h)
{
    if (!h || atomic_exchange(&h->closing, 1))
        return;
    if (h->d)
        h->listen_fd = MHD_quiesce_daemon(h->d);
    /* MHD no longer accepts, but the kernel would still complete handshakes
     * into the backlog, leaving new clients hanging until exit. Shutting the
     * socket down refuses them now; it is closed after MHD_stop_daemon (MHD
     * asks for that order). */
    if (h->listen_fd != MHD_INVALID_SOCKET)
        shutdown(h->listen_fd, SHUT_RDWR);
}

int exsa_http_wait_idle(exsa_http *h, int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&h->mu);
    while (h->inflight > 0)
        if (pthread_cond_timedwait(&h->cv, &h->mu, &until) == ETIMEDOUT)
            break;
    int n = h->inflight;
    pthread_mutex_unlock(&h->mu);
    return n;
}

void exsa_http_stop(exsa_http *h)
{
    if (!h)
        return;
    atomic_store(&h->closing, 1);
    if (h->d)
        MHD_stop_daemon(h->d);
    if (h->listen_fd != MHD_INVALID_SOCKET)
        close(h->listen_fd);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    free(h->cors);
    free(h);
}
