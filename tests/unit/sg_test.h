/* A tiny TAP-producing test harness for the unit tests.
 * Each TEST(name) is one TAP line; CHECK failures print a diagnostic with
 * file and line and mark the current test failed. meson runs the binaries
 * with protocol: 'tap'. */
#ifndef SEMGATE_SG_TEST_H
#define SEMGATE_SG_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int sg_t_count, sg_t_failed_total, sg_t_cur_failed;

#define CHECK(cond) do { \
	if (!(cond)) { \
		sg_t_cur_failed = 1; \
		printf("# %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
	} \
} while (0)

#define CHECK_INT(a, b) do { \
	long long sg_a_ = (long long)(a), sg_b_ = (long long)(b); \
	if (sg_a_ != sg_b_) { \
		sg_t_cur_failed = 1; \
		printf("# %s:%d: %s == %lld, expected %s == %lld\n", __FILE__, \
		       __LINE__, #a, sg_a_, #b, sg_b_); \
	} \
} while (0)

#define CHECK_STR(a, b) do { \
	const char *sg_a_ = (a), *sg_b_ = (b); \
	if (!sg_a_ || !sg_b_ || strcmp(sg_a_, sg_b_) != 0) { \
		sg_t_cur_failed = 1; \
		printf("# %s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, \
		       __LINE__, #a, sg_a_ ? sg_a_ : "(null)", sg_b_ ? sg_b_ : "(null)"); \
	} \
} while (0)

#define CHECK_NEAR(a, b, eps) do { \
	double sg_a_ = (double)(a), sg_b_ = (double)(b); \
	if (!(fabs(sg_a_ - sg_b_) <= (eps))) { \
		sg_t_cur_failed = 1; \
		printf("# %s:%d: %s == %.9g, expected %.9g (eps %g)\n", __FILE__, \
		       __LINE__, #a, sg_a_, sg_b_, (double)(eps)); \
	} \
} while (0)

#define RUN(fn) do { \
	sg_t_cur_failed = 0; \
	fn(); \
	sg_t_count++; \
	if (sg_t_cur_failed) sg_t_failed_total++; \
	printf("%s %d - %s\n", sg_t_cur_failed ? "not ok" : "ok", sg_t_count, #fn); \
	fflush(stdout); \
} while (0)

#define TEST_DONE() (printf("1..%d\n", sg_t_count), sg_t_failed_total ? 1 : 0)

#endif
