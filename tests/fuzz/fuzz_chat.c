/* Fuzz the chat request path before any I/O: sg_json_parse ->
 * scope_validate_chat -> scope_compute, and scope_canonical.
 * Invariants: a request that passes validation always gets a scope; the
 * scope and exact key do not depend on key order, whitespace or number
 * spelling (the request re-read from its canonical form hashes the same)
 * and validation agrees on both forms; the tenant always changes the
 * scope; a failure always carries a message. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "semgate/core/json.h"
#include "semgate/cache/scope.h"
#include "fuzz.h"

static char *canonical(const cJSON *v)
{
	struct sg_buf b;
	sg_buf_init(&b, 0);
	if (scope_canonical(v, &b) != SG_OK) {
		sg_buf_finish(&b);
		return NULL;
	}
	return sg_buf_steal(&b, NULL);
}

/* Canonical form writes a non-finite number (1e999) as null, so a tree
 * holding one is not the same request after the round trip. */
static bool all_finite(const cJSON *v)
{
	if (cJSON_IsNumber(v) && !isfinite(v->valuedouble))
		return false;
	for (const cJSON *c = v->child; c; c = c->next)
		if (!all_finite(c))
			return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sg_error e = { 0 };
	cJSON *req = NULL;
	if (sg_json_parse((const char *)data, size, &req, &e) != SG_OK)
		return 0;
	enum sg_err vrc = scope_validate_chat(req, &e);
	FUZZ_CHECK(vrc == SG_OK || (vrc == SG_ERR_BAD_REQUEST && e.msg[0]));

	char *canon = canonical(req);
	FUZZ_CHECK(canon != NULL);
	cJSON *req2 = NULL;
	FUZZ_CHECK(sg_json_parse(canon, strlen(canon), &req2, NULL) == SG_OK);
	bool same = all_finite(req);
	if (same)
		FUZZ_CHECK((scope_validate_chat(req2, NULL) == SG_OK) == (vrc == SG_OK));

	/* the route computes the scope only for valid requests, but nothing
	 * may crash on any tree */
	struct scope_info a, b, c;
	struct sg_error ea = { 0 };
	enum sg_err ra = scope_compute("tenant-a", "ns", req, &a, &ea);
	if (vrc == SG_OK) {
		FUZZ_CHECK(ra == SG_OK);
		FUZZ_CHECK(a.query != NULL);
		FUZZ_CHECK(strlen(a.scope) == 64 && strlen(a.exact) == 64);
		FUZZ_CHECK(!a.semantic_ok || a.cacheable);

		if (same) {
			FUZZ_CHECK(scope_compute("tenant-a", "ns", req2, &b, NULL) == SG_OK);
			FUZZ_CHECK(strcmp(a.scope, b.scope) == 0);
			FUZZ_CHECK(strcmp(a.exact, b.exact) == 0);
			FUZZ_CHECK(a.cacheable == b.cacheable &&
				   a.semantic_ok == b.semantic_ok && a.n_gt_1 == b.n_gt_1);
			FUZZ_CHECK(a.query_len == b.query_len &&
				   memcmp(a.query, b.query, a.query_len) == 0);
			scope_info_finish(&b);
		}

		/* one tenant's scope never equals another's */
		FUZZ_CHECK(scope_compute("tenant-b", "ns", req, &c, NULL) == SG_OK);
		FUZZ_CHECK(strcmp(a.scope, c.scope) != 0);
		FUZZ_CHECK(strcmp(a.exact, c.exact) != 0);
		scope_info_finish(&c);
	} else if (ra != SG_OK) {
		FUZZ_CHECK(ea.msg[0] != '\0');
	}
	scope_info_finish(&a);
	scope_info_finish(&a); /* idempotent */
	free(canon);
	cJSON_Delete(req2);
	cJSON_Delete(req);
	return 0;
}
