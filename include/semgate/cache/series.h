/* The per-tenant, per-minute series of GET /v1/cache/timeseries: how one
 * lookup is counted into it (by the write-behind accounting), the query
 * (from, to, step) and the JSON answer. Pure: the reading is store's
 * store_series_read. */
#ifndef SEMGATE_CACHE_SERIES_H
#define SEMGATE_CACHE_SERIES_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>
#include "semgate/core/err.h"
#include "semgate/cache/verify.h"
#include "semgate/store/ops.h"

#define CACHE_SERIES_POINTS_MAX 1440   /* points in one answer */
#define CACHE_SERIES_KEYS_MAX 20160    /* hashes read for one answer (14 days of minutes) */
#define CACHE_SERIES_STEP_MAX 2678400  /* 31 days */

/* The verifier's reasons as the series names them: reason r is counted at
 * rejected[r - 1]. NULL-ended, static. */
const char *const *cache_series_reasons(void);

/* Count one refusal (reason r, SG_VERIFY_PASS: none) into tc, and name the
 * reasons there. */
void cache_series_reject(struct store_tenant_counts *tc, enum verify_reason r);

/* A validated query. Buckets are [from + i*step, from + (i+1)*step). */
struct cache_series_query {
	long long from, to, step;  /* unix seconds; from aligned to step, to = from + npoints*step */
	bool hourly;               /* step is whole hours: read the hour hashes */
	size_t npoints;
	size_t per;                /* hashes per point */
	long long first;           /* first minute (hourly: hour) read */
};

/* Parse "from=&to=&step=" (each optional, each at most once, integers;
 * defaults: to = now, from = to - 3600, step = 60). step must be a multiple
 * of 60 in 60..CACHE_SERIES_STEP_MAX, from < to, and the range must fit
 * CACHE_SERIES_POINTS_MAX points and CACHE_SERIES_KEYS_MAX hashes. */
enum sg_err cache_series_parse(const char *query, long long now, struct cache_series_query *q,
			       struct sg_error *e);

/* The answer: columns t, requests, hits_exact, ..., hits_coalesced (of the
 * hits, those answered by a concurrent miss's call), cost_saved,
 * latency_ms{hit, upstream}{bucket upper bound in ms: column},
 * rejections_by_reason{reason: column}, and totals. NULL on out of memory. */
cJSON *cache_series_json(const struct cache_series_query *q, const struct store_series_point *p,
			 double price_prompt_per_1k, double price_completion_per_1k);

#endif
