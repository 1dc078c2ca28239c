/* The embeddings cache in Redis: {prefix}emb:{tenant}:{model}:{sha}, each
 * a raw little-endian float32 vector with a TTL. Part of the store module
 * (key names are built only in src/store/); one round trip per batch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/store/store.h"
#include "priv.h"

static char *emb_key(const struct store *s, const char *tenant, const char *model,
		     const char *sha)
{
	char *k = NULL;
	if (asprintf(&k, "%semb:%s:%s:%s", s->cfg->redis_prefix, tenant, model, sha) < 0)
		return NULL;
	return k;
}

static void free_keys(char **keys, size_t n)
{
	if (!keys)
		return;
	for (size_t i = 0; i < n; i++)
		free(keys[i]);
	free(keys);
}

static char **make_keys(const struct store *s, const char *tenant, const char *model,
			const char *const *sha, size_t n)
{
	char **keys = calloc(n ? n : 1, sizeof(char *));
	if (!keys)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (!(keys[i] = emb_key(s, tenant, model, sha[i]))) {
			free_keys(keys, n);
			return NULL;
		}
	return keys;
}

enum sg_err store_emb_get(struct store *s, const char *tenant, const char *model,
			  const char *const *sha, size_t n, char **blobs, size_t *lens,
			  struct sg_error *e)
{
	for (size_t i = 0; i < n; i++) {
		blobs[i] = NULL;
		lens[i] = 0;
	}
	if (n == 0)
		return SG_OK;
	char **keys = make_keys(s, tenant, model, sha, n);
	const char **argv = calloc(n + 1, sizeof(char *));
	enum sg_err rc = SG_OK;
	if (!keys || !argv) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	argv[0] = "MGET";
	for (size_t i = 0; i < n; i++)
		argv[i + 1] = keys[i];
	redisReply *r = store_run(s, (int)(n + 1), argv, NULL, e);
	if (!r) {
		rc = SG_ERR_REDIS;
		goto out;
	}
	if (r->type == REDIS_REPLY_ARRAY && r->elements == n) {
		for (size_t i = 0; i < n && rc == SG_OK; i++) {
			redisReply *it = r->element[i];
			if (it->type != REDIS_REPLY_STRING)
				continue;
			blobs[i] = malloc(it->len ? it->len : 1);
			if (!blobs[i]) {
				rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
				break;
			}
			memcpy(blobs[i], it->str, it->len);
			lens[i] = it->len;
		}
	} else if (r->type == REDIS_REPLY_ERROR) {
		rc = store_reply_error(r, e);
	} else {
		rc = sg_error_set(e, SG_ERR_REDIS, "unexpected MGET reply");
	}
	freeReplyObject(r);
	if (rc != SG_OK)
		for (size_t i = 0; i < n; i++) {
			free(blobs[i]);
			blobs[i] = NULL;
			lens[i] = 0;
		}
out:
	free_keys(keys, n);
	free(argv);
	return rc;
}

enum sg_err store_emb_put(struct store *s, const char *tenant, const char *model,
			  const char *const *sha, const char *const *blobs,
			  const size_t *lens, size_t n, long long ttl_s, struct sg_error *e)
{
	if (n == 0)
		return SG_OK;
	char **keys = make_keys(s, tenant, model, sha, n);
	enum sg_err rc = SG_OK;
	if (!keys) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((rc = store_conn(s, e)) != SG_OK)
		goto out;
	char ttl[24];
	snprintf(ttl, sizeof(ttl), "%lld", ttl_s);
	bool ok = redisAppendCommand(s->c, "MULTI") == REDIS_OK;
	for (size_t i = 0; i < n && ok; i++) {
		const char *argv[] = { "SET", keys[i], blobs[i], "EX", ttl };
		const size_t alen[] = { 3, strlen(keys[i]), lens[i], 2, strlen(ttl) };
		ok = redisAppendCommandArgv(s->c, 5, argv, alen) == REDIS_OK;
	}
	ok = ok && redisAppendCommand(s->c, "EXEC") == REDIS_OK;
	if (!ok) {
		/* half a pipeline is in the output buffer: the connection cannot
		 * be reused */
		store_drop(s);
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory building a redis pipeline");
		goto out;
	}
	redisReply *exec = store_read_exec(s, n, e);
	if (!exec)
		rc = SG_ERR_REDIS;
	else
		freeReplyObject(exec);
out:
	free_keys(keys, n);
	return rc;
}
