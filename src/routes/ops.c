/* Operational routes: liveness and readiness. They never touch request
 * bodies and never call the upstream. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

#include "semgate/app/app.h"
#include "semgate/core/buf.h"
#include "semgate/routes/routes.h"
#include "semgate/store/store.h"
#include "semgate/vindex/vindex.h"

int route_healthz(struct sg_req *req)
{
	return http_send_json(req, 200, "{\"status\":\"ok\"}", NULL);
}

/* Ready means "can serve correctly": Redis answers. While the index loads
 * at start the gateway serves exact hits and misses correctly, only
 * without semantic hits, so that is 200 with "status":"warming" (a
 * load balancer keeps sending traffic; holding a restarted gateway out of
 * service for the 20-40 s a 1M-entry load takes would be the outage this
 * avoids). A deployment that would rather wait asks /readyz?index=1,
 * which is 503 until the index is whole. */
int route_readyz(struct sg_req *req)
{
	struct sg_error e = { 0 };
	struct store *s = worker_store(req->worker);
	if (!s)
		return http_send_error(req, 503, "service_unavailable", "out_of_memory",
				       "out of memory");
	if (store_ping(s, &e) != SG_OK)
		return http_send_error(req, 503, "service_unavailable", "redis_unavailable",
				       e.msg);
	bool warming = atomic_load_explicit(&req->app->warming, memory_order_acquire);
	if (warming && sg_list_has(req->query, '&', "index=1"))
		return http_send_error(req, 503, "service_unavailable", "index_warming",
				       "the vector index is still loading from Redis");
	char body[160];
	snprintf(body, sizeof(body), "{\"status\":\"%s\",\"redis\":\"ok\",\"index\":\"%s\","
		 "\"index_entries\":%zu}", warming ? "warming" : "ready",
		 warming ? "warming" : "ready", vindex_count(req->app->vindex));
	return http_send_json(req, 200, body, NULL);
}
