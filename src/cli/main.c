/* exsa: one binary for every command. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "util/log.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"serve", exsa_cmd_serve, "serve models over HTTP (OpenAI-compatible and native API)"},
    {"run", exsa_cmd_run, "generate tokens from a prompt"},
    {"chat", exsa_cmd_chat, "talk with a model in the terminal"},
    {"tokenize", exsa_cmd_tokenize, "print the token ids of a text"},
    {"template", exsa_cmd_template, "render a chat template for a list of messages"},
    {"info", exsa_cmd_info, "show a model's metadata, tensors and memory needs"},
    {"quantize", exsa_cmd_quantize, "convert a model's weights to another format"},
    {"perplexity", exsa_cmd_perplexity, "measure a model's perplexity over a text file"},
    {"bench", exsa_cmd_bench, "measure prompt processing and generation speed"},
    {"gen-model", exsa_cmd_gen_model, "write a random-weight model of any shape"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: exsa <command> [options]   (exsa <command> --help for details)\n"
               "       exsa --version\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        printf("exsa %s\n", EXSA_VERSION); /* from CMakeLists.txt's project VERSION */
        return 0;
    }
    /* The one-shot commands print their own results on stdout and errors
     * as one line; the engine's informational log (the CPU fallback of a
     * CUDA build, ...) would only clutter that. EXSA_LOG_LEVEL brings it
     * back; serve configures its own (--log-level). */
    if (strcmp(argv[1], "serve") != 0) {
        const char *lv = getenv("EXSA_LOG_LEVEL");
        exsa_log_configure(lv && *lv ? lv : "warn", "text", NULL);
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "exsa: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 1;
}
