/* A Jinja2-subset template engine for chat templates.
 *
 * Covers what published model chat templates use: {{ }}, {% if/elif/else %},
 * {% for %} (else, loop.*, dict items, `if` filters, break/continue),
 * {% set %} (names, tuples, namespace attributes, block set), {% macro %} and
 * {% call %}, {% filter %}, {% raw %}, HF's {% generation %}, the common
 * filters, tests, Python string/dict methods, slicing and the full operator
 * set. The environment matches how HF transformers renders chat templates:
 * trim_blocks and lstrip_blocks on, autoescape off, loop controls but no
 * {% do %}, tojson as json.dumps with ensure_ascii=False, fromjson (also
 * spelled from_json) as json.loads, undefined values are Jinja2's default
 * Undefined (printable, iterable as empty, but an attribute or item of one
 * is an error). Python details that change output are kept: |safe makes a
 * Markup that escapes strings added to it; map/select/... return
 * iterators (always true, no len(), not JSON).
 *
 * Parsing builds an AST once; rendering walks it with every value in a
 * per-render arena that is freed in one go, so values never need reference
 * counts. Rendering is bounded: total loop iterations / calls, output size,
 * memory and macro recursion are capped, and any overrun is an error, so no
 * template (however hostile) loops forever or crashes.
 *
 * Errors name the template line: "jinja: line 12: unknown filter 'foo'".
 * raise_exception(msg) gives "jinja: line N: msg" with the template's text.
 *
 * Thread safety: a parsed template is read-only during render, so several
 * threads may render one template at once.
 */
#ifndef EXSA_TEXT_JINJA_H
#define EXSA_TEXT_JINJA_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "exsa.h"

typedef struct exsa_jinja exsa_jinja;

typedef struct exsa_jinja_opts {
    const struct tm *now; /* strftime_now() time; NULL = local time at render */
    size_t max_output;    /* bytes of output (and of any one string); 0 = 16 MiB */
    uint64_t max_steps;   /* loop iterations + calls; 0 = 4 million */
    size_t max_memory;    /* bytes of render-time values; 0 = 256 MiB */
} exsa_jinja_opts;

/* Parses src (len bytes, need not be NUL-terminated). NULL + err on a syntax
 * error, an unknown statement, an unknown filter/test outside any {% if %}
 * or inline if (inside one it fails only when applied, as in Jinja2), or
 * memory. */
exsa_jinja *exsa_jinja_parse(const char *src, size_t len, exsa_err *err);
void exsa_jinja_destroy(exsa_jinja *t);

/* Renders with the variables of the JSON object vars (may be NULL); object
 * key order is kept (templates iterate dicts and tojson prints in order).
 * On success *out is a malloc'd NUL-terminated string (caller frees) and
 * *out_len (optional) its length. Returns 0 or a negative EXSA_E* code. */
int exsa_jinja_render(const exsa_jinja *t, const json_t *vars, const exsa_jinja_opts *opts,
                      char **out, size_t *out_len, exsa_err *err);

#endif
