/* Operational routes: liveness and readiness. They never touch request
 * bodies and never call the upstream. */
#include "semgate/app/app.h"
#include "semgate/routes/routes.h"
#include "semgate/store/store.h"

int route_healthz(struct sg_req *req)
{
	return http_send_json(req, 200, "{\"status\":\"ok\"}", NULL);
}

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
	return http_send_json(req, 200, "{\"status\":\"ready\",\"redis\":\"ok\"}", NULL);
}
