/* The guard in front of every /v1/ handler: the Bearer key chooses the
 * tenant (401 when keys are configured and it is missing or unknown), then
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

int route_guard(struct sg_req *req)
{
	int status = authenticate(req);
	if (status)
		return status;
	status = rate_limit(req);
	/* the cache API routes that read what chat lookups count (stats,
	 * leaderboard, an entry's hits) or delete entries: first let the
	 * counts of every lookup answered so far reach Redis (tally.h).
	 * Sidecar lookups and stores need not wait. */
	if (status == 0 && strncmp(req->route, "/v1/cache/", 10) == 0 &&
	    strcmp(req->route, "/v1/cache/lookup") != 0 &&
	    !(strcmp(req->route, "/v1/cache/entries") == 0 && strcmp(req->method, "POST") == 0))
		tally_settle(req->app->tally);
	return status;
}
