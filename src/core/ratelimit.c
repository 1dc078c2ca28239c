/* SEMGATE_RATE_LIMIT parsing and Retry-After arithmetic. Pure: no I/O, no
 * state; the sliding window itself is in src/store/limits.c. */
#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/ratelimit.h"

/* Digits only (strtoll alone would take signs, blanks and hex). */
static bool parse_count(const char *s, const char *end, long long max, long long *out)
{
	if (s == end || end - s > 19)
		return false;
	long long v = 0;
	for (const char *p = s; p < end; p++) {
		if (!isdigit((unsigned char)*p))
			return false;
		v = v * 10 + (*p - '0');
		if (v > max)
			return false;
	}
	*out = v;
	return v >= 1;
}

enum sg_err ratelimit_parse(const char *spec, struct rate_limit *out, struct sg_error *e)
{
	out->max = 0;
	out->window_s = 0;
	if (!spec || !spec[0])
		return SG_OK;
	const char *slash = strchr(spec, '/');
	const char *end = spec + strlen(spec);
	const char *wend = end;
	if (slash && wend > slash + 1 && wend[-1] == 's')
		wend--;
	long long n, w;
	if (!slash || !parse_count(spec, slash, SG_RATE_MAX_REQUESTS, &n) ||
	    !parse_count(slash + 1, wend, SG_RATE_MAX_WINDOW_S, &w))
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"SEMGATE_RATE_LIMIT: '%.64s' is not N/Ws with N in 1..%lld requests and "
			"W in 1..%lld seconds (e.g. 100/60s)", spec, SG_RATE_MAX_REQUESTS,
			SG_RATE_MAX_WINDOW_S);
	out->max = n;
	out->window_s = w;
	return SG_OK;
}

long long ratelimit_retry_after(long long wait_ms, long long window_s)
{
	long long s = wait_ms <= 0 ? 1 : (wait_ms + 999) / 1000;
	if (s < 1)
		s = 1;
	if (s > window_s)
		s = window_s;
	return s < 1 ? 1 : s;
}
