/* Fuzz the sidecar cache API request parsing (cache/api.h): the JSON body of
 * lookup / store / invalidate / feedback (the first input byte picks the
 * operation, the rest is the body), the query strings of /v1/cache/top and
 * /v1/cache/calibration, and the sidecar scope.
 * Invariants: an accepted request holds only what the API promises (a
 * non-blank query within its cap, names matching their pattern, distinct
 * tags, a threshold in (0, 1], a TTL in range, metadata that is a compact
 * strict-JSON object within its cap, a unit-length vector); a refusal has a
 * message; the sidecar scope is deterministic, differs between tenants and
 * keeps an exact copy of the query. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "semgate/cache/api.h"
#include "semgate/core/json.h"
#include "fuzz.h"

static bool blank(const char *s)
{
	for (; *s; s++)
		if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r' && *s != '\f' && *s != '\v')
			return false;
	return true;
}

static void check_req(enum cache_api_op op, const struct cache_api_req *r)
{
	if (op != CACHE_API_INVALIDATE) {
		FUZZ_CHECK(r->query && r->query_len == strlen(r->query));
		FUZZ_CHECK(r->query_len >= 1 && r->query_len <= CACHE_API_QUERY_MAX);
		FUZZ_CHECK(!blank(r->query));
	} else {
		FUZZ_CHECK(r->has_ns || r->tag);
	}
	if (op == CACHE_API_STORE)
		FUZZ_CHECK(r->answer && r->answer_len == strlen(r->answer) && !blank(r->answer));
	if (op == CACHE_API_FEEDBACK)
		FUZZ_CHECK(r->id && cache_api_id_valid(r->id) && r->has_verdict);
	else
		FUZZ_CHECK(!r->id && !r->has_verdict);
	FUZZ_CHECK(r->ns && (r->ns[0] == '\0' || cache_api_name_valid(r->ns)));
	FUZZ_CHECK(!r->has_ns || cache_api_name_valid(r->ns));
	FUZZ_CHECK(!r->tag || cache_api_name_valid(r->tag));
	FUZZ_CHECK(r->scope && strlen(r->scope) <= CACHE_API_SCOPE_MAX);
	FUZZ_CHECK(r->threshold == 0 || (r->threshold > 0 && r->threshold <= 1));
	FUZZ_CHECK(r->ttl == 0 || (r->ttl >= 1 && r->ttl <= CACHE_API_TTL_MAX));
	FUZZ_CHECK(r->ntags <= CACHE_API_TAGS_MAX);
	for (size_t i = 0; i < r->ntags; i++) {
		FUZZ_CHECK(cache_api_name_valid(r->tags[i]));
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(r->tags[i], r->tags[j]) != 0);
	}
	if (r->metadata) {
		FUZZ_CHECK(r->metadata_len == strlen(r->metadata));
		FUZZ_CHECK(r->metadata_len <= CACHE_API_METADATA_MAX);
		cJSON *m = NULL;
		FUZZ_CHECK(sg_json_parse(r->metadata, r->metadata_len, &m, NULL) == SG_OK);
		FUZZ_CHECK(cJSON_IsObject(m));
		cJSON_Delete(m);
	}
	if (r->vector) {
		FUZZ_CHECK(r->dim >= 1 && r->dim <= CACHE_API_DIM_MAX);
		double n2 = 0;
		for (int i = 0; i < r->dim; i++) {
			FUZZ_CHECK(isfinite(r->vector[i]));
			n2 += (double)r->vector[i] * r->vector[i];
		}
		FUZZ_CHECK(fabs(n2 - 1.0) < 1e-3);
	} else {
		FUZZ_CHECK(r->dim == 0);
	}
}

static void check_scope(const struct cache_api_req *r)
{
	struct scope_info a, b, c;
	FUZZ_CHECK(cache_api_scope("t1", r->ns, r->scope, r->query, r->query_len, &a, NULL) ==
		   SG_OK);
	FUZZ_CHECK(cache_api_scope("t1", r->ns, r->scope, r->query, r->query_len, &b, NULL) ==
		   SG_OK);
	FUZZ_CHECK(cache_api_scope("t2", r->ns, r->scope, r->query, r->query_len, &c, NULL) ==
		   SG_OK);
	FUZZ_CHECK(strcmp(a.scope, b.scope) == 0 && strcmp(a.exact, b.exact) == 0);
	FUZZ_CHECK(strcmp(a.scope, c.scope) != 0 && strcmp(a.exact, c.exact) != 0);
	FUZZ_CHECK(a.query && a.query_len == r->query_len &&
		   memcmp(a.query, r->query, r->query_len) == 0);
	scope_info_finish(&a);
	scope_info_finish(&b);
	scope_info_finish(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	/* the query string of /v1/cache/top, as civetweb hands it over */
	char *q = malloc(size);
	FUZZ_CHECK(q != NULL);
	memcpy(q, data + 1, size - 1);
	q[size - 1] = '\0';
	long limit = -1;
	struct sg_error le = { 0 };
	if (cache_api_parse_limit(q, &limit, &le) == SG_OK)
		FUZZ_CHECK(limit >= 1 && limit <= CACHE_API_TOP_MAX);
	else
		FUZZ_CHECK(le.msg[0] != '\0');
	/* and the one of /v1/cache/calibration */
	char ns[CACHE_API_NAME_MAX + 1];
	double target = -1;
	struct sg_error ce = { 0 };
	if (cache_api_parse_calibration(q, ns, &target, &ce) == SG_OK) {
		FUZZ_CHECK(target > 0 && target <= 1);
		FUZZ_CHECK(ns[0] == '\0' || cache_api_name_valid(ns));
	} else {
		FUZZ_CHECK(ce.msg[0] != '\0');
	}
	free(q);

	enum cache_api_op op = (enum cache_api_op)(data[0] % 4);
	cJSON *body = NULL;
	if (sg_json_parse((const char *)data + 1, size - 1, &body, NULL) != SG_OK)
		return 0;
	struct cache_api_req r;
	struct sg_error e = { 0 };
	enum sg_err rc = cache_api_parse(op, body, &r, &e);
	if (rc == SG_OK) {
		check_req(op, &r);
		if (op != CACHE_API_INVALIDATE)
			check_scope(&r);
	} else {
		FUZZ_CHECK(rc == SG_ERR_BAD_REQUEST && e.msg[0]);
		FUZZ_CHECK(r.metadata == NULL && r.vector == NULL);
	}
	cache_api_req_finish(&r);
	cache_api_req_finish(&r);
	cJSON_Delete(body);
	return 0;
}
