/* Cache entries in Redis: entry hashes {prefix}e:{tenant}:{id}, exact keys
 * {prefix}x:{tenant}:{sha}, and the scan that rebuilds the vector index.
 * Every write also updates the tenant's stats accounting (stats.c).
 * Part of the store module: key names are built only in src/store/. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/clock.h"
#include "semgate/core/metrics.h"
#include "semgate/store/archive.h"
#include "semgate/store/layout.h"
#include "semgate/store/store.h"
#include "codec.h"
#include "priv.h"

/* ---- cache entries ---- */

void store_answer_finish(struct store_answer *a)
{
	if (!a)
		return;
	free(a->answer);
	a->answer = NULL;
}

enum sg_err store_entry_put_send(struct store *s, const char *tenant,
				 const struct store_entry *en, struct store_put *p,
				 struct sg_error *e)
{
	memset(p, 0, sizeof(*p));
	bool text = en->kind && strcmp(en->kind, "text") == 0;
	/* a text entry's exact value says so, so the chat route never serves it */
	const char *xmark = text ? ":text" : "";
	unsigned bucket = store_bucket_of(tenant, en->id);
	char *ekey = store_key(s, "e", tenant, en->id);
	char *xkey = en->exact ? store_key(s, "x", tenant, en->exact) : NULL;
	char *xval = NULL, *tagstr = NULL;
	char **tkeys = en->ntags ? calloc(en->ntags, sizeof(char *)) : NULL;
	size_t idlen = strlen(en->id) + strlen(xmark);
	size_t xlen = idlen + 1 + en->answer_len;
	size_t taglen = 0;
	enum sg_err rc = SG_OK;
	for (size_t i = 0; i < en->ntags; i++)
		taglen += strlen(en->tags[i]) + 1;
	if (en->exact && store_bucket_of(tenant, en->exact) != bucket) {
		/* cache_new_id + store_entry_id_fit make ids that fit */
		rc = sg_error_set(e, SG_ERR_INTERNAL, "entry id not in its exact key's bucket");
		goto out;
	}
	if (!ekey || (en->exact && !xkey) || !(xval = malloc(xlen)) ||
	    !(tagstr = calloc(1, taglen + 1)) || (en->ntags && !tkeys)) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < en->ntags; i++) {
		if (!(tkeys[i] = store_key_in(s, "tag", bucket, tenant, en->tags[i]))) {
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			goto out;
		}
		if (i)
			strcat(tagstr, ",");
		strcat(tagstr, en->tags[i]);
	}
	snprintf(xval, idlen + 1, "%s%s", en->id, xmark);
	xval[idlen] = '\n';
	memcpy(xval + idlen + 1, en->answer, en->answer_len);
	if ((rc = store_conn(s, e)) != SG_OK)
		goto out;

	char created[24], tokens[24], dim[16], ttl[24];
	snprintf(created, sizeof(created), "%lld", en->created);
	snprintf(tokens, sizeof(tokens), "%lld", en->tokens);
	snprintf(dim, sizeof(dim), "%d", en->vec ? en->dim : 0);
	snprintf(ttl, sizeof(ttl), "%lld", en->ttl_s);
	const char *argv[40];
	size_t alen[40];
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
	ARGS("kind"); ARGS(text ? "text" : "chat");
	if (en->ntags) {
		ARGS("tags"); ARGS(tagstr);
	}
	if (en->metadata) {
		ARGS("metadata"); ARG(en->metadata, en->metadata_len);
	}
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
	for (size_t i = 0; i < en->ntags; i++) {
		redisAppendCommand(s->c, "SADD %s %s", tkeys[i], en->id);
		redisAppendCommand(s->c, "EVAL %s 1 %s %s", store_lua_expire_max, tkeys[i], ttl);
		queued += 2;
	}
	/* the stats accounting reads the entry as just written, so an
	 * overwrite of the same id is counted once, with its new sizes */
	size_t acct = queued;
	if (!store_acct_append_sync(s, tenant, en->id)) {
		/* commands are already buffered: abandon the connection */
		store_drop(s);
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	queued++;
	if (store_archive_on(s->cfg) && !en->no_archive) {
		char *rec = store_archive_entry_render(tenant, en, sg_wall_ms() / 1000 + en->ttl_s);
		bool ok = rec && store_archive_append(s, tenant, en->id, rec,
						      en->vec ? (const char *)en->vec : NULL,
						      en->vec ? sizeof(float) * (size_t)en->dim : 0);
		free(rec);
		if (!ok) {
			store_drop(s);
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			goto out;
		}
		queued++;
	}
	/* published at EXEC, so a subscriber that reads the entry finds it */
	if (en->vec && store_append_publish(s, "add", tenant, en->id, en->scope,
					    en->emb_model, en->dim))
		queued++;
	redisAppendCommand(s->c, "EXEC");
	p->queued = queued;
	p->acct = acct;
out:
	for (size_t i = 0; tkeys && i < en->ntags; i++)
		free(tkeys[i]);
	free(tkeys);
	free(tagstr);
	free(ekey);
	free(xkey);
	free(xval);
	return rc;
}

enum sg_err store_entry_put_recv(struct store *s, struct store_put *p, struct sg_error *e)
{
	redisReply *exec = store_read_exec(s, p->queued, e);
	if (!exec)
		return SG_ERR_REDIS;
	p->acct_body = store_acct_check(exec, p->acct);
	freeReplyObject(exec);
	return SG_OK;
}

void store_entry_put_finish(struct store *s, const char *tenant, const char *id,
			    const struct store_put *p)
{
	if (p->acct_body)
		store_acct_sync_now(s, tenant, id);
}

enum sg_err store_entry_put(struct store *s, const char *tenant,
			    const struct store_entry *en, struct sg_error *e)
{
	struct store_put p;
	enum sg_err rc = store_entry_put_send(s, tenant, en, &p, e);
	if (rc == SG_OK)
		rc = store_entry_put_recv(s, &p, e);
	if (rc == SG_OK)
		store_entry_put_finish(s, tenant, en->id, &p);
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

bool store_exact_keyname(const struct sg_config *cfg, const char *tenant, const char *exact,
			 char *out, size_t cap)
{
	int n = snprintf(out, cap, "%sx:{%s}:%s:%s", cfg->redis_prefix,
			 store_bucket_tag(store_bucket_of(tenant, exact)), tenant, exact);
	return n > 0 && (size_t)n < cap;
}

enum sg_err store_exact_send(struct store *s, const char *tenant, const char *exact, bool pttl,
			     struct sg_error *e)
{
	char *key = store_key(s, "x", tenant, exact);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	const char *argv[] = { "GET", key };
	bool sent = store_send_with_ttl(s, 2, argv, pttl ? "PTTL" : NULL, key, e);
	free(key);
	return sent ? SG_OK : SG_ERR_REDIS;
}

enum sg_err store_exact_recv(struct store *s, struct store_answer *out, bool *found,
			     long long *pttl_ms, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	*found = false;
	redisReply *r, *t = NULL;
	if (pttl_ms)
		*pttl_ms = -2;
	if (!store_recv_with_ttl(s, &r, pttl_ms ? &t : NULL, e))
		return SG_ERR_REDIS;
	if (t && t->type == REDIS_REPLY_INTEGER)
		*pttl_ms = t->integer;
	if (t)
		freeReplyObject(t);
	enum sg_err rc = SG_OK;
	if (r->type == REDIS_REPLY_STRING) {
		const char *ans;
		size_t alen;
		/* anything not in our "<id>\n<answer>" shape is a miss, not a crash */
		if (store_codec_exact(r->str, r->len, out->id, &ans, &alen)) {
			/* text (sidecar) entries write "<id>:text\n<answer>" */
			size_t idlen = strlen(out->id);
			snprintf(out->kind, sizeof(out->kind), "chat");
			if (idlen > 5 && strcmp(out->id + idlen - 5, ":text") == 0) {
				out->id[idlen - 5] = '\0';
				snprintf(out->kind, sizeof(out->kind), "text");
			}
			rc = dup_answer(out, ans, alen, e);
			*found = rc == SG_OK;
		}
	} else if (r->type == REDIS_REPLY_ERROR) {
		rc = store_reply_error(r, e);
	}
	freeReplyObject(r);
	return rc;
}

enum sg_err store_exact_get(struct store *s, const char *tenant, const char *exact,
			    struct store_answer *out, bool *found, long long *pttl_ms,
			    struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	*found = false;
	enum sg_err rc = store_exact_send(s, tenant, exact, pttl_ms != NULL, e);
	return rc != SG_OK ? rc : store_exact_recv(s, out, found, pttl_ms, e);
}

enum sg_err store_entry_answer(struct store *s, const char *tenant, const char *id,
			       struct store_answer *out, bool *found, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	*found = false;
	char *key = store_key(s, "e", tenant, id);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	const char *argv[] = { "HMGET", key, "answer", "tokens", "kind" };
	redisReply *r = store_run(s, 5, argv, NULL, e);
	free(key);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = SG_OK;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
	    r->element[0]->type == REDIS_REPLY_STRING) {
		snprintf(out->id, sizeof(out->id), "%s", id);
		if (r->element[1]->type == REDIS_REPLY_STRING)
			out->tokens = strtoll(r->element[1]->str, NULL, 10);
		/* entries written before kinds existed are chat entries */
		snprintf(out->kind, sizeof(out->kind), "%.7s",
			 r->element[2]->type == REDIS_REPLY_STRING ? r->element[2]->str : "chat");
		rc = dup_answer(out, r->element[0]->str, r->element[0]->len, e);
		*found = rc == SG_OK;
	} else if (r->type == REDIS_REPLY_ERROR) {
		rc = store_reply_error(r, e);
	}
	freeReplyObject(r);
	return rc;
}

/* Split "{prefix}e:{tenant}:{id}" into tenant and id. */
static bool parse_entry_key(const struct store *s, const char *key, size_t len,
			    char *tenant, size_t tcap, char *id, size_t icap)
{
	return store_codec_entry_key(s->cfg->redis_prefix, key, len, tenant, tcap, id, icap);
}

/* Index one SCAN batch of entry keys: HMGET + PTTL each, pipelined. */
struct entry_scan {
	store_entry_fn fn;
	void *ud;
	const atomic_bool *stop;
	size_t *scanned;
};

static enum sg_err scan_batch(struct store *s, redisReply *keys, void *ud, struct sg_error *e)
{
	const struct entry_scan *es = ud;
	store_entry_fn fn = es->fn;
	size_t *scanned = es->scanned;
	if (es->stop && atomic_load(es->stop))
		return sg_error_set(e, SG_ERR_INTERNAL, "stopped");
	enum sg_err rc = store_conn(s, e);
	if (rc != SG_OK)
		return rc;
	for (size_t i = 0; i < keys->elements; i++) {
		redisReply *k = keys->element[i];
		redisAppendCommand(s->c, "HMGET %b vector dim model scope", k->str, k->len);
		redisAppendCommand(s->c, "PTTL %b", k->str, k->len);
	}
	for (size_t i = 0; i < keys->elements; i++) {
		redisReply *h, *t;
		if (!store_read_two(s, &h, &t, e))
			return SG_ERR_REDIS;
		redisReply *k = keys->element[i];
		char tenant[128], id[128];
		/* a refused read (CLUSTERDOWN, LOADING, NOPERM) fails the batch:
		 * an entry left unread would count as gone, and a resync drops
		 * gone rows. A key that is not a hash (WRONGTYPE) is no entry.
		 * The rest of the replies are still read, to stay in step. */
		redisReply *bad = h->type == REDIS_REPLY_ERROR ? h :
				  t->type == REDIS_REPLY_ERROR ? t : NULL;
		if (rc == SG_OK && bad && strncmp(bad->str, "WRONGTYPE", 9) != 0)
			rc = store_reply_error(bad, e);
		if (rc == SG_OK && h->type == REDIS_REPLY_ARRAY && h->elements == 4 &&
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
					fn(es->ud, tenant, id, h->element[3]->str, h->element[2]->str, v,
					   (int)dim, t->integer);
					free(v);
					(*scanned)++;
				}
			}
		}
		freeReplyObject(h);
		freeReplyObject(t);
	}
	return rc;
}

enum sg_err store_scan_entries(struct store *s, store_entry_fn fn, void *ud,
			       const atomic_bool *stop, size_t *scanned, struct sg_error *e)
{
	*scanned = 0;
	char *pattern = store_key_pattern(s, "e", NULL);
	if (!pattern)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	struct entry_scan es = { .fn = fn, .ud = ud, .stop = stop, .scanned = scanned };
	enum sg_err rc = store_scan_every_node(s, pattern, scan_batch, &es, e);
	free(pattern);
	return rc;
}
