/* The per-tenant rate-limit window in Redis: {prefix}rl:{tenant}, a sorted
 * set of admitted requests scored by Redis's own clock in ms. Part of the
 * store module (key names are built only in src/store/). One EVAL per
 * request, so the check and the add are one atomic step even with many
 * gateway processes sharing the window. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/digest.h"
#include "semgate/store/store.h"
#include "priv.h"

/* KEYS[1] window; ARGV[1] window ms, ARGV[2] limit, ARGV[3] unique member.
 * TIME is Redis's clock, so gateways with skewed clocks share one window;
 * it is allowed before writes because scripts replicate their effects
 * (the default since Redis 5; replicate_commands() turns it on for 3.2+).
 * A refused request is not added, so clients retrying in a loop cannot
 * keep the window full forever. Returns {allowed, remaining, wait_ms}. */
static const char rate_lua[] =
	"if redis.replicate_commands then pcall(redis.replicate_commands) end\n"
	"local t = redis.call('TIME')\n"
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
	"local win = tonumber(ARGV[1])\n"
	"local lim = tonumber(ARGV[2])\n"
	"redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - win))\n"
	"local n = redis.call('ZCARD', KEYS[1])\n"
	"if n < lim then\n"
	"  redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[3])\n"
	"  redis.call('PEXPIRE', KEYS[1], win)\n"
	"  return {1, lim - n - 1, 0}\n"
	"end\n"
	"local o = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')\n"
	"local wait = win\n"
	"if o[2] then wait = tonumber(o[2]) + win - now end\n"
	"return {0, 0, wait}\n";

static void unique_member(char out[33])
{
	sg_random_hex(out, 16);
}

enum sg_err store_rate_limit(struct store *s, const char *tenant, long long max,
			     long long window_ms, bool *allowed, long long *remaining,
			     long long *retry_ms, struct sg_error *e)
{
	*allowed = true;
	*remaining = 0;
	*retry_ms = 0;
	/* one key per tenant: a sliding window is not split */
	char *key = store_tenant_key(s, "rl", tenant);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	char win[24], lim[24], member[33];
	snprintf(win, sizeof(win), "%lld", window_ms);
	snprintf(lim, sizeof(lim), "%lld", max);
	unique_member(member);
	const char *argv[] = { "EVAL", rate_lua, "1", key, win, lim, member };
	redisReply *r = store_run(s, 7, argv, NULL, e);
	free(key);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = SG_OK;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
	    r->element[0]->type == REDIS_REPLY_INTEGER &&
	    r->element[1]->type == REDIS_REPLY_INTEGER &&
	    r->element[2]->type == REDIS_REPLY_INTEGER) {
		*allowed = r->element[0]->integer == 1;
		*remaining = r->element[1]->integer;
		*retry_ms = r->element[2]->integer;
	} else if (r->type == REDIS_REPLY_ERROR) {
		rc = store_reply_error(r, e);
	} else {
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected rate-limit reply");
	}
	freeReplyObject(r);
	return rc;
}
