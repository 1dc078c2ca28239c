/* Metrics: relaxed atomic counters and fixed-bucket histograms, summed into
 * Prometheus text when /metrics is read. Recording never blocks; only the
 * first request of a new (method, route) pair takes a mutex to add its
 * slot. Histogram buckets are stored per bucket and made cumulative when
 * rendered, so a scrape racing with requests is still self-consistent
 * (_count is always the +Inf bucket). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "semgate/core/metrics.h"

/* Upper bounds in seconds; one set for every latency histogram, from
 * Redis round trips (sub-ms) to long LLM streams. */
static const double bucket_s[] = {
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
	0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
};
#define NBUCKETS (sizeof(bucket_s) / sizeof(bucket_s[0]))

struct hist {
	atomic_ullong bucket[NBUCKETS + 1]; /* last: above every bound (+Inf) */
	atomic_ullong sum_us;
};

static void hist_observe(struct hist *h, double ms)
{
	if (!(ms >= 0))
		ms = 0;
	double s = ms / 1000.0;
	size_t i = 0;
	while (i < NBUCKETS && s > bucket_s[i])
		i++;
	atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_us, (unsigned long long)(ms * 1000.0 + 0.5),
				  memory_order_relaxed);
}

/* ---- plain counters and histograms ---- */

static atomic_ullong g_counters[SG_C_COUNT];
static struct hist g_hists[SG_H_COUNT];
static atomic_llong g_inflight;

static _Thread_local double tls_ms[SG_H_COUNT];
static _Thread_local unsigned tls_n[SG_H_COUNT];

void metrics_add(enum sg_counter c, uint64_t n)
{
	if ((unsigned)c < SG_C_COUNT)
		atomic_fetch_add_explicit(&g_counters[c], n, memory_order_relaxed);
}

uint64_t metrics_get(enum sg_counter c)
{
	return (unsigned)c < SG_C_COUNT ? atomic_load(&g_counters[c]) : 0;
}

void metrics_observe(enum sg_hist h, double ms)
{
	if ((unsigned)h >= SG_H_COUNT)
		return;
	hist_observe(&g_hists[h], ms);
	tls_ms[h] += ms;
	tls_n[h]++;
}

void metrics_req_begin(void)
{
	memset(tls_ms, 0, sizeof(tls_ms));
	memset(tls_n, 0, sizeof(tls_n));
}

double metrics_req_ms(enum sg_hist h, unsigned *n)
{
	if ((unsigned)h >= SG_H_COUNT) {
		*n = 0;
		return 0;
	}
	*n = tls_n[h];
	return tls_ms[h];
}

void metrics_inflight(int delta)
{
	atomic_fetch_add_explicit(&g_inflight, delta, memory_order_relaxed);
}

/* Add one to the counter of names[i] that equals name, if any. */
static void count_by_name(const char *name, const char *const *names, const enum sg_counter *ids,
			  size_t n)
{
	for (size_t i = 0; name && i < n; i++)
		if (strcmp(name, names[i]) == 0) {
			metrics_inc(ids[i]);
			return;
		}
}

#define COUNT_BY_NAME(name, names, ids) \
	count_by_name(name, names, ids, sizeof(ids) / sizeof(ids[0]))

void metrics_cache_outcome(const char *outcome)
{
	static const char *const names[] = { "hit-exact", "hit-semantic", "hit-coalesced", "miss",
					     "bypass", "warming" };
	static const enum sg_counter ids[] = { SG_C_CACHE_HIT_EXACT, SG_C_CACHE_HIT_SEMANTIC,
					       SG_C_CACHE_HIT_COALESCED, SG_C_CACHE_MISS,
					       SG_C_CACHE_BYPASS, SG_C_CACHE_WARMING };
	COUNT_BY_NAME(outcome, names, ids);
}

void metrics_lookup_outcome(const char *outcome)
{
	static const char *const names[] = { "hit-exact", "hit-semantic", "miss", "warming" };
	static const enum sg_counter ids[] = { SG_C_LOOKUP_HIT_EXACT, SG_C_LOOKUP_HIT_SEMANTIC,
					       SG_C_LOOKUP_MISS, SG_C_LOOKUP_WARMING };
	COUNT_BY_NAME(outcome, names, ids);
}

void metrics_feedback(bool wrong)
{
	metrics_inc(wrong ? SG_C_FEEDBACK_WRONG : SG_C_FEEDBACK_RIGHT);
}

void metrics_shadow(bool agree)
{
	metrics_inc(agree ? SG_C_SHADOW_AGREE : SG_C_SHADOW_DISAGREE);
}

void metrics_verify_rejection(const char *reason)
{
	static const char *const names[] = { "number", "entity", "negation", "order",
					     "opposite", "content", "feedback" };
	static const enum sg_counter ids[] = { SG_C_VERIFY_NUMBER, SG_C_VERIFY_ENTITY,
					       SG_C_VERIFY_NEGATION, SG_C_VERIFY_ORDER,
					       SG_C_VERIFY_OPPOSITE, SG_C_VERIFY_CONTENT,
					       SG_C_VERIFY_FEEDBACK };
	COUNT_BY_NAME(reason, names, ids);
}

/* ---- requests by (method, route): one slot per pair seen ---- */

#define MAX_SLOTS 128
#define STATUS_MIN 100
#define STATUS_MAX 599

struct slot {
	const char *method;  /* static, from method_name() */
	const char *route;   /* static route pattern, "unmatched" or "other" */
	atomic_ullong status[STATUS_MAX - STATUS_MIN + 1];
	struct hist dur;
};

static struct slot g_slots[MAX_SLOTS];
static atomic_size_t g_nslots;            /* slots [0, n) are published */
static pthread_mutex_t g_slot_lock = PTHREAD_MUTEX_INITIALIZER;

static const char other_method[] = "OTHER";

/* A fixed set, so a client cannot grow the label space with odd methods. */
static const char *method_name(const char *m)
{
	static const char *const known[] = { "GET", "POST", "DELETE", "PUT", "PATCH",
					     "HEAD", "OPTIONS" };
	for (size_t i = 0; m && i < sizeof(known) / sizeof(known[0]); i++)
		if (strcmp(m, known[i]) == 0)
			return known[i];
	return other_method;
}

static struct slot *find_slot(size_t n, const char *method, const char *route)
{
	for (size_t i = 0; i < n; i++)
		if (g_slots[i].method == method && strcmp(g_slots[i].route, route) == 0)
			return &g_slots[i];
	return NULL;
}

static struct slot *get_slot(const char *method, const char *route)
{
	size_t n = atomic_load_explicit(&g_nslots, memory_order_acquire);
	struct slot *s = find_slot(n, method, route);
	if (s)
		return s;
	pthread_mutex_lock(&g_slot_lock);
	n = atomic_load_explicit(&g_nslots, memory_order_relaxed);
	s = find_slot(n, method, route);
	if (!s) {
		/* the last slot is kept for "other" so overflow is still counted */
		if (n >= MAX_SLOTS - 1) {
			route = "other";
			method = other_method;
			s = find_slot(n, method, route);
		}
		if (!s) {
			s = &g_slots[n];
			s->method = method;
			s->route = route;
			atomic_store_explicit(&g_nslots, n + 1, memory_order_release);
		}
	}
	pthread_mutex_unlock(&g_slot_lock);
	return s;
}

void metrics_request(const char *method, const char *route, int status, double ms)
{
	struct slot *s = get_slot(method_name(method), route ? route : "unmatched");
	if (status < STATUS_MIN || status > STATUS_MAX)
		status = 500;
	atomic_fetch_add_explicit(&s->status[status - STATUS_MIN], 1, memory_order_relaxed);
	hist_observe(&s->dur, ms);
}

/* ---- rendering ---- */

static enum sg_err header(struct sg_buf *out, const char *name, const char *type,
			  const char *help)
{
	return sg_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Route patterns hold no quote, backslash or newline, but escape anyway so
 * the output stays valid whatever a future route looks like. */
static enum sg_err label_value(struct sg_buf *out, const char *v)
{
	enum sg_err rc = SG_OK;
	for (; *v && rc == SG_OK; v++) {
		if (*v == '\\')
			rc = sg_buf_puts(out, "\\\\");
		else if (*v == '"')
			rc = sg_buf_puts(out, "\\\"");
		else if (*v == '\n')
			rc = sg_buf_puts(out, "\\n");
		else
			rc = sg_buf_append(out, v, 1);
	}
	return rc;
}

static enum sg_err slot_labels(struct sg_buf *out, const struct slot *s)
{
	enum sg_err rc = sg_buf_puts(out, "method=\"");
	if (rc == SG_OK)
		rc = label_value(out, s->method);
	if (rc == SG_OK)
		rc = sg_buf_puts(out, "\",route=\"");
	if (rc == SG_OK)
		rc = label_value(out, s->route);
	if (rc == SG_OK)
		rc = sg_buf_puts(out, "\"");
	return rc;
}

/* One histogram's series; labels is rendered already ("" for none). */
static enum sg_err render_hist(struct sg_buf *out, const char *name, const char *labels,
			       const struct hist *h)
{
	unsigned long long counts[NBUCKETS + 1], cum = 0;
	for (size_t i = 0; i <= NBUCKETS; i++)
		counts[i] = atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
	unsigned long long sum_us = atomic_load_explicit(&h->sum_us, memory_order_relaxed);
	const char *sep = labels[0] ? "," : "";
	enum sg_err rc = SG_OK;
	for (size_t i = 0; i <= NBUCKETS && rc == SG_OK; i++) {
		cum += counts[i];
		if (i < NBUCKETS)
			rc = sg_buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep,
					   bucket_s[i], cum);
		else
			rc = sg_buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels,
					   sep, cum);
	}
	if (rc == SG_OK)
		rc = sg_buf_printf(out, "%s_sum%s%s%s %.6f\n", name, labels[0] ? "{" : "", labels,
				   labels[0] ? "}" : "", (double)sum_us / 1e6);
	if (rc == SG_OK)
		rc = sg_buf_printf(out, "%s_count%s%s%s %llu\n", name, labels[0] ? "{" : "",
				   labels, labels[0] ? "}" : "", cum);
	return rc;
}

static enum sg_err render_requests(struct sg_buf *out)
{
	size_t n = atomic_load_explicit(&g_nslots, memory_order_acquire);
	struct sg_buf lab;
	sg_buf_init(&lab, 0);
	enum sg_err rc = header(out, "semgate_http_requests_total", "counter",
				"HTTP requests answered, by method, route pattern and status.");
	for (size_t i = 0; i < n && rc == SG_OK; i++) {
		const struct slot *s = &g_slots[i];
		for (int st = STATUS_MIN; st <= STATUS_MAX && rc == SG_OK; st++) {
			unsigned long long v = atomic_load_explicit(&s->status[st - STATUS_MIN],
								    memory_order_relaxed);
			if (!v)
				continue;
			rc = sg_buf_puts(out, "semgate_http_requests_total{");
			if (rc == SG_OK)
				rc = slot_labels(out, s);
			if (rc == SG_OK)
				rc = sg_buf_printf(out, ",status=\"%d\"} %llu\n", st, v);
		}
	}
	if (rc == SG_OK)
		rc = header(out, "semgate_http_request_duration_seconds", "histogram",
			    "Whole-request latency as the gateway saw it, by method and route pattern.");
	for (size_t i = 0; i < n && rc == SG_OK; i++) {
		sg_buf_reset(&lab);
		rc = slot_labels(&lab, &g_slots[i]);
		if (rc == SG_OK)
			rc = render_hist(out, "semgate_http_request_duration_seconds",
					 lab.data ? lab.data : "", &g_slots[i].dur);
	}
	sg_buf_finish(&lab);
	return rc;
}

static enum sg_err render_archive(struct sg_buf *out, const struct metrics_extra *x)
{
	enum sg_err rc;
	if ((rc = header(out, "semgate_archive_stream_length", "gauge",
			 "Records in the archive streams (XLEN), archived or not.")) ||
	    (rc = sg_buf_printf(out, "semgate_archive_stream_length %lld\n", x->archive_length)) ||
	    (rc = header(out, "semgate_archive_pending", "gauge",
			 "Records delivered to an archiver and not yet acknowledged.")) ||
	    (rc = sg_buf_printf(out, "semgate_archive_pending %lld\n", x->archive_pending)) ||
	    (rc = header(out, "semgate_archive_lag", "gauge",
			 "Records in the archive streams not yet delivered to any archiver.")) ||
	    (rc = sg_buf_printf(out, "semgate_archive_lag %lld\n", x->archive_lag)) ||
	    (rc = header(out, "semgate_archive_records_total", "counter",
			 "Stream records this process's archiver handled, by outcome (lost: "
			 "trimmed by MAXLEN before they were archived).")) ||
	    (rc = sg_buf_printf(out, "semgate_archive_records_total{outcome=\"archived\"} %llu\n"
				"semgate_archive_records_total{outcome=\"rejected\"} %llu\n"
				"semgate_archive_records_total{outcome=\"lost\"} %llu\n",
				x->archive_archived, x->archive_rejected, x->archive_lost)) ||
	    (rc = header(out, "semgate_archive_batches_total", "counter",
			 "Batches committed to PostgreSQL by this process's archiver.")) ||
	    (rc = sg_buf_printf(out, "semgate_archive_batches_total %llu\n", x->archive_batches)) ||
	    (rc = header(out, "semgate_archive_pg_errors_total", "counter",
			 "Failed attempts to reach or write PostgreSQL (each retried).")) ||
	    (rc = sg_buf_printf(out, "semgate_archive_pg_errors_total %llu\n",
				x->archive_pg_errors)))
		return rc;
	return SG_OK;
}

enum sg_err metrics_render(struct sg_buf *out, const struct metrics_extra *x)
{
	static const struct { const char *family, *labels, *help; } crows[] = {
#define SG_X(id, family, labels, help) { family, labels, help },
		SG_METRIC_COUNTERS(SG_X)
#undef SG_X
	};
	static const struct { const char *name, *help; } hrows[] = {
#define SG_X(id, name, help) { name, help },
		SG_METRIC_HISTOGRAMS(SG_X)
#undef SG_X
	};
	enum sg_err rc = render_requests(out);
	for (size_t i = 0; i < SG_C_COUNT && rc == SG_OK; i++) {
		if (i == 0 || strcmp(crows[i].family, crows[i - 1].family) != 0)
			rc = header(out, crows[i].family, "counter", crows[i].help);
		if (rc != SG_OK)
			break;
		unsigned long long v = atomic_load_explicit(&g_counters[i], memory_order_relaxed);
		if (crows[i].labels[0])
			rc = sg_buf_printf(out, "%s{%s} %llu\n", crows[i].family, crows[i].labels, v);
		else
			rc = sg_buf_printf(out, "%s %llu\n", crows[i].family, v);
	}
	for (size_t i = 0; i < SG_H_COUNT && rc == SG_OK; i++) {
		rc = header(out, hrows[i].name, "histogram", hrows[i].help);
		if (rc == SG_OK)
			rc = render_hist(out, hrows[i].name, "", &g_hists[i]);
	}
	if (rc != SG_OK)
		return rc;
	double prompt = (double)metrics_get(SG_C_TOKENS_SAVED_PROMPT);
	double completion = (double)metrics_get(SG_C_TOKENS_SAVED_COMPLETION);
	double cost = prompt / 1000.0 * x->price_prompt_per_1k +
		      completion / 1000.0 * x->price_completion_per_1k;
	long long inflight = atomic_load_explicit(&g_inflight, memory_order_relaxed);
	if ((rc = header(out, "semgate_estimated_cost_saved_total", "counter",
			 "Estimated cost saved by cache hits: tokens saved times "
			 "SEMGATE_PRICE_PROMPT_PER_1K / SEMGATE_PRICE_COMPLETION_PER_1K per 1000.")) ||
	    (rc = sg_buf_printf(out, "semgate_estimated_cost_saved_total %.6f\n", cost)) ||
	    (rc = header(out, "semgate_redis_reconnects_total", "counter",
			 "Successful reconnections to Redis after a lost connection.")) ||
	    (rc = sg_buf_printf(out, "semgate_redis_reconnects_total %llu\n",
				x->redis_reconnects)) ||
	    (rc = header(out, "semgate_redis_master_changes_total", "counter",
			 "Times the Redis master changed and connections moved to the new one "
			 "(Sentinel mode).")) ||
	    (rc = sg_buf_printf(out, "semgate_redis_master_changes_total %llu\n",
				x->redis_master_changes)) ||
	    (rc = header(out, "semgate_index_entries", "gauge",
			 "Rows in the in-memory vector index (expired rows not yet swept included).")) ||
	    (rc = sg_buf_printf(out, "semgate_index_entries %zu\n", x->index_entries)) ||
	    (rc = header(out, "semgate_index_bytes", "gauge",
			 "Heap bytes held by the vector index.")) ||
	    (rc = sg_buf_printf(out, "semgate_index_bytes %zu\n", x->index_bytes)) ||
	    (rc = header(out, "semgate_index_partitions", "gauge",
			 "Partitions (tenant, scope, embedding model) in the vector index.")) ||
	    (rc = sg_buf_printf(out, "semgate_index_partitions %zu\n", x->index_partitions)) ||
	    (rc = header(out, "semgate_index_listed_partitions", "gauge",
			 "Partitions big enough to be clustered into lists: a semantic lookup "
			 "reads only the nearest SEMGATE_INDEX_PROBE of them.")) ||
	    (rc = sg_buf_printf(out, "semgate_index_listed_partitions %zu\n", x->index_listed)) ||
	    (rc = header(out, "semgate_cache_accounting_batches_total", "counter",
			 "MULTI/EXEC batches of hit and miss counters written to Redis.")) ||
	    (rc = sg_buf_printf(out, "semgate_cache_accounting_batches_total %llu\n",
				x->tally_batches)) ||
	    (rc = header(out, "semgate_cache_accounting_store_waits_total", "counter",
			 "Accounting batches that first waited for the stores, written behind, "
			 "of entries whose hits they count.")) ||
	    (rc = sg_buf_printf(out, "semgate_cache_accounting_store_waits_total %llu\n",
				x->tally_store_waits)) ||
	    (rc = header(out, "semgate_cache_accounting_dropped_total", "counter",
			 "Lookups whose hit or miss could not be counted in Redis.")) ||
	    (rc = sg_buf_printf(out, "semgate_cache_accounting_dropped_total %llu\n",
				x->tally_dropped)) ||
	    (rc = header(out, "semgate_hot_cache_hits_total", "counter",
			 "Exact hits answered from the in-process hot copy, without Redis.")) ||
	    (rc = sg_buf_printf(out, "semgate_hot_cache_hits_total %llu\n", x->hot_hits)) ||
	    (rc = header(out, "semgate_hot_cache_keys", "gauge",
			 "Exact keys held in the in-process hot cache.")) ||
	    (rc = sg_buf_printf(out, "semgate_hot_cache_keys %zu\n", x->hot_keys)) ||
	    (rc = header(out, "semgate_hot_cache_bytes", "gauge",
			 "Answer bytes held in the in-process hot cache.")) ||
	    (rc = sg_buf_printf(out, "semgate_hot_cache_bytes %zu\n", x->hot_bytes)) ||
	    (rc = header(out, "semgate_cache_stores_pending", "gauge",
			 "Miss answers already sent whose store is still queued.")) ||
	    (rc = sg_buf_printf(out, "semgate_cache_stores_pending %zu\n", x->stores_pending)) ||
	    (rc = header(out, "semgate_summary_backlog", "gauge",
			 "Conversations with messages waiting for their summary that the summarizer "
			 "holds (queued, running or backing off after a failure).")) ||
	    (rc = sg_buf_printf(out, "semgate_summary_backlog %zu\n", x->summary_backlog)) ||
	    (rc = header(out, "semgate_requests_in_flight", "gauge",
			 "Requests being served right now (streams included).")) ||
	    (rc = sg_buf_printf(out, "semgate_requests_in_flight %lld\n", inflight)))
		return rc;
	return x->archive ? render_archive(out, x) : SG_OK;
}
