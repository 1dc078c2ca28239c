/* GET /dashboard: the operator's page, built into the binary from
 * src/routes/dashboard/ (embed.py). The page itself holds no data; it
 * reads the cache API (stats, top, timeseries) with the key the operator types in, so it is
 * served without a key, under a policy that lets it call only this
 * gateway. */
#include "semgate/routes/dashboard.h"
#include "semgate/routes/routes.h"


int route_dashboard(struct sg_req *req)
{
	const char *const hdrs[] = {
		"Content-Security-Policy", dashboard_csp,
		"X-Content-Type-Options", "nosniff",
		"Referrer-Policy", "no-referrer",
		NULL,
	};
	return http_send(req, 200, "text/html; charset=utf-8", dashboard_page, dashboard_page_len,
			 hdrs);
}
