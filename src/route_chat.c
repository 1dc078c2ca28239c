/* POST /v1/chat/completions: validate, apply gateway headers (memory mode,
 * prompts), call the LLM upstream and relay its answer, then append the turn
 * to the conversation. Never forwards a body it has not validated, never
 * calls the LLM in memory mode without the history, and never appends a
 * turn whose answer failed. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "semgate/app.h"
#include "semgate/json.h"
#include "semgate/log.h"
#include "semgate/memory.h"
#include "semgate/prompts.h"
#include "semgate/routes.h"
#include "semgate/scope.h"
#include "semgate/store.h"
#include "semgate/upstream.h"

struct chat {
	struct sg_req *req;
	cJSON *body;            /* the client's request */
	const char *conv;       /* X-Conversation-Id, validated, or NULL */
	const char *prompt;     /* system prompt text to prepend, or NULL */
	cJSON *turn;            /* this turn's non-system messages (to store) */
	char *upstream_body;    /* rendered request when it differs from the client's */
	char hdr_len[24];
};

/* The client's own Bearer token, passed through only when the gateway has
 * no upstream key of its own. */
static const char *client_bearer(const struct sg_req *req)
{
	if (req->app->cfg->upstream_api_key[0])
		return NULL;
	const char *auth = http_header(req, "Authorization");
	if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
		return NULL;
	return auth + 7;
}

static bool is_system(const cJSON *m)
{
	const char *role = sg_json_str(m, "role");
	return role && (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0);
}

/* Read the gateway's request headers. */
static enum sg_err read_headers(struct chat *c, struct sg_error *e)
{
	struct sg_req *req = c->req;
	const char *conv = http_header(req, "X-Conversation-Id");
	if (conv) {
		if (!memory_id_valid(conv))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"X-Conversation-Id must match [A-Za-z0-9._:-]{1,128}");
		c->conv = conv;
	}
	const char *name = http_header(req, "X-Semgate-Prompt");
	if (!name && req->app->cfg->default_prompt[0])
		name = req->app->cfg->default_prompt;
	if (name) {
		if (!prompts_name_valid(name))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"X-Semgate-Prompt must match [A-Za-z0-9_-]{1,64}");
		c->prompt = prompts_get(req->app->prompts, name);
		if (!c->prompt)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"unknown prompt '%s'", name);
	}
	return SG_OK;
}

/* Build the messages the LLM sees: the new turn's system messages (or the
 * named prompt when it has none), the stored history, then the rest of the
 * new turn. Records the turn to store in c->turn. */
static enum sg_err build_request(struct chat *c, struct sg_error *e)
{
	cJSON *msgs = cJSON_GetObjectItemCaseSensitive(c->body, "messages");
	bool has_system = false;
	const cJSON *m;
	cJSON_ArrayForEach(m, msgs)
		has_system |= is_system(m);
	if (has_system)
		c->prompt = NULL;
	if (!c->conv && !c->prompt)
		return SG_OK; /* forward the client's bytes untouched */

	cJSON *history = NULL;
	if (c->conv) {
		struct store *s = worker_store(c->req->worker);
		long long ttl;
		if (!s)
			return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		enum sg_err rc = memory_load(s, c->req->tenant, c->conv, &history, &ttl, e);
		if (rc != SG_OK) {
			if (rc == SG_ERR_REDIS)
				sg_error_set(e, SG_ERR_REDIS,
					"conversation memory is unavailable (Redis): not calling the LLM without the history");
			return rc;
		}
	}
	cJSON *out = cJSON_CreateArray();
	c->turn = cJSON_CreateArray();
	if (!out || !c->turn)
		goto nomem;
	if (c->prompt) {
		cJSON *sys = cJSON_CreateObject();
		if (!sys || !cJSON_AddStringToObject(sys, "role", "system") ||
		    !cJSON_AddStringToObject(sys, "content", c->prompt)) {
			cJSON_Delete(sys);
			goto nomem;
		}
		cJSON_AddItemToArray(out, sys);
	}
	cJSON_ArrayForEach(m, msgs)
		if (is_system(m))
			cJSON_AddItemToArray(out, cJSON_Duplicate(m, 1));
	if (history) {
		cJSON *h;
		while ((h = cJSON_DetachItemFromArray(history, 0)))
			cJSON_AddItemToArray(out, h);
	}
	cJSON_ArrayForEach(m, msgs) {
		if (is_system(m))
			continue;
		cJSON_AddItemToArray(out, cJSON_Duplicate(m, 1));
		cJSON_AddItemToArray(c->turn, cJSON_Duplicate(m, 1));
	}
	cJSON_Delete(history);
	cJSON_ReplaceItemInObjectCaseSensitive(c->body, "messages", out);
	c->upstream_body = cJSON_PrintUnformatted(c->body);
	if (!c->upstream_body)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	return SG_OK;
nomem:
	cJSON_Delete(history);
	cJSON_Delete(out);
	return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
}

/* The assistant message of a completed answer, ready to store, or NULL. */
static cJSON *answer_message(const cJSON *doc)
{
	const cJSON *choices = sg_json_arr(doc, "choices");
	const cJSON *msg = sg_json_obj(cJSON_GetArrayItem(choices, 0), "message");
	if (!msg || !sg_json_str(msg, "role"))
		return NULL;
	cJSON *copy = cJSON_Duplicate(msg, 1);
	if (!copy)
		return NULL;
	/* drop null members (refusal: null, …): they carry nothing */
	for (cJSON *it = copy->child, *next; it; it = next) {
		next = it->next;
		if (cJSON_IsNull(it) && strcmp(it->string, "content") != 0)
			cJSON_DeleteItemFromObjectCaseSensitive(copy, it->string);
	}
	return copy;
}

/* Append this turn and the answer to the conversation. Returns the value
 * of the X-Semgate-Memory header. */
static const char *remember(struct chat *c, const cJSON *doc)
{
	cJSON *ans = answer_message(doc);
	if (!ans)
		return "not-stored";
	cJSON_AddItemToArray(c->turn, ans);
	struct sg_error e = { 0 };
	long long len = 0;
	const struct sg_config *cfg = c->req->app->cfg;
	struct store *s = worker_store(c->req->worker);
	if (!s || memory_append(s, c->req->tenant, c->conv, c->turn, cfg->history_max,
				cfg->history_ttl, &len, &e) != SG_OK) {
		sg_log(SG_LOG_WARN, "conversation %s: the answer was sent but the turn "
		       "could not be stored: %s", c->conv, e.msg);
		return "not-stored";
	}
	snprintf(c->hdr_len, sizeof(c->hdr_len), "%lld", len);
	return "stored";
}

/* Relay an upstream answer: JSON bodies as they are with the upstream's
 * status; anything else becomes a clean JSON error. */
static int relay(struct chat *c, const struct upstream_resp *r)
{
	struct sg_req *req = c->req;
	cJSON *doc = NULL;
	if (sg_json_parse(r->body.data ? r->body.data : "", r->body.len, &doc, NULL) != SG_OK ||
	    !cJSON_IsObject(doc)) {
		cJSON_Delete(doc);
		if (r->status >= 400)
			return http_send_error(req, (int)r->status, "upstream_error",
					       "upstream_error",
					       "upstream answered with an error and no JSON body");
		return http_send_error(req, 502, "upstream_error", "upstream_invalid_response",
				       "upstream answered with invalid JSON");
	}
	int status = (r->status >= 100 && r->status <= 599) ? (int)r->status : 502;
	const char *hdrs[8] = { NULL };
	int nh = 0;
	if (c->conv && status == 200) {
		hdrs[nh++] = "X-Semgate-Memory";
		hdrs[nh++] = remember(c, doc);
		if (c->hdr_len[0]) {
			hdrs[nh++] = "X-Semgate-History-Length";
			hdrs[nh++] = c->hdr_len;
		}
	}
	cJSON_Delete(doc);
	return http_send(req, status, "application/json", r->body.data, r->body.len, hdrs);
}

int route_chat_completions(struct sg_req *req)
{
	struct sg_error e = { 0 };
	struct chat c = { .req = req };
	int status;
	if (http_read_body(req, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	if (sg_json_parse(req->body.data, req->body.len, &c.body, &e) != SG_OK ||
	    scope_validate_chat(c.body, &e) != SG_OK ||
	    read_headers(&c, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
		goto out;
	}
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c.body, "stream"))) {
		status = http_send_error(req, 400, "invalid_request_error", "stream_unsupported",
					 "\"stream\": true is not supported by this gateway version");
		goto out;
	}
	if (build_request(&c, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
		goto out;
	}
	struct upstream *up = worker_upstream(req->worker);
	if (!up) {
		status = http_send_error(req, 503, "service_unavailable", "out_of_memory",
					 "out of memory");
		goto out;
	}
	struct upstream_resp r = { 0 };
	req->cache_outcome = "bypass";
	const char *body = c.upstream_body ? c.upstream_body : req->body.data;
	size_t len = c.upstream_body ? strlen(c.upstream_body) : req->body.len;
	enum sg_err rc = upstream_post(up, &req->app->llm, "/chat/completions", body, len,
				       client_bearer(req), &r, &e);
	req->upstream_ms = r.ms;
	if (rc != SG_OK)
		status = http_send_sg_error(req, &e);
	else
		status = relay(&c, &r);
	upstream_resp_finish(&r);
out:
	free(c.upstream_body);
	cJSON_Delete(c.turn);
	cJSON_Delete(c.body);
	return status;
}
