/* Per-tenant rate limit settings: parsing SEMGATE_RATE_LIMIT ("N/Ws") and
 * turning the limiter's answer into a Retry-After value. Pure; the window
 * itself lives in Redis (store_rate_limit in store.h). */
#ifndef SEMGATE_RATELIMIT_H
#define SEMGATE_RATELIMIT_H

#include "semgate/core/err.h"

#define SG_RATE_MAX_REQUESTS 1000000000LL
#define SG_RATE_MAX_WINDOW_S 86400LL

struct rate_limit {
	long long max;       /* requests per window; 0: no limit */
	long long window_s;  /* window length in seconds */
};

/* Parse "N/Ws" (the trailing 's' may be left out) with N in
 * 1..SG_RATE_MAX_REQUESTS and W in 1..SG_RATE_MAX_WINDOW_S. An empty or NULL
 * spec means no limit (out->max == 0). SG_ERR_BAD_REQUEST with a message
 * naming SEMGATE_RATE_LIMIT, the value and the ranges otherwise. */
enum sg_err ratelimit_parse(const char *spec, struct rate_limit *out, struct sg_error *e);

/* Retry-After in whole seconds for a request refused while the oldest
 * admitted request leaves the window in wait_ms: rounded up, at least 1,
 * at most the window. */
long long ratelimit_retry_after(long long wait_ms, long long window_s);

#endif
