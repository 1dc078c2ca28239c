/* Unit tests for the cluster key layout: CRC16 and key slots (against the
 * values `redis-cli cluster keyslot` gives), hash-tag extraction, the bucket
 * tags (one per bucket, their slots evenly spaced), the bucket hash, and
 * entry ids fitted to their exact key's bucket. */
#include <stdio.h>
#include <string.h>

#include "semgate/store/layout.h"
#include "sg_test.h"

static unsigned slot(const char *k)
{
	return store_key_slot(k, strlen(k));
}

static void test_crc16_and_slots_match_redis(void)
{
	CHECK_INT(store_crc16("123456789", 9), 0x31C3); /* CRC16-XMODEM check value */
	CHECK_INT(slot("foo"), 12182);
	CHECK_INT(slot("bar"), 5061);
	CHECK_INT(slot("hello"), 866);
	CHECK_INT(slot("somekey"), 11058);
	CHECK_INT(slot("123456789"), 12739);
	CHECK_INT(slot("{user1000}.following"), 3443);
	CHECK_INT(slot("a{}b"), 13694);  /* an empty tag: the whole key */
	CHECK_INT(slot("{}{x}"), 3257);
	CHECK_INT(slot("x{y"), 2740);    /* no closing brace: the whole key */
	CHECK_INT(slot("sg:e:{40821}:default:abc"), 128);
}

static void test_hash_tag(void)
{
	const char *t;
	size_t n;
	store_hash_tag("sg:e:{12}:t:{x}", 15, &t, &n);
	CHECK_INT(n, 2);
	CHECK(memcmp(t, "12", 2) == 0);
	store_hash_tag("plain", 5, &t, &n);
	CHECK_INT(n, 5);
	store_hash_tag("{}", 2, &t, &n);
	CHECK_INT(n, 2);
	/* binary safe: the length bounds the search */
	store_hash_tag("ab{cd}", 3, &t, &n);
	CHECK_INT(n, 3);
}

static void test_bucket_tags_are_evenly_spaced(void)
{
	const unsigned per = STORE_SLOTS / STORE_BUCKETS;
	for (unsigned b = 0; b < STORE_BUCKETS; b++) {
		const char *tag = store_bucket_tag(b);
		char key[64];
		snprintf(key, sizeof(key), "sg:chat:{%s}:t:c", tag);
		unsigned sl = slot(key);
		CHECK(strlen(tag) >= 1 && strlen(tag) <= STORE_TAG_MAX);
		CHECK(sl >= b * per && sl < (b + 1) * per);
		/* nearest the middle of its range: within a few slots */
		unsigned mid = b * per + per / 2;
		CHECK((sl > mid ? sl - mid : mid - sl) <= 8);
	}
	CHECK_STR(store_bucket_tag(0), "40821");
	CHECK_STR(store_bucket_tag(STORE_BUCKETS), store_bucket_tag(0));
}

static void test_bucket_of(void)
{
	unsigned seen[STORE_BUCKETS] = { 0 };
	char id[32];
	for (int i = 0; i < 6400; i++) {
		snprintf(id, sizeof(id), "conv-%d", i);
		unsigned b = store_bucket_of("tenant", id);
		CHECK(b < STORE_BUCKETS);
		seen[b % STORE_BUCKETS]++;
	}
	for (unsigned b = 0; b < STORE_BUCKETS; b++)
		CHECK(seen[b] > 50 && seen[b] < 150); /* 100 expected in each */
	/* the tenant and the id are kept apart */
	CHECK_INT(store_bucket_of("ab", "c") == store_bucket_of("a", "bc") &&
		  store_bucket_of("ab", "cd") == store_bucket_of("a", "bcd"), 0);
	CHECK_INT(store_bucket_of("t", "x"), store_bucket_of("t", "x"));
}

static void test_entry_id_fit(void)
{
	const char *sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
	for (int i = 0; i < 200; i++) {
		char id[65];
		snprintf(id, sizeof(id), "%08x0123456789abcdef%08x", i * 7919, i);
		char before[65];
		memcpy(before, id, sizeof(id));
		store_entry_id_fit("tenant", sha, id);
		CHECK_INT(store_bucket_of("tenant", id), store_bucket_of("tenant", sha));
		CHECK_INT(strlen(id), 32);
		CHECK(memcmp(id, before, 28) == 0); /* only the last four digits move */
		for (int k = 28; k < 32; k++)
			CHECK((id[k] >= '0' && id[k] <= '9') || (id[k] >= 'a' && id[k] <= 'f'));
	}
	char id[65] = "0123456789abcdef0123456789abcdef";
	store_entry_id_fit("tenant", NULL, id);
	CHECK_STR(id, "0123456789abcdef0123456789abcdef");
}

int main(void)
{
	RUN(test_crc16_and_slots_match_redis);
	RUN(test_hash_tag);
	RUN(test_bucket_tags_are_evenly_spaced);
	RUN(test_bucket_of);
	RUN(test_entry_id_fit);
	return TEST_DONE();
}
