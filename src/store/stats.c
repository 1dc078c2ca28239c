/* Per-tenant entry accounting in Redis, kept beside the stats counters
 * {prefix}stats:{tenant} so that the number and size of a tenant's entries
 * can be read without walking the keyspace:
 *
 *   {prefix}live:{tenant}  sorted set: entry id -> expiry (unix ms, Redis's clock)
 *   {prefix}size:{tenant}  hash: entry id -> "<bytes> <vector bytes if indexed>",
 *                          and the totals #n (entries), #i (indexed), #b, #v
 *
 * Every store and delete queues, in its own MULTI, one EVAL of lua_sync that
 * reads the entry as Redis now holds it and moves the totals by the
 * difference, so a store, an overwrite, a delete or a replay of either is
 * counted exactly once. Entries that expire by TTL are untracked by the same
 * function once their expiry has passed, a few per write.
 * Part of the store module: key names are built only in src/store/. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/log.h"
#include "semgate/store/ops.h"
#include "priv.h"

/* Expired ids untracked by every store or delete: more than the one id a
 * store adds, so the backlog of expired ids drains under any write load. */
#define ACCT_PURGE_ON_WRITE "4"

/* KEYS[1] live, KEYS[2] size; ARGV[1] the entry key prefix "{prefix}e:{tenant}:".
 * sync(id) counts an entry as the stats always have: an entry is a
 * hash with a "dim" field; its bytes are query + answer + metadata + vector;
 * it is indexed when dim > 0 and it has a vector. The expiry is TIME + PTTL,
 * the very instant Redis expires the key; an entry without a TTL scores +inf
 * and does not extend the two keys' TTL. Both keys live as long as their
 * longest-lived entry, and go when the last entry is untracked. TIME comes
 * before writes, which scripts allow since they replicate their effects. */
#define ACCT_LUA_PRELUDE \
	"if redis.replicate_commands then pcall(redis.replicate_commands) end\n" \
	"local Z, H, EP = KEYS[1], KEYS[2], ARGV[1]\n" \
	"local t = redis.call('TIME')\n" \
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n" \
	"local function int(v)\n" \
	"  if not v then return 0 end\n" \
	"  return tonumber(string.match(v, '^%s*([+-]?%d+)')) or 0\n" \
	"end\n" \
	"local function keep(k, at)\n" \
	"  local p = redis.call('PTTL', k)\n" \
	"  if p == -1 or (p >= 0 and now + p < at) then redis.call('PEXPIREAT', k, at) end\n" \
	"end\n" \
	"local function add(f, d) if d ~= 0 then redis.call('HINCRBY', H, f, d) end end\n" \
	"local function sync(id)\n" \
	"  local ek, nb, nv, at = EP .. id, nil, 0, nil\n" \
	"  if redis.call('TYPE', ek).ok == 'hash' then\n" \
	"    local dim = redis.call('HGET', ek, 'dim')\n" \
	"    if dim then\n" \
	"      local vb = redis.call('HSTRLEN', ek, 'vector')\n" \
	"      nb = redis.call('HSTRLEN', ek, 'query') + redis.call('HSTRLEN', ek, 'answer')\n" \
	"           + redis.call('HSTRLEN', ek, 'metadata') + vb\n" \
	"      if int(dim) > 0 and vb > 0 then nv = vb end\n" \
	"      local p = redis.call('PTTL', ek)\n" \
	"      if p >= 0 then at = now + p end\n" \
	"    end\n" \
	"  end\n" \
	"  local old, ob, ov = redis.call('HGET', H, id), 0, 0\n" \
	"  if old then\n" \
	"    local a, b = string.match(old, '^(%d+) (%d+)$')\n" \
	"    ob, ov = tonumber(a) or 0, tonumber(b) or 0\n" \
	"  end\n" \
	"  add('#n', (nb and 1 or 0) - (old and 1 or 0))\n" \
	"  add('#i', (nv > 0 and 1 or 0) - (ov > 0 and 1 or 0))\n" \
	"  add('#b', (nb or 0) - ob)\n" \
	"  add('#v', nv - ov)\n" \
	"  if nb then\n" \
	"    redis.call('HSET', H, id, nb .. ' ' .. nv)\n" \
	"    redis.call('ZADD', Z, at or '+inf', id)\n" \
	"    if at then keep(Z, at) keep(H, at) end\n" \
	"  else\n" \
	"    if old then redis.call('HDEL', H, id) end\n" \
	"    redis.call('ZREM', Z, id)\n" \
	"    if int(redis.call('HGET', H, '#n')) <= 0 then redis.call('DEL', H) end\n" \
	"  end\n" \
	"end\n" \
	"local function purge(max)\n" \
	"  if max <= 0 then return end\n" \
	"  local ids = redis.call('ZRANGEBYSCORE', Z, '-inf', now, 'LIMIT', 0, max)\n" \
	"  for _, id in ipairs(ids) do sync(id) end\n" \
	"end\n"

/* ARGV[2] how many expired ids to untrack afterwards, ARGV[3..] ids to sync. */
static const char lua_sync[] = ACCT_LUA_PRELUDE
	"for i = 3, #ARGV do sync(ARGV[i]) end\n"
	"purge(tonumber(ARGV[2]))\n"
	"return #ARGV - 2\n";

/* The accounting keys of one tenant, malloc'd. */
struct acct_keys {
	char *live, *size, *eprefix;
};

static void acct_keys_finish(struct acct_keys *k)
{
	free(k->live);
	free(k->size);
	free(k->eprefix);
	memset(k, 0, sizeof(*k));
}

static bool acct_keys_make(const struct store *s, const char *tenant, struct acct_keys *k)
{
	k->live = store_tenant_key(s, "live", tenant);
	k->size = store_tenant_key(s, "size", tenant);
	k->eprefix = store_key(s, "e", tenant, "");
	if (k->live && k->size && k->eprefix)
		return true;
	acct_keys_finish(k);
	return false;
}

bool store_acct_append_sync(struct store *s, const char *tenant, const char *id)
{
	struct acct_keys k;
	if (!acct_keys_make(s, tenant, &k))
		return false;
	const char *argv[] = { "EVAL", lua_sync, "2", k.live, k.size, k.eprefix,
			       ACCT_PURGE_ON_WRITE, id };
	bool ok = redisAppendCommandArgv(s->c, 8, argv, NULL) == REDIS_OK;
	acct_keys_finish(&k);
	return ok;
}

void store_acct_check(const redisReply *exec, size_t pos)
{
	if (exec && pos < exec->elements && exec->element[pos]->type == REDIS_REPLY_ERROR)
		sg_log(SG_LOG_WARN, "stats: entry accounting refused by redis: %.200s",
		       exec->element[pos]->str);
}
