/* JSON Schema -> GBNF grammar, for structured output (response_format
 * json_schema / json_object and tool-call arguments).
 *
 * The grammar is text in llama.cpp's GBNF syntax with a rule named `root`.
 * It describes a subset of the documents the schema accepts: the output a
 * model may produce, in one canonical layout. Every document the grammar
 * accepts is valid against the schema for the keywords listed below; a
 * keyword that cannot be honoured is an error, never silently dropped.
 *
 * Layout:
 *  - Compact JSON. Where JSON allows whitespace (after '{', '[', ':', ',',
 *    around values) the grammar allows at most ONE chunk: a single space, or
 *    a newline followed by up to 20 spaces/tabs. Unbounded whitespace would
 *    let a model emit blanks forever.
 *  - Plain strings accept any JSON escape; where a schema fixes characters
 *    (pattern, enum, const, property names) the grammar takes their
 *    canonical spelling: \" \\ \b \f \n \r \t, \u00XX for other control
 *    characters, everything else raw. Numbers: at most 16 integer digits,
 *    16 fraction digits and 3 exponent digits; integers (type integer) up to
 *    19 digits, canonical (no leading zeros, no "-0").
 *
 * Keywords:
 *  - type (string, number, integer, boolean, null, object, array, or a
 *    list of them); without type it is inferred from the other keywords,
 *    and a schema with none is "any JSON value" (so is `true`).
 *  - properties, required, additionalProperties. Properties are emitted in
 *    the order of "properties"; required ones must appear, optional ones may
 *    be skipped; required names absent from "properties" follow, then any
 *    additional properties. additionalProperties absent on an object with
 *    properties or required means NO extra keys (the grammar is stricter
 *    than the schema, as llama.cpp's converter is); true or a schema allows
 *    extra keys whose names differ from the listed ones. Extra keys are
 *    written without escape sequences, so that no escaped spelling of a
 *    listed name ("\u0061" for "a") can repeat it. An object schema with
 *    neither properties, required nor additionalProperties accepts any
 *    object.
 *  - items, prefixItems (draft-4 array form of items too), minItems,
 *    maxItems. All prefixItems are emitted; further items follow only when
 *    items is a schema (absent or false: none).
 *  - enum, const (the literal JSON text, compact); they take precedence
 *    over sibling keywords.
 *  - anyOf, oneOf (treated as anyOf); allOf merges object schemas
 *    (properties, required, additionalProperties; a property defined
 *    differently in two branches is refused).
 *  - $ref to "#" or a JSON pointer inside the document ("#/$defs/x",
 *    "#/definitions/x", ...); recursive refs become recursive rules; a
 *    left-recursive cycle (a ref reached again before any character) is an
 *    error.
 *  - minLength, maxLength; pattern: a regex subset (literals, escapes
 *    \d \w \s \D \W \S \t \n \r \f \v \xHH \uHHHH and escaped punctuation,
 *    '.', classes [...] / [^...] with ranges, groups ( ) and (?: ),
 *    alternation, * + ? {m} {m,} {m,n} (lazy '?' accepted), anchors '^' and
 *    '$' only at the ends of a top-level alternative; an unanchored end
 *    matches any text there, as JSON Schema's search semantics say).
 *    Anything else (look-around, backreferences, \b, possessive '+',
 *    Unicode property escapes, \u escapes of surrogates) is refused. \s is
 *    the ASCII white space set; '.' excludes \n \r U+2028 U+2029 (ECMA).
 *    pattern together with minLength/maxLength/format is refused.
 *  - format: date, time, date-time, uuid (RFC 3339 / RFC 4122 shapes).
 *  - minimum, maximum, exclusiveMinimum, exclusiveMaximum (number or
 *    draft-4 boolean form) on integers: exact digit-range rules, bounds
 *    within +-10^18.
 * Refused with an error naming the keyword and its JSON pointer: not, if,
 * then, else, patternProperties, propertyNames, dependentRequired,
 * dependentSchemas, dependencies, multipleOf, uniqueItems, contains,
 * minContains, maxContains, minProperties, maxProperties,
 * unevaluatedProperties, unevaluatedItems, additionalItems, $dynamicRef,
 * $recursiveRef; minimum & co on type number; other format values; anyOf /
 * oneOf / allOf / $ref beside other constraining keywords. Annotations
 * (title, description, examples, default, $schema, $id, $comment, ...) and
 * unknown keywords are ignored.
 *
 * Limits (each an error when passed): nesting depth 64, 20000 rules, 8 MiB of
 * grammar, repetition counts (minLength, maxItems, {m,n}, ...) 10000.
 *
 * Errors are EXSA_EINVAL (malformed schema: wrong keyword types, dangling
 * $ref) or EXSA_EUNSUPPORTED (valid but not honoured), with a message such as
 * "json schema: keyword 'not' is not supported (at #/properties/a)".
 * Thread safe: no global state.
 */
#ifndef EXSA_JSON_SCHEMA_H
#define EXSA_JSON_SCHEMA_H

#include <jansson.h>

#include "exsa.h"

/* GBNF for documents valid against schema (malloc'd, the caller frees), or
 * NULL with err set. */
char *exsa_json_schema_to_gbnf(const json_t *schema, exsa_err *err);

/* GBNF for any JSON object (response_format {"type": "json_object"}), in the
 * same layout. Malloc'd; NULL only when out of memory. */
char *exsa_json_object_gbnf(void);

#endif
