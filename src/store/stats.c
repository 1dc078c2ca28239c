/* Per-tenant stats in Redis: the counters {prefix}stats:{tenant} (HINCRBY
 * only, no TTL) and the entry accounting that lets GET /v1/cache/stats
 * answer in one EVAL whatever the number of entries:
 *
 *   {prefix}live:{tenant}  sorted set: entry id -> expiry (unix ms, Redis's clock)
 *   {prefix}size:{tenant}  hash: entry id -> "<bytes> <vector bytes if indexed>",
 *                          and the totals #n (entries), #i (indexed), #b, #v
 *
 * Every store and delete queues, in its own MULTI, one EVAL of lua_sync that
 * reads the entry as Redis now holds it and moves the totals by the
 * difference, so a store, an overwrite, a delete or a replay of either is
 * counted exactly once. Entries that expire by TTL are untracked by the same
 * function when their expiry has passed: a few per write, up to
 * ACCT_PURGE_ON_READ per stats read. The marker field ACCT_MARKER in the
 * stats hash says the accounting covers every entry; without it (data of a
 * version before this layout) the first stats read builds it with one SCAN.
 * Part of the store module: key names are built only in src/store/. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "semgate/core/digest.h"
#include "semgate/core/log.h"
#include "semgate/store/layout.h"
#include "semgate/store/ops.h"
#include "priv.h"

/* Expired ids untracked by every store or delete: more than the one id a
 * store adds, so the backlog of expired ids drains under any write load. */
#define ACCT_PURGE_ON_WRITE "4"
/* Most expired ids untracked by one stats read (bounds its work). */
#define ACCT_PURGE_ON_READ "1000"
/* Field of {prefix}stats:{tenant}: 1 once the accounting covers every entry. */
#define ACCT_MARKER "entries_tracked"

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

/* KEYS[3] the stats hash; ARGV[2] purge bound, ARGV[3] the marker field.
 * 0 when the accounting must be built first (never built, or one of its
 * two keys lost, e.g. evicted: then both are dropped to be built afresh);
 * otherwise {HGETALL stats, #n, #i, #b, #v} after untracking what expired. */
static const char lua_read[] = ACCT_LUA_PRELUDE
	"if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 0 then return 0 end\n"
	"if redis.call('EXISTS', Z) ~= redis.call('EXISTS', H) then\n"
	"  redis.call('DEL', Z, H)\n"
	"  redis.call('HDEL', KEYS[3], ARGV[3])\n"
	"  return 0\n"
	"end\n"
	"purge(tonumber(ARGV[2]))\n"
	"return {redis.call('HGETALL', KEYS[3]), redis.call('HGET', H, '#n'),\n"
	"        redis.call('HGET', H, '#i'), redis.call('HGET', H, '#b'),\n"
	"        redis.call('HGET', H, '#v')}\n";

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

/* Bucket b's part of the accounting: it tracks the entries of bucket b. */
static bool acct_keys_make(const struct store *s, const char *tenant, unsigned b,
			   struct acct_keys *k)
{
	k->live = store_tenant_key_in(s, "live", b, tenant);
	k->size = store_tenant_key_in(s, "size", b, tenant);
	k->eprefix = store_key_in(s, "e", b, tenant, "");
	if (k->live && k->size && k->eprefix)
		return true;
	acct_keys_finish(k);
	return false;
}

/* Every write runs lua_sync, so it goes by its SHA1: Redis then neither
 * reads nor hashes the 2 KB body each time (DESIGN-NOTES, "Stats
 * accounting"). A Redis that has not seen it yet (new, restarted, SCRIPT
 * FLUSH) answers NOSCRIPT, and store_acct_sync_now then runs the body,
 * which also caches it there. */
static char sync_sha[41];
static pthread_once_t sync_sha_once = PTHREAD_ONCE_INIT;

static void sync_sha_make(void)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	if (EVP_Digest(lua_sync, sizeof(lua_sync) - 1, md, &len, EVP_sha1(), NULL) != 1 ||
	    len != 20)
		return; /* left empty: EVAL with the body */
	sg_hex(sync_sha, md, len);
}

const char *store_acct_sync_sha(void)
{
	pthread_once(&sync_sha_once, sync_sha_make);
	return sync_sha;
}

bool store_acct_append_sync(struct store *s, const char *tenant, const char *id)
{
	struct acct_keys k;
	if (!acct_keys_make(s, tenant, store_bucket_of(tenant, id), &k))
		return false;
	const char *sha = store_acct_sync_sha();
	const char *argv[] = { sha[0] ? "EVALSHA" : "EVAL", sha[0] ? sha : lua_sync, "2",
			       k.live, k.size, k.eprefix, ACCT_PURGE_ON_WRITE, id };
	bool ok = redisAppendCommandArgv(s->c, 8, argv, NULL) == REDIS_OK;
	acct_keys_finish(&k);
	return ok;
}

static enum sg_err sync_ids(struct store *s, const struct acct_keys *k,
			    const char *const *ids, size_t n, struct sg_error *e);

bool store_acct_check(const redisReply *exec, size_t pos)
{
	if (!exec || pos >= exec->elements || exec->element[pos]->type != REDIS_REPLY_ERROR)
		return false;
	const char *why = exec->element[pos]->str;
	if (strncmp(why, "NOSCRIPT", 8) == 0)
		return true;
	sg_log(SG_LOG_WARN, "stats: entry accounting refused by redis: %.200s", why);
	return false;
}

void store_acct_sync_now(struct store *s, const char *tenant, const char *id)
{
	struct acct_keys k;
	struct sg_error e = { 0 };
	if (!acct_keys_make(s, tenant, store_bucket_of(tenant, id), &k)) {
		sg_log(SG_LOG_WARN, "stats: out of memory syncing an entry's accounting");
		return;
	}
	/* by its body, which also caches it in that Redis; sync is idempotent */
	if (sync_ids(s, &k, &id, 1, &e) != SG_OK)
		sg_log(SG_LOG_WARN, "stats: entry accounting refused by redis: %.200s", e.msg);
	acct_keys_finish(&k);
}

/* ---- building the accounting from the entries (once per tenant) ---- */

/* Sync ids[0..n) in one EVAL. */
static enum sg_err sync_ids(struct store *s, const struct acct_keys *k,
			    const char *const *ids, size_t n, struct sg_error *e)
{
	if (n == 0)
		return SG_OK;
	const char **argv = calloc(n + 7, sizeof(*argv));
	if (!argv)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	const char *head[] = { "EVAL", lua_sync, "2", k->live, k->size, k->eprefix, "0" };
	memcpy(argv, head, sizeof(head));
	memcpy(argv + 7, ids, n * sizeof(*ids));
	enum sg_err rc = store_run_status(s, (int)(n + 7), argv, e);
	free(argv);
	return rc;
}

/* The accounting keys of every bucket of one tenant. */
struct acct_all {
	struct acct_keys k[STORE_BUCKETS];
	char *stats[STORE_BUCKETS];
};

static void acct_all_finish(struct acct_all *a)
{
	for (unsigned b = 0; b < STORE_BUCKETS; b++) {
		acct_keys_finish(&a->k[b]);
		free(a->stats[b]);
		a->stats[b] = NULL;
	}
}

static bool acct_all_make(const struct store *s, const char *tenant, struct acct_all *a)
{
	memset(a, 0, sizeof(*a));
	for (unsigned b = 0; b < STORE_BUCKETS; b++)
		if (!acct_keys_make(s, tenant, b, &a->k[b]) ||
		    !(a->stats[b] = store_tenant_key_in(s, "stats", b, tenant))) {
			acct_all_finish(a);
			return false;
		}
	return true;
}

/* Sync every entry of one SCAN batch, one EVAL per bucket met (each EVAL
 * touches one bucket's keys only). */
static enum sg_err build_batch(struct store *s, const char *tenant,
			       const struct store_tenant_entry *en, size_t n, void *ud,
			       struct sg_error *e)
{
	struct acct_all *a = ud;
	const char **ids = calloc(n + 1, sizeof(*ids));
	unsigned char *bk = calloc(n + 1, 1);
	enum sg_err rc = SG_OK;
	if (!ids || !bk)
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	for (size_t i = 0; rc == SG_OK && i < n; i++)
		bk[i] = (unsigned char)store_bucket_of(tenant, en[i].id);
	for (unsigned b = 0; rc == SG_OK && b < STORE_BUCKETS; b++) {
		size_t m = 0;
		for (size_t i = 0; i < n; i++)
			if (bk[i] == b)
				ids[m++] = en[i].id;
		rc = sync_ids(s, &a->k[b], ids, m, e);
	}
	free(ids);
	free(bk);
	return rc;
}

/* Sync every id the live set of one bucket tracks (ZSCAN), so ids whose
 * entry went without a delete (evicted, deleted behind the gateway's back)
 * are untracked now rather than when their expiry passes. */
static enum sg_err build_tracked(struct store *s, const struct acct_keys *k,
				 struct sg_error *e)
{
	char cursor[32] = "0";
	enum sg_err rc = SG_OK;
	do {
		const char *argv[] = { "ZSCAN", k->live, cursor, "COUNT", "1000" };
		redisReply *r = NULL;
		if ((rc = store_scan_step(s, 5, argv, cursor, &r, e)) != SG_OK)
			break;
		redisReply *m = r->element[1];
		const char **ids = calloc(m->elements / 2 + 1, sizeof(*ids));
		size_t n = 0;
		if (!ids) {
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		} else {
			for (size_t i = 0; i + 1 < m->elements; i += 2)
				if (m->element[i]->type == REDIS_REPLY_STRING)
					ids[n++] = m->element[i]->str;
			rc = sync_ids(s, k, ids, n, e);
		}
		free(ids);
		freeReplyObject(r);
	} while (rc == SG_OK && strcmp(cursor, "0") != 0);
	return rc;
}

/* Track every entry the tenant has (SCAN on every node: O(keyspace), once)
 * and untrack every tracked id that has no entry, then set the marker in
 * every bucket's stats hash. Idempotent, and safe beside stores, deletes
 * and other builds: each sync is atomic and moves the totals only by what
 * differs. */
static enum sg_err build(struct store *s, const char *tenant, struct acct_all *a,
			 struct sg_error *e)
{
	enum sg_err rc = store_scan_tenant(s, tenant, build_batch, a, e);
	for (unsigned b = 0; rc == SG_OK && b < STORE_BUCKETS; b++)
		rc = build_tracked(s, &a->k[b], e);
	if (rc != SG_OK)
		return rc;
	if ((rc = store_conn(s, e)) != SG_OK)
		return rc;
	for (unsigned b = 0; b < STORE_BUCKETS; b++) {
		const char *argv[] = { "HSET", a->stats[b], ACCT_MARKER, "1" };
		redisAppendCommandArgv(s->c, 4, argv, NULL);
	}
	rc = store_read_n(s, STORE_BUCKETS, e);
	if (rc == SG_OK)
		sg_log(SG_LOG_INFO, "stats: built the entry accounting of tenant %s", tenant);
	return rc;
}

/* ---- reading ---- */

static void stats_field(struct store_stats *st, const char *name, long long v)
{
	static const struct {
		const char *name;
		size_t off;
	} fields[] = {
		{ "lookups", offsetof(struct store_stats, lookups) },
		{ "hits_exact", offsetof(struct store_stats, hits_exact) },
		{ "hits_semantic", offsetof(struct store_stats, hits_semantic) },
		{ "misses", offsetof(struct store_stats, misses) },
		{ "tokens_saved_prompt", offsetof(struct store_stats, tokens_prompt) },
		{ "tokens_saved_completion", offsetof(struct store_stats, tokens_completion) },
	};
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		if (strcmp(name, fields[i].name) == 0)
			*(long long *)((char *)st + fields[i].off) += v;
}

/* One EVAL of lua_read per bucket, pipelined (each touches one bucket),
 * summed into out. *built false (SG_OK) when some bucket's accounting must
 * be built first. */
static enum sg_err read_once(struct store *s, const struct acct_all *a,
			     struct store_stats *out, bool *built, struct sg_error *e)
{
	*built = true;
	memset(out, 0, sizeof(*out));
	enum sg_err rc = store_conn(s, e);
	if (rc != SG_OK)
		return rc;
	for (unsigned b = 0; b < STORE_BUCKETS; b++) {
		const char *argv[] = { "EVAL", lua_read, "3", a->k[b].live, a->k[b].size,
				       a->stats[b], a->k[b].eprefix, ACCT_PURGE_ON_READ,
				       ACCT_MARKER };
		redisAppendCommandArgv(s->c, 9, argv, NULL);
	}
	for (unsigned b = 0; b < STORE_BUCKETS; b++) {
		redisReply *r = store_read_reply(s, e);
		if (!r)
			return SG_ERR_REDIS;
		if (rc != SG_OK) {
			/* read the rest, so the connection stays in step */
		} else if (r->type == REDIS_REPLY_ERROR) {
			rc = store_reply_error(r, e);
		} else if (r->type == REDIS_REPLY_ARRAY && r->elements == 5 &&
			   r->element[0]->type == REDIS_REPLY_ARRAY) {
			redisReply *h = r->element[0];
			for (size_t i = 0; i + 1 < h->elements; i += 2)
				if (h->element[i]->type == REDIS_REPLY_STRING)
					stats_field(out, h->element[i]->str,
						    store_reply_ll(h->element[i + 1]));
			out->entries += store_reply_ll(r->element[1]);
			out->indexed += store_reply_ll(r->element[2]);
			out->bytes += store_reply_ll(r->element[3]);
			out->vector_bytes += store_reply_ll(r->element[4]);
		} else if (r->type == REDIS_REPLY_INTEGER) {
			*built = false;
		} else {
			rc = sg_error_set(e, SG_ERR_REDIS, "unexpected stats reply");
		}
		freeReplyObject(r);
	}
	return rc;
}

enum sg_err store_stats_read(struct store *s, const char *tenant,
			     struct store_stats *out, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	struct acct_all *a = malloc(sizeof(*a));
	if (!a || !acct_all_make(s, tenant, a)) {
		free(a);
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	}
	enum sg_err rc = SG_OK;
	bool built = false;
	/* a second round only after a build; a build undone at once again
	 * (the marker dropped by something else) is an error, not a loop */
	for (int round = 0; round < 2 && rc == SG_OK && !built; round++) {
		rc = read_once(s, a, out, &built, e);
		if (rc == SG_OK && !built && round == 0)
			rc = build(s, tenant, a, e);
	}
	if (rc == SG_OK && !built)
		rc = sg_error_set(e, SG_ERR_REDIS, "the entry accounting of the tenant was reset "
				  "while it was being built; try again");
	if (rc != SG_OK)
		memset(out, 0, sizeof(*out));
	acct_all_finish(a);
	free(a);
	return rc;
}
