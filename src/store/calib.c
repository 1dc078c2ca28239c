/* Shadow-mode calibration counts in Redis: per tenant {prefix}cal:{tenant}:all
 * and per namespace {prefix}cal:{tenant}:ns:{namespace}, hashes whose fields
 * "n:B" and "a:B" count shadowed would-be hits in similarity bucket B
 * (0..100, hundredths) and how many of them the fresh answer agreed with.
 * Key names are built only here (src/store/). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/store/ops.h"
#include "priv.h"

static char *cal_key(struct store *s, const char *tenant, const char *ns)
{
	if (!ns || !*ns)
		return store_key(s, "cal", tenant, "all");
	char rest[160];
	snprintf(rest, sizeof(rest), "ns:%s", ns);
	return store_key(s, "cal", tenant, rest);
}

enum sg_err store_calibration_add(struct store *s, const char *tenant, const char *ns,
				  int bucket, bool agree, struct sg_error *e)
{
	if (bucket < 0 || bucket > STORE_CAL_BUCKETS - 1)
		return sg_error_set(e, SG_ERR_INTERNAL, "similarity bucket %d out of range", bucket);
	enum sg_err rc = store_conn(s, e);
	if (rc != SG_OK)
		return rc;
	char *keys[2] = { cal_key(s, tenant, NULL), ns && *ns ? cal_key(s, tenant, ns) : NULL };
	if (!keys[0] || (ns && *ns && !keys[1])) {
		free(keys[0]);
		free(keys[1]);
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	}
	int nk = keys[1] ? 2 : 1, sent = 0;
	for (int k = 0; k < nk; k++) {
		redisAppendCommand(s->c, "HINCRBY %s n:%d 1", keys[k], bucket);
		sent++;
		if (agree) {
			redisAppendCommand(s->c, "HINCRBY %s a:%d 1", keys[k], bucket);
			sent++;
		}
	}
	rc = store_read_n(s, (size_t)sent, e);
	free(keys[0]);
	free(keys[1]);
	return rc;
}

enum sg_err store_calibration_read(struct store *s, const char *tenant, const char *ns,
				   struct store_calibration *out, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	char *key = cal_key(s, tenant, ns);
	if (!key)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	const char *argv[] = { "HGETALL", key };
	redisReply *r;
	enum sg_err rc = store_run_key(s, 2, argv, key, &r, e);
	if (rc != SG_OK)
		return rc;
	if (r->type == REDIS_REPLY_ARRAY) {
		for (size_t i = 0; i + 1 < r->elements; i += 2) {
			const redisReply *f = r->element[i], *v = r->element[i + 1];
			if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
			    f->len < 3 || f->str[1] != ':')
				continue;
			char *end = NULL;
			long b = strtol(f->str + 2, &end, 10);
			long long n = strtoll(v->str, NULL, 10);
			if (*end || b < 0 || b >= STORE_CAL_BUCKETS || n < 0)
				continue;
			if (f->str[0] == 'n')
				out->would_hit[b] = n;
			else if (f->str[0] == 'a')
				out->agree[b] = n;
		}
	}
	freeReplyObject(r);
	return rc;
}
