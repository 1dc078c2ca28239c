/* Unit tests for the store's decoding of what it reads back from Redis
 * (src/store/codec.c): exact-cache values, entry key names in the bucket
 * layout, and vector fields. Every shape the store does not write is
 * refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/store/layout.h"
#include "../../../src/store/codec.h"
#include "sg_test.h"

/* The entry key store_key() names: "sg:e:{<tag>}:<tenant>:<id>". */
static void entry_key(char *out, size_t cap, const char *tenant, const char *id)
{
	snprintf(out, cap, "sg:e:{%s}:%s:%s",
		 store_bucket_tag(store_bucket_of(tenant, id)), tenant, id);
}

static bool split(const char *key, char *tenant, char *id)
{
	return store_codec_entry_key("sg:", key, strlen(key), tenant, 128, id, 128);
}

static void test_entry_key_round_trip(void)
{
	char key[256], tenant[128], id[128];
	entry_key(key, sizeof(key), "acme", "0123456789abcdef0123456789abcdef");
	CHECK(split(key, tenant, id));
	CHECK_STR(tenant, "acme");
	CHECK_STR(id, "0123456789abcdef0123456789abcdef");
	/* ids may hold ':' (they are [A-Za-z0-9._:-]); the tenant cannot */
	entry_key(key, sizeof(key), "t1", "a:b:c");
	CHECK(split(key, tenant, id));
	CHECK_STR(tenant, "t1");
	CHECK_STR(id, "a:b:c");
}

static void test_entry_key_in_another_bucket_is_refused(void)
{
	/* the right shape with the wrong bucket tag: store_key() would name a
	 * different key for this entry, so it cannot be read back by its id */
	const char *id = "0123456789abcdef0123456789abcdef";
	unsigned b = store_bucket_of("acme", id);
	char key[256], tenant[128], eid[128];
	snprintf(key, sizeof(key), "sg:e:{%s}:acme:%s",
		 store_bucket_tag((b + 1) % STORE_BUCKETS), id);
	CHECK(!split(key, tenant, eid));
	snprintf(key, sizeof(key), "sg:e:{}:acme:%s", id);
	CHECK(!split(key, tenant, eid));
	snprintf(key, sizeof(key), "sg:e:{%sx}:acme:%s", store_bucket_tag(b), id);
	CHECK(!split(key, tenant, eid));
}

static void test_entry_key_other_shapes_are_refused(void)
{
	char tenant[128], id[128];
	CHECK(!split("sg:e:acme:abc", tenant, id));          /* the old, untagged layout */
	CHECK(!split("sg:x:{1}:acme:abc", tenant, id));      /* another kind */
	CHECK(!split("xx:e:{1}:acme:abc", tenant, id));      /* another prefix */
	CHECK(!split("sg:e:{1}:acme:", tenant, id));         /* no id */
	CHECK(!split("sg:e:{1}::abc", tenant, id));          /* no tenant */
	CHECK(!split("sg:e:{1}:acme:a*b", tenant, id));      /* not an id */
	CHECK(!split("sg:e:{1", tenant, id));                /* no closing brace */
	CHECK(!split("sg:e:", tenant, id));
	/* a NUL inside the tenant would shorten it silently */
	const char id32[] = "0123456789abcdef0123456789abcdef";
	char key[128];
	int n = snprintf(key, sizeof(key), "sg:e:{%s}:a", store_bucket_tag(0));
	key[n++] = '\0';
	n += snprintf(key + n, sizeof(key) - (size_t)n, "b:%s", id32);
	CHECK(!store_codec_entry_key("sg:", key, (size_t)n, tenant, 128, id, 128));
	/* a tenant or id longer than the caller's buffers */
	char big[400];
	entry_key(big, sizeof(big), "acme", id32);
	CHECK(!store_codec_entry_key("sg:", big, strlen(big), tenant, 4, id, 128));
	CHECK(!store_codec_entry_key("sg:", big, strlen(big), tenant, 128, id, 8));
}

static void test_exact_value(void)
{
	char id[STORE_ID_MAX + 1];
	const char *ans = NULL;
	size_t alen = 0;
	const char v[] = "abc123\n{\"x\":1}";
	CHECK(store_codec_exact(v, sizeof(v) - 1, id, &ans, &alen));
	CHECK_STR(id, "abc123");
	CHECK_INT(alen, 7);
	CHECK(memcmp(ans, "{\"x\":1}", 7) == 0);
	CHECK(!store_codec_exact("abc123", 6, id, &ans, &alen));   /* no newline */
	CHECK(!store_codec_exact("\nanswer", 7, id, &ans, &alen)); /* empty id */
	CHECK(!store_codec_exact("a b\nx", 5, id, &ans, &alen));   /* not an id */
}

static void test_vector_fields(void)
{
	float v[3] = { 1.0f, -2.5f, 0.25f };
	float *out = NULL;
	int dim = 0;
	CHECK(store_codec_vector("3", 1, (const char *)v, sizeof(v), &out, &dim));
	CHECK_INT(dim, 3);
	CHECK(out && memcmp(out, v, sizeof(v)) == 0);
	free(out);
	out = NULL;
	CHECK(!store_codec_vector("4", 1, (const char *)v, sizeof(v), &out, &dim));
	CHECK(out == NULL && dim == 0);
	CHECK(!store_codec_vector("3x", 2, (const char *)v, sizeof(v), &out, &dim));
	CHECK(!store_codec_vector("0", 1, (const char *)v, 0, &out, &dim));
	CHECK(!store_codec_vector("99999", 5, (const char *)v, sizeof(v), &out, &dim));
}

int main(void)
{
	RUN(test_entry_key_round_trip);
	RUN(test_entry_key_in_another_bucket_is_refused);
	RUN(test_entry_key_other_shapes_are_refused);
	RUN(test_exact_value);
	RUN(test_vector_fields);
	return TEST_DONE();
}
