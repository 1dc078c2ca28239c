/* Unit tests for metrics: counters, per-route request counts, histogram
 * buckets, per-request thread totals and the exposition text. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/metrics.h"
#include "sg_test.h"

static char *render(const struct metrics_extra *x)
{
	struct sg_buf b;
	sg_buf_init(&b, 0);
	CHECK_INT(metrics_render(&b, x), SG_OK);
	return sg_buf_steal(&b, NULL);
}

static int count_of(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

static bool has_line(const char *text, const char *line)
{
	size_t n = strlen(line);
	for (const char *p = text; (p = strstr(p, line)); p += n)
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return true;
	printf("# missing line: %s\n", line);
	return false;
}

static void test_counters_add_and_render_with_fixed_labels(void)
{
	metrics_inc(SG_C_CACHE_MISS);
	metrics_add(SG_C_CACHE_HIT_EXACT, 3);
	metrics_cache_outcome("hit-semantic");
	metrics_cache_outcome("nonsense");
	CHECK_INT(metrics_get(SG_C_CACHE_MISS), 1);
	CHECK_INT(metrics_get(SG_C_CACHE_HIT_EXACT), 3);
	CHECK_INT(metrics_get(SG_C_CACHE_HIT_SEMANTIC), 1);
	struct metrics_extra x = { .index_entries = 42 };
	char *t = render(&x);
	CHECK(has_line(t, "semgate_cache_requests_total{outcome=\"hit-exact\"} 3"));
	CHECK(has_line(t, "semgate_cache_requests_total{outcome=\"miss\"} 1"));
	CHECK(has_line(t, "semgate_cache_requests_total{outcome=\"bypass\"} 0"));
	CHECK(has_line(t, "semgate_rate_limited_total 0"));
	CHECK(has_line(t, "semgate_index_entries 42"));
	/* one HELP and TYPE per family, whatever its number of series */
	CHECK_INT(count_of(t, "# TYPE semgate_cache_requests_total counter\n"), 1);
	CHECK_INT(count_of(t, "# HELP semgate_cache_requests_total "), 1);
	CHECK_INT(count_of(t, "# TYPE semgate_redis_duration_seconds histogram\n"), 1);
	free(t);
}

static void test_lookup_outcomes_and_verify_rejections_by_name(void)
{
	metrics_lookup_outcome("hit-semantic");
	metrics_lookup_outcome("miss");
	metrics_lookup_outcome("miss");
	metrics_lookup_outcome("bypass"); /* not a lookup outcome: ignored */
	metrics_verify_rejection("number");
	metrics_verify_rejection("entity");
	metrics_verify_rejection("entity");
	metrics_verify_rejection("pass");
	metrics_verify_rejection(NULL);
	struct metrics_extra x = { 0 };
	char *t = render(&x);
	CHECK(has_line(t, "semgate_cache_lookups_total{outcome=\"hit-exact\"} 0"));
	CHECK(has_line(t, "semgate_cache_lookups_total{outcome=\"hit-semantic\"} 1"));
	CHECK(has_line(t, "semgate_cache_lookups_total{outcome=\"miss\"} 2"));
	CHECK(has_line(t, "semgate_verify_rejections_total{reason=\"number\"} 1"));
	CHECK(has_line(t, "semgate_verify_rejections_total{reason=\"entity\"} 2"));
	CHECK(has_line(t, "semgate_verify_rejections_total{reason=\"content\"} 0"));
	CHECK_INT(count_of(t, "# TYPE semgate_verify_rejections_total counter\n"), 1);
	CHECK_INT(count_of(t, "# TYPE semgate_cache_lookups_total counter\n"), 1);
	free(t);
}

static void test_requests_by_route_method_and_status(void)
{
	metrics_request("POST", "/v1/x", 200, 3.0);
	metrics_request("POST", "/v1/x", 200, 4.0);
	metrics_request("POST", "/v1/x", 429, 0.05);
	metrics_request("BREW", NULL, 404, 1.0);
	metrics_request("GET", "/v1/x", 99, 1.0);  /* nonsense status: 500 */
	struct metrics_extra x = { 0 };
	char *t = render(&x);
	CHECK(has_line(t, "semgate_http_requests_total{method=\"POST\",route=\"/v1/x\",status=\"200\"} 2"));
	CHECK(has_line(t, "semgate_http_requests_total{method=\"POST\",route=\"/v1/x\",status=\"429\"} 1"));
	CHECK(has_line(t, "semgate_http_requests_total{method=\"OTHER\",route=\"unmatched\",status=\"404\"} 1"));
	CHECK(has_line(t, "semgate_http_requests_total{method=\"GET\",route=\"/v1/x\",status=\"500\"} 1"));
	/* buckets are cumulative: 0.05 ms <= 0.0001 s; 3 and 4 ms <= 0.005 s */
	CHECK(has_line(t, "semgate_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/x\",le=\"0.0001\"} 1"));
	CHECK(has_line(t, "semgate_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/x\",le=\"0.0025\"} 1"));
	CHECK(has_line(t, "semgate_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/x\",le=\"0.005\"} 3"));
	CHECK(has_line(t, "semgate_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/x\",le=\"+Inf\"} 3"));
	CHECK(has_line(t, "semgate_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/x\"} 3"));
	CHECK(has_line(t, "semgate_http_request_duration_seconds_sum{method=\"POST\",route=\"/v1/x\"} 0.007050"));
	free(t);
}

static void test_many_routes_overflow_into_one_other_slot(void)
{
	static char names[300][16];
	for (int i = 0; i < 300; i++) {
		snprintf(names[i], sizeof(names[i]), "/r%d", i);
		metrics_request("GET", names[i], 200, 1.0);
	}
	struct metrics_extra x = { 0 };
	char *t = render(&x);
	CHECK(strstr(t, "route=\"other\",status=\"200\"}") != NULL);
	CHECK_INT(count_of(t, "method=\"OTHER\",route=\"other\",status=\"200\"}"), 1);
	free(t);
}

static void test_histograms_and_per_request_totals(void)
{
	metrics_req_begin();
	metrics_observe(SG_H_REDIS, 0.3);
	metrics_observe(SG_H_REDIS, 0.7);
	metrics_observe(SG_H_EMBED, 120.0);
	unsigned n;
	CHECK_NEAR(metrics_req_ms(SG_H_REDIS, &n), 1.0, 1e-9);
	CHECK_INT(n, 2);
	CHECK_NEAR(metrics_req_ms(SG_H_EMBED, &n), 120.0, 1e-9);
	CHECK_INT(n, 1);
	CHECK_NEAR(metrics_req_ms(SG_H_SEARCH, &n), 0.0, 1e-9);
	CHECK_INT(n, 0);
	metrics_req_begin();
	metrics_req_ms(SG_H_REDIS, &n);
	CHECK_INT(n, 0);
	struct metrics_extra x = { 0 };
	char *t = render(&x);
	CHECK(has_line(t, "semgate_redis_duration_seconds_bucket{le=\"0.00025\"} 0"));
	CHECK(has_line(t, "semgate_redis_duration_seconds_bucket{le=\"0.0005\"} 1"));
	CHECK(has_line(t, "semgate_redis_duration_seconds_bucket{le=\"0.001\"} 2"));
	CHECK(has_line(t, "semgate_redis_duration_seconds_count 2"));
	CHECK(has_line(t, "semgate_redis_duration_seconds_sum 0.001000"));
	CHECK(has_line(t, "semgate_embedding_duration_seconds_bucket{le=\"0.1\"} 0"));
	CHECK(has_line(t, "semgate_embedding_duration_seconds_bucket{le=\"0.25\"} 1"));
	free(t);
}

static void test_cost_saved_uses_both_prices(void)
{
	metrics_add(SG_C_TOKENS_SAVED_PROMPT, 2000);
	metrics_add(SG_C_TOKENS_SAVED_COMPLETION, 500);
	struct metrics_extra x = { .price_prompt_per_1k = 0.5, .price_completion_per_1k = 2.0 };
	char *t = render(&x);
	CHECK(has_line(t, "semgate_tokens_saved_total{kind=\"prompt\"} 2000"));
	CHECK(has_line(t, "semgate_estimated_cost_saved_total 2.000000"));
	free(t);
}

int main(void)
{
	RUN(test_counters_add_and_render_with_fixed_labels);
	RUN(test_lookup_outcomes_and_verify_rejections_by_name);
	RUN(test_requests_by_route_method_and_status);
	RUN(test_many_routes_overflow_into_one_other_slot);
	RUN(test_histograms_and_per_request_totals);
	RUN(test_cost_saved_uses_both_prices);
	return TEST_DONE();
}
