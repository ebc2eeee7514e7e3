/* Text that goes into JSON replies.
 *
 * jansson refuses strings that are not valid UTF-8, and generated text,
 * file names and client-supplied ids are not guaranteed to be. Everything
 * the server puts into a JSON string goes through exsa_json_text, which
 * replaces each invalid byte sequence with U+FFFD, so a reply never fails
 * for its content.
 */
#ifndef EXSA_SERVER_JSON_TEXT_H
#define EXSA_SERVER_JSON_TEXT_H

#include <jansson.h>
#include <stddef.h>
#include <string.h>

/* Length of the valid UTF-8 sequence starting at s (1..4), or 0 when the
 * bytes there are not one (overlong, surrogate, beyond U+10FFFF, cut). */
int exsa_utf8_seq_len(const unsigned char *s, size_t n);
/* 1 if all n bytes are valid UTF-8. */
int exsa_utf8_valid(const char *s, size_t n);
/* malloc'd copy of s with invalid sequences replaced by U+FFFD; *out_len
 * gets its length (may be NULL). NULL when out of memory. */
char *exsa_utf8_sanitize(const char *s, size_t n, size_t *out_len);

/* A JSON string of the bytes (sanitized when needed); NULL only when out of
 * memory. s may be NULL for "". */
json_t *exsa_json_text(const char *s, size_t n);
static inline json_t *exsa_json_str(const char *s) { return exsa_json_text(s, s ? strlen(s) : 0); }
/* Sets key (sanitized too) to a new reference; 0 or -1 (out of memory). The
 * value reference is always consumed. */
int exsa_json_set_text_key(json_t *obj, const char *key, size_t key_len, json_t *value);

/* A JSON number that is always valid (non-finite values become -9999 / 9999). */
json_t *exsa_json_real(double v);

/* Compact serialization, malloc'd; NULL when out of memory. */
char *exsa_json_dump(const json_t *j);

/* Standard base64 (RFC 4648, with padding) of n bytes, malloc'd and
 * NUL-terminated; NULL when out of memory or too large. */
char *exsa_base64_encode(const void *data, size_t n);

#endif
