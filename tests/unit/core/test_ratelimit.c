/* Unit tests for SEMGATE_RATE_LIMIT parsing and Retry-After arithmetic. */
#include <string.h>

#include "semgate/core/ratelimit.h"
#include "sg_test.h"

static void test_valid_specs(void)
{
	struct rate_limit rl;
	struct sg_error e = { 0 };
	CHECK_INT(ratelimit_parse("100/60s", &rl, &e), SG_OK);
	CHECK_INT(rl.max, 100);
	CHECK_INT(rl.window_s, 60);
	CHECK_INT(ratelimit_parse("5/1", &rl, &e), SG_OK);
	CHECK_INT(rl.max, 5);
	CHECK_INT(rl.window_s, 1);
	CHECK_INT(ratelimit_parse("1000000000/86400s", &rl, &e), SG_OK);
	CHECK_INT(rl.max, 1000000000);
	CHECK_INT(rl.window_s, 86400);
	CHECK_INT(ratelimit_parse("1/1s", &rl, &e), SG_OK);
	CHECK_INT(rl.max, 1);
}

static void test_empty_means_no_limit(void)
{
	struct rate_limit rl = { 7, 7 };
	struct sg_error e = { 0 };
	CHECK_INT(ratelimit_parse("", &rl, &e), SG_OK);
	CHECK_INT(rl.max, 0);
	CHECK_INT(ratelimit_parse(NULL, &rl, &e), SG_OK);
	CHECK_INT(rl.max, 0);
}

static void test_invalid_specs_name_the_variable_and_ranges(void)
{
	static const char *const bad[] = {
		"0/60s", "100/0s", "1000000001/60s", "10/86401s", "10", "10/", "/60s",
		"10/60m", "-5/60s", "+5/60s", " 5/60s", "5/60s ", "5 /60s", "5/ 60s",
		"0x10/60s", "5.5/60s", "5/60ss", "5/s", "10/60s/2", "99999999999999999999/1s",
		"abc",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct rate_limit rl;
		struct sg_error e = { 0 };
		enum sg_err rc = ratelimit_parse(bad[i], &rl, &e);
		if (rc != SG_ERR_BAD_REQUEST)
			printf("# '%s' was accepted\n", bad[i]);
		CHECK_INT(rc, SG_ERR_BAD_REQUEST);
		CHECK(strstr(e.msg, "SEMGATE_RATE_LIMIT") != NULL);
		CHECK(strstr(e.msg, "1..1000000000") != NULL);
		CHECK(strstr(e.msg, "1..86400") != NULL);
	}
}

static void test_retry_after_is_rounded_up_and_clamped(void)
{
	CHECK_INT(ratelimit_retry_after(1, 60), 1);
	CHECK_INT(ratelimit_retry_after(999, 60), 1);
	CHECK_INT(ratelimit_retry_after(1000, 60), 1);
	CHECK_INT(ratelimit_retry_after(1001, 60), 2);
	CHECK_INT(ratelimit_retry_after(59500, 60), 60);
	CHECK_INT(ratelimit_retry_after(0, 60), 1);
	CHECK_INT(ratelimit_retry_after(-5, 60), 1);
	CHECK_INT(ratelimit_retry_after(120000, 60), 60);
	CHECK_INT(ratelimit_retry_after(5000, 1), 1);
}

int main(void)
{
	RUN(test_valid_specs);
	RUN(test_empty_means_no_limit);
	RUN(test_invalid_specs_name_the_variable_and_ranges);
	RUN(test_retry_after_is_rounded_up_and_clamped);
	return TEST_DONE();
}
