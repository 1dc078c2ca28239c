/* Running summaries of what falls out of a conversation's window: the
 * pending list {prefix}chatpend:{tenant}:{conv} (messages trimmed out of
 * the window, oldest first, not yet folded into the summary) and the hash
 * {prefix}chatsum:{tenant}:{conv} (the summary text and its counters).
 * Both are built from the same (tenant, conversation id) as the
 * conversation's list and live exactly as long as it does.
 *
 * The hash's fields:
 *   epoch     random, set when the first message is captured; a DELETE and
 *             a new conversation under the same id get another one, so a
 *             summary call that began before the DELETE cannot apply
 *   out       messages removed from the head of pending so far (folded or
 *             skipped at the bound): the head's position, which is what the
 *             apply step checks nothing moved under it
 *   captured  messages ever moved to pending
 *   covered   messages folded into text
 *   skipped   messages dropped from pending at its bound (never summarized)
 *   waiting   the pending list's length as of the last write (what the
 *             summarizer's sweep looks for after a restart)
 *   tenant, conv  whose it is, so the sweep needs no parsing of key names
 *   text      the running summary; updated: when it was written (unix ms)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/store/store.h"
#include "priv.h"

/* Inside the append's MULTI, after the RPUSH: move the overflow (the
 * oldest LLEN - max messages) to the tail of pending, trim the window, and
 * hold pending at its bound by dropping its oldest (counted as skipped).
 * KEYS: list, pending, summary. ARGV: max, ttl, pending_max, epoch, tenant,
 * conv.
 * Returns {moved, skipped, pending length}. */
static const char lua_capture[] =
	"local over = redis.call('LLEN', KEYS[1]) - tonumber(ARGV[1])\n"
	"local moved, skipped = 0, 0\n"
	"if over > 0 then\n"
	"  local old = redis.call('LRANGE', KEYS[1], 0, over - 1)\n"
	"  for i = 1, #old, 1000 do\n"
	"    redis.call('RPUSH', KEYS[2], unpack(old, i, math.min(i + 999, #old)))\n"
	"  end\n"
	"  redis.call('LTRIM', KEYS[1], over, -1)\n"
	"  moved = #old\n"
	"  if redis.call('HSETNX', KEYS[3], 'epoch', ARGV[4]) == 1 then\n"
	"    redis.call('HSET', KEYS[3], 'tenant', ARGV[5], 'conv', ARGV[6])\n"
	"  end\n"
	"  redis.call('HINCRBY', KEYS[3], 'captured', moved)\n"
	"end\n"
	"local plen = redis.call('LLEN', KEYS[2])\n"
	"local pmax = tonumber(ARGV[3])\n"
	"if plen > pmax then\n"
	"  skipped = plen - pmax\n"
	"  redis.call('LTRIM', KEYS[2], skipped, -1)\n"
	"  redis.call('HINCRBY', KEYS[3], 'out', skipped)\n"
	"  redis.call('HINCRBY', KEYS[3], 'skipped', skipped)\n"
	"  plen = pmax\n"
	"end\n"
	"if plen > 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end\n"
	"if redis.call('EXISTS', KEYS[3]) == 1 then\n"
	"  redis.call('HSET', KEYS[3], 'waiting', plen)\n"
	"  redis.call('EXPIRE', KEYS[3], ARGV[2])\n"
	"end\n"
	"return {moved, skipped, plen}\n";

/* Fold n messages into the summary, only if the summary and the head of
 * pending are still what the summarizer read: same epoch, same head
 * position, at least n messages. Then drop exactly those n, write the
 * text, and give both keys the conversation's remaining TTL.
 * KEYS: summary, pending, list. ARGV: epoch, out, n, text, now_ms.
 * Returns the pending length left, or -1 when something moved. */
static const char lua_apply[] =
	"if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return -1 end\n"
	"local out = tonumber(redis.call('HGET', KEYS[1], 'out') or '0')\n"
	"if out ~= tonumber(ARGV[2]) then return -1 end\n"
	"local n = tonumber(ARGV[3])\n"
	"if redis.call('LLEN', KEYS[2]) < n then return -1 end\n"
	"redis.call('LTRIM', KEYS[2], n, -1)\n"
	"local left = redis.call('LLEN', KEYS[2])\n"
	"redis.call('HSET', KEYS[1], 'text', ARGV[4], 'updated', ARGV[5], 'waiting', left)\n"
	"redis.call('HINCRBY', KEYS[1], 'out', n)\n"
	"redis.call('HINCRBY', KEYS[1], 'covered', n)\n"
	"local ttl = redis.call('TTL', KEYS[3])\n"
	"if ttl > 0 then\n"
	"  redis.call('EXPIRE', KEYS[1], ttl)\n"
	"  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ttl) end\n"
	"end\n"
	"return left\n";

struct conv_keys {
	char *list, *pend, *sum;
};

static bool keys_make(struct store *s, const char *tenant, const char *conv,
		      struct conv_keys *k)
{
	k->list = store_key(s, "chat", tenant, conv);
	k->pend = store_key(s, "chatpend", tenant, conv);
	k->sum = store_key(s, "chatsum", tenant, conv);
	return k->list && k->pend && k->sum;
}

static void keys_finish(struct conv_keys *k)
{
	free(k->list);
	free(k->pend);
	free(k->sum);
}

enum sg_err store_capture_append(struct store *s, const char *tenant, const char *conv,
				 const char *list_key, long long max, long long ttl_s,
				 const struct store_capture *cap, struct sg_error *e)
{
	char *pend = store_key(s, "chatpend", tenant, conv);
	char *sum = store_key(s, "chatsum", tenant, conv);
	char a_max[24], a_ttl[24], a_pmax[24];
	enum sg_err rc = SG_OK;
	snprintf(a_max, sizeof(a_max), "%lld", max);
	snprintf(a_ttl, sizeof(a_ttl), "%lld", ttl_s);
	snprintf(a_pmax, sizeof(a_pmax), "%lld", cap->pending_max);
	const char *argv[] = { "EVAL", lua_capture, "3", list_key, pend, sum, a_max, a_ttl,
			       a_pmax, cap->epoch, tenant, conv };
	if (!pend || !sum || redisAppendCommandArgv(s->c, 12, argv, NULL) != REDIS_OK)
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory building a redis command");
	free(pend);
	free(sum);
	return rc;
}

enum sg_err store_capture_result(const redisReply *r, struct store_capture *cap,
				 struct sg_error *e)
{
	if (r->type == REDIS_REPLY_ERROR)
		return sg_error_set(e, SG_ERR_REDIS, "redis refused the window capture: %.200s",
				    r->str);
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3)
		return sg_error_set(e, SG_ERR_REDIS, "unexpected capture reply");
	cap->moved = store_reply_ll(r->element[0]);
	cap->skipped = store_reply_ll(r->element[1]);
	cap->pending = store_reply_ll(r->element[2]);
	return SG_OK;
}

void store_summary_finish(struct store_summary *sm)
{
	if (!sm)
		return;
	free(sm->text);
	memset(sm, 0, sizeof(*sm));
}

void store_summary_snap_finish(struct store_summary_snap *sn)
{
	if (!sn)
		return;
	free(sn->text);
	store_strlist_finish(&sn->pending);
	memset(sn, 0, sizeof(*sn));
}

static char *dup_reply(const redisReply *r, size_t *len)
{
	if (!r || r->type != REDIS_REPLY_STRING)
		return NULL;
	char *p = malloc(r->len + 1);
	if (p) {
		memcpy(p, r->str, r->len);
		p[r->len] = '\0';
		*len = r->len;
	}
	return p;
}

/* Fill sm from an HMGET of text, covered, skipped, updated and an LLEN of
 * pending. False on out of memory. */
static bool summary_from(const redisReply *hm, const redisReply *plen, struct store_summary *sm)
{
	memset(sm, 0, sizeof(*sm));
	sm->pending = store_reply_ll(plen);
	if (hm->type != REDIS_REPLY_ARRAY || hm->elements != 4)
		return true;
	sm->covered = store_reply_ll(hm->element[1]);
	sm->skipped = store_reply_ll(hm->element[2]);
	sm->updated_ms = store_reply_ll(hm->element[3]);
	if (hm->element[0]->type == REDIS_REPLY_STRING) {
		sm->text = dup_reply(hm->element[0], &sm->text_len);
		if (!sm->text)
			return false;
	}
	return true;
}

enum sg_err store_conv_read(struct store *s, const char *tenant, const char *conv,
			    struct store_strlist *hist, long long *ttl,
			    struct store_summary *sm, struct sg_error *e)
{
	memset(hist, 0, sizeof(*hist));
	memset(sm, 0, sizeof(*sm));
	struct conv_keys k;
	enum sg_err rc = SG_OK;
	redisReply *r[4] = { 0 };
	if (!keys_make(s, tenant, conv, &k)) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((rc = store_conn(s, e)) != SG_OK)
		goto out;
	const char *a0[] = { "LRANGE", k.list, "0", "-1" };
	const char *a1[] = { "TTL", k.list };
	const char *a2[] = { "HMGET", k.sum, "text", "covered", "skipped", "updated" };
	const char *a3[] = { "LLEN", k.pend };
	if (redisAppendCommandArgv(s->c, 4, a0, NULL) != REDIS_OK ||
	    redisAppendCommandArgv(s->c, 2, a1, NULL) != REDIS_OK ||
	    redisAppendCommandArgv(s->c, 6, a2, NULL) != REDIS_OK ||
	    redisAppendCommandArgv(s->c, 2, a3, NULL) != REDIS_OK) {
		store_drop(s);
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory building a redis command");
		goto out;
	}
	for (int i = 0; i < 4; i++)
		if (!(r[i] = store_read_reply(s, e))) {
			rc = SG_ERR_REDIS;
			goto out;
		}
	for (int i = 0; i < 4; i++)
		if (r[i]->type == REDIS_REPLY_ERROR) {
			rc = store_reply_error(r[i], e);
			goto out;
		}
	if (r[1]->type != REDIS_REPLY_INTEGER) {
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected TTL reply");
		goto out;
	}
	*ttl = r[1]->integer;
	if ((rc = store_copy_list(r[0], hist, e)) != SG_OK)
		goto out;
	if (!summary_from(r[2], r[3], sm)) {
		store_strlist_finish(hist);
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	}
out:
	for (int i = 0; i < 4; i++)
		if (r[i])
			freeReplyObject(r[i]);
	keys_finish(&k);
	return rc;
}

enum sg_err store_summary_snapshot(struct store *s, const char *tenant, const char *conv,
				   long long batch, struct store_summary_snap *sn,
				   struct sg_error *e)
{
	memset(sn, 0, sizeof(*sn));
	struct conv_keys k;
	enum sg_err rc = SG_OK;
	redisReply *exec = NULL;
	char stop[24];
	snprintf(stop, sizeof(stop), "%lld", batch - 1);
	if (!keys_make(s, tenant, conv, &k)) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((rc = store_conn(s, e)) != SG_OK)
		goto out;
	const char *a0[] = { "HMGET", k.sum, "epoch", "out", "text" };
	const char *a1[] = { "LRANGE", k.pend, "0", stop };
	if (redisAppendCommand(s->c, "MULTI") != REDIS_OK ||
	    redisAppendCommandArgv(s->c, 5, a0, NULL) != REDIS_OK ||
	    redisAppendCommandArgv(s->c, 4, a1, NULL) != REDIS_OK ||
	    redisAppendCommand(s->c, "EXEC") != REDIS_OK) {
		store_drop(s);
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory building a redis command");
		goto out;
	}
	if (!(exec = store_read_exec(s, 2, e))) {
		rc = SG_ERR_REDIS;
		goto out;
	}
	const redisReply *hm = exec->elements == 2 ? exec->element[0] : NULL;
	if (!hm || hm->type != REDIS_REPLY_ARRAY || hm->elements != 3) {
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected EXEC reply");
		goto out;
	}
	if (hm->element[0]->type == REDIS_REPLY_STRING &&
	    hm->element[0]->len < sizeof(sn->epoch)) {
		memcpy(sn->epoch, hm->element[0]->str, hm->element[0]->len);
		sn->epoch[hm->element[0]->len] = '\0';
	}
	sn->out = store_reply_ll(hm->element[1]);
	if (hm->element[2]->type == REDIS_REPLY_STRING &&
	    !(sn->text = dup_reply(hm->element[2], &sn->text_len))) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	rc = store_copy_list(exec->element[1], &sn->pending, e);
out:
	if (rc != SG_OK)
		store_summary_snap_finish(sn);
	if (exec)
		freeReplyObject(exec);
	keys_finish(&k);
	return rc;
}

enum sg_err store_summary_apply(struct store *s, const char *tenant, const char *conv,
				const struct store_summary_snap *sn, size_t n, const char *text,
				size_t text_len, long long now_ms, long long *left,
				struct sg_error *e)
{
	struct conv_keys k;
	enum sg_err rc = SG_OK;
	redisReply *r = NULL;
	char a_out[24], a_n[24], a_now[24];
	snprintf(a_out, sizeof(a_out), "%lld", sn->out);
	snprintf(a_n, sizeof(a_n), "%zu", n);
	snprintf(a_now, sizeof(a_now), "%lld", now_ms);
	*left = -1;
	if (!keys_make(s, tenant, conv, &k)) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	const char *argv[] = { "EVAL", lua_apply, "3", k.sum, k.pend, k.list, sn->epoch, a_out,
			       a_n, text, a_now };
	size_t lens[11];
	for (int i = 0; i < 11; i++)
		lens[i] = strlen(argv[i]);
	lens[9] = text_len;
	if (!(r = store_run(s, 11, argv, lens, e))) {
		rc = SG_ERR_REDIS;
		goto out;
	}
	if (r->type == REDIS_REPLY_ERROR)
		rc = store_reply_error(r, e);
	else if (r->type != REDIS_REPLY_INTEGER)
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected reply to the summary write");
	else
		*left = r->integer;
out:
	if (r)
		freeReplyObject(r);
	keys_finish(&k);
	return rc;
}

struct summary_scan {
	store_pending_fn fn;
	void *ud;
	size_t *found;
};

/* One SCAN batch of summary hashes: each that still waits goes to fn. */
static enum sg_err summary_keys(struct store *s, redisReply *batch, void *ud,
				struct sg_error *e)
{
	struct summary_scan *sc = ud;
	for (size_t i = 0; i < batch->elements; i++) {
		const redisReply *k = batch->element[i];
		if (k->type != REDIS_REPLY_STRING)
			continue;
		const char *hargv[] = { "HMGET", k->str, "tenant", "conv", "waiting" };
		size_t hlen[] = { 5, k->len, 6, 4, 7 };
		redisReply *h = store_run(s, 5, hargv, hlen, e);
		if (!h)
			return SG_ERR_REDIS;
		if (h->type == REDIS_REPLY_ARRAY && h->elements == 3 &&
		    h->element[0]->type == REDIS_REPLY_STRING &&
		    h->element[1]->type == REDIS_REPLY_STRING && store_reply_ll(h->element[2]) > 0) {
			sc->fn(sc->ud, h->element[0]->str, h->element[1]->str);
			(*sc->found)++;
		}
		freeReplyObject(h);
	}
	return SG_OK;
}

enum sg_err store_summary_scan(struct store *s, store_pending_fn fn, void *ud, size_t *found,
			       struct sg_error *e)
{
	*found = 0;
	/* every tenant's, in every bucket, on every node */
	char *pattern = store_key_pattern_all(s, "chatsum");
	if (!pattern)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	struct summary_scan sc = { .fn = fn, .ud = ud, .found = found };
	enum sg_err rc = store_scan_every_node(s, pattern, summary_keys, &sc, e);
	free(pattern);
	return rc;
}
