/* Decoding of values read back from Redis (see codec.h). Pure and
 * thread-safe; every length comes from the caller, nothing is assumed to
 * be NUL-terminated, and no field is trusted to have the shape we wrote. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "semgate/store/layout.h"

bool store_codec_id_ok(const char *id, size_t len)
{
	if (len == 0 || len > STORE_ID_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = id[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' || c == '-'))
			return false;
	}
	return true;
}

bool store_codec_exact(const char *val, size_t len, char id_out[STORE_ID_MAX + 1],
		       const char **answer, size_t *answer_len)
{
	const char *nl = val ? memchr(val, '\n', len) : NULL;
	if (!nl)
		return false;
	size_t idlen = (size_t)(nl - val);
	if (!store_codec_id_ok(val, idlen))
		return false;
	memcpy(id_out, val, idlen);
	id_out[idlen] = '\0';
	*answer = nl + 1;
	*answer_len = len - idlen - 1;
	return true;
}

bool store_codec_entry_key(const char *prefix, const char *key, size_t len,
			   char *tenant, size_t tcap, char *id, size_t icap)
{
	size_t plen = strlen(prefix);
	if (len < plen + 2 || memcmp(key, prefix, plen) != 0 ||
	    memcmp(key + plen, "e:", 2) != 0)
		return false;
	const char *t = key + plen + 2, *end = key + len;
	/* the bucket's hash tag "{...}:" comes before the tenant */
	if (t >= end || *t != '{')
		return false;
	const char *close = memchr(t, '}', (size_t)(end - t));
	if (!close || close + 1 >= end || close[1] != ':')
		return false;
	const char *tag = t + 1;
	size_t tag_len = (size_t)(close - tag);
	t = close + 2;
	const char *colon = memchr(t, ':', (size_t)(end - t));
	if (!colon || colon == t || (size_t)(colon - t) >= tcap)
		return false;
	size_t idlen = (size_t)(end - colon - 1);
	if (idlen >= icap || !store_codec_id_ok(colon + 1, idlen))
		return false;
	/* a NUL inside the tenant would silently shorten it */
	if (memchr(t, '\0', (size_t)(colon - t)))
		return false;
	memcpy(tenant, t, (size_t)(colon - t));
	tenant[colon - t] = '\0';
	memcpy(id, colon + 1, idlen);
	id[idlen] = '\0';
	/* the gateway names an entry only in its own bucket; a key with any
	 * other tag is not one the store could read back by its id */
	const char *want = store_bucket_tag(store_bucket_of(tenant, id));
	if (strlen(want) != tag_len || memcmp(want, tag, tag_len) != 0) {
		tenant[0] = id[0] = '\0';
		return false;
	}
	return true;
}

bool store_codec_vector(const char *dim_str, size_t dim_len, const char *blob,
			size_t blob_len, float **out, int *dim)
{
	*out = NULL;
	*dim = 0;
	if (!dim_str || !blob || dim_len == 0 || dim_len > 5)
		return false;
	long d = 0;
	for (size_t i = 0; i < dim_len; i++) {
		if (dim_str[i] < '0' || dim_str[i] > '9')
			return false;
		d = d * 10 + (dim_str[i] - '0');
	}
	if (d < 1 || d > STORE_DIM_MAX || blob_len != sizeof(float) * (size_t)d)
		return false;
	float *v = malloc(blob_len);
	if (!v)
		return false;
	memcpy(v, blob, blob_len);
	*out = v;
	*dim = (int)d;
	return true;
}
