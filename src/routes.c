/* The route table: every endpoint the gateway serves, in one place. */
#include "semgate/routes.h"

static const struct sg_route routes[] = {
	{ "POST", "/v1/chat/completions", route_chat_completions },
	{ "GET", "/healthz", route_healthz },
	{ "GET", "/readyz", route_readyz },
	{ "GET", "/v1/conversations/{id}", route_conv_get },
	{ "DELETE", "/v1/conversations/{id}", route_conv_delete },
	{ "POST", "/v1/conversations/{id}/messages", route_conv_append },
};

const struct sg_route *routes_table(size_t *n)
{
	*n = sizeof(routes) / sizeof(routes[0]);
	return routes;
}
