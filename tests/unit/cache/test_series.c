/* Unit tests for the series query and answer: defaults, alignment, the
 * minute/hour choice, every bound, and columns that add up to totals. */
#include <stdlib.h>
#include <string.h>

#include "semgate/cache/series.h"
#include "sg_test.h"

static enum sg_err parse(const char *q, struct cache_series_query *out)
{
	struct sg_error e = { 0 };
	return cache_series_parse(q, 1765000030, out, &e);
}

static void test_defaults_and_alignment(void)
{
	struct cache_series_query q;
	CHECK_INT(parse(NULL, &q), SG_OK);
	CHECK_INT(q.step, 60);
	CHECK_INT(q.from, 1764996420);           /* now - 3600, down to the minute */
	CHECK_INT(q.npoints, 61);
	CHECK_INT(q.to, q.from + 61 * 60);
	CHECK(!q.hourly);
	CHECK_INT(q.per, 1);
	CHECK_INT(q.first, q.from / 60);
	CHECK_INT(parse("from=7201&to=14400&step=3600", &q), SG_OK);
	CHECK(q.hourly);
	CHECK_INT(q.from, 7200);
	CHECK_INT(q.npoints, 2);
	CHECK_INT(q.per, 1);
	CHECK_INT(q.first, 2);
	CHECK_INT(parse("step=300&from=0&to=600", &q), SG_OK);
	CHECK(!q.hourly);
	CHECK_INT(q.per, 5);
	CHECK_INT(q.npoints, 2);
	CHECK_INT(parse("from=0&to=86400&step=86400", &q), SG_OK);
	CHECK(q.hourly);
	CHECK_INT(q.per, 24);
}

/* now on a whole minute: the minute that begins at now is in the default
 * range (its counts were written in this very second) */
static void test_default_range_holds_the_current_minute(void)
{
	struct cache_series_query q;
	struct sg_error e = { 0 };
	long long now = 1765000020; /* a multiple of 60 */
	CHECK_INT(cache_series_parse(NULL, now, &q, &e), SG_OK);
	CHECK(q.from <= now && now < q.to);
	CHECK_INT(q.first + (long long)q.npoints - 1, now / 60);
	CHECK_INT(cache_series_parse(NULL, now + 59, &q, &e), SG_OK);
	CHECK(q.from <= now + 59 && now + 59 < q.to);
	CHECK_INT(q.first + (long long)q.npoints - 1, now / 60);
}

static void test_bounds(void)
{
	static const char *const bad[] = {
		"step=59", "step=61", "step=0", "step=2678460", "step=", "step=1e3",
		"from=5&to=5", "from=6&to=5", "from=-1", "to=x", "from=1&from=1",
		"limit=1", "from", "=1", "from=1234567890123",
		"from=0&to=86460&step=60",           /* 1441 points */
		"from=0&to=2592000&step=1800",      /* 43200 minutes read */
	};
	struct cache_series_query q;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		enum sg_err rc = parse(bad[i], &q);
		if (rc != SG_ERR_BAD_REQUEST)
			printf("# accepted: %s\n", bad[i]);
		CHECK_INT(rc, SG_ERR_BAD_REQUEST);
	}
	CHECK_INT(parse("from=0&to=86400&step=60", &q), SG_OK);   /* 1440 points */
	CHECK_INT(parse("from=0&to=1209600&step=840", &q), SG_OK); /* 20160 minutes */
	CHECK_INT(parse("&from=0&&to=60&", &q), SG_OK);
}

static void test_json_columns_and_totals(void)
{
	struct cache_series_query q;
	CHECK_INT(parse("from=0&to=180&step=60", &q), SG_OK);
	struct store_series_point p[3];
	memset(p, 0, sizeof(p));
	p[0].requests = 3; p[0].hits_exact = 1; p[0].misses = 2;
	p[2].requests = 2; p[2].hits_semantic = 1; p[2].misses = 1; p[2].rejections = 1;
	p[2].rejected[SG_VERIFY_NUMBER - 1] = 1;
	p[0].tokens_prompt = 1000; p[2].tokens_completion = 500;
	cJSON *o = cache_series_json(&q, p, 0.5, 2.0);
	CHECK(o != NULL);
	const cJSON *tot = cJSON_GetObjectItem(o, "totals");
	CHECK_INT(cJSON_GetObjectItem(tot, "requests")->valuedouble, 5);
	CHECK_NEAR(cJSON_GetObjectItem(tot, "hit_rate")->valuedouble, 0.4, 1e-9);
	CHECK_NEAR(cJSON_GetObjectItem(tot, "cost_saved")->valuedouble, 1.5, 1e-9);
	const cJSON *by = cJSON_GetObjectItem(cJSON_GetObjectItem(o, "rejections_by_reason"),
					      "number");
	CHECK_INT(cJSON_GetArraySize(by), 3);
	CHECK_INT(cJSON_GetArrayItem(by, 2)->valuedouble, 1);
	CHECK_INT(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "t"), 2)->valuedouble, 120);
	CHECK_STR(cJSON_GetObjectItem(o, "resolution")->valuestring, "minute");
	cJSON_Delete(o);
	const char *const *r = cache_series_reasons();
	CHECK_STR(r[0], "number");
	size_t n = 0;
	while (r[n])
		n++;
	CHECK_INT(n, SG_VERIFY_REASON_COUNT - 1);
}

int main(void)
{
	RUN(test_defaults_and_alignment);
	RUN(test_default_range_holds_the_current_minute);
	RUN(test_bounds);
	RUN(test_json_columns_and_totals);
	return TEST_DONE();
}
