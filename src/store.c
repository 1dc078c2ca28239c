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

#include <hiredis/hiredis.h>

#include "semgate/clock.h"
#include "semgate/log.h"
#include "semgate/store.h"

#define RECONNECT_BACKOFF_MS 100.0

struct store {
	const struct sg_config *cfg;
	redisContext *c;
	double next_attempt_ms; /* monotonic; no connect before this */
	bool had_connection;    /* a success before the current outage */
};

static atomic_ullong g_reconnects;

unsigned long long store_reconnects(void)
{
	return atomic_load(&g_reconnects);
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
	if (s)
		s->cfg = cfg;
	return s;
}

void store_destroy(struct store *s)
{
	if (!s)
		return;
	if (s->c)
		redisFree(s->c);
	free(s);
}

/* ---- key layout: the only place key names are made ---- */

static char *key_fmt(const struct store *s, const char *kind, const char *tenant,
		     const char *rest)
{
	char *k = NULL;
	if (asprintf(&k, "%s%s:%s:%s", s->cfg->redis_prefix, kind, tenant, rest) < 0)
		return NULL;
	return k;
}

/* ---- connection ---- */

static void drop(struct store *s)
{
	if (s->c) {
		redisFree(s->c);
		s->c = NULL;
	}
	s->next_attempt_ms = sg_now_ms() + RECONNECT_BACKOFF_MS;
}

static enum sg_err conn_get(struct store *s, struct sg_error *e)
{
	if (s->c && !s->c->err)
		return SG_OK;
	if (s->c)
		drop(s);
	if (sg_now_ms() < s->next_attempt_ms)
		return sg_error_set(e, SG_ERR_REDIS, "redis unavailable (retrying shortly)");
	const struct sg_config *cfg = s->cfg;
	struct timeval tv = {
		.tv_sec = cfg->redis_timeout_ms / 1000,
		.tv_usec = (cfg->redis_timeout_ms % 1000) * 1000,
	};
	redisContext *c = redisConnectWithTimeout(cfg->redis_host, (int)cfg->redis_port, tv);
	if (!c || c->err) {
		sg_error_set(e, SG_ERR_REDIS, "cannot connect to redis at %s:%lld: %s",
			     cfg->redis_host, cfg->redis_port, c ? c->errstr : "out of memory");
		if (c)
			redisFree(c);
		s->next_attempt_ms = sg_now_ms() + RECONNECT_BACKOFF_MS;
		return SG_ERR_REDIS;
	}
	redisSetTimeout(c, tv);
	redisEnableKeepAlive(c);
	redisReply *r;
	if (cfg->redis_password[0]) {
		r = redisCommand(c, "AUTH %s", cfg->redis_password);
		if (!r || r->type == REDIS_REPLY_ERROR) {
			/* the reply text may echo nothing secret, but keep it out anyway */
			sg_error_set(e, SG_ERR_REDIS, "redis AUTH failed");
			goto fail;
		}
		freeReplyObject(r);
	}
	if (cfg->redis_db) {
		r = redisCommand(c, "SELECT %lld", cfg->redis_db);
		if (!r || r->type == REDIS_REPLY_ERROR) {
			sg_error_set(e, SG_ERR_REDIS, "redis SELECT %lld failed: %s",
				     cfg->redis_db, r ? r->str : c->errstr);
			goto fail;
		}
		freeReplyObject(r);
	}
	s->c = c;
	if (s->had_connection) {
		atomic_fetch_add(&g_reconnects, 1);
		sg_log(SG_LOG_INFO, "reconnected to redis at %s:%lld", cfg->redis_host,
		       cfg->redis_port);
	}
	s->had_connection = true;
	return SG_OK;
fail:
	if (r)
		freeReplyObject(r);
	redisFree(c);
	s->next_attempt_ms = sg_now_ms() + RECONNECT_BACKOFF_MS;
	return SG_ERR_REDIS;
}

/* Read one pipelined reply. NULL means the connection is gone (dropped
 * here, e set); an error reply is returned for the caller to judge. */
static redisReply *read_reply(struct store *s, struct sg_error *e)
{
	void *r = NULL;
	if (redisGetReply(s->c, &r) != REDIS_OK || !r) {
		sg_error_set(e, SG_ERR_REDIS, "redis connection lost: %s",
			     s->c->errstr[0] ? s->c->errstr : "no reply");
		drop(s);
		return NULL;
	}
	return r;
}

/* Run one command given as argv; the reply belongs to the caller. */
static redisReply *run_argv(struct store *s, int argc, const char **argv,
			    const size_t *lens, struct sg_error *e)
{
	if (conn_get(s, e) != SG_OK)
		return NULL;
	if (redisAppendCommandArgv(s->c, argc, argv, lens) != REDIS_OK) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory building a redis command");
		drop(s);
		return NULL;
	}
	return read_reply(s, e);
}

static enum sg_err reply_error(redisReply *r, struct sg_error *e)
{
	return sg_error_set(e, SG_ERR_REDIS, "redis error: %.200s", r->str);
}

enum sg_err store_ping(struct store *s, struct sg_error *e)
{
	const char *argv[] = { "PING" };
	redisReply *r = run_argv(s, 1, argv, NULL, e);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = SG_OK;
	if (r->type == REDIS_REPLY_ERROR)
		rc = reply_error(r, e);
	freeReplyObject(r);
	return rc;
}

/* ---- conversation history ---- */

static enum sg_err copy_list(redisReply *r, struct store_strlist *out, struct sg_error *e)
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

enum sg_err store_history_get(struct store *s, const char *tenant, const char *conv,
			      struct store_strlist *out, long long *ttl,
			      struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	char *key = key_fmt(s, "chat", tenant, conv);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	enum sg_err rc = conn_get(s, e);
	if (rc != SG_OK)
		goto out;
	redisAppendCommand(s->c, "LRANGE %s 0 -1", key);
	redisAppendCommand(s->c, "TTL %s", key);
	redisReply *r1 = read_reply(s, e);
	redisReply *r2 = r1 ? read_reply(s, e) : NULL;
	if (!r1 || !r2) {
		rc = SG_ERR_REDIS;
	} else if (r1->type == REDIS_REPLY_ERROR) {
		rc = reply_error(r1, e);
	} else if (r2->type != REDIS_REPLY_INTEGER) {
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected TTL reply");
	} else {
		rc = copy_list(r1, out, e);
		*ttl = r2->integer;
	}
	if (r1)
		freeReplyObject(r1);
	if (r2)
		freeReplyObject(r2);
out:
	free(key);
	return rc;
}

/* Read the replies of a MULTI ... EXEC block of ncmds queued commands and
 * return the EXEC array reply (caller frees) or NULL with e set. */
static redisReply *read_exec(struct store *s, size_t ncmds, struct sg_error *e)
{
	redisReply *bad = NULL;
	for (size_t i = 0; i < ncmds + 1; i++) { /* MULTI + each QUEUED */
		redisReply *r = read_reply(s, e);
		if (!r)
			goto lost;
		if (r->type == REDIS_REPLY_ERROR && !bad)
			bad = r;
		else
			freeReplyObject(r);
	}
	redisReply *exec = read_reply(s, e);
	if (!exec)
		goto lost;
	if (bad || exec->type != REDIS_REPLY_ARRAY) {
		if (bad)
			reply_error(bad, e);
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

enum sg_err store_history_append(struct store *s, const char *tenant, const char *conv,
				 const char *const *items, const size_t *lens, size_t n,
				 long long max, long long ttl_s, long long *new_len,
				 struct sg_error *e)
{
	char *key = key_fmt(s, "chat", tenant, conv);
	const char **argv = calloc(n + 2, sizeof(char *));
	size_t *alen = calloc(n + 2, sizeof(size_t));
	enum sg_err rc = SG_OK;
	if (!key || !argv || !alen) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((rc = conn_get(s, e)) != SG_OK)
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
	redisAppendCommand(s->c, "LTRIM %s %lld -1", key, -max);
	redisAppendCommand(s->c, "EXPIRE %s %lld", key, ttl_s);
	redisAppendCommand(s->c, "LLEN %s", key);
	redisAppendCommand(s->c, "EXEC");
	redisReply *exec = read_exec(s, 4, e);
	if (!exec) {
		rc = SG_ERR_REDIS;
		goto out;
	}
	if (exec->elements == 4 && exec->element[3]->type == REDIS_REPLY_INTEGER)
		*new_len = exec->element[3]->integer;
	else
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected EXEC reply");
	freeReplyObject(exec);
out:
	free(key);
	free(argv);
	free(alen);
	return rc;
}

enum sg_err store_history_delete(struct store *s, const char *tenant, const char *conv,
				 bool *existed, struct sg_error *e)
{
	char *key = key_fmt(s, "chat", tenant, conv);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	const char *argv[] = { "DEL", key };
	redisReply *r = run_argv(s, 2, argv, NULL, e);
	free(key);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = SG_OK;
	if (r->type == REDIS_REPLY_INTEGER)
		*existed = r->integer > 0;
	else
		rc = reply_error(r, e);
	freeReplyObject(r);
	return rc;
}

/* ---- cache entries ---- */

void store_answer_finish(struct store_answer *a)
{
	if (!a)
		return;
	free(a->answer);
	a->answer = NULL;
}

enum sg_err store_entry_put(struct store *s, const char *tenant,
			    const struct store_entry *en, struct sg_error *e)
{
	char *ekey = key_fmt(s, "e", tenant, en->id);
	char *xkey = en->exact ? key_fmt(s, "x", tenant, en->exact) : NULL;
	char *xval = NULL;
	size_t xlen = strlen(en->id) + 1 + en->answer_len;
	enum sg_err rc = SG_OK;
	if (!ekey || (en->exact && !xkey) || !(xval = malloc(xlen))) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(xval, en->id, strlen(en->id));
	xval[strlen(en->id)] = '\n';
	memcpy(xval + strlen(en->id) + 1, en->answer, en->answer_len);
	if ((rc = conn_get(s, e)) != SG_OK)
		goto out;

	char created[24], tokens[24], dim[16], ttl[24];
	snprintf(created, sizeof(created), "%lld", en->created);
	snprintf(tokens, sizeof(tokens), "%lld", en->tokens);
	snprintf(dim, sizeof(dim), "%d", en->vec ? en->dim : 0);
	snprintf(ttl, sizeof(ttl), "%lld", en->ttl_s);
	const char *argv[32];
	size_t alen[32];
	int n = 0;
#define ARG(p, l) do { argv[n] = (p); alen[n] = (l); n++; } while (0)
#define ARGS(p) ARG((p), strlen(p))
	ARGS("HSET");
	ARGS(ekey);
	ARGS("query"); ARG(en->query, en->query_len);
	ARGS("answer"); ARG(en->answer, en->answer_len);
	ARGS("scope"); ARGS(en->scope);
	ARGS("namespace"); ARGS(en->ns);
	ARGS("exact"); ARGS(en->exact ? en->exact : "");
	ARGS("dim"); ARGS(dim);
	ARGS("model"); ARGS(en->emb_model);
	ARGS("created"); ARGS(created);
	ARGS("tokens"); ARGS(tokens);
	ARGS("hits"); ARGS("0");
	if (en->vec) {
		ARGS("vector");
		ARG((const char *)en->vec, sizeof(float) * (size_t)en->dim);
	}
#undef ARG
#undef ARGS
	size_t queued = 2;
	redisAppendCommand(s->c, "MULTI");
	redisAppendCommandArgv(s->c, n, argv, alen);
	redisAppendCommand(s->c, "EXPIRE %s %s", ekey, ttl);
	if (xkey) {
		redisAppendCommand(s->c, "SET %s %b EX %s", xkey, xval, xlen, ttl);
		queued++;
	}
	redisAppendCommand(s->c, "EXEC");
	redisReply *exec = read_exec(s, queued, e);
	if (!exec)
		rc = SG_ERR_REDIS;
	else
		freeReplyObject(exec);
out:
	free(ekey);
	free(xkey);
	free(xval);
	return rc;
}

static enum sg_err dup_answer(struct store_answer *out, const char *p, size_t len,
			      struct sg_error *e)
{
	out->answer = malloc(len + 1);
	if (!out->answer)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	memcpy(out->answer, p, len);
	out->answer[len] = '\0';
	out->answer_len = len;
	return SG_OK;
}

enum sg_err store_exact_get(struct store *s, const char *tenant, const char *exact,
			    struct store_answer *out, bool *found, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	*found = false;
	char *key = key_fmt(s, "x", tenant, exact);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	const char *argv[] = { "GET", key };
	redisReply *r = run_argv(s, 2, argv, NULL, e);
	free(key);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = SG_OK;
	if (r->type == REDIS_REPLY_STRING) {
		const char *nl = memchr(r->str, '\n', r->len);
		size_t idlen = nl ? (size_t)(nl - r->str) : 0;
		/* anything not in our "<id>\n<answer>" shape is a miss, not a crash */
		if (nl && idlen > 0 && idlen < sizeof(out->id)) {
			memcpy(out->id, r->str, idlen);
			out->id[idlen] = '\0';
			rc = dup_answer(out, nl + 1, r->len - idlen - 1, e);
			*found = rc == SG_OK;
		}
	} else if (r->type == REDIS_REPLY_ERROR) {
		rc = reply_error(r, e);
	}
	freeReplyObject(r);
	return rc;
}

enum sg_err store_entry_answer(struct store *s, const char *tenant, const char *id,
			       struct store_answer *out, bool *found, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	*found = false;
	char *key = key_fmt(s, "e", tenant, id);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	const char *argv[] = { "HMGET", key, "answer", "tokens" };
	redisReply *r = run_argv(s, 4, argv, NULL, e);
	free(key);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = SG_OK;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
	    r->element[0]->type == REDIS_REPLY_STRING) {
		snprintf(out->id, sizeof(out->id), "%s", id);
		if (r->element[1]->type == REDIS_REPLY_STRING)
			out->tokens = strtoll(r->element[1]->str, NULL, 10);
		rc = dup_answer(out, r->element[0]->str, r->element[0]->len, e);
		*found = rc == SG_OK;
	} else if (r->type == REDIS_REPLY_ERROR) {
		rc = reply_error(r, e);
	}
	freeReplyObject(r);
	return rc;
}

enum sg_err store_entry_hit(struct store *s, const char *tenant, const char *id,
			    struct sg_error *e)
{
	char *key = key_fmt(s, "e", tenant, id);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	/* only count hits on an entry that still exists: HINCRBY would
	 * otherwise create a key without a TTL */
	const char *argv[] = { "EVAL",
		"if redis.call('EXISTS', KEYS[1]) == 1 then "
		"return redis.call('HINCRBY', KEYS[1], 'hits', 1) end return 0",
		"1", key };
	redisReply *r = run_argv(s, 4, argv, NULL, e);
	free(key);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = r->type == REDIS_REPLY_ERROR ? reply_error(r, e) : SG_OK;
	freeReplyObject(r);
	return rc;
}

/* Split "{prefix}e:{tenant}:{id}" into tenant and id. */
static bool parse_entry_key(const struct store *s, const char *key, size_t len,
			    char *tenant, size_t tcap, char *id, size_t icap)
{
	size_t plen = strlen(s->cfg->redis_prefix);
	if (len < plen + 2 || memcmp(key, s->cfg->redis_prefix, plen) != 0 ||
	    memcmp(key + plen, "e:", 2) != 0)
		return false;
	const char *t = key + plen + 2, *end = key + len;
	const char *colon = memchr(t, ':', (size_t)(end - t));
	if (!colon || (size_t)(colon - t) >= tcap || (size_t)(end - colon - 1) >= icap ||
	    colon == t || colon + 1 == end)
		return false;
	memcpy(tenant, t, (size_t)(colon - t));
	tenant[colon - t] = '\0';
	memcpy(id, colon + 1, (size_t)(end - colon - 1));
	id[end - colon - 1] = '\0';
	return true;
}

enum sg_err store_scan_entries(struct store *s, store_entry_fn fn, void *ud,
			       size_t *scanned, struct sg_error *e)
{
	*scanned = 0;
	char *pattern = NULL;
	if (asprintf(&pattern, "%se:*", s->cfg->redis_prefix) < 0)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	char cursor[32] = "0";
	enum sg_err rc = SG_OK;
	do {
		if ((rc = conn_get(s, e)) != SG_OK)
			break;
		redisReply *r = redisCommand(s->c, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
		if (!r) {
			drop(s);
			rc = sg_error_set(e, SG_ERR_REDIS, "redis connection lost during SCAN");
			break;
		}
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
		    r->element[0]->type != REDIS_REPLY_STRING ||
		    r->element[1]->type != REDIS_REPLY_ARRAY) {
			freeReplyObject(r);
			rc = sg_error_set(e, SG_ERR_REDIS, "unexpected SCAN reply");
			break;
		}
		snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
		redisReply *keys = r->element[1];
		for (size_t i = 0; i < keys->elements; i++) {
			redisReply *k = keys->element[i];
			redisAppendCommand(s->c, "HMGET %b vector dim model scope", k->str, k->len);
			redisAppendCommand(s->c, "PTTL %b", k->str, k->len);
		}
		for (size_t i = 0; i < keys->elements && rc == SG_OK; i++) {
			redisReply *h = read_reply(s, e);
			redisReply *t = h ? read_reply(s, e) : NULL;
			if (!h || !t) {
				if (h)
					freeReplyObject(h);
				rc = SG_ERR_REDIS;
				break;
			}
			redisReply *k = keys->element[i];
			char tenant[128], id[128];
			if (h->type == REDIS_REPLY_ARRAY && h->elements == 4 &&
			    h->element[0]->type == REDIS_REPLY_STRING &&
			    h->element[1]->type == REDIS_REPLY_STRING &&
			    h->element[2]->type == REDIS_REPLY_STRING &&
			    h->element[3]->type == REDIS_REPLY_STRING &&
			    t->type == REDIS_REPLY_INTEGER && t->integer != -2 &&
			    parse_entry_key(s, k->str, k->len, tenant, sizeof(tenant), id, sizeof(id))) {
				long dim = strtol(h->element[1]->str, NULL, 10);
				redisReply *blob = h->element[0];
				if (dim > 0 && dim <= 8192 && blob->len == sizeof(float) * (size_t)dim) {
					float *v = malloc(blob->len);
					if (v) {
						memcpy(v, blob->str, blob->len);
						fn(ud, tenant, id, h->element[3]->str,
						   h->element[2]->str, v, (int)dim, t->integer);
						free(v);
						(*scanned)++;
					}
				}
			}
			freeReplyObject(h);
			freeReplyObject(t);
		}
		freeReplyObject(r);
	} while (rc == SG_OK && strcmp(cursor, "0") != 0);
	free(pattern);
	return rc;
}
