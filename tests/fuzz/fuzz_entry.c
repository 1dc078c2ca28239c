/* Fuzz the decoding of cache entries read back from Redis, as the exact
 * lookup and the index rebuild at start do it (src/store_codec.c), and feed
 * what decodes into a vector index the way cache_rebuild does.
 * The whole input is tried as an exact-key value "<id>\n<answer>"; then it
 * is split at its first two NUL bytes into an entry key, a "dim" field and
 * a vector blob (which may be of the wrong length).
 * Invariants: a decoded id is a valid id and the answer lies inside the
 * value; a decoded vector has exactly dim floats and dim in range; the
 * index accepts or refuses it cleanly and finds an accepted row again. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "semgate/vindex.h"
#include "../../src/store_codec.h"
#include "fuzz.h"

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
		FUZZ_CHECK(3 + 2 + strlen(tenant) + 1 + strlen(eid) == klen);
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
