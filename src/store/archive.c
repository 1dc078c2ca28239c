/* The archive stream in Redis: its key, the records written into the data's
 * own MULTI/EXEC (see store_archive_append), and the consumer-group calls
 * of the archiver. Part of the store module: no key is named elsewhere.
 * Nothing here runs unless the archive is on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "semgate/store/archive.h"
#include "semgate/store/layout.h"
#include "priv.h"

bool store_archive_on(const struct sg_config *cfg)
{
	return cfg->archive_dsn && cfg->archive_dsn[0];
}

char *store_archive_stream_key(const struct store *s, const char *tenant,
			       const char *object_id)
{
	/* on a cluster, one stream per slot bucket: a record shares the slot
	 * of the data it is written with in one MULTI (semgate/store/layout.h);
	 * one server needs no such thing and keeps one stream */
	if (!s->cluster) {
		char *k = NULL;
		if (asprintf(&k, "%sarch", s->cfg->redis_prefix) < 0)
			return NULL;
		return k;
	}
	return store_archive_stream_in(s, store_bucket_of(tenant, object_id));
}

char *store_archive_stream_in(const struct store *s, unsigned bucket)
{
	char *k = NULL;
	if (asprintf(&k, "%sarch:{%s}", s->cfg->redis_prefix, store_bucket_tag(bucket)) < 0)
		return NULL;
	return k;
}

enum sg_err store_archive_streams(const struct store *s, struct store_strlist *out,
				  struct sg_error *e)
{
	size_t n = s->cluster ? STORE_BUCKETS : 1;
	memset(out, 0, sizeof(*out));
	out->v = calloc(n, sizeof(char *));
	out->len = calloc(n, sizeof(size_t));
	if (!out->v || !out->len)
		goto oom;
	for (unsigned b = 0; b < n; b++) {
		if (!(out->v[b] = s->cluster ? store_archive_stream_in(s, b)
					     : store_archive_stream_key(s, "", "")))
			goto oom;
		out->len[b] = strlen(out->v[b]);
		out->n++;
	}
	return SG_OK;
oom:
	store_strlist_finish(out);
	return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
}

bool store_archive_append(struct store *s, const char *tenant, const char *object_id,
			  const char *rec, const char *vec, size_t vec_len)
{
	char *key = store_archive_stream_key(s, tenant, object_id);
	if (!key)
		return false;
	char max[24];
	snprintf(max, sizeof(max), "%lld", s->cfg->archive_stream_max);
	const char *argv[] = { "XADD", key, "MAXLEN", "~", max, "*", "r", rec, "v", vec };
	size_t alen[] = { 4, strlen(key), 6, 1, strlen(max), 1, 1, strlen(rec), 1, vec_len };
	int argc = vec ? 10 : 8;
	bool ok = redisAppendCommandArgv(s->c, argc, argv, alen) == REDIS_OK;
	free(key);
	return ok;
}

/* ---- record encoding ---- */

static cJSON *record(const char *kind, const char *tenant)
{
	cJSON *o = cJSON_CreateObject();
	if (o && (!cJSON_AddStringToObject(o, "k", kind) ||
		  !cJSON_AddStringToObject(o, "t", tenant))) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

static char *finish(cJSON *o, bool ok)
{
	char *out = ok && o ? cJSON_PrintUnformatted(o) : NULL;
	cJSON_Delete(o);
	return out;
}

char *store_archive_turn_render(const char *tenant, const char *conv,
				const char *const *items, const size_t *lens, size_t n)
{
	cJSON *o = record("turn", tenant);
	bool ok = o && cJSON_AddStringToObject(o, "c", conv);
	char *head = finish(o, ok);
	if (!head)
		return NULL;
	/* the items are already compact JSON: splice them in as they are
	 * instead of parsing them again */
	size_t hl = strlen(head), total = hl + 8;
	for (size_t i = 0; i < n; i++)
		total += lens[i] + 1;
	char *out = malloc(total);
	if (!out) {
		free(head);
		return NULL;
	}
	memcpy(out, head, hl - 1); /* without the closing '}' */
	size_t p = hl - 1;
	memcpy(out + p, ",\"m\":[", 6);
	p += 6;
	for (size_t i = 0; i < n; i++) {
		if (i)
			out[p++] = ',';
		memcpy(out + p, items[i], lens[i]);
		p += lens[i];
	}
	out[p++] = ']';
	out[p++] = '}';
	out[p] = '\0';
	free(head);
	return out;
}

char *store_archive_del_render(bool entry, const char *tenant, const char *id)
{
	cJSON *o = record(entry ? "edel" : "cdel", tenant);
	return finish(o, o && cJSON_AddStringToObject(o, entry ? "id" : "c", id));
}

/* A string of len bytes (not NUL-terminated) into o. */
static bool add_bytes(cJSON *o, const char *name, const char *p, size_t len)
{
	char *c = strndup(p, len);
	bool ok = c && cJSON_AddStringToObject(o, name, c);
	free(c);
	return ok;
}

char *store_archive_entry_render(const char *tenant, const struct store_entry *en,
				 long long expires_unix)
{
	cJSON *o = record("put", tenant);
	bool ok = o && cJSON_AddStringToObject(o, "id", en->id) &&
		  add_bytes(o, "q", en->query, en->query_len) &&
		  add_bytes(o, "a", en->answer, en->answer_len) &&
		  cJSON_AddStringToObject(o, "s", en->scope) &&
		  cJSON_AddStringToObject(o, "ns", en->ns ? en->ns : "") &&
		  cJSON_AddStringToObject(o, "x", en->exact ? en->exact : "") &&
		  cJSON_AddStringToObject(o, "mo", en->emb_model ? en->emb_model : "") &&
		  cJSON_AddNumberToObject(o, "dim", en->vec ? en->dim : 0) &&
		  cJSON_AddNumberToObject(o, "cr", (double)en->created) &&
		  cJSON_AddNumberToObject(o, "tk", (double)en->tokens) &&
		  cJSON_AddNumberToObject(o, "ex", (double)expires_unix) &&
		  cJSON_AddStringToObject(o, "ki", en->kind ? en->kind : "chat");
	if (ok && en->ntags) {
		cJSON *tags = cJSON_AddArrayToObject(o, "tg");
		for (size_t i = 0; ok && i < en->ntags; i++) {
			cJSON *t = cJSON_CreateString(en->tags[i]);
			ok = tags && t && cJSON_AddItemToArray(tags, t);
			if (!ok)
				cJSON_Delete(t);
		}
	}
	if (ok && en->metadata)
		ok = add_bytes(o, "md", en->metadata, en->metadata_len);
	return finish(o, ok);
}

/* ---- draining ---- */

void store_archive_batch_finish(struct store_archive_batch *b)
{
	if (!b)
		return;
	for (size_t i = 0; i < b->n; i++) {
		free(b->v[i].rec);
		free(b->v[i].vec);
	}
	for (size_t i = 0; i < b->gone; i++)
		free(b->gone_ids[i]);
	free(b->v);
	free(b->gone_ids);
	memset(b, 0, sizeof(*b));
}

enum sg_err store_archive_group(struct store *s, const char *stream, struct sg_error *e)
{
	const char *argv[] = { "XGROUP", "CREATE", stream, STORE_ARCHIVE_GROUP, "0", "MKSTREAM" };
	redisReply *r = store_run(s, 6, argv, NULL, e);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = SG_OK;
	if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0)
		rc = store_reply_error(r, e);
	freeReplyObject(r);
	return rc;
}

static char *dup_str(const redisReply *r)
{
	return r->type == REDIS_REPLY_STRING ? strndup(r->str, r->len) : NULL;
}

/* Copy an array of [id, [field, value, ...]] entries into out. Entries
 * whose fields are nil (deleted while pending) are left out. */
static enum sg_err copy_entries(const redisReply *arr, struct store_archive_batch *out,
				struct sg_error *e)
{
	if (arr->type != REDIS_REPLY_ARRAY)
		return sg_error_set(e, SG_ERR_REDIS, "unexpected stream reply");
	if (arr->elements == 0)
		return SG_OK;
	out->v = calloc(arr->elements, sizeof(*out->v));
	if (!out->v)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < arr->elements; i++) {
		const redisReply *en = arr->element[i];
		if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 ||
		    en->element[0]->type != REDIS_REPLY_STRING ||
		    en->element[0]->len >= sizeof(out->v[0].id))
			continue;
		const redisReply *f = en->element[1];
		if (f->type != REDIS_REPLY_ARRAY)
			continue;
		struct store_archive_msg *m = &out->v[out->n];
		memcpy(m->id, en->element[0]->str, en->element[0]->len + 1);
		for (size_t j = 0; j + 1 < f->elements; j += 2) {
			const redisReply *k = f->element[j], *v = f->element[j + 1];
			if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
			    k->len != 1)
				continue;
			if (k->str[0] == 'r' && !m->rec) {
				m->rec = dup_str(v);
				m->rec_len = v->len;
				if (!m->rec)
					goto nomem;
			} else if (k->str[0] == 'v' && !m->vec) {
				m->vec = malloc(v->len ? v->len : 1);
				if (!m->vec)
					goto nomem;
				memcpy(m->vec, v->str, v->len);
				m->vec_len = v->len;
			}
		}
		out->n++;
	}
	return SG_OK;
nomem:
	store_archive_batch_finish(out);
	return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
}

enum sg_err store_archive_read(struct store *s, const char *stream, const char *consumer,
			       const char *id, size_t count, int block_ms,
			       struct store_archive_batch *out, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	char cnt[24], blk[24];
	snprintf(cnt, sizeof(cnt), "%zu", count);
	snprintf(blk, sizeof(blk), "%d", block_ms);
	const char *argv[12] = { "XREADGROUP", "GROUP", STORE_ARCHIVE_GROUP, consumer,
				 "COUNT", cnt };
	int argc = 6;
	if (block_ms > 0) {
		argv[argc++] = "BLOCK";
		argv[argc++] = blk;
	}
	argv[argc++] = "STREAMS";
	argv[argc++] = stream;
	argv[argc++] = id;
	redisReply *r = store_run(s, argc, argv, NULL, e);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = SG_OK;
	if (r->type == REDIS_REPLY_ERROR) {
		rc = store_reply_error(r, e);
	} else if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
		   r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2) {
		rc = copy_entries(r->element[0]->element[1], out, e);
	} else if (r->type != REDIS_REPLY_NIL) {
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected XREADGROUP reply");
	}
	freeReplyObject(r);
	return rc;
}

enum sg_err store_archive_claim(struct store *s, const char *stream, const char *consumer,
				long long min_idle_ms, char cursor[48], size_t count,
				struct store_archive_batch *out, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	char idle[24], cnt[24];
	snprintf(idle, sizeof(idle), "%lld", min_idle_ms);
	snprintf(cnt, sizeof(cnt), "%zu", count);
	const char *argv[] = { "XAUTOCLAIM", stream, STORE_ARCHIVE_GROUP, consumer, idle,
			       cursor, "COUNT", cnt };
	redisReply *r = store_run(s, 8, argv, NULL, e);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = SG_OK;
	if (r->type == REDIS_REPLY_ERROR) {
		rc = store_reply_error(r, e);
	} else if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
		   r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len >= 48) {
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected XAUTOCLAIM reply");
	} else {
		memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
		rc = copy_entries(r->element[1], out, e);
		/* Redis 7: the third element lists pending ids whose record was
		 * trimmed; they are lost to the archive and only acknowledged */
		const redisReply *g = r->elements > 2 ? r->element[2] : NULL;
		if (rc == SG_OK && g && g->type == REDIS_REPLY_ARRAY && g->elements) {
			out->gone_ids = calloc(g->elements, sizeof(char *));
			for (size_t i = 0; out->gone_ids && i < g->elements; i++)
				if ((out->gone_ids[out->gone] = dup_str(g->element[i])))
					out->gone++;
		}
	}
	freeReplyObject(r);
	return rc;
}

enum sg_err store_archive_ack(struct store *s, const char *stream, const char *const *ids,
			      size_t n, struct sg_error *e)
{
	if (n == 0)
		return SG_OK;
	const char **argv = calloc(n + 3, sizeof(char *));
	if (!argv)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	argv[0] = "XACK";
	argv[1] = stream;
	argv[2] = STORE_ARCHIVE_GROUP;
	for (size_t i = 0; i < n; i++)
		argv[i + 3] = ids[i];
	enum sg_err rc = store_run_status(s, (int)(n + 3), argv, e);
	free(argv);
	return rc;
}

/* The value after name in a flat [name, value, ...] reply, or NULL. */
static const redisReply *field(const redisReply *r, const char *name)
{
	if (!r || r->type != REDIS_REPLY_ARRAY)
		return NULL;
	for (size_t i = 0; i + 1 < r->elements; i += 2)
		if (r->element[i]->type == REDIS_REPLY_STRING &&
		    strcmp(r->element[i]->str, name) == 0)
			return r->element[i + 1];
	return NULL;
}

static long long int_or(const redisReply *r, long long def)
{
	return r && r->type == REDIS_REPLY_INTEGER ? r->integer : def;
}

enum sg_err store_archive_lag(struct store *s, const char *stream,
			      struct store_archive_lag *out, struct sg_error *e)
{
	*out = (struct store_archive_lag){ -1, -1, -1, -1, -1, 0 };
	enum sg_err rc = store_conn(s, e);
	if (rc != SG_OK)
		return rc;
	redisAppendCommand(s->c, "XINFO STREAM %s", stream);
	redisAppendCommand(s->c, "XINFO GROUPS %s", stream);
	redisReply *st, *gr;
	if (!store_read_two(s, &st, &gr, e))
		return SG_ERR_REDIS;
	if (st->type == REDIS_REPLY_ARRAY) {
		out->length = int_or(field(st, "length"), -1);
		out->entries_added = int_or(field(st, "entries-added"), -1);
	} else if (st->type == REDIS_REPLY_ERROR) {
		out->length = 0; /* no stream yet */
	}
	for (size_t i = 0; gr->type == REDIS_REPLY_ARRAY && i < gr->elements; i++) {
		const redisReply *g = gr->element[i];
		const redisReply *name = field(g, "name");
		if (!name || name->type != REDIS_REPLY_STRING ||
		    strcmp(name->str, STORE_ARCHIVE_GROUP) != 0)
			continue;
		out->pending = int_or(field(g, "pending"), -1);
		out->lag = int_or(field(g, "lag"), -1);
		out->entries_read = int_or(field(g, "entries-read"), -1);
		/* a group made at "0" that has read nothing says nil: it has read 0 */
		const redisReply *last = field(g, "last-delivered-id");
		if (out->entries_read < 0 && last && last->type == REDIS_REPLY_STRING &&
		    strcmp(last->str, "0-0") == 0)
			out->entries_read = 0;
	}
	if (out->entries_added >= 0 && out->entries_read >= 0 && out->length >= 0 &&
	    out->entries_added - out->length > out->entries_read)
		out->trimmed_unread = out->entries_added - out->length - out->entries_read;
	if (out->lag < 0 && out->entries_added >= 0 && out->entries_read >= 0)
		out->lag = out->entries_added - out->entries_read;
	freeReplyObject(st);
	freeReplyObject(gr);
	return SG_OK;
}

enum sg_err store_archive_skip_gap(struct store *s, const char *stream,
				   const struct store_archive_lag *lag, struct sg_error *e)
{
	char read[24];
	snprintf(read, sizeof(read), "%lld", lag->entries_added - lag->length);
	const char *argv[] = { "XGROUP", "SETID", stream, STORE_ARCHIVE_GROUP, "0",
			       "ENTRIESREAD", read };
	return store_run_status(s, 7, argv, e);
}

enum sg_err store_archive_reap(struct store *s, const char *stream, const char *keep,
			       long long idle_ms, size_t *removed, struct sg_error *e)
{
	*removed = 0;
	const char *argv[] = { "XINFO", "CONSUMERS", stream, STORE_ARCHIVE_GROUP };
	redisReply *r = store_run(s, 4, argv, NULL, e);
	if (!r)
		return SG_ERR_REDIS;
	enum sg_err rc = SG_OK;
	if (r->type == REDIS_REPLY_ERROR)
		rc = store_reply_error(r, e);
	for (size_t i = 0; rc == SG_OK && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
		const redisReply *name = field(r->element[i], "name");
		if (!name || name->type != REDIS_REPLY_STRING || strcmp(name->str, keep) == 0 ||
		    int_or(field(r->element[i], "pending"), -1) != 0 ||
		    int_or(field(r->element[i], "idle"), -1) <= idle_ms)
			continue;
		const char *del[] = { "XGROUP", "DELCONSUMER", stream, STORE_ARCHIVE_GROUP,
				      name->str };
		if ((rc = store_run_status(s, 5, del, e)) == SG_OK)
			(*removed)++;
	}
	freeReplyObject(r);
	return rc;
}

enum sg_err store_entries_empty(struct store *s, bool *empty, struct sg_error *e)
{
	*empty = true;
	char *pattern = NULL;
	if (asprintf(&pattern, "%se:*", s->cfg->redis_prefix) < 0)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	char cursor[32] = "0";
	enum sg_err rc;
	do {
		const char *argv[] = { "SCAN", cursor, "MATCH", pattern, "COUNT", "1000" };
		redisReply *r = NULL;
		if ((rc = store_scan_step(s, 6, argv, cursor, &r, e)) != SG_OK)
			break;
		if (r->element[1]->elements > 0)
			*empty = false;
		freeReplyObject(r);
	} while (*empty && strcmp(cursor, "0") != 0);
	free(pattern);
	return rc;
}
