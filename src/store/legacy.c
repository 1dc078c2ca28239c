/* Moving the cache of the layout before slot buckets into the bucket layout.
 *
 * Versions before the slot buckets named keys "{prefix}{kind}:{tenant}:..."
 * with no hash tag. Conversations are moved one by one when they are first
 * read (store.c, history_adopt); everything else moves here, once, when a
 * gateway starts on a single server or through Sentinel (only those can
 * hold keys of the old layout: it predates cluster mode):
 *
 *   entries   e:{tenant}:{id}   put again with store_entry_put (exact key,
 *             tag memberships, accounting, event, archive record), under the
 *             same id with its last four hex digits fitted to the exact
 *             key's bucket; its TTL, hit count and leaderboard row carried
 *             over; then the old entry, its old exact key and its old tag
 *             and leaderboard memberships are deleted in one EVAL
 *   stats, cal, ts    counters merged (HINCRBY) into the new key, TTL kept,
 *             old key deleted, in one EVAL: counted once, whatever crashes
 *   emb       the embedding copied with its TTL, old key deleted
 *   x, tag, top, live, size    derived from entries: deleted once every
 *             entry has moved
 *
 * Several gateways starting at once may run it together: each step is
 * idempotent (an entry put twice is the same entry, counted once; a merge
 * runs only while its old key exists). When a pass completes, the marker key
 * {prefix}layout says so and later starts skip the SCANs. An empty database
 * (a new deployment) is neither scanned nor marked.
 * Part of the store module: key names are built only in src/store/. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/log.h"
#include "semgate/store/layout.h"
#include "semgate/store/ops.h"
#include "priv.h"

#define MARKER_VALUE "buckets"
/* Most tags an old entry's memberships are removed from. */
#define LEGACY_TAGS_MAX 32

/* After the entry is put again: KEYS[1] new entry, KEYS[2] its leaderboard
 * part, KEYS[3] the old entry, KEYS[4] the old exact key, KEYS[5] the old
 * leaderboard, KEYS[6] the archive stream, KEYS[7..] the old tag sets.
 * ARGV[1] old hit count, ARGV[2] old id, ARGV[3] new id, ARGV[4] the
 * leaderboard's TTL, ARGV[5] "1" when there is an old exact key, ARGV[6]
 * "1" with the archive on, ARGV[7] the stream's MAXLEN, ARGV[8] the tenant.
 * The hit count is raised to the old one, never added: a second gateway
 * moving the same entry leaves the same count. */
static const char lua_finish[] =
	"local n = tonumber(ARGV[1]) or 0\n"
	"if n > 0 and redis.call('EXISTS', KEYS[1]) == 1 then\n"
	"  local cur = tonumber(redis.call('HGET', KEYS[1], 'hits') or '0') or 0\n"
	"  if cur < n then\n"
	"    redis.call('HSET', KEYS[1], 'hits', n)\n"
	"    if ARGV[6] == '1' then\n"
	"      redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'r',\n"
	"        cjson.encode({k='hits', t=ARGV[8], id=ARGV[3], n=n}))\n"
	"    end\n"
	"  end\n"
	"  redis.call('ZADD', KEYS[2], 'GT', n, ARGV[3])\n"
	"  if redis.call('TTL', KEYS[2]) < tonumber(ARGV[4]) then\n"
	"    redis.call('EXPIRE', KEYS[2], ARGV[4])\n"
	"  end\n"
	"end\n"
	"if ARGV[5] == '1' and redis.call('TYPE', KEYS[4]).ok == 'string' then\n"
	"  local v = redis.call('GET', KEYS[4])\n"
	"  local id = ARGV[2]\n"
	"  local head = string.sub(v, 1, #id + 1)\n"
	"  if head == id .. '\\n' or head == id .. ':' then redis.call('DEL', KEYS[4]) end\n"
	"end\n"
	"if redis.call('TYPE', KEYS[5]).ok == 'zset' then redis.call('ZREM', KEYS[5], ARGV[2]) end\n"
	"for i = 7, #KEYS do\n"
	"  if redis.call('TYPE', KEYS[i]).ok == 'set' then redis.call('SREM', KEYS[i], ARGV[2]) end\n"
	"end\n"
	"return redis.call('DEL', KEYS[3])\n";

/* KEYS[1] an old counter hash, KEYS[2] its new key; ARGV[1] a field not to
 * carry over ("" for none). Integer fields are added to the new key's, which
 * lives at least as long as the old key did; then the old key goes. 0 when
 * there was nothing to merge (another gateway did it). */
static const char lua_merge_hash[] =
	"if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end\n"
	"local existed = redis.call('EXISTS', KEYS[2]) == 1\n"
	"local kv = redis.call('HGETALL', KEYS[1])\n"
	"for i = 1, #kv, 2 do\n"
	"  if kv[i] ~= ARGV[1] and string.match(kv[i + 1], '^%-?%d+$') then\n"
	"    redis.call('HINCRBY', KEYS[2], kv[i], kv[i + 1])\n"
	"  end\n"
	"end\n"
	"local p = redis.call('PTTL', KEYS[1])\n"
	"if p > 0 and redis.call('EXISTS', KEYS[2]) == 1 then\n"
	"  local q = redis.call('PTTL', KEYS[2])\n"
	"  if not existed or (q >= 0 and q < p) then redis.call('PEXPIRE', KEYS[2], p) end\n"
	"end\n"
	"redis.call('DEL', KEYS[1])\n"
	"return 1\n";

/* KEYS[1] an old string, KEYS[2] its new key: copied with its TTL unless
 * the new key exists already (it is newer), then the old key goes. */
static const char lua_move_string[] =
	"if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end\n"
	"if redis.call('EXISTS', KEYS[2]) == 0 then\n"
	"  local p = redis.call('PTTL', KEYS[1])\n"
	"  local v = redis.call('GET', KEYS[1])\n"
	"  if p > 0 then redis.call('SET', KEYS[2], v, 'PX', p) else redis.call('SET', KEYS[2], v) end\n"
	"end\n"
	"redis.call('DEL', KEYS[1])\n"
	"return 1\n";

static bool tenant_ok(const char *t, size_t len)
{
	if (len == 0 || len > 64)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = t[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* Split an old-layout key "{prefix}{kind}:{tenant}[:{rest}]" (no hash tag)
 * into tenant and rest (NUL-terminated; rest "" when there is none). */
static bool legacy_split(const struct store *s, const char *kind, const char *key, size_t len,
			 char tenant[65], char *rest, size_t rcap)
{
	size_t plen = strlen(s->cfg->redis_prefix), klen = strlen(kind);
	if (len < plen + klen + 2 || memcmp(key, s->cfg->redis_prefix, plen) != 0 ||
	    memcmp(key + plen, kind, klen) != 0 || key[plen + klen] != ':')
		return false;
	const char *t = key + plen + klen + 1, *end = key + len;
	const char *colon = memchr(t, ':', (size_t)(end - t));
	size_t tlen = colon ? (size_t)(colon - t) : (size_t)(end - t);
	if (!tenant_ok(t, tlen))
		return false;
	memcpy(tenant, t, tlen);
	tenant[tlen] = '\0';
	const char *r = colon ? colon + 1 : end;
	size_t rlen = (size_t)(end - r);
	if (rlen >= rcap || memchr(r, '\0', rlen))
		return false;
	memcpy(rest, r, rlen);
	rest[rlen] = '\0';
	return true;
}

/* The value of field name in an HGETALL reply, or NULL. */
static const redisReply *hfield(const redisReply *h, const char *name)
{
	for (size_t i = 0; i + 1 < h->elements; i += 2)
		if (h->element[i]->type == REDIS_REPLY_STRING &&
		    strcmp(h->element[i]->str, name) == 0 &&
		    h->element[i + 1]->type == REDIS_REPLY_STRING)
			return h->element[i + 1];
	return NULL;
}

static const char *hstr(const redisReply *h, const char *name)
{
	const redisReply *v = hfield(h, name);
	return v ? v->str : "";
}

/* Put one old entry (its HGETALL h and PTTL ttl) again in the new layout,
 * then delete what named the old one. SG_OK also for an entry that cannot
 * move (counted as skipped and left to its TTL); an error only when Redis
 * failed. */
static enum sg_err move_entry(struct store *s, const char *tenant, const char *old_id,
			      const redisReply *h, long long pttl, struct store_legacy_counts *n,
			      struct sg_error *e)
{
	const redisReply *dimr = hfield(h, "dim"), *query = hfield(h, "query"),
			 *answer = hfield(h, "answer"), *vec = hfield(h, "vector"),
			 *meta = hfield(h, "metadata");
	const char *exact = hstr(h, "exact"), *tagstr = hstr(h, "tags");
	if (!dimr || !query || !answer || pttl == -2) {
		n->skipped++;
		return SG_OK;
	}
	char id[STORE_ID_MAX + 1];
	snprintf(id, sizeof(id), "%s", old_id);
	if (*exact) {
		store_entry_id_fit(tenant, exact, id);
		if (store_bucket_of(tenant, id) != store_bucket_of(tenant, exact)) {
			sg_log(SG_LOG_WARN, "old-layout entry %.64s of tenant %.64s: its id cannot "
			       "be fitted to its exact key's bucket; left to its TTL", old_id, tenant);
			n->skipped++;
			return SG_OK;
		}
	}
	long dim = strtol(dimr->str, NULL, 10);
	float *v = NULL;
	if (dim > 0 && dim <= STORE_DIM_MAX && vec && vec->len == sizeof(float) * (size_t)dim) {
		if (!(v = malloc(vec->len)))
			return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		memcpy(v, vec->str, vec->len);
	} else {
		dim = 0;
	}
	/* the tags, split (each is [A-Za-z0-9._:-], never a comma) */
	char *tagbuf = strdup(tagstr);
	const char *tags[LEGACY_TAGS_MAX];
	size_t ntags = 0;
	if (!tagbuf) {
		free(v);
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	}
	for (char *save = NULL, *t = strtok_r(tagbuf, ",", &save); t && ntags < LEGACY_TAGS_MAX;
	     t = strtok_r(NULL, ",", &save))
		tags[ntags++] = t;
	const char *kind = hstr(h, "kind");
	struct store_entry en = {
		.id = id,
		.query = query->str,
		.query_len = query->len,
		.answer = answer->str,
		.answer_len = answer->len,
		.scope = hstr(h, "scope"),
		.ns = hstr(h, "namespace"),
		.exact = *exact ? exact : NULL,
		.vec = v,
		.dim = (int)dim,
		.emb_model = hstr(h, "model"),
		.created = strtoll(hstr(h, "created"), NULL, 10),
		.tokens = strtoll(hstr(h, "tokens"), NULL, 10),
		/* an entry without a TTL (set by hand) gets the cache's */
		.ttl_s = pttl > 0 ? (pttl + 999) / 1000 : s->cfg->cache_ttl,
		.kind = strcmp(kind, "text") == 0 ? "text" : "chat",
		.tags = ntags ? tags : NULL,
		.ntags = ntags,
		.metadata = meta && meta->len ? meta->str : NULL,
		.metadata_len = meta ? meta->len : 0,
	};
	enum sg_err rc = store_entry_put(s, tenant, &en, e);
	free(v);
	if (rc != SG_OK) {
		free(tagbuf);
		if (rc == SG_ERR_REDIS || rc == SG_ERR_NOMEM)
			return rc;
		sg_log(SG_LOG_WARN, "old-layout entry %.64s of tenant %.64s not moved: %s", old_id,
		       tenant, e->msg);
		n->skipped++;
		return SG_OK;
	}

	/* what named the old entry */
	unsigned bucket = store_bucket_of(tenant, id);
	char *keys[7 + LEGACY_TAGS_MAX] = { 0 };
	int nk = 0;
	keys[nk++] = store_key(s, "e", tenant, id);
	keys[nk++] = store_tenant_key_in(s, "top", bucket, tenant);
	keys[nk++] = store_legacy_key(s, "e", tenant, old_id);
	keys[nk++] = store_legacy_key(s, "x", tenant, *exact ? exact : "-");
	keys[nk++] = NULL;
	bool arch = store_archive_on(s->cfg);
	keys[nk++] = arch ? store_archive_stream_key(s, tenant, id) : store_key(s, "e", tenant, id);
	for (size_t i = 0; i < ntags; i++)
		keys[nk++] = store_legacy_key(s, "tag", tenant, tags[i]);
	if (asprintf(&keys[4], "%stop:%s", s->cfg->redis_prefix, tenant) < 0)
		keys[4] = NULL;
	bool oom = false;
	for (int i = 0; i < nk; i++)
		oom |= keys[i] == NULL;
	char nkeys[16], ttl[24], smax[24];
	snprintf(nkeys, sizeof(nkeys), "%d", nk);
	snprintf(ttl, sizeof(ttl), "%lld", s->cfg->cache_ttl);
	snprintf(smax, sizeof(smax), "%lld", s->cfg->archive_stream_max);
	if (oom) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	} else {
		const char *argv[3 + 7 + LEGACY_TAGS_MAX + 8];
		int argc = 0;
		argv[argc++] = "EVAL";
		argv[argc++] = lua_finish;
		argv[argc++] = nkeys;
		for (int i = 0; i < nk; i++)
			argv[argc++] = keys[i];
		argv[argc++] = hstr(h, "hits");
		argv[argc++] = old_id;
		argv[argc++] = id;
		argv[argc++] = ttl;
		argv[argc++] = *exact ? "1" : "0";
		argv[argc++] = arch ? "1" : "0";
		argv[argc++] = smax;
		argv[argc++] = tenant;
		rc = store_run_status(s, argc, argv, e);
	}
	for (int i = 0; i < nk; i++)
		free(keys[i]);
	free(tagbuf);
	if (rc == SG_OK) {
		n->entries++;
		if (n->entries % 10000 == 0)
			sg_log(SG_LOG_INFO, "old-layout cache: %zu entries moved so far",
			       n->entries);
	}
	return rc;
}

static enum sg_err entry_batch(struct store *s, redisReply *keys, void *ud, struct sg_error *e)
{
	struct store_legacy_counts *n = ud;
	enum sg_err rc = store_conn(s, e);
	if (rc != SG_OK)
		return rc;
	for (size_t i = 0; i < keys->elements; i++) {
		redisReply *k = keys->element[i];
		redisAppendCommand(s->c, "HGETALL %b", k->str, k->len);
		redisAppendCommand(s->c, "PTTL %b", k->str, k->len);
	}
	/* read every reply first: moving an entry runs commands of its own */
	redisReply **h = calloc(2 * keys->elements + 1, sizeof(*h));
	if (!h) {
		store_drop(s);
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	}
	for (size_t i = 0; i < keys->elements; i++)
		if (!store_read_two(s, &h[2 * i], &h[2 * i + 1], e)) {
			rc = SG_ERR_REDIS;
			break;
		}
	for (size_t i = 0; i < keys->elements && rc == SG_OK; i++) {
		redisReply *k = keys->element[i], *hr = h[2 * i], *tr = h[2 * i + 1];
		char tenant[65], id[STORE_ID_MAX + 1];
		if (k->type != REDIS_REPLY_STRING ||
		    !legacy_split(s, "e", k->str, k->len, tenant, id, sizeof(id)) ||
		    !store_codec_id_ok(id, strlen(id)) || hr->type != REDIS_REPLY_ARRAY ||
		    tr->type != REDIS_REPLY_INTEGER) {
			n->skipped++;
			continue;
		}
		rc = move_entry(s, tenant, id, hr, tr->integer, n, e);
	}
	for (size_t i = 0; i < 2 * keys->elements; i++)
		if (h[i])
			freeReplyObject(h[i]);
	free(h);
	return rc;
}

/* The new name of an old counter hash or embedding, or NULL (not one of
 * ours: left alone). */
static char *new_name(struct store *s, const char *kind, const char *tenant, const char *rest)
{
	if (strcmp(kind, "stats") == 0)
		return *rest ? NULL : store_tenant_key_in(s, "stats", store_series_bucket(tenant, 0),
							   tenant);
	if (strcmp(kind, "ts") == 0) {
		/* "m:<minute>" or "h:<hour>", in the bucket of the hour */
		char *end = NULL;
		if ((rest[0] != 'm' && rest[0] != 'h') || rest[1] != ':')
			return NULL;
		long long b = strtoll(rest + 2, &end, 10);
		if (!end || *end || b <= 0)
			return NULL;
		return store_key_in(s, "ts", store_series_bucket(tenant, rest[0] == 'h' ? b * 60 : b),
				    tenant, rest);
	}
	return *rest ? store_key(s, kind, tenant, rest) : NULL; /* cal, emb */
}

struct other_pass {
	const char *kind;
	struct store_legacy_counts *n;
};

static enum sg_err other_batch(struct store *s, redisReply *keys, void *ud, struct sg_error *e)
{
	struct other_pass *op = ud;
	bool string = strcmp(op->kind, "emb") == 0;
	enum sg_err rc = SG_OK;
	for (size_t i = 0; i < keys->elements && rc == SG_OK; i++) {
		redisReply *k = keys->element[i];
		char tenant[65], rest[512];
		char *nk = NULL;
		if (k->type != REDIS_REPLY_STRING ||
		    !legacy_split(s, op->kind, k->str, k->len, tenant, rest, sizeof(rest)) ||
		    !(nk = new_name(s, op->kind, tenant, rest))) {
			op->n->skipped++;
			continue;
		}
		const char *argv[] = { "EVAL", string ? lua_move_string : lua_merge_hash, "2",
				       k->str, nk, strcmp(op->kind, "stats") == 0 ?
				       "entries_tracked" : "" };
		rc = store_run_status(s, string ? 5 : 6, argv, e);
		free(nk);
		if (rc == SG_OK)
			op->n->moved++;
	}
	return rc;
}

static enum sg_err unlink_batch(struct store *s, redisReply *keys, void *ud, struct sg_error *e)
{
	struct other_pass *op = ud;
	enum sg_err rc = SG_OK;
	for (size_t i = 0; i < keys->elements && rc == SG_OK; i++) {
		redisReply *k = keys->element[i];
		if (k->type != REDIS_REPLY_STRING)
			continue;
		const char *argv[] = { "UNLINK", k->str };
		rc = store_run_status(s, 2, argv, e);
		if (rc == SG_OK)
			op->n->removed++;
	}
	return rc;
}

/* SCAN every key "{prefix}{kind}:" not followed by a hash tag. */
static enum sg_err scan_old(struct store *s, const char *kind, store_keys_fn fn, void *ud,
			    struct sg_error *e)
{
	char *pattern = NULL;
	if (asprintf(&pattern, "%s%s:[^{]*", s->cfg->redis_prefix, kind) < 0)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	enum sg_err rc = store_scan_every_node(s, pattern, fn, ud, e);
	free(pattern);
	return rc;
}

enum sg_err store_legacy_migrate(struct store *s, struct store_legacy_counts *n,
				 struct sg_error *e)
{
	memset(n, 0, sizeof(*n));
	/* a cluster never holds the old layout (it predates cluster mode) */
	if (s->cluster)
		return SG_OK;
	char *marker = NULL;
	if (asprintf(&marker, "%slayout", s->cfg->redis_prefix) < 0)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	const char *get[] = { "GET", marker };
	redisReply *r = store_run(s, 2, get, NULL, e);
	enum sg_err rc = r ? SG_OK : SG_ERR_REDIS;
	bool done = r && r->type == REDIS_REPLY_STRING && strcmp(r->str, MARKER_VALUE) == 0;
	if (r)
		freeReplyObject(r);
	if (rc != SG_OK || done) {
		n->already = done;
		free(marker);
		return rc;
	}
	/* an empty database (a new deployment) has nothing to move: it is
	 * left as it is, without a marker */
	const char *dbsize[] = { "DBSIZE" };
	if (!(r = store_run(s, 1, dbsize, NULL, e))) {
		free(marker);
		return SG_ERR_REDIS;
	}
	bool empty = r->type == REDIS_REPLY_INTEGER && r->integer == 0;
	freeReplyObject(r);
	if (empty) {
		free(marker);
		return SG_OK;
	}
	rc = scan_old(s, "e", entry_batch, n, e);
	static const char *const counted[] = { "stats", "cal", "ts", "emb" };
	for (size_t i = 0; i < sizeof(counted) / sizeof(counted[0]) && rc == SG_OK; i++) {
		struct other_pass op = { .kind = counted[i], .n = n };
		rc = scan_old(s, counted[i], other_batch, &op, e);
	}
	/* rebuilt from the entries, which have all moved */
	static const char *const derived[] = { "x", "tag", "top", "live", "size" };
	for (size_t i = 0; i < sizeof(derived) / sizeof(derived[0]) && rc == SG_OK; i++) {
		struct other_pass op = { .kind = derived[i], .n = n };
		rc = scan_old(s, derived[i], unlink_batch, &op, e);
	}
	if (rc == SG_OK) {
		const char *set[] = { "SET", marker, MARKER_VALUE };
		rc = store_run_status(s, 3, set, e);
	}
	free(marker);
	if (rc == SG_OK && (n->entries || n->moved || n->removed || n->skipped))
		sg_log(SG_LOG_INFO, "old-layout cache moved to the slot-bucket layout: %zu entries, "
		       "%zu counters and embeddings, %zu derived keys removed, %zu keys left to "
		       "their TTL", n->entries, n->moved, n->removed, n->skipped);
	return rc;
}
