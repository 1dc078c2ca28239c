/* Unit tests for the archive's pure parts: the stream records the store
 * writes decode back to what was written, anything else is refused with a
 * reason, the migration list is ordered, and a batch keeps only the last
 * hit count of each entry. */
#include <stdlib.h>
#include <string.h>

#include "semgate/archive/archive.h"
#include "semgate/store/archive.h"
#include "sg_test.h"

static bool decode(const char *sid, const char *json, const char *vec, size_t vlen,
		   struct arch_rec *r)
{
	char why[128];
	return arch_rec_decode(sid, json, json ? strlen(json) : 0, vec, vlen, r, why,
			       sizeof(why));
}

static void test_turn_round_trip(void)
{
	const char *items[] = { "{\"role\":\"user\",\"content\":\"hi \\\"you\\\"\"}",
				"{\"role\":\"assistant\",\"content\":\"hello\",\"name\":\"x\"}" };
	size_t lens[] = { strlen(items[0]), strlen(items[1]) };
	char *rec = store_archive_turn_render("tenant\"a", "conv-1", items, lens, 2);
	CHECK(rec != NULL);
	struct arch_rec r;
	CHECK(decode("1700000000000-7", rec, NULL, 0, &r));
	CHECK_INT(r.kind, ARCH_TURN);
	CHECK_INT(r.sid_ms, 1700000000000LL);
	CHECK_INT(r.sid_seq, 7);
	CHECK_STR(r.tenant, "tenant\"a");
	CHECK_STR(r.obj, "conv-1");
	CHECK_INT(cJSON_GetArraySize(r.msgs), 2);
	CHECK_STR(cJSON_GetArrayItem(r.msgs, 0)->child->next->valuestring, "hi \"you\"");
	arch_rec_finish(&r);
	free(rec);
}

static void test_entry_round_trip(void)
{
	float vec[4] = { 0.5f, -0.5f, 0.5f, -0.5f };
	const char *tags[] = { "t1", "t2" };
	struct store_entry en = {
		.id = "abc123", .query = "what?xx", .query_len = 5, .answer = "{\"a\":1}",
		.answer_len = 7, .scope = "s0", .ns = "ns1", .exact = "ex1", .vec = vec, .dim = 4,
		.emb_model = "m", .created = 1700000000, .tokens = 42, .ttl_s = 60, .kind = "text",
		.tags = tags, .ntags = 2, .metadata = "{\"k\":\"v\"}", .metadata_len = 9,
	};
	char *rec = store_archive_entry_render("t", &en, 1700000060);
	struct arch_rec r;
	CHECK(decode("5-0", rec, (const char *)vec, sizeof(vec), &r));
	CHECK_INT(r.kind, ARCH_PUT);
	CHECK_STR(r.obj, "abc123");
	CHECK_STR(r.query, "what?");
	CHECK_STR(r.answer, "{\"a\":1}");
	CHECK_STR(r.ns, "ns1");
	CHECK_STR(r.exact, "ex1");
	CHECK_STR(r.kind_name, "text");
	CHECK_STR(r.tags, "t1,t2");
	CHECK_STR(r.metadata, "{\"k\":\"v\"}");
	CHECK_INT(r.dim, 4);
	CHECK_INT(r.expires, 1700000060);
	CHECK_INT(r.tokens, 42);
	CHECK(r.vec == (const char *)vec && r.vec_len == sizeof(vec));
	arch_rec_finish(&r);
	/* a vector that does not match dim is refused */
	CHECK(!decode("5-0", rec, (const char *)vec, 12, &r));
	CHECK(!decode("5-0", rec, NULL, 0, &r));
	free(rec);
}

static void test_deletes_and_hits(void)
{
	char *c = store_archive_del_render(false, "t", "c1");
	char *d = store_archive_del_render(true, "t", "e1");
	struct arch_rec r;
	CHECK(decode("1-0", c, NULL, 0, &r));
	CHECK_INT(r.kind, ARCH_CONV_DELETE);
	CHECK_STR(r.obj, "c1");
	arch_rec_finish(&r);
	CHECK(decode("1-1", d, NULL, 0, &r));
	CHECK_INT(r.kind, ARCH_ENTRY_DELETE);
	CHECK_STR(r.obj, "e1");
	arch_rec_finish(&r);
	/* what the Lua hit script writes (cjson.encode) */
	CHECK(decode("2-0", "{\"id\":\"e1\",\"k\":\"hits\",\"n\":12,\"t\":\"t\"}", NULL, 0, &r));
	CHECK_INT(r.kind, ARCH_HITS);
	CHECK_INT(r.hits, 12);
	arch_rec_finish(&r);
	free(c);
	free(d);
}

static void test_bad_records_are_refused(void)
{
	const char *bad[] = {
		"", "[]", "{", "{\"k\":\"turn\",\"t\":\"t\",\"c\":\"c\"}",
		"{\"k\":\"turn\",\"t\":\"t\",\"c\":\"c\",\"m\":[]}",
		"{\"k\":\"turn\",\"t\":\"t\",\"c\":\"c\",\"m\":[{\"content\":\"no role\"}]}",
		"{\"k\":\"turn\",\"t\":\"t\",\"c\":\"bad id!\",\"m\":[{\"role\":\"user\"}]}",
		"{\"k\":\"cdel\",\"t\":\"\",\"c\":\"c\"}", "{\"k\":\"nope\",\"t\":\"t\",\"id\":\"e\"}",
		"{\"k\":\"hits\",\"t\":\"t\",\"id\":\"e\",\"n\":-1}",
		"{\"k\":\"hits\",\"t\":\"t\",\"id\":\"e\",\"n\":\"3\"}",
		"{\"k\":\"put\",\"t\":\"t\",\"id\":\"e\"}",
	};
	struct arch_rec r;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		bool ok = decode("1-0", bad[i], NULL, 0, &r);
		if (ok)
			printf("# accepted: %s\n", bad[i]);
		CHECK(!ok);
	}
	CHECK(!decode("1", "{\"k\":\"cdel\",\"t\":\"t\",\"c\":\"c\"}", NULL, 0, &r));
	CHECK(!decode("1-x", "{\"k\":\"cdel\",\"t\":\"t\",\"c\":\"c\"}", NULL, 0, &r));
	CHECK(!decode("-1-0", "{\"k\":\"cdel\",\"t\":\"t\",\"c\":\"c\"}", NULL, 0, &r));
	long long a, b;
	CHECK(arch_sid_parse("0-0", &a, &b) && a == 0 && b == 0);
	CHECK(!arch_sid_parse("1-2-3", &a, &b));
}

static void test_migrations_are_ordered(void)
{
	size_t n;
	const struct arch_migration *m = arch_migrations(&n);
	CHECK(n >= 2);
	CHECK(arch_migrations_ordered(m, n));
	struct arch_migration swapped[2] = { m[1], m[0] };
	CHECK(!arch_migrations_ordered(swapped, 2));
	struct arch_migration gap[2] = { m[0], m[0] };
	gap[1].version = 3;
	CHECK(!arch_migrations_ordered(gap, 2));
}

static void test_batch_keeps_the_last_hit_count(void)
{
	struct arch_rec v[5] = {
		{ .kind = ARCH_HITS, .tenant = "t", .obj = "e1", .hits = 1 },
		{ .kind = ARCH_HITS, .tenant = "t", .obj = "e2", .hits = 5 },
		{ .kind = ARCH_PUT, .tenant = "t", .obj = "e1" },
		{ .kind = ARCH_HITS, .tenant = "t", .obj = "e1", .hits = 3 },
		{ .kind = ARCH_HITS, .tenant = "u", .obj = "e1", .hits = 9 },
	};
	CHECK_INT(arch_batch_coalesce(v, 5), 4);
	CHECK(v[0].skip);
	CHECK(!v[1].skip && !v[2].skip && !v[3].skip && !v[4].skip);
}

int main(void)
{
	RUN(test_turn_round_trip);
	RUN(test_entry_round_trip);
	RUN(test_deletes_and_hits);
	RUN(test_bad_records_are_refused);
	RUN(test_migrations_are_ordered);
	RUN(test_batch_keeps_the_last_hit_count);
	return TEST_DONE();
}
