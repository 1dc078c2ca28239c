/* The route table: every endpoint the gateway serves, in one place. */
#include "semgate/routes/routes.h"

static const struct sg_route routes[] = {
	{ "POST", "/v1/chat/completions", route_chat_completions },
	{ "GET", "/healthz", route_healthz },
	{ "GET", "/readyz", route_readyz },
	{ "GET", "/v1/conversations/{id}", route_conv_get },
	{ "DELETE", "/v1/conversations/{id}", route_conv_delete },
	{ "POST", "/v1/conversations/{id}/messages", route_conv_append },
	{ "POST", "/v1/embeddings", route_embeddings },
	{ "POST", "/v1/cache/lookup", route_cache_lookup },
	{ "POST", "/v1/cache/entries", route_cache_store },
	{ "GET", "/v1/cache/entries/{id}", route_cache_entry_get },
	{ "DELETE", "/v1/cache/entries/{id}", route_cache_entry_delete },
	{ "POST", "/v1/cache/invalidate", route_cache_invalidate },
	{ "POST", "/v1/cache/feedback", route_cache_feedback },
	{ "GET", "/v1/cache/stats", route_cache_stats },
	{ "GET", "/v1/cache/calibration", route_cache_calibration },
	{ "GET", "/v1/cache/top", route_cache_top },
	{ "GET", "/v1/cache/timeseries", route_cache_timeseries },
	{ "GET", "/metrics", route_metrics },
	{ "GET", "/dashboard", route_dashboard },
	{ "GET", "/v1/admin/tenants", route_admin_tenants },
};

const struct sg_route *routes_table(size_t *n)
{
	*n = sizeof(routes) / sizeof(routes[0]);
	return routes;
}
