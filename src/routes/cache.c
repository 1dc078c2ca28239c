/* The cache API (RAG sidecar): /v1/cache/lookup, /v1/cache/entries[/{id}],
 * /v1/cache/invalidate, /v1/cache/stats, /v1/cache/top and
 * /v1/cache/timeseries. Every body is
 * read with its cap and validated field by field before anything touches
 * Redis or the index; everything runs inside the caller's tenant. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/app/app.h"
#include "semgate/cache/api.h"
#include "semgate/cache/series.h"
#include "semgate/core/json.h"
#include "semgate/core/metrics.h"
#include "semgate/routes/routes.h"
#include "semgate/store/ops.h"

static int no_memory(struct sg_req *req)
{
	return http_send_error(req, 503, "service_unavailable", "out_of_memory", "out of memory");
}

/* Send o (deleted here) as JSON with status. */
static int send_obj(struct sg_req *req, int status, cJSON *o)
{
	char *body = o ? sg_json_render(o) : NULL;
	cJSON_Delete(o);
	if (!body)
		return no_memory(req);
	int rc = http_send_json(req, status, body, NULL);
	free(body);
	return rc;
}

/* Read and validate the body for op, and find this worker's Redis
 * connection. On failure the error was sent and its status is returned; on
 * success 0, with *doc and *rq to release (done_request) and *s set. */
static int read_request(struct sg_req *req, enum cache_api_op op, cJSON **doc,
			struct cache_api_req *rq, struct store **s)
{
	struct sg_error e = { 0 };
	*doc = NULL;
	memset(rq, 0, sizeof(*rq));
	if (http_read_body(req, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	if (sg_json_parse(req->body.data, req->body.len, doc, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	int status = 0;
	if (cache_api_parse(op, *doc, rq, &e) != SG_OK)
		status = http_send_sg_error(req, &e);
	else if (!(*s = worker_store(req->worker)))
		status = no_memory(req);
	if (status) {
		cache_api_req_finish(rq);
		cJSON_Delete(*doc);
		*doc = NULL;
	}
	return status;
}

static int done_request(int status, cJSON *doc, struct cache_api_req *rq)
{
	cache_api_req_finish(rq);
	cJSON_Delete(doc);
	return status;
}

/* The {id} of an entry route and this worker's Redis connection; 0, or
 * the status of the error sent. */
static int entry_route(struct sg_req *req, const char **id, struct store **s)
{
	*id = cache_api_id_valid(req->params[0]) ? req->params[0] : NULL;
	if (!*id)
		return http_send_error(req, 400, "invalid_request_error", "invalid_entry_id",
				       "entry id must match [A-Za-z0-9._:-]{1,64}");
	if (!(*s = worker_store(req->worker)))
		return no_memory(req);
	return 0;
}

static int not_found(struct sg_req *req)
{
	return http_send_error(req, 404, "not_found_error", "entry_not_found",
			       "no such cache entry");
}

static double round6(double x)
{
	return round(x * 1e6) / 1e6;
}

enum sg_err route_verify_mode(struct sg_req *req, enum verify_mode *out, struct sg_error *e)
{
	const char *cv = req->app->cfg->verify;
	if (!verify_mode_parse(cv, strlen(cv), out))
		*out = SG_VERIFY_STRICT; /* config.c checked it already */
	const char *vh = http_header(req, "X-Semgate-Verify");
	if (vh && !verify_mode_parse(vh, strlen(vh), out))
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
				    "X-Semgate-Verify must be one of off, basic, strict");
	return SG_OK;
}

int route_cache_lookup(struct sg_req *req)
{
	cJSON *doc;
	struct cache_api_req rq;
	enum verify_mode verify;
	struct sg_error he = { 0 };
	if (route_verify_mode(req, &verify, &he) != SG_OK)
		return http_send_sg_error(req, &he);
	struct store *s;
	int status = read_request(req, CACHE_API_LOOKUP, &doc, &rq, &s);
	if (status)
		return status;
	rq.verify = verify;
	struct upstream *up = worker_upstream(req->worker);
	struct sg_error e = { 0 };
	struct cache_api_result res;
	if (cache_api_lookup(req->app, s, up, req->tenant, &rq, &res, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
		goto out;
	}
	req->cache_outcome = res.hit ? (res.exact ? "hit-exact" : "hit-semantic") :
			     res.warming ? "warming" : "miss";
	metrics_lookup_outcome(req->cache_outcome);
	if (res.best >= -1.0)
		req->similarity = res.best;
	if (!res.hit && res.rejected != SG_VERIFY_PASS)
		req->verify = verify_reason_name(res.rejected);
	cJSON *o = cJSON_CreateObject();
	bool ok = o != NULL;
	if (ok && res.hit) {
		cJSON *meta = NULL;
		if (res.entry.metadata &&
		    sg_json_parse(res.entry.metadata, res.entry.metadata_len, &meta, NULL) != SG_OK)
			meta = NULL;
		if (!meta)
			meta = cJSON_CreateNull();
		ok = cJSON_AddBoolToObject(o, "hit", 1) &&
		     cJSON_AddStringToObject(o, "id", res.entry.id) &&
		     cJSON_AddNumberToObject(o, "similarity", round6(res.best)) &&
		     cJSON_AddStringToObject(o, "match", res.exact ? "exact" : "semantic") &&
		     cJSON_AddStringToObject(o, "query", res.entry.query) &&
		     cJSON_AddStringToObject(o, "answer", res.entry.answer) &&
		     meta;
		if (ok)
			cJSON_AddItemToObject(o, "metadata", meta);
		else
			cJSON_Delete(meta);
	} else if (ok) {
		ok = cJSON_AddBoolToObject(o, "hit", 0) &&
		     (res.best >= -1.0 ?
		      cJSON_AddNumberToObject(o, "best_similarity", round6(res.best)) != NULL :
		      cJSON_AddNullToObject(o, "best_similarity") != NULL) &&
		     (!res.embed_failed || cJSON_AddBoolToObject(o, "embedding_failed", 1)) &&
		     (!res.warming || cJSON_AddBoolToObject(o, "warming", 1));
		if (ok && req->verify) {
			cJSON *v = cJSON_AddObjectToObject(o, "verify");
			ok = v && cJSON_AddStringToObject(v, "rejected", req->verify) &&
			     cJSON_AddStringToObject(v, "candidate", res.rejected_id);
		}
	}
	if (!ok) {
		cJSON_Delete(o);
		o = NULL;
	}
	status = send_obj(req, 200, o);
	cache_api_result_finish(&res);
out:
	return done_request(status, doc, &rq);
}

int route_cache_store(struct sg_req *req)
{
	cJSON *doc;
	struct cache_api_req rq;
	struct store *s;
	int status = read_request(req, CACHE_API_STORE, &doc, &rq, &s);
	if (status)
		return status;
	struct upstream *up = worker_upstream(req->worker);
	struct sg_error e = { 0 };
	char id[65];
	bool indexed = false;
	if (cache_api_store(req->app, s, up, req->tenant, &rq, id, &indexed, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
	} else {
		cJSON *o = cJSON_CreateObject();
		if (o && (!cJSON_AddStringToObject(o, "id", id) ||
			  !cJSON_AddBoolToObject(o, "indexed", indexed))) {
			cJSON_Delete(o);
			o = NULL;
		}
		status = send_obj(req, 201, o);
	}
	return done_request(status, doc, &rq);
}

int route_cache_entry_get(struct sg_req *req)
{
	const char *id;
	struct store *s;
	int status = entry_route(req, &id, &s);
	if (status)
		return status;
	struct sg_error e = { 0 };
	struct store_entry_view v;
	bool found = false;
	if (store_entry_read(s, req->tenant, id, &v, &found, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	if (!found)
		return not_found(req);
	status = send_obj(req, 200, cache_api_entry_json(&v));
	store_entry_view_finish(&v);
	return status;
}

int route_cache_entry_delete(struct sg_req *req)
{
	const char *id;
	struct store *s;
	int status = entry_route(req, &id, &s);
	if (status)
		return status;
	struct sg_error e = { 0 };
	bool found = false;
	if (cache_api_delete(req->app, s, req->tenant, id, &found, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	if (!found)
		return not_found(req);
	return http_send(req, 204, "application/json", "", 0, NULL);
}

int route_cache_invalidate(struct sg_req *req)
{
	cJSON *doc;
	struct cache_api_req rq;
	struct store *s;
	int status = read_request(req, CACHE_API_INVALIDATE, &doc, &rq, &s);
	if (status)
		return status;
	struct sg_error e = { 0 };
	long long deleted = 0;
	if (cache_api_invalidate(req->app, s, req->tenant, rq.has_ns ? rq.ns : NULL,
					rq.tag, &deleted, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
	} else {
		char json[48];
		snprintf(json, sizeof(json), "{\"deleted\":%lld}", deleted);
		status = http_send_json(req, 200, json, NULL);
	}
	return done_request(status, doc, &rq);
}

int route_cache_feedback(struct sg_req *req)
{
	cJSON *doc;
	struct cache_api_req rq;
	struct store *s;
	int status = read_request(req, CACHE_API_FEEDBACK, &doc, &rq, &s);
	if (status)
		return status;
	struct sg_error e = { 0 };
	struct cache_feedback_result fr;
	if (cache_api_feedback(req->app, s, worker_upstream(req->worker), req->tenant, &rq,
				      &fr, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
	} else if (!fr.found) {
		status = not_found(req);
	} else {
		metrics_feedback(rq.wrong);
		cJSON *o = cJSON_CreateObject();
		bool ok = o && cJSON_AddStringToObject(o, "id", rq.id) &&
			  cJSON_AddStringToObject(o, "verdict", rq.wrong ? "wrong" : "right") &&
			  cJSON_AddNumberToObject(o, "wrong", (double)fr.wrong) &&
			  cJSON_AddNumberToObject(o, "right", (double)fr.right) &&
			  cJSON_AddBoolToObject(o, "deleted", fr.deleted) &&
			  (fr.threshold > 0 ?
			   cJSON_AddNumberToObject(o, "threshold", fr.threshold) != NULL :
			   cJSON_AddNullToObject(o, "threshold") != NULL);
		if (!ok) {
			cJSON_Delete(o);
			o = NULL;
		}
		status = send_obj(req, 200, o);
	}
	return done_request(status, doc, &rq);
}

int route_cache_calibration(struct sg_req *req)
{
	char ns[CACHE_API_NAME_MAX + 1];
	double target = 0.99;
	struct sg_error e = { 0 };
	if (cache_api_parse_calibration(req->query, ns, &target, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	struct store *s = worker_store(req->worker);
	if (!s)
		return no_memory(req);
	struct store_calibration *cal = malloc(sizeof(*cal));
	if (!cal)
		return no_memory(req);
	int status;
	if (store_calibration_read(s, req->tenant, ns, cal, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
	} else {
		cJSON *o = cache_api_calibration_json(cal, target);
		if (o && (!cJSON_AddStringToObject(o, "tenant", req->tenant) ||
			  !(ns[0] ? cJSON_AddStringToObject(o, "namespace", ns)
				  : cJSON_AddNullToObject(o, "namespace")))) {
			cJSON_Delete(o);
			o = NULL;
		}
		status = send_obj(req, 200, o);
	}
	free(cal);
	return status;
}

int route_cache_stats(struct sg_req *req)
{
	struct store *s = worker_store(req->worker);
	if (!s)
		return no_memory(req);
	struct sg_error e = { 0 };
	struct store_stats st;
	if (store_stats_read(s, req->tenant, &st, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	const struct sg_config *cfg = req->app->cfg;
	cJSON *o = cache_api_stats_json(&st, cfg->price_prompt_per_1k,
					cfg->price_completion_per_1k);
	if (o && !cJSON_AddStringToObject(o, "tenant", req->tenant)) {
		cJSON_Delete(o);
		o = NULL;
	}
	return send_obj(req, 200, o);
}

int route_cache_top(struct sg_req *req)
{
	struct sg_error e = { 0 };
	long limit = 0;
	if (cache_api_parse_limit(req->query, &limit, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	struct store *s = worker_store(req->worker);
	if (!s)
		return no_memory(req);
	struct store_top top;
	if (store_top_read(s, req->tenant, (size_t)limit, &top, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	cJSON *o = cJSON_CreateObject();
	cJSON *arr = cJSON_CreateArray();
	bool ok = o && arr;
	for (size_t i = 0; ok && i < top.n; i++) {
		const struct store_top_row *r = &top.rows[i];
		cJSON *row = cJSON_CreateObject();
		ok = row && cJSON_AddStringToObject(row, "id", r->id) &&
		     cJSON_AddStringToObject(row, "query", r->query) &&
		     cJSON_AddNumberToObject(row, "hits", (double)r->hits) &&
		     cJSON_AddStringToObject(row, "namespace", r->ns) &&
		     cJSON_AddStringToObject(row, "kind", r->kind);
		if (row)
			cJSON_AddItemToArray(arr, row);
	}
	if (ok) {
		cJSON_AddItemToObject(o, "top", arr);
		arr = NULL;
		ok = cJSON_AddNumberToObject(o, "limit", (double)limit) != NULL;
	}
	cJSON_Delete(arr);
	if (!ok) {
		cJSON_Delete(o);
		o = NULL;
	}
	store_top_finish(&top);
	return send_obj(req, 200, o);
}

int route_cache_timeseries(struct sg_req *req)
{
	struct sg_error e = { 0 };
	struct cache_series_query q;
	if (cache_series_parse(req->query, (long long)time(NULL), &q, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	struct store *s = worker_store(req->worker);
	struct store_series_point *p = calloc(q.npoints, sizeof(*p));
	if (!s || !p) {
		free(p);
		return no_memory(req);
	}
	int status;
	if (store_series_read(s, req->tenant, q.hourly, q.first, q.npoints, q.per,
			      cache_series_reasons(), p, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
	} else {
		const struct sg_config *cfg = req->app->cfg;
		cJSON *o = cache_series_json(&q, p, cfg->price_prompt_per_1k,
					     cfg->price_completion_per_1k);
		if (o && !cJSON_AddStringToObject(o, "tenant", req->tenant)) {
			cJSON_Delete(o);
			o = NULL;
		}
		status = send_obj(req, 200, o);
	}
	free(p);
	return status;
}
