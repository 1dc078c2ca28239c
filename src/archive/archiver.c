/* The archiver: drains every archive stream through the consumer group
 * into PostgreSQL. At-least-once: a batch is acknowledged (XACK) only
 * after its transaction committed, and the rows are idempotent, so a
 * crash anywhere loses nothing and doubles nothing. Records a dead
 * archiver held are claimed after SEMGATE_ARCHIVE_CLAIM_MS. PostgreSQL
 * down: the records wait in the stream, the archiver backs off and
 * reconnects; the gateway never waits for it. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "semgate/archive/archive.h"
#include "semgate/core/clock.h"
#include "semgate/core/log.h"
#include "semgate/store/archive.h"
#include "semgate/store/store.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define STREAMS_EVERY_MS 10000

static atomic_ullong g_archived, g_rejected, g_lost, g_batches, g_pg_errors;

void archive_get_counts(struct archive_counts *out)
{
	out->archived = atomic_load(&g_archived);
	out->rejected = atomic_load(&g_rejected);
	out->lost = atomic_load(&g_lost);
	out->batches = atomic_load(&g_batches);
	out->pg_errors = atomic_load(&g_pg_errors);
}

struct stream_state {
	char *key;
	bool group;              /* XGROUP CREATE done */
	bool own_pending;        /* re-read what this consumer holds first */
	char claim_cursor[48];
	double next_claim;
	double next_reap;
	bool behind;             /* "falling behind" logged */
};

struct archiver {
	const struct sg_config *cfg;
	pthread_t thread;
	atomic_bool stop;
	char consumer[96];
	struct store *store;
	struct archive_pg *pg;
	struct stream_state *st;
	size_t nst;
	double next_streams;
	bool pg_down_logged, redis_down_logged;
	long long backoff_ms;
};

static void nap(struct archiver *a, long long ms)
{
	/* in short steps, so a stop is seen at once */
	for (long long left = ms; left > 0 && !atomic_load(&a->stop); left -= 50) {
		struct timespec ts = { 0, (left < 50 ? left : 50) * 1000000L };
		nanosleep(&ts, NULL);
	}
}

static void backoff(struct archiver *a)
{
	a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : BACKOFF_MIN_MS;
	if (a->backoff_ms > BACKOFF_MAX_MS)
		a->backoff_ms = BACKOFF_MAX_MS;
	nap(a, a->backoff_ms);
}

static void free_streams(struct archiver *a)
{
	for (size_t i = 0; i < a->nst; i++)
		free(a->st[i].key);
	free(a->st);
	a->st = NULL;
	a->nst = 0;
}

/* Take store_archive_streams()'s list, keeping what is known of streams
 * that stay. */
static void refresh_streams(struct archiver *a)
{
	struct store_strlist l;
	struct sg_error e = { 0 };
	if (store_archive_streams(a->store, &l, &e) != SG_OK)
		return;
	struct stream_state *st = calloc(l.n ? l.n : 1, sizeof(*st));
	if (!st) {
		store_strlist_finish(&l);
		return;
	}
	for (size_t i = 0; i < l.n; i++) {
		st[i].key = l.v[i];
		l.v[i] = NULL;
		st[i].own_pending = true;
		snprintf(st[i].claim_cursor, sizeof(st[i].claim_cursor), "0-0");
		for (size_t j = 0; j < a->nst; j++)
			if (strcmp(a->st[j].key, st[i].key) == 0) {
				free(st[i].key);
				st[i] = a->st[j];
				a->st[j].key = strdup(""); /* moved */
			}
	}
	free_streams(a);
	a->st = st;
	a->nst = l.n;
	store_strlist_finish(&l);
	a->next_streams = sg_now_ms() + STREAMS_EVERY_MS;
}

/* Decode, write and acknowledge one batch. False when PostgreSQL failed
 * (nothing acknowledged: the records stay pending for this consumer). */
static bool process(struct archiver *a, struct stream_state *st,
		    struct store_archive_batch *b)
{
	struct sg_error e = { 0 };
	struct arch_rec *recs = calloc(b->n + 1, sizeof(*recs));
	const char **ids = calloc(b->n + b->gone + 1, sizeof(char *));
	size_t nrec = 0, bad = 0, refused = 0;
	bool ok = false;
	if (!recs || !ids)
		goto out;
	for (size_t i = 0; i < b->n; i++) {
		char why[128];
		ids[i] = b->v[i].id;
		if (arch_rec_decode(b->v[i].id, b->v[i].rec, b->v[i].rec_len, b->v[i].vec,
				    b->v[i].vec_len, &recs[nrec], why, sizeof(why))) {
			nrec++;
		} else {
			sg_log(SG_LOG_WARN, "archive: record %s refused: %s", b->v[i].id, why);
			bad++;
		}
	}
	for (size_t i = 0; i < b->gone; i++)
		ids[b->n + i] = b->gone_ids[i];
	arch_batch_coalesce(recs, nrec);
	if (nrec && archive_pg_apply(a->pg, recs, nrec, &refused, &e) != SG_OK) {
		atomic_fetch_add(&g_pg_errors, 1);
		if (!a->pg_down_logged)
			sg_log(SG_LOG_WARN, "%s; records wait in the stream, retrying", e.msg);
		a->pg_down_logged = true;
		goto out;
	}
	if (a->pg_down_logged)
		sg_log(SG_LOG_INFO, "archive: PostgreSQL reachable again, catching up");
	a->pg_down_logged = false;
	if (store_archive_ack(a->store, st->key, ids, b->n + b->gone, &e) != SG_OK) {
		/* committed but not acknowledged: delivered again later, and
		 * the rows make the replay harmless */
		sg_log(SG_LOG_WARN, "archive: XACK failed (%s); the batch will be replayed", e.msg);
		st->own_pending = true;
	}
	if (b->gone)
		sg_log(SG_LOG_WARN, "archive: %zu pending records were trimmed from the stream "
		       "before they were archived (lost)", b->gone);
	atomic_fetch_add(&g_archived, nrec - refused);
	atomic_fetch_add(&g_rejected, bad + refused);
	atomic_fetch_add(&g_lost, b->gone);
	atomic_fetch_add(&g_batches, 1);
	ok = true;
out:
	for (size_t i = 0; recs && i < nrec; i++)
		arch_rec_finish(&recs[i]);
	free(recs);
	free(ids);
	return ok;
}

/* Check how far behind the group is; count and step over trimmed records. */
static void check_lag(struct archiver *a, struct stream_state *st)
{
	struct store_archive_lag lag;
	struct sg_error e = { 0 };
	if (store_archive_lag(a->store, st->key, &lag, &e) != SG_OK)
		return;
	if (lag.trimmed_unread > 0 &&
	    store_archive_skip_gap(a->store, st->key, &lag, &e) == SG_OK) {
		atomic_fetch_add(&g_lost, (unsigned long long)lag.trimmed_unread);
		sg_log(SG_LOG_WARN, "archive: %lld records of %s were trimmed (MAXLEN %lld) before "
		       "they were archived: lost, counted in semgate_archive_records_total"
		       "{outcome=\"lost\"}", lag.trimmed_unread, st->key,
		       a->cfg->archive_stream_max);
	}
	long long behind = (lag.lag > 0 ? lag.lag : 0) + (lag.pending > 0 ? lag.pending : 0);
	if (!st->behind && behind > a->cfg->archive_stream_max / 2) {
		sg_log(SG_LOG_WARN, "archive: falling behind on %s: %lld records not archived "
		       "(stream keeps %lld)", st->key, behind, a->cfg->archive_stream_max);
		st->behind = true;
	} else if (st->behind && behind < a->cfg->archive_stream_max / 4) {
		sg_log(SG_LOG_INFO, "archive: caught up on %s", st->key);
		st->behind = false;
	}
}

/* Forget consumers that left nothing pending and have been idle ten
 * claim periods: every restart of an archiver is a new consumer. */
static void reap(struct archiver *a, struct stream_state *st)
{
	if (sg_now_ms() < st->next_reap)
		return;
	long long idle = 10 * a->cfg->archive_claim_ms;
	st->next_reap = sg_now_ms() + (double)(idle / 10 > 1000 ? idle / 10 : 1000);
	size_t n = 0;
	struct sg_error e = { 0 };
	if (store_archive_reap(a->store, st->key, a->consumer, idle, &n, &e) == SG_OK && n)
		sg_log(SG_LOG_INFO, "archive: removed %zu idle consumers with nothing pending "
		       "from %s", n, st->key);
}

/* One step on one stream: true when it had work. */
static bool step(struct archiver *a, struct stream_state *st, int block_ms, bool *failed)
{
	struct sg_error e = { 0 };
	struct store_archive_batch b = { 0 };
	size_t batch = (size_t)a->cfg->archive_batch;
	enum sg_err rc;
	if (!st->group) {
		if (store_archive_group(a->store, st->key, &e) != SG_OK)
			goto redis_fail;
		st->group = true;
	}
	if (sg_now_ms() >= st->next_claim) {
		rc = store_archive_claim(a->store, st->key, a->consumer, a->cfg->archive_claim_ms,
					 st->claim_cursor, batch, &b, &e);
		if (rc != SG_OK)
			goto redis_fail;
		if (strcmp(st->claim_cursor, "0-0") == 0) {
			double every = (double)a->cfg->archive_claim_ms / 2;
			st->next_claim = sg_now_ms() + (every < 100 ? 100 : every);
		}
		if (b.n || b.gone) {
			sg_log(SG_LOG_INFO, "archive: claimed %zu records another archiver left "
			       "pending on %s", b.n + b.gone, st->key);
			goto got;
		}
		store_archive_batch_finish(&b);
	}
	if (st->own_pending) {
		if (store_archive_read(a->store, st->key, a->consumer, "0", batch, 0, &b, &e) != SG_OK)
			goto redis_fail;
		if (b.n)
			goto got;
		st->own_pending = false;
		store_archive_batch_finish(&b);
	}
	/* before every read of new records: once a read has gone past a
	 * trimmed gap Redis no longer tells that it was there */
	check_lag(a, st);
	reap(a, st);
	if (store_archive_read(a->store, st->key, a->consumer, ">", batch, block_ms, &b, &e) !=
	    SG_OK)
		goto redis_fail;
got:
	a->redis_down_logged = false;
	if (b.n == 0 && b.gone == 0) {
		store_archive_batch_finish(&b);
		return false;
	}
	if (!process(a, st, &b)) {
		st->own_pending = true;
		*failed = true;
	}
	store_archive_batch_finish(&b);
	return true;
redis_fail:
	store_archive_batch_finish(&b);
	if (strstr(e.msg, "NOGROUP"))
		st->group = false; /* the stream was deleted (FLUSHALL): make it again */
	if (!a->redis_down_logged)
		sg_log(SG_LOG_WARN, "archive: %s (retrying)", e.msg);
	a->redis_down_logged = true;
	*failed = true;
	return false;
}

static void *run(void *arg)
{
	struct archiver *a = arg;
	struct sg_error e = { 0 };
	while (!atomic_load(&a->stop)) {
		if (archive_pg_ready(a->pg, &e) != SG_OK) {
			atomic_fetch_add(&g_pg_errors, 1);
			if (!a->pg_down_logged)
				sg_log(SG_LOG_WARN, "%s; records wait in the stream, retrying", e.msg);
			a->pg_down_logged = true;
			backoff(a);
			continue;
		}
		if (!a->nst || sg_now_ms() >= a->next_streams)
			refresh_streams(a);
		bool work = false, failed = false;
		/* block on the stream only when there is just one to watch */
		int block = a->nst == 1 ? 200 : 0;
		if (block > a->cfg->redis_timeout_ms / 2)
			block = (int)(a->cfg->redis_timeout_ms / 2); /* under the read timeout */
		for (size_t i = 0; i < a->nst && !atomic_load(&a->stop); i++)
			work |= step(a, &a->st[i], block, &failed);
		if (failed) {
			backoff(a);
			continue;
		}
		a->backoff_ms = 0;
		if (!work && block == 0)
			nap(a, 50);
	}
	return NULL;
}

struct archiver *archiver_start(const struct sg_config *cfg, struct sg_error *e)
{
	struct archiver *a = calloc(1, sizeof(*a));
	if (!a) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		return NULL;
	}
	a->cfg = cfg;
	char host[64] = "host";
	gethostname(host, sizeof(host) - 1);
	unsigned r = 0;
	if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
		r = (unsigned)sg_now_ms();
	/* unique per process start: a restarted archiver is a new consumer and
	 * claims its predecessor's pending records once they have idled */
	snprintf(a->consumer, sizeof(a->consumer), "%.40s-%d-%08x", host, (int)getpid(), r);
	a->store = store_create(cfg);
	a->pg = archive_pg_create(cfg->archive_dsn);
	if (!a->store || !a->pg) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto fail;
	}
	if (pthread_create(&a->thread, NULL, run, a) != 0) {
		sg_error_set(e, SG_ERR_INTERNAL, "cannot start the archiver thread");
		goto fail;
	}
	sg_log(SG_LOG_INFO, "archive: archiver %s started", a->consumer);
	return a;
fail:
	store_destroy(a->store);
	archive_pg_destroy(a->pg);
	free(a);
	return NULL;
}

void archiver_stop(struct archiver *a)
{
	if (!a)
		return;
	atomic_store(&a->stop, true);
	pthread_join(a->thread, NULL);
	free_streams(a);
	store_destroy(a->store);
	archive_pg_destroy(a->pg);
	free(a);
}
