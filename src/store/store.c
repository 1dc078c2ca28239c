/* hiredis adapter and the Redis key layout. A connection lives in the
 * struct store of one worker thread; after any I/O error it is dropped and
 * the next call reconnects (with a short back-off so a dead Redis costs a
 * request no more than one connect attempt). No redisReply leaves a
 * function that received it. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/sds.h>

#include "semgate/core/clock.h"
#include "semgate/core/log.h"
#include "semgate/core/metrics.h"
#include "semgate/store/layout.h"
#include "semgate/store/store.h"
#include "priv.h"

static atomic_ullong g_reconnects;

unsigned long long store_reconnects(void)
{
	return atomic_load(&g_reconnects);
}

void store_count_reconnect(void)
{
	atomic_fetch_add(&g_reconnects, 1);
}

void store_strlist_finish(struct store_strlist *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	free(l->len);
	memset(l, 0, sizeof(*l));
}

struct store *store_create(const struct sg_config *cfg)
{
	struct store *s = calloc(1, sizeof(*s));
	if (s) {
		s->cfg = cfg;
		s->cluster = config_is_cluster(cfg);
	}
	return s;
}

void store_destroy(struct store *s)
{
	if (!s)
		return;
	if (s->cluster)
		store_cluster_close(s);
	if (s->c)
		redisFree(s->c);
	free(s->q);
	free(s);
}

/* ---- key layout: the only place key names are made ----
 * "{prefix}{kind}:{<bucket tag>}:{tenant}[:{rest}]" (semgate/store/layout.h,
 * docs/CACHE-API.md): the braces make the bucket tag the key's hash tag. */

char *store_key_in(const struct store *s, const char *kind, unsigned bucket,
		   const char *tenant, const char *rest)
{
	char *k = NULL;
	if (asprintf(&k, "%s%s:{%s}:%s:%s", s->cfg->redis_prefix, kind,
		     store_bucket_tag(bucket), tenant, rest) < 0)
		return NULL;
	return k;
}

char *store_key(const struct store *s, const char *kind, const char *tenant,
		const char *rest)
{
	return store_key_in(s, kind, store_bucket_of(tenant, rest), tenant, rest);
}

char *store_tenant_key_in(const struct store *s, const char *kind, unsigned bucket,
			  const char *tenant)
{
	char *k = NULL;
	if (asprintf(&k, "%s%s:{%s}:%s", s->cfg->redis_prefix, kind,
		     store_bucket_tag(bucket), tenant) < 0)
		return NULL;
	return k;
}

char *store_tenant_key(const struct store *s, const char *kind, const char *tenant)
{
	return store_tenant_key_in(s, kind, store_bucket_of(tenant, kind), tenant);
}

char *store_legacy_key(const struct store *s, const char *kind, const char *tenant,
		       const char *rest)
{
	char *k = NULL;
	if (asprintf(&k, "%s%s:%s:%s", s->cfg->redis_prefix, kind, tenant, rest) < 0)
		return NULL;
	return k;
}

char *store_key_pattern(const struct store *s, const char *kind, const char *tenant)
{
	char *k = NULL;
	if (!tenant) {
		if (asprintf(&k, "%s%s:{*}:*", s->cfg->redis_prefix, kind) < 0)
			return NULL;
		return k;
	}
	char *esc = malloc(2 * strlen(tenant) + 1), *o = esc;
	if (!esc)
		return NULL;
	for (const char *in = tenant; *in; in++) {
		if (strchr("*?[]\\", *in))
			*o++ = '\\';
		*o++ = *in;
	}
	*o = '\0';
	if (asprintf(&k, "%s%s:{*}:%s:*", s->cfg->redis_prefix, kind, esc) < 0)
		k = NULL;
	free(esc);
	return k;
}

char *store_key_pattern_all(const struct store *s, const char *kind)
{
	char *k = NULL;
	if (asprintf(&k, "%s%s:{*}:*", s->cfg->redis_prefix, kind) < 0)
		return NULL;
	return k;
}

long long store_reply_ll(const redisReply *r)
{
	if (r && r->type == REDIS_REPLY_INTEGER)
		return r->integer;
	if (r && r->type == REDIS_REPLY_STRING)
		return strtoll(r->str, NULL, 10);
	return 0;
}

/* ---- connection ---- */

void store_drop(struct store *s)
{
	if (s->cluster) {
		/* what is staged or unread belongs to the failed call */
		store_cluster_discard(s);
		return;
	}
	if (s->c) {
		redisFree(s->c);
		s->c = NULL;
	}
	s->next_attempt_ms = sg_now_ms() + RECONNECT_BACKOFF_MS;
	store_master_suspect();
}

redisContext *store_connect_node(const struct sg_config *cfg, const char *host, int port,
				 const char *who, struct sg_error *e)
{
	struct timeval tv = {
		.tv_sec = cfg->redis_timeout_ms / 1000,
		.tv_usec = (cfg->redis_timeout_ms % 1000) * 1000,
	};
	redisContext *c = redisConnectWithTimeout(host, port, tv);
	if (!c || c->err) {
		sg_error_set(e, SG_ERR_REDIS, "%scannot connect to redis at %s:%d: %s", who, host,
			     port, c ? c->errstr : "out of memory");
		if (c)
			redisFree(c);
		return NULL;
	}
	redisSetTimeout(c, tv);
	redisEnableKeepAlive(c);
	if (cfg->redis_password[0]) {
		redisReply *r = redisCommand(c, "AUTH %s", cfg->redis_password);
		if (!r || r->type == REDIS_REPLY_ERROR) {
			/* the reply text may echo nothing secret, but keep it out anyway */
			sg_error_set(e, SG_ERR_REDIS, "%sredis AUTH failed", who);
			if (r)
				freeReplyObject(r);
			redisFree(c);
			return NULL;
		}
		freeReplyObject(r);
	}
	return c;
}

enum sg_err store_conn(struct store *s, struct sg_error *e)
{
	if (s->cluster)
		return store_cluster_conn(s, e);
	unsigned long gen = store_master_gen();
	if (s->c && !s->c->err && s->gen == gen)
		return SG_OK;
	if (s->c && !s->c->err) {
		/* the master moved: reconnect now, to the new one */
		redisFree(s->c);
		s->c = NULL;
		s->next_attempt_ms = 0;
	}
	if (s->c)
		store_drop(s);
	if (sg_now_ms() < s->next_attempt_ms)
		return sg_error_set(e, SG_ERR_REDIS, "redis unavailable (retrying shortly)");
	const struct sg_config *cfg = s->cfg;
	struct store_hostport at;
	redisContext *c = NULL;
	if (store_master_get(cfg, &at, &gen, e) != SG_OK ||
	    !(c = store_connect_node(cfg, at.host, at.port, "", e))) {
		s->next_attempt_ms = sg_now_ms() + RECONNECT_BACKOFF_MS;
		store_master_suspect();
		return SG_ERR_REDIS;
	}
	if (cfg->redis_db) {
		redisReply *r = redisCommand(c, "SELECT %lld", cfg->redis_db);
		if (!r || r->type == REDIS_REPLY_ERROR) {
			sg_error_set(e, SG_ERR_REDIS, "redis SELECT %lld failed: %s",
				     cfg->redis_db, r ? r->str : c->errstr);
			if (r)
				freeReplyObject(r);
			redisFree(c);
			s->next_attempt_ms = sg_now_ms() + RECONNECT_BACKOFF_MS;
			return SG_ERR_REDIS;
		}
		freeReplyObject(r);
	}
	s->c = c;
	s->gen = gen;
	s->serial++;
	if (s->had_connection) {
		atomic_fetch_add(&g_reconnects, 1);
		sg_log(SG_LOG_INFO, "reconnected to redis at %s:%d", at.host, at.port);
	}
	s->had_connection = true;
	return SG_OK;
}

int store_scan_nodes(struct store *s, struct store_cl_addr *out, int cap, struct sg_error *e)
{
	if (!s->cluster) {
		memset(out, 0, sizeof(*out));
		return 1;
	}
	return store_cluster_masters(s, out, cap, e);
}

void store_pin(struct store *s, const struct store_cl_addr *a)
{
	if (!s->cluster)
		return;
	if (a)
		s->pin = *a;
	else
		memset(&s->pin, 0, sizeof(s->pin));
}

/* Read one pipelined reply. NULL means the connection is gone (dropped
 * here, e set); an error reply is returned for the caller to judge. */
redisReply *store_read_reply(struct store *s, struct sg_error *e)
{
	if (s->cluster)
		return store_cluster_next(s, e);
	void *r = NULL;
	if (redisGetReply(s->c, &r) != REDIS_OK || !r) {
		sg_error_set(e, SG_ERR_REDIS, "redis connection lost: %s",
			     s->c->errstr[0] ? s->c->errstr : "no reply");
		store_drop(s);
		return NULL;
	}
	return r;
}

enum sg_err store_run_key(struct store *s, int argc, const char **argv, char *key,
			  redisReply **r, struct sg_error *e)
{
	*r = store_run(s, argc, argv, NULL, e);
	free(key);
	if (!*r)
		return SG_ERR_REDIS;
	if ((*r)->type != REDIS_REPLY_ERROR)
		return SG_OK;
	enum sg_err rc = store_reply_error(*r, e);
	freeReplyObject(*r);
	*r = NULL;
	return rc;
}

bool store_read_two(struct store *s, redisReply **a, redisReply **b, struct sg_error *e)
{
	*a = store_read_reply(s, e);
	*b = *a ? store_read_reply(s, e) : NULL;
	if (*a && *b)
		return true;
	if (*a)
		freeReplyObject(*a);
	*a = NULL;
	return false;
}

unsigned long store_conn_serial(const struct store *s)
{
	return s->serial;
}

int store_node_of(struct store *s, const char *tenant, const char *id)
{
	return s->cluster ? store_cluster_node_of(s, tenant, id) : 0;
}

bool store_pipeline_lost(const struct store *s)
{
	if (!s->c)
		return true;
	/* a cluster's staged bytes are sent at the first read, and its
	 * replies queued: neither left means nothing more will come */
	return s->cluster && sdslen(s->c->obuf) == 0 && s->qpos >= s->qn;
}

/* Run one command given as argv; the reply belongs to the caller. */
redisReply *store_run(struct store *s, int argc, const char **argv,
			    const size_t *lens, struct sg_error *e)
{
	if (store_conn(s, e) != SG_OK)
		return NULL;
	if (redisAppendCommandArgv(s->c, argc, argv, lens) != REDIS_OK) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory building a redis command");
		store_drop(s);
		return NULL;
	}
	double t0 = sg_now_ms();
	redisReply *r = store_read_reply(s, e);
	metrics_observe(SG_H_REDIS, sg_now_ms() - t0);
	return r;
}

bool store_send_with_ttl(struct store *s, int argc, const char **argv, const char *ttl_cmd,
			 const char *key, struct sg_error *e)
{
	if (store_conn(s, e) != SG_OK)
		return false;
	const char *targv[] = { ttl_cmd, key };
	if (redisAppendCommandArgv(s->c, argc, argv, NULL) != REDIS_OK ||
	    (ttl_cmd && redisAppendCommandArgv(s->c, 2, targv, NULL) != REDIS_OK)) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory building a redis command");
		store_drop(s);
		return false;
	}
	if (s->cluster)
		return true; /* staged: store_cluster_dispatch routes it at the read */
	/* on its way now; the replies wait in the socket until the read */
	int done = 0;
	while (!done)
		if (redisBufferWrite(s->c, &done) != REDIS_OK) {
			sg_error_set(e, SG_ERR_REDIS, "redis connection lost: %s",
				     s->c->errstr[0] ? s->c->errstr : "write failed");
			store_drop(s);
			return false;
		}
	return true;
}

bool store_recv_with_ttl(struct store *s, redisReply **reply, redisReply **ttl,
			 struct sg_error *e)
{
	/* the wait for the replies: for commands sent ahead of other work,
	 * the part of the round trip that work did not hide */
	double t0 = sg_now_ms();
	*reply = store_read_reply(s, e);
	if (ttl)
		*ttl = *reply ? store_read_reply(s, e) : NULL;
	metrics_observe(SG_H_REDIS, sg_now_ms() - t0);
	if (ttl && !*ttl && *reply) {
		freeReplyObject(*reply);
		*reply = NULL;
	}
	return *reply != NULL;
}

bool store_run_with_ttl(struct store *s, int argc, const char **argv, const char *ttl_cmd,
			const char *key, redisReply **reply, redisReply **ttl,
			struct sg_error *e)
{
	*reply = *ttl = NULL;
	return store_send_with_ttl(s, argc, argv, ttl_cmd, key, e) &&
	       store_recv_with_ttl(s, reply, ttl, e);
}

enum sg_err store_run_status(struct store *s, int argc, const char **argv, struct sg_error *e)
{
	redisReply *r = store_run(s, argc, argv, NULL, e);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = r->type == REDIS_REPLY_ERROR ? store_reply_error(r, e) : SG_OK;
	freeReplyObject(r);
	return rc;
}

enum sg_err store_read_n(struct store *s, size_t n, struct sg_error *e)
{
	enum sg_err rc = SG_OK;
	for (size_t i = 0; i < n; i++) {
		redisReply *r = store_read_reply(s, e);
		if (!r)
			return SG_ERR_REDIS;
		if (r->type == REDIS_REPLY_ERROR && rc == SG_OK)
			rc = store_reply_error(r, e);
		freeReplyObject(r);
	}
	return rc;
}

enum sg_err store_reply_error(redisReply *r, struct sg_error *e)
{
	if (store_reply_readonly(r))
		store_master_suspect();
	return sg_error_set(e, SG_ERR_REDIS, "redis error: %.200s", r->str);
}

enum sg_err store_ping(struct store *s, struct sg_error *e)
{
	const char *argv[] = { "PING" };
	return store_run_status(s, 1, argv, e);
}

/* ---- waiting for replicas (SEMGATE_REDIS_WAIT_REPLICAS) ---- */

static void set_read_timeout(struct store *s, long long ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
	if (s->c)
		redisSetTimeout(s->c, tv);
}

int store_append_wait(struct store *s)
{
	const struct sg_config *cfg = s->cfg;
	/* not on a cluster: WAIT answers for the node it is sent to, and the
	 * gateway refuses the combination at start (main.c) */
	if (cfg->redis_wait_replicas <= 0 || s->cluster)
		return 0;
	if (redisAppendCommand(s->c, "WAIT %lld %lld", cfg->redis_wait_replicas,
			       cfg->redis_wait_timeout_ms) != REDIS_OK)
		return -1;
	/* the reply may take the whole wait: the socket must not give up first */
	set_read_timeout(s, cfg->redis_timeout_ms + cfg->redis_wait_timeout_ms);
	return 1;
}

void store_skip_wait(struct store *s)
{
	struct sg_error ignored = { 0 };
	if (s->c) { /* still connected: WAIT's reply is pending behind the failure */
		redisReply *r = store_read_reply(s, &ignored);
		if (r)
			freeReplyObject(r);
	}
	set_read_timeout(s, s->cfg->redis_timeout_ms);
}

enum sg_err store_read_wait(struct store *s, struct sg_error *e)
{
	const struct sg_config *cfg = s->cfg;
	struct sg_error lost = { 0 };
	redisReply *r = store_read_reply(s, &lost);
	set_read_timeout(s, cfg->redis_timeout_ms);
	long long got = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
	if (r)
		freeReplyObject(r);
	if (got >= cfg->redis_wait_replicas)
		return SG_OK;
	if (got < 0)
		return sg_error_set(e, SG_ERR_REPLICAS, "the write reached the redis master, but "
				    "its WAIT for %lld replicas got no answer; it may not survive "
				    "a failover", cfg->redis_wait_replicas);
	return sg_error_set(e, SG_ERR_REPLICAS, "the write reached the redis master, but only "
			    "%lld of %lld replicas confirmed it within %lld ms; it may not "
			    "survive a failover", got, cfg->redis_wait_replicas,
			    cfg->redis_wait_timeout_ms);
}

/* ---- conversation history ---- */

enum sg_err store_copy_list(redisReply *r, struct store_strlist *out, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	if (r->type != REDIS_REPLY_ARRAY)
		return sg_error_set(e, SG_ERR_REDIS, "unexpected redis reply type %d", r->type);
	if (r->elements == 0)
		return SG_OK;
	out->v = calloc(r->elements, sizeof(char *));
	out->len = calloc(r->elements, sizeof(size_t));
	if (!out->v || !out->len)
		goto nomem;
	for (size_t i = 0; i < r->elements; i++) {
		redisReply *it = r->element[i];
		if (it->type != REDIS_REPLY_STRING)
			continue;
		out->v[out->n] = malloc(it->len + 1);
		if (!out->v[out->n])
			goto nomem;
		memcpy(out->v[out->n], it->str, it->len);
		out->v[out->n][it->len] = '\0';
		out->len[out->n] = it->len;
		out->n++;
	}
	return SG_OK;
nomem:
	store_strlist_finish(out);
	return sg_error_set(e, SG_ERR_NOMEM, "out of memory copying a redis list");
}

/* ---- conversations of the layout before slot buckets ---- */

/* KEYS[1] the conversation; ARGV[1] 'get' (adopt only into an absent list)
 * or 'append' (put before what the append just wrote), ARGV[2] most
 * messages kept (0: all), ARGV[3] the old list's PTTL, ARGV[4..] its
 * messages, oldest first. Returns the list's length. */
static const char lua_adopt[] =
	"local n = redis.call('LLEN', KEYS[1]) "
	"if ARGV[1] == 'get' and n > 0 then return n end "
	"for i = #ARGV, 4, -1 do redis.call('LPUSH', KEYS[1], ARGV[i]) end "
	"local max = tonumber(ARGV[2]) "
	"if max > 0 then redis.call('LTRIM', KEYS[1], -max, -1) end "
	"if n == 0 and tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end "
	"return redis.call('LLEN', KEYS[1])";

/* Move the conversation's list of the old layout, if there is one, into
 * key: before what it holds (mode "append") or into it while it is absent
 * (mode "get"). *moved tells whether anything was. The old key is deleted
 * afterwards (another slot: not in the same transaction; the adoption is
 * idempotent for "get"). */
static enum sg_err history_adopt(struct store *s, const char *tenant, const char *conv,
				 const char *key, const char *mode, long long max, bool *moved,
				 struct sg_error *e)
{
	*moved = false;
	char *old = store_legacy_key(s, "chat", tenant, conv);
	if (!old)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	const char *argv[] = { "LRANGE", old, "0", "-1" };
	redisReply *l = NULL, *t = NULL;
	enum sg_err rc = SG_OK;
	if (!store_run_with_ttl(s, 4, argv, "PTTL", old, &l, &t, e)) {
		rc = SG_ERR_REDIS;
		goto out;
	}
	if (l->type != REDIS_REPLY_ARRAY || l->elements == 0 || t->type != REDIS_REPLY_INTEGER)
		goto out;
	const char **av = calloc(l->elements + 7, sizeof(*av));
	size_t *al = calloc(l->elements + 7, sizeof(*al));
	char smax[24], sttl[24];
	snprintf(smax, sizeof(smax), "%lld", max > 0 ? max : 0);
	snprintf(sttl, sizeof(sttl), "%lld", t->integer > 0 ? t->integer : 0);
	if (!av || !al) {
		free(av);
		free(al);
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	const char *head[] = { "EVAL", lua_adopt, "1", key, mode, smax, sttl };
	int argc = 0;
	for (; argc < 7; argc++) {
		av[argc] = head[argc];
		al[argc] = strlen(head[argc]);
	}
	for (size_t i = 0; i < l->elements; i++)
		if (l->element[i]->type == REDIS_REPLY_STRING) {
			av[argc] = l->element[i]->str;
			al[argc++] = l->element[i]->len;
		}
	redisReply *r = store_run(s, argc, av, al, e);
	free(av);
	free(al);
	if (!r) {
		rc = SG_ERR_REDIS;
		goto out;
	}
	rc = r->type == REDIS_REPLY_ERROR ? store_reply_error(r, e) : SG_OK;
	freeReplyObject(r);
	if (rc == SG_OK) {
		const char *dargv[] = { "DEL", old };
		redisReply *d = store_run(s, 2, dargv, NULL, e);
		if (d)
			freeReplyObject(d);
		*moved = true;
		sg_log(SG_LOG_INFO, "conversation %.64s of tenant %.64s moved to the slot-bucket "
		       "layout", conv, tenant);
	}
out:
	if (l)
		freeReplyObject(l);
	if (t)
		freeReplyObject(t);
	free(old);
	return rc;
}

enum sg_err store_history_get(struct store *s, const char *tenant, const char *conv,
			      struct store_strlist *out, long long *ttl,
			      struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	char *key = store_key(s, "chat", tenant, conv);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	enum sg_err rc = SG_OK;
	const char *argv[] = { "LRANGE", key, "0", "-1" };
	redisReply *r1, *r2;
	if (!store_run_with_ttl(s, 4, argv, "TTL", key, &r1, &r2, e)) {
		rc = e && e->code ? e->code : SG_ERR_REDIS;
	} else if (r1->type == REDIS_REPLY_ERROR) {
		rc = store_reply_error(r1, e);
	} else if (r2->type != REDIS_REPLY_INTEGER) {
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected TTL reply");
	} else {
		rc = store_copy_list(r1, out, e);
		*ttl = r2->integer;
	}
	if (r1)
		freeReplyObject(r1);
	if (r2)
		freeReplyObject(r2);
	bool moved = false;
	/* no such list: maybe one of the old layout, moved here on first read */
	if (rc == SG_OK && *ttl == -2 &&
	    (rc = history_adopt(s, tenant, conv, key, "get", 0, &moved, e)) == SG_OK && moved) {
		store_strlist_finish(out);
		free(key);
		return store_history_get(s, tenant, conv, out, ttl, e);
	}
	free(key);
	return rc;
}

/* Read the replies of a MULTI ... EXEC block of ncmds queued commands and
 * return the EXEC array reply (caller frees) or NULL with e set. */
bool store_replies_pending(const struct store *s)
{
	return s->cluster ? s->qpos < s->qn : s->c != NULL;
}

redisReply *store_read_exec(struct store *s, size_t ncmds, struct sg_error *e)
{
	/* the queued commands are written by the first read: this is the
	 * whole round trip */
	double t0 = sg_now_ms();
	redisReply *exec = NULL, *bad = NULL;
	for (size_t i = 0; i < ncmds + 1; i++) { /* MULTI + each QUEUED */
		redisReply *r = store_read_reply(s, e);
		if (!r)
			goto lost;
		if (r->type == REDIS_REPLY_ERROR && !bad)
			bad = r;
		else
			freeReplyObject(r);
	}
	exec = store_read_reply(s, e);
	metrics_observe(SG_H_REDIS, sg_now_ms() - t0);
	if (!exec)
		goto lost;
	if (bad || exec->type != REDIS_REPLY_ARRAY) {
		if (bad)
			store_reply_error(bad, e);
		else
			sg_error_set(e, SG_ERR_REDIS, "transaction aborted");
		if (bad)
			freeReplyObject(bad);
		freeReplyObject(exec);
		return NULL;
	}
	return exec;
lost:
	if (bad)
		freeReplyObject(bad);
	return NULL;
}

/* LLEN key, or fallback when it cannot be read. */
static long long store_history_len(struct store *s, const char *key, long long fallback)
{
	const char *argv[] = { "LLEN", key };
	redisReply *r = store_run(s, 2, argv, NULL, NULL);
	long long n = r && r->type == REDIS_REPLY_INTEGER ? r->integer : fallback;
	if (r)
		freeReplyObject(r);
	return n;
}

enum sg_err store_history_append(struct store *s, const char *tenant, const char *conv,
				 const char *const *items, const size_t *lens, size_t n,
				 long long max, long long ttl_s, struct store_capture *cap,
				 long long *new_len, struct sg_error *e)
{
	char *key = store_key(s, "chat", tenant, conv);
	const char **argv = calloc(n + 2, sizeof(char *));
	size_t *alen = calloc(n + 2, sizeof(size_t));
	enum sg_err rc = SG_OK;
	if (!key || !argv || !alen) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((rc = store_conn(s, e)) != SG_OK)
		goto out;
	argv[0] = "RPUSH";
	alen[0] = 5;
	argv[1] = key;
	alen[1] = strlen(key);
	for (size_t i = 0; i < n; i++) {
		argv[i + 2] = items[i];
		alen[i + 2] = lens[i];
	}
	redisAppendCommand(s->c, "MULTI");
	redisAppendCommandArgv(s->c, (int)(n + 2), argv, alen);
	if (cap) {
		/* summaries on: what falls out of the window moves to pending */
		if ((rc = store_capture_append(s, tenant, conv, key, max, ttl_s, cap, e)) != SG_OK) {
			store_drop(s); /* a half-queued MULTI must not be sent */
			goto out;
		}
	} else {
		redisAppendCommand(s->c, "LTRIM %s %lld -1", key, -max);
	}
	redisAppendCommand(s->c, "EXPIRE %s %lld", key, ttl_s);
	redisAppendCommand(s->c, "LLEN %s", key);
	size_t queued = 4;
	if (store_archive_on(s->cfg)) {
		/* the turn's archive record commits or fails with the turn */
		char *rec = store_archive_turn_render(tenant, conv, items, lens, n);
		if (!rec || !store_archive_append(s, tenant, conv, rec, NULL, 0)) {
			free(rec);
			store_drop(s); /* commands are already buffered */
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			goto out;
		}
		free(rec);
		queued++;
	}
	redisAppendCommand(s->c, "EXEC");
	int waits = store_append_wait(s);
	redisReply *exec = store_read_exec(s, queued, e);
	if (!exec) {
		rc = e && e->code ? e->code : SG_ERR_REDIS;
		if (waits > 0)
			store_skip_wait(s);
		goto out;
	}
	if (exec->elements == queued && exec->element[3]->type == REDIS_REPLY_INTEGER)
		*new_len = exec->element[3]->integer;
	else
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected EXEC reply");
	if (rc == SG_OK && cap)
		rc = store_capture_result(exec->element[1], cap, e);
	freeReplyObject(exec);
	if (waits > 0) {
		enum sg_err wrc = store_read_wait(s, e);
		if (rc == SG_OK)
			rc = wrc;
	} else if (waits < 0 && rc == SG_OK) {
		/* written, but never waited for: not acknowledged */
		rc = sg_error_set(e, SG_ERR_REPLICAS, "the write reached the redis master, but "
				  "there was no memory to wait for its replicas");
	}
	bool moved = false;
	/* this append began the list: the conversation may have one of the old
	 * layout, which goes before it */
	struct sg_error ae = { 0 }; /* the turn is stored whatever this does */
	if (rc == SG_OK && *new_len == (long long)n &&
	    history_adopt(s, tenant, conv, key, "append", max, &moved, &ae) == SG_OK && moved)
		*new_len = store_history_len(s, key, *new_len);
out:
	free(key);
	free(argv);
	free(alen);
	return rc;
}

enum sg_err store_history_delete(struct store *s, const char *tenant, const char *conv,
				 bool *existed, struct sg_error *e)
{
	/* the summary and its pending messages go with the conversation */
	char *key = store_key(s, "chat", tenant, conv);
	char *pend = store_key(s, "chatpend", tenant, conv);
	char *sum = store_key(s, "chatsum", tenant, conv);
	char *rec = NULL;
	redisReply *r = NULL;
	enum sg_err rc = SG_OK;
	if (!key || !pend || !sum) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (!store_archive_on(s->cfg)) {
		const char *argv[] = { "DEL", key, pend, sum };
		if (!(r = store_run(s, 4, argv, NULL, e))) {
			rc = SG_ERR_REDIS;
			goto out;
		}
		if (r->type == REDIS_REPLY_INTEGER)
			*existed = r->integer > 0;
		else
			rc = store_reply_error(r, e);
		freeReplyObject(r);
		goto out;
	}
	/* archive on: the delete reaches the archive too, in the same
	 * transaction (also when the window has expired from Redis) */
	if (!(rec = store_archive_del_render(false, tenant, conv))) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((rc = store_conn(s, e)) != SG_OK)
		goto out;
	redisAppendCommand(s->c, "MULTI");
	redisAppendCommand(s->c, "DEL %s %s %s", key, pend, sum);
	if (!store_archive_append(s, tenant, conv, rec, NULL, 0)) {
		store_drop(s);
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	redisAppendCommand(s->c, "EXEC");
	redisReply *exec = store_read_exec(s, 2, e);
	if (!exec) {
		rc = SG_ERR_REDIS;
		goto out;
	}
	if (exec->elements == 2 && exec->element[0]->type == REDIS_REPLY_INTEGER)
		*existed = exec->element[0]->integer > 0;
	else
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected EXEC reply");
	freeReplyObject(exec);
out:
	free(rec);
	free(key);
	free(pend);
	free(sum);
	return rc;
}

