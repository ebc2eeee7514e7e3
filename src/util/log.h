/* Process-wide logging: one line per call on stderr (or the fd a test sets).
 *
 * Each call formats the whole line into a stack buffer and hands it to the
 * kernel in a single write(2), so lines from many threads never interleave.
 * A line is at most EXSA_LOG_LINE_MAX bytes (PIPE_BUF: writes of that size to
 * a pipe are atomic); a longer message is cut at a whole UTF-8 character and
 * ends with "...[truncated]". Control characters in the message are escaped
 * so that one call is always one line.
 *
 *   text: 2026-11-25T10:00:00.123Z INFO  [req-id] message
 *   json: {"ts":"2026-11-25T10:00:00.123Z","level":"info","request_id":"req-id","msg":"message"}
 *
 * Timestamps are UTC wall-clock time with milliseconds. request_id may be
 * NULL (text: no brackets; json: no key). The level, format and fd are
 * atomics: configure may run while other threads log.
 */
#ifndef EXSA_UTIL_LOG_H
#define EXSA_UTIL_LOG_H

#include "exsa.h"

enum { EXSA_LOG_DEBUG, EXSA_LOG_INFO, EXSA_LOG_WARN, EXSA_LOG_ERROR };

#define EXSA_LOG_LINE_MAX 4096

/* level: "debug", "info", "warn" (or "warning"), "error"; format: "text",
 * "json"; case-insensitive; NULL leaves that setting as it is. EXSA_EINVAL
 * naming the bad value (nothing changes then). Defaults: info, text. */
int exsa_log_configure(const char *level, const char *format, exsa_err *err);
/* 1 if a message of this level would be written (skip costly formatting). */
int exsa_log_enabled(int level);
void exsa_log(int level, const char *request_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Where lines go (default 2, stderr); for tests. */
void exsa_log_set_stream_fd(int fd);

#endif
