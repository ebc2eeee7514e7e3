/* Command configuration: flags > environment > .env file > defaults.
 *
 * A command describes its options in a table of exsa_config_opt; one call to
 * exsa_config_load resolves every option's value from, in order:
 *   1. the command line: "--flag value", "--flag=value", "-p value"; a
 *      boolean option (metavar NULL) takes no value: "--flag" sets it,
 *      "--no-flag" clears it ("--flag=false" also works);
 *   2. the environment: EXSA_<NAME>, then the seed's plain <NAME>;
 *   3. the .env file: the same two names, EXSA_ first;
 *   4. the option's default.
 * Empty values in the environment or .env count as unset, so "PORT=" in a
 * .env file does not shadow the default. A value is kept as text; the typed
 * getters parse and range-check it and name the flag, where the value came
 * from and the bad text on error ("--port (env PORT): 'abc' is not an
 * integer").
 *
 * .env syntax: KEY=VALUE lines; blank lines and lines starting with '#' are
 * skipped; an optional leading "export "; spaces around '=' and the value are
 * trimmed; a value in single quotes is literal, one in double quotes knows
 * \n \t \" \\ escapes; an unquoted value ends at " #" (comment). Keys that no
 * option reads are ignored. The file is never put into the environment.
 *
 * The config copies everything it needs: the option table and argv may go
 * away after load. Read-only after load, so any thread may read it.
 */
#ifndef EXSA_UTIL_CONFIG_H
#define EXSA_UTIL_CONFIG_H

#include <stdio.h>

#include "exsa.h"

typedef struct exsa_config_opt {
    const char *flag;       /* "--port" (required, starts with "--") */
    const char *short_flag; /* "-p" or NULL */
    /* The seed's variable name ("PORT") or NULL. EXSA_PORT is always read
     * too and wins over PORT; with env NULL the EXSA_ name is derived from
     * the flag: --api-key -> EXSA_API_KEY. */
    const char *env;
    const char *def;        /* default text or NULL */
    /* "N", "PATH", ...; NULL for a boolean option, which takes no value on
     * the command line and reads 1/0/true/false/yes/no/on/off elsewhere. */
    const char *metavar;
    const char *help;
} exsa_config_opt;

typedef struct exsa_config exsa_config;

/* argv[0..argc) are the arguments after the subcommand. env_file NULL reads
 * "./.env" if it exists; a named env_file must exist (EXSA_EIO). EXSA_EINVAL
 * naming the argument for an unknown option, a missing value, an option given
 * twice, a stray positional argument, or a malformed .env line (naming
 * file:line); also for a bad option table. */
exsa_config *exsa_config_load(const exsa_config_opt *opts, int n_opts, int argc, char **argv,
                              const char *env_file, exsa_err *err);
void exsa_config_free(exsa_config *c);

/* flag: "--port" (or "port"). The value, or NULL when unset with no default
 * (or no such option). Valid until exsa_config_free. */
const char *exsa_config_get(const exsa_config *c, const char *flag);
/* Where the value came from: "flag", "env EXSA_PORT", "env PORT",
 * ".env EXSA_PORT", ".env PORT", "default" or "unset". */
const char *exsa_config_source(const exsa_config *c, const char *flag);

/* Whole decimal number in [min, max]; EXSA_EINVAL naming the flag, the source
 * and the text for non-numbers, trailing junk, empty text, out of range or an
 * unset option (*out untouched then). */
int exsa_config_get_int(const exsa_config *c, const char *flag, long long min, long long max,
                        long long *out, exsa_err *err);
/* Finite decimal number in [min, max]; errors as for get_int. */
int exsa_config_get_double(const exsa_config *c, const char *flag, double min, double max,
                           double *out, exsa_err *err);
/* 1/0/true/false/yes/no/on/off, any case. An unset option is 0. */
int exsa_config_get_bool(const exsa_config *c, const char *flag, int *out, exsa_err *err);

/* One entry per option ("  -p, --port N", then help wrapped at 80 columns,
 * then "[env: EXSA_PORT, PORT] [default: 8080]"). */
void exsa_config_print_help(const exsa_config_opt *opts, int n_opts, FILE *out);

#endif
