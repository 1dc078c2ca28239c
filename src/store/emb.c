/* The embeddings cache in Redis: {prefix}emb:{tenant}:{model}:{sha}, each
 * a raw little-endian float32 vector with a TTL. Part of the store module
 * (key names are built only in src/store/); one round trip per batch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/store/store.h"
#include "priv.h"

/* In the bucket of (tenant, "{model}:{sha}"): a tenant's embeddings spread
 * over every bucket. */
static char *emb_key(const struct store *s, const char *tenant, const char *model,
		     const char *sha)
{
	char *rest = NULL;
	if (asprintf(&rest, "%s:%s", model, sha) < 0)
		return NULL;
	char *k = store_key(s, "emb", tenant, rest);
	free(rest);
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
	enum sg_err rc = SG_OK;
	if (!keys) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((rc = store_conn(s, e)) != SG_OK)
		goto out;
	/* one GET per key, pipelined: the keys are in different slots */
	for (size_t i = 0; i < n; i++) {
		const char *argv[] = { "GET", keys[i] };
		redisAppendCommandArgv(s->c, 2, argv, NULL);
	}
	for (size_t i = 0; i < n; i++) {
		redisReply *it = store_read_reply(s, e);
		if (!it) {
			rc = SG_ERR_REDIS;
			break;
		}
		if (it->type == REDIS_REPLY_ERROR && rc == SG_OK) {
			rc = store_reply_error(it, e);
		} else if (it->type == REDIS_REPLY_STRING && rc == SG_OK) {
			if ((blobs[i] = malloc(it->len ? it->len : 1))) {
				memcpy(blobs[i], it->str, it->len);
				lens[i] = it->len;
			} else {
				rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			}
		}
		freeReplyObject(it);
	}
	if (rc != SG_OK)
		for (size_t i = 0; i < n; i++) {
			free(blobs[i]);
			blobs[i] = NULL;
			lens[i] = 0;
		}
out:
	free_keys(keys, n);
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
	/* one SET per key, pipelined (not one MULTI: the keys are in
	 * different slots, and each vector stands alone) */
	bool ok = true;
	for (size_t i = 0; i < n && ok; i++) {
		const char *argv[] = { "SET", keys[i], blobs[i], "EX", ttl };
		const size_t alen[] = { 3, strlen(keys[i]), lens[i], 2, strlen(ttl) };
		ok = redisAppendCommandArgv(s->c, 5, argv, alen) == REDIS_OK;
	}
	if (!ok) {
		/* half a pipeline is in the output buffer: the connection cannot
		 * be reused */
		store_drop(s);
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory building a redis pipeline");
		goto out;
	}
	rc = store_read_n(s, n, e);
out:
	free_keys(keys, n);
	return rc;
}
