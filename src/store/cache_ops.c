/* Cache administration in Redis: reading and deleting entries, invalidation
 * by namespace and tag, hit/miss counters and the leaderboard (the stats
 * read and its entry accounting are in stats.c). Part of the store module;
 * keys touched here: {prefix}e:, x:, tag:, top:{tenant}, stats:{tenant},
 * the accounting keys (through stats.c) and the events channel. Iterates
 * with SCAN and SSCAN only, never KEYS, and never creates a key without a
 * TTL except the stats hash. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/store/layout.h"
#include "semgate/store/ops.h"
#include "codec.h"
#include "priv.h"

/* Most entries deleted in one MULTI/EXEC. */
#define DELETE_BATCH 256

/* Delete the exact key only while it still names this entry: a later entry
 * for the same question may own it now. Values are "<id>\n..." or
 * "<id>:text\n...". */
static const char lua_del_exact[] =
	"local v = redis.call('GET', KEYS[1]) "
	"if v then local h = string.sub(v, 1, #ARGV[1] + 1) "
	"if h == ARGV[1] .. '\\n' or h == ARGV[1] .. ':' then "
	"return redis.call('DEL', KEYS[1]) end end return 0";

/* Count a hit only on an entry that still exists: HINCRBY would otherwise
 * create a hash without a TTL. */
static const char lua_hit[] =
	"if redis.call('EXISTS', KEYS[1]) == 1 then "
	"return redis.call('HINCRBY', KEYS[1], 'hits', ARGV[1]) end return 0";

/* The same with the archive on: the entry's new hit count (absolute, so
 * replaying the record is harmless) goes to the archive stream KEYS[2].
 * One record per entry per accounting batch, not one per hit. */
static const char lua_hit_archive[] =
	"if redis.call('EXISTS', KEYS[1]) == 1 then "
	"local n = redis.call('HINCRBY', KEYS[1], 'hits', ARGV[1]) "
	"redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'r', "
	"cjson.encode({k='hits', t=ARGV[3], id=ARGV[4], n=n})) "
	"return n end return 0";

static char *dup_reply(const redisReply *r, size_t *len)
{
	const char *p = r && r->type == REDIS_REPLY_STRING ? r->str : "";
	size_t n = r && r->type == REDIS_REPLY_STRING ? r->len : 0;
	char *out = malloc(n + 1);
	if (!out)
		return NULL;
	memcpy(out, p, n);
	out[n] = '\0';
	if (len)
		*len = n;
	return out;
}

enum sg_err store_scan_step(struct store *s, int argc, const char **argv, char cursor[32],
			    redisReply **out, struct sg_error *e)
{
	*out = NULL;
	redisReply *r = store_run(s, argc, argv, NULL, e);
	if (!r)
		return SG_ERR_REDIS;
	if (r->type == REDIS_REPLY_ERROR) {
		enum sg_err rc = store_reply_error(r, e);
		freeReplyObject(r);
		return rc;
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
	    r->element[0]->type != REDIS_REPLY_STRING ||
	    r->element[1]->type != REDIS_REPLY_ARRAY || r->element[0]->len >= 32) {
		freeReplyObject(r);
		return sg_error_set(e, SG_ERR_REDIS, "unexpected %s reply", argv[0]);
	}
	memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
	*out = r;
	return SG_OK;
}

/* ---- reading ---- */

void store_entry_view_finish(struct store_entry_view *v)
{
	if (!v)
		return;
	free(v->query);
	free(v->answer);
	free(v->metadata);
	free(v->ns);
	free(v->scope);
	free(v->kind);
	free(v->tags);
	free(v->model);
	free(v->refused);
	memset(v, 0, sizeof(*v));
}

/* Fill out from the replies of the HMGET and TTL that store_entry_read_many
 * sends per entry. */
static enum sg_err view_from_replies(redisReply *h, const redisReply *t, const char *id,
				     struct store_entry_view *out, bool *found,
				     struct sg_error *e)
{
	if (h->type == REDIS_REPLY_ERROR)
		return store_reply_error(h, e);
	if (h->type != REDIS_REPLY_ARRAY || h->elements != 14 ||
	    h->element[0]->type != REDIS_REPLY_STRING ||
	    h->element[1]->type != REDIS_REPLY_STRING)
		return SG_OK; /* gone (or not an entry) */
	redisReply **f = h->element;
	snprintf(out->id, sizeof(out->id), "%s", id);
	out->query = dup_reply(f[0], &out->query_len);
	out->answer = dup_reply(f[1], &out->answer_len);
	out->ns = dup_reply(f[2], NULL);
	out->scope = dup_reply(f[3], NULL);
	out->kind = f[4]->type == REDIS_REPLY_STRING ? dup_reply(f[4], NULL) : strdup("chat");
	out->tags = dup_reply(f[5], NULL);
	if (f[6]->type == REDIS_REPLY_STRING)
		out->metadata = dup_reply(f[6], &out->metadata_len);
	out->created = store_reply_ll(f[7]);
	out->hits = store_reply_ll(f[8]);
	out->tokens = store_reply_ll(f[9]);
	out->model = dup_reply(f[10], NULL);
	out->dim = (int)store_reply_ll(f[11]);
	out->min_sim = f[12]->type == REDIS_REPLY_STRING ? strtod(f[12]->str, NULL) : 0.0;
	if (!(out->min_sim > 0.0 && out->min_sim <= 2.0))
		out->min_sim = 0.0;
	out->refused = f[13]->type == REDIS_REPLY_STRING ? dup_reply(f[13], NULL) : strdup("");
	out->ttl_s = store_reply_ll(t);
	if (!out->query || !out->answer || !out->ns || !out->scope || !out->kind ||
	    !out->tags || !out->model || !out->refused || (f[6]->type == REDIS_REPLY_STRING && !out->metadata)) {
		store_entry_view_finish(out);
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	}
	*found = true;
	return SG_OK;
}

enum sg_err store_entry_read_many(struct store *s, const char *tenant, const char *const *ids,
				  size_t n, struct store_entry_view *out, bool *found,
				  struct sg_error *e)
{
	for (size_t i = 0; i < n; i++) {
		memset(&out[i], 0, sizeof(out[i]));
		found[i] = false;
	}
	if (n == 0)
		return SG_OK;
	enum sg_err rc = store_conn(s, e);
	if (rc != SG_OK)
		return rc;
	for (size_t i = 0; i < n; i++) {
		char *key = store_key(s, "e", tenant, ids[i]);
		if (!key) {
			/* the commands already appended are never read: drop them
			 * with the connection rather than leave replies behind */
			store_drop(s);
			return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		}
		redisAppendCommand(s->c, "HMGET %s query answer namespace scope kind tags metadata "
				   "created hits tokens model dim min_sim refused", key);
		redisAppendCommand(s->c, "TTL %s", key);
		free(key);
	}
	/* every reply is read even after a failure, so the connection stays
	 * in step */
	for (size_t i = 0; i < n; i++) {
		redisReply *h, *t;
		if (!store_read_two(s, &h, &t, e)) {
			rc = SG_ERR_REDIS;
			break;
		}
		if (rc == SG_OK)
			rc = view_from_replies(h, t, ids[i], &out[i], &found[i], e);
		freeReplyObject(h);
		freeReplyObject(t);
	}
	if (rc != SG_OK)
		for (size_t i = 0; i < n; i++) {
			store_entry_view_finish(&out[i]);
			found[i] = false;
		}
	return rc;
}

/* KEYS[1] entry; ARGV: verdict ("wrong"/"right"), question key, min_sim
 * ("0": unchanged), most refused keys kept. Returns nil when there is no
 * entry, else {wrong, right, min_sim}. */
static const char lua_feedback[] =
	"if redis.call('EXISTS', KEYS[1]) == 0 then return false end "
	"if ARGV[1] == 'wrong' then "
	"  redis.call('HINCRBY', KEYS[1], 'wrong', 1) "
	"  local r = redis.call('HGET', KEYS[1], 'refused') or '' "
	"  local keep = {} "
	"  for k in string.gmatch(r, '%S+') do if k ~= ARGV[2] then keep[#keep + 1] = k end end "
	"  keep[#keep + 1] = ARGV[2] "
	"  while #keep > tonumber(ARGV[4]) do table.remove(keep, 1) end "
	"  redis.call('HSET', KEYS[1], 'refused', table.concat(keep, ' ')) "
	"  local m = tonumber(redis.call('HGET', KEYS[1], 'min_sim') or '0') or 0 "
	"  if tonumber(ARGV[3]) > m then redis.call('HSET', KEYS[1], 'min_sim', ARGV[3]) end "
	"else redis.call('HINCRBY', KEYS[1], 'right', 1) end "
	"return {tonumber(redis.call('HGET', KEYS[1], 'wrong') or '0'), "
	"        tonumber(redis.call('HGET', KEYS[1], 'right') or '0'), "
	"        redis.call('HGET', KEYS[1], 'min_sim') or '0'}";

enum sg_err store_entry_feedback(struct store *s, const char *tenant, const char *id,
				 bool wrong, const char *qkey, double min_sim,
				 long long *wrong_n, long long *right_n, double *min_sim_out,
				 bool *found, struct sg_error *e)
{
	*found = false;
	*wrong_n = *right_n = 0;
	*min_sim_out = 0;
	char *key = store_key(s, "e", tenant, id);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	char ms[32], most[16];
	snprintf(ms, sizeof(ms), "%.9g", min_sim > 0 ? min_sim : 0.0);
	snprintf(most, sizeof(most), "%d", STORE_REFUSED_MAX);
	const char *argv[] = { "EVAL", lua_feedback, "1", key, wrong ? "wrong" : "right",
			       qkey, ms, most };
	redisReply *r;
	enum sg_err rc = store_run_key(s, 8, argv, key, &r, e);
	if (rc != SG_OK)
		return rc;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
		*found = true;
		*wrong_n = store_reply_ll(r->element[0]);
		*right_n = store_reply_ll(r->element[1]);
		if (r->element[2]->type == REDIS_REPLY_STRING)
			*min_sim_out = strtod(r->element[2]->str, NULL);
	}
	freeReplyObject(r);
	return rc;
}

enum sg_err store_entry_read(struct store *s, const char *tenant, const char *id,
			     struct store_entry_view *out, bool *found,
			     struct sg_error *e)
{
	return store_entry_read_many(s, tenant, &id, 1, out, found, e);
}

enum sg_err store_entry_vector(struct store *s, const char *tenant, const char *id,
			       store_entry_fn fn, void *ud, bool *found,
			       struct sg_error *e)
{
	*found = false;
	char *key = store_key(s, "e", tenant, id);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	enum sg_err rc = store_conn(s, e);
	if (rc != SG_OK) {
		free(key);
		return rc;
	}
	redisAppendCommand(s->c, "HMGET %s vector dim model scope", key);
	redisAppendCommand(s->c, "PTTL %s", key);
	free(key);
	redisReply *h, *t;
	if (!store_read_two(s, &h, &t, e)) {
		return SG_ERR_REDIS;
	}
	float *vec = NULL;
	int dim = 0;
	if (h->type == REDIS_REPLY_ERROR) {
		rc = store_reply_error(h, e);
	} else if (h->type == REDIS_REPLY_ARRAY && h->elements == 4 &&
		   h->element[0]->type == REDIS_REPLY_STRING &&
		   h->element[1]->type == REDIS_REPLY_STRING &&
		   h->element[2]->type == REDIS_REPLY_STRING &&
		   h->element[3]->type == REDIS_REPLY_STRING &&
		   t->type == REDIS_REPLY_INTEGER && t->integer != -2 &&
		   store_codec_vector(h->element[1]->str, h->element[1]->len,
				      h->element[0]->str, h->element[0]->len, &vec, &dim)) {
		fn(ud, tenant, id, h->element[3]->str, h->element[2]->str, vec, dim, t->integer);
		free(vec);
		*found = true;
	}
	freeReplyObject(h);
	freeReplyObject(t);
	return rc;
}

/* ---- deleting ---- */

struct del_ctx {
	const char *ns;           /* only entries of this namespace, or NULL */
	const char *event;        /* "delete" or "flush" */
	const char *cleanup_tkey; /* tag set walked: SREM ids whose entry is gone */
	store_id_fn fn;
	void *ud;
	long long deleted;
};

/* Queue the removal of one existing entry (fields: namespace, exact, tags
 * from HMGET) inside the open MULTI; returns the number of commands queued
 * (0 when out of memory: the caller must abandon the pipeline) and sets
 * *delpos to the position of its DEL among them. The stats accounting's
 * sync comes right after the DEL, at *delpos + 1. */
static size_t queue_delete(struct store *s, const char *tenant, const char *id,
			   const char *ekey, const char *topkey, redisReply **f,
			   const char *event, size_t base, long *delpos)
{
	size_t q = 0;
	redisAppendCommand(s->c, "DEL %s", ekey);
	*delpos = (long)(base + q++);
	if (!store_acct_append_sync(s, tenant, id))
		return 0;
	q++;
	if (f[1]->type == REDIS_REPLY_STRING && f[1]->len > 0) {
		char *xkey = store_key(s, "x", tenant, f[1]->str);
		if (xkey) {
			redisAppendCommand(s->c, "EVAL %s 1 %s %s", lua_del_exact, xkey, id);
			q++;
		}
		free(xkey);
	}
	if (f[2]->type == REDIS_REPLY_STRING && f[2]->len > 0) {
		char *tags = dup_reply(f[2], NULL);
		char *save = NULL;
		for (char *t = tags ? strtok_r(tags, ",", &save) : NULL; t;
		     t = strtok_r(NULL, ",", &save)) {
			char *tkey = store_key_in(s, "tag", store_bucket_of(tenant, id), tenant, t);
			if (tkey) {
				redisAppendCommand(s->c, "SREM %s %s", tkey, id);
				q++;
			}
			free(tkey);
		}
		free(tags);
	}
	redisAppendCommand(s->c, "ZREM %s %s", topkey, id);
	q++;
	if (store_archive_on(s->cfg)) {
		char *rec = store_archive_del_render(true, tenant, id);
		bool ok = rec && store_archive_append(s, tenant, id, rec, NULL, 0);
		free(rec);
		if (!ok)
			return 0;
		q++;
	}
	if (store_append_publish(s, event, tenant, id, NULL, NULL, 0))
		q++;
	return q;
}

/* Delete the entries named by ids[0..n) (n <= DELETE_BATCH, all of one
 * bucket) that exist and match dc->ns: read their namespace, exact key and
 * tags (pipelined), then one MULTI/EXEC for all of them (one slot). */
static enum sg_err delete_batch(struct store *s, const char *tenant, const char *const *ids,
				size_t n, struct del_ctx *dc, struct sg_error *e)
{
	if (n == 0)
		return SG_OK;
	char *ekeys[DELETE_BATCH] = { 0 };
	redisReply *h[DELETE_BATCH] = { 0 };
	long delpos[DELETE_BATCH];
	char *topkey = store_tenant_key_in(s, "top", store_bucket_of(tenant, ids[0]), tenant);
	enum sg_err rc = SG_OK;
	if (!topkey) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (!(ekeys[i] = store_key(s, "e", tenant, ids[i]))) {
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			goto out;
		}
	}
	if ((rc = store_conn(s, e)) != SG_OK)
		goto out;
	for (size_t i = 0; i < n; i++)
		redisAppendCommand(s->c, "HMGET %s namespace exact tags", ekeys[i]);
	for (size_t i = 0; i < n; i++) {
		if (!(h[i] = store_read_reply(s, e))) {
			rc = SG_ERR_REDIS;
			goto out;
		}
	}
	size_t queued = 0;
	redisAppendCommand(s->c, "MULTI");
	for (size_t i = 0; i < n; i++) {
		delpos[i] = -1;
		redisReply *r = h[i];
		bool exists = r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
			      r->element[0]->type == REDIS_REPLY_STRING;
		if (!exists) {
			if (dc->cleanup_tkey && r->type == REDIS_REPLY_ARRAY) {
				redisAppendCommand(s->c, "SREM %s %s", dc->cleanup_tkey, ids[i]);
				queued++;
			}
			continue;
		}
		if (dc->ns && strcmp(r->element[0]->str, dc->ns) != 0)
			continue;
		size_t q = queue_delete(s, tenant, ids[i], ekeys[i], topkey, r->element,
					dc->event, queued, &delpos[i]);
		if (q == 0) {
			/* commands are already buffered: abandon the connection */
			store_drop(s);
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			goto out;
		}
		queued += q;
	}
	redisAppendCommand(s->c, "EXEC");
	redisReply *exec = store_read_exec(s, queued, e);
	if (!exec) {
		rc = SG_ERR_REDIS;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (delpos[i] < 0 || (size_t)delpos[i] >= exec->elements)
			continue;
		redisReply *d = exec->element[delpos[i]];
		if (store_acct_check(exec, (size_t)delpos[i] + 1))
			store_acct_sync_now(s, tenant, ids[i]);
		if (d->type == REDIS_REPLY_INTEGER && d->integer == 1) {
			dc->deleted++;
			if (dc->fn)
				dc->fn(dc->ud, ids[i]);
		}
	}
	freeReplyObject(exec);
out:
	for (size_t i = 0; i < n; i++) {
		free(ekeys[i]);
		if (h[i])
			freeReplyObject(h[i]);
	}
	free(topkey);
	return rc;
}

enum sg_err store_entry_delete(struct store *s, const char *tenant, const char *id,
			       bool *found, struct sg_error *e)
{
	struct del_ctx dc = { .event = "delete" };
	const char *ids[1] = { id };
	*found = false;
	enum sg_err rc = delete_batch(s, tenant, ids, 1, &dc, e);
	*found = rc == SG_OK && dc.deleted == 1;
	return rc;
}

/* Delete the members of one SSCAN/SCAN batch, bucket by bucket (a MULTI
 * touches one slot), in chunks of DELETE_BATCH. */
static enum sg_err delete_ids(struct store *s, const char *tenant, const char **ids,
			      size_t n, struct del_ctx *dc, struct sg_error *e)
{
	const char **mine = calloc(n + 1, sizeof(*mine));
	unsigned char *bk = calloc(n + 1, 1);
	enum sg_err rc = SG_OK;
	if (!mine || !bk)
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	for (size_t i = 0; rc == SG_OK && i < n; i++)
		bk[i] = (unsigned char)store_bucket_of(tenant, ids[i]);
	for (unsigned b = 0; rc == SG_OK && b < STORE_BUCKETS; b++) {
		size_t m = 0;
		for (size_t i = 0; i < n; i++)
			if (bk[i] == b)
				mine[m++] = ids[i];
		for (size_t off = 0; off < m && rc == SG_OK; off += DELETE_BATCH) {
			size_t k = m - off < DELETE_BATCH ? m - off : DELETE_BATCH;
			rc = delete_batch(s, tenant, mine + off, k, dc, e);
		}
	}
	free(mine);
	free(bk);
	return rc;
}

/* The tag set of one bucket: its members are entries of that bucket. */
static enum sg_err invalidate_tag_in(struct store *s, const char *tenant, const char *tag,
				     unsigned bucket, struct del_ctx *dc, struct sg_error *e)
{
	char *tkey = store_key_in(s, "tag", bucket, tenant, tag);
	if (!tkey)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	dc->cleanup_tkey = tkey;
	char cursor[32] = "0";
	enum sg_err rc = SG_OK;
	do {
		const char *argv[] = { "SSCAN", tkey, cursor, "COUNT", "256" };
		redisReply *r = NULL;
		if ((rc = store_scan_step(s, 5, argv, cursor, &r, e)) != SG_OK)
			break;
		redisReply *m = r->element[1];
		const char **ids = calloc(m->elements + 1, sizeof(char *));
		size_t n = 0;
		if (!ids) {
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		} else {
			for (size_t i = 0; i < m->elements; i++)
				if (m->element[i]->type == REDIS_REPLY_STRING &&
				    store_codec_id_ok(m->element[i]->str, m->element[i]->len))
					ids[n++] = m->element[i]->str;
			rc = delete_ids(s, tenant, ids, n, dc, e);
		}
		free(ids);
		freeReplyObject(r);
	} while (rc == SG_OK && strcmp(cursor, "0") != 0);
	free(tkey);
	dc->cleanup_tkey = NULL;
	return rc;
}

static enum sg_err invalidate_tag(struct store *s, const char *tenant, const char *tag,
				  struct del_ctx *dc, struct sg_error *e)
{
	enum sg_err rc = SG_OK;
	for (unsigned b = 0; b < STORE_BUCKETS && rc == SG_OK; b++)
		rc = invalidate_tag_in(s, tenant, tag, b, dc, e);
	return rc;
}

enum sg_err store_scan_every_node(struct store *s, const char *pattern, store_keys_fn fn,
				  void *ud, struct sg_error *e)
{
	struct store_cl_addr nodes[STORE_CL_MAX_NODES];
	int nn = store_scan_nodes(s, nodes, STORE_CL_MAX_NODES, e);
	enum sg_err rc = nn < 0 ? SG_ERR_REDIS : SG_OK;
	for (int ni = 0; ni < nn && rc == SG_OK; ni++) {
		char cursor[32] = "0";
		do {
			const char *argv[] = { "SCAN", cursor, "MATCH", pattern, "COUNT", "1000" };
			redisReply *r = NULL;
			store_pin(s, &nodes[ni]);
			rc = store_scan_step(s, 6, argv, cursor, &r, e);
			/* the batch's own commands go by their keys' slots */
			store_pin(s, NULL);
			if (rc != SG_OK)
				break;
			rc = fn(s, r->element[1], ud, e);
			freeReplyObject(r);
		} while (rc == SG_OK && strcmp(cursor, "0") != 0);
	}
	return rc;
}

struct tenant_scan {
	const char *tenant;
	store_tenant_batch_fn fn;
	void *ud;
};

/* The keys of one SCAN batch that are entries of the tenant, to ts->fn. */
static enum sg_err tenant_keys(struct store *s, redisReply *k, void *ud, struct sg_error *e)
{
	struct tenant_scan *ts = ud;
	struct store_tenant_entry *en = calloc(k->elements + 1, sizeof(*en));
	if (!en)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	size_t n = 0;
	for (size_t i = 0; i < k->elements; i++) {
		char t[128];
		redisReply *key = k->element[i];
		if (key->type == REDIS_REPLY_STRING &&
		    store_codec_entry_key(s->cfg->redis_prefix, key->str, key->len, t, sizeof(t),
					  en[n].id, sizeof(en[n].id)) &&
		    strcmp(t, ts->tenant) == 0) {
			en[n].key = key->str;
			en[n].len = key->len;
			n++;
		}
	}
	enum sg_err rc = ts->fn(s, ts->tenant, en, n, ts->ud, e);
	free(en);
	return rc;
}

enum sg_err store_scan_tenant(struct store *s, const char *tenant,
			      store_tenant_batch_fn fn, void *ud, struct sg_error *e)
{
	char *pattern = store_key_pattern(s, "e", tenant);
	if (!pattern)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	struct tenant_scan ts = { .tenant = tenant, .fn = fn, .ud = ud };
	enum sg_err rc = store_scan_every_node(s, pattern, tenant_keys, &ts, e);
	free(pattern);
	return rc;
}

static enum sg_err invalidate_batch(struct store *s, const char *tenant,
				    const struct store_tenant_entry *en, size_t n, void *ud,
				    struct sg_error *e)
{
	const char **ids = calloc(n + 1, sizeof(*ids));
	if (!ids)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		ids[i] = en[i].id;
	enum sg_err rc = delete_ids(s, tenant, ids, n, ud, e);
	free(ids);
	return rc;
}

enum sg_err store_invalidate(struct store *s, const char *tenant, const char *ns,
			     const char *tag, store_id_fn fn, void *ud,
			     long long *deleted, struct sg_error *e)
{
	*deleted = 0;
	if (!ns && !tag)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "give a namespace, a tag or both");
	struct del_ctx dc = { .ns = ns, .event = "flush", .fn = fn, .ud = ud };
	enum sg_err rc = tag ? invalidate_tag(s, tenant, tag, &dc, e) :
			       store_scan_tenant(s, tenant, invalidate_batch, &dc, e);
	*deleted = dc.deleted;
	return rc;
}

/* ---- accounting ---- */

/* The requests one tenant row counts. */
static size_t row_requests(const struct store_tenant_counts *c)
{
	return (size_t)(c->lookups + c->bypass);
}

enum sg_err store_record_counts(struct store *s, const struct store_tenant_counts *tc,
				size_t ntc, const struct store_entry_hits *eh, size_t neh,
				long long top_ttl_s, size_t *unapplied, struct sg_error *e)
{
	static const struct {
		const char *name;
		size_t off;
	} fields[] = {
		{ "lookups", offsetof(struct store_tenant_counts, lookups) },
		{ "hits_exact", offsetof(struct store_tenant_counts, hits_exact) },
		{ "hits_semantic", offsetof(struct store_tenant_counts, hits_semantic) },
		{ "misses", offsetof(struct store_tenant_counts, misses) },
		{ "tokens_saved_prompt", offsetof(struct store_tenant_counts, tokens_prompt) },
		{ "tokens_saved_completion",
		  offsetof(struct store_tenant_counts, tokens_completion) },
	};
	size_t none = 0, all = 0;
	if (!unapplied)
		unapplied = &none;
	for (size_t i = 0; i < ntc; i++)
		all += row_requests(&tc[i]);
	*unapplied = all;
	if (ntc == 0 && neh == 0)
		return SG_OK;
	enum sg_err rc = store_conn(s, e);
	if (rc != SG_OK)
		return rc;
	/* one MULTI per tenant row (its stats part and series share the
	 * bucket of its hour) and one per entry hit (the entry and its bucket's
	 * leaderboard): each touches one slot */
	size_t nblocks = ntc + neh, *queued = calloc(nblocks + 1, sizeof(*queued));
	bool oom = !queued;
	bool arch = store_archive_on(s->cfg);
	for (size_t i = 0; i < ntc && !oom; i++) {
		char *skey = store_tenant_key_in(s, "stats",
						 store_series_bucket(tc[i].tenant, tc[i].minute),
						 tc[i].tenant);
		if (!skey) {
			oom = true;
			break;
		}
		redisAppendCommand(s->c, "MULTI");
		for (size_t f = 0; f < sizeof(fields) / sizeof(fields[0]); f++) {
			long long v = *(const long long *)((const char *)&tc[i] + fields[f].off);
			if (v > 0) {
				redisAppendCommand(s->c, "HINCRBY %s %s %lld", skey,
						   fields[f].name, v);
				queued[i]++;
			}
		}
		free(skey);
		long ns = store_series_append(s, &tc[i]);
		if (ns < 0)
			oom = true;
		else
			queued[i] += (size_t)ns;
		redisAppendCommand(s->c, "EXEC");
	}
	for (size_t i = 0; i < neh && !oom; i++) {
		char *ekey = store_key(s, "e", eh[i].tenant, eh[i].id);
		char *topkey = store_tenant_key_in(s, "top", store_bucket_of(eh[i].tenant, eh[i].id),
						   eh[i].tenant);
		if (ekey && topkey) {
			redisAppendCommand(s->c, "MULTI");
			if (!arch) {
				redisAppendCommand(s->c, "EVAL %s 1 %s %lld", lua_hit, ekey,
						   eh[i].hits);
			} else {
				char *skey = store_archive_stream_key(s, eh[i].tenant, eh[i].id);
				if (!skey) {
					oom = true;
					free(ekey);
					free(topkey);
					break;
				}
				redisAppendCommand(s->c, "EVAL %s 2 %s %s %lld %lld %s %s",
						   lua_hit_archive, ekey, skey, eh[i].hits,
						   s->cfg->archive_stream_max, eh[i].tenant,
						   eh[i].id);
				free(skey);
			}
			redisAppendCommand(s->c, "ZINCRBY %s %lld %s", topkey, eh[i].hits,
					   eh[i].id);
			redisAppendCommand(s->c, "EXPIRE %s %lld", topkey, top_ttl_s);
			redisAppendCommand(s->c, "EXEC");
			queued[ntc + i] = 3;
		} else {
			oom = true;
		}
		free(ekey);
		free(topkey);
	}
	if (oom) {
		/* commands may be buffered already: abandon the connection */
		store_drop(s);
		free(queued);
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	}
	/* Every block was sent, so Redis ran each one it accepted: a refused
	 * block (EXECABORT) leaves the others counted, and their replies are
	 * read so the connection stays in step. Only a lost connection leaves
	 * the later blocks unknown. */
	*unapplied = 0;
	for (size_t i = 0; i < nblocks; i++) {
		struct sg_error be = { 0 };
		redisReply *exec = store_read_exec(s, queued[i], &be);
		if (exec) {
			freeReplyObject(exec);
			continue;
		}
		if (rc == SG_OK) {
			rc = be.code ? be.code : SG_ERR_REDIS;
			if (e)
				*e = be;
		}
		if (i + 1 < nblocks && !store_replies_pending(s)) {
			for (size_t k = i; k < ntc; k++)
				*unapplied += row_requests(&tc[k]);
			store_drop(s);
			break;
		}
		if (i < ntc)
			*unapplied += row_requests(&tc[i]);
	}
	free(queued);
	return rc;
}

/* ---- leaderboard ---- */

void store_top_finish(struct store_top *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n; i++) {
		free(t->rows[i].query);
		free(t->rows[i].ns);
		free(t->rows[i].kind);
	}
	free(t->rows);
	memset(t, 0, sizeof(*t));
}

/* One row of a bucket's leaderboard window (pointers into its reply). */
struct top_cand {
	const char *id;
	size_t len;
	long long score;
	unsigned bucket;
};

static int cand_cmp(const void *pa, const void *pb)
{
	const struct top_cand *a = pa, *b = pb;
	if (a->score != b->score)
		return a->score > b->score ? -1 : 1;
	/* ZREVRANGE's order for equal scores: the greater member first */
	return -strcmp(a->id, b->id);
}

/* ZREM the stale ids of each bucket's leaderboard (one command per bucket
 * met, each on one key). */
static enum sg_err top_remove(struct store *s, char **topkeys, const struct top_cand *c,
			      const bool *stale, size_t n, struct sg_error *e)
{
	enum sg_err rc = SG_OK;
	const char **zargv = calloc(n + 2, sizeof(char *));
	if (!zargv)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	for (unsigned b = 0; b < STORE_BUCKETS && rc == SG_OK; b++) {
		int argc = 2;
		for (size_t i = 0; i < n; i++)
			if (stale[i] && c[i].bucket == b)
				zargv[argc++] = c[i].id;
		if (argc == 2)
			continue;
		zargv[0] = "ZREM";
		zargv[1] = topkeys[b];
		redisReply *zr = store_run(s, argc, zargv, NULL, e);
		if (!zr)
			rc = SG_ERR_REDIS;
		else
			freeReplyObject(zr);
	}
	free(zargv);
	return rc;
}

/* Check candidates c[0..n) in order (HMGET of their entries, pipelined)
 * until out holds limit rows; mark the stale ones. *checked gets how many
 * were looked at. */
static enum sg_err top_check(struct store *s, const char *tenant, const struct top_cand *c,
			     size_t n, size_t limit, struct store_top *out, bool *stale,
			     size_t *checked, struct sg_error *e)
{
	enum sg_err rc = SG_OK;
	size_t i = 0;
	while (i < n && out->n < limit && rc == SG_OK) {
		size_t chunk = limit - out->n + 16;
		if (chunk > n - i)
			chunk = n - i;
		if ((rc = store_conn(s, e)) != SG_OK)
			break;
		for (size_t j = i; j < i + chunk; j++) {
			char *ekey = store_key(s, "e", tenant, c[j].id);
			if (ekey)
				redisAppendCommand(s->c, "HMGET %s query namespace kind", ekey);
			else
				redisAppendCommand(s->c, "PING");
			free(ekey);
		}
		for (size_t j = i; j < i + chunk; j++) {
			redisReply *h = store_read_reply(s, e);
			if (!h)
				return SG_ERR_REDIS;
			bool live = h->type == REDIS_REPLY_ARRAY && h->elements == 3 &&
				    h->element[0]->type == REDIS_REPLY_STRING && c[j].len < 65;
			stale[j] = !live && h->type == REDIS_REPLY_ARRAY;
			if (live && out->n < limit && rc == SG_OK) {
				struct store_top_row *row = &out->rows[out->n];
				memset(row, 0, sizeof(*row));
				memcpy(row->id, c[j].id, c[j].len + 1);
				row->query = dup_reply(h->element[0], NULL);
				row->ns = dup_reply(h->element[1], NULL);
				row->kind = h->element[2]->type == REDIS_REPLY_STRING ?
					    dup_reply(h->element[2], NULL) : strdup("chat");
				row->hits = c[j].score;
				out->n++;
				if (!row->query || !row->ns || !row->kind)
					rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			}
			freeReplyObject(h);
		}
		i += chunk;
	}
	*checked = i;
	return rc;
}

/* One round: the top window of every bucket's leaderboard (pipelined),
 * merged by score, checked in order. *more when a bucket's window was full
 * and the round ended short of limit: stale rows were removed, so another
 * round finds more. */
static enum sg_err top_round(struct store *s, const char *tenant, char **topkeys,
			     size_t limit, struct store_top *out, bool *more, struct sg_error *e)
{
	*more = false;
	redisReply *z[STORE_BUCKETS] = { 0 };
	long window = (long)limit + 16;
	char last[24];
	snprintf(last, sizeof(last), "%ld", window - 1);
	enum sg_err rc = store_conn(s, e);
	if (rc != SG_OK)
		return rc;
	for (unsigned b = 0; b < STORE_BUCKETS; b++) {
		const char *argv[] = { "ZREVRANGE", topkeys[b], "0", last, "WITHSCORES" };
		redisAppendCommandArgv(s->c, 5, argv, NULL);
	}
	size_t ncand = 0;
	bool full = false;
	for (unsigned b = 0; b < STORE_BUCKETS; b++) {
		if (!(z[b] = store_read_reply(s, e))) {
			rc = SG_ERR_REDIS;
			goto out;
		}
		if (z[b]->type == REDIS_REPLY_ERROR && rc == SG_OK)
			rc = store_reply_error(z[b], e);
		else if (z[b]->type == REDIS_REPLY_ARRAY)
			ncand += z[b]->elements / 2;
		if (z[b]->type == REDIS_REPLY_ARRAY && (long)(z[b]->elements / 2) >= window)
			full = true;
	}
	if (rc != SG_OK)
		goto out;
	struct top_cand *c = calloc(ncand + 1, sizeof(*c));
	bool *stale = calloc(ncand + 1, sizeof(*stale));
	if (!c || !stale) {
		free(c);
		free(stale);
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	size_t n = 0;
	for (unsigned b = 0; b < STORE_BUCKETS; b++) {
		if (z[b]->type != REDIS_REPLY_ARRAY)
			continue;
		for (size_t i = 0; i + 1 < z[b]->elements; i += 2) {
			redisReply *id = z[b]->element[i];
			if (id->type != REDIS_REPLY_STRING)
				continue;
			c[n++] = (struct top_cand){ .id = id->str, .len = id->len, .bucket = b,
						    .score = store_reply_ll(z[b]->element[i + 1]) };
		}
	}
	qsort(c, n, sizeof(*c), cand_cmp);
	size_t checked = 0;
	rc = top_check(s, tenant, c, n, limit, out, stale, &checked, e);
	size_t nstale = 0;
	for (size_t i = 0; i < checked; i++)
		nstale += stale[i];
	if (rc == SG_OK && nstale)
		rc = top_remove(s, topkeys, c, stale, checked, e);
	*more = rc == SG_OK && full && nstale && out->n < limit;
	free(c);
	free(stale);
out:
	for (unsigned b = 0; b < STORE_BUCKETS; b++)
		if (z[b])
			freeReplyObject(z[b]);
	return rc;
}

enum sg_err store_top_read(struct store *s, const char *tenant, size_t limit,
			   struct store_top *out, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	if (limit == 0)
		return SG_OK;
	char *topkeys[STORE_BUCKETS] = { 0 };
	enum sg_err rc = SG_OK;
	for (unsigned b = 0; b < STORE_BUCKETS && rc == SG_OK; b++)
		if (!(topkeys[b] = store_tenant_key_in(s, "top", b, tenant)))
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	if (rc == SG_OK && !(out->rows = calloc(limit, sizeof(*out->rows))))
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	/* stale rows are removed as they are met, so a few rounds suffice;
	 * the bound keeps one request's work finite whatever the sets hold */
	bool more = rc == SG_OK;
	for (int round = 0; round < 16 && more && rc == SG_OK; round++) {
		store_top_finish(out);
		if (!(out->rows = calloc(limit, sizeof(*out->rows)))) {
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			break;
		}
		rc = top_round(s, tenant, topkeys, limit, out, &more, e);
	}
	for (unsigned b = 0; b < STORE_BUCKETS; b++)
		free(topkeys[b]);
	if (rc != SG_OK)
		store_top_finish(out);
	return rc;
}
