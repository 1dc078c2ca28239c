/* Unit tests for serving a stored completion (cache_render_hit): a fresh
 * id and created spliced into the stored bytes, everything else as stored,
 * and the tree handed back agreeing with the bytes; and the meta a hot
 * copy keeps (cache_answer_meta) saying what that render and the usage
 * readers would. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/cache/api.h"
#include "semgate/cache/cache.h"
#include "semgate/core/json.h"
#include "sg_test.h"

/* Render, check the result parses, and return it with its tree. */
static char *render(const char *stored, cJSON **doc, cJSON **sent)
{
	char *out = cache_render_hit(stored, strlen(stored), doc);
	*sent = NULL;
	if (out)
		CHECK_INT(sg_json_parse(out, strlen(out), sent, NULL), SG_OK);
	return out;
}

static void release(char *out, cJSON *doc, cJSON *sent)
{
	free(out);
	cJSON_Delete(doc);
	cJSON_Delete(sent);
}

static void check_fresh(const cJSON *doc, const cJSON *sent)
{
	const char *id = sg_json_str(sent, "id");
	CHECK(id && strncmp(id, "chatcmpl-sg", 11) == 0 && strlen(id) == 35);
	CHECK_STR(sg_json_str(doc, "id"), id);
	const cJSON *c1 = cJSON_GetObjectItemCaseSensitive(sent, "created");
	const cJSON *c2 = cJSON_GetObjectItemCaseSensitive(doc, "created");
	CHECK(cJSON_IsNumber(c1) && cJSON_IsNumber(c2));
	CHECK(c1 && c2 && c1->valuedouble == c2->valuedouble);
	CHECK(c1 && c1->valuedouble >= (double)time(NULL) - 5);
}

/* Render stored and check the basics every case shares; false when
 * nothing came out (already reported). */
static bool served(const char *stored, char **out, cJSON **doc, cJSON **sent)
{
	*out = render(stored, doc, sent);
	CHECK(*out != NULL);
	if (!*out)
		return false;
	check_fresh(*doc, *sent);
	return true;
}

static void test_id_and_created_are_replaced_in_place(void)
{
	const char *stored =
		"{\"id\":\"chatcmpl-old\",\"object\":\"chat.completion\",\"created\":1700000000,"
		"\"model\":\"m\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
		"\"content\":\"a \\\"quoted\\\" {brace} and \\\\ and id\",\"id\":\"inner\"},"
		"\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":"
		"4,\"total_tokens\":7,\"x\":0.1000000000000000055511151231257827}}";
	cJSON *doc, *sent;
	char *out;
	if (!served(stored, &out, &doc, &sent))
		return;
	/* everything but the two values is byte for byte what was stored */
	const char *tail = strstr(stored, ",\"model\"");
	CHECK(strstr(out, tail) != NULL);
	CHECK(strstr(out, "chatcmpl-old") == NULL && strstr(out, "1700000000") == NULL);
	CHECK(strncmp(out, "{\"id\":\"chatcmpl-sg", 17) == 0);
	CHECK(strstr(out, ",\"object\":\"chat.completion\",\"created\":") != NULL);
	const cJSON *msg = sg_json_obj(cJSON_GetArrayItem(sg_json_arr(sent, "choices"), 0),
				       "message");
	CHECK_STR(sg_json_str(msg, "id"), "inner");
	release(out, doc, sent);
}

static void test_created_before_id_and_whitespace(void)
{
	const char *stored = " { \"created\" : 12 ,\n \"id\" : \"x\" , \"n\" : [1, {\"id\": 2}] } ";
	cJSON *doc, *sent;
	char *out;
	if (!served(stored, &out, &doc, &sent))
		return;
	CHECK(strstr(out, "\"n\" : [1, {\"id\": 2}] } ") != NULL);
	release(out, doc, sent);
}

static void test_absent_members_are_added(void)
{
	static const char *const cases[] = { "{}", " { } ", "{\"a\":1}", "{\"id\":\"x\"}",
					     "{\"created\":5}", "{\"a\":{\"id\":1,\"created\":2}}",
					     /* other spellings are other members */
					     "{\"ID\":\"x\",\"crEated\":1}" };
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cJSON *doc, *sent;
		char *out;
		if (!served(cases[i], &out, &doc, &sent))
			continue;
		CHECK_INT(cJSON_GetArraySize(sent), cJSON_GetArraySize(doc));
		release(out, doc, sent);
	}
}

static void test_escaped_member_names_fall_back_to_the_tree(void)
{
	/* "\u0069d" is "id": the bytes cannot be compared, the tree can */
	const char *stored = "{\"\\u0069d\":\"old\",\"created\":1,\"k\":\"v\"}";
	cJSON *doc, *sent;
	char *out;
	if (!served(stored, &out, &doc, &sent))
		return;
	CHECK(strstr(out, "old") == NULL);
	CHECK_STR(sg_json_str(sent, "k"), "v");
	release(out, doc, sent);
}

static void test_duplicate_ids_leave_only_the_new_one(void)
{
	const char *stored = "{\"id\":\"a\",\"created\":1,\"k\":1,\"id\":\"b\",\"created\":2}";
	cJSON *doc, *sent;
	char *out;
	if (!served(stored, &out, &doc, &sent))
		return;
	int ids = 0, createds = 0;
	for (const cJSON *m = sent->child; m; m = m->next) {
		ids += strcmp(m->string, "id") == 0;
		createds += strcmp(m->string, "created") == 0;
	}
	CHECK_INT(ids, 1);
	CHECK_INT(createds, 1);
	CHECK(cJSON_GetObjectItemCaseSensitive(sent, "k") != NULL);
	release(out, doc, sent);
}

static void test_a_byte_order_mark_is_not_spliced_around(void)
{
	/* cJSON skips a UTF-8 BOM; the splice must not insert a second id
	 * after a brace it did not find where it looked */
	const char *stored = "\xEF\xBB\xBF{\"id\":\"old\",\"created\":7,\"k\":1}";
	cJSON *doc, *sent;
	char *out;
	if (!served(stored, &out, &doc, &sent))
		return;
	CHECK(out[0] == '{');
	CHECK(strstr(out, "old") == NULL);
	CHECK_INT(cJSON_GetArraySize(sent), 3);
	release(out, doc, sent);
}

static void test_non_objects_are_refused(void)
{
	static const char *const cases[] = { "[]", "\"s\"", "12", "{", "{\"a\":1} x", "" };
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cJSON *doc = (cJSON *)1;
		CHECK(cache_render_hit(cases[i], strlen(cases[i]), &doc) == NULL);
		CHECK(doc == NULL);
	}
}

static void test_member_span(void)
{
	const char *s = "{\"a\":{\"id\":1},\"s\":\"}\\\"id\",\"id\" : [1,{\"x\":\"]\"}] ,\"z\":true}";
	size_t b = 0, e = 0;
	CHECK_INT(sg_json_member_span(s, strlen(s), "id", &b, &e), 1);
	CHECK_INT(e - b, strlen("[1,{\"x\":\"]\"}]"));
	CHECK(strncmp(s + b, "[1,{\"x\":\"]\"}]", e - b) == 0);
	CHECK_INT(sg_json_member_span(s, strlen(s), "z", &b, &e), 1);
	CHECK(strncmp(s + b, "true", e - b) == 0 && e - b == 4);
	CHECK_INT(sg_json_member_span(s, strlen(s), "x", &b, &e), 0);
	CHECK_INT(sg_json_member_span(s, strlen(s), "i", &b, &e), 0);
	const char *esc = "{\"a\\n\":1,\"id\":2}";
	CHECK_INT(sg_json_member_span(esc, strlen(esc), "id", &b, &e), -1);
	CHECK_INT(sg_json_member_span("[1]", 3, "id", &b, &e), -1); /* not an object */
}

static void test_question_key_ignores_case_and_spacing_only(void)
{
	char a[17], b[17], c[17], d[17];
	const char *qa = "How do I  renew\tmy passport?", *qb = "  how do i renew my PASSPORT?\n";
	const char *qc = "How do I renew my passport";
	cache_question_key(qa, strlen(qa), a);
	cache_question_key(qb, strlen(qb), b);
	cache_question_key(qc, strlen(qc), c);
	cache_question_key("", 0, d);
	CHECK_STR(a, b);
	CHECK(strcmp(a, c) != 0); /* punctuation counts */
	CHECK_INT(strlen(a), 16);
	CHECK(strspn(a, "0123456789abcdef") == 16);
	CHECK(strcmp(d, a) != 0);
}

/* The tree of a rendered answer without its fresh id and created, as
 * compact JSON (malloc'd). */
static char *without_fresh(const char *rendered)
{
	cJSON *t = NULL;
	CHECK_INT(sg_json_parse(rendered, strlen(rendered), &t, NULL), SG_OK);
	cJSON_DeleteItemFromObjectCaseSensitive(t, "id");
	cJSON_DeleteItemFromObjectCaseSensitive(t, "created");
	char *out = cJSON_PrintUnformatted(t);
	cJSON_Delete(t);
	return out;
}

static void test_meta_says_what_a_render_and_the_usage_readers_would(void)
{
	static const char *const cases[] = {
		"{\"id\":\"x\",\"created\":1,\"choices\":[],\"usage\":{\"prompt_tokens\":7,"
		"\"completion_tokens\":5,\"total_tokens\":12}}",
		"{\"choices\":[{\"message\":{\"content\":\"no usage\"}}]}",
		"{\"usage\":{\"prompt_tokens\":-3,\"completion_tokens\":1e300,\"total_tokens\":\"9\"}}",
		"{\"usage\":{\"prompt_tokens\":1.9,\"completion_tokens\":0,\"total_tokens\":1e15}}",
		"{\"usage\":null,\"created\":5}",
		"{\"id\":\"a\",\"k\":1,\"id\":\"b\"}",           /* duplicate: from the tree */
		"{\"\\u0069d\":\"x\",\"usage\":{\"total_tokens\":3}}", /* escaped name */
		"\xef\xbb\xbf{\"id\":\"bom\"}",
		"[]", "{", "{\"a\":1} x", "",
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *stored = cases[i];
		struct hot_meta m;
		cache_answer_meta(stored, strlen(stored), &m);
		cJSON *doc = NULL;
		char *rendered = cache_render_hit(stored, strlen(stored), &doc);
		CHECK(m.known == (rendered != NULL));
		if (!rendered) {
			CHECK(!m.spliceable);
			continue;
		}
		CHECK_INT(m.tokens, cache_answer_tokens(doc));
		long long p = -1, c = -1;
		cache_api_usage(doc, &p, &c);
		CHECK_INT(m.prompt, p);
		CHECK_INT(m.completion, c);
		char *spliced = cache_render_hit_spliced(stored, strlen(stored));
		if (m.spliceable) {
			/* the same bytes as the render but for the two fresh values */
			CHECK(spliced != NULL);
			cJSON *sent = NULL;
			CHECK_INT(sg_json_parse(spliced, strlen(spliced), &sent, NULL), SG_OK);
			check_fresh(sent, sent);
			cJSON_Delete(sent);
			char *a = without_fresh(rendered), *b = without_fresh(spliced);
			CHECK_STR(a, b);
			free(a);
			free(b);
		}
		free(spliced);
		free(rendered);
		cJSON_Delete(doc);
	}
	/* a plain answer goes in place; a duplicate and an escaped name do not */
	struct hot_meta m;
	cache_answer_meta(cases[0], strlen(cases[0]), &m);
	CHECK(m.known && m.spliceable);
	CHECK_INT(m.tokens, 12);
	CHECK_INT(m.prompt, 7);
	CHECK_INT(m.completion, 5);
	cache_answer_meta(cases[5], strlen(cases[5]), &m);
	CHECK(m.known && !m.spliceable);
	cache_answer_meta(cases[6], strlen(cases[6]), &m);
	CHECK(m.known && !m.spliceable);
	CHECK_INT(m.tokens, 3);
}

int main(void)
{
	RUN(test_meta_says_what_a_render_and_the_usage_readers_would);
	RUN(test_question_key_ignores_case_and_spacing_only);
	RUN(test_id_and_created_are_replaced_in_place);
	RUN(test_created_before_id_and_whitespace);
	RUN(test_absent_members_are_added);
	RUN(test_escaped_member_names_fall_back_to_the_tree);
	RUN(test_duplicate_ids_leave_only_the_new_one);
	RUN(test_a_byte_order_mark_is_not_spliced_around);
	RUN(test_non_objects_are_refused);
	RUN(test_member_span);
	return TEST_DONE();
}
