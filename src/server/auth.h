/* API keys: "Authorization: Bearer KEY" (or llama-server's "X-Api-Key: KEY")
 * checked against a set of keys in constant time.
 *
 * Keys come from a comma-separated list (flags may repeat) and/or a file
 * with one key per line ('#' comments and blank lines ignored). The check
 * compares the presented key with every configured key over the full length
 * of both, so its timing says nothing about which key or how many leading
 * bytes matched. Immutable after create: thread safe.
 */
#ifndef EXSA_SERVER_AUTH_H
#define EXSA_SERVER_AUTH_H

#include "exsa.h"

typedef struct exsa_auth exsa_auth;

/* keys_csv and key_file may be NULL. An empty key, or a key with control
 * characters or spaces, is an error naming where it came from. */
exsa_auth *exsa_auth_create(const char *keys_csv, const char *key_file, exsa_err *err);
void exsa_auth_free(exsa_auth *a);
/* Number of keys (0: authentication off). */
int exsa_auth_count(const exsa_auth *a);
/* 1 when the request's headers carry a valid key (always 1 with no keys).
 * authorization / x_api_key are the header values or NULL. */
int exsa_auth_check(const exsa_auth *a, const char *authorization, const char *x_api_key);
/* Compares two byte strings in time that depends only on their lengths:
 * 1 if equal. */
int exsa_auth_equal(const char *a, size_t na, const char *b, size_t nb);

#endif
