/* Chat templates: OpenAI-style messages -> the prompt text a model expects.
 *
 * A template is Jinja text (from the GGUF key tokenizer.chat_template, a
 * file, or one of the built-in names below), rendered by text/jinja.c with
 * the variables HF transformers passes: messages, add_generation_prompt,
 * bos_token, eos_token, tools (only when given) and any extra keyword
 * arguments (enable_thinking, date_string, documents, ...).
 *
 * Messages are taken as JSON (jansson) exactly as the HTTP API receives them
 * (role, content as a string or a list of parts, name, tool_calls,
 * tool_call_id, reasoning_content ...) and handed to the template as they
 * are, keeping object key order.
 *
 * Thread safety: a template is immutable after creation; render may be
 * called from several threads at once.
 */
#ifndef EXSA_TEXT_CHAT_TEMPLATE_H
#define EXSA_TEXT_CHAT_TEMPLATE_H

#include <jansson.h>
#include <time.h>

#include "exsa.h"
#include "gguf/gguf.h"

typedef struct exsa_chat_template exsa_chat_template;

typedef struct exsa_chat_opts {
    int add_generation_prompt;
    const char *bos_token; /* NULL = "" */
    const char *eos_token; /* NULL = "" */
    const json_t *tools;   /* JSON array of tool schemas, or NULL (then `tools` is undefined) */
    const json_t *extra;   /* JSON object of extra template variables, or NULL */
    const struct tm *now;  /* strftime_now() time; NULL = local time */
} exsa_chat_opts;

/* From Jinja text (len bytes). NULL + err on a template error (with line). */
exsa_chat_template *exsa_chat_template_create(const char *source, size_t len, exsa_err *err);

/* A built-in template by name: chatml, llama2, llama3, mistral, gemma, phi3,
 * phi4, qwen, deepseek, deepseek3, zephyr, vicuna, command-r, granite.
 * NULL + err naming the known names when unknown. */
exsa_chat_template *exsa_chat_template_builtin(const char *name, exsa_err *err);

/* The Jinja source of a built-in template, or NULL. */
const char *exsa_chat_template_builtin_source(const char *name);

/* NULL-terminated list of built-in names. */
const char *const *exsa_chat_template_builtin_names(void);

void exsa_chat_template_destroy(exsa_chat_template *t);

/* The Jinja text the template was made from (NUL-terminated, owned by t). */
const char *exsa_chat_template_source(const exsa_chat_template *t);

/* The template a model should use: override (a built-in name, else a path
 * to a Jinja file) when given, else the GGUF's tokenizer.chat_template, else
 * the built-in "gemma" for a gemma* architecture, else chatml.
 * *source_desc (optional) says which ("gguf", "builtin chatml", "file",
 * ...); it points at static memory. */
exsa_chat_template *exsa_chat_template_for_model(const exsa_gguf *g, const char *override,
                                                 const char **source_desc, exsa_err *err);

/* Renders messages (a JSON array of message objects). Returns a malloc'd
 * NUL-terminated prompt (caller frees), or NULL + err; a template that
 * calls raise_exception() reports its own message and line. */
char *exsa_chat_template_render(const exsa_chat_template *t, const json_t *messages,
                                const exsa_chat_opts *opts, exsa_err *err);

#endif
