/* Configuration (util/config.h) and logging (util/log.h).
 *
 * Config: every source of the precedence chain is exercised by really setting
 * it (argv, setenv, a temporary .env file, the default) and the reported
 * source checked; parse and conversion errors must name what is at fault.
 * Log: lines are captured through a temporary file and checked with jansson
 * (an independent JSON parser) and by hand for the text form.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "exsa.h"
#include "util/config.h"
#include "util/log.h"

static char g_dir[64];

static const exsa_config_opt k_opts[] = {
    {"--port", "-p", "PORT", "8080", "N", "TCP port to listen on"},
    {"--host", NULL, "HOST", "127.0.0.1", "ADDR", "Address to bind"},
    {"--api-key", NULL, NULL, NULL, "KEY", "Require this bearer key"},
    {"--threads", "-t", "CPU_THREADS", NULL, "N", "Worker threads"},
    {"--verbose", "-v", NULL, NULL, NULL, "More logging"},
    {"--speculative", NULL, "ENABLE_SPECULATIVE", "false", NULL, "Speculative decoding"},
    {"--temp", NULL, NULL, "0.8", "T", "Sampling temperature"},
};
#define N_OPTS ((int)(sizeof k_opts / sizeof k_opts[0]))

/* Every variable any test sets: cleared before each test so the caller's
 * environment (a real PORT, say) cannot leak in. */
static const char *const k_vars[] = {
    "PORT", "EXSA_PORT", "HOST", "EXSA_HOST", "EXSA_API_KEY", "CPU_THREADS", "EXSA_CPU_THREADS",
    "EXSA_VERBOSE", "ENABLE_SPECULATIVE", "EXSA_ENABLE_SPECULATIVE", "EXSA_TEMP", "K1", "EXSA_K1",
};

static int clear_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof k_vars / sizeof k_vars[0]; i++)
        unsetenv(k_vars[i]);
    return 0;
}

/* Writes a temp file and returns its path (static buffer per slot). */
static const char *write_file(int slot, const char *text)
{
    static char paths[8][128];
    snprintf(paths[slot], sizeof paths[slot], "%s/env%d", g_dir, slot);
    FILE *f = fopen(paths[slot], "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
    return paths[slot];
}

static exsa_config *load(int argc, const char **argv, const char *env_file)
{
    exsa_err err = {0};
    exsa_config *c = exsa_config_load(k_opts, N_OPTS, argc, (char **)argv, env_file, &err);
    if (!c)
        print_error("config: %s\n", err.msg);
    assert_non_null(c);
    return c;
}

/* Loads expecting failure; returns the message. */
static const char *load_fail(int argc, const char **argv, const char *env_file, int code)
{
    static exsa_err err;
    memset(&err, 0, sizeof err);
    exsa_config *c = exsa_config_load(k_opts, N_OPTS, argc, (char **)argv, env_file, &err);
    assert_null(c);
    assert_int_equal(err.code, code);
    return err.msg;
}

static void expect(const exsa_config *c, const char *flag, const char *value, const char *source)
{
    const char *v = exsa_config_get(c, flag);
    if (value) {
        assert_non_null(v);
        assert_string_equal(v, value);
    } else {
        assert_null(v);
    }
    assert_string_equal(exsa_config_source(c, flag), source);
}

static void test_precedence(void **state)
{
    (void)state;
    const char *empty = write_file(0, "");
    exsa_config *c = load(0, NULL, empty);
    expect(c, "--port", "8080", "default");
    expect(c, "--api-key", NULL, "unset");
    expect(c, "port", "8080", "default"); /* the bare name works too */
    exsa_config_free(c);

    const char *plain = write_file(1, "PORT=7001\n");
    c = load(0, NULL, plain);
    expect(c, "--port", "7001", ".env PORT");
    exsa_config_free(c);

    const char *both = write_file(2, "EXSA_PORT=7002\nPORT=7001\n");
    c = load(0, NULL, both);
    expect(c, "--port", "7002", ".env EXSA_PORT");
    exsa_config_free(c);

    setenv("PORT", "7003", 1);
    c = load(0, NULL, both);
    expect(c, "--port", "7003", "env PORT");
    exsa_config_free(c);

    setenv("EXSA_PORT", "7004", 1);
    c = load(0, NULL, both);
    expect(c, "--port", "7004", "env EXSA_PORT");
    exsa_config_free(c);

    const char *argv[] = {"--port", "7005"};
    c = load(2, argv, both);
    expect(c, "--port", "7005", "flag");
    /* Other options still resolve independently. */
    expect(c, "--host", "127.0.0.1", "default");
    exsa_config_free(c);

    /* An empty variable does not shadow the next source. */
    setenv("EXSA_PORT", "", 1);
    unsetenv("PORT");
    c = load(0, NULL, both);
    expect(c, "--port", "7002", ".env EXSA_PORT");
    exsa_config_free(c);

    /* The EXSA_ name derived from the flag when env is NULL. */
    setenv("EXSA_API_KEY", "sk-1", 1);
    c = load(0, NULL, empty);
    expect(c, "--api-key", "sk-1", "env EXSA_API_KEY");
    exsa_config_free(c);
    const char *dk = write_file(3, "EXSA_API_KEY=sk-2\nAPI_KEY=nope\n");
    unsetenv("EXSA_API_KEY");
    c = load(0, NULL, dk);
    expect(c, "--api-key", "sk-2", ".env EXSA_API_KEY");
    exsa_config_free(c);
    /* With no EXSA_ form the plain API_KEY is not an alias (env NULL). */
    const char *pk = write_file(4, "API_KEY=nope\n");
    c = load(0, NULL, pk);
    expect(c, "--api-key", NULL, "unset");
    exsa_config_free(c);
}

/* env_file NULL reads ./.env when present and is fine without one. */
static void test_default_env_file(void **state)
{
    (void)state;
    char cwd[1024];
    assert_non_null(getcwd(cwd, sizeof cwd));
    char sub[128];
    snprintf(sub, sizeof sub, "%s/cwd", g_dir);
    mkdir(sub, 0700);
    assert_int_equal(chdir(sub), 0);
    exsa_config *c = load(0, NULL, NULL);
    expect(c, "--host", "127.0.0.1", "default");
    exsa_config_free(c);
    FILE *f = fopen(".env", "w");
    assert_non_null(f);
    fputs("HOST=0.0.0.0\n", f);
    fclose(f);
    c = load(0, NULL, NULL);
    expect(c, "--host", "0.0.0.0", ".env HOST");
    exsa_config_free(c);
    unlink(".env");
    assert_int_equal(chdir(cwd), 0);
    rmdir(sub);

    char missing[128];
    snprintf(missing, sizeof missing, "%s/no-such.env", g_dir);
    const char *msg = load_fail(0, NULL, missing, EXSA_EIO);
    assert_non_null(strstr(msg, "no-such.env"));
}

static void test_arg_forms(void **state)
{
    (void)state;
    const char *empty = write_file(0, "");
    const char *argv[] = {"--port=81", "--host", "::1", "-t", "3", "--verbose",
                          "--speculative=yes", "--api-key=a=b"};
    exsa_config *c = load(8, argv, empty);
    expect(c, "--port", "81", "flag");
    expect(c, "--host", "::1", "flag");
    expect(c, "--threads", "3", "flag");
    expect(c, "--api-key", "a=b", "flag"); /* only the first '=' splits */
    int b = -1;
    assert_int_equal(exsa_config_get_bool(c, "--verbose", &b, NULL), 0);
    assert_int_equal(b, 1);
    assert_int_equal(exsa_config_get_bool(c, "--speculative", &b, NULL), 0);
    assert_int_equal(b, 1);
    exsa_config_free(c);

    /* --no-flag clears a boolean that env or default set. */
    setenv("ENABLE_SPECULATIVE", "on", 1);
    c = load(0, NULL, empty);
    assert_int_equal(exsa_config_get_bool(c, "--speculative", &b, NULL), 0);
    assert_int_equal(b, 1);
    assert_string_equal(exsa_config_source(c, "--speculative"), "env ENABLE_SPECULATIVE");
    exsa_config_free(c);
    const char *argv2[] = {"--no-speculative", "-p", "-1", "-v"};
    c = load(4, argv2, empty);
    assert_int_equal(exsa_config_get_bool(c, "--speculative", &b, NULL), 0);
    assert_int_equal(b, 0);
    assert_string_equal(exsa_config_source(c, "--speculative"), "flag");
    expect(c, "--port", "-1", "flag"); /* a negative number is a value */
    assert_int_equal(exsa_config_get_bool(c, "--verbose", &b, NULL), 0);
    assert_int_equal(b, 1);
    exsa_config_free(c);

    /* A boolean unset with no default reads as 0. */
    c = load(0, NULL, empty);
    b = -1;
    assert_int_equal(exsa_config_get_bool(c, "--verbose", &b, NULL), 0);
    assert_int_equal(b, 0);
    exsa_config_free(c);
}

static void test_arg_errors(void **state)
{
    (void)state;
    const char *empty = write_file(0, "");
    const char *msg;
    const char *a1[] = {"--bogus", "1"};
    msg = load_fail(2, a1, empty, EXSA_EINVAL);
    assert_non_null(strstr(msg, "--bogus"));
    /* The value of an unknown --x=value is not echoed (it may be a key). */
    const char *a2[] = {"--api_key=sk-secret"};
    msg = load_fail(1, a2, empty, EXSA_EINVAL);
    assert_non_null(strstr(msg, "--api_key"));
    assert_null(strstr(msg, "sk-secret"));
    const char *a3[] = {"--host", "x", "--port"};
    msg = load_fail(3, a3, empty, EXSA_EINVAL);
    assert_non_null(strstr(msg, "--port"));
    assert_non_null(strstr(msg, "value"));
    const char *a4[] = {"--port", "--host", "x"};
    msg = load_fail(3, a4, empty, EXSA_EINVAL);
    assert_non_null(strstr(msg, "--port"));
    assert_non_null(strstr(msg, "value"));
    const char *a5[] = {"--port", "1", "-p", "2"};
    msg = load_fail(4, a5, empty, EXSA_EINVAL);
    assert_non_null(strstr(msg, "--port"));
    assert_non_null(strstr(msg, "more than once"));
    const char *a6[] = {"--verbose", "--no-verbose"};
    msg = load_fail(2, a6, empty, EXSA_EINVAL);
    assert_non_null(strstr(msg, "--verbose"));
    const char *a7[] = {"--no-port"}; /* not a boolean */
    msg = load_fail(1, a7, empty, EXSA_EINVAL);
    assert_non_null(strstr(msg, "--no-port"));
    const char *a8[] = {"--no-verbose=1"};
    msg = load_fail(1, a8, empty, EXSA_EINVAL);
    assert_non_null(strstr(msg, "--no-verbose"));
    const char *a9[] = {"model.gguf"};
    msg = load_fail(1, a9, empty, EXSA_EINVAL);
    assert_non_null(strstr(msg, "model.gguf"));
    const char *a10[] = {"-x"};
    msg = load_fail(1, a10, empty, EXSA_EINVAL);
    assert_non_null(strstr(msg, "-x"));
    const char *a11[] = {"-"};
    msg = load_fail(1, a11, empty, EXSA_EINVAL);

    /* A bad table is refused, not crashed on. */
    exsa_err err = {0};
    exsa_config_opt bad[] = {{"port", NULL, NULL, NULL, "N", ""}};
    assert_null(exsa_config_load(bad, 1, 0, NULL, empty, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    exsa_config_opt dup[] = {{"--a", NULL, NULL, NULL, "N", ""}, {"--a", NULL, NULL, NULL, NULL, ""}};
    assert_null(exsa_config_load(dup, 2, 0, NULL, empty, &err));
    assert_non_null(strstr(err.msg, "--a"));
}

static void test_env_file_syntax(void **state)
{
    (void)state;
    static const exsa_config_opt opts[] = {
        {"--a", NULL, "A", NULL, "X", ""}, {"--b", NULL, "B", NULL, "X", ""},
        {"--c", NULL, "C", NULL, "X", ""}, {"--d", NULL, "D", NULL, "X", ""},
        {"--e", NULL, "E", NULL, "X", ""}, {"--f", NULL, "F", NULL, "X", ""},
        {"--g", NULL, "G", NULL, "X", ""}, {"--h", NULL, "H", NULL, "X", ""},
        {"--i", NULL, "I", NULL, "X", ""}, {"--j", NULL, "J", NULL, "X", "j"},
        {"--k", NULL, "K", "dflt", "X", ""},
    };
    const char *vars[] = {"A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K"};
    for (int i = 0; i < 11; i++) {
        char ex[16];
        snprintf(ex, sizeof ex, "EXSA_%s", vars[i]);
        unsetenv(vars[i]);
        unsetenv(ex);
    }
    const char *path = write_file(5,
        "# a comment\n"
        "\n"
        "   \t\n"
        "A=plain value\n"
        "export B=exported\n"
        "C = 'single # not a comment \\n'  # trailing comment\n"
        "D=\"double \\\"q\\\" \\\\ line\\nnext\"\n"
        "E=value # comment\n"
        "F=#not-a-comment\n"
        "  G  =  spaced  \r\n"
        "H=first\n"
        "H=second\n"
        "I=''\n"
        "J=a=b=c\n"
        "K=\n"
        "UNUSED=whatever\n");
    exsa_err err = {0};
    exsa_config *c = exsa_config_load(opts, 11, 0, NULL, path, &err);
    if (!c)
        print_error("%s\n", err.msg);
    assert_non_null(c);
    assert_string_equal(exsa_config_get(c, "--a"), "plain value");
    assert_string_equal(exsa_config_get(c, "--b"), "exported");
    assert_string_equal(exsa_config_get(c, "--c"), "single # not a comment \\n");
    assert_string_equal(exsa_config_get(c, "--d"), "double \"q\" \\ line\nnext");
    assert_string_equal(exsa_config_get(c, "--e"), "value");
    assert_string_equal(exsa_config_get(c, "--f"), "#not-a-comment");
    assert_string_equal(exsa_config_get(c, "--g"), "spaced");
    assert_string_equal(exsa_config_get(c, "--h"), "second");
    assert_null(exsa_config_get(c, "--i")); /* empty counts as unset */
    assert_string_equal(exsa_config_get(c, "--j"), "a=b=c");
    expect(c, "--k", "dflt", "default");
    assert_string_equal(exsa_config_source(c, "--a"), ".env A");
    exsa_config_free(c);

    /* Malformed lines: the message names file:line. */
    static const struct {
        const char *text;
        int line;
    } bad[] = {
        {"A=1\n\nNOEQUALS\n", 3},
        {"# c\n1BAD=x\n", 2},
        {"A=\"unterminated\n", 1},
        {"A=1\nB='open\n", 2},
        {"A=\"x\" junk\n", 1},
        {"=value\n", 1},
        {"export\n", 1},
        {"A B=1\n", 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *p = write_file(6, bad[i].text);
        char want[200];
        snprintf(want, sizeof want, "%s:%d:", p, bad[i].line);
        memset(&err, 0, sizeof err);
        assert_null(exsa_config_load(opts, 11, 0, NULL, p, &err));
        assert_int_equal(err.code, EXSA_EINVAL);
        if (!strstr(err.msg, want))
            print_error("case %zu: '%s' lacks '%s'\n", i, err.msg, want);
        assert_non_null(strstr(err.msg, want));
    }
    /* A NUL byte inside a line. */
    char p7[128];
    snprintf(p7, sizeof p7, "%s/env7", g_dir);
    FILE *f = fopen(p7, "wb");
    assert_non_null(f);
    fwrite("A=1\nB=x\0y\n", 1, 10, f);
    fclose(f);
    assert_null(exsa_config_load(opts, 11, 0, NULL, p7, &err));
    assert_non_null(strstr(err.msg, ":2:"));
}

static exsa_config *one(const char *flag_eq_value)
{
    const char *argv[] = {flag_eq_value};
    return load(1, argv, write_file(0, ""));
}

static void int_fails(const char *arg, long long min, long long max, const char *text)
{
    exsa_config *c = one(arg);
    long long v = 42;
    exsa_err err = {0};
    assert_int_equal(exsa_config_get_int(c, "--port", min, max, &v, &err), EXSA_EINVAL);
    assert_int_equal(v, 42);
    if (!strstr(err.msg, "--port") || !strstr(err.msg, "flag") || !strstr(err.msg, text))
        print_error("%s: '%s'\n", arg, err.msg);
    assert_non_null(strstr(err.msg, "--port"));
    assert_non_null(strstr(err.msg, "flag"));
    assert_non_null(strstr(err.msg, text));
    exsa_config_free(c);
}

static void test_int(void **state)
{
    (void)state;
    static const struct {
        const char *arg;
        long long want;
    } ok[] = {
        {"--port=0", 0}, {"--port=65535", 65535}, {"--port=+7", 7}, {"--port=-0", 0},
        {"--port=007", 7},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        exsa_config *c = one(ok[i].arg);
        long long v = -1;
        assert_int_equal(exsa_config_get_int(c, "--port", 0, 65535, &v, NULL), 0);
        assert_int_equal(v, ok[i].want);
        exsa_config_free(c);
    }
    int_fails("--port=12abc", 0, 65535, "12abc");
    int_fails("--port=", 0, 65535, "''");
    int_fails("--port= 12", 0, 65535, " 12");
    int_fails("--port=1.5", 0, 65535, "1.5");
    int_fails("--port=0x10", 0, 65535, "0x10");
    int_fails("--port=-", 0, 65535, "'-'");
    int_fails("--port=-5", 0, 65535, "-5");
    int_fails("--port=65536", 0, 65535, "65536");
    int_fails("--port=99999999999999999999999", 0, 65535, "99999999999999999999999");
    int_fails("--port=-99999999999999999999999", INT64_MIN, INT64_MAX, "-9999999");
    /* Full 64-bit range edges. */
    exsa_config *c = one("--port=9223372036854775807");
    long long v;
    assert_int_equal(exsa_config_get_int(c, "--port", INT64_MIN, INT64_MAX, &v, NULL), 0);
    assert_true(v == INT64_MAX);
    exsa_config_free(c);
    int_fails("--port=9223372036854775808", INT64_MIN, INT64_MAX, "9223372036854775808");

    /* The source named is where the text came from. */
    setenv("CPU_THREADS", "many", 1);
    c = load(0, NULL, write_file(0, ""));
    exsa_err err = {0};
    assert_int_equal(exsa_config_get_int(c, "--threads", 1, 512, &v, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "--threads"));
    assert_non_null(strstr(err.msg, "env CPU_THREADS"));
    assert_non_null(strstr(err.msg, "many"));
    /* Unset without default; unknown option. */
    assert_int_equal(exsa_config_get_int(c, "--api-key", 0, 1, &v, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "--api-key"));
    assert_int_equal(exsa_config_get_int(c, "--nope", 0, 1, &v, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "--nope"));
    exsa_config_free(c);
}

static void double_fails(const char *arg, double min, double max)
{
    exsa_config *c = one(arg);
    double v = 42;
    exsa_err err = {0};
    assert_int_equal(exsa_config_get_double(c, "--temp", min, max, &v, &err), EXSA_EINVAL);
    assert_true(v == 42);
    assert_non_null(strstr(err.msg, "--temp"));
    assert_non_null(strstr(err.msg, strchr(arg, '=') + 1));
    exsa_config_free(c);
}

static void test_double(void **state)
{
    (void)state;
    exsa_config *c = load(0, NULL, write_file(0, ""));
    double v = -1;
    assert_int_equal(exsa_config_get_double(c, "--temp", 0, 2, &v, NULL), 0);
    assert_true(v == 0.8); /* the default text, parsed */
    exsa_config_free(c);
    static const struct {
        const char *arg;
        double want;
    } ok[] = {{"--temp=0", 0}, {"--temp=1.25", 1.25}, {"--temp=2", 2}, {"--temp=1e-1", 0.1},
              {"--temp=+.5", 0.5}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        c = one(ok[i].arg);
        assert_int_equal(exsa_config_get_double(c, "--temp", 0, 2, &v, NULL), 0);
        assert_true(v == ok[i].want);
        exsa_config_free(c);
    }
    double_fails("--temp=1.5x", 0, 2);
    double_fails("--temp=", 0, 2);
    double_fails("--temp= 1", 0, 2);
    double_fails("--temp=nan", -1e300, 1e300);
    double_fails("--temp=inf", -1e300, 1e300);
    double_fails("--temp=1e400", -1e300, 1e300);
    double_fails("--temp=-0.1", 0, 2);
    double_fails("--temp=2.0001", 0, 2);
}

static void test_bool(void **state)
{
    (void)state;
    static const char *const yes[] = {"1", "true", "TRUE", "yes", "Yes", "on", "ON"};
    static const char *const no[] = {"0", "false", "False", "no", "NO", "off", "Off"};
    const char *empty = write_file(0, "");
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 7; i++) {
            setenv("ENABLE_SPECULATIVE", k ? no[i] : yes[i], 1);
            exsa_config *c = load(0, NULL, empty);
            int b = -1;
            assert_int_equal(exsa_config_get_bool(c, "--speculative", &b, NULL), 0);
            assert_int_equal(b, !k);
            exsa_config_free(c);
        }
    }
    setenv("ENABLE_SPECULATIVE", "maybe", 1);
    exsa_config *c = load(0, NULL, empty);
    int b = -1;
    exsa_err err = {0};
    assert_int_equal(exsa_config_get_bool(c, "--speculative", &b, &err), EXSA_EINVAL);
    assert_int_equal(b, -1);
    assert_non_null(strstr(err.msg, "--speculative"));
    assert_non_null(strstr(err.msg, "env ENABLE_SPECULATIVE"));
    assert_non_null(strstr(err.msg, "maybe"));
    exsa_config_free(c);
    const char *argv[] = {"--verbose=2"};
    c = load(1, argv, empty);
    assert_int_equal(exsa_config_get_bool(c, "--verbose", &b, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "'2'"));
    exsa_config_free(c);
}

static void test_help(void **state)
{
    (void)state;
    static const exsa_config_opt opts[] = {
        {"--port", "-p", "PORT", "8080", "N", "TCP port to listen on"},
        {"--api-key", NULL, NULL, NULL, "KEY", "Require this bearer key"},
        {"--verbose", "-v", NULL, NULL, NULL, "More logging"},
        {"--kv-cache-pool-size", NULL, "KV_CACHE_POOL_SIZE", "16", "N",
         "A deliberately long help text that goes on and on about the KV cache pool, so that "
         "the printer has to wrap it over several lines and indent the continuation neatly "
         "below the help column."},
        {"--a-very-long-option-name-indeed", NULL, NULL, NULL, "PATH", "Short help"},
    };
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    exsa_config_print_help(opts, 5, f);
    fclose(f);
    const char *want[] = {"-p, --port N", "--api-key KEY", "-v, --verbose", "EXSA_PORT", "PORT",
                          "EXSA_API_KEY", "EXSA_VERBOSE", "EXSA_KV_CACHE_POOL_SIZE",
                          "KV_CACHE_POOL_SIZE", "8080", "TCP port to listen on",
                          "--a-very-long-option-name-indeed PATH", "[default: 16]",
                          "EXSA_A_VERY_LONG_OPTION_NAME_INDEED"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (!strstr(buf, want[i]))
            print_error("help lacks '%s':\n%s", want[i], buf);
        assert_non_null(strstr(buf, want[i]));
    }
    /* Every line fits in 80 columns, and the long help took several. */
    int lines = 0;
    for (const char *p = buf; *p;) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl); /* output ends with a newline */
        assert_true(nl - p <= 80);
        lines++;
        p = nl + 1;
    }
    assert_true(lines >= 8);
    /* The long option's help starts on its own line, indented. */
    const char *lo = strstr(buf, "--a-very-long-option-name-indeed PATH");
    assert_true(lo[strlen("--a-very-long-option-name-indeed PATH")] == '\n');
    free(buf);
}

/* ---- logging ---- */

/* Runs fn with the log going to a fresh file; returns its contents. */
static char *capture(void (*fn)(void *), void *arg)
{
    char path[128];
    snprintf(path, sizeof path, "%s/log", g_dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    assert_true(fd >= 0);
    exsa_log_set_stream_fd(fd);
    fn(arg);
    exsa_log_set_stream_fd(2);
    close(fd);
    size_t n = 0;
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 22);
    assert_non_null(buf);
    n = fread(buf, 1, (1 << 22) - 1, f);
    fclose(f);
    buf[n] = '\0';
    unlink(path);
    return buf;
}

static void is_timestamp(const char *s)
{
    /* 2026-11-25T10:00:00.123Z */
    const char *pat = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; pat[i]; i++) {
        if (pat[i] == 'd')
            assert_true(s[i] >= '0' && s[i] <= '9');
        else
            assert_int_equal(s[i], pat[i]);
    }
}

static void log_basic(void *arg)
{
    (void)arg;
    exsa_log(EXSA_LOG_INFO, "req-1", "hello %d", 42);
    exsa_log(EXSA_LOG_DEBUG, NULL, "hidden at info");
    exsa_log(EXSA_LOG_WARN, NULL, "two\nlines\tand \x01 ctl");
    exsa_log(EXSA_LOG_ERROR, "r2", "bad");
}

static void test_log_text(void **state)
{
    (void)state;
    assert_int_equal(exsa_log_configure("info", "text", NULL), 0);
    assert_true(exsa_log_enabled(EXSA_LOG_INFO));
    assert_false(exsa_log_enabled(EXSA_LOG_DEBUG));
    char *out = capture(log_basic, NULL);
    char *l1 = out, *l2 = strchr(l1, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
    assert_string_equal(strchr(l3, '\n') + 1, "");
    is_timestamp(l1);
    assert_memory_equal(l1 + 24, " INFO  [req-1] hello 42\n", 24);
    is_timestamp(l2);
    assert_memory_equal(l2 + 24, " WARN  two\\nlines\\tand \\x01 ctl\n", 32);
    is_timestamp(l3);
    assert_memory_equal(l3 + 24, " ERROR [r2] bad\n", 16);
    free(out);

    assert_int_equal(exsa_log_configure("DEBUG", NULL, NULL), 0);
    assert_true(exsa_log_enabled(EXSA_LOG_DEBUG));
    out = capture(log_basic, NULL);
    assert_non_null(strstr(out, " DEBUG hidden at info\n"));
    free(out);
    assert_int_equal(exsa_log_configure("error", NULL, NULL), 0);
    out = capture(log_basic, NULL);
    assert_null(strstr(out, "INFO"));
    assert_non_null(strstr(out, " ERROR [r2] bad\n"));
    free(out);

    exsa_err err = {0};
    assert_int_equal(exsa_log_configure("loud", "text", &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "loud"));
    assert_int_equal(exsa_log_configure("info", "xml", &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "xml"));
    /* A refused call changes nothing: still at error. */
    assert_false(exsa_log_enabled(EXSA_LOG_WARN));
    assert_int_equal(exsa_log_configure("info", "text", NULL), 0);
}

static json_t *parse_line(const char *line, size_t len)
{
    json_error_t je;
    json_t *j = json_loadb(line, len, 0, &je);
    if (!j)
        print_error("not JSON (%s): %.*s\n", je.text, (int)len, line);
    assert_non_null(j);
    return j;
}

static const char k_tricky[] = "quote \" backslash \\ nl \n tab \t ctl \x02 del \x7f "
                               "utf8 \xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80 bad \xFF\xC3 end";
/* The same with each malformed byte as U+FFFD. */
static const char k_tricky_fixed[] = "quote \" backslash \\ nl \n tab \t ctl \x02 del \x7f "
                                     "utf8 \xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80 bad "
                                     "\xEF\xBF\xBD\xEF\xBF\xBD end";

static void log_json(void *arg)
{
    (void)arg;
    exsa_log(EXSA_LOG_INFO, "id\"1", "%s", k_tricky);
    exsa_log(EXSA_LOG_WARN, NULL, "no id");
}

static void test_log_json(void **state)
{
    (void)state;
    assert_int_equal(exsa_log_configure("info", "json", NULL), 0);
    char *out = capture(log_json, NULL);
    char *nl = strchr(out, '\n');
    assert_non_null(nl);
    json_t *j = parse_line(out, (size_t)(nl - out));
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "request_id")), "id\"1");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), k_tricky_fixed);
    const char *ts = json_string_value(json_object_get(j, "ts"));
    assert_non_null(ts);
    assert_int_equal(strlen(ts), 24);
    is_timestamp(ts);
    assert_int_equal(json_object_size(j), 4);
    json_decref(j);
    char *l2 = nl + 1;
    nl = strchr(l2, '\n');
    assert_non_null(nl);
    assert_string_equal(nl + 1, "");
    j = parse_line(l2, (size_t)(nl - l2));
    assert_string_equal(json_string_value(json_object_get(j, "level")), "warn");
    assert_null(json_object_get(j, "request_id"));
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "no id");
    json_decref(j);
    free(out);
    assert_int_equal(exsa_log_configure("info", "text", NULL), 0);
}

static void log_long(void *arg)
{
    const char *unit = arg;
    size_t ul = strlen(unit);
    char *big = malloc(20000 * ul + 1);
    assert_non_null(big);
    for (int i = 0; i < 20000; i++)
        memcpy(big + (size_t)i * ul, unit, ul);
    big[20000 * ul] = '\0';
    exsa_log(EXSA_LOG_ERROR, "rid", "%s", big);
    free(big);
}

static void test_log_truncation(void **state)
{
    (void)state;
    /* ASCII, 2-byte UTF-8, and escape-heavy messages: each comes out as one
     * line of at most EXSA_LOG_LINE_MAX bytes, still valid JSON, cut at a
     * whole character, marked as truncated. */
    const char *units[] = {"a", "\xC3\xA9", "\"", "\x01", "\xE2\x82\xAC"};
    for (int fmt = 0; fmt < 2; fmt++) {
        assert_int_equal(exsa_log_configure("info", fmt ? "json" : "text", NULL), 0);
        for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
            char *out = capture(log_long, (void *)units[u]);
            size_t n = strlen(out);
            assert_true(n <= EXSA_LOG_LINE_MAX);
            assert_true(n > EXSA_LOG_LINE_MAX / 2);
            assert_int_equal(out[n - 1], '\n');
            assert_null(memchr(out, '\n', n - 1));
            if (fmt) {
                json_t *j = parse_line(out, n - 1); /* jansson checks the UTF-8 */
                const char *msg = json_string_value(json_object_get(j, "msg"));
                size_t ml = strlen(msg);
                assert_true(ml > 14);
                assert_string_equal(msg + ml - 14, "...[truncated]");
                json_decref(j);
            } else {
                assert_memory_equal(out + n - 15, "...[truncated]\n", 15);
            }
            free(out);
        }
    }
    assert_int_equal(exsa_log_configure("info", "text", NULL), 0);
}

#define LOG_THREADS 4
#define LOG_LINES 300

static void *log_thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    char pad[700];
    memset(pad, 'a' + t, sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    for (int i = 0; i < LOG_LINES; i++)
        exsa_log(EXSA_LOG_INFO, NULL, "t%d i%d %s", t, i, pad);
    return NULL;
}

static void log_threads(void *arg)
{
    (void)arg;
    pthread_t th[LOG_THREADS];
    for (int t = 0; t < LOG_THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, log_thread, (void *)(intptr_t)t), 0);
    for (int t = 0; t < LOG_THREADS; t++)
        pthread_join(th[t], NULL);
}

static void test_log_threads(void **state)
{
    (void)state;
    assert_int_equal(exsa_log_configure("info", "json", NULL), 0);
    char *out = capture(log_threads, NULL);
    int seen[LOG_THREADS] = {0};
    int lines = 0;
    for (char *p = out; *p;) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        json_t *j = parse_line(p, (size_t)(nl - p));
        const char *msg = json_string_value(json_object_get(j, "msg"));
        int t = -1, i = -1, off = 0;
        assert_int_equal(sscanf(msg, "t%d i%d %n", &t, &i, &off), 2);
        assert_true(t >= 0 && t < LOG_THREADS);
        assert_int_equal(i, seen[t]); /* each thread's lines in order, none lost */
        seen[t]++;
        assert_int_equal(strlen(msg + off), 699);
        for (int k = 0; k < 699; k++)
            assert_int_equal(msg[off + k], 'a' + t);
        json_decref(j);
        lines++;
        p = nl + 1;
    }
    assert_int_equal(lines, LOG_THREADS * LOG_LINES);
    free(out);
    assert_int_equal(exsa_log_configure("info", "text", NULL), 0);
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/exsa_config_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_precedence, clear_env),
        cmocka_unit_test_setup(test_default_env_file, clear_env),
        cmocka_unit_test_setup(test_arg_forms, clear_env),
        cmocka_unit_test_setup(test_arg_errors, clear_env),
        cmocka_unit_test_setup(test_env_file_syntax, clear_env),
        cmocka_unit_test_setup(test_int, clear_env),
        cmocka_unit_test_setup(test_double, clear_env),
        cmocka_unit_test_setup(test_bool, clear_env),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_log_text),
        cmocka_unit_test(test_log_json),
        cmocka_unit_test(test_log_truncation),
        cmocka_unit_test(test_log_threads),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_dir);
    return rc;
}
