/* The per-minute series in Redis: per tenant a hash per minute,
 * {prefix}ts:{tenant}:m:{unix minute}, and a hash per hour,
 * {prefix}ts:{tenant}:h:{unix hour}, with the same counters, both written
 * in the accounting transaction (store_record_counts) and both leased
 * (SEMGATE_SERIES_MINUTES_TTL, SEMGATE_SERIES_HOURS_TTL). Key names are
 * built only here (src/store/). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/store/layout.h"
#include "semgate/store/ops.h"
#include "priv.h"

/* Most keys read in one pipeline. */
#define READ_CHUNK 512

/* The fixed fields, in the order of struct store_series_point. */
static const char *const fixed[] = {
	"requests", "hits_exact", "hits_semantic", "misses", "bypass", "rejections",
	"tokens_saved_prompt", "tokens_saved_completion",
};
#define NFIXED (sizeof(fixed) / sizeof(fixed[0]))
#define NX STORE_X_COUNT

const char *const store_series_extra[STORE_X_COUNT] = {
	"hits_coalesced",
	"lat_hit:1", "lat_hit:5", "lat_hit:25", "lat_hit:100", "lat_hit:500", "lat_hit:2500",
	"lat_hit:inf",
	"lat_up:1", "lat_up:5", "lat_up:25", "lat_up:100", "lat_up:500", "lat_up:2500",
	"lat_up:inf",
};

int store_lat_bucket(double ms)
{
	static const double bounds[STORE_LAT_BUCKETS - 1] = { 1, 5, 25, 100, 500, 2500 };
	int b = 0;
	while (b < STORE_LAT_BUCKETS - 1 && !(ms <= bounds[b]))
		b++;
	return b;
}

static size_t nreasons(const char *const *reasons)
{
	size_t n = 0;
	while (reasons && reasons[n] && n < STORE_REASONS_MAX)
		n++;
	return n;
}

unsigned store_series_bucket(const char *tenant, long long minute)
{
	if (minute <= 0)
		minute = (long long)time(NULL) / 60;
	char hour[32];
	snprintf(hour, sizeof(hour), "h:%lld", minute / 60);
	return store_bucket_of(tenant, hour);
}

/* In the bucket of its hour: a tenant's series moves to another slot every
 * hour, and one hour's minute and hour hashes share a slot. */
static char *series_key(const struct store *s, const char *tenant, bool hourly, long long b)
{
	char rest[32];
	snprintf(rest, sizeof(rest), "%c:%lld", hourly ? 'h' : 'm', b);
	return store_key_in(s, "ts", store_series_bucket(tenant, hourly ? b * 60 : b), tenant,
			    rest);
}

/* The values of one row, in field order: fixed, extra, then
 * "rej:<reason>". */
static size_t row_values(const struct store_tenant_counts *tc, long long *v)
{
	long long rej = 0;
	size_t nr = nreasons(tc->reasons);
	for (size_t i = 0; i < nr; i++)
		rej += tc->rejected[i];
	long long f[NFIXED] = { tc->lookups + tc->bypass, tc->hits_exact, tc->hits_semantic,
				tc->misses, tc->bypass, rej, tc->tokens_prompt,
				tc->tokens_completion };
	memcpy(v, f, sizeof(f));
	memcpy(v + NFIXED, tc->extra, sizeof(tc->extra));
	for (size_t i = 0; i < nr; i++)
		v[NFIXED + NX + i] = tc->rejected[i];
	return NFIXED + NX + nr;
}

long store_series_append(struct store *s, const struct store_tenant_counts *tc)
{
	if (tc->minute <= 0)
		return 0;
	long long v[NFIXED + NX + STORE_REASONS_MAX];
	size_t nv = row_values(tc, v);
	long queued = 0;
	for (int hourly = 0; hourly < 2; hourly++) {
		char *key = series_key(s, tc->tenant, hourly, hourly ? tc->minute / 60 : tc->minute);
		if (!key)
			return -1;
		for (size_t f = 0; f < nv; f++) {
			if (v[f] <= 0)
				continue;
			if (f < NFIXED + NX)
				redisAppendCommand(s->c, "HINCRBY %s %s %lld", key,
						   f < NFIXED ? fixed[f] : store_series_extra[f - NFIXED],
						   v[f]);
			else
				redisAppendCommand(s->c, "HINCRBY %s rej:%s %lld", key,
						   tc->reasons[f - NFIXED - NX], v[f]);
			queued++;
		}
		redisAppendCommand(s->c, "EXPIRE %s %lld", key,
				   hourly ? s->cfg->series_hours_ttl : s->cfg->series_minutes_ttl);
		queued++;
		free(key);
	}
	return queued;
}

/* Add one HMGET reply (fields as asked by store_series_read) to p. */
static void add_reply(struct store_series_point *p, const redisReply *r, size_t nr)
{
	if (r->type != REDIS_REPLY_ARRAY || r->elements != NFIXED + NX + nr)
		return;
	long long *dst[NFIXED] = { &p->requests, &p->hits_exact, &p->hits_semantic,
				   &p->misses, &p->bypass, &p->rejections,
				   &p->tokens_prompt, &p->tokens_completion };
	for (size_t f = 0; f < NFIXED + NX + nr; f++) {
		const redisReply *x = r->element[f];
		if (x->type != REDIS_REPLY_STRING)
			continue;
		long long n = strtoll(x->str, NULL, 10);
		if (n <= 0)
			continue;
		if (f < NFIXED)
			*dst[f] += n;
		else if (f < NFIXED + NX)
			p->extra[f - NFIXED] += n;
		else
			p->rejected[f - NFIXED - NX] += n;
	}
}

enum sg_err store_series_read(struct store *s, const char *tenant, bool hourly,
			      long long first, size_t npoints, size_t per,
			      const char *const *reasons, struct store_series_point *out,
			      struct sg_error *e)
{
	memset(out, 0, npoints * sizeof(*out));
	size_t nr = nreasons(reasons), nkeys = npoints * per;
	/* the HMGET's argv after the key: every field */
	const char *argv[2 + NFIXED + NX + STORE_REASONS_MAX];
	char rejf[STORE_REASONS_MAX][48];
	argv[0] = "HMGET";
	for (size_t f = 0; f < NFIXED; f++)
		argv[2 + f] = fixed[f];
	for (size_t f = 0; f < NX; f++)
		argv[2 + NFIXED + f] = store_series_extra[f];
	for (size_t i = 0; i < nr; i++) {
		snprintf(rejf[i], sizeof(rejf[i]), "rej:%s", reasons[i]);
		argv[2 + NFIXED + NX + i] = rejf[i];
	}
	int argc = (int)(2 + NFIXED + NX + nr);
	enum sg_err rc = store_conn(s, e);
	for (size_t done = 0; rc == SG_OK && done < nkeys; done += READ_CHUNK) {
		size_t n = nkeys - done < READ_CHUNK ? nkeys - done : READ_CHUNK;
		for (size_t i = 0; i < n; i++) {
			char *key = series_key(s, tenant, hourly, first + (long long)(done + i));
			if (!key) {
				store_drop(s); /* replies already asked for are never read */
				return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			}
			argv[1] = key;
			redisAppendCommandArgv(s->c, argc, argv, NULL);
			free(key);
		}
		for (size_t i = 0; i < n; i++) {
			redisReply *r = store_read_reply(s, e);
			if (!r)
				return SG_ERR_REDIS;
			if (r->type == REDIS_REPLY_ERROR && rc == SG_OK)
				rc = store_reply_error(r, e);
			else
				add_reply(&out[(done + i) / per], r, nr);
			freeReplyObject(r);
		}
	}
	return rc;
}
