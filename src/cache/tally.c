/* Write-behind accounting (tally.h): a bounded ring of lookups, one
 * writer thread that takes everything queued at once, sums it per tenant
 * and per entry, and writes the batch with one MULTI/EXEC. The busier the
 * gateway, the bigger the batches and the less each lookup costs. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/core/config.h"
#include "semgate/core/log.h"
#include "semgate/store/store.h"
#include "semgate/store/ops.h"
#include "semgate/cache/series.h"
#include "semgate/cache/tally.h"

#define TALLY_CAP 4096
/* How long the writer lets lookups gather after the first one arrives:
 * a wake-up and a transaction per this interval instead of per lookup. */
#define GATHER_NS (1000 * 1000)

enum { JOB_MISS, JOB_HIT_EXACT, JOB_HIT_SEMANTIC, JOB_BYPASS, JOB_COALESCED, JOB_LAT_UP };

struct job {
	char tenant[65];
	char id[65];          /* "" for a miss */
	int kind;
	enum verify_reason rejected;
	long long minute;     /* unix minute the request was answered in */
	int lat;              /* a hit's latency bucket, -1: none */
	long long prompt, completion;
};

struct tally {
	const struct sg_config *cfg;
	struct store *store;      /* the writer thread's own */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t more;      /* jobs queued, or stop */
	pthread_cond_t room;      /* the ring has room again */
	pthread_cond_t settled;   /* done advanced */
	struct job *ring;
	size_t head, count;
	unsigned long long queued, done, written, dropped, batches, store_waits;
	bool stop;
	bool flush;               /* someone settles: write without gathering */
	bool idle;                /* the writer waits for a first job */
	bool failing;             /* the last batch could not be written */
	/* run before a batch that counts hits on entries is written */
	bool (*before)(void *, const struct store_entry_hits *, size_t);
	void *before_ud;
	/* the writer's scratch, sized for a full ring */
	struct job *batch;
	struct store_tenant_counts *tc;
	struct store_entry_hits *eh;
};

static int job_cmp(const void *a, const void *b)
{
	const struct job *x = a, *y = b;
	int c = strcmp(x->tenant, y->tenant);
	if (c)
		return c;
	if (x->minute != y->minute)
		return x->minute < y->minute ? -1 : 1;
	return strcmp(x->id, y->id);
}

/* Sum n jobs (sorted here) into per-tenant-and-minute counters and
 * per-entry hits; the arrays point into the jobs. */
static void sum_batch(struct tally *t, struct job *jobs, size_t n, size_t *ntc, size_t *neh)
{
	qsort(jobs, n, sizeof(*jobs), job_cmp);
	*ntc = *neh = 0;
	for (size_t i = 0; i < n; i++) {
		struct job *j = &jobs[i];
		if (*ntc == 0 || strcmp(t->tc[*ntc - 1].tenant, j->tenant) != 0 ||
		    t->tc[*ntc - 1].minute != j->minute)
			t->tc[(*ntc)++] = (struct store_tenant_counts){ .tenant = j->tenant,
									.minute = j->minute };
		struct store_tenant_counts *c = &t->tc[*ntc - 1];
		cache_series_reject(c, j->rejected);
		if (j->kind == JOB_BYPASS) {
			c->bypass++;
			continue;
		}
		if (j->kind == JOB_COALESCED) {
			c->extra[STORE_X_COALESCED]++;
			continue;
		}
		if (j->kind == JOB_LAT_UP) {
			c->extra[STORE_X_LAT_UP + j->prompt]++; /* the bucket rides in prompt */
			continue;
		}
		c->lookups++;
		if (j->kind == JOB_MISS) {
			c->misses++;
			continue;
		}
		if (j->kind == JOB_HIT_EXACT)
			c->hits_exact++;
		else
			c->hits_semantic++;
		if (j->lat >= 0)
			c->extra[STORE_X_LAT_HIT + j->lat]++;
		c->tokens_prompt += j->prompt;
		c->tokens_completion += j->completion;
		if (*neh == 0 || strcmp(t->eh[*neh - 1].tenant, j->tenant) != 0 ||
		    strcmp(t->eh[*neh - 1].id, j->id) != 0)
			t->eh[(*neh)++] = (struct store_entry_hits){ .tenant = j->tenant,
								     .id = j->id };
		t->eh[*neh - 1].hits++;
	}
}

/* Write one batch; returns the requests of it that are not counted. */
static size_t write_batch(struct tally *t, struct job *jobs, size_t n)
{
	size_t ntc, neh;
	sum_batch(t, jobs, n, &ntc, &neh);
	if (t->before && neh && t->before(t->before_ud, t->eh, neh)) {
		pthread_mutex_lock(&t->mu);
		t->store_waits++;
		pthread_mutex_unlock(&t->mu);
	}
	struct sg_error e = { 0 };
	size_t unapplied = 0;
	enum sg_err rc = store_record_counts(t->store, t->tc, ntc, t->eh, neh,
					    t->cfg->cache_ttl, &unapplied, &e);
	if (rc != SG_OK && !t->failing && unapplied)
		sg_log(SG_LOG_WARN, "cache accounting: %zu requests not counted: %s "
		       "(further failures are not logged until it works again)", unapplied,
		       e.msg);
	else if (rc != SG_OK && !t->failing)
		sg_log(SG_LOG_WARN, "cache accounting: the requests are counted, some entry "
		       "hits are not: %s (further failures are not logged until it works "
		       "again)", e.msg);
	else if (rc == SG_OK && t->failing)
		sg_log(SG_LOG_INFO, "cache accounting: written again");
	t->failing = rc != SG_OK;
	return unapplied;
}

static void *run(void *arg)
{
	struct tally *t = arg;
	pthread_mutex_lock(&t->mu);
	for (;;) {
		while (t->count == 0 && !t->stop) {
			t->idle = true;
			pthread_cond_wait(&t->more, &t->mu);
			t->idle = false;
		}
		if (t->count == 0)
			break; /* stopping, and everything is written */
		if (!t->stop && !t->flush && t->count < TALLY_CAP / 2) {
			struct timespec until;
			clock_gettime(CLOCK_MONOTONIC, &until);
			until.tv_nsec += GATHER_NS;
			if (until.tv_nsec >= 1000000000L) {
				until.tv_sec++;
				until.tv_nsec -= 1000000000L;
			}
			while (!t->stop && !t->flush && t->count < TALLY_CAP / 2 &&
			       pthread_cond_timedwait(&t->more, &t->mu, &until) == 0)
				;
		}
		t->flush = false;
		size_t n = t->count;
		for (size_t i = 0; i < n; i++)
			t->batch[i] = t->ring[(t->head + i) % TALLY_CAP];
		t->head = (t->head + n) % TALLY_CAP;
		t->count = 0;
		pthread_cond_broadcast(&t->room);
		pthread_mutex_unlock(&t->mu);
		/* the stats count requests: not the coalesced and latency notes
		 * that ride along (sum_batch sorts the batch, so count first) */
		size_t requests = 0;
		for (size_t i = 0; i < n; i++)
			requests += t->batch[i].kind <= JOB_BYPASS;
		size_t unapplied = write_batch(t, t->batch, n);
		if (unapplied > requests)
			unapplied = requests;
		pthread_mutex_lock(&t->mu);
		t->done += n;
		t->batches++;
		t->written += requests - unapplied;
		t->dropped += unapplied;
		pthread_cond_broadcast(&t->settled);
	}
	pthread_mutex_unlock(&t->mu);
	return NULL;
}

static void tally_free(struct tally *t)
{
	store_destroy(t->store);
	free(t->ring);
	free(t->batch);
	free(t->tc);
	free(t->eh);
	pthread_mutex_destroy(&t->mu);
	pthread_cond_destroy(&t->more);
	pthread_cond_destroy(&t->room);
	pthread_cond_destroy(&t->settled);
	free(t);
}

struct tally *tally_start(const struct sg_config *cfg, struct sg_error *e)
{
	struct tally *t = calloc(1, sizeof(*t));
	if (!t) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		return NULL;
	}
	t->cfg = cfg;
	pthread_mutex_init(&t->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&t->more, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&t->room, NULL);
	pthread_cond_init(&t->settled, NULL);
	t->store = store_create(cfg);
	t->ring = calloc(TALLY_CAP, sizeof(*t->ring));
	t->batch = calloc(TALLY_CAP, sizeof(*t->batch));
	t->tc = calloc(TALLY_CAP, sizeof(*t->tc));
	t->eh = calloc(TALLY_CAP, sizeof(*t->eh));
	if (!t->store || !t->ring || !t->batch || !t->tc || !t->eh) {
		tally_free(t);
		sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		return NULL;
	}
	if (pthread_create(&t->thread, NULL, run, t) != 0) {
		tally_free(t);
		sg_error_set(e, SG_ERR_INTERNAL, "cannot start the accounting thread");
		return NULL;
	}
	return t;
}

void tally_stop(struct tally *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->mu);
	t->stop = true;
	pthread_cond_broadcast(&t->more);
	pthread_cond_broadcast(&t->room);
	pthread_mutex_unlock(&t->mu);
	pthread_join(t->thread, NULL);
	tally_free(t);
}

static void enqueue(struct tally *t, const char *tenant, const char *id, int kind,
		    enum verify_reason rejected, long long prompt, long long completion, int lat)
{
	long long minute = (long long)time(NULL) / 60;
	pthread_mutex_lock(&t->mu);
	while (t->count == TALLY_CAP && !t->stop)
		pthread_cond_wait(&t->room, &t->mu);
	if (!t->stop) {
		struct job *j = &t->ring[(t->head + t->count) % TALLY_CAP];
		snprintf(j->tenant, sizeof(j->tenant), "%s", tenant);
		snprintf(j->id, sizeof(j->id), "%s", id);
		j->kind = kind;
		j->rejected = rejected;
		j->minute = minute;
		j->lat = lat;
		j->prompt = prompt > 0 ? prompt : 0;
		j->completion = completion > 0 ? completion : 0;
		t->count++;
		t->queued++;
		/* wake the writer for the first job, or early when half full */
		if ((t->count == 1 && t->idle) || t->count == TALLY_CAP / 2)
			pthread_cond_signal(&t->more);
	}
	pthread_mutex_unlock(&t->mu);
}

void tally_hit(struct tally *t, const char *tenant, const char *id, bool semantic,
	       long long prompt_tokens, long long completion_tokens,
	       enum verify_reason rejected, double ms)
{
	enqueue(t, tenant, id, semantic ? JOB_HIT_SEMANTIC : JOB_HIT_EXACT, rejected,
		prompt_tokens, completion_tokens, ms >= 0 ? store_lat_bucket(ms) : -1);
}

void tally_miss(struct tally *t, const char *tenant, enum verify_reason rejected)
{
	enqueue(t, tenant, "", JOB_MISS, rejected, 0, 0, -1);
}

void tally_bypass(struct tally *t, const char *tenant)
{
	enqueue(t, tenant, "", JOB_BYPASS, SG_VERIFY_PASS, 0, 0, -1);
}

void tally_coalesced(struct tally *t, const char *tenant)
{
	enqueue(t, tenant, "", JOB_COALESCED, SG_VERIFY_PASS, 0, 0, -1);
}

void tally_upstream_latency(struct tally *t, const char *tenant, double ms)
{
	enqueue(t, tenant, "", JOB_LAT_UP, SG_VERIFY_PASS, store_lat_bucket(ms), 0, -1);
}

void tally_before_write(struct tally *t,
			bool (*fn)(void *, const struct store_entry_hits *, size_t), void *ud)
{
	if (t) {
		t->before = fn;
		t->before_ud = ud;
	}
}

void tally_settle(struct tally *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->mu);
	unsigned long long target = t->queued;
	if (t->done < target) {
		t->flush = true;
		pthread_cond_signal(&t->more);
	}
	while (t->done < target) {
		pthread_cond_wait(&t->settled, &t->mu);
		if (t->done < target && !t->flush) {
			t->flush = true; /* ours was in a later batch */
			pthread_cond_signal(&t->more);
		}
	}
	pthread_mutex_unlock(&t->mu);
}

void tally_get_stats(struct tally *t, struct tally_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!t)
		return;
	pthread_mutex_lock(&t->mu);
	out->queued = t->queued;
	out->written = t->written;
	out->dropped = t->dropped;
	out->batches = t->batches;
	out->store_waits = t->store_waits;
	pthread_mutex_unlock(&t->mu);
}
