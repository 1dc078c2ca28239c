/* The per-minute series as the cache counts and serves it (series.h):
 * reason names, query validation and the columnar JSON answer. Pure: no
 * Redis, no HTTP. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/cache/series.h"
#include "semgate/core/buf.h"

#define NREASONS (SG_VERIFY_REASON_COUNT - 1)
_Static_assert(NREASONS < STORE_REASONS_MAX, "too many verifier reasons for the series");

static const char *reason_names[NREASONS + 1];
static pthread_once_t reasons_once = PTHREAD_ONCE_INIT;

/* From verify_reason_name, so the names cannot drift. */
static void fill_reasons(void)
{
	for (int r = 1; r <= NREASONS; r++)
		reason_names[r - 1] = verify_reason_name((enum verify_reason)r);
}

const char *const *cache_series_reasons(void)
{
	pthread_once(&reasons_once, fill_reasons);
	return reason_names;
}

void cache_series_reject(struct store_tenant_counts *tc, enum verify_reason r)
{
	tc->reasons = cache_series_reasons();
	if (r > SG_VERIFY_PASS && r < SG_VERIFY_REASON_COUNT)
		tc->rejected[r - 1]++;
}

/* A non-negative integer of at most 12 digits in p[0..n). */
static bool parse_ll(const char *p, size_t n, long long *out)
{
	if (n == 0 || n > 12)
		return false;
	long long v = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (p[i] - '0');
	}
	*out = v;
	return true;
}

enum sg_err cache_series_parse(const char *query, long long now, struct cache_series_query *q,
			       struct sg_error *e)
{
	static const char *const names[] = { "from", "to", "step" };
	long long v[3] = { 0 };
	bool seen[3] = { false };
	struct sg_param pv[3];
	memset(q, 0, sizeof(*q));
	enum sg_err rc = sg_query_split(query, names, 3, pv, e);
	if (rc != SG_OK)
		return rc;
	for (int k = 0; k < 3; k++) {
		if (!pv[k].value)
			continue;
		if (!parse_ll(pv[k].value, pv[k].len, &v[k]))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'%s' must be a whole number of unix seconds", names[k]);
		seen[k] = true;
	}
	/* 'to' is exclusive: by default it lies after this second, so what was
	 * counted in the minute that began at now (now a whole minute) is in */
	long long to = seen[1] ? v[1] : now + 1;
	long long step = seen[2] ? v[2] : 60;
	long long from = seen[0] ? v[0] : to - 3600;
	if (step < 60 || step > CACHE_SERIES_STEP_MAX || step % 60 != 0)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"'step' must be a multiple of 60 seconds in 60..%d", CACHE_SERIES_STEP_MAX);
	if (from < 0 || from >= to)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "'from' must be before 'to'");
	from -= from % step;
	long long npoints = (to - from + step - 1) / step;
	if (npoints > CACHE_SERIES_POINTS_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"the range holds %lld points of 'step'; at most %d are served (use a larger step)",
			npoints, CACHE_SERIES_POINTS_MAX);
	q->hourly = step % 3600 == 0;
	q->per = (size_t)(step / (q->hourly ? 3600 : 60));
	if ((long long)q->per * npoints > CACHE_SERIES_KEYS_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"the range is too long for this step: at most %d minutes (or hours, for "
			"steps of whole hours) are read", CACHE_SERIES_KEYS_MAX);
	q->from = from;
	q->step = step;
	q->npoints = (size_t)npoints;
	q->to = from + npoints * step;
	q->first = from / (q->hourly ? 3600 : 60);
	return SG_OK;
}

static double round6(double x)
{
	return round(x * 1e6) / 1e6;
}

static double cost(long long prompt, long long completion, double pp, double pc)
{
	return round6((double)prompt / 1000.0 * pp + (double)completion / 1000.0 * pc);
}

/* One column (and its total into tot) of n values read by get. */
typedef double (*col_fn)(const struct store_series_point *p, const void *ud);

static bool add_column(cJSON *to, const char *name, const struct store_series_point *p,
		       size_t n, col_fn get, const void *ud, double *total)
{
	cJSON *a = cJSON_AddArrayToObject(to, name);
	if (!a)
		return false;
	*total = 0;
	for (size_t i = 0; i < n; i++) {
		double v = get(&p[i], ud);
		*total += v;
		cJSON *x = cJSON_CreateNumber(v);
		if (!x)
			return false;
		cJSON_AddItemToArray(a, x);
	}
	return true;
}

static double field_at(const struct store_series_point *p, const void *ud)
{
	return (double)*(const long long *)((const char *)p + *(const size_t *)ud);
}

static double extra_at(const struct store_series_point *p, const void *ud)
{
	return (double)p->extra[*(const size_t *)ud];
}

/* The latency histograms: {"hit": {"1": column, "5": …, "inf": …},
 * "upstream": {…}} in o, their totals likewise in tot. */
static bool add_latency(cJSON *o, cJSON *tot, const struct store_series_point *p, size_t n)
{
	static const char *const bounds[STORE_LAT_BUCKETS] = { "1", "5", "25", "100", "500",
							       "2500", "inf" };
	cJSON *lo = cJSON_AddObjectToObject(o, "latency_ms");
	cJSON *lt = cJSON_AddObjectToObject(tot, "latency_ms");
	bool ok = lo && lt;
	for (int k = 0; ok && k < 2; k++) {
		const char *name = k == 0 ? "hit" : "upstream";
		cJSON *ho = cJSON_AddObjectToObject(lo, name), *ht = cJSON_AddObjectToObject(lt, name);
		ok = ho && ht;
		for (size_t b = 0; ok && b < STORE_LAT_BUCKETS; b++) {
			size_t x = (k == 0 ? STORE_X_LAT_HIT : STORE_X_LAT_UP) + b;
			double sum = 0;
			ok = add_column(ho, bounds[b], p, n, extra_at, &x, &sum) &&
			     cJSON_AddNumberToObject(ht, bounds[b], sum);
		}
	}
	return ok;
}

static double reason_at(const struct store_series_point *p, const void *ud)
{
	return (double)p->rejected[*(const size_t *)ud];
}

struct prices {
	double pp, pc;
};

static double cost_at(const struct store_series_point *p, const void *ud)
{
	const struct prices *pr = ud;
	return cost(p->tokens_prompt, p->tokens_completion, pr->pp, pr->pc);
}

cJSON *cache_series_json(const struct cache_series_query *q, const struct store_series_point *p,
			 double price_prompt_per_1k, double price_completion_per_1k)
{
	static const struct {
		const char *name;
		size_t off;
	} cols[] = {
		{ "requests", offsetof(struct store_series_point, requests) },
		{ "hits_exact", offsetof(struct store_series_point, hits_exact) },
		{ "hits_semantic", offsetof(struct store_series_point, hits_semantic) },
		{ "misses", offsetof(struct store_series_point, misses) },
		{ "bypass", offsetof(struct store_series_point, bypass) },
		{ "rejections", offsetof(struct store_series_point, rejections) },
		{ "tokens_saved_prompt", offsetof(struct store_series_point, tokens_prompt) },
		{ "tokens_saved_completion", offsetof(struct store_series_point, tokens_completion) },
	};
	cJSON *o = cJSON_CreateObject();
	cJSON *tot = cJSON_CreateObject();
	bool ok = o && tot && cJSON_AddNumberToObject(o, "from", (double)q->from) &&
		  cJSON_AddNumberToObject(o, "to", (double)q->to) &&
		  cJSON_AddNumberToObject(o, "step", (double)q->step) &&
		  cJSON_AddStringToObject(o, "resolution", q->hourly ? "hour" : "minute") &&
		  cJSON_AddNumberToObject(o, "points", (double)q->npoints);
	cJSON *t = ok ? cJSON_AddArrayToObject(o, "t") : NULL;
	ok = ok && t;
	for (size_t i = 0; ok && i < q->npoints; i++) {
		cJSON *x = cJSON_CreateNumber((double)(q->from + (long long)i * q->step));
		ok = x != NULL;
		if (x)
			cJSON_AddItemToArray(t, x);
	}
	double sum[sizeof(cols) / sizeof(cols[0])];
	for (size_t c = 0; ok && c < sizeof(cols) / sizeof(cols[0]); c++)
		ok = add_column(o, cols[c].name, p, q->npoints, field_at, &cols[c].off, &sum[c]) &&
		     cJSON_AddNumberToObject(tot, cols[c].name, sum[c]);
	size_t xc = STORE_X_COALESCED;
	double coalesced = 0;
	ok = ok && add_column(o, "hits_coalesced", p, q->npoints, extra_at, &xc, &coalesced) &&
	     cJSON_AddNumberToObject(tot, "hits_coalesced", coalesced) &&
	     add_latency(o, tot, p, q->npoints);
	struct prices pr = { price_prompt_per_1k, price_completion_per_1k };
	double total_cost = 0;
	ok = ok && add_column(o, "cost_saved", p, q->npoints, cost_at, &pr, &total_cost);
	if (ok) {
		/* the total from the summed tokens, not the sum of rounded points */
		long long tp = 0, tc = 0, hits = 0, looked = 0;
		for (size_t i = 0; i < q->npoints; i++) {
			tp += p[i].tokens_prompt;
			tc += p[i].tokens_completion;
			hits += p[i].hits_exact + p[i].hits_semantic;
			looked += p[i].hits_exact + p[i].hits_semantic + p[i].misses;
		}
		ok = cJSON_AddNumberToObject(tot, "cost_saved", cost(tp, tc, pr.pp, pr.pc)) &&
		     cJSON_AddNumberToObject(tot, "hit_rate",
					     looked ? round6((double)hits / (double)looked) : 0.0);
	}
	cJSON *by = ok ? cJSON_AddObjectToObject(o, "rejections_by_reason") : NULL;
	cJSON *tby = ok ? cJSON_AddObjectToObject(tot, "rejections_by_reason") : NULL;
	ok = ok && by && tby;
	const char *const *reasons = cache_series_reasons();
	for (size_t r = 0; ok && reasons[r]; r++) {
		double s = 0;
		ok = add_column(by, reasons[r], p, q->npoints, reason_at, &r, &s) &&
		     cJSON_AddNumberToObject(tby, reasons[r], s);
	}
	if (ok) {
		cJSON_AddItemToObject(o, "totals", tot);
		tot = NULL;
	}
	cJSON_Delete(tot);
	if (!ok) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}
