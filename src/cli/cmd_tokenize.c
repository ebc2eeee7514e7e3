#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "gguf/gguf.h"
#include "text/tokenizer.h"
#include "text/vocab.h"

static const char *usage =
    "usage: exsa tokenize -m MODEL [--bos] [--special] [--pieces] [TEXT]\n"
    "Tokenizes TEXT (or standard input) and prints the ids as a JSON array on one\n"
    "line. --bos adds the model's BOS/EOS as it would for a prompt; --special\n"
    "matches special-token strings in the text; --pieces prints [id, \"piece\"]\n"
    "pairs. Works on vocabulary-only GGUF files.\n";

static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t k = fread(buf + n, 1, cap - n, stdin);
        n += k;
        if (k == 0)
            break;
        if (n == cap) {
            char *p = cap > (SIZE_MAX / 2) ? NULL : realloc(buf, cap *= 2);
            if (!p) {
                free(buf);
                return NULL;
            }
            buf = p;
        }
    }
    *len = n;
    return buf;
}

/* JSON string body with the escapes JSON requires; bytes are printed as is
 * (the pieces of a byte-level vocab may be partial UTF-8 characters). */
static void json_str(const char *s, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

int exsa_cmd_tokenize(int argc, char **argv)
{
    const char *cmd = "tokenize", *path = exsa_cli_env_model(), *text = NULL;
    int flags = 0, pieces = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(path = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--bos")) {
            flags |= EXSA_TOK_ADD_SPECIAL;
        } else if (!strcmp(a, "--special")) {
            flags |= EXSA_TOK_PARSE_SPECIAL;
        } else if (!strcmp(a, "--pieces")) {
            pieces = 1;
        } else if (a[0] == '-' && a[1]) {
            return exsa_cli_fail(cmd, "unknown option '%s' (see --help)", a);
        } else if (!text) {
            text = a;
        } else {
            return exsa_cli_fail(cmd, "unexpected argument '%s' (quote the text)", a);
        }
    }
    if (!path)
        return exsa_cli_fail(cmd, "missing -m MODEL (see --help)");
    exsa_err err = {0};
    int rc = 1;
    char *owned = NULL;
    size_t len;
    int32_t *ids = NULL;
    exsa_vocab *v = NULL;
    exsa_tokenizer *t = NULL;
    exsa_gguf *g = exsa_gguf_open(path, &err);
    if (!g)
        return exsa_cli_fail(cmd, "%s", err.msg);
    if (!(v = exsa_vocab_load(g, &err)) || !(t = exsa_tokenizer_create(v, &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    if (text) {
        len = strlen(text);
    } else if (!(text = owned = read_stdin(&len))) {
        exsa_cli_fail(cmd, "cannot read standard input");
        goto done;
    }
    int64_t n = exsa_tokenize(t, text, len, flags, NULL, 0, &err);
    if (n < 0 || !(ids = malloc((size_t)(n ? n : 1) * sizeof *ids)) ||
        (n = exsa_tokenize(t, text, len, flags, ids, n, &err)) < 0) {
        exsa_cli_fail(cmd, "%s", n < 0 ? err.msg : "out of memory");
        goto done;
    }
    putchar('[');
    for (int64_t i = 0; i < n; i++) {
        if (pieces) {
            char piece[256];
            int k = exsa_vocab_token_to_piece(v, ids[i], piece, sizeof piece, 1);
            printf("%s[%d, ", i ? ", " : "", ids[i]);
            json_str(piece, k < 0 ? 0 : (size_t)k > sizeof piece ? sizeof piece : (size_t)k);
            putchar(']');
        } else {
            printf("%s%d", i ? ", " : "", ids[i]);
        }
    }
    printf("]\n");
    rc = 0;
done:
    free(ids);
    free(owned);
    exsa_tokenizer_free(t);
    exsa_vocab_free(v);
    exsa_gguf_close(g);
    return rc;
}
