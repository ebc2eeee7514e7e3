#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "gguf/gguf.h"
#include "text/chat_template.h"
#include "text/vocab.h"

static const char *usage =
    "usage: exsa template [-m MODEL] [--template FILE|NAME] [--no-generation-prompt]\n"
    "                     MESSAGES.json\n"
    "Prints the prompt the model's chat template makes of the messages, with the\n"
    "generation prompt added. MESSAGES.json holds an OpenAI-style array of messages\n"
    "or a request object with \"messages\" (and optionally \"tools\"); '-' reads\n"
    "standard input. The template is the GGUF's tokenizer.chat_template unless\n"
    "--template names a built-in (chatml, llama2, llama3, mistral, gemma, phi3, qwen,\n"
    "deepseek, ...) or a Jinja file.\n";

/* "<s>" etc. of a model, copied NUL-terminated into buf. */
static const char *token_text(const exsa_vocab *v, int32_t id, char *buf, size_t cap)
{
    if (!v || id < 0)
        return "";
    size_t len;
    const char *s = exsa_vocab_token_str(v, id, &len);
    snprintf(buf, cap, "%.*s", (int)(len < cap ? len : cap - 1), s);
    return buf;
}

int exsa_cmd_template(int argc, char **argv)
{
    const char *cmd = "template", *path = exsa_cli_env_model(), *tpl = NULL, *msgs = NULL;
    int gen_prompt = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(path = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--template") || !strcmp(a, "--chat-template")) {
            if (!(tpl = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--no-generation-prompt")) {
            gen_prompt = 0;
        } else if (a[0] == '-' && a[1]) {
            return exsa_cli_fail(cmd, "unknown option '%s' (see --help)", a);
        } else if (!msgs) {
            msgs = a;
        } else {
            return exsa_cli_fail(cmd, "unexpected argument '%s'", a);
        }
    }
    if (!msgs)
        return exsa_cli_fail(cmd, "missing MESSAGES.json (see --help)");
    if (!path && !tpl)
        return exsa_cli_fail(cmd, "give -m MODEL or --template FILE|NAME");
    int rc = 1;
    exsa_err err = {0};
    exsa_gguf *g = NULL;
    exsa_vocab *v = NULL;
    exsa_chat_template *t = NULL;
    char *out = NULL;
    json_error_t jerr;
    json_t *doc = !strcmp(msgs, "-") ? json_loadf(stdin, 0, &jerr) : json_load_file(msgs, 0, &jerr);
    if (!doc)
        return exsa_cli_fail(cmd, "%s: line %d: %s", msgs, jerr.line, jerr.text);
    json_t *messages = json_is_array(doc) ? doc : json_object_get(doc, "messages");
    json_t *tools = json_is_object(doc) ? json_object_get(doc, "tools") : NULL;
    if (!json_is_array(messages)) {
        exsa_cli_fail(cmd, "%s: expected an array of messages or {\"messages\": [...]}", msgs);
        goto done;
    }
    if (path) {
        if (!(g = exsa_gguf_open(path, &err))) {
            exsa_cli_fail(cmd, "%s", err.msg);
            goto done;
        }
        v = exsa_vocab_load(g, NULL);
    }
    if (!(t = exsa_chat_template_for_model(g, tpl, NULL, &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    char bos[128], eos[128];
    exsa_chat_opts o = {
        .add_generation_prompt = gen_prompt,
        .bos_token = token_text(v, v ? exsa_vocab_bos(v) : -1, bos, sizeof bos),
        .eos_token = token_text(v, v ? exsa_vocab_eos(v) : -1, eos, sizeof eos),
        .tools = json_is_array(tools) ? tools : NULL,
    };
    if (!(out = exsa_chat_template_render(t, messages, &o, &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    fputs(out, stdout);
    rc = 0;
done:
    free(out);
    exsa_chat_template_destroy(t);
    exsa_vocab_free(v);
    exsa_gguf_close(g);
    json_decref(doc);
    return rc;
}
