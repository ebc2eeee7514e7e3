/* Logging: see log.h. The whole line is built on the stack, bounded by
 * EXSA_LOG_LINE_MAX, and written with one write(2). */
#include "util/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "util/err.h"

enum { FMT_TEXT, FMT_JSON };

/* Process-wide by nature (one stderr); atomics so configure can race with
 * logging threads without a lock on the hot path. */
static atomic_int g_level = EXSA_LOG_INFO;
static atomic_int g_format = FMT_TEXT;
static atomic_int g_fd = 2;

static const char *const k_text_level[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
static const char *const k_json_level[] = {"debug", "info", "warn", "error"};

static const char k_trunc[] = "...[truncated]";
/* A request id is an attribute, not a payload: keep it short. */
#define REQ_ID_MAX 128

int exsa_log_configure(const char *level, const char *format, exsa_err *err)
{
    int lv = -1, fm = -1;
    if (level) {
        if (!strcasecmp(level, "debug"))
            lv = EXSA_LOG_DEBUG;
        else if (!strcasecmp(level, "info"))
            lv = EXSA_LOG_INFO;
        else if (!strcasecmp(level, "warn") || !strcasecmp(level, "warning"))
            lv = EXSA_LOG_WARN;
        else if (!strcasecmp(level, "error"))
            lv = EXSA_LOG_ERROR;
        else
            return exsa_err_set(err, EXSA_EINVAL,
                                "log level '%.64s': expected debug, info, warn or error", level);
    }
    if (format) {
        if (!strcasecmp(format, "text"))
            fm = FMT_TEXT;
        else if (!strcasecmp(format, "json"))
            fm = FMT_JSON;
        else
            return exsa_err_set(err, EXSA_EINVAL, "log format '%.64s': expected text or json",
                                format);
    }
    if (lv >= 0)
        atomic_store(&g_level, lv);
    if (fm >= 0)
        atomic_store(&g_format, fm);
    return 0;
}

int exsa_log_enabled(int level)
{
    return level >= atomic_load_explicit(&g_level, memory_order_relaxed);
}

void exsa_log_set_stream_fd(int fd)
{
    atomic_store(&g_fd, fd);
}

/* Bytes in a well-formed UTF-8 sequence at s (n available), 0 if malformed
 * (overlongs, surrogates and code points above U+10FFFF included). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

typedef struct line {
    char buf[EXSA_LOG_LINE_MAX];
    size_t len;
} line;

static void put(line *l, const char *s, size_t n)
{
    if (n > sizeof l->buf - l->len)
        n = sizeof l->buf - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* Appends src[0..n) escaped for the format, never past `limit` bytes of the
 * line and never splitting a character or an escape. Returns the source
 * bytes consumed (< n when it ran out of room). */
static size_t put_escaped(line *l, const char *src, size_t n, int json, size_t limit)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0;
    while (i < n) {
        char tmp[8];
        const char *out = tmp;
        size_t k = 1, m;
        unsigned c = s[i];
        if (c < 0x20 || c == 0x7F || (json && (c == '"' || c == '\\'))) {
            const char *e = NULL;
            switch (c) {
            case '\n': e = "\\n"; break;
            case '\r': e = "\\r"; break;
            case '\t': e = "\\t"; break;
            case '"': e = "\\\""; break;
            case '\\': e = "\\\\"; break;
            case '\b': e = json ? "\\b" : NULL; break;
            case '\f': e = json ? "\\f" : NULL; break;
            }
            if (e) {
                out = e;
                m = strlen(e);
            } else {
                m = (size_t)snprintf(tmp, sizeof tmp, json ? "\\u%04x" : "\\x%02x", c);
            }
        } else {
            k = utf8_seq(s + i, n - i);
            if (k) {
                out = (const char *)s + i;
                m = k;
            } else {
                /* Malformed byte: U+FFFD keeps the line valid UTF-8 (JSON
                 * requires it; terminals like it too). */
                k = 1;
                out = "\xEF\xBF\xBD";
                m = 3;
            }
        }
        if (l->len + m > limit)
            break;
        put(l, out, m);
        i += k;
    }
    return i;
}

static void put_timestamp(line *l, int json)
{
    struct timespec ts;
    struct tm tm;
    char t[96]; /* room for any int the compiler can imagine */
    clock_gettime(CLOCK_REALTIME, &ts);
    time_t sec = ts.tv_sec;
    if (!gmtime_r(&sec, &tm))
        memset(&tm, 0, sizeof tm);
    snprintf(t, sizeof t, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ts.tv_nsec / 1000000));
    if (json) {
        puts_(l, "{\"ts\":\"");
        puts_(l, t);
        puts_(l, "\"");
    } else {
        puts_(l, t);
    }
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere to report a failing log stream */
        }
        p += w;
        n -= (size_t)w;
    }
}

void exsa_log(int level, const char *request_id, const char *fmt, ...)
{
    if (level < EXSA_LOG_DEBUG)
        level = EXSA_LOG_DEBUG;
    if (level > EXSA_LOG_ERROR)
        level = EXSA_LOG_ERROR;
    if (!exsa_log_enabled(level))
        return;
    int saved_errno = errno; /* callers often log right before using errno */
    int json = atomic_load_explicit(&g_format, memory_order_relaxed) == FMT_JSON;

    char msg[EXSA_LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(msg, sizeof msg, fmt ? fmt : "", ap);
    va_end(ap);
    int truncated = 0;
    size_t msg_len;
    if (r < 0) {
        snprintf(msg, sizeof msg, "(log message format error)");
        msg_len = strlen(msg);
    } else if ((size_t)r >= sizeof msg) {
        msg_len = sizeof msg - 1;
        truncated = 1;
    } else {
        msg_len = (size_t)r;
    }

    line l;
    l.len = 0;
    const char *tail = json ? "\"}\n" : "\n";
    size_t end = sizeof l.buf - strlen(tail);
    put_timestamp(&l, json);
    if (json) {
        puts_(&l, ",\"level\":\"");
        puts_(&l, k_json_level[level]);
        puts_(&l, "\"");
    } else {
        puts_(&l, " ");
        puts_(&l, k_text_level[level]);
        puts_(&l, " ");
    }
    if (request_id) {
        size_t n = strnlen(request_id, REQ_ID_MAX);
        puts_(&l, json ? ",\"request_id\":\"" : "[");
        put_escaped(&l, request_id, n, json, end / 2);
        puts_(&l, json ? "\"" : "] ");
    }
    if (json)
        puts_(&l, ",\"msg\":\"");
    size_t msg_start = l.len;
    if (put_escaped(&l, msg, msg_len, json, end) < msg_len || truncated) {
        /* Too long: escape again, leaving room for the marker. */
        l.len = msg_start;
        put_escaped(&l, msg, msg_len, json, end - (sizeof k_trunc - 1));
        puts_(&l, k_trunc);
    }
    puts_(&l, tail);
    write_all(atomic_load_explicit(&g_fd, memory_order_relaxed), l.buf, l.len);
    errno = saved_errno;
}
