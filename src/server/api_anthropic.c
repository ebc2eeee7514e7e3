#include "server/api_anthropic.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/api_openai.h"
#include "server/app.h"
#include "server/gen_job.h"
#include "server/json_text.h"
#include "server/reasoning.h"
#include "server/request_params.h"
#include "server/tool_calls.h"
#include "util/err.h"

#define KEEPALIVE_MS 10000
/* Bytes of a call's input per input_json_delta: clients assemble pieces, so
 * several keep their assembling honest. */
#define INPUT_PIECE 16

json_t *exsa_api_anthropic_error_json(int status, const char *message)
{
    const char *t = status == 401   ? "authentication_error"
                    : status == 403 ? "permission_error"
                    : status == 404 ? "not_found_error"
                    : status == 413 ? "request_too_large"
                    : status == 429 ? "rate_limit_error"
                    : status == 503 || status == 529 ? "overloaded_error"
                    : status == 504 ? "timeout_error"
                    : status >= 500 ? "api_error"
                                    : "invalid_request_error";
    json_t *e = json_object(), *o = json_object();
    if (!e || !o) {
        json_decref(e);
        json_decref(o);
        return NULL;
    }
    json_object_set_new(e, "type", json_string(t));
    json_object_set_new(e, "message", exsa_json_str(message));
    json_object_set_new(o, "type", json_string("error"));
    json_object_set_new(o, "error", e);
    return o;
}

/* ---- one request ---- */

typedef struct anth {
    exsa_gen_job *job;
    exsa_gen_params g;
    exsa_gen_prompt prompt;
    char id[160];
    int think, opened;
    exsa_reasoning rsn;
    exsa_strbuf rpiece, cpiece;
    exsa_strbuf text; /* text the engine sent (to name the stop sequence) */
    int32_t *ids;     /* generated tokens */
    int n_ids, cap_ids;
    /* tools: the parser is there only when tools are in force */
    exsa_tool_spec tools;
    exsa_tool_parser *tp;
    exsa_strbuf tpiece; /* text the parser let through */
    int calls_sent;     /* tool_use blocks streamed */
    /* stream */
    int started;   /* message_start sent */
    int block;     /* open block: -1 none, 0 thinking, 1 text, 2 tool_use */
    int n_blocks;  /* blocks opened so far (the next index) */
    int had_text;  /* a text block was opened */
    int ended;
} anth;

static void anth_free(void *ctx)
{
    anth *a = ctx;
    if (!a)
        return;
    exsa_gen_job_free(a->job);
    exsa_reqparams_free(&a->g);
    free(a->prompt.ids);
    exsa_strbuf_free(&a->rpiece);
    exsa_strbuf_free(&a->cpiece);
    exsa_strbuf_free(&a->text);
    exsa_strbuf_free(&a->tpiece);
    exsa_tool_parser_free(a->tp);
    exsa_tool_spec_free(&a->tools);
    free(a->ids);
    free(a);
}

static void add_id(anth *a, int32_t t)
{
    if (a->n_ids == a->cap_ids) {
        int cap = a->cap_ids ? a->cap_ids * 2 : 256;
        int32_t *p = realloc(a->ids, (size_t)cap * sizeof *p);
        if (!p)
            return; /* the stop sequence then goes unnamed; nothing else depends on it */
        a->ids = p;
        a->cap_ids = cap;
    }
    a->ids[a->n_ids++] = t;
}

/* Which stop sequence ended the choice, or NULL (end of turn). The engine
 * cuts its text at the earliest stop string, first in list order on a tie:
 * the full text of the generated tokens, past what was sent, starts with
 * it; an end-of-generation token leaves nothing there. */
static const char *stop_sequence(anth *a)
{
    const exsa_gen_choice *c = &a->job->ch[0];
    if (c->finish != EXSA_FINISH_STOP || a->g.rp.n_stop == 0 || a->n_ids == 0)
        return NULL;
    int64_t n = exsa_engine_detokenize(a->job->eng, a->ids, a->n_ids, 0, NULL, 0, NULL);
    char *full = n > 0 ? malloc((size_t)n + 1) : NULL;
    const char *hit = NULL;
    if (full && exsa_engine_detokenize(a->job->eng, a->ids, a->n_ids, 0, full, (size_t)n + 1,
                                       NULL) == n &&
        (size_t)n >= a->text.len) {
        const char *rest = full + a->text.len;
        size_t left = (size_t)n - a->text.len;
        for (int i = 0; i < a->g.rp.n_stop && !hit; i++) {
            size_t L = strlen(a->g.stop[i]);
            if (L && L <= left && !memcmp(rest, a->g.stop[i], L))
                hit = a->g.stop[i];
        }
    }
    free(full);
    return hit;
}

static int n_calls(const anth *a) { return a->tp ? exsa_tool_parser_n_calls(a->tp) : 0; }

/* A choice that stopped with calls made ended for them (as OpenAI's
 * finish_reason "tool_calls"); its stop sequence is then not named. */
static const char *stop_reason(anth *a, const char **seq)
{
    int f = a->job->ch[0].finish;
    *seq = NULL;
    if (f == EXSA_FINISH_LENGTH || f == EXSA_FINISH_CONTEXT)
        return "max_tokens";
    if (n_calls(a) > 0)
        return "tool_use";
    *seq = stop_sequence(a);
    return *seq ? "stop_sequence" : "end_turn";
}

static json_t *usage_json(anth *a)
{
    json_t *u = json_object();
    if (!u)
        return NULL;
    json_object_set_new(u, "input_tokens", json_integer(exsa_gen_job_prompt_tokens(a->job)));
    json_object_set_new(u, "output_tokens", json_integer(exsa_gen_job_generated_tokens(a->job)));
    return u;
}

/* The message object; content NULL: [] (message_start). */
static json_t *message_json(anth *a, json_t *content, const char *reason, const char *seq)
{
    json_t *m = json_object();
    if (!m) {
        json_decref(content);
        return NULL;
    }
    json_object_set_new(m, "id", exsa_json_str(a->id));
    json_object_set_new(m, "type", json_string("message"));
    json_object_set_new(m, "role", json_string("assistant"));
    json_object_set_new(m, "model", exsa_json_str(a->job->info.name));
    json_object_set_new(m, "content", content ? content : json_array());
    json_object_set_new(m, "stop_reason", reason ? json_string(reason) : json_null());
    json_object_set_new(m, "stop_sequence", seq ? exsa_json_str(seq) : json_null());
    json_object_set_new(m, "usage", usage_json(a));
    return m;
}

static json_t *block_json(int thinking, const char *s, size_t n)
{
    json_t *b = json_object();
    if (!b)
        return NULL;
    json_object_set_new(b, "type", json_string(thinking ? "thinking" : "text"));
    json_object_set_new(b, thinking ? "thinking" : "text", exsa_json_text(s, n));
    if (thinking)
        json_object_set_new(b, "signature", json_string(""));
    return b;
}

/* Anthropic's tool_use id for a parser's call id ("call_..."): "toolu_"
 * and the rest, kept to the characters Anthropic's ids use (a client's
 * X-Request-Id is part of it). */
static void tool_id(const exsa_tool_call *tc, char *out, size_t cap)
{
    const char *s = strncmp(tc->id, "call_", 5) ? tc->id : tc->id + 5;
    size_t n = (size_t)snprintf(out, cap, "toolu_");
    for (; *s && n + 1 < cap; s++)
        out[n++] = isalnum((unsigned char)*s) || *s == '_' || *s == '-' ? *s : '_';
    out[n] = '\0';
}

/* A call's input: its arguments when they are a JSON object (the grammar
 * makes them one), else {} (input is always an object). */
static json_t *call_input(const exsa_tool_call *tc)
{
    json_t *v = json_loads(tc->arguments, JSON_DECODE_ANY, NULL);
    if (json_is_object(v))
        return v;
    json_decref(v);
    return json_object();
}

/* {"type": "tool_use", id, name, input}; input NULL: {} (stream start). */
static json_t *tool_use_json(const exsa_tool_call *tc, json_t *input)
{
    char id[64];
    tool_id(tc, id, sizeof id);
    json_t *b = json_object();
    if (!b) {
        json_decref(input);
        return NULL;
    }
    json_object_set_new(b, "type", json_string("tool_use"));
    json_object_set_new(b, "id", exsa_json_str(id));
    json_object_set_new(b, "name", exsa_json_str(tc->name));
    json_object_set_new(b, "input", input ? input : json_object());
    return b;
}

/* ---- streaming ---- */

static void event(exsa_strbuf *out, const char *name, json_t *j)
{
    char *s = j ? exsa_json_dump(j) : NULL;
    json_decref(j);
    if (!s) {
        out->oom = 1;
        return;
    }
    exsa_strbuf_printf(out, "event: %s\ndata: %s\n\n", name, s);
    free(s);
}

static json_t *typed(const char *type)
{
    json_t *j = json_object();
    if (j)
        json_object_set_new(j, "type", json_string(type));
    return j;
}

static void ping(exsa_strbuf *out) { event(out, "ping", typed("ping")); }

static void close_block(anth *a, exsa_strbuf *out)
{
    if (a->block < 0)
        return;
    json_t *j = typed("content_block_stop");
    if (j)
        json_object_set_new(j, "index", json_integer(a->n_blocks - 1));
    event(out, "content_block_stop", j);
    a->block = -1;
}

static void open_block(anth *a, exsa_strbuf *out, int thinking)
{
    close_block(a, out);
    json_t *j = typed("content_block_start");
    if (j) {
        json_object_set_new(j, "index", json_integer(a->n_blocks));
        json_object_set_new(j, "content_block", block_json(thinking, "", 0));
    }
    event(out, "content_block_start", j);
    a->block = thinking ? 0 : 1;
    a->had_text |= !thinking;
    a->n_blocks++;
}

static void delta(anth *a, exsa_strbuf *out, int thinking, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (a->block != (thinking ? 0 : 1))
        open_block(a, out, thinking);
    json_t *d = typed(thinking ? "thinking_delta" : "text_delta");
    json_t *j = typed("content_block_delta");
    if (d)
        json_object_set_new(d, thinking ? "thinking" : "text", exsa_json_text(s, n));
    if (j) {
        json_object_set_new(j, "index", json_integer(a->n_blocks - 1));
        json_object_set_new(j, "delta", d);
    } else {
        json_decref(d);
    }
    event(out, "content_block_delta", j);
}

/* The calls the parser completed since the last look, each as a tool_use
 * block: start (input {}), its input's JSON text in pieces cut on UTF-8
 * boundaries, stop. The parser completes a call at once, so its block
 * opens and closes here. */
static void stream_calls(anth *a, exsa_strbuf *out)
{
    for (; a->calls_sent < n_calls(a); a->calls_sent++) {
        const exsa_tool_call *tc = exsa_tool_parser_call(a->tp, a->calls_sent);
        json_t *in = call_input(tc);
        char *text = in ? exsa_json_dump(in) : NULL;
        json_decref(in);
        if (!text) {
            out->oom = 1;
            return;
        }
        close_block(a, out);
        json_t *j = typed("content_block_start");
        if (j) {
            json_object_set_new(j, "index", json_integer(a->n_blocks));
            json_object_set_new(j, "content_block", tool_use_json(tc, NULL));
        }
        event(out, "content_block_start", j);
        a->block = 2;
        a->n_blocks++;
        size_t len = strlen(text);
        for (size_t at = 0; at < len;) {
            size_t k = len - at < INPUT_PIECE ? len - at : INPUT_PIECE;
            while (at + k < len && k > 1 && ((unsigned char)text[at + k] & 0xC0) == 0x80)
                k--;
            json_t *d = typed("input_json_delta"), *e = typed("content_block_delta");
            if (d)
                json_object_set_new(d, "partial_json", exsa_json_text(text + at, k));
            if (e) {
                json_object_set_new(e, "index", json_integer(a->n_blocks - 1));
                json_object_set_new(e, "delta", d);
            } else {
                json_decref(d);
            }
            event(out, "content_block_delta", e);
            at += k;
        }
        free(text);
        close_block(a, out);
    }
}

/* A piece of text (final: the choice ended) as deltas of the right blocks:
 * reasoning split off first, then calls taken out of the rest. */
static void stream_text(anth *a, exsa_strbuf *out, const char *s, size_t n, int final)
{
    if (a->think) {
        exsa_strbuf_reset(&a->rpiece);
        exsa_strbuf_reset(&a->cpiece);
        exsa_reasoning_feed(&a->rsn, s, n, &a->rpiece, &a->cpiece);
        if (final)
            exsa_reasoning_finish(&a->rsn, &a->rpiece, &a->cpiece);
        delta(a, out, 1, a->rpiece.p, a->rpiece.len);
        s = a->cpiece.p;
        n = a->cpiece.len;
    }
    if (!a->tp) {
        delta(a, out, 0, s, n);
        return;
    }
    exsa_strbuf_reset(&a->tpiece);
    if (n && exsa_tool_parser_feed(a->tp, s, n, &a->tpiece))
        out->oom = 1;
    if (final && exsa_tool_parser_finish(a->tp, &a->tpiece))
        out->oom = 1;
    delta(a, out, 0, a->tpiece.p, a->tpiece.len);
    stream_calls(a, out);
}

static void stream_error(anth *a, exsa_strbuf *out, int status, const char *msg)
{
    event(out, "error", exsa_api_anthropic_error_json(status, msg));
    a->ended = 1;
}

static int anth_pull(void *ctx, exsa_strbuf *out)
{
    anth *a = ctx;
    if (a->ended)
        return 1;
    if (!a->started) {
        json_t *j = typed("message_start");
        if (j)
            json_object_set_new(j, "message", message_json(a, NULL, NULL, NULL));
        event(out, "message_start", j);
        /* A template that thinks, or an answer that may be calls, opens
         * blocks as the text decides. */
        if (!a->think && !a->tp)
            open_block(a, out, 0);
        ping(out);
        a->started = 1;
        return 0;
    }
    for (;;) {
        int idx = 0;
        exsa_event ev;
        int st = exsa_gen_job_next(a->job, KEEPALIVE_MS, &idx, &ev);
        if (st == EXSA_GEN_IDLE) {
            ping(out);
            return 0;
        }
        if (st == EXSA_GEN_TIMEOUT) {
            char msg[128];
            snprintf(msg, sizeof msg,
                     "request timed out after %g s (--timeout); generation cancelled",
                     a->job->app->cfg->request_timeout_s);
            stream_error(a, out, 504, msg);
            return 1;
        }
        if (st == EXSA_GEN_GONE)
            return -1;
        if (st == EXSA_GEN_END) {
            a->ended = 1;
            return 1;
        }
        if (ev.type == EXSA_EVENT_TOKEN) {
            add_id(a, ev.token);
            exsa_strbuf_append(&a->text, ev.text, ev.text_len);
            stream_text(a, out, ev.text, ev.text_len, 0);
            if (exsa_strbuf_pending(out))
                return 0;
            continue;
        }
        exsa_gen_choice *c = &a->job->ch[idx];
        if (c->finish == EXSA_FINISH_CANCEL) {
            stream_error(a, out, 503, "generation cancelled (the server is shutting down)");
            return 1;
        }
        if (c->finish == EXSA_FINISH_ERROR) {
            stream_error(a, out, 500, c->error[0] ? c->error : "generation failed");
            return 1;
        }
        stream_text(a, out, "", 0, 1);
        if (!a->had_text && n_calls(a) == 0)
            open_block(a, out, 0); /* a message without calls has its text block */
        close_block(a, out);
        const char *seq;
        const char *reason = stop_reason(a, &seq);
        json_t *d = json_object(), *j = typed("message_delta"), *u = json_object();
        if (d) {
            json_object_set_new(d, "stop_reason", json_string(reason));
            json_object_set_new(d, "stop_sequence", seq ? exsa_json_str(seq) : json_null());
        }
        if (u)
            json_object_set_new(u, "output_tokens",
                                json_integer(exsa_gen_job_generated_tokens(a->job)));
        if (j) {
            json_object_set_new(j, "delta", d);
            json_object_set_new(j, "usage", u);
        } else {
            json_decref(d);
            json_decref(u);
        }
        event(out, "message_delta", j);
        event(out, "message_stop", typed("message_stop"));
        a->ended = 1;
        return 1;
    }
}

/* ---- not streamed ---- */

static void collect_and_reply(anth *a, exsa_http_req *rq)
{
    exsa_gen_job *j = a->job;
    j->watch_client = 1;
    for (;;) {
        int idx = 0;
        exsa_event ev;
        int st = exsa_gen_job_next(j, -1, &idx, &ev);
        if (st == EXSA_GEN_END)
            break;
        if (exsa_gen_job_reply_cut(j, st))
            return;
        if (st == EXSA_GEN_EVENT && ev.type == EXSA_EVENT_TOKEN) {
            add_id(a, ev.token);
            exsa_strbuf_append(&a->text, ev.text, ev.text_len);
        }
    }
    const exsa_gen_choice *c = &j->ch[0];
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
    /* thinking, then text (when there is some, or no call), then calls */
    json_t *content = json_array();
    const char *t = a->text.p;
    size_t n = a->text.len;
    int oom = !content || a->text.oom;
    if (a->think) {
        exsa_reasoning_feed(&a->rsn, t, n, &a->rpiece, &a->cpiece);
        exsa_reasoning_finish(&a->rsn, &a->rpiece, &a->cpiece);
        if (a->rpiece.len)
            oom |= json_array_append_new(content, block_json(1, a->rpiece.p, a->rpiece.len));
        oom |= a->rpiece.oom || a->cpiece.oom;
        t = a->cpiece.p;
        n = a->cpiece.len;
    }
    if (a->tp) {
        oom |= n && exsa_tool_parser_feed(a->tp, t, n, &a->tpiece);
        oom |= exsa_tool_parser_finish(a->tp, &a->tpiece) || a->tpiece.oom;
        t = a->tpiece.p;
        n = a->tpiece.len;
    }
    if (n || n_calls(a) == 0)
        oom |= json_array_append_new(content, block_json(0, t, n));
    for (int k = 0; k < n_calls(a); k++) {
        const exsa_tool_call *tc = exsa_tool_parser_call(a->tp, k);
        oom |= json_array_append_new(content, tool_use_json(tc, call_input(tc)));
    }
    if (oom) {
        json_decref(content);
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        return;
    }
    const char *seq;
    const char *reason = stop_reason(a, &seq);
    exsa_http_reply_json(rq, 200, message_json(a, content, reason, seq));
}

/* ---- the request ---- */

/* Where a message's tool blocks go (OpenAI's shapes): calls collects an
 * assistant's tool_use blocks as tool_calls, results a user's tool_result
 * blocks as tool-role messages. NULL: the block is refused there. */
typedef struct tool_blocks {
    json_t *calls, *results;
} tool_blocks;

static int blocks_text(const json_t *v, const char *where, exsa_strbuf *out,
                       exsa_strbuf *thinking, tool_blocks *tb, exsa_param_err *pe);

/* tool_use {id, name, input} -> {"id", "type": "function", "function":
 * {"name", "arguments": the input's JSON text}}. */
static int tool_use_block(const json_t *b, const char *where, size_t i, json_t *calls,
                          exsa_param_err *pe)
{
    const json_t *id = json_object_get(b, "id"), *name = json_object_get(b, "name"),
                 *input = json_object_get(b, "input");
    if (!json_is_string(id) || json_string_length(id) == 0)
        return exsa_param_fail(pe, where, "invalid_value", "%s.%zu.id: required, a string",
                               where, i);
    if (!json_is_string(name) || json_string_length(name) == 0)
        return exsa_param_fail(pe, where, "invalid_value", "%s.%zu.name: required, a string",
                               where, i);
    if (!json_is_object(input))
        return exsa_param_fail(pe, where, "invalid_value", "%s.%zu.input: required, an object",
                               where, i);
    char *args = exsa_json_dump(input);
    json_t *c = args ? json_pack("{s:O, s:s, s:{s:O, s:s}}", "id", id, "type", "function",
                                 "function", "name", name, "arguments", args)
                     : NULL;
    free(args);
    if (!c || json_array_append_new(calls, c)) {
        pe->status = 500;
        return exsa_param_fail(pe, NULL, "internal_error", "out of memory");
    }
    return 0;
}

/* tool_result {tool_use_id, content?, is_error?} -> {"role": "tool",
 * "tool_call_id", "content": its text}. An id that names no earlier call is
 * let through: the template shows it as it is. */
static int tool_result_block(const json_t *b, const char *where, size_t i, json_t *results,
                             exsa_param_err *pe)
{
    const json_t *id = json_object_get(b, "tool_use_id"), *c = json_object_get(b, "content"),
                 *err = json_object_get(b, "is_error");
    char w[96];
    if (!json_is_string(id) || json_string_length(id) == 0)
        return exsa_param_fail(pe, where, "invalid_value",
                               "%s.%zu.tool_use_id: required, a string", where, i);
    if (err && !json_is_null(err) && !json_is_boolean(err))
        return exsa_param_fail(pe, where, "invalid_type", "%s.%zu.is_error: must be a boolean",
                               where, i);
    exsa_strbuf text;
    exsa_strbuf_init(&text);
    if (json_is_true(err))
        exsa_strbuf_puts(&text, "Error: ");
    snprintf(w, sizeof w, "%s.%zu.content", where, i);
    if (c && !json_is_null(c) && blocks_text(c, w, &text, NULL, NULL, pe)) {
        exsa_strbuf_free(&text);
        return EXSA_EINVAL;
    }
    json_t *m = text.oom ? NULL
                         : json_pack("{s:s, s:O, s:o}", "role", "tool", "tool_call_id", id,
                                     "content", exsa_json_text(text.p, text.len));
    exsa_strbuf_free(&text);
    if (!m || json_array_append_new(results, m)) {
        pe->status = 500;
        return exsa_param_fail(pe, NULL, "internal_error", "out of memory");
    }
    return 0;
}

/* Text of a "system" value or a message "content": a string, or a list of
 * text blocks (joined). Other blocks are refused, naming where. thinking
 * (may be NULL) collects "thinking" blocks, tb (may be NULL) tool blocks. */
static int blocks_text(const json_t *v, const char *where, exsa_strbuf *out,
                       exsa_strbuf *thinking, tool_blocks *tb, exsa_param_err *pe)
{
    if (json_is_string(v)) {
        exsa_strbuf_append(out, json_string_value(v), json_string_length(v));
        return 0;
    }
    if (!json_is_array(v))
        return exsa_param_fail(pe, where, "invalid_type",
                               "%s: must be a string or a list of content blocks", where);
    size_t i;
    const json_t *b;
    json_array_foreach(v, i, b) {
        const char *t = json_string_value(json_object_get(b, "type"));
        if (!json_is_object(b) || !t)
            return exsa_param_fail(pe, where, "invalid_value",
                                   "%s.%zu: a content block must be an object with a \"type\"",
                                   where, i);
        if (!strcmp(t, "text")) {
            const json_t *x = json_object_get(b, "text");
            if (!json_is_string(x))
                return exsa_param_fail(pe, where, "invalid_type",
                                       "%s.%zu.text: required, a string", where, i);
            exsa_strbuf_append(out, json_string_value(x), json_string_length(x));
        } else if (thinking && (!strcmp(t, "thinking") || !strcmp(t, "redacted_thinking"))) {
            const json_t *x = json_object_get(b, "thinking");
            if (json_is_string(x))
                exsa_strbuf_append(thinking, json_string_value(x), json_string_length(x));
        } else if (!strcmp(t, "image") || !strcmp(t, "document")) {
            return exsa_param_fail(pe, where, "unsupported",
                                   "%s.%zu: %s content blocks are not supported (text only)",
                                   where, i, t);
        } else if (!strcmp(t, "tool_use") && tb && tb->calls) {
            if (tool_use_block(b, where, i, tb->calls, pe))
                return EXSA_EINVAL;
        } else if (!strcmp(t, "tool_result") && tb && tb->results) {
            if (tool_result_block(b, where, i, tb->results, pe))
                return EXSA_EINVAL;
        } else if (!strcmp(t, "tool_use") || !strcmp(t, "tool_result")) {
            return exsa_param_fail(pe, where, "invalid_value",
                                   "%s.%zu: %s blocks belong in %s messages", where, i, t,
                                   !strcmp(t, "tool_use") ? "assistant" : "user");
        } else {
            return exsa_param_fail(pe, where, "invalid_value",
                                   "%s.%zu: unknown content block type '%.40s'", where, i, t);
        }
    }
    return 0;
}

static json_t *text_message(const char *role, exsa_strbuf *text, exsa_strbuf *thinking)
{
    json_t *m = json_object();
    if (!m)
        return NULL;
    json_object_set_new(m, "role", json_string(role));
    json_object_set_new(m, "content", exsa_json_text(text->p, text->len));
    if (thinking && thinking->len)
        json_object_set_new(m, "reasoning_content", exsa_json_text(thinking->p, thinking->len));
    return m;
}

/* Anthropic messages (+ system) -> OpenAI-shaped messages for the template;
 * a last assistant message becomes *prefill (malloc'd). */
static json_t *convert_messages(const json_t *body, char **prefill, exsa_param_err *pe)
{
    *prefill = NULL;
    const json_t *msgs = json_object_get(body, "messages");
    if (!msgs || json_is_null(msgs)) {
        exsa_param_fail(pe, "messages", "missing_required_parameter", "messages: Field required");
        return NULL;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        exsa_param_fail(pe, "messages", "invalid_value",
                        "messages: must be a non-empty list of messages");
        return NULL;
    }
    json_t *out = json_array();
    exsa_strbuf text, thinking;
    exsa_strbuf_init(&text);
    exsa_strbuf_init(&thinking);
    if (!out)
        goto oom;
    const json_t *sys = json_object_get(body, "system");
    if (sys && !json_is_null(sys)) {
        if (blocks_text(sys, "system", &text, NULL, NULL, pe))
            goto fail;
        if (json_array_append_new(out, text_message("system", &text, NULL)))
            goto oom;
    }
    size_t n = json_array_size(msgs);
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(msgs, i);
        char where[48];
        snprintf(where, sizeof where, "messages.%zu", i);
        if (!json_is_object(m)) {
            exsa_param_fail(pe, "messages", "invalid_type", "%s: must be an object", where);
            goto fail;
        }
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!role || (strcmp(role, "user") && strcmp(role, "assistant"))) {
            exsa_param_fail(pe, "messages", "invalid_value",
                            "%s.role: must be \"user\" or \"assistant\"%s%.40s%s", where,
                            role ? ", got \"" : "", role ? role : "", role ? "\"" : "");
            goto fail;
        }
        const json_t *c = json_object_get(m, "content");
        snprintf(where, sizeof where, "messages.%zu.content", i);
        exsa_strbuf_reset(&text);
        exsa_strbuf_reset(&thinking);
        if (!c || json_is_null(c)) {
            exsa_param_fail(pe, "messages", "missing_required_parameter", "%s: Field required",
                            where);
            goto fail;
        }
        const int user = !strcmp(role, "user");
        tool_blocks tb = {.calls = user ? NULL : json_array(),
                          .results = user ? json_array() : NULL};
        if (!tb.calls && !tb.results)
            goto oom;
        if (blocks_text(c, where, &text, &thinking, &tb, pe)) {
            json_decref(tb.calls);
            json_decref(tb.results);
            goto fail;
        }
        if (text.oom || thinking.oom) {
            json_decref(tb.calls);
            json_decref(tb.results);
            goto oom;
        }
        if (i + 1 == n && !user && json_array_size(tb.calls) == 0) {
            /* Prefill: the answer goes on from this text. */
            json_decref(tb.calls);
            if (!(*prefill = strdup(text.p ? text.p : "")))
                goto oom;
            break;
        }
        /* A user turn's tool results answer the assistant turn before it:
         * tool-role messages right after that, then the user's own text
         * (when there is some, or no result). */
        json_t *msg = NULL;
        int bad = 0;
        if (user) {
            bad = json_array_extend(out, tb.results);
            if (!bad && (text.len || json_array_size(tb.results) == 0))
                bad = json_array_append_new(out, msg = text_message(role, &text, &thinking));
        } else {
            msg = text_message(role, &text, &thinking);
            if (msg && json_array_size(tb.calls))
                json_object_set(msg, "tool_calls", tb.calls);
            bad = json_array_append_new(out, msg);
        }
        json_decref(tb.calls);
        json_decref(tb.results);
        if (bad)
            goto oom;
    }
    exsa_strbuf_free(&text);
    exsa_strbuf_free(&thinking);
    return out;
oom:
    exsa_param_fail(pe, NULL, "internal_error", "out of memory");
    pe->status = 500;
fail:
    exsa_strbuf_free(&text);
    exsa_strbuf_free(&thinking);
    json_decref(out);
    free(*prefill);
    *prefill = NULL;
    return NULL;
}

/* Anthropic's sampling fields -> an OpenAI-shaped body for the shared
 * parser (which fills the engine parameters); NULL with pe set. */
static json_t *openai_fields(const json_t *body, exsa_param_err *pe)
{
    long long mt;
    int has;
    if (exsa_reqparams_int(body, "max_tokens", 1, INT32_MAX, &mt, &has, pe))
        return NULL;
    if (!has) {
        exsa_param_fail(pe, "max_tokens", "missing_required_parameter",
                        "max_tokens: Field required");
        return NULL;
    }
    double d;
    long long k;
    int b;
    if (exsa_reqparams_num(body, "temperature", 0, 1, &d, NULL, pe) ||
        exsa_reqparams_num(body, "top_p", 0, 1, &d, NULL, pe) ||
        exsa_reqparams_int(body, "top_k", 0, 1 << 30, &k, NULL, pe) ||
        exsa_reqparams_bool(body, "stream", &b, NULL, pe))
        return NULL;
    const json_t *stops = json_object_get(body, "stop_sequences");
    if (stops && !json_is_null(stops)) {
        size_t i;
        const json_t *s;
        if (!json_is_array(stops) || json_array_size(stops) > EXSA_MAX_STOPS) {
            exsa_param_fail(pe, "stop_sequences", "invalid_value",
                            "stop_sequences: must be a list of at most %d strings",
                            EXSA_MAX_STOPS);
            return NULL;
        }
        json_array_foreach(stops, i, s) {
            if (!json_is_string(s) || json_string_length(s) == 0 ||
                json_string_length(s) > EXSA_MAX_STOP_LEN ||
                strlen(json_string_value(s)) != json_string_length(s)) {
                exsa_param_fail(pe, "stop_sequences", "invalid_value",
                                "stop_sequences.%zu: must be a non-empty string of at most %d "
                                "bytes",
                                i, EXSA_MAX_STOP_LEN);
                return NULL;
            }
        }
    }
    json_t *o = json_object();
    if (!o) {
        exsa_param_fail(pe, NULL, "internal_error", "out of memory");
        pe->status = 500;
        return NULL;
    }
    static const char *const same[] = {"max_tokens", "temperature", "top_p", "top_k", "stream"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        json_t *v = json_object_get(body, same[i]);
        if (v && !json_is_null(v))
            json_object_set(o, same[i], v);
    }
    if (stops && json_array_size(stops))
        json_object_set(o, "stop", (json_t *)stops);
    return o;
}

/* Anthropic's tools and tool_choice -> the OpenAI-shaped body that
 * exsa_tool_spec_parse reads: tools [{name, description?, input_schema}]
 * -> [{"type": "function", "function": {name, description, parameters}}],
 * tool_choice {"type": auto | any | tool (+ name) | none,
 * disable_parallel_tool_use?} -> auto | required | the named function |
 * none (+ parallel_tool_calls false). The shapes are checked here, so that
 * errors name Anthropic's fields; NULL with pe set. */
static json_t *openai_tools(const json_t *body, exsa_param_err *pe)
{
    const json_t *tools = json_object_get(body, "tools");
    const json_t *tc = json_object_get(body, "tool_choice");
    json_t *o = json_object(), *list = json_array();
    if (!o || !list)
        goto oom;
    if (tools && !json_is_null(tools)) {
        if (!json_is_array(tools)) {
            exsa_param_fail(pe, "tools", "invalid_type", "tools: must be a list of tools");
            goto fail;
        }
        size_t i;
        const json_t *t;
        json_array_foreach(tools, i, t) {
            const char *type = json_string_value(json_object_get(t, "type"));
            const json_t *name = json_object_get(t, "name");
            const json_t *desc = json_object_get(t, "description");
            const json_t *schema = json_object_get(t, "input_schema");
            const char *st = json_string_value(json_object_get(schema, "type"));
            if (!json_is_object(t)) {
                exsa_param_fail(pe, "tools", "invalid_type", "tools.%zu: must be an object", i);
                goto fail;
            }
            if (type && strcmp(type, "custom")) {
                exsa_param_fail(pe, "tools", "unsupported",
                                "tools.%zu: '%.60s' tools (Anthropic's server tools) are not "
                                "supported; give client tools {name, description, input_schema}",
                                i, type);
                goto fail;
            }
            if (!json_is_string(name)) {
                exsa_param_fail(pe, "tools", "invalid_value", "tools.%zu.name: required, a string",
                                i);
                goto fail;
            }
            if (desc && !json_is_null(desc) && !json_is_string(desc)) {
                exsa_param_fail(pe, "tools", "invalid_type",
                                "tools.%zu.description: must be a string", i);
                goto fail;
            }
            if (!json_is_object(schema) || !st || strcmp(st, "object")) {
                exsa_param_fail(pe, "tools", "invalid_value",
                                "tools.%zu.input_schema: required, a JSON Schema object with "
                                "\"type\": \"object\"",
                                i);
                goto fail;
            }
            json_t *fn = json_pack("{s:O, s:O}", "name", name, "parameters", schema);
            if (fn && json_is_string(desc))
                json_object_set(fn, "description", (json_t *)desc);
            if (json_array_append_new(list, json_pack("{s:s, s:o}", "type", "function",
                                                      "function", fn)))
                goto oom;
        }
    }
    json_object_set(o, "tools", list);
    if (tc && !json_is_null(tc)) {
        const char *type = json_string_value(json_object_get(tc, "type"));
        const json_t *dp = json_object_get(tc, "disable_parallel_tool_use");
        if (!json_is_object(tc) || !type ||
            (strcmp(type, "auto") && strcmp(type, "any") && strcmp(type, "tool") &&
             strcmp(type, "none"))) {
            exsa_param_fail(pe, "tool_choice", "invalid_value",
                            "tool_choice: must be {\"type\": \"auto\" | \"any\" | \"tool\" | "
                            "\"none\"} (\"tool\" with a \"name\")");
            goto fail;
        }
        if (dp && !json_is_null(dp) && !json_is_boolean(dp)) {
            exsa_param_fail(pe, "tool_choice", "invalid_type",
                            "tool_choice.disable_parallel_tool_use: must be a boolean");
            goto fail;
        }
        if (json_array_size(list) == 0 && (!strcmp(type, "any") || !strcmp(type, "tool"))) {
            exsa_param_fail(pe, "tool_choice", "invalid_value",
                            "tool_choice: type '%s' needs tools, and there are none", type);
            goto fail;
        }
        json_t *choice;
        if (!strcmp(type, "tool")) {
            const char *name = json_string_value(json_object_get(tc, "name"));
            int found = 0;
            for (size_t k = 0; name && k < json_array_size(list); k++)
                found |= !strcmp(json_string_value(json_object_get(
                                     json_object_get(json_array_get(list, k), "function"), "name")),
                                 name);
            if (!found) {
                exsa_param_fail(pe, "tool_choice", "invalid_value",
                                "tool_choice.name: %s%.64s%s names none of the tools",
                                name ? "'" : "", name ? name : "(missing)", name ? "'" : "");
                goto fail;
            }
            choice = json_pack("{s:s, s:{s:s}}", "type", "function", "function", "name", name);
        } else {
            choice = json_string(!strcmp(type, "any") ? "required" : type);
        }
        if (json_object_set_new(o, "tool_choice", choice))
            goto oom;
        if (json_is_true(dp))
            json_object_set_new(o, "parallel_tool_calls", json_false());
    }
    json_decref(list);
    return o;
oom:
    pe->status = 500;
    exsa_param_fail(pe, NULL, "internal_error", "out of memory");
fail:
    json_decref(list);
    json_decref(o);
    return NULL;
}

/* Anthropic's "thinking" {"type": "enabled" | "disabled"} as the templates'
 * enable_thinking, merged over chat_template_kwargs (an extension, as on
 * the OpenAI endpoint). *kw: a new reference or NULL. */
static int thinking_kwargs(const json_t *body, const json_t *given, json_t **kw,
                           exsa_param_err *pe)
{
    *kw = given ? json_deep_copy(given) : NULL;
    const json_t *t = json_object_get(body, "thinking");
    if (!t || json_is_null(t))
        return 0;
    const char *type = json_string_value(json_object_get(t, "type"));
    if (!json_is_object(t) || !type || (strcmp(type, "enabled") && strcmp(type, "disabled"))) {
        json_decref(*kw);
        *kw = NULL;
        return exsa_param_fail(pe, "thinking", "invalid_value",
                               "thinking: must be {\"type\": \"enabled\", \"budget_tokens\": N} "
                               "or {\"type\": \"disabled\"}");
    }
    if (!*kw)
        *kw = json_object();
    if (*kw)
        json_object_set_new(*kw, "enable_thinking", json_boolean(!strcmp(type, "enabled")));
    return 0;
}

/* Tools in force (any tool_choice but none): the grammar that shapes the
 * calls, the parser that reads them, and the prompt in the template's tool
 * format: *tools_arg for a template with tool syntax, *rendered (the
 * generic format) for one without. As on /v1/chat/completions. */
static int use_tools(anth *a, const json_t *tools, const json_t *msgs, const char *prefill,
                     const json_t **tools_arg, json_t **rendered, exsa_param_err *pe)
{
    exsa_err err = {0};
    const int format = exsa_tool_format_detect(exsa_engine_chat_template_source(a->job->eng));
    if (exsa_tool_spec_parse(tools, format, &a->tools, &err))
        return exsa_param_fail(pe, "tools", "invalid_value", "%s", err.msg);
    if (!a->tools.tools || a->tools.choice == EXSA_TOOL_CHOICE_NONE)
        return 0;
    if (prefill)
        return exsa_param_fail(pe, "messages", "invalid_value",
                               "messages: a final assistant message (prefill) cannot be combined "
                               "with tools (the answer's calls start the answer)");
    const char *trigger = NULL;
    char *gr = exsa_tool_grammar(&a->tools, &trigger, &err);
    if (!gr && err.code)
        return exsa_param_fail(pe, "tools", "invalid_value", "%s", err.msg);
    if (exsa_reqparams_take_grammar(&a->g, gr, trigger, "tools"))
        goto oom;
    if (format == EXSA_TOOLS_GENERIC) {
        if (!(*rendered = exsa_tool_rewrite_messages(msgs, &a->tools, &err)))
            goto oom;
    } else {
        *tools_arg = a->tools.tools;
    }
    char pre[32];
    snprintf(pre, sizeof pre, "%.16s_", exsa_http_req_id(a->job->rq));
    if (!(a->tp = exsa_tool_parser_create(format, pre, &err)))
        goto oom;
    return 0;
oom:
    pe->status = 500;
    return exsa_param_fail(pe, NULL, "internal_error", "out of memory");
}

void exsa_api_anthropic_messages(exsa_http_req *rq, void *app)
{
    exsa_app *ap = app;
    exsa_param_err pe = {0};
    size_t len;
    const char *b = exsa_http_req_body(rq, &len);
    json_t *body = exsa_reqparams_body(b, len, &pe), *fields = NULL, *msgs = NULL, *kw = NULL,
           *tools = NULL, *rendered = NULL;
    char *prefill = NULL, *text = NULL;
    anth *a = NULL;
    const char *model;
    const json_t *kwargs;
    int rf;
    if (!body || exsa_reqparams_model(body, &model, &pe) ||
        !(fields = openai_fields(body, &pe)) || !(tools = openai_tools(body, &pe)) ||
        !(msgs = convert_messages(body, &prefill, &pe)) ||
        exsa_chat_reasoning_fields(body, &kwargs, &rf, &pe) ||
        thinking_kwargs(body, kwargs, &kw, &pe))
        goto bad;
    if (!(a = calloc(1, sizeof *a))) {
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        goto out;
    }
    exsa_strbuf_init(&a->rpiece);
    exsa_strbuf_init(&a->cpiece);
    exsa_strbuf_init(&a->text);
    exsa_strbuf_init(&a->tpiece);
    a->block = -1;
    snprintf(a->id, sizeof a->id, "msg_%s", exsa_http_req_id(rq));
    exsa_engine *e = exsa_app_acquire(ap, rq, model);
    if (!e || !(a->job = exsa_gen_job_create(ap, rq, e)))
        goto out;
    if (exsa_reqparams_parse(fields, EXSA_API_CHAT, a->job->info.n_vocab, &a->g, &pe))
        goto bad;
    const json_t *tools_arg = NULL;
    if (use_tools(a, tools, msgs, prefill, &tools_arg, &rendered, &pe))
        goto bad;
    if (exsa_gen_job_chat_prompt(a->job, rendered ? rendered : msgs, tools_arg, kw, prefill,
                                 &a->prompt, &text))
        goto out;
    /* The generic tool format's grammar makes the whole answer JSON: no
     * thinking comes before it. */
    a->think = exsa_chat_thinks(a->job->eng, rf) &&
               !(a->tp && a->tools.format == EXSA_TOOLS_GENERIC);
    a->opened = a->think && exsa_reasoning_prompt_opened(text, strlen(text));
    exsa_reasoning_init(&a->rsn, a->opened);
    if (exsa_gen_job_submit(a->job, &a->g, &a->prompt, 1, "messages"))
        goto out;
    if (a->g.stream) {
        exsa_http_reply_stream(rq, 200, "text/event-stream", anth_pull, a, anth_free);
        a = NULL;
    } else {
        collect_and_reply(a, rq);
    }
    goto out;
bad:
    exsa_app_reply_param(rq, &pe);
out:
    anth_free(a);
    free(text);
    free(prefill);
    json_decref(kw);
    json_decref(rendered);
    json_decref(msgs);
    json_decref(tools);
    json_decref(fields);
    json_decref(body);
}
