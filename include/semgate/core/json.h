/* Strict JSON parsing and typed getters over cJSON.
 * sg_json_parse refuses anything DESIGN.md calls bad input: invalid UTF-8,
 * lone surrogates, trailing bytes, nesting deeper than SG_JSON_MAX_DEPTH,
 * and \u0000 in a string (a cJSON string ends at NUL, so the tree would
 * silently differ from the text). */
#ifndef SEMGATE_JSON_H
#define SEMGATE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>
#include "semgate/core/err.h"

#define SG_JSON_MAX_DEPTH 64

/* Parse exactly one JSON value from data[0..len). On success *out owns the
 * tree (caller deletes). On failure returns SG_ERR_BAD_REQUEST with a message
 * in e. Never reads past len; data need not be NUL-terminated. */
enum sg_err sg_json_parse(const char *data, size_t len, cJSON **out,
			  struct sg_error *e);

/* True when s[0..len) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
bool sg_utf8_valid(const char *s, size_t len);

/* Typed getters: return the borrowed item, or NULL when absent or of another
 * type. */
const char *sg_json_str(const cJSON *obj, const char *key);
const cJSON *sg_json_obj(const cJSON *obj, const char *key);
const cJSON *sg_json_arr(const cJSON *obj, const char *key);

/* Render compactly, every finite number spelled so it reads back as the
 * same double (cJSON_PrintUnformatted alone rounds to 15 digits). Caller
 * frees with free(). NULL on out of memory. */
char *sg_json_render(const cJSON *item);

/* In s[0..len), a JSON object already known to be valid, find the first
 * top-level member named key and give its value's span [*start, *end).
 * 1: found; 0: absent; -1: some member name holds an escape, so names
 * cannot be compared without decoding, or the text does not start with
 * '{' after whitespace (a byte-order mark): the caller falls back to a
 * tree. */
int sg_json_member_span(const char *s, size_t len, const char *key, size_t *start,
			size_t *end);

/* Like sg_json_member_span, but the span of the whole member (name, colon,
 * value) with the comma that joins it to its neighbours: the one before it,
 * or for the first member the one after it, so that s without
 * [*start, *end) is still valid JSON. */
int sg_json_member_cut_span(const char *s, size_t len, const char *key, size_t *start,
			    size_t *end);

/* s (a valid JSON object) with the first top-level member named key given
 * the value value (JSON text), or, when absent, "key":value added right
 * after the opening brace; every other byte as it was. key must need no
 * escaping. Caller frees. NULL where sg_json_member_span gives -1 (render
 * a tree instead) or on out of memory. */
char *sg_json_member_put(const char *s, size_t len, const char *key, const char *value);

/* Build {"error":{"message","type","code"}} rendered; caller frees. */
char *sg_json_error_body(const char *message, const char *type, const char *code);

#endif
