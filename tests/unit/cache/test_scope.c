/* Unit tests for scope.h: the chat validator, canonical JSON, and which
 * request changes make a scope or exact key differ. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/json.h"
#include "semgate/cache/scope.h"
#include "sg_test.h"

#define BASE_MSGS "[{\"role\":\"system\",\"content\":\"Be brief.\"}," \
	"{\"role\":\"user\",\"content\":\"What is the capital of France?\"}]"
/* Reproduced independently in Python: sha256 over (tag, u64 big-endian
 * length, bytes) fields V T N M P m Q, then V S C — see scope.c. */
#define SCOPE_PIN "9e849ea16ee7decc39cdf57945264106abddebd6d6399faf1e38c7eb72b9619a"
#define EXACT_PIN "59ddffd882042cb7fb8474b4ecf110b9564e5c98983ad08438b524d004adf5c5"
#define BASE "{\"model\":\"gpt-x\",\"messages\":" BASE_MSGS "}"

static cJSON *parse(const char *s)
{
	cJSON *j = NULL;
	struct sg_error e = { 0 };
	if (sg_json_parse(s, strlen(s), &j, &e) != SG_OK) {
		printf("# parse failed: %s: %s\n", e.msg, s);
		return NULL;
	}
	return j;
}

/* Compute the scope of a JSON text; a parse or compute failure marks the
 * current test failed and leaves info zeroed. */
static void compute_ns(const char *tenant, const char *ns, const char *json,
		       struct scope_info *info)
{
	struct sg_error e = { 0 };
	memset(info, 0, sizeof(*info));
	cJSON *j = parse(json);
	CHECK(j != NULL);
	if (!j)
		return;
	enum sg_err rc = scope_compute(tenant, ns, j, info, &e);
	if (rc != SG_OK)
		printf("# scope_compute: %s\n", e.msg);
	CHECK_INT(rc, SG_OK);
	cJSON_Delete(j);
}

static void compute(const char *json, struct scope_info *info)
{
	compute_ns("t1", NULL, json, info);
}

static char *canon(const char *json)
{
	cJSON *j = parse(json);
	if (!j)
		return NULL;
	struct sg_buf b;
	sg_buf_init(&b, 0);
	enum sg_err rc = scope_canonical(j, &b);
	cJSON_Delete(j);
	if (rc != SG_OK) {
		sg_buf_finish(&b);
		return NULL;
	}
	return sg_buf_steal(&b, NULL);
}

static void check_canon(const char *json, const char *want)
{
	char *got = canon(json);
	CHECK_STR(got, want);
	free(got);
}

static void validate_fails(const char *json, const char *msg_part)
{
	struct sg_error e = { 0 };
	cJSON *j = parse(json);
	CHECK(j != NULL);
	if (!j)
		return;
	CHECK_INT(scope_validate_chat(j, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(e.code, SG_ERR_BAD_REQUEST);
	if (!strstr(e.msg, msg_part))
		printf("# message \"%s\" lacks \"%s\" for %s\n", e.msg, msg_part, json);
	CHECK(strstr(e.msg, msg_part) != NULL);
	cJSON_Delete(j);
}

static void validate_ok(const char *json)
{
	struct sg_error e = { 0 };
	cJSON *j = parse(json);
	CHECK(j != NULL);
	if (!j)
		return;
	enum sg_err rc = scope_validate_chat(j, &e);
	if (rc != SG_OK)
		printf("# rejected: %s: %s\n", e.msg, json);
	CHECK_INT(rc, SG_OK);
	cJSON_Delete(j);
}

static void test_canonical_sorts_keys_and_drops_whitespace(void)
{
	check_canon("{ \"b\" : 1 , \"a\" : [ 3 , { \"z\":null, \"y\":true } ] }",
		    "{\"a\":[3,{\"y\":true,\"z\":null}],\"b\":1}");
	/* Byte order: uppercase before lowercase, "a" before "ab". */
	check_canon("{\"ab\":1,\"a\":2,\"B\":3}", "{\"B\":3,\"a\":2,\"ab\":1}");
	check_canon("[]", "[]");
	check_canon("{}", "{}");
	check_canon("false", "false");
}

static void test_canonical_numbers_one_form(void)
{
	check_canon("[1, 1.0, 1e0, 10E-1, -0, 0.0, -3]", "[1,1,1,1,0,0,-3]");
	check_canon("0.5", "0.5");
	check_canon("0.1", "0.10000000000000001");
	check_canon("9007199254740991", "9007199254740991");
	check_canon("9007199254740992", "9007199254740992");
	check_canon("1e300", "1.0000000000000001e+300");
	check_canon("-2.5e-3", "-0.0025000000000000001");
}

static void test_canonical_strings_escape_one_way(void)
{
	/* \/ and \u0041 are different spellings of the same string. */
	check_canon("\"a\\/b\\u0041\\t\\u0001\\\"\\\\\"",
		    "\"a/bA\\t\\u0001\\\"\\\\\"");
	/* Non-ASCII stays raw UTF-8 however the input spelled it. */
	check_canon("\"caf\\u00e9 \\ud83d\\ude00\"", "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"");
	check_canon("\"caf\xc3\xa9 \xf0\x9f\x98\x80\"", "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"");
	check_canon("{\"\xc3\xa9\":1,\"z\":2}", "{\"z\":2,\"\xc3\xa9\":1}");
}

static void test_canonical_duplicate_keys_sorted_stably(void)
{
	check_canon("{\"b\":2,\"a\":1,\"b\":1,\"a\":0}",
		    "{\"a\":1,\"a\":0,\"b\":2,\"b\":1}");
}

static void test_canonical_respects_buffer_cap(void)
{
	cJSON *j = parse("{\"a\":\"0123456789012345678901234567890123456789\"}");
	struct sg_buf b;
	sg_buf_init(&b, 16);
	CHECK_INT(scope_canonical(j, &b), SG_ERR_TOO_LARGE);
	sg_buf_finish(&b);
	cJSON_Delete(j);
}

static void test_scope_is_lowercase_hex(void)
{
	struct scope_info s;
	compute(BASE, &s);
	CHECK_INT(strlen(s.scope), 64);
	CHECK_INT(strlen(s.exact), 64);
	CHECK(strspn(s.scope, "0123456789abcdef") == 64);
	CHECK(strspn(s.exact, "0123456789abcdef") == 64);
	CHECK(strcmp(s.scope, s.exact) != 0);
	CHECK(s.cacheable);
	CHECK(s.semantic_ok);
	CHECK(!s.n_gt_1);
	CHECK_STR(s.query, "What is the capital of France?");
	CHECK_INT(s.query_len, strlen("What is the capital of France?"));
	scope_info_finish(&s);
}

static void test_scope_ignores_key_order_and_whitespace(void)
{
	struct scope_info a, b;
	compute(BASE, &a);
	compute("{\n  \"messages\" : [ { \"content\" : \"Be brief.\", \"role\" : "
		"\"system\" } ,\n {\"content\":\"What is the capital of France?\","
		"\"role\":\"user\"} ],\n\t\"model\" : \"gpt-x\" }", &b);
	CHECK_STR(a.scope, b.scope);
	CHECK_STR(a.exact, b.exact);
	scope_info_finish(&a);
	scope_info_finish(&b);
}

static void test_scope_integral_float_params_match(void)
{
	struct scope_info a, b;
	compute("{\"model\":\"m\",\"temperature\":1,\"messages\":[{\"role\":\"user\","
		"\"content\":\"hi\"}]}", &a);
	compute("{\"model\":\"m\",\"temperature\":1.0,\"messages\":[{\"role\":\"user\","
		"\"content\":\"hi\"}]}", &b);
	CHECK_STR(a.scope, b.scope);
	scope_info_finish(&a);
	scope_info_finish(&b);
}

static void test_scope_changes_with_output_shaping_fields(void)
{
	static const char *const variants[] = {
		"{\"model\":\"gpt-y\",\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"temperature\":0.5,\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"top_p\":0.9,\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"max_tokens\":10,\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"max_completion_tokens\":10,\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"stop\":\"\\n\",\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"stop\":[\"\\n\"],\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"seed\":42,\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"presence_penalty\":0.1,\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"frequency_penalty\":0.1,\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"response_format\":{\"type\":\"json_object\"},"
			"\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"tools\":[{\"type\":\"function\",\"function\":"
			"{\"name\":\"f\"}}],\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"tool_choice\":\"none\",\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"logit_bias\":{\"50256\":-100},\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"some_future_param\":1,\"messages\":" BASE_MSGS "}",
		/* system prompt */
		"{\"model\":\"gpt-x\",\"messages\":[{\"role\":\"system\",\"content\":"
			"\"Be verbose.\"},{\"role\":\"user\",\"content\":"
			"\"What is the capital of France?\"}]}",
		/* no system prompt */
		"{\"model\":\"gpt-x\",\"messages\":[{\"role\":\"user\",\"content\":"
			"\"What is the capital of France?\"}]}",
		/* an earlier turn */
		"{\"model\":\"gpt-x\",\"messages\":[{\"role\":\"system\",\"content\":"
			"\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi\"},"
			"{\"role\":\"assistant\",\"content\":\"Hello\"},{\"role\":\"user\","
			"\"content\":\"What is the capital of France?\"}]}",
		/* a message after the last user message (assistant prefill) */
		"{\"model\":\"gpt-x\",\"messages\":[{\"role\":\"system\",\"content\":"
			"\"Be brief.\"},{\"role\":\"user\",\"content\":"
			"\"What is the capital of France?\"},{\"role\":\"assistant\","
			"\"content\":\"The capital\"}]}",
		/* the last user message's name */
		"{\"model\":\"gpt-x\",\"messages\":[{\"role\":\"system\",\"content\":"
			"\"Be brief.\"},{\"role\":\"user\",\"name\":\"bob\",\"content\":"
			"\"What is the capital of France?\"}]}",
	};
	enum { NV = sizeof(variants) / sizeof(variants[0]) };
	char scopes[NV + 3][65];
	struct scope_info s;
	compute(BASE, &s);
	memcpy(scopes[0], s.scope, 65);
	scope_info_finish(&s);
	for (int i = 0; i < NV; i++) {
		compute(variants[i], &s);
		memcpy(scopes[i + 1], s.scope, 65);
		scope_info_finish(&s);
	}
	compute_ns("t2", NULL, BASE, &s);
	memcpy(scopes[NV + 1], s.scope, 65);
	scope_info_finish(&s);
	compute_ns("t1", "docs", BASE, &s);
	memcpy(scopes[NV + 2], s.scope, 65);
	scope_info_finish(&s);
	for (int i = 0; i < NV + 3; i++)
		for (int j = i + 1; j < NV + 3; j++)
			if (strcmp(scopes[i], scopes[j]) == 0) {
				printf("# scopes %d and %d collide\n", i, j);
				CHECK(false);
			}
}

static void test_scope_ignores_delivery_fields(void)
{
	static const char *const same[] = {
		"{\"model\":\"gpt-x\",\"stream\":true,\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"stream\":true,\"stream_options\":"
			"{\"include_usage\":true},\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"user\":\"u-123\",\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"n\":3,\"messages\":" BASE_MSGS "}",
		"{\"model\":\"gpt-x\",\"metadata\":{\"k\":\"v\"},\"store\":true,"
			"\"messages\":" BASE_MSGS "}",
	};
	struct scope_info base, s;
	compute(BASE, &base);
	for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
		compute(same[i], &s);
		CHECK_STR(s.scope, base.scope);
		CHECK_STR(s.exact, base.exact);
		scope_info_finish(&s);
	}
	scope_info_finish(&base);
}

static void test_scope_namespace_null_equals_empty(void)
{
	struct scope_info a, b;
	compute_ns("t1", NULL, BASE, &a);
	compute_ns("t1", "", BASE, &b);
	CHECK_STR(a.scope, b.scope);
	scope_info_finish(&a);
	scope_info_finish(&b);
}

static void test_null_parameter_scopes_like_an_absent_one(void)
{
	struct scope_info a, b, c;
	compute("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}", &a);
	compute("{\"model\":\"m\",\"temperature\":null,\"seed\":null,"
		"\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}", &b);
	compute("{\"model\":\"m\",\"temperature\":0,"
		"\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}", &c);
	CHECK_STR(a.scope, b.scope);
	CHECK_STR(a.exact, b.exact);
	CHECK(strcmp(a.scope, c.scope) != 0);
	scope_info_finish(&a);
	scope_info_finish(&b);
	scope_info_finish(&c);
}

static void test_scope_fields_are_length_prefixed(void)
{
	struct scope_info a, b;
	compute_ns("ab", "c", BASE, &a);
	compute_ns("a", "bc", BASE, &b);
	CHECK(strcmp(a.scope, b.scope) != 0);
	scope_info_finish(&a);
	scope_info_finish(&b);
}

static void test_last_user_message_changes_exact_not_scope(void)
{
	struct scope_info a, b, c;
	compute(BASE, &a);
	compute("{\"model\":\"gpt-x\",\"messages\":[{\"role\":\"system\",\"content\":"
		"\"Be brief.\"},{\"role\":\"user\",\"content\":"
		"\"What is the capital of Spain?\"}]}", &b);
	/* Same text as parts: same question, different request body. */
	compute("{\"model\":\"gpt-x\",\"messages\":[{\"role\":\"system\",\"content\":"
		"\"Be brief.\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\","
		"\"text\":\"What is the capital of France?\"}]}]}", &c);
	CHECK_STR(a.scope, b.scope);
	CHECK(strcmp(a.exact, b.exact) != 0);
	CHECK_STR(b.query, "What is the capital of Spain?");
	CHECK_STR(a.scope, c.scope);
	CHECK_STR(a.query, c.query);
	scope_info_finish(&a);
	scope_info_finish(&b);
	scope_info_finish(&c);
}

static void test_earlier_user_message_is_scope_not_query(void)
{
	struct scope_info a, b;
	compute("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
		"\"weather in Paris?\"},{\"role\":\"assistant\",\"content\":\"Sunny\"},"
		"{\"role\":\"user\",\"content\":\"and tomorrow?\"}]}", &a);
	compute("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
		"\"weather in Rome?\"},{\"role\":\"assistant\",\"content\":\"Sunny\"},"
		"{\"role\":\"user\",\"content\":\"and tomorrow?\"}]}", &b);
	CHECK(strcmp(a.scope, b.scope) != 0);
	CHECK(strcmp(a.exact, b.exact) != 0);
	CHECK_STR(a.query, "and tomorrow?");
	scope_info_finish(&a);
	scope_info_finish(&b);
}

static void test_array_content_text_is_joined(void)
{
	struct scope_info s;
	compute("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":["
		"{\"type\":\"text\",\"text\":\"first line\"},"
		"{\"type\":\"text\",\"text\":\"second line\"}]}]}", &s);
	CHECK_STR(s.query, "first line\nsecond line");
	CHECK(s.cacheable);
	CHECK(s.semantic_ok);
	scope_info_finish(&s);
}

static void test_image_part_disables_semantic(void)
{
	struct scope_info s;
	compute("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":["
		"{\"type\":\"text\",\"text\":\"what is this?\"},"
		"{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x/a.png\"}}]}]}",
		&s);
	CHECK_STR(s.query, "what is this?");
	CHECK(s.cacheable);
	CHECK(!s.semantic_ok);
	scope_info_finish(&s);
}

static void test_tools_disable_semantic(void)
{
	struct scope_info s;
	compute("{\"model\":\"m\",\"tools\":[{\"type\":\"function\",\"function\":"
		"{\"name\":\"f\"}}],\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
		&s);
	CHECK(s.cacheable);
	CHECK(!s.semantic_ok);
	scope_info_finish(&s);
	compute("{\"model\":\"m\",\"functions\":[{\"name\":\"f\"}],\"messages\":"
		"[{\"role\":\"user\",\"content\":\"hi\"}]}", &s);
	CHECK(!s.semantic_ok);
	scope_info_finish(&s);
}

static void test_blank_query_disables_semantic(void)
{
	struct scope_info s;
	compute("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\" \\n\"}]}",
		&s);
	CHECK(s.cacheable);
	CHECK(!s.semantic_ok);
	scope_info_finish(&s);
}

static void test_no_user_message_not_cacheable(void)
{
	struct scope_info s;
	compute("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}",
		&s);
	CHECK(!s.cacheable);
	CHECK(!s.semantic_ok);
	CHECK(s.query != NULL);
	CHECK_STR(s.query, "");
	scope_info_finish(&s);
}

static void test_n_gt_1_flag(void)
{
	struct scope_info s;
	compute("{\"model\":\"m\",\"n\":2,\"messages\":[{\"role\":\"user\","
		"\"content\":\"hi\"}]}", &s);
	CHECK(s.n_gt_1);
	scope_info_finish(&s);
	compute("{\"model\":\"m\",\"n\":1,\"messages\":[{\"role\":\"user\","
		"\"content\":\"hi\"}]}", &s);
	CHECK(!s.n_gt_1);
	scope_info_finish(&s);
}

static void test_scope_info_finish_null_and_twice(void)
{
	struct scope_info s;
	compute(BASE, &s);
	scope_info_finish(&s);
	scope_info_finish(&s);
	CHECK(s.query == NULL);
	scope_info_finish(NULL);
}

static void test_scope_compute_rejects_non_object(void)
{
	struct scope_info s;
	struct sg_error e = { 0 };
	cJSON *j = parse("[1]");
	CHECK_INT(scope_compute("t", NULL, j, &s, &e), SG_ERR_BAD_REQUEST);
	CHECK(s.query == NULL);
	scope_info_finish(&s);
	cJSON_Delete(j);
}

static void test_scope_is_stable_across_builds(void)
{
	/* Pinned: a change here orphans every cached entry, so it must be a
	 * deliberate format version bump, never an accident. */
	struct scope_info s;
	compute(BASE, &s);
	CHECK_STR(s.scope, SCOPE_PIN);
	CHECK_STR(s.exact, EXACT_PIN);
	scope_info_finish(&s);
}

static void test_validator_accepts_normal_requests(void)
{
	validate_ok(BASE);
	validate_ok("{\"model\":\"m\",\"stream\":true,\"n\":1,\"temperature\":0,"
		    "\"top_p\":1,\"max_tokens\":100,\"max_completion_tokens\":5,"
		    "\"stop\":[\"a\",\"b\"],\"seed\":-7,\"tools\":[],"
		    "\"stream_options\":{\"include_usage\":true},\"user\":null,"
		    "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
	validate_ok("{\"model\":\"m\",\"temperature\":2,\"stop\":\"x\",\"messages\":["
		    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
		    "{\"type\":\"image_url\",\"image_url\":{\"url\":\"u\"}}]},"
		    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{}]},"
		    "{\"role\":\"tool\",\"tool_call_id\":\"1\",\"content\":\"r\"}]}");
	validate_ok("{\"model\":\"m\",\"temperature\":null,\"messages\":["
		    "{\"role\":\"assistant\",\"tool_calls\":[{}]}]}");
}

static void test_validator_rejects_malformed_requests(void)
{
	validate_fails("[]", "JSON object");
	validate_fails("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
		       "'model' is required");
	validate_fails("{\"model\":\"\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
		       "'model' must be a non-empty string");
	validate_fails("{\"model\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
		       "'model' must be a non-empty string");
	validate_fails("{\"model\":\"m\"}", "'messages' is required");
	validate_fails("{\"model\":\"m\",\"messages\":{}}", "'messages' must be an array");
	validate_fails("{\"model\":\"m\",\"messages\":[]}", "'messages' must not be empty");
	validate_fails("{\"model\":\"m\",\"messages\":[\"hi\"]}",
		       "messages[0] must be an object");
	validate_fails("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
		       "{\"role\":\"user\",\"content\":\"b\"},{\"content\":\"c\"}]}",
		       "messages[2].role is required");
	validate_fails("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
		       "{\"role\":\"user\",\"content\":\"b\"},{\"role\":1,\"content\":\"c\"}]}",
		       "messages[2].role must be a string");
	validate_fails("{\"model\":\"m\",\"messages\":[{\"role\":\"\",\"content\":\"a\"}]}",
		       "messages[0].role must not be empty");
	validate_fails("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":42}]}",
		       "messages[0].content must be a string or an array");
	validate_fails("{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}",
		       "messages[0].content is required");
	validate_fails("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":null}]}",
		       "messages[0].content may be null only");
	validate_fails("{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"content\":null}]}",
		       "messages[0].content may be null only");
	validate_fails("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[1]}]}",
		       "messages[0].content[0] must be an object");
	validate_fails("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
		       "[{\"text\":\"a\"}]}]}", "messages[0].content[0].type");
	validate_fails("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
		       "[{\"type\":\"text\",\"text\":7}]}]}", "messages[0].content[0].text");
	/* A duplicate key cannot smuggle a bad value past a good one. */
	validate_fails("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\","
		       "\"content\":5}]}", "messages[0].content must be");
	validate_fails("{\"model\":\"m\",\"n\":1,\"n\":0,\"messages\":"
		       "[{\"role\":\"user\",\"content\":\"a\"}]}", "'n' must be an integer");

#define MSGS ",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}"
	validate_fails("{\"model\":\"m\",\"n\":0" MSGS, "'n' must be an integer between 1 and 128");
	validate_fails("{\"model\":\"m\",\"n\":129" MSGS, "'n' must be");
	validate_fails("{\"model\":\"m\",\"n\":1.5" MSGS, "'n' must be");
	validate_fails("{\"model\":\"m\",\"n\":\"2\"" MSGS, "'n' must be");
	validate_fails("{\"model\":\"m\",\"temperature\":3" MSGS,
		       "'temperature' must be a number between 0 and 2");
	validate_fails("{\"model\":\"m\",\"temperature\":-0.1" MSGS, "'temperature' must be");
	validate_fails("{\"model\":\"m\",\"temperature\":\"hot\"" MSGS, "'temperature' must be");
	validate_fails("{\"model\":\"m\",\"top_p\":1.5" MSGS, "'top_p' must be");
	validate_fails("{\"model\":\"m\",\"max_tokens\":0" MSGS, "'max_tokens' must be");
	validate_fails("{\"model\":\"m\",\"max_tokens\":2.5" MSGS, "'max_tokens' must be");
	validate_fails("{\"model\":\"m\",\"max_completion_tokens\":-1" MSGS,
		       "'max_completion_tokens' must be");
	validate_fails("{\"model\":\"m\",\"stream\":1" MSGS, "'stream' must be a boolean");
	validate_fails("{\"model\":\"m\",\"stop\":5" MSGS, "'stop' must be");
	validate_fails("{\"model\":\"m\",\"stop\":[\"a\",1]" MSGS, "'stop' must be");
	validate_fails("{\"model\":\"m\",\"seed\":1.5" MSGS, "'seed' must be");
	validate_fails("{\"model\":\"m\",\"seed\":1e30" MSGS, "'seed' must be");
	validate_fails("{\"model\":\"m\",\"tools\":{}" MSGS, "'tools' must be an array");
	validate_fails("{\"model\":\"m\",\"stream_options\":true" MSGS,
		       "'stream_options' must be an object");
#undef MSGS
}

static void test_validator_caps_message_count(void)
{
	struct sg_buf b;
	sg_buf_init(&b, 0);
	sg_buf_puts(&b, "{\"model\":\"m\",\"messages\":[");
	for (int i = 0; i < SG_SCOPE_MAX_MESSAGES + 1; i++)
		sg_buf_printf(&b, "%s{\"role\":\"user\",\"content\":\"x\"}", i ? "," : "");
	sg_buf_puts(&b, "]}");
	validate_fails(b.data, "at most 4096");
	sg_buf_finish(&b);
}

int main(void)
{
	RUN(test_canonical_sorts_keys_and_drops_whitespace);
	RUN(test_canonical_numbers_one_form);
	RUN(test_canonical_strings_escape_one_way);
	RUN(test_canonical_duplicate_keys_sorted_stably);
	RUN(test_canonical_respects_buffer_cap);
	RUN(test_scope_is_lowercase_hex);
	RUN(test_scope_ignores_key_order_and_whitespace);
	RUN(test_scope_integral_float_params_match);
	RUN(test_scope_changes_with_output_shaping_fields);
	RUN(test_scope_ignores_delivery_fields);
	RUN(test_scope_namespace_null_equals_empty);
	RUN(test_null_parameter_scopes_like_an_absent_one);
	RUN(test_scope_fields_are_length_prefixed);
	RUN(test_last_user_message_changes_exact_not_scope);
	RUN(test_earlier_user_message_is_scope_not_query);
	RUN(test_array_content_text_is_joined);
	RUN(test_image_part_disables_semantic);
	RUN(test_tools_disable_semantic);
	RUN(test_blank_query_disables_semantic);
	RUN(test_no_user_message_not_cacheable);
	RUN(test_n_gt_1_flag);
	RUN(test_scope_info_finish_null_and_twice);
	RUN(test_scope_compute_rejects_non_object);
	RUN(test_scope_is_stable_across_builds);
	RUN(test_validator_accepts_normal_requests);
	RUN(test_validator_rejects_malformed_requests);
	RUN(test_validator_caps_message_count);
	return TEST_DONE();
}
