/* Sampling settings by name, shared by `run` flags (--temp 0.7) and
 * `chat`'s /set command (/set temp 0.7). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

typedef enum { F_FLOAT, F_INT, F_SEED, F_BIAS } kind_t;

static const struct {
    const char *name;
    kind_t kind;
    size_t off;
    double lo, hi;
} settings[] = {
    {"temp", F_FLOAT, offsetof(exsa_sampling_params, temperature), 0, 100},
    {"top-k", F_INT, offsetof(exsa_sampling_params, top_k), 0, 1 << 24},
    {"top-p", F_FLOAT, offsetof(exsa_sampling_params, top_p), 0, 1},
    {"min-p", F_FLOAT, offsetof(exsa_sampling_params, min_p), 0, 1},
    {"typical", F_FLOAT, offsetof(exsa_sampling_params, typical_p), 0, 1},
    {"tfs", F_FLOAT, offsetof(exsa_sampling_params, tfs_z), 0, 1},
    {"repeat-penalty", F_FLOAT, offsetof(exsa_sampling_params, repeat_penalty), 0, 100},
    {"repeat-last-n", F_INT, offsetof(exsa_sampling_params, repeat_last_n), -1, 1 << 24},
    {"presence-penalty", F_FLOAT, offsetof(exsa_sampling_params, presence_penalty), -2, 2},
    {"frequency-penalty", F_FLOAT, offsetof(exsa_sampling_params, frequency_penalty), -2, 2},
    {"mirostat", F_INT, offsetof(exsa_sampling_params, mirostat), 0, 2},
    {"mirostat-ent", F_FLOAT, offsetof(exsa_sampling_params, mirostat_tau), 0, 100},
    {"mirostat-lr", F_FLOAT, offsetof(exsa_sampling_params, mirostat_eta), 0, 1},
    {"seed", F_SEED, offsetof(exsa_sampling_params, seed), 0, 0},
    {"logit-bias", F_BIAS, 0, 0, 0},
};

void exsa_cli_sampling_init(exsa_cli_sampling *s)
{
    memset(s, 0, sizeof *s);
    exsa_sampling_params_default(&s->sp);
    s->sp.logit_bias = s->bias;
}

int exsa_cli_sampling_is(const char *name)
{
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++)
        if (!strcmp(name, settings[i].name))
            return 1;
    return 0;
}

int exsa_cli_sampling_set(const char *cmd, exsa_cli_sampling *s, const char *name,
                          const char *value)
{
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        if (strcmp(name, settings[i].name))
            continue;
        char flag[40] = "--";
        strncat(flag, name, sizeof flag - 3);
        char *dst = (char *)&s->sp + settings[i].off;
        double f;
        int64_t n;
        switch (settings[i].kind) {
        case F_FLOAT:
            if (exsa_cli_float(cmd, flag, value, settings[i].lo, settings[i].hi, &f))
                return 1;
            *(float *)dst = (float)f;
            return 0;
        case F_INT:
            if (exsa_cli_int(cmd, flag, value, (int64_t)settings[i].lo, (int64_t)settings[i].hi,
                             &n))
                return 1;
            *(int32_t *)dst = (int32_t)n;
            return 0;
        case F_SEED:
            if (exsa_cli_int(cmd, flag, value, 0, INT64_MAX, &n))
                return 1;
            *(uint64_t *)dst = (uint64_t)n;
            return 0;
        case F_BIAS: {
            char *end;
            long id = strtol(value, &end, 10);
            double b = (*end == '+' || *end == '-') ? strtod(end, &end) : NAN;
            if (end == value || *end || isnan(b) || id < 0 || id > INT32_MAX)
                return exsa_cli_fail(cmd, "--logit-bias expects ID+BIAS or ID-BIAS, got '%s'",
                                     value);
            if (s->sp.n_logit_bias == EXSA_CLI_MAX_BIAS)
                return exsa_cli_fail(cmd, "at most %d --logit-bias flags", EXSA_CLI_MAX_BIAS);
            s->bias[s->sp.n_logit_bias++] = (exsa_logit_bias){(int32_t)id, (float)b};
            return 0;
        }
        }
    }
    return exsa_cli_fail(cmd, "unknown sampling setting '%s'", name);
}

const char *exsa_cli_sampling_help(void)
{
    return "sampling: --temp F (0.8; 0 = greedy) --top-k N (40) --top-p F (0.95) --min-p F "
           "(0.05)\n"
           "  --typical F (1) --tfs F (1) --repeat-penalty F (1) --repeat-last-n N (64)\n"
           "  --presence-penalty F (0) --frequency-penalty F (0) --mirostat 0|1|2\n"
           "  --mirostat-ent TAU (5) --mirostat-lr ETA (0.1) --seed N (random)\n"
           "  --logit-bias ID(+|-)BIAS (repeatable, e.g. 15043+1 or 15043-inf)\n";
}
