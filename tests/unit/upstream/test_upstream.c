/* Unit tests for the upstream client's pure parts: which response headers
 * are kept to be passed on to clients, and how. */
#include <stdio.h>
#include <string.h>

#include "semgate/upstream/upstream.h"
#include "sg_test.h"

static void take(struct upstream_headers *h, const char *line)
{
	upstream_headers_take(h, line, strlen(line));
}

static const char *value_of(const struct upstream_headers *h, const char *name)
{
	for (int i = 0; i < h->n; i++)
		if (strcmp(h->h[i].name, name) == 0)
			return h->h[i].value;
	return NULL;
}

static void test_only_retry_after_and_ratelimit_headers_are_kept(void)
{
	struct upstream_headers h = { 0 };
	take(&h, "HTTP/1.1 429 Too Many Requests\r\n");
	take(&h, "Content-Type: application/json\r\n");
	take(&h, "retry-after: 7\r\n");
	take(&h, "X-RateLimit-Remaining-Requests:0\r\n");
	take(&h, "x-ratelimit-reset-tokens: \t16ms \r\n");
	take(&h, "Set-Cookie: a=b\r\n");
	take(&h, "x-ratelimit: 1\r\n");              /* nothing after the prefix */
	take(&h, "x-ratelimit-a_b: 1\r\n");          /* not a name of ours */
	take(&h, "x-ratelimit-limit requests: 1\r\n");
	take(&h, "Retry-After-Ms: 5\r\n");
	take(&h, "\r\n");
	CHECK_INT(h.n, 3);
	CHECK_STR(value_of(&h, "Retry-After"), "7");
	CHECK_STR(value_of(&h, "x-ratelimit-remaining-requests"), "0");
	CHECK_STR(value_of(&h, "x-ratelimit-reset-tokens"), "16ms");
}

static void test_values_that_could_inject_or_overflow_are_dropped(void)
{
	struct upstream_headers h = { 0 };
	char longv[300];
	snprintf(longv, sizeof(longv), "retry-after: %0*d\r\n", UPSTREAM_HDR_VALUE_MAX + 1, 1);
	take(&h, longv);
	take(&h, "retry-after: 1\rInjected: yes\r\n");
	take(&h, "x-ratelimit-limit-requests: 6\x01" "0\r\n");
	take(&h, "x-ratelimit-limit-tokens: caf\xc3\xa9\r\n");
	take(&h, "x-ratelimit-remaining-tokens: 1\x7f\r\n");
	take(&h, "x-ratelimit-reset-requests:   \r\n");
	CHECK_INT(h.n, 0);
	char exact[300];
	snprintf(exact, sizeof(exact), "retry-after: %0*d\r\n", UPSTREAM_HDR_VALUE_MAX, 1);
	take(&h, exact);
	CHECK_INT(h.n, 1);
	CHECK_INT(strlen(h.h[0].value), UPSTREAM_HDR_VALUE_MAX);
	/* a line without CRLF (libcurl's last one may lack it) and no NUL */
	const char raw[] = "x-ratelimit-limit-requests: 60XXXX";
	upstream_headers_take(&h, raw, strlen(raw) - 4);
	CHECK_STR(value_of(&h, "x-ratelimit-limit-requests"), "60");
}

static void test_count_and_repeated_names_are_bounded(void)
{
	struct upstream_headers h = { 0 };
	take(&h, "Retry-After: 1\r\n");
	take(&h, "Retry-After: 2\r\n");
	CHECK_INT(h.n, 1);
	CHECK_STR(value_of(&h, "Retry-After"), "1");
	for (int i = 0; i < 40; i++) {
		char line[64];
		snprintf(line, sizeof(line), "x-ratelimit-n%d: %d\r\n", i, i);
		take(&h, line);
	}
	CHECK_INT(h.n, UPSTREAM_HDR_MAX);
	char name[UPSTREAM_HDR_NAME_MAX + 40];
	memset(name, 'a', sizeof(name));
	memcpy(name, "x-ratelimit-", 12);
	snprintf(name + UPSTREAM_HDR_NAME_MAX + 1, 20, ": 1\r\n");
	struct upstream_headers g = { 0 };
	take(&g, name); /* a name one byte too long */
	CHECK_INT(g.n, 0);
}

static void test_a_new_status_line_and_folding_forget_headers(void)
{
	struct upstream_headers h = { 0 };
	take(&h, "HTTP/1.1 100 Continue\r\n");
	take(&h, "Retry-After: 3\r\n");
	take(&h, "HTTP/1.1 200 OK\r\n");
	CHECK_INT(h.n, 0);
	take(&h, "Retry-After: 3\r\n");
	take(&h, "x-ratelimit-limit-requests: 60\r\n");
	take(&h, "  and more\r\n"); /* obs-fold continues the last header */
	CHECK_INT(h.n, 1);
	CHECK_STR(value_of(&h, "Retry-After"), "3");
	take(&h, "Content-Type: text/plain\r\n");
	take(&h, " folded\r\n"); /* continues a header that was not kept */
	CHECK_INT(h.n, 1);
}

static void test_append_fills_a_header_list_as_far_as_it_fits(void)
{
	struct upstream_headers h = { 0 };
	take(&h, "Retry-After: 3\r\n");
	take(&h, "x-ratelimit-limit-requests: 60\r\n");
	const char *list[6] = { "X-Semgate-Cache", "miss", NULL };
	int n = upstream_headers_append(&h, list, 2, 6);
	CHECK_INT(n, 4);
	CHECK_STR(list[2], "Retry-After");
	CHECK_STR(list[3], "3");
	CHECK(list[4] == NULL);
	const char *small[4] = { "A", "b", NULL };
	CHECK_INT(upstream_headers_append(&h, small, 2, 4), 2);
	CHECK(small[2] == NULL);
}

int main(void)
{
	RUN(test_only_retry_after_and_ratelimit_headers_are_kept);
	RUN(test_values_that_could_inject_or_overflow_are_dropped);
	RUN(test_count_and_repeated_names_are_bounded);
	RUN(test_a_new_status_line_and_folding_forget_headers);
	RUN(test_append_fills_a_header_list_as_far_as_it_fits);
	return TEST_DONE();
}
