/* Chat templates on top of the Jinja engine; see chat_template.h.
 * The built-in templates are written here from the models' published
 * prompt formats; each renders a message content that is a list of parts by
 * joining its text parts. */
#include "text/chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/jinja.h"
#include "util/err.h"

struct exsa_chat_template {
    exsa_jinja *tpl;
    char *src; /* the Jinja text, for callers that look at it (thinking markers) */
};

/* DeepSeek's special-token characters: U+FF5C and U+2581 */
#define FWBAR "\xef\xbd\x9c"
#define LBLOCK "\xe2\x96\x81"

/* content as text: a string as is, a list of parts -> its text parts */
#define CONTENT_MACRO                                                                          \
    "{%- macro text(c) -%}"                                                                    \
    "{%- if c is string -%}{{ c }}"                                                            \
    "{%- elif c is iterable and c is not mapping -%}"                                          \
    "{%- for p in c -%}{%- if p is mapping and p.type == 'text' -%}{{ p.text }}{%- endif -%}" \
    "{%- endfor -%}"                                                                           \
    "{%- elif c is not none -%}{{ c }}{%- endif -%}"                                           \
    "{%- endmacro -%}\n"

static const struct builtin {
    const char *name, *src;
} BUILTINS[] = {
    {"chatml", CONTENT_MACRO
     "{%- for message in messages -%}\n"
     "{{- '<|im_start|>' + message.role + '\\n' + text(message.content) + '<|im_end|>\\n' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n"},
    {"qwen", CONTENT_MACRO
     "{%- if messages[0].role != 'system' -%}\n"
     "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}\n"
     "{%- endif -%}\n"
     "{%- for message in messages -%}\n"
     "{{- '<|im_start|>' + message.role + '\\n' + text(message.content) + '<|im_end|>\\n' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n"},
    {"llama2", CONTENT_MACRO
     "{%- if messages[0].role == 'system' -%}\n"
     "{%- set sys = text(messages[0].content) -%}{%- set msgs = messages[1:] -%}\n"
     "{%- else -%}{%- set sys = none -%}{%- set msgs = messages -%}{%- endif -%}\n"
     "{%- for message in msgs -%}\n"
     "{%- if message.role == 'user' -%}\n"
     "{%- if loop.first and sys is not none -%}\n"
     "{%- set content = '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + text(message.content) -%}\n"
     "{%- else -%}{%- set content = text(message.content) -%}{%- endif -%}\n"
     "{{- bos_token + '[INST] ' + content | trim + ' [/INST]' -}}\n"
     "{%- elif message.role == 'assistant' -%}\n"
     "{{- ' ' + text(message.content) | trim + ' ' + eos_token -}}\n"
     "{%- endif -%}\n"
     "{%- endfor -%}\n"},
    {"llama3", CONTENT_MACRO
     "{{- bos_token -}}\n"
     "{%- for message in messages -%}\n"
     "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + text(message.content) | trim"
     " + '<|eot_id|>' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
     "{%- endif -%}\n"},
    {"mistral", CONTENT_MACRO
     "{%- if messages[0].role == 'system' -%}\n"
     "{%- set sys = text(messages[0].content) + '\\n\\n' -%}{%- set msgs = messages[1:] -%}\n"
     "{%- else -%}{%- set sys = '' -%}{%- set msgs = messages -%}{%- endif -%}\n"
     "{{- bos_token -}}\n"
     "{%- for message in msgs -%}\n"
     "{%- if message.role == 'user' -%}\n"
     "{{- '[INST] ' + (sys if loop.first else '') + text(message.content) + ' [/INST]' -}}\n"
     "{%- elif message.role == 'assistant' -%}\n"
     "{{- text(message.content) + eos_token -}}\n"
     "{%- else -%}\n"
     "{{- raise_exception('mistral: only user and assistant roles after an optional system message') -}}\n"
     "{%- endif -%}\n"
     "{%- endfor -%}\n"},
    /* Gemma 3's official template (google/gemma-3-*-it) without its role
     * checks: a system turn is folded into the first user turn, text parts
     * are trimmed, image parts become <start_of_image> */
    {"gemma", CONTENT_MACRO
     "{%- macro turn(c) -%}"
     "{%- if c is string -%}{{ c | trim }}"
     "{%- elif c is iterable and c is not mapping -%}"
     "{%- for p in c -%}{%- if p is mapping and p.type == 'image' -%}{{ '<start_of_image>' }}"
     "{%- elif p is mapping and p.type == 'text' -%}{{ p.text | trim }}{%- endif -%}{%- endfor -%}"
     "{%- elif c is not none -%}{{ c | trim }}{%- endif -%}"
     "{%- endmacro -%}\n"
     "{{- bos_token -}}\n"
     "{%- if messages[0].role == 'system' -%}\n"
     "{%- set prefix = text(messages[0].content) + '\\n\\n' -%}{%- set msgs = messages[1:] -%}\n"
     "{%- else -%}{%- set prefix = '' -%}{%- set msgs = messages -%}{%- endif -%}\n"
     "{%- for message in msgs -%}\n"
     "{%- set role = 'model' if message.role == 'assistant' else message.role -%}\n"
     "{{- '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') + turn(message.content)"
     " + '<end_of_turn>\\n' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}\n"},
    {"phi3", CONTENT_MACRO
     "{%- for message in messages -%}\n"
     "{{- '<|' + message.role + '|>\\n' + text(message.content) + '<|end|>\\n' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- else -%}{{- eos_token -}}{%- endif -%}\n"},
    {"phi4", CONTENT_MACRO
     "{%- for message in messages -%}\n"
     "{{- '<|im_start|>' + message.role + '<|im_sep|>' + text(message.content) + '<|im_end|>' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant<|im_sep|>' -}}{%- endif -%}\n"},
    {"deepseek", CONTENT_MACRO
     "{{- bos_token -}}\n"
     "{%- for message in messages -%}\n"
     "{%- if message.role == 'user' -%}{{- 'User: ' + text(message.content) + '\\n\\n' -}}\n"
     "{%- elif message.role == 'assistant' -%}{{- 'Assistant: ' + text(message.content) + eos_token -}}\n"
     "{%- elif message.role == 'system' -%}{{- text(message.content) + '\\n\\n' -}}\n"
     "{%- endif -%}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}\n"},
    {"deepseek3", CONTENT_MACRO
     "{{- bos_token -}}\n"
     "{%- for message in messages if message.role == 'system' -%}{{- text(message.content) -}}{%- endfor -%}\n"
     "{%- for message in messages -%}\n"
     "{%- if message.role == 'user' -%}{{- '<" FWBAR "User" FWBAR ">' + text(message.content) -}}\n"
     "{%- elif message.role == 'assistant' -%}\n"
     "{%- set c = text(message.content) -%}\n"
     "{%- if '</think>' in c -%}{%- set c = c.split('</think>')[-1] -%}{%- endif -%}\n"
     "{{- '<" FWBAR "Assistant" FWBAR ">' + c + '<" FWBAR "end" LBLOCK "of" LBLOCK "sentence" FWBAR ">' -}}\n"
     "{%- endif -%}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<" FWBAR "Assistant" FWBAR ">' -}}{%- endif -%}\n"},
    {"zephyr", CONTENT_MACRO
     "{%- for message in messages -%}\n"
     "{{- '<|' + message.role + '|>\\n' + text(message.content) + eos_token + '\\n' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}\n"},
    {"vicuna", CONTENT_MACRO
     "{%- for message in messages -%}\n"
     "{%- if message.role == 'system' -%}{{- text(message.content) + '\\n\\n' -}}\n"
     "{%- elif message.role == 'user' -%}{{- 'USER: ' + text(message.content) + '\\n' -}}\n"
     "{%- elif message.role == 'assistant' -%}{{- 'ASSISTANT: ' + text(message.content) + eos_token + '\\n' -}}\n"
     "{%- endif -%}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}\n"},
    {"command-r", CONTENT_MACRO
     "{{- bos_token -}}\n"
     "{%- for message in messages -%}\n"
     "{%- set role = {'system': '<|SYSTEM_TOKEN|>', 'user': '<|USER_TOKEN|>', 'assistant': '<|CHATBOT_TOKEN|>'}"
     ".get(message.role, '<|USER_TOKEN|>') -%}\n"
     "{{- '<|START_OF_TURN_TOKEN|>' + role + text(message.content) + '<|END_OF_TURN_TOKEN|>' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' -}}{%- endif -%}\n"},
    {"granite", CONTENT_MACRO
     "{%- for message in messages -%}\n"
     "{{- '<|start_of_role|>' + message.role + '<|end_of_role|>' + text(message.content) + '<|end_of_text|>\\n' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<|start_of_role|>assistant<|end_of_role|>' -}}{%- endif -%}\n"},
};

#define N_BUILTINS (sizeof BUILTINS / sizeof BUILTINS[0])

const char *exsa_chat_template_builtin_source(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < N_BUILTINS; i++)
        if (strcmp(BUILTINS[i].name, name) == 0)
            return BUILTINS[i].src;
    return NULL;
}

const char *const *exsa_chat_template_builtin_names(void)
{
    static const char *const names[] = {"chatml", "qwen", "llama2", "llama3", "mistral",
                                        "gemma", "phi3", "phi4", "deepseek", "deepseek3",
                                        "zephyr", "vicuna", "command-r", "granite", NULL};
    return names;
}

exsa_chat_template *exsa_chat_template_create(const char *source, size_t len, exsa_err *err)
{
    if (!source)
        return exsa_err_set(err, EXSA_EINVAL, "chat template: no template text"), NULL;
    exsa_chat_template *t = calloc(1, sizeof *t);
    if (!t)
        return exsa_err_set(err, EXSA_ENOMEM, "chat template: out of memory"), NULL;
    t->tpl = exsa_jinja_parse(source, len, err);
    if (!t->tpl) {
        free(t);
        exsa_err_prefix(err, "chat template");
        return NULL;
    }
    if (!(t->src = malloc(len + 1))) {
        exsa_chat_template_destroy(t);
        return exsa_err_set(err, EXSA_ENOMEM, "chat template: out of memory"), NULL;
    }
    memcpy(t->src, source, len);
    t->src[len] = '\0';
    return t;
}

exsa_chat_template *exsa_chat_template_builtin(const char *name, exsa_err *err)
{
    const char *src = exsa_chat_template_builtin_source(name);
    if (!src) {
        char list[256] = "";
        for (const char *const *n = exsa_chat_template_builtin_names(); *n; n++) {
            strncat(list, *n, sizeof list - strlen(list) - 1);
            if (n[1])
                strncat(list, ", ", sizeof list - strlen(list) - 1);
        }
        exsa_err_set(err, EXSA_EINVAL, "chat template: unknown built-in template '%s' (known: %s)",
                     name ? name : "(null)", list);
        return NULL;
    }
    return exsa_chat_template_create(src, strlen(src), err);
}

void exsa_chat_template_destroy(exsa_chat_template *t)
{
    if (!t)
        return;
    exsa_jinja_destroy(t->tpl);
    free(t->src);
    free(t);
}

const char *exsa_chat_template_source(const exsa_chat_template *t) { return t ? t->src : NULL; }

char *exsa_chat_template_render(const exsa_chat_template *t, const json_t *messages,
                                const exsa_chat_opts *opts, exsa_err *err)
{
    if (!t)
        return exsa_err_set(err, EXSA_EINVAL, "chat template: NULL template"), NULL;
    if (!json_is_array(messages))
        return exsa_err_set(err, EXSA_EINVAL, "chat template: messages must be a JSON array"), NULL;
    for (size_t i = 0; i < json_array_size(messages); i++) {
        const json_t *m = json_array_get(messages, i);
        if (!json_is_object(m))
            return exsa_err_set(err, EXSA_EINVAL, "chat template: messages[%zu] is not an object", i), NULL;
        if (!json_is_string(json_object_get(m, "role")))
            return exsa_err_set(err, EXSA_EINVAL, "chat template: messages[%zu].role missing or not a string", i),
                   NULL;
    }
    exsa_chat_opts def = {0};
    if (!opts)
        opts = &def;
    if (opts->tools && !json_is_array(opts->tools))
        return exsa_err_set(err, EXSA_EINVAL, "chat template: tools must be a JSON array"), NULL;
    if (opts->extra && !json_is_object(opts->extra))
        return exsa_err_set(err, EXSA_EINVAL, "chat template: extra variables must be a JSON object"), NULL;
    json_t *vars = json_object();
    if (!vars)
        return exsa_err_set(err, EXSA_ENOMEM, "chat template: out of memory"), NULL;
    /* extra first, so that the fixed variables below win on a clash */
    int bad = 0;
    if (opts->extra)
        bad |= json_object_update(vars, (json_t *)opts->extra);
    bad |= json_object_set(vars, "messages", (json_t *)messages);
    bad |= json_object_set_new(vars, "add_generation_prompt", json_boolean(opts->add_generation_prompt));
    bad |= json_object_set_new(vars, "bos_token", json_string(opts->bos_token ? opts->bos_token : ""));
    bad |= json_object_set_new(vars, "eos_token", json_string(opts->eos_token ? opts->eos_token : ""));
    if (opts->tools)
        bad |= json_object_set(vars, "tools", (json_t *)opts->tools);
    if (bad) {
        json_decref(vars);
        return exsa_err_set(err, EXSA_EINVAL, "chat template: bad variables (invalid UTF-8 in a token?)"), NULL;
    }
    exsa_jinja_opts jo = {.now = opts->now};
    char *out = NULL;
    int rc = exsa_jinja_render(t->tpl, vars, &jo, &out, NULL, err);
    json_decref(vars);
    if (rc) {
        exsa_err_prefix(err, "chat template");
        return NULL;
    }
    return out;
}

/* Reads a whole template file (bounded: templates are a few KiB). */
static char *read_template_file(const char *path, size_t *len, exsa_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        exsa_err_set(err, EXSA_EIO, "chat template: '%s' is neither a built-in name nor a "
                                    "readable file", path);
        return NULL;
    }
    const size_t max = 1 << 20;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad || n > max) {
        free(buf);
        exsa_err_set(err, bad ? EXSA_EIO : EXSA_EINVAL, "chat template: cannot read '%s'%s",
                     path, n > max ? " (larger than 1 MiB)" : "");
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static const char BUILTIN_GEMMA[] = "gemma";

/* The built-in template for a GGUF without one: Gemma files (base models
 * such as gemma-3-270m carry no template) get Gemma's turn format, which
 * their instruction-tuned siblings were trained on; anything else ChatML. */
static const char *builtin_for_arch(const exsa_gguf *g)
{
    const char *arch;
    size_t n;
    if (g && exsa_gguf_get_str(g, "general.architecture", &arch, &n, NULL) == 0 && n >= 5 &&
        memcmp(arch, "gemma", 5) == 0)
        return BUILTIN_GEMMA;
    return "chatml";
}

exsa_chat_template *exsa_chat_template_for_model(const exsa_gguf *g, const char *override,
                                                 const char **source_desc, exsa_err *err)
{
    const char *desc = "builtin chatml";
    exsa_chat_template *t = NULL;
    if (override && exsa_chat_template_builtin_source(override)) {
        desc = "builtin";
        t = exsa_chat_template_builtin(override, err);
    } else if (override) {
        size_t len;
        char *src = read_template_file(override, &len, err);
        if (!src)
            return NULL;
        desc = "file";
        t = exsa_chat_template_create(src, len, err);
        free(src);
    } else {
        const char *src;
        size_t len;
        if (g && exsa_gguf_get_str(g, "tokenizer.chat_template", &src, &len, NULL) == 0) {
            desc = "gguf";
            t = exsa_chat_template_create(src, len, err);
        } else {
            const char *name = builtin_for_arch(g);
            desc = name == BUILTIN_GEMMA ? "builtin gemma (no template in the GGUF)" : "builtin chatml";
            t = exsa_chat_template_builtin(name, err);
        }
    }
    if (t && source_desc)
        *source_desc = desc;
    return t;
}
