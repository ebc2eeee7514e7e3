/* Tool calling: the formats models write tool calls in, read from the
 * chat template; the grammar that makes a model's calls well formed; the
 * incremental parser that turns generated text into content and calls.
 *
 * Formats (exsa_tool_format):
 *   HERMES   <tool_call>\n{"name": N, "arguments": {...}}\n</tool_call>
 *            (Hermes, Qwen 2.5, Qwen 3 and every template that writes
 *            <tool_call>); text may come before and after, several calls
 *   MISTRAL  [TOOL_CALLS][{"name": N, "arguments": {...}}, ...]
 *   LLAMA3   {"name": N, "parameters": {...}} as the whole answer (Llama
 *            3.1-3.3's JSON tool calling)
 *   DEEPSEEK_R1   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>N
 *            ```json {...} ```<｜tool▁call▁end｜> ... <｜tool▁calls▁end｜>
 *            (DeepSeek R1, its distills, V3 before 3.1: a newline after N and
 *            around the fence, a newline between calls)
 *   DEEPSEEK_V31  the same markers, <｜tool▁call▁begin｜>N<｜tool▁sep｜>{...}
 *            <｜tool▁call▁end｜>: no type, no fence (V3.1). The parser reads
 *            both shapes in either format. V3.2 / V4 (DSML) are not covered.
 *   COMMAND_R7B   <|START_ACTION|>[{"tool_call_id": "0", "tool_name": N,
 *            "parameters": {...}}, ...]<|END_ACTION|>; <|START_THINKING|>
 *            ...<|END_THINKING|> (the tool plan) is dropped, not content;
 *            <|START_RESPONSE|> / <|END_RESPONSE|> are removed around the
 *            answer text (Command R7B, Command A's Cohere2 template)
 *   FUNCTIONARY_V32  >>>N\n{...} segments; >>>all\n is text for the user.
 *            The generation prompt ends with ">>>", so the output's first
 *            segment has no ">>>" ("all\nHi" or "N\n{...}")
 *   FUNCTIONARY_V31  <function=N>{...}</function> (Functionary 3.1 on
 *            Llama 3.1; its <|python_tag|> code calls are not parsed)
 *   GRANITE  <|tool_call|>[{"name": N, "arguments": {...}}, ...] (Granite
 *            3.x; Granite 4 writes <tool_call> and is HERMES)
 *   gpt-oss's harmony channels are not covered: its template renders calls
 *            as "<|start|>assistant to=functions.N<|channel|>commentary
 *            json<|message|>", not in the order the model writes them, so
 *            the output bytes are not clear from it; it is GENERIC.
 *   GENERIC  for templates with no tool syntax (SmolLM2, ...): the tools and
 *            the answer format are written into the system turn, and the
 *            whole answer is JSON, {"tool_calls": [{"name": N,
 *            "arguments": {...}}, ...]} or {"response": "text"}, enforced by
 *            a grammar; earlier calls and tool results go back into the
 *            turns the template has (exsa_tool_rewrite_messages).
 * With tool_choice "auto" the native formats are constrained lazily, from
 * their opening marker on (FUNCTIONARY_V32 from the first token: its
 * grammar lets "all\n" text or calls start the answer); "required" and a
 * named function constrain the whole answer; "none" renders no tools and
 * constrains nothing. Markers are string literals in the grammars: where a
 * marker is a control token (empty bytes for the grammar engine) the model
 * must spell it in ordinary tokens, except a lazy grammar's trigger, which
 * is found in the rendered output text and may come as the token itself.
 */
#ifndef EXSA_SERVER_TOOL_CALLS_H
#define EXSA_SERVER_TOOL_CALLS_H

#include <stddef.h>

#include <jansson.h>

#include "exsa.h"
#include "server/strbuf.h"

enum exsa_tool_format {
    EXSA_TOOLS_GENERIC = 0,
    EXSA_TOOLS_HERMES,
    EXSA_TOOLS_MISTRAL,
    EXSA_TOOLS_LLAMA3,
    EXSA_TOOLS_DEEPSEEK_R1,
    EXSA_TOOLS_DEEPSEEK_V31,
    EXSA_TOOLS_COMMAND_R7B,
    EXSA_TOOLS_FUNCTIONARY_V32,
    EXSA_TOOLS_FUNCTIONARY_V31,
    EXSA_TOOLS_GRANITE,
};

/* The format a chat template's text writes tool calls in. */
int exsa_tool_format_detect(const char *template_source);
const char *exsa_tool_format_name(int format);

enum exsa_tool_choice_kind {
    EXSA_TOOL_CHOICE_AUTO = 0,
    EXSA_TOOL_CHOICE_NONE,
    EXSA_TOOL_CHOICE_REQUIRED,
    EXSA_TOOL_CHOICE_NAMED,
};

/* A request's tools, checked: tools is the OpenAI array ({"type":
 * "function", "function": {name, description?, parameters?}}), choice the
 * tool_choice value (NULL: auto). */
typedef struct exsa_tool_spec {
    json_t *tools;       /* owned reference */
    int choice;          /* exsa_tool_choice_kind */
    char named[256];     /* EXSA_TOOL_CHOICE_NAMED */
    int parallel;        /* parallel_tool_calls (default 1) */
    int format;          /* exsa_tool_format */
} exsa_tool_spec;

/* Parses tools / tool_choice / parallel_tool_calls of body. Returns 0 with
 * spec->tools NULL when the request has no tools; EXSA_EINVAL with err
 * naming the field otherwise. */
int exsa_tool_spec_parse(const json_t *body, int format, exsa_tool_spec *spec, exsa_err *err);
void exsa_tool_spec_free(exsa_tool_spec *spec);

/* The grammar (GBNF) that constrains the answer, or NULL when nothing is
 * constrained (choice none); *lazy_trigger receives the text that switches
 * a lazy grammar on (static memory), or NULL for a grammar that applies
 * from the first token. NULL + err for a tool schema Exsa cannot honour. */
char *exsa_tool_grammar(const exsa_tool_spec *spec, const char **lazy_trigger, exsa_err *err);

/* For the GENERIC format: a copy of messages with the tool definitions and
 * the answer format in the system turn, assistant tool_calls as their JSON
 * and tool results as user turns. For DEEPSEEK_R1 / DEEPSEEK_V31: a copy
 * with the tools and the call syntax in the system turn and every other
 * message as it was; DeepSeek's own templates (R1, its distills, V3.1)
 * never render `tools`, so the caller should use this when the template
 * source does not mention "tools" (llama.cpp's fixed deepseek-r1 template
 * does). With no tools on offer (spec->tools NULL or choice none) and the
 * GENERIC format it only turns earlier calls into their JSON and tool
 * results into user turns, which a template without tool syntax cannot
 * render otherwise. NULL + err. */
json_t *exsa_tool_rewrite_messages(const json_t *messages, const exsa_tool_spec *spec,
                                   exsa_err *err);

/* One parsed call. */
typedef struct exsa_tool_call {
    char id[40];
    char *name;
    char *arguments; /* JSON text */
} exsa_tool_call;

/* The incremental parser: feed it the generated text in pieces (any split,
 * one byte at a time included); it appends content that is certainly not
 * part of a call to content_out and completes calls into its list. */
typedef struct exsa_tool_parser exsa_tool_parser;
exsa_tool_parser *exsa_tool_parser_create(int format, const char *id_prefix, exsa_err *err);
void exsa_tool_parser_free(exsa_tool_parser *p);
/* 0, or EXSA_ENOMEM. */
int exsa_tool_parser_feed(exsa_tool_parser *p, const char *s, size_t n, exsa_strbuf *content_out);
/* End of the output: what was held back as a possible call that never
 * became one goes to content_out. */
int exsa_tool_parser_finish(exsa_tool_parser *p, exsa_strbuf *content_out);
int exsa_tool_parser_n_calls(const exsa_tool_parser *p);
const exsa_tool_call *exsa_tool_parser_call(const exsa_tool_parser *p, int i);

#endif
