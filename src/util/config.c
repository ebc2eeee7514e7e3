/* Command configuration: see config.h.
 *
 * Load copies the option table into items, fills the items set on the
 * command line, reads the .env file into a key/value list, then resolves
 * every remaining item from the environment, the .env list and the default,
 * in that order. Values stay text; the getters parse on demand.
 */
#include "util/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/err.h"

/* A .env file is a handful of settings; refuse anything absurd rather than
 * reading it all into memory. */
#define ENV_FILE_MAX (1 << 20)

typedef struct item {
    char *flag;      /* "--port" */
    char *short_flag;
    char *env_exsa;  /* "EXSA_PORT" */
    char *env_plain; /* "PORT" or NULL */
    char *def;
    int is_bool;
    char *value;     /* NULL: unset */
    char *source;
    int from_flag;
} item;

struct exsa_config {
    int n;
    item *items;
};

typedef struct kv {
    char *key, *value;
} kv;

typedef struct kv_list {
    kv *v;
    size_t n, cap;
} kv_list;

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static char *dup0(const char *s)
{
    return s ? dupn(s, strlen(s)) : NULL;
}

/* "prefix" + "name" in a new string. */
static char *cat2(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *d = malloc(na + nb + 1);
    if (d) {
        memcpy(d, a, na);
        memcpy(d + na, b, nb + 1);
    }
    return d;
}

/* EXSA_ and plain variable names of an option (see exsa_config_opt.env). */
static int env_names(const exsa_config_opt *o, char **exsa_name, char **plain)
{
    *exsa_name = *plain = NULL;
    if (o->env && o->env[0]) {
        if (!strncmp(o->env, "EXSA_", 5)) {
            *exsa_name = dup0(o->env);
        } else {
            *exsa_name = cat2("EXSA_", o->env);
            *plain = dup0(o->env);
            if (!*plain)
                return EXSA_ENOMEM;
        }
    } else {
        /* --api-key -> EXSA_API_KEY */
        *exsa_name = cat2("EXSA_", o->flag + 2);
        if (*exsa_name)
            for (char *p = *exsa_name + 5; *p; p++)
                *p = isalnum((unsigned char)*p) ? (char)toupper((unsigned char)*p) : '_';
    }
    return *exsa_name ? 0 : EXSA_ENOMEM;
}

static void free_items(item *it, int n)
{
    for (int i = 0; i < n; i++) {
        free(it[i].flag);
        free(it[i].short_flag);
        free(it[i].env_exsa);
        free(it[i].env_plain);
        free(it[i].def);
        free(it[i].value);
        free(it[i].source);
    }
    free(it);
}

void exsa_config_free(exsa_config *c)
{
    if (!c)
        return;
    free_items(c->items, c->n);
    free(c);
}

static void kv_free(kv_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].key);
        free(l->v[i].value);
    }
    free(l->v);
}

static int kv_push(kv_list *l, char *key, char *value)
{
    if (!key || !value)
        goto fail;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        kv *v = realloc(l->v, cap * sizeof *v); /* cap bounded by file size */
        if (!v)
            goto fail;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n].key = key;
    l->v[l->n].value = value;
    l->n++;
    return 0;
fail:
    free(key);
    free(value);
    return EXSA_ENOMEM;
}

/* The last assignment wins, as when a shell sources the file. */
static const char *kv_get(const kv_list *l, const char *key)
{
    for (size_t i = l->n; i-- > 0;)
        if (!strcmp(l->v[i].key, key))
            return l->v[i].value;
    return NULL;
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* One .env line s[0..n) (no newline). Appends at most one pair. */
static int parse_env_line(const char *s, size_t n, const char *file, int lineno, kv_list *out,
                          exsa_err *err)
{
    size_t i = 0;
    while (i < n && is_blank(s[i]))
        i++;
    if (i == n || s[i] == '#')
        return 0;
    if (n - i > 7 && !strncmp(s + i, "export", 6) && is_blank(s[i + 6])) {
        i += 7;
        while (i < n && is_blank(s[i]))
            i++;
    }
    size_t k0 = i;
    if (i < n && (isalpha((unsigned char)s[i]) || s[i] == '_'))
        while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '_'))
            i++;
    size_t k1 = i;
    while (i < n && is_blank(s[i]))
        i++;
    if (k1 == k0 || i == n || s[i] != '=')
        return exsa_err_set(err, EXSA_EINVAL, "%s:%d: expected KEY=VALUE", file, lineno);
    i++;
    while (i < n && is_blank(s[i]))
        i++;

    /* The value is never longer than the rest of the line. */
    char *val = malloc(n - i + 1);
    if (!val)
        return exsa_err_set(err, EXSA_ENOMEM, "%s:%d: out of memory", file, lineno);
    size_t vn = 0;
    if (i < n && (s[i] == '"' || s[i] == '\'')) {
        char q = s[i++];
        int closed = 0;
        while (i < n) {
            char c = s[i++];
            if (c == q) {
                closed = 1;
                break;
            }
            if (q == '"' && c == '\\' && i < n) {
                char e = s[i++];
                switch (e) {
                case 'n': c = '\n'; break;
                case 't': c = '\t'; break;
                case 'r': c = '\r'; break;
                case '"': case '\\': c = e; break;
                default: val[vn++] = '\\'; c = e; break; /* unknown: kept as written */
                }
            }
            val[vn++] = c;
        }
        if (!closed) {
            free(val);
            return exsa_err_set(err, EXSA_EINVAL, "%s:%d: unterminated %s quote", file, lineno,
                                q == '"' ? "double" : "single");
        }
        while (i < n && is_blank(s[i]))
            i++;
        if (i < n && s[i] != '#') {
            free(val);
            return exsa_err_set(err, EXSA_EINVAL, "%s:%d: unexpected text after the closing quote",
                                file, lineno);
        }
    } else {
        size_t end = i;
        /* i > 0 (past '='), so s[end - 1] exists; "KEY=#x" keeps its '#'. */
        while (end < n && !(s[end] == '#' && is_blank(s[end - 1])))
            end++;
        while (end > i && is_blank(s[end - 1]))
            end--;
        memcpy(val, s + i, end - i);
        vn = end - i;
    }
    val[vn] = '\0';
    if (kv_push(out, dupn(s + k0, k1 - k0), val))
        return exsa_err_set(err, EXSA_ENOMEM, "%s:%d: out of memory", file, lineno);
    return 0;
}

static int read_env_file(const char *path, int must_exist, kv_list *out, exsa_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (!must_exist && errno == ENOENT)
            return 0;
        return exsa_err_set(err, EXSA_EIO, "env file '%s': %s", path, strerror(errno));
    }
    char *buf = malloc(ENV_FILE_MAX + 1);
    if (!buf) {
        fclose(f);
        return exsa_err_set(err, EXSA_ENOMEM, "env file '%s': out of memory", path);
    }
    size_t n = fread(buf, 1, ENV_FILE_MAX + 1, f);
    int rerr = ferror(f);
    fclose(f);
    if (rerr) {
        free(buf);
        return exsa_err_set(err, EXSA_EIO, "env file '%s': read error", path);
    }
    if (n > ENV_FILE_MAX) {
        free(buf);
        return exsa_err_set(err, EXSA_EINVAL, "env file '%s': larger than %d bytes", path,
                            ENV_FILE_MAX);
    }
    int rc = 0, lineno = 0;
    size_t pos = 0;
    while (pos < n && !rc) {
        lineno++;
        const char *nl = memchr(buf + pos, '\n', n - pos);
        size_t len = nl ? (size_t)(nl - (buf + pos)) : n - pos;
        if (memchr(buf + pos, '\0', len))
            rc = exsa_err_set(err, EXSA_EINVAL, "%s:%d: NUL byte in line", path, lineno);
        else
            rc = parse_env_line(buf + pos, len > 0 && buf[pos + len - 1] == '\r' ? len - 1 : len,
                                path, lineno, out, err);
        pos += len + 1;
    }
    free(buf);
    return rc;
}

/* Item of a long flag; name may be "--port" or "port"; len bytes of it. */
static item *find_long(item *it, int n, const char *name, size_t len)
{
    if (len >= 2 && name[0] == '-' && name[1] == '-') {
        name += 2;
        len -= 2;
    }
    for (int i = 0; i < n; i++)
        if (strlen(it[i].flag + 2) == len && !strncmp(it[i].flag + 2, name, len))
            return &it[i];
    return NULL;
}

static int set_value(item *it, const char *value, const char *src_a, const char *src_b)
{
    free(it->value);
    free(it->source);
    it->value = value ? dup0(value) : NULL;
    it->source = src_b ? cat2(src_a, src_b) : dup0(src_a);
    return (value && !it->value) || !it->source ? EXSA_ENOMEM : 0;
}

static int parse_args(item *items, int n_items, int argc, char **argv, exsa_err *err)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!a)
            return exsa_err_set(err, EXSA_EINVAL, "argument %d is NULL", i);
        item *it = NULL;
        const char *value = NULL;
        int negated = 0;
        size_t name_len = strlen(a);
        if (a[0] == '-' && a[1] == '-' && a[2]) {
            const char *eq = strchr(a, '=');
            if (eq) {
                name_len = (size_t)(eq - a);
                value = eq + 1;
            }
            it = find_long(items, n_items, a, name_len);
            if (!it && name_len > 5 && !strncmp(a, "--no-", 5)) {
                it = find_long(items, n_items, a + 5, name_len - 5);
                if (it && !it->is_bool)
                    it = NULL;
                negated = it != NULL;
            }
        } else if (a[0] == '-' && a[1]) {
            for (int k = 0; k < n_items && !it; k++)
                if (items[k].short_flag && !strcmp(items[k].short_flag, a))
                    it = &items[k];
        } else {
            return exsa_err_set(err, EXSA_EINVAL, "unexpected argument '%.200s'", a);
        }
        /* Only the name is quoted: the value may be a secret (--api-key=...). */
        if (!it)
            return exsa_err_set(err, EXSA_EINVAL, "unknown option '%.*s'",
                                (int)(name_len > 200 ? 200 : name_len), a);
        if (it->from_flag)
            return exsa_err_set(err, EXSA_EINVAL, "option '%s' given more than once", it->flag);
        if (negated) {
            if (value)
                return exsa_err_set(err, EXSA_EINVAL, "option '%.*s' takes no value",
                                    (int)(name_len > 200 ? 200 : name_len), a);
            value = "0";
        } else if (it->is_bool) {
            if (!value)
                value = "1";
        } else if (!value) {
            /* A following long option is a forgotten value, not the value. */
            if (i + 1 >= argc || !argv[i + 1] || !strncmp(argv[i + 1], "--", 2))
                return exsa_err_set(err, EXSA_EINVAL, "option '%.200s' needs a value", a);
            value = argv[++i];
        }
        if (set_value(it, value, "flag", NULL))
            return exsa_err_set(err, EXSA_ENOMEM, "option '%s': out of memory", it->flag);
        it->from_flag = 1;
    }
    return 0;
}

/* Environment (EXSA_ first), then .env (EXSA_ first), then the default. */
static int resolve(item *it, const kv_list *dotenv)
{
    const char *names[2] = {it->env_exsa, it->env_plain};
    for (int k = 0; k < 2; k++) {
        const char *v = names[k] ? getenv(names[k]) : NULL;
        if (v && v[0])
            return set_value(it, v, "env ", names[k]);
    }
    for (int k = 0; k < 2; k++) {
        const char *v = names[k] ? kv_get(dotenv, names[k]) : NULL;
        if (v && v[0])
            return set_value(it, v, ".env ", names[k]);
    }
    if (it->def)
        return set_value(it, it->def, "default", NULL);
    return set_value(it, NULL, "unset", NULL);
}

static int check_table(const exsa_config_opt *opts, int n_opts, exsa_err *err)
{
    if (n_opts < 0 || (n_opts > 0 && !opts))
        return exsa_err_set(err, EXSA_EINVAL, "config: bad option table (n_opts %d)", n_opts);
    for (int i = 0; i < n_opts; i++) {
        const exsa_config_opt *o = &opts[i];
        if (!o->flag || strncmp(o->flag, "--", 2) || !o->flag[2] || strchr(o->flag, '='))
            return exsa_err_set(err, EXSA_EINVAL, "config: option %d: flag must be \"--name\"", i);
        if (o->short_flag && (o->short_flag[0] != '-' || !o->short_flag[1] ||
                              o->short_flag[1] == '-'))
            return exsa_err_set(err, EXSA_EINVAL, "config: option '%s': bad short flag", o->flag);
        for (int j = 0; j < i; j++)
            if (!strcmp(opts[j].flag, o->flag) ||
                (o->short_flag && opts[j].short_flag && !strcmp(opts[j].short_flag, o->short_flag)))
                return exsa_err_set(err, EXSA_EINVAL, "config: option '%s' defined twice",
                                    o->flag);
    }
    return 0;
}

exsa_config *exsa_config_load(const exsa_config_opt *opts, int n_opts, int argc, char **argv,
                              const char *env_file, exsa_err *err)
{
    if (check_table(opts, n_opts, err))
        return NULL;
    if (argc < 0 || (argc > 0 && !argv)) {
        exsa_err_set(err, EXSA_EINVAL, "config: bad argument vector (argc %d)", argc);
        return NULL;
    }
    exsa_config *c = calloc(1, sizeof *c);
    item *items = calloc(n_opts > 0 ? (size_t)n_opts : 1, sizeof *items);
    if (!c || !items) {
        free(c);
        free(items);
        exsa_err_set(err, EXSA_ENOMEM, "config: out of memory");
        return NULL;
    }
    c->items = items;
    c->n = n_opts;
    kv_list dotenv = {0};
    int rc = 0;
    for (int i = 0; i < n_opts && !rc; i++) {
        item *it = &items[i];
        it->flag = dup0(opts[i].flag);
        it->short_flag = dup0(opts[i].short_flag);
        it->def = dup0(opts[i].def);
        it->is_bool = opts[i].metavar == NULL;
        rc = env_names(&opts[i], &it->env_exsa, &it->env_plain);
        if (!it->flag || (opts[i].short_flag && !it->short_flag) || (opts[i].def && !it->def))
            rc = EXSA_ENOMEM;
        if (rc)
            exsa_err_set(err, rc, "config: out of memory");
    }
    if (!rc)
        rc = parse_args(items, n_opts, argc, argv, err);
    if (!rc)
        rc = read_env_file(env_file ? env_file : "./.env", env_file != NULL, &dotenv, err);
    for (int i = 0; i < n_opts && !rc; i++)
        if (!items[i].from_flag && resolve(&items[i], &dotenv))
            rc = exsa_err_set(err, EXSA_ENOMEM, "config: out of memory");
    kv_free(&dotenv);
    if (rc) {
        exsa_config_free(c);
        return NULL;
    }
    return c;
}

static const item *find_item(const exsa_config *c, const char *flag)
{
    if (!c || !flag)
        return NULL;
    return find_long(c->items, c->n, flag, strlen(flag));
}

const char *exsa_config_get(const exsa_config *c, const char *flag)
{
    const item *it = find_item(c, flag);
    return it ? it->value : NULL;
}

const char *exsa_config_source(const exsa_config *c, const char *flag)
{
    const item *it = find_item(c, flag);
    return it ? it->source : "unset";
}

/* The item with a value, or NULL with err set. */
static const item *valued(const exsa_config *c, const char *flag, exsa_err *err)
{
    const item *it = find_item(c, flag);
    if (!it)
        exsa_err_set(err, EXSA_EINVAL, "unknown option '%.200s'", flag ? flag : "(null)");
    else if (!it->value)
        exsa_err_set(err, EXSA_EINVAL, "%s: not set", it->flag);
    return it && it->value ? it : NULL;
}

int exsa_config_get_int(const exsa_config *c, const char *flag, long long min, long long max,
                        long long *out, exsa_err *err)
{
    const item *it = valued(c, flag, err);
    if (!it)
        return EXSA_EINVAL;
    const char *v = it->value;
    /* strtoll alone would take leading blanks and stop at junk. */
    const char *p = v + (v[0] == '+' || v[0] == '-');
    int ok = *p != '\0';
    for (; *p; p++)
        ok &= isdigit((unsigned char)*p) != 0;
    if (!ok)
        return exsa_err_set(err, EXSA_EINVAL, "%s (%s): '%.64s' is not an integer", it->flag,
                            it->source, v);
    errno = 0;
    long long x = strtoll(v, NULL, 10);
    if (errno == ERANGE || x < min || x > max)
        return exsa_err_set(err, EXSA_EINVAL, "%s (%s): %.64s is out of range [%lld, %lld]",
                            it->flag, it->source, v, min, max);
    *out = x;
    return 0;
}

int exsa_config_get_double(const exsa_config *c, const char *flag, double min, double max,
                           double *out, exsa_err *err)
{
    const item *it = valued(c, flag, err);
    if (!it)
        return EXSA_EINVAL;
    const char *v = it->value;
    char *end = NULL;
    double x = 0;
    if (v[0] && !isspace((unsigned char)v[0]))
        x = strtod(v, &end);
    if (!end || end == v || *end)
        return exsa_err_set(err, EXSA_EINVAL, "%s (%s): '%.64s' is not a number", it->flag,
                            it->source, v);
    if (!isfinite(x) || x < min || x > max)
        return exsa_err_set(err, EXSA_EINVAL, "%s (%s): %.64s is out of range [%g, %g]", it->flag,
                            it->source, v, min, max);
    *out = x;
    return 0;
}

int exsa_config_get_bool(const exsa_config *c, const char *flag, int *out, exsa_err *err)
{
    const item *it = find_item(c, flag);
    if (!it)
        return exsa_err_set(err, EXSA_EINVAL, "unknown option '%.200s'", flag ? flag : "(null)");
    if (!it->value) {
        *out = 0;
        return 0;
    }
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (int k = 0; k < 4; k++) {
        if (!strcasecmp(it->value, yes[k])) {
            *out = 1;
            return 0;
        }
        if (!strcasecmp(it->value, no[k])) {
            *out = 0;
            return 0;
        }
    }
    return exsa_err_set(err, EXSA_EINVAL,
                        "%s (%s): '%.64s' is not a boolean (1/0, true/false, yes/no, on/off)",
                        it->flag, it->source, it->value);
}

/* ---- help ---- */

#define HELP_WIDTH 80
#define HELP_COL_MAX 32

/* Writes text word by word from column col, wrapping at HELP_WIDTH with
 * continuation lines indented to indent. whole = 1 keeps the text on one
 * line when it fits in the help column at all ("[env: A, B]" reads badly
 * split). Returns the column reached. */
static int wrap(FILE *out, const char *text, int col, int indent, int whole)
{
    int tl = (int)strlen(text);
    if (whole && tl <= HELP_WIDTH - indent) {
        if (col > indent && col + 1 + tl > HELP_WIDTH) {
            fprintf(out, "\n%*s", indent, "");
            col = indent;
        }
        if (col > indent) {
            fputc(' ', out);
            col++;
        }
        fputs(text, out);
        return col + tl;
    }
    const char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        int len = 0;
        while (p[len] && p[len] != ' ')
            len++;
        int first = col == indent;
        if (!first && col + 1 + len > HELP_WIDTH) {
            fprintf(out, "\n%*s", indent, "");
            col = indent;
            first = 1;
        }
        if (!first) {
            fputc(' ', out);
            col++;
        }
        fwrite(p, 1, (size_t)len, out);
        col += len;
        p += len;
    }
    return col;
}

static int left_len(const exsa_config_opt *o)
{
    int n = 4 + (o->short_flag ? (int)strlen(o->short_flag) : 2) + (int)strlen(o->flag);
    return n + (o->metavar ? 1 + (int)strlen(o->metavar) : 0);
}

void exsa_config_print_help(const exsa_config_opt *opts, int n_opts, FILE *out)
{
    if (!opts || !out)
        return;
    int col = 0;
    for (int i = 0; i < n_opts; i++)
        if (opts[i].flag && left_len(&opts[i]) + 2 > col)
            col = left_len(&opts[i]) + 2;
    if (col > HELP_COL_MAX)
        col = HELP_COL_MAX;
    for (int i = 0; i < n_opts; i++) {
        const exsa_config_opt *o = &opts[i];
        if (!o->flag || strncmp(o->flag, "--", 2))
            continue;
        int n = 0;
        if (o->short_flag)
            n += fprintf(out, "  %s, ", o->short_flag);
        else
            n += fprintf(out, "      ");
        n += fprintf(out, "%s%s%s", o->flag, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        if (n + 2 > col) /* too wide: help starts on the next line */
            fprintf(out, "\n%*s", col, "");
        else
            fprintf(out, "%*s", col - n, "");
        int at = col;
        if (o->help)
            at = wrap(out, o->help, at, col, 0);
        char *ex = NULL, *plain = NULL;
        if (!env_names(o, &ex, &plain)) {
            char buf[512];
            snprintf(buf, sizeof buf, "[env: %s%s%s]", ex, plain ? ", " : "", plain ? plain : "");
            at = wrap(out, buf, at, col, 1);
        }
        free(ex);
        free(plain);
        if (o->def) {
            char buf[512];
            snprintf(buf, sizeof buf, "[default: %s]", o->def);
            at = wrap(out, buf, at, col, 1);
        }
        fputc('\n', out);
    }
}
