/* Exsa public C API.
 *
 * What cli/ and server/ see of the engine: error codes, the batch that a
 * forward pass takes, and opaque handles. Every function that can fail
 * returns 0 / a negative EXSA_E* code (or NULL) and writes a one-line message
 * into the caller's exsa_err.
 */
#ifndef EXSA_H
#define EXSA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    EXSA_OK = 0,
    EXSA_EINVAL = -1,       /* bad argument or parameter out of range */
    EXSA_ENOMEM = -2,       /* allocation failed or size would overflow */
    EXSA_EIO = -3,          /* open/read/write/mmap failed */
    EXSA_EFORMAT = -4,      /* malformed file (GGUF) */
    EXSA_EUNSUPPORTED = -5, /* valid, but not something Exsa runs */
    EXSA_EFULL = -6,        /* out of KV blocks / batch capacity */
};

/* A caller-owned error buffer: functions that fail fill msg. */
typedef struct exsa_err {
    int code;
    char msg[512];
} exsa_err;

/* One forward pass: rows of (token, position, sequence, wants-logits).
 * Rows of several sequences at different positions go through one pass. */
typedef struct exsa_batch {
    int n;            /* rows */
    int32_t *token;   /* [n] */
    int32_t *pos;     /* [n] position inside its sequence */
    int32_t *seq;     /* [n] sequence id (selects the block table) */
    uint8_t *logits;  /* [n] 1 = return logits for this row */
} exsa_batch;

#ifdef __cplusplus
}
#endif
#endif
