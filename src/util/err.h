/* Error reporting: every fallible function returns a negative EXSA_E* code
 * and writes one human line into the caller's exsa_err (which may be NULL). */
#ifndef EXSA_UTIL_ERR_H
#define EXSA_UTIL_ERR_H

#include "exsa.h"

/* Formats the message into e (if non-NULL), stores code, returns code. */
int exsa_err_set(exsa_err *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes an existing message: "ctx: old message". Returns e->code. */
int exsa_err_prefix(exsa_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void exsa_err_clear(exsa_err *e);

/* Human name of an error code ("invalid argument", ...). */
const char *exsa_strerror(int code);

#endif
