/* Conversations API: read, append to and delete a conversation's history.
 * Ids are validated before anything touches Redis; a bad id or body changes
 * nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/app/app.h"
#include "semgate/archive/archive.h"
#include "semgate/core/buf.h"
#include "semgate/core/json.h"
#include "semgate/core/log.h"
#include "semgate/memory/memory.h"
#include "semgate/routes/routes.h"
#include "semgate/cache/scope.h"
#include "semgate/store/store.h"
#include "semgate/summary/summary.h"

static const char *conv_id(struct sg_req *req)
{
	const char *id = req->params[0];
	return memory_id_valid(id) ? id : NULL;
}

static int bad_id(struct sg_req *req)
{
	return http_send_error(req, 400, "invalid_request_error", "invalid_conversation_id",
			       "conversation id must match [A-Za-z0-9._:-]{1,128}");
}

static int redis_error(struct sg_req *req, const struct sg_error *e)
{
	return http_send_sg_error(req, e);
}

/* SEMGATE_SUMMARY=on: "summary" (null until the first one is written),
 * "pending" (messages trimmed out of the window, not yet folded in) and
 * "skipped" (dropped from pending at SEMGATE_SUMMARY_PENDING_MAX). */
static void add_summary(cJSON *o, const struct store_summary *sm)
{
	cJSON *js = sm->text ? cJSON_CreateObject() : cJSON_CreateNull();
	if (!js)
		return;
	if (sm->text) {
		cJSON_AddStringToObject(js, "text", sm->text);
		cJSON_AddNumberToObject(js, "messages", (double)sm->covered);
		cJSON_AddNumberToObject(js, "updated_at_ms", (double)sm->updated_ms);
	}
	cJSON_AddItemToObject(o, "summary", js);
	cJSON_AddNumberToObject(o, "pending", (double)sm->pending);
	cJSON_AddNumberToObject(o, "skipped", (double)sm->skipped);
}

/* ?all=1: the whole conversation from the archive; ?all=0 or nothing: the
 * window in Redis. *all gets which. */
static enum sg_err parse_all(const char *query, bool *all, struct sg_error *e)
{
	static const char *const names[] = { "all" };
	struct sg_param v[1];
	*all = false;
	enum sg_err rc = sg_query_split(query, names, 1, v, e);
	if (rc != SG_OK || !v[0].value)
		return rc;
	if (v[0].len != 1 || (v[0].value[0] != '0' && v[0].value[0] != '1'))
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "'all' must be 0 or 1");
	*all = v[0].value[0] == '1';
	return SG_OK;
}

int route_conv_get(struct sg_req *req)
{
	const char *id = conv_id(req);
	if (!id)
		return bad_id(req);
	struct sg_error e = { 0 };
	struct store *s = worker_store(req->worker);
	cJSON *hist = NULL;
	long long ttl = -2;
	bool all = false;
	if (parse_all(req->query, &all, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	if (all && !req->app->archive)
		return http_send_error(req, 400, "invalid_request_error", "archive_disabled",
				       "all=1 reads the archive, which is off (SEMGATE_ARCHIVE_DSN)");
	if (!s)
		return http_send_error(req, 503, "service_unavailable", "out_of_memory",
				       "out of memory");
	struct store_summary sm = { 0 };
	bool with_summary = req->app->summ != NULL && !all;
	if (all) {
		/* as fresh as the archive: the newest turns may still be in
		 * the stream (see the lag metrics) */
		if (archive_pg_conversation(req->app->archive, req->tenant, id, &hist, &e) !=
		    SG_OK) {
			if (e.code != SG_ERR_ARCHIVE)
				return http_send_sg_error(req, &e);
			/* the detail names the database's host: for the log only */
			sg_log(SG_LOG_WARN, "%s", e.msg);
			return http_send_error(req, 503, "service_unavailable",
					       "archive_unavailable", "the archive is unavailable");
		}
	} else if ((with_summary ? memory_load_with_summary(s, req->tenant, id, &hist, &ttl, &sm, &e)
				 : memory_load(s, req->tenant, id, &hist, &ttl, &e)) != SG_OK) {
		return redis_error(req, &e);
	}
	if (cJSON_GetArraySize(hist) == 0) {
		store_summary_finish(&sm);
		cJSON_Delete(hist);
		return http_send_error(req, 404, "not_found_error", "conversation_not_found",
				       "no such conversation");
	}
	int status;
	cJSON *o = cJSON_CreateObject();
	int len = cJSON_GetArraySize(hist);
	if (o && cJSON_AddStringToObject(o, "id", id)) {
		cJSON_AddItemToObject(o, "messages", hist);
		hist = NULL;
		cJSON_AddNumberToObject(o, "length", len);
		if (all)
			cJSON_AddStringToObject(o, "source", "archive");
		else
			cJSON_AddNumberToObject(o, "ttl_seconds", (double)ttl);
		if (with_summary)
			add_summary(o, &sm);
	}
	store_summary_finish(&sm);
	char *body = o ? sg_json_render(o) : NULL;
	if (body)
		status = http_send_json(req, 200, body, NULL);
	else
		status = http_send_error(req, 503, "service_unavailable", "out_of_memory",
					 "out of memory");
	free(body);
	cJSON_Delete(o);
	cJSON_Delete(hist);
	return status;
}

int route_conv_append(struct sg_req *req)
{
	const char *id = conv_id(req);
	if (!id)
		return bad_id(req);
	struct sg_error e = { 0 };
	cJSON *body = NULL;
	int status;
	if (http_read_body(req, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	if (sg_json_parse(req->body.data, req->body.len, &body, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
	if (!cJSON_IsObject(body)) {
		sg_error_set(&e, SG_ERR_BAD_REQUEST, "the request body must be a JSON object");
		status = http_send_sg_error(req, &e);
		goto out;
	}
	if (!msgs) {
		sg_error_set(&e, SG_ERR_BAD_REQUEST, "'messages' is required");
		status = http_send_sg_error(req, &e);
		goto out;
	}
	if (scope_validate_messages(msgs, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
		goto out;
	}
	/* histories never hold system prompts (the chat route puts them first
	 * on every call); storing one here would send it mid-history later */
	int i = 0;
	const cJSON *m;
	cJSON_ArrayForEach(m, msgs) {
		const char *role = sg_json_str(m, "role");
		if (role && (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)) {
			sg_error_set(&e, SG_ERR_BAD_REQUEST,
				"messages[%d]: system messages are not stored in a conversation; "
				"send them with each chat request or use a named prompt", i);
			status = http_send_sg_error(req, &e);
			goto out;
		}
		i++;
	}
	struct store *s = worker_store(req->worker);
	long long len = 0;
	if (!s) {
		status = http_send_error(req, 503, "service_unavailable", "out_of_memory",
					 "out of memory");
		goto out;
	}
	if (summary_append(req->app, s, req->tenant, id, msgs, &len, &e) != SG_OK) {
		status = redis_error(req, &e);
		goto out;
	}
	char json[64];
	snprintf(json, sizeof(json), "{\"length\":%lld}", len);
	status = http_send_json(req, 201, json, NULL);
out:
	cJSON_Delete(body);
	return status;
}

int route_conv_delete(struct sg_req *req)
{
	const char *id = conv_id(req);
	if (!id)
		return bad_id(req);
	struct sg_error e = { 0 };
	struct store *s = worker_store(req->worker);
	bool existed = false;
	if (!s)
		return http_send_error(req, 503, "service_unavailable", "out_of_memory",
				       "out of memory");
	if (memory_delete(s, req->tenant, id, &existed, &e) != SG_OK)
		return redis_error(req, &e);
	return http_send(req, 204, "application/json", "", 0, NULL);
}
