/* Unit tests for hex, random ids and the shared SHA-256 (digest.h). */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/digest.h"
#include "sg_test.h"

static bool all_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return s[n] == '\0';
}

static void test_hex_writes_lowercase_digits_and_a_nul(void)
{
	const unsigned char raw[] = { 0x00, 0x0f, 0xa5, 0xff };
	char out[9];
	memset(out, 'x', sizeof(out));
	sg_hex(out, raw, sizeof(raw));
	CHECK_STR(out, "000fa5ff");
	sg_hex(out, raw, 0);
	CHECK_STR(out, "");
}

static int cmp_id(const void *a, const void *b)
{
	return strcmp(a, b);
}

#define IDS 2000

/* Many more ids than one pool holds: every one well-formed, none twice. */
static void test_random_ids_are_hex_and_never_repeat(void)
{
	static char ids[IDS][33];
	for (int i = 0; i < IDS; i++) {
		sg_random_hex(ids[i], 16);
		CHECK(all_hex(ids[i], 32));
	}
	qsort(ids, IDS, sizeof(ids[0]), cmp_id);
	int dups = 0;
	for (int i = 1; i < IDS; i++)
		dups += strcmp(ids[i - 1], ids[i]) == 0;
	CHECK_INT(dups, 0);
	/* odd sizes take their bytes from the same pool; past 64 it stops */
	char small[7], big[130];
	sg_random_hex(small, 3);
	CHECK(all_hex(small, 6));
	memset(big, 'x', sizeof(big));
	sg_random_hex(big, 100);
	CHECK(all_hex(big, 128));
}

static void *draw(void *arg)
{
	char (*ids)[33] = arg;
	for (int i = 0; i < IDS / 2; i++)
		sg_random_hex(ids[i], 16);
	return NULL;
}

/* Each thread has its own pool: two threads never draw the same bytes. */
static void test_random_ids_differ_between_threads(void)
{
	static char ids[IDS][33];
	pthread_t a, b;
	CHECK(pthread_create(&a, NULL, draw, ids) == 0);
	CHECK(pthread_create(&b, NULL, draw, ids + IDS / 2) == 0);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	qsort(ids, IDS, sizeof(ids[0]), cmp_id);
	int dups = 0;
	for (int i = 1; i < IDS; i++)
		dups += strcmp(ids[i - 1], ids[i]) == 0;
	CHECK_INT(dups, 0);
}

static void test_sha256_and_tagged_fields(void)
{
	CHECK(sg_sha256() != NULL);
	CHECK(sg_sha256() == sg_sha256());
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	CHECK(ctx != NULL);
	char hex[65];
	/* FIPS 180-2's "abc" */
	CHECK(EVP_DigestInit_ex(ctx, sg_sha256(), NULL) == 1);
	CHECK(EVP_DigestUpdate(ctx, "abc", 3) == 1);
	CHECK(sg_digest_hex(ctx, hex));
	CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	/* a field is its tag, its length in 8 big-endian bytes, its bytes */
	const unsigned char framed[] = { 'Q', 0, 0, 0, 0, 0, 0, 0, 3, 'a', 'b', 'c',
					 'E', 0, 0, 0, 0, 0, 0, 0, 0 };
	char want[65];
	CHECK(EVP_DigestInit_ex(ctx, sg_sha256(), NULL) == 1);
	CHECK(EVP_DigestUpdate(ctx, framed, sizeof(framed)) == 1);
	CHECK(sg_digest_hex(ctx, want));
	CHECK(EVP_DigestInit_ex(ctx, sg_sha256(), NULL) == 1);
	CHECK(sg_digest_field(ctx, 'Q', "abc", 3));
	CHECK(sg_digest_field(ctx, 'E', "", 0));
	CHECK(sg_digest_hex(ctx, hex));
	CHECK_STR(hex, want);
	/* moving a byte across the field boundary changes the digest */
	CHECK(EVP_DigestInit_ex(ctx, sg_sha256(), NULL) == 1);
	CHECK(sg_digest_field(ctx, 'Q', "ab", 2));
	CHECK(sg_digest_field(ctx, 'E', "c", 1));
	CHECK(sg_digest_hex(ctx, hex));
	CHECK(strcmp(hex, want) != 0);
	EVP_MD_CTX_free(ctx);
}

int main(void)
{
	RUN(test_hex_writes_lowercase_digits_and_a_nul);
	RUN(test_random_ids_are_hex_and_never_repeat);
	RUN(test_random_ids_differ_between_threads);
	RUN(test_sha256_and_tagged_fields);
	return TEST_DONE();
}
