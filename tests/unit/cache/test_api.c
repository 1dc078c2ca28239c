/* Unit tests for the cache API's pure parts: request validation, limits,
 * sidecar scopes, usage, the entry and stats JSON, and event parsing. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/cache/api.h"
#include "semgate/core/json.h"
#include "semgate/cache/scope.h"
#include "semgate/store/ops.h"
#include "sg_test.h"

/* The request borrows from the parsed body: keep the last one alive. */
static cJSON *g_keep;

static enum sg_err parse(enum cache_api_op op, const char *json, struct cache_api_req *rq,
			 struct sg_error *e)
{
	cJSON *doc = NULL;
	enum sg_err rc = sg_json_parse(json, strlen(json), &doc, e);
	if (rc == SG_OK)
		rc = cache_api_parse(op, doc, rq, e);
	else
		memset(rq, 0, sizeof(*rq));
	cJSON_Delete(g_keep);
	g_keep = doc;
	return rc;
}

static void test_names_and_ids(void)
{
	CHECK(cache_api_name_valid("team-a.v1:x_y"));
	CHECK(!cache_api_name_valid(""));
	CHECK(!cache_api_name_valid("a b"));
	CHECK(!cache_api_name_valid("a/b"));
	CHECK(!cache_api_name_valid("\xc3\xa9"));
	char n[200];
	memset(n, 'n', sizeof(n));
	n[128] = '\0';
	CHECK(cache_api_name_valid(n));
	n[128] = 'n';
	n[129] = '\0';
	CHECK(!cache_api_name_valid(n));
	CHECK(cache_api_id_valid("0123456789abcdef0123456789abcdef"));
	n[64] = '\0';
	CHECK(cache_api_id_valid(n));
	n[64] = 'n';
	n[65] = '\0';
	CHECK(!cache_api_id_valid(n));
	CHECK(!cache_api_id_valid("a*b"));
	CHECK(!cache_api_id_valid(NULL));
}

static void test_store_request_with_every_field(void)
{
	struct cache_api_req rq;
	struct sg_error e = { 0 };
	CHECK_INT(parse(CACHE_API_STORE,
		"{\"query\":\"q?\",\"answer\":\"a.\",\"namespace\":\"ns\",\"scope\":\"user 1\","
		"\"ttl\":600,\"tags\":[\"x\",\"y\",\"x\"],\"metadata\":{\"b\":1,\"a\":[true,null]},"
		"\"vector\":[3,4]}", &rq, &e), SG_OK);
	CHECK_STR(rq.query, "q?");
	CHECK_INT(rq.query_len, 2);
	CHECK_STR(rq.answer, "a.");
	CHECK_STR(rq.ns, "ns");
	CHECK_STR(rq.scope, "user 1");
	CHECK_INT(rq.ttl, 600);
	CHECK_INT(rq.ntags, 2);
	CHECK_STR(rq.tags[0], "x");
	CHECK_STR(rq.tags[1], "y");
	CHECK_STR(rq.metadata, "{\"b\":1,\"a\":[true,null]}");
	CHECK_INT(rq.dim, 2);
	CHECK_NEAR(rq.vector[0], 0.6, 1e-6);
	CHECK_NEAR(rq.vector[1], 0.8, 1e-6);
	cache_api_req_finish(&rq);
}

static void test_nulls_are_absent_and_defaults_apply(void)
{
	struct cache_api_req rq;
	struct sg_error e = { 0 };
	CHECK_INT(parse(CACHE_API_LOOKUP, "{\"query\":\"q\",\"namespace\":null,\"threshold\":null,"
			"\"vector\":null,\"scope\":null}", &rq, &e), SG_OK);
	CHECK_STR(rq.ns, "");
	CHECK_STR(rq.scope, "");
	CHECK(rq.threshold == 0);
	CHECK(rq.vector == NULL);
	cache_api_req_finish(&rq);
	CHECK_INT(parse(CACHE_API_LOOKUP, "{\"query\":\"q\",\"threshold\":1}", &rq, &e), SG_OK);
	CHECK_NEAR(rq.threshold, 1.0, 0);
	cache_api_req_finish(&rq);
}

static void expect_bad(enum cache_api_op op, const char *json, const char *needle)
{
	struct cache_api_req rq;
	struct sg_error e = { 0 };
	enum sg_err rc = parse(op, json, &rq, &e);
	CHECK_INT(rc, SG_ERR_BAD_REQUEST);
	if (rc != SG_ERR_BAD_REQUEST || !strstr(e.msg, needle))
		printf("# for %s: \"%s\" lacks \"%s\"\n", json, e.msg, needle);
	CHECK(strstr(e.msg, needle) != NULL);
	CHECK(rq.metadata == NULL && rq.vector == NULL);
	cache_api_req_finish(&rq);
}

static void test_bad_requests_name_the_field(void)
{
	expect_bad(CACHE_API_STORE, "[]", "JSON object");
	expect_bad(CACHE_API_STORE, "{\"answer\":\"a\"}", "'query' is required");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\"}", "'answer' is required");
	expect_bad(CACHE_API_STORE, "{\"query\":\" \\n\",\"answer\":\"a\"}", "'query'");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\",\"answer\":1}", "'answer'");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\",\"answer\":\"a\",\"ttl\":0}", "'ttl'");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\",\"answer\":\"a\",\"ttl\":31536001}", "'ttl'");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\",\"answer\":\"a\",\"ttl\":2.5}", "'ttl'");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\",\"answer\":\"a\",\"tags\":[\"a b\"]}",
		   "'tags[0]'");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\",\"answer\":\"a\",\"metadata\":[]}",
		   "'metadata'");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\",\"answer\":\"a\",\"vector\":[1,\"x\"]}",
		   "'vector[1]'");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\",\"answer\":\"a\",\"vector\":[0,0]}",
		   "all zeros");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\",\"answer\":\"a\",\"vector\":[1e300]}",
		   "'vector[0]'");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\",\"answer\":\"a\",\"extra\":1}",
		   "unknown field 'extra'");
	expect_bad(CACHE_API_STORE, "{\"query\":\"q\",\"query\":\"r\",\"answer\":\"a\"}",
		   "duplicate field 'query'");
	expect_bad(CACHE_API_LOOKUP, "{\"query\":\"q\",\"threshold\":0}", "'threshold'");
	expect_bad(CACHE_API_LOOKUP, "{\"query\":\"q\",\"threshold\":1.0001}", "'threshold'");
	expect_bad(CACHE_API_LOOKUP, "{\"query\":\"q\",\"ttl\":5}", "unknown field 'ttl'");
	expect_bad(CACHE_API_LOOKUP, "{\"query\":\"q\",\"namespace\":\"\"}", "'namespace'");
	expect_bad(CACHE_API_INVALIDATE, "{}", "give 'namespace', 'tag' or both");
	expect_bad(CACHE_API_INVALIDATE, "{\"tag\":null}", "give");
	expect_bad(CACHE_API_INVALIDATE, "{\"tag\":\"x\",\"query\":\"q\"}", "unknown field");
}

static void test_bounds_are_inclusive(void)
{
	struct cache_api_req rq;
	struct sg_error e = { 0 };
	char *big = malloc(CACHE_API_QUERY_MAX + 64);
	memcpy(big, "{\"query\":\"", 10);
	memset(big + 10, 'q', CACHE_API_QUERY_MAX);
	strcpy(big + 10 + CACHE_API_QUERY_MAX, "\"}");
	CHECK_INT(parse(CACHE_API_LOOKUP, big, &rq, &e), SG_OK);
	cache_api_req_finish(&rq);
	big[10 + CACHE_API_QUERY_MAX] = 'q';
	strcpy(big + 11 + CACHE_API_QUERY_MAX, "\"}");
	CHECK_INT(parse(CACHE_API_LOOKUP, big, &rq, &e), SG_ERR_BAD_REQUEST);
	free(big);

	struct sg_buf b;
	sg_buf_init(&b, 0);
	sg_buf_puts(&b, "{\"query\":\"q\",\"answer\":\"a\",\"ttl\":31536000,\"tags\":[");
	for (int i = 0; i < CACHE_API_TAGS_MAX; i++)
		sg_buf_printf(&b, "%s\"t%d\"", i ? "," : "", i);
	sg_buf_puts(&b, "],\"vector\":[");
	for (int i = 0; i < CACHE_API_DIM_MAX; i++)
		sg_buf_printf(&b, "%s0.5", i ? "," : "");
	sg_buf_puts(&b, "]}");
	CHECK_INT(parse(CACHE_API_STORE, b.data, &rq, &e), SG_OK);
	CHECK_INT(rq.ntags, CACHE_API_TAGS_MAX);
	CHECK_INT(rq.dim, CACHE_API_DIM_MAX);
	cache_api_req_finish(&rq);
	sg_buf_finish(&b);
}

static void test_limit(void)
{
	long l = 0;
	struct sg_error e = { 0 };
	CHECK_INT(cache_api_parse_limit(NULL, &l, &e), SG_OK);
	CHECK_INT(l, 10);
	CHECK_INT(cache_api_parse_limit("", &l, &e), SG_OK);
	CHECK_INT(l, 10);
	CHECK_INT(cache_api_parse_limit("limit=1", &l, &e), SG_OK);
	CHECK_INT(l, 1);
	CHECK_INT(cache_api_parse_limit("limit=100", &l, &e), SG_OK);
	CHECK_INT(l, 100);
	const char *bad[] = { "limit=0", "limit=101", "limit=", "limit=1x", "limit=-1",
			      "limit=99999999999999999999", "limit=1&limit=2", "x=1", "limit" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK_INT(cache_api_parse_limit(bad[i], &l, &e), SG_ERR_BAD_REQUEST);
}

static void test_sidecar_scopes_separate_tenant_namespace_and_scope(void)
{
	struct scope_info a, b;
	CHECK_INT(cache_api_scope("t", "ns", "s", "q", 1, &a, NULL), SG_OK);
	CHECK_INT(cache_api_scope("t", "ns", "s", "q", 1, &b, NULL), SG_OK);
	CHECK_STR(a.scope, b.scope);
	CHECK_STR(a.exact, b.exact);
	CHECK_STR(a.query, "q");
	scope_info_finish(&b);
	const char *variants[][3] = {
		{ "u", "ns", "s" }, { "t", "nt", "s" }, { "t", "ns", "" }, { "t", "", "s" },
		/* length-prefixed: moving bytes between fields changes the hash */
		{ "tn", "s", "s" }, { "t", "ns", "s " },
	};
	for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
		CHECK_INT(cache_api_scope(variants[i][0], variants[i][1], variants[i][2], "q", 1,
					  &b, NULL), SG_OK);
		CHECK(strcmp(a.scope, b.scope) != 0);
		CHECK(strcmp(a.exact, b.exact) != 0);
		scope_info_finish(&b);
	}
	CHECK_INT(cache_api_scope("t", "ns", "s", "q2", 2, &b, NULL), SG_OK);
	CHECK_STR(a.scope, b.scope);
	CHECK(strcmp(a.exact, b.exact) != 0);
	scope_info_finish(&b);
	scope_info_finish(&a);
}

static void test_sidecar_scope_differs_from_the_chat_scope(void)
{
	cJSON *req = NULL;
	const char *json = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}";
	struct scope_info chat, side;
	CHECK_INT(sg_json_parse(json, strlen(json), &req, NULL), SG_OK);
	CHECK_INT(scope_compute("t", "", req, &chat, NULL), SG_OK);
	CHECK_INT(cache_api_scope("t", "", "", "q", 1, &side, NULL), SG_OK);
	CHECK(strcmp(chat.scope, side.scope) != 0);
	CHECK(strcmp(chat.exact, side.exact) != 0);
	scope_info_finish(&chat);
	scope_info_finish(&side);
	cJSON_Delete(req);
}

static void test_usage(void)
{
	const char *json = "{\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":30,"
			   "\"total_tokens\":42}}";
	cJSON *doc = NULL;
	long long p = -1, c = -1;
	CHECK_INT(sg_json_parse(json, strlen(json), &doc, NULL), SG_OK);
	cache_api_usage(doc, &p, &c);
	CHECK_INT(p, 12);
	CHECK_INT(c, 30);
	cJSON_Delete(doc);
	json = "{\"usage\":{\"prompt_tokens\":-4,\"completion_tokens\":\"9\"}}";
	CHECK_INT(sg_json_parse(json, strlen(json), &doc, NULL), SG_OK);
	cache_api_usage(doc, &p, &c);
	CHECK_INT(p, 0);
	CHECK_INT(c, 0);
	cJSON_Delete(doc);
	cache_api_usage(NULL, &p, &c);
	CHECK_INT(p + c, 0);
}

static double num(const cJSON *o, const char *k)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(it) ? it->valuedouble : NAN;
}

static void test_stats_arithmetic(void)
{
	struct store_stats st = {
		.lookups = 8, .hits_exact = 3, .hits_semantic = 2, .misses = 3,
		.tokens_prompt = 1500, .tokens_completion = 500,
		.entries = 4, .indexed = 3, .bytes = 9000, .vector_bytes = 4608,
	};
	cJSON *o = cache_api_stats_json(&st, 0.5, 2.0);
	CHECK(o != NULL);
	CHECK_NEAR(num(o, "hits"), 5, 0);
	CHECK_NEAR(num(o, "hit_rate"), 0.625, 1e-12);
	CHECK_NEAR(num(o, "tokens_saved"), 2000, 0);
	CHECK_NEAR(num(o, "estimated_cost_saved"), 1.5 * 0.5 + 0.5 * 2.0, 1e-12);
	CHECK_NEAR(num(o, "entries"), 4, 0);
	CHECK_NEAR(num(o, "indexed_entries"), 3, 0);
	CHECK_NEAR(num(o, "bytes"), 9000, 0);
	CHECK_NEAR(num(o, "misses"), 3, 0);
	cJSON_Delete(o);
	struct store_stats zero = { 0 };
	o = cache_api_stats_json(&zero, 1, 1);
	CHECK_NEAR(num(o, "hit_rate"), 0, 0);
	CHECK_NEAR(num(o, "estimated_cost_saved"), 0, 0);
	cJSON_Delete(o);
	st.lookups = 3;
	st.hits_exact = 1;
	st.hits_semantic = 0;
	o = cache_api_stats_json(&st, 0, 0);
	CHECK_NEAR(num(o, "hit_rate"), 0.333333, 1e-12);
	cJSON_Delete(o);
}

static void test_entry_json(void)
{
	struct store_entry_view v = {
		.id = "abc", .query = "q", .answer = "a", .metadata = "{\"k\":[1,2]}",
		.metadata_len = 11, .ns = "n", .scope = "s", .kind = "text", .tags = "x,y",
		.model = "external", .dim = 3, .created = 100, .hits = 2, .ttl_s = 50,
	};
	cJSON *o = cache_api_entry_json(&v);
	char *s = sg_json_render(o);
	CHECK_STR(s, "{\"id\":\"abc\",\"kind\":\"text\",\"query\":\"q\",\"answer\":\"a\","
		  "\"namespace\":\"n\",\"scope\":\"s\",\"tags\":[\"x\",\"y\"],"
		  "\"metadata\":{\"k\":[1,2]},\"created\":100,\"hits\":2,\"ttl_seconds\":50,"
		  "\"dim\":3,\"model\":\"external\"}");
	free(s);
	cJSON_Delete(o);
	v.metadata = NULL;
	v.tags = "";
	o = cache_api_entry_json(&v);
	CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "metadata")));
	CHECK_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "tags")), 0);
	cJSON_Delete(o);
}

static void test_event_parsing(void)
{
	struct store_event ev;
	const char *ok = "{\"event\":\"add\",\"id\":\"abc\",\"tenant\":\"t\",\"origin\":\"o\","
			 "\"scope\":\"s\",\"model\":\"m\",\"dim\":3}";
	CHECK(store_event_parse(ok, strlen(ok), &ev));
	CHECK_STR(ev.type, "add");
	CHECK_STR(ev.id, "abc");
	CHECK_STR(ev.tenant, "t");
	CHECK_STR(ev.origin, "o");
	const char *del = "{\"event\":\"flush\",\"id\":\"x\",\"tenant\":\"t\"}";
	CHECK(store_event_parse(del, strlen(del), &ev));
	CHECK_STR(ev.type, "flush");
	CHECK_STR(ev.origin, "");
	const char *bad[] = {
		"", "{", "[]", "{\"event\":\"add\",\"tenant\":\"t\"}",
		"{\"event\":\"boom\",\"id\":\"x\",\"tenant\":\"t\"}",
		"{\"event\":\"add\",\"id\":\"\",\"tenant\":\"t\"}",
		"{\"event\":\"add\",\"id\":5,\"tenant\":\"t\"}",
		"{\"event\":\"add\",\"id\":\"x\",\"tenant\":\"t\"} trailing",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(!store_event_parse(bad[i], strlen(bad[i]), &ev));
		CHECK_STR(ev.id, "");
	}
	char longid[200] = "{\"event\":\"add\",\"tenant\":\"t\",\"id\":\"";
	memset(longid + strlen(longid), 'a', 70);
	strcpy(longid + strlen(longid) - 0, "\"}");
	CHECK(!store_event_parse(longid, strlen(longid), &ev));
	CHECK_INT(strlen(store_event_origin()), 32);
}

int main(void)
{
	RUN(test_names_and_ids);
	RUN(test_store_request_with_every_field);
	RUN(test_nulls_are_absent_and_defaults_apply);
	RUN(test_bad_requests_name_the_field);
	RUN(test_bounds_are_inclusive);
	RUN(test_limit);
	RUN(test_sidecar_scopes_separate_tenant_namespace_and_scope);
	RUN(test_sidecar_scope_differs_from_the_chat_scope);
	RUN(test_usage);
	RUN(test_stats_arithmetic);
	RUN(test_entry_json);
	RUN(test_event_parsing);
	cJSON_Delete(g_keep);
	return TEST_DONE();
}
