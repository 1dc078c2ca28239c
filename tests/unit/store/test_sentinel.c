/* Unit tests for the pure parts of Sentinel mode: host:port addresses, the
 * SEMGATE_REDIS_SENTINELS list and +switch-master messages. */
#include <string.h>

#include "semgate/store/sentinel.h"
#include "sg_test.h"

static bool parse(const char *s, struct store_hostport *a)
{
	return store_parse_hostport(s, strlen(s), a);
}

static void test_hostport_valid(void)
{
	struct store_hostport a;
	CHECK(parse("127.0.0.1:26379", &a));
	CHECK_STR(a.host, "127.0.0.1");
	CHECK_INT(a.port, 26379);
	CHECK(parse("redis-sentinel.example:1", &a));
	CHECK_STR(a.host, "redis-sentinel.example");
	CHECK_INT(a.port, 1);
	CHECK(parse("[::1]:65535", &a));
	CHECK_STR(a.host, "::1");
	CHECK_INT(a.port, 65535);
	/* only the first len bytes count */
	CHECK(store_parse_hostport("h:12,junk", 4, &a));
	CHECK_STR(a.host, "h");
	CHECK_INT(a.port, 12);
}

static void test_hostport_invalid(void)
{
	struct store_hostport a;
	const char *bad[] = { "", "host", "host:", ":26379", "host:0", "host:65536",
			      "host:123456", "host:12a", "host:-1", "host: 1", "ho st:1",
			      "::1:26379", "[::1]26379", "[::1]:", "[]:1", "[::1", "a,b:1",
			      "host:+1" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		bool ok = parse(bad[i], &a);
		if (ok)
			printf("# accepted '%s'\n", bad[i]);
		CHECK(!ok);
	}
	char longhost[STORE_HOST_MAX + 8];
	memset(longhost, 'h', STORE_HOST_MAX);
	strcpy(longhost + STORE_HOST_MAX, ":1");
	CHECK(!parse(longhost, &a));
}

static void test_list(void)
{
	struct store_hostport a[4];
	char why[128] = "";
	CHECK_INT(store_parse_hostports("127.0.0.1:1, 127.0.0.1:2 ,[::1]:3", a, 4, why,
					sizeof(why)), 3);
	CHECK_INT(a[0].port, 1);
	CHECK_INT(a[1].port, 2);
	CHECK_STR(a[1].host, "127.0.0.1");
	CHECK_STR(a[2].host, "::1");
	CHECK_INT(store_parse_hostports("h:9", a, 4, why, sizeof(why)), 1);
	CHECK_INT(store_parse_hostports("h:1,,h:2", a, 4, why, sizeof(why)), -1);
	CHECK(strstr(why, "empty") != NULL);
	CHECK_INT(store_parse_hostports("h:1,", a, 4, why, sizeof(why)), -1);
	CHECK_INT(store_parse_hostports("h:1,nope", a, 4, why, sizeof(why)), -1);
	CHECK(strstr(why, "'nope' is not host:port") != NULL);
	CHECK_INT(store_parse_hostports("a:1,b:2,c:3,d:4,e:5", a, 4, why, sizeof(why)), -1);
	CHECK(strstr(why, "more than 4") != NULL);
}

static bool sw(const char *msg, const char *name, struct store_hostport *a)
{
	return store_parse_switch_master(msg, strlen(msg), name, a);
}

static void test_switch_master(void)
{
	struct store_hostport a;
	CHECK(sw("sgmaster 127.0.0.1 6379 127.0.0.1 6380", "sgmaster", &a));
	CHECK_STR(a.host, "127.0.0.1");
	CHECK_INT(a.port, 6380);
	CHECK(sw("m ::1 6379 fe80::2 7000", "m", &a));
	CHECK_STR(a.host, "fe80::2");
	CHECK_INT(a.port, 7000);
	/* another master's switch, or a prefix of the name, is not ours */
	CHECK(!sw("other 127.0.0.1 6379 127.0.0.1 6380", "sgmaster", &a));
	CHECK(!sw("sgmaster2 127.0.0.1 6379 127.0.0.1 6380", "sgmaster", &a));
	CHECK(!sw("sg 127.0.0.1 6379 127.0.0.1 6380", "sgmaster", &a));
	/* malformed */
	CHECK(!sw("", "sgmaster", &a));
	CHECK(!sw("sgmaster 127.0.0.1 6379 127.0.0.1", "sgmaster", &a));
	CHECK(!sw("sgmaster 127.0.0.1 6379 127.0.0.1 6380 extra", "sgmaster", &a));
	CHECK(!sw("sgmaster 127.0.0.1 6379 127.0.0.1 0", "sgmaster", &a));
	CHECK(!sw("sgmaster 127.0.0.1 x 127.0.0.1 6380", "sgmaster", &a));
	CHECK(!sw("sgmaster 127.0.0.1 6379 127.0.0.1 99999", "sgmaster", &a));
	/* the payload need not be NUL-terminated */
	const char *m = "sgmaster 127.0.0.1 1 127.0.0.1 22XXXX";
	CHECK(store_parse_switch_master(m, strlen(m) - 4, "sgmaster", &a));
	CHECK_INT(a.port, 22);
}

int main(void)
{
	RUN(test_hostport_valid);
	RUN(test_hostport_invalid);
	RUN(test_list);
	RUN(test_switch_master);
	return TEST_DONE();
}
