/* Chat request validation and cache scope: which requests may share a cached
 * answer. Pure logic over a parsed cJSON tree — no I/O, no globals, so every
 * function here is thread-safe on distinct arguments. It must never let two
 * requests that can produce different answers share a scope. */
#ifndef SEMGATE_SCOPE_H
#define SEMGATE_SCOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>
#include "semgate/core/buf.h"
#include "semgate/core/err.h"

#define SG_SCOPE_MAX_MESSAGES 4096
#define SG_SCOPE_MAX_N 128
/* Deeper values are refused by scope_canonical (sg_json_parse already stops
 * at SG_JSON_MAX_DEPTH, so this only guards trees built in code). */
#define SG_SCOPE_MAX_DEPTH 128

/* Top-level request fields that cannot change what the model answers and so
 * stay out of the scope: messages (hashed separately), stream,
 * stream_options, user, metadata, store, n (answers with n > 1 are never
 * cached; see n_gt_1). Every other field — including ones this version does
 * not know — is in the scope, which errs on the side of fewer hits rather
 * than wrong answers. */
#define SG_SCOPE_DENYLIST "messages", "stream", "stream_options", "user", \
	"metadata", "store", "n"

/* Validate an OpenAI chat completion request body.
 * req: borrowed, normally from sg_json_parse. Checks: req is an object;
 * model a non-empty string; messages a non-empty array of at most
 * SG_SCOPE_MAX_MESSAGES objects, each with a non-empty string role and a
 * content that is a string, or an array of objects with a string "type"
 * ("text" parts need a string "text"), or null/absent only for an assistant
 * message with tool_calls (or the legacy function_call). Optional fields,
 * when present and not null (null means "not given", as upstream reads it):
 * stream bool; n integer in [1, 128]; temperature number in [0, 2]; top_p
 * number in [0, 1]; max_tokens, max_completion_tokens integer >= 1; stop
 * string or array of strings; seed integer; tools array; stream_options
 * object. Duplicate keys are checked every time they occur.
 * Returns SG_OK, or SG_ERR_BAD_REQUEST with a message naming the field
 * (e.g. "messages[2].role must be a string") in e (may be NULL). */
enum sg_err scope_validate_chat(const cJSON *req, struct sg_error *e);

/* Validate a 'messages' array alone, with the rules above (non-empty, at
 * most SG_SCOPE_MAX_MESSAGES well-formed message objects). */
enum sg_err scope_validate_messages(const cJSON *msgs, struct sg_error *e);

/* Append the canonical serialisation of v to out. The result is compact
 * JSON: object members sorted by key in byte order (members with equal keys
 * keep their input order), arrays in order, strings with one fixed escaping
 * (\" \\ \b \f \n \r \t, other bytes below 0x20 as \u00xx, everything else
 * raw UTF-8), numbers as integers when integral with |x| < 2^53 (so 1 and
 * 1.0 agree), otherwise "%.17g"; non-finite numbers as null. Input key order
 * and whitespace do not change it.
 * Returns SG_OK, SG_ERR_NOMEM, SG_ERR_TOO_LARGE (out's cap; out may then hold
 * a partial value), or SG_ERR_BAD_REQUEST for nesting deeper than
 * SG_SCOPE_MAX_DEPTH or an item type the parser never produces (raw). */
enum sg_err scope_canonical(const cJSON *v, struct sg_buf *out);

struct scope_info {
	/* Lowercase hex SHA-256 over a length-prefixed serialisation of tenant,
	 * namespace, model, every top-level field not in SG_SCOPE_DENYLIST, and
	 * every message in order, except that the last message with role
	 * "user" contributes all its fields but content. */
	char scope[65];
	/* Lowercase hex SHA-256 over scope and canonical(last user content):
	 * the exact-cache key. */
	char exact[65];
	/* Text of the last user message (string content, or the "text" of
	 * every text part joined with "\n"); owned here, freed by
	 * scope_info_finish. Never NULL after scope_compute returns SG_OK. */
	char *query;
	size_t query_len;
	/* False when there is no user message: neither cache may be used. */
	bool cacheable;
	/* False when the last user content has non-text parts, the request
	 * has tools or functions, or the query is blank: exact cache only. */
	bool semantic_ok;
	/* n > 1: the answer must not be served from or stored in the cache.
	 * cacheable does not include this; callers check both. */
	bool n_gt_1;
};

/* Compute the scope of a chat request.
 * tenant: borrowed, non-NULL. namespace_: borrowed, NULL or "" for none
 * (both give the same scope). req: borrowed; call scope_validate_chat
 * first — other input gives defined results, never a crash.
 * out is always initialised (scope_info_finish is safe after a failure); on
 * SG_OK the caller must call scope_info_finish.
 * Returns SG_OK, SG_ERR_NOMEM, or SG_ERR_BAD_REQUEST (req not an object,
 * nesting too deep) with a message in e (may be NULL). */
enum sg_err scope_compute(const char *tenant, const char *namespace_,
			  const cJSON *req, struct scope_info *out,
			  struct sg_error *e);

/* Free what scope_compute allocated. Accepts NULL; idempotent. */
void scope_info_finish(struct scope_info *s);

#endif
