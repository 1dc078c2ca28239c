/* Unit tests for the base layer: capped buffer, UTF-8 check, strict JSON. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/buf.h"
#include "semgate/core/json.h"
#include "sg_test.h"

static void test_buf_refuses_to_grow_past_its_cap(void)
{
	struct sg_buf b;
	sg_buf_init(&b, 10);
	CHECK_INT(sg_buf_append(&b, "12345", 5), SG_OK);
	CHECK_INT(sg_buf_append(&b, "123456", 6), SG_ERR_TOO_LARGE);
	CHECK_INT(b.len, 5);
	CHECK_INT(sg_buf_append(&b, "12345", 5), SG_OK);
	CHECK_STR(b.data, "1234512345");
	CHECK_INT(sg_buf_append(&b, "x", 1), SG_ERR_TOO_LARGE);
	sg_buf_reset(&b);
	CHECK_INT(sg_buf_printf(&b, "%d-%s", 42, "ok"), SG_OK);
	CHECK_STR(b.data, "42-ok");
	size_t n;
	char *s = sg_buf_steal(&b, &n);
	CHECK_STR(s, "42-ok");
	CHECK_INT(n, 5);
	CHECK(b.data == NULL);
	free(s);
	sg_buf_finish(&b);
}

static void test_buf_printf_handles_long_output(void)
{
	struct sg_buf b;
	sg_buf_init(&b, 0);
	char big[3000];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	CHECK_INT(sg_buf_printf(&b, "<%s>", big), SG_OK);
	CHECK_INT(b.len, sizeof(big) + 1);
	sg_buf_finish(&b);
}

static void test_buf_on_caller_storage_moves_to_the_heap_when_outgrown(void)
{
	char mem[8];
	struct sg_buf b;
	sg_buf_init_on(&b, mem, sizeof(mem), 0);
	CHECK(b.data == mem && b.len == 0 && mem[0] == '\0');
	CHECK_INT(sg_buf_append(&b, "abcdefg", 7), SG_OK);   /* 7 + NUL fits */
	CHECK(b.data == mem);
	CHECK_STR(b.data, "abcdefg");
	CHECK_INT(sg_buf_printf(&b, "%s", "hijklmnopqrstuvwxyz"), SG_OK);
	CHECK(b.data != mem);
	CHECK_STR(b.data, "abcdefghijklmnopqrstuvwxyz");
	CHECK_STR(mem, "abcdefg");                           /* left as it was */
	sg_buf_finish(&b);                                   /* frees the heap copy */

	/* steal from caller storage hands out a heap copy; finish on caller
	 * storage frees nothing (ASan would report either mistake) */
	sg_buf_init_on(&b, mem, sizeof(mem), 4);
	CHECK_INT(sg_buf_append(&b, "wxyz", 4), SG_OK);
	CHECK_INT(sg_buf_append(&b, "!", 1), SG_ERR_TOO_LARGE);
	size_t n = 0;
	char *s = sg_buf_steal(&b, &n);
	CHECK(s && s != mem);
	CHECK_STR(s, "wxyz");
	CHECK_INT(n, 4);
	free(s);
	sg_buf_init_on(&b, mem, sizeof(mem), 0);
	CHECK_INT(sg_buf_append(&b, "x", 1), SG_OK);
	sg_buf_finish(&b);
}

static void test_buf_number_appenders_write_what_printf_would(void)
{
	static const long long ints[] = { 0, 7, -7, 200, 503, 1234567890123LL,
					  LLONG_MAX, LLONG_MIN };
	for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
		struct sg_buf b;
		sg_buf_init(&b, 0);
		char want[32];
		snprintf(want, sizeof(want), "%lld", ints[i]);
		CHECK(sg_buf_put_int(&b, ints[i]) == SG_OK);
		CHECK_STR(b.data, want);
		sg_buf_finish(&b);
	}
	/* not halfway cases: printf and the appender agree on every digit */
	static const double ms[] = { 0.0, 0.0004, 0.001, 0.25, 0.999, 0.9996, 1.5,
				     12.3456, 999.9994, 86400000.125, -0.0001, -2.5 };
	for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
		struct sg_buf b;
		sg_buf_init(&b, 0);
		char want[48];
		snprintf(want, sizeof(want), "%.3f", ms[i]);
		CHECK(sg_buf_put_fixed3(&b, ms[i]) == SG_OK);
		CHECK_STR(b.data, want);
		sg_buf_finish(&b);
	}
	/* out of the fast range, printf's own text */
	struct sg_buf b;
	sg_buf_init(&b, 0);
	CHECK(sg_buf_put_fixed3(&b, 1e300) == SG_OK && strlen(b.data) > 300);
	sg_buf_reset(&b);
	CHECK(sg_buf_put_fixed3(&b, NAN) == SG_OK && strcmp(b.data, "nan") == 0);
	sg_buf_finish(&b);
	/* the cap holds for them too */
	sg_buf_init(&b, 3);
	CHECK(sg_buf_put_int(&b, 1234) == SG_ERR_TOO_LARGE);
	CHECK(sg_buf_put_fixed3(&b, 1.0) == SG_ERR_TOO_LARGE);
	CHECK_INT(b.len, 0);
	sg_buf_finish(&b);
}

static void test_utf8_validation(void)
{
	CHECK(sg_utf8_valid("hello", 5));
	CHECK(sg_utf8_valid("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 15));
	CHECK(!sg_utf8_valid("\xff", 1));
	CHECK(!sg_utf8_valid("\xc0\xaf", 2));          /* overlong '/' */
	CHECK(!sg_utf8_valid("\xed\xa0\x80", 3));      /* surrogate */
	CHECK(!sg_utf8_valid("\xe2\x82", 2));          /* truncated */
	CHECK(!sg_utf8_valid("\xf4\x90\x80\x80", 4));  /* > U+10FFFF */
}

static enum sg_err parse(const char *s, cJSON **out, struct sg_error *e)
{
	return sg_json_parse(s, strlen(s), out, e);
}

static void test_json_accepts_one_value_with_whitespace(void)
{
	cJSON *j = NULL;
	struct sg_error e = { 0 };
	CHECK_INT(parse(" {\"a\": [1, 2, {\"b\": null}]}\n ", &j, &e), SG_OK);
	CHECK(cJSON_IsObject(j));
	CHECK(sg_json_arr(j, "a") != NULL);
	CHECK(sg_json_str(j, "a") == NULL);
	cJSON_Delete(j);
}

static void test_json_refuses_trailing_bytes_and_bad_input(void)
{
	cJSON *j = NULL;
	struct sg_error e = { 0 };
	CHECK_INT(parse("{} {}", &j, &e), SG_ERR_BAD_REQUEST);
	CHECK(j == NULL);
	CHECK(strstr(e.msg, "after") != NULL);
	CHECK_INT(parse("", &j, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(parse("{\"a\":\"\\ud800\"}", &j, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(parse("{\"a\":\"x\ty\"}", &j, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(sg_json_parse("{\"a\":1}\0x", 9, &j, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(sg_json_parse("\"\xff\"", 3, &j, &e), SG_ERR_BAD_REQUEST);
	/* between tokens only space, tab, CR and LF are whitespace (cJSON alone
	 * would skip \x14 or \v too) */
	CHECK_INT(parse("{\"a\":1,\x14\"b\":2}", &j, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "control character") != NULL);
	CHECK_INT(parse("\v[1]", &j, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(parse(" \t\r\n{ \"a\" :\n[ 1 ,\t2 ]\r\n} ", &j, &e), SG_OK);
	cJSON_Delete(j);
	j = NULL;
	/* escapes cJSON would misread: a \\u without four hex digits becomes
	 * U+0000 and cuts the string; a raw NUL hides behind a backslash */
	CHECK_INT(parse("{\"a\":\"x\\uZZZZy\"}", &j, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "escape") != NULL);
	CHECK_INT(parse("{\"a\":\"x\\u12\"}", &j, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(parse("{\"a\":\"x\\u\"}", &j, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(sg_json_parse("{\"a\":\"x\\\0\"}", 11, &j, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "escape") != NULL);
	CHECK_INT(parse("{\"a\":\"x\\qy\"}", &j, &e), SG_ERR_BAD_REQUEST);
	CHECK(j == NULL);
	CHECK_INT(parse("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u00C9\"", &j, &e), SG_OK);
	CHECK_STR(j ? j->valuestring : NULL, "\"\\/\b\f\n\r\t\xc3\xa9\xc3\x89");
	cJSON_Delete(j);
	j = NULL;
	/* a valid surrogate pair is fine */
	CHECK_INT(parse("\"\\ud83d\\ude00\"", &j, &e), SG_OK);
	cJSON_Delete(j);
}

static void test_json_depth_is_bounded(void)
{
	char deep[300];
	int d = SG_JSON_MAX_DEPTH + 1;
	for (int i = 0; i < d; i++) {
		deep[i] = '[';
		deep[d + i] = ']';
	}
	deep[2 * d] = '\0';
	cJSON *j = NULL;
	struct sg_error e = { 0 };
	CHECK_INT(parse(deep, &j, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "nesting") != NULL);
	/* brackets inside strings do not count */
	CHECK_INT(parse("\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"", &j, &e), SG_OK);
	cJSON_Delete(j);
}

static void test_list_has_matches_whole_items_only(void)
{
	CHECK(sg_list_has("off|basic|strict", '|', "basic"));
	CHECK(sg_list_has("off|basic|strict", '|', "strict"));
	CHECK(!sg_list_has("off|basic|strict", '|', "bas"));
	CHECK(!sg_list_has("off|basic|strict", '|', "basic|strict"));
	CHECK(sg_list_has("a=1&index=1", '&', "index=1"));
	CHECK(!sg_list_has("index=10", '&', "index=1"));
	CHECK(!sg_list_has("&&", '&', ""));
	CHECK(!sg_list_has(NULL, '&', "x"));
}

static void test_error_body_shape(void)
{
	char *s = sg_json_error_body("bad \"thing\"", "invalid_request_error", "x");
	CHECK_STR(s, "{\"error\":{\"message\":\"bad \\\"thing\\\"\",\"type\":"
		  "\"invalid_request_error\",\"code\":\"x\"}}");
	free(s);
}

/* s without its member key, as sg_json_member_cut_span cuts it. */
static char *cut(const char *s, const char *key, int *found)
{
	static char out[256];
	size_t b = 0, e = 0;
	*found = sg_json_member_cut_span(s, strlen(s), key, &b, &e);
	if (*found != 1)
		return NULL;
	snprintf(out, sizeof(out), "%.*s%s", (int)b, s, s + e);
	return out;
}

static void test_member_cut_span_keeps_valid_json(void)
{
	int f;
	CHECK_STR(cut("{\"a\":1,\"usage\":null}", "usage", &f), "{\"a\":1}");
	CHECK_STR(cut("{\"usage\":{\"t\":1}, \"a\":1}", "usage", &f), "{\"a\":1}");
	CHECK_STR(cut("{\"a\":1 , \"usage\" : [1,\"]\"] ,\"b\":2}", "usage", &f),
		  "{\"a\":1  ,\"b\":2}");
	CHECK_STR(cut(" { \"usage\":1 } ", "usage", &f), " {  } ");
	CHECK_STR(cut("{\"a\":{\"usage\":1},\"usage\":2}", "usage", &f), "{\"a\":{\"usage\":1}}");
	CHECK(cut("{\"a\":{\"usage\":1}}", "usage", &f) == NULL);
	CHECK_INT(f, 0);
	CHECK(cut("{\"u\\u0073age\":1}", "usage", &f) == NULL);
	CHECK_INT(f, -1);
	const char *all[] = { "{\"a\":1,\"usage\":null}", "{\"usage\":null,\"a\":1}",
			      "{\"usage\":null}", "{\"a\":1,\"usage\":null,\"b\":[]}" };
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		cJSON *j = NULL;
		char *c = cut(all[i], "usage", &f);
		CHECK(c && sg_json_parse(c, strlen(c), &j, NULL) == SG_OK);
		CHECK(j && !cJSON_GetObjectItemCaseSensitive(j, "usage"));
		cJSON_Delete(j);
	}
}

static void test_member_put_replaces_or_adds_in_place(void)
{
	char *s = sg_json_member_put("{\"a\": 1.50, \"so\" : null }", 26, "so", "{\"x\":true}");
	CHECK_STR(s, "{\"a\": 1.50, \"so\" : {\"x\":true} }");
	free(s);
	s = sg_json_member_put(" {\"seed\":18446744073709551615}", 31, "so", "1");
	CHECK_STR(s, " {\"so\":1,\"seed\":18446744073709551615}");
	free(s);
	s = sg_json_member_put("{ }", 3, "so", "1");
	CHECK_STR(s, "{\"so\":1 }");
	free(s);
	CHECK(sg_json_member_put("{\"\\u0061\":1}", 12, "so", "1") == NULL);
	CHECK(sg_json_member_put("[1]", 3, "so", "1") == NULL);
}

static void test_query_split_names_values_and_refusals(void)
{
	static const char *const names[] = { "from", "to" };
	struct sg_param v[2];
	struct sg_error e = { 0 };
	CHECK_INT(sg_query_split("to=5&&from=", names, 2, v, &e), SG_OK);
	CHECK(v[0].value && v[0].len == 0);
	CHECK(v[1].value && v[1].len == 1 && v[1].value[0] == '5');
	CHECK_INT(sg_query_split(NULL, names, 2, v, &e), SG_OK);
	CHECK(!v[0].value && !v[1].value);
	CHECK_INT(sg_query_split("from=1&from=2", names, 2, v, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "only 'from' and 'to' are accepted") != NULL);
	CHECK_INT(sg_query_split("fromx=1", names, 2, v, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(sg_query_split("from", names, 2, v, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(sg_query_split("=1", names, 1, v, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "only 'from' is accepted") != NULL);
}

int main(void)
{
	RUN(test_query_split_names_values_and_refusals);
	RUN(test_buf_refuses_to_grow_past_its_cap);
	RUN(test_buf_printf_handles_long_output);
	RUN(test_buf_on_caller_storage_moves_to_the_heap_when_outgrown);
	RUN(test_buf_number_appenders_write_what_printf_would);
	RUN(test_utf8_validation);
	RUN(test_json_accepts_one_value_with_whitespace);
	RUN(test_json_refuses_trailing_bytes_and_bad_input);
	RUN(test_json_depth_is_bounded);
	RUN(test_error_body_shape);
	RUN(test_member_cut_span_keeps_valid_json);
	RUN(test_member_put_replaces_or_adds_in_place);
	RUN(test_list_has_matches_whole_items_only);
	return TEST_DONE();
}
