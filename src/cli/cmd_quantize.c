#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "model/model_quantize.h"
#include "util/timer.h"

int exsa_cmd_quantize(int argc, char **argv)
{
    const char *cmd = "quantize", *pos[3] = {0};
    int n_pos = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: exsa quantize IN.gguf OUT.gguf TYPE [-t THREADS]\n"
                   "TYPE: %s\n"
                   "Keeps all metadata; norms and biases stay F32. The _S/_M mixes keep\n"
                   "output and some attn_v/ffn_down layers at higher precision.\n",
                   exsa_ftype_names());
            return 0;
        } else if (!strcmp(a, "-t")) {
            int64_t n;
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) || exsa_cli_int(cmd, a, v, 1, 1024, &n))
                return 1;
            threads = (int)n;
        } else if (a[0] == '-') {
            return exsa_cli_fail(cmd, "unknown option '%s' (see --help)", a);
        } else if (n_pos < 3) {
            pos[n_pos++] = a;
        } else {
            return exsa_cli_fail(cmd, "unexpected argument '%s'", a);
        }
    }
    if (n_pos != 3)
        return exsa_cli_fail(cmd, "needs IN.gguf OUT.gguf TYPE (see --help)");
    if (!strcmp(pos[0], pos[1]))
        return exsa_cli_fail(cmd, "input and output are the same file");
    exsa_err err = {0};
    exsa_ftype ft;
    if (exsa_ftype_parse(pos[2], &ft, &err))
        return exsa_cli_fail(cmd, "%s", err.msg);
    int64_t t0 = exsa_time_ns();
    if (exsa_model_quantize(pos[0], pos[1], &ft, threads, exsa_cli_progress, NULL, &err)) {
        remove(pos[1]);
        return exsa_cli_fail(cmd, "%s", err.msg);
    }
    fprintf(stderr, "quantized %s -> %s (%s) in %.2f s\n", pos[0], pos[1], ft.name,
            (double)(exsa_time_ns() - t0) / 1e9);
    return 0;
}
