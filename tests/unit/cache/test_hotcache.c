/* Unit tests for the hot exact cache's rules: nothing kept or served while
 * disabled, a fill loses to any invalidation that overtook its read, TTL
 * and size bounds hold, and collisions replace rather than mix. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/cache/hotcache.h"
#include "sg_test.h"

static bool get(struct hotcache *hc, const char *key, char id[65], char **ans)
{
	size_t len = 0;
	*ans = NULL;
	struct hot_meta meta;
	bool ok = hot_get(hc, key, id, ans, &len, &meta);
	if (ok)
		CHECK_INT(len, strlen(*ans));
	return ok;
}

static void test_disabled_keeps_and_serves_nothing(void)
{
	struct hotcache *hc = hot_create(16, 1024);
	char id[65], *a;
	hot_put(hc, "k", hot_token(hc, "k"), "id1", "ans", 3, 10000, NULL);
	CHECK(!get(hc, "k", id, &a));
	hot_set_enabled(hc, true);
	hot_put(hc, "k", hot_token(hc, "k"), "id1", "ans", 3, 10000, NULL);
	CHECK(get(hc, "k", id, &a));
	CHECK_STR(a, "ans");
	CHECK_STR(id, "id1");
	free(a);
	hot_set_enabled(hc, false);              /* the subscriber went away */
	CHECK(!get(hc, "k", id, &a));
	hot_set_enabled(hc, true);               /* back: starts empty */
	CHECK(!get(hc, "k", id, &a));
	struct hot_stats st;
	hot_get_stats(hc, &st);
	CHECK_INT(st.keys, 0);
	CHECK_INT(st.hits, 1);
	hot_destroy(hc);
	CHECK(hot_create(0, 1024) == NULL);
}

static void test_an_invalidation_during_the_read_wins(void)
{
	struct hotcache *hc = hot_create(64, 1024);
	hot_set_enabled(hc, true);
	char id[65], *a;
	uint64_t t = hot_token(hc, "key-a");
	hot_invalidate(hc, "key-a", 5);          /* arrives before the GET reply */
	hot_put(hc, "key-a", t, "old", "stale", 5, 10000, NULL);
	CHECK(!get(hc, "key-a", id, &a));
	t = hot_token(hc, "key-a");
	hot_clear(hc);                           /* a flush overtakes it */
	hot_put(hc, "key-a", t, "old", "stale", 5, 10000, NULL);
	CHECK(!get(hc, "key-a", id, &a));
	t = hot_token(hc, "key-a");
	hot_set_enabled(hc, false);
	hot_set_enabled(hc, true);               /* a reconnect in between */
	hot_put(hc, "key-a", t, "old", "stale", 5, 10000, NULL);
	CHECK(!get(hc, "key-a", id, &a));
	t = hot_token(hc, "key-a");
	hot_put(hc, "key-a", t, "new", "fresh", 5, 10000, NULL);
	CHECK(get(hc, "key-a", id, &a));
	CHECK_STR(a, "fresh");
	free(a);
	hot_invalidate(hc, "key-a", 5);
	CHECK(!get(hc, "key-a", id, &a));
	hot_destroy(hc);
}

static void test_ttl_size_and_collisions(void)
{
	struct hotcache *hc = hot_create(1, 8);  /* one slot: every key collides */
	hot_set_enabled(hc, true);
	char id[65], *a;
	hot_put(hc, "big", hot_token(hc, "big"), "i", "123456789", 9, 10000, NULL);
	CHECK(!get(hc, "big", id, &a));          /* over max_answer */
	hot_put(hc, "gone", hot_token(hc, "gone"), "i", "x", 1, 0, NULL);
	CHECK(!get(hc, "gone", id, &a));         /* no TTL left */
	hot_put(hc, "k1", hot_token(hc, "k1"), "i1", "one", 3, 10000, NULL);
	hot_put(hc, "k2", hot_token(hc, "k2"), "i2", "two", 3, 10000, NULL);
	CHECK(!get(hc, "k1", id, &a));           /* replaced, not mixed */
	CHECK(get(hc, "k2", id, &a));
	CHECK_STR(a, "two");
	CHECK_STR(id, "i2");
	free(a);
	hot_invalidate(hc, "k1", 2);             /* another key's invalidation */
	CHECK(get(hc, "k2", id, &a));            /* ...leaves this one alone */
	free(a);
	hot_put(hc, "short", hot_token(hc, "short"), "i", "s", 1, 30, NULL);
	CHECK(get(hc, "short", id, &a));
	free(a);
	const struct timespec pause = { 0, 60 * 1000 * 1000 };
	nanosleep(&pause, NULL);
	CHECK(!get(hc, "short", id, &a));        /* expired by its own TTL */
	struct hot_stats st;
	hot_get_stats(hc, &st);
	CHECK_INT(st.keys, 0);
	CHECK_INT(st.bytes, 0);
	hot_destroy(hc);
}

static void test_the_meta_travels_with_the_copy(void)
{
	struct hotcache *hc = hot_create(16, 1024);
	hot_set_enabled(hc, true);
	const struct hot_meta kept = { .known = true, .spliceable = true, .tokens = 12,
				       .prompt = 7, .completion = 5 };
	hot_put(hc, "m", hot_token(hc, "m"), "id1", "{}", 2, 10000, &kept);
	char id[65], *a = NULL;
	size_t len = 0;
	struct hot_meta got = { 0 };
	CHECK(hot_get(hc, "m", id, &a, &len, &got));
	free(a);
	CHECK(got.known && got.spliceable);
	CHECK_INT(got.tokens, 12);
	CHECK_INT(got.prompt, 7);
	CHECK_INT(got.completion, 5);
	/* a copy kept without one says so */
	hot_put(hc, "m", hot_token(hc, "m"), "id2", "{}", 2, 10000, NULL);
	got.known = true;
	CHECK(hot_get(hc, "m", id, &a, &len, &got));
	free(a);
	CHECK(!got.known);
	CHECK_STR(id, "id2");
	hot_destroy(hc);
}

int main(void)
{
	RUN(test_the_meta_travels_with_the_copy);
	RUN(test_disabled_keeps_and_serves_nothing);
	RUN(test_an_invalidation_during_the_read_wins);
	RUN(test_ttl_size_and_collisions);
	return TEST_DONE();
}
