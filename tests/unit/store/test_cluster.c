/* Unit tests for the pure parts of the Redis Cluster client: node
 * addresses, the seed list, and CLUSTER SLOTS replies into a slot map
 * (well-formed, with replicas, not covering every slot, and malformed),
 * and which slot a command is routed by. */
#include <stdlib.h>
#include <string.h>

#include "../../../src/store/priv.h"
#include "sg_test.h"

static redisReply *mkint(long long v)
{
	redisReply *r = calloc(1, sizeof(*r));
	r->type = REDIS_REPLY_INTEGER;
	r->integer = v;
	return r;
}

static redisReply *rstr(const char *s)
{
	redisReply *r = calloc(1, sizeof(*r));
	r->type = REDIS_REPLY_STRING;
	r->len = strlen(s);
	r->str = strdup(s);
	return r;
}

static redisReply *rarr(size_t n, redisReply **el)
{
	redisReply *r = calloc(1, sizeof(*r));
	r->type = REDIS_REPLY_ARRAY;
	r->elements = n;
	r->element = calloc(n ? n : 1, sizeof(*r->element));
	memcpy(r->element, el, n * sizeof(*el));
	return r;
}

/* [lo, hi, [host, port, id], [replica host, port, id]] */
static redisReply *range(long long lo, long long hi, const char *host, long long port)
{
	redisReply *m[] = { rstr(host), mkint(port), rstr("0123abcd") };
	redisReply *rep[] = { rstr(host), mkint(port + 3), rstr("4567ef01") };
	redisReply *el[] = { mkint(lo), mkint(hi), rarr(3, m), rarr(3, rep) };
	return rarr(4, el);
}

static void test_addr(void)
{
	struct store_cl_addr a;
	CHECK(store_cl_parse_addr("127.0.0.1:7000", 14, &a));
	CHECK_STR(a.host, "127.0.0.1");
	CHECK_INT(a.port, 7000);
	CHECK(store_cl_parse_addr("::1:6379", 8, &a)); /* the last colon splits */
	CHECK_STR(a.host, "::1");
	CHECK(!store_cl_parse_addr("host", 4, &a));
	CHECK(!store_cl_parse_addr(":6379", 5, &a));
	CHECK(!store_cl_parse_addr("h:0", 3, &a));
	CHECK(!store_cl_parse_addr("h:65536", 7, &a));
	CHECK(!store_cl_parse_addr("h:12x", 5, &a));
	CHECK(!store_cl_parse_addr("h:", 2, &a));
}

static void test_seeds(void)
{
	struct store_cl_addr a[4];
	CHECK_INT(store_cl_parse_seeds("a:1,b:2,c:3", a, 4), 3);
	CHECK_STR(a[1].host, "b");
	CHECK_INT(a[2].port, 3);
	CHECK_INT(store_cl_parse_seeds("a:1,bad,c:3", a, 4), 2);
	CHECK_INT(store_cl_parse_seeds("a:1,b:2,c:3,d:4,e:5", a, 4), 4);
	CHECK_INT(store_cl_parse_seeds("", a, 4), 0);
}

static void test_slots(void)
{
	static unsigned short slot[STORE_SLOTS];
	struct store_cl_addr nodes[4];
	redisReply *el[] = { range(0, 5460, "127.0.0.1", 7000),
			     range(5461, 10922, "127.0.0.1", 7001),
			     range(10923, 16383, "127.0.0.1", 7002) };
	redisReply *r = rarr(3, el);
	CHECK_INT(store_cl_parse_slots(r, nodes, 4, slot), 3);
	CHECK_INT(nodes[slot[0]].port, 7000);
	CHECK_INT(nodes[slot[5460]].port, 7000);
	CHECK_INT(nodes[slot[5461]].port, 7001);
	CHECK_INT(nodes[slot[16383]].port, 7002);
	/* too many masters for the room given */
	CHECK_INT(store_cl_parse_slots(r, nodes, 2, slot), -1);
	freeReplyObject(r);

	/* a master with two ranges is one node; an uncovered range stays 0xffff */
	redisReply *el2[] = { range(0, 99, "h", 1), range(200, 299, "h", 1) };
	r = rarr(2, el2);
	CHECK_INT(store_cl_parse_slots(r, nodes, 4, slot), 1);
	CHECK_INT(slot[50], 0);
	CHECK_INT(slot[150], 0xffff);
	CHECK_INT(slot[299], 0);
	freeReplyObject(r);

	/* malformed: out of range, reversed, wrong types, not an array */
	redisReply *bad1[] = { range(0, 16384, "h", 1) };
	r = rarr(1, bad1);
	CHECK_INT(store_cl_parse_slots(r, nodes, 4, slot), -1);
	freeReplyObject(r);
	redisReply *bad2[] = { range(10, 5, "h", 1) };
	r = rarr(1, bad2);
	CHECK_INT(store_cl_parse_slots(r, nodes, 4, slot), -1);
	freeReplyObject(r);
	redisReply *bad3[] = { rstr("nope") };
	r = rarr(1, bad3);
	CHECK_INT(store_cl_parse_slots(r, nodes, 4, slot), -1);
	freeReplyObject(r);
	r = mkint(3);
	CHECK_INT(store_cl_parse_slots(r, nodes, 4, slot), -1);
	freeReplyObject(r);
	CHECK_INT(store_cl_parse_slots(NULL, nodes, 4, slot), -1);
}

static int slot_of(int argc, const char **argv)
{
	char *cmd = NULL;
	long long len = redisFormatCommandArgv(&cmd, argc, argv, NULL);
	int slot = len > 0 ? store_cl_command_slot(cmd, (size_t)len) : -3;
	redisFreeCommand(cmd);
	return slot;
}

#define SLOT_OF(...) slot_of((int)(sizeof((const char *[]){ __VA_ARGS__ }) / sizeof(char *)), \
			     (const char *[]){ __VA_ARGS__ })

static void test_command_slots(void)
{
	const char *k = "sg:arch:{b07}:t";
	int want = (int)store_key_slot(k, strlen(k));
	CHECK(want != (int)store_key_slot("GROUP", 5));
	CHECK_INT(SLOT_OF("GET", k), want);
	CHECK_INT(SLOT_OF("EVALSHA", "0123", "2", k, "other", "a"), want);
	CHECK_INT(SLOT_OF("EVAL", "return 1", "0"), -1);
	CHECK_INT(SLOT_OF("PING"), -1);
	CHECK_INT(SLOT_OF("MULTI"), -1);
	/* the stream commands name their key after a subcommand or STREAMS */
	CHECK_INT(SLOT_OF("XGROUP", "CREATE", k, "g", "0", "MKSTREAM"), want);
	CHECK_INT(SLOT_OF("XGROUP", "DELCONSUMER", k, "g", "c"), want);
	CHECK_INT(SLOT_OF("XINFO", "STREAM", k), want);
	CHECK_INT(SLOT_OF("XINFO", "CONSUMERS", k, "g"), want);
	CHECK_INT(SLOT_OF("XREADGROUP", "GROUP", "g", "c", "COUNT", "64", "BLOCK", "100",
			  "STREAMS", k, ">"), want);
	CHECK_INT(SLOT_OF("XREADGROUP", "GROUP", "g", "c", "STREAMS", k, ">"), want);
	CHECK_INT(SLOT_OF("XREADGROUP", "GROUP", "streams", "STREAMS", "STREAMS", k, ">"), want);
	CHECK_INT(SLOT_OF("XREAD", "COUNT", "1", "STREAMS", k, "0"), want);
	CHECK_INT(SLOT_OF("XAUTOCLAIM", k, "g", "c", "1000", "0-0"), want);
	CHECK_INT(SLOT_OF("XACK", k, "g", "1-1"), want);
	/* STREAMS past the arguments kept, or with nothing after it: keyless */
	CHECK_INT(SLOT_OF("XREADGROUP", "GROUP", "g", "c", "STREAMS"), -1);
	/* not one whole command */
	CHECK_INT(store_cl_command_slot("*1\r\n$3\r\nGE", 12), -2);
	CHECK_INT(store_cl_command_slot("", 0), -2);
}

int main(void)
{
	RUN(test_addr);
	RUN(test_seeds);
	RUN(test_slots);
	RUN(test_command_slots);
	return TEST_DONE();
}
