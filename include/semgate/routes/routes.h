/* Route handlers and the route table wired by main.c. Each handler sends
 * its whole response and returns the status it sent. */
#ifndef SEMGATE_ROUTES_H
#define SEMGATE_ROUTES_H

#include <stddef.h>
#include "semgate/cache/verify.h"
#include "semgate/http/http.h"

int route_chat_completions(struct sg_req *req);
int route_healthz(struct sg_req *req);
int route_readyz(struct sg_req *req);
int route_conv_get(struct sg_req *req);
int route_conv_append(struct sg_req *req);
int route_conv_delete(struct sg_req *req);
int route_embeddings(struct sg_req *req);
int route_metrics(struct sg_req *req);
/* the cache API (routes/cache.c) */
int route_cache_lookup(struct sg_req *req);
int route_cache_store(struct sg_req *req);
int route_cache_entry_get(struct sg_req *req);
int route_cache_entry_delete(struct sg_req *req);
int route_cache_invalidate(struct sg_req *req);
int route_cache_feedback(struct sg_req *req);
int route_cache_calibration(struct sg_req *req);
int route_cache_stats(struct sg_req *req);
int route_cache_top(struct sg_req *req);
int route_cache_timeseries(struct sg_req *req);
int route_dashboard(struct sg_req *req);
/* GET /v1/admin/tenants (admin keys only): the tenants of the configured keys. */
int route_admin_tenants(struct sg_req *req);

/* The guard of every /v1/ route (http.h sg_guard_fn): API key → tenant, then the
 * tenant's rate limit. */
int route_guard(struct sg_req *req);

/* Count the prompt and completion tokens of a cached completion served as
 * a hit (its usage's, as cache_api_usage reads them) in the tokens-saved
 * metrics. */
void route_metrics_hit_tokens(long long prompt, long long completion);

/* The hit verifier's mode for req: X-Semgate-Verify when given, else
 * SEMGATE_VERIFY. SG_ERR_BAD_REQUEST (e filled) for a bad header value. */
enum sg_err route_verify_mode(struct sg_req *req, enum verify_mode *out, struct sg_error *e);

/* The full table; *n receives its length. */
const struct sg_route *routes_table(size_t *n);

#endif
