#include "util/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int exsa_err_set(exsa_err *e, int code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->code = code;
    }
    return code;
}

int exsa_err_prefix(exsa_err *e, const char *fmt, ...)
{
    if (!e)
        return EXSA_EINVAL;
    char pre[256], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    size_t np = strlen(pre), no = strnlen(old, sizeof old - 1);
    if (np > sizeof e->msg - 3)
        np = sizeof e->msg - 3;
    memcpy(e->msg, pre, np);
    memcpy(e->msg + np, ": ", 2);
    size_t room = sizeof e->msg - np - 3;
    if (no > room)
        no = room;
    memcpy(e->msg + np + 2, old, no);
    e->msg[np + 2 + no] = '\0';
    return e->code;
}

void exsa_err_clear(exsa_err *e)
{
    if (e) {
        e->code = 0;
        e->msg[0] = '\0';
    }
}

const char *exsa_strerror(int code)
{
    switch (code) {
    case EXSA_OK: return "ok";
    case EXSA_EINVAL: return "invalid argument";
    case EXSA_ENOMEM: return "out of memory";
    case EXSA_EIO: return "i/o error";
    case EXSA_EFORMAT: return "malformed file";
    case EXSA_EUNSUPPORTED: return "unsupported";
    case EXSA_EFULL: return "out of capacity";
    case EXSA_ETIMEDOUT: return "timed out";
    default: return "unknown error";
    }
}
