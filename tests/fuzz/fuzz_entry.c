/* Fuzz the decoding of cache entries read back from Redis, as the exact
 * lookup and the index rebuild at start do it (src/store/codec.c), and feed
 * what decodes into a vector index the way cache_rebuild does.
 * The whole input is tried as an exact-key value "<id>\n<answer>"; then it
 * is split at its first two NUL bytes into an entry key, a "dim" field and
 * a vector blob (which may be of the wrong length).
 * Invariants: a decoded id is a valid id and the answer lies inside the
 * value; a decoded vector has exactly dim floats and dim in range; the
 * index accepts or refuses it cleanly and finds an accepted row again; an
 * answer served as a hit is valid JSON, the same document as the tree the
 * caller gets, with a fresh id. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "semgate/cache/cache.h"
#include "semgate/core/json.h"
#include "semgate/store/layout.h"
#include "semgate/vindex/vindex.h"
#include "../../src/store/codec.h"
#include "fuzz.h"

/* A member name twice in one object, or a number that overflowed to
 * infinity, at any depth: cJSON_Compare cannot tell such documents apart
 * reliably (inf - inf is NaN). */
static bool not_comparable(const cJSON *v)
{
	if (cJSON_IsNumber(v) && !isfinite(v->valuedouble))
		return true;
	for (const cJSON *a = v ? v->child : NULL; a; a = a->next) {
		if (cJSON_IsObject(v))
			for (const cJSON *b = a->next; b; b = b->next)
				if (a->string && b->string && strcmp(a->string, b->string) == 0)
					return true;
		if (not_comparable(a))
			return true;
	}
	return false;
}

static const char *field(const char **p, const char *end, size_t *len)
{
	const char *start = *p;
	const char *z = memchr(start, '\0', (size_t)(end - start));
	const char *stop = z ? z : end;
	*len = (size_t)(stop - start);
	*p = z ? z + 1 : end;
	return start;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data, *end = s + size;

	char id[STORE_ID_MAX + 1];
	const char *ans = NULL;
	size_t alen = 0;
	if (store_codec_exact(s, size, id, &ans, &alen)) {
		FUZZ_CHECK(store_codec_id_ok(id, strlen(id)));
		FUZZ_CHECK(ans > s && ans + alen == end);
		FUZZ_CHECK(ans[-1] == '\n' && (size_t)(ans - 1 - s) == strlen(id));
		/* serving it as a hit (cache_render_hit): the bytes sent and the
		 * tree handed back are the same document, with a fresh id */
		cJSON *doc = NULL, *sent = NULL;
		char *out = cache_render_hit(ans, alen, &doc);
		FUZZ_CHECK((out == NULL) == (doc == NULL));
		if (out) {
			FUZZ_CHECK(sg_json_parse(out, strlen(out), &sent, NULL) == SG_OK);
			FUZZ_CHECK(not_comparable(doc) || cJSON_Compare(sent, doc, true));
			const char *nid = sg_json_str(sent, "id");
			FUZZ_CHECK(nid && strncmp(nid, "chatcmpl-sg", 11) == 0);
			/* one id and one created, whatever was stored */
			int ids = 0, createds = 0;
			for (const cJSON *m = sent->child; m; m = m->next) {
				ids += strcmp(m->string, "id") == 0;
				createds += strcmp(m->string, "created") == 0;
			}
			FUZZ_CHECK(ids == 1 && createds == 1);
			FUZZ_CHECK(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(sent, "created")));
			cJSON_Delete(sent);
			cJSON_Delete(doc);
			free(out);
		}
	}

	const char *p = s;
	size_t klen, dlen, blen;
	const char *key = field(&p, end, &klen);
	const char *dim_str = field(&p, end, &dlen);
	const char *blob = p;
	blen = (size_t)(end - p);

	char tenant[128], eid[128];
	bool key_ok = store_codec_entry_key("sg:", key, klen, tenant, sizeof(tenant), eid,
					    sizeof(eid));
	if (key_ok) {
		FUZZ_CHECK(tenant[0] && strchr(tenant, ':') == NULL);
		FUZZ_CHECK(store_codec_id_ok(eid, strlen(eid)));
		/* "sg:e:{<bucket tag>}:<tenant>:<id>", the key store_key names */
		const char *tag = store_bucket_tag(store_bucket_of(tenant, eid));
		FUZZ_CHECK(3 + 2 + 1 + strlen(tag) + 2 + strlen(tenant) + 1 + strlen(eid) == klen);
		FUZZ_CHECK(memcmp(key + 6, tag, strlen(tag)) == 0);
	}

	float *vec = NULL;
	int dim = 0;
	if (!store_codec_vector(dim_str, dlen, blob, blen, &vec, &dim)) {
		FUZZ_CHECK(vec == NULL && dim == 0);
		return 0;
	}
	FUZZ_CHECK(dim >= 1 && dim <= STORE_DIM_MAX);
	FUZZ_CHECK(blen == sizeof(float) * (size_t)dim);
	FUZZ_CHECK(memcmp(vec, blob, blen) == 0);
	if (key_ok) {
		/* what cache_rebuild does with a decoded entry */
		struct vindex *vi = vindex_create();
		FUZZ_CHECK(vi != NULL);
		char part[VINDEX_KEY_MAX];
		snprintf(part, sizeof(part), "%s\x1f%s\x1f%s", tenant, "scope", "model");
		struct sg_error e = { 0 };
		enum sg_err rc = vindex_add(vi, part, dim, eid, vec, 0, &e);
		FUZZ_CHECK(rc == SG_OK || rc == SG_ERR_BAD_REQUEST);
		if (rc == SG_OK) {
			struct vindex_hit hit;
			FUZZ_CHECK(vindex_search(vi, part, dim, vec, 1, &hit, &e) == SG_OK);
			FUZZ_CHECK(hit.found && strcmp(hit.id, eid) == 0);
			FUZZ_CHECK(hit.similarity > 0.99f && hit.similarity <= 1.01f);
			FUZZ_CHECK(vindex_remove(vi, eid));
		}
		vindex_destroy(vi);
	}
	free(vec);
	return 0;
}
