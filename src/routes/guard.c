/* The guard in front of every /v1/ handler: the Bearer key chooses the
 * tenant (401 when keys are configured and it is missing or unknown; an
 * admin key names one in X-Semgate-Tenant, on /v1/cache/ routes only), then
 * the tenant's sliding-window rate limit (429 with Retry-After). It never
 * logs or echoes a key, and a Redis outage never blocks a request here:
 * the limiter lets it through and counts the bypass. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/app/app.h"
#include "semgate/http/auth.h"
#include "semgate/core/json.h"
#include "semgate/core/log.h"
#include "semgate/core/metrics.h"
#include "semgate/core/ratelimit.h"
#include "semgate/routes/routes.h"
#include "semgate/store/store.h"
#include "semgate/cache/behind.h"
#include "semgate/cache/tally.h"

static int send_with_headers(struct sg_req *req, int status, const char *type,
			     const char *code, const char *msg, const char *const *hdrs)
{
	char *body = sg_json_error_body(msg, type, code);
	if (!body)
		return http_send_error(req, 503, "server_error", "out_of_memory", "out of memory");
	int rc = http_send(req, status, "application/json", body, strlen(body), hdrs);
	free(body);
	return rc;
}

static int unauthorized(struct sg_req *req, const char *why)
{
	metrics_inc(SG_C_AUTH_FAILURES);
	/* the access log should not claim a tenant for an unknown caller */
	snprintf(req->tenant, sizeof(req->tenant), "-");
	static const char *const hdrs[] = { "WWW-Authenticate", "Bearer realm=\"semgate\"",
					    NULL };
	return send_with_headers(req, 401, "invalid_request_error", "invalid_api_key", why,
				 hdrs);
}

static bool admin_route(const struct sg_req *req)
{
	return strncmp(req->route, "/v1/admin/", 10) == 0;
}

static int forbidden(struct sg_req *req, const char *why)
{
	return send_with_headers(req, 403, "permission_error", "forbidden", why, NULL);
}

/* An admin key (SEMGATE_ADMIN_KEYS): the /v1/admin/ routes, and the cache
 * API of the tenant X-Semgate-Tenant names. Nothing else: an admin key
 * never chats, stores memory or spends the upstream as some tenant. */
static int admin(struct sg_req *req)
{
	req->admin = true;
	if (admin_route(req)) {
		snprintf(req->tenant, sizeof(req->tenant), "%s", SG_AUTH_ADMIN);
		return 0;
	}
	if (strncmp(req->route, "/v1/cache/", 10) != 0)
		return forbidden(req, "an admin key may use only /v1/cache/ and /v1/admin/ routes");
	const char *t = http_header(req, "X-Semgate-Tenant");
	if (!t || !auth_tenant_valid(t, strlen(t)))
		return send_with_headers(req, 400, "invalid_request_error", "invalid_tenant",
			"an admin key must name the tenant in X-Semgate-Tenant "
			"([A-Za-z0-9._-]{1,64})", NULL);
	snprintf(req->tenant, sizeof(req->tenant), "%s", t);
	return 0;
}

static int authenticate(struct sg_req *req)
{
	const struct auth_keys *keys = req->app->auth;
	if (!keys)
		return 0; /* open mode: tenant "default", set by the HTTP layer */
	const char *token;
	size_t len;
	if (!auth_bearer(http_header(req, "Authorization"), &token, &len))
		return unauthorized(req, "missing API key: send 'Authorization: Bearer <key>'");
	const char *tenant = auth_lookup(keys, token, len);
	if (!tenant)
		return unauthorized(req, "incorrect API key provided");
	if (strcmp(tenant, SG_AUTH_ADMIN) == 0)
		return admin(req);
	snprintf(req->tenant, sizeof(req->tenant), "%s", tenant);
	return 0;
}

static int rate_limit(struct sg_req *req)
{
	const struct rate_limit *rl = &req->app->rate;
	if (rl->max <= 0)
		return 0;
	struct store *s = worker_store(req->worker);
	struct sg_error e = { 0 };
	bool allowed = true;
	long long remaining = 0, wait_ms = 0;
	if (!s || store_rate_limit(s, req->tenant, rl->max, rl->window_s * 1000, &allowed,
				   &remaining, &wait_ms, &e) != SG_OK) {
		/* fail open: the limiter protects the upstream bill, it must not
		 * take the gateway down with Redis */
		metrics_inc(SG_C_LIMITER_BYPASS);
		sg_log(SG_LOG_DEBUG, "rate limit not checked (request let through): %s",
		       s ? e.msg : "out of memory");
		return 0;
	}
	if (allowed)
		return 0;
	metrics_inc(SG_C_RATE_LIMITED);
	char retry[24], limit[24], reset[32], msg[160];
	long long after = ratelimit_retry_after(wait_ms, rl->window_s);
	snprintf(retry, sizeof(retry), "%lld", after);
	snprintf(limit, sizeof(limit), "%lld", rl->max);
	snprintf(reset, sizeof(reset), "%llds", after);
	snprintf(msg, sizeof(msg),
		 "rate limit reached for tenant %s: %lld requests per %lld s; retry in %lld s",
		 req->tenant, rl->max, rl->window_s, after);
	const char *const hdrs[] = {
		"Retry-After", retry,
		"X-RateLimit-Limit-Requests", limit,
		"X-RateLimit-Remaining-Requests", "0",
		"X-RateLimit-Reset-Requests", reset,
		NULL,
	};
	return send_with_headers(req, 429, "rate_limit_exceeded", "rate_limit_exceeded", msg,
				 hdrs);
}

int route_admin_tenants(struct sg_req *req)
{
	const char *t[1024];
	size_t n = auth_tenants(req->app->auth, t, sizeof(t) / sizeof(t[0]));
	cJSON *o = cJSON_CreateObject();
	cJSON *a = o ? cJSON_AddArrayToObject(o, "tenants") : NULL;
	bool ok = a != NULL;
	for (size_t i = 0; ok && i < n; i++) {
		cJSON *x = cJSON_CreateString(t[i]);
		ok = x != NULL;
		if (x)
			cJSON_AddItemToArray(a, x);
	}
	char *body = ok ? sg_json_render(o) : NULL;
	cJSON_Delete(o);
	if (!body)
		return http_send_error(req, 503, "server_error", "out_of_memory", "out of memory");
	int rc = http_send_json(req, 200, body, NULL);
	free(body);
	return rc;
}

int route_guard(struct sg_req *req)
{
	int status = authenticate(req);
	if (status)
		return status;
	if (admin_route(req) && !req->admin)
		return forbidden(req, "this route needs an admin key (SEMGATE_ADMIN_KEYS)");
	/* admin reads are not the tenant's traffic: they do not spend its limit */
	status = req->admin ? 0 : rate_limit(req);
	/* the cache API routes that read what chat lookups count (stats,
	 * leaderboard, an entry's hits) or delete entries: first let the
	 * counts of every lookup answered so far reach Redis (tally.h).
	 * Sidecar lookups and stores need not wait. */
	/* every cache API route first lets the answers already sent reach
	 * Redis (behind.h): a lookup or a read right after a chat answer finds
	 * its entry */
	if (status == 0 && strncmp(req->route, "/v1/cache/", 10) == 0)
		behind_settle(req->app->behind);
	if (status == 0 && strncmp(req->route, "/v1/cache/", 10) == 0 &&
	    strcmp(req->route, "/v1/cache/lookup") != 0 &&
	    !(strcmp(req->route, "/v1/cache/entries") == 0 && strcmp(req->method, "POST") == 0))
		tally_settle(req->app->tally);
	return status;
}
