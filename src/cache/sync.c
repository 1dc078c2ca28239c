/* The event follower: one thread per process with its own subscriber
 * connection and its own store (for reading entries and the rebuild scan).
 * Events are applied idempotently, except that adds published by this
 * process are skipped: it indexed those itself right after their EXEC
 * (and a resync in between rescans Redis, where they already are). It
 * never serves requests and never writes to Redis. Its first load ends the
 * start's warming; a resync never empties the index: rows stay searchable
 * while Redis is rescanned, and only those the scan no longer finds go. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/app/app.h"
#include "semgate/cache/cache.h"
#include "semgate/cache/sync.h"
#include "semgate/core/clock.h"
#include "semgate/cache/hotcache.h"
#include "semgate/core/log.h"
#include "semgate/store/store.h"
#include "semgate/store/ops.h"
#include "semgate/vindex/vindex.h"

#define POLL_MS 100
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
/* Cluster mode: a hot cache left off by a tracking set-up that failed while
 * the events connection lived is tried again, this often at first, the
 * wait doubling up to the maximum. */
#define RETRACK_MIN_MS 1000
#define RETRACK_MAX_MS 60000
#define BACKLOG_READ_MAX 1024   /* messages read in one go */
#define BACKLOG_MAX 65536       /* queued entry events; past it, reading waits */

struct cache_sync {
	struct sg_app *app;
	pthread_t thread;
	atomic_bool stop;
	atomic_ulong rebuilds;
};

/* Sleep ms, waking early when asked to stop. */
static void nap(struct cache_sync *cs, int ms)
{
	for (int slept = 0; slept < ms && !atomic_load(&cs->stop); slept += 20) {
		const struct timespec t = { 0, 20 * 1000 * 1000 };
		nanosleep(&t, NULL);
	}
}

static void add_row(void *ud, const char *tenant, const char *id, const char *scope,
		    const char *emb_model, const float *vec, int dim, long long pttl_ms)
{
	struct sg_app *app = ud;
	char part[VINDEX_KEY_MAX];
	struct sg_error e = { 0 };
	cache_partition_key(part, sizeof(part), tenant, scope, emb_model);
	int64_t expires = pttl_ms > 0 ? sg_wall_ms() + pttl_ms : 0;
	if (vindex_add(app->vindex, part, dim, id, vec, expires, &e) != SG_OK)
		sg_log(SG_LOG_WARN, "events: entry %s not indexed: %s", id, e.msg);
}

static void apply(struct cache_sync *cs, struct store *s, const char *payload, size_t len)
{
	struct store_event ev;
	if (!store_event_parse(payload, len, &ev)) {
		sg_log(SG_LOG_DEBUG, "events: ignored a message that is not an entry event");
		return;
	}
	if (strcmp(ev.type, "add") != 0) {
		vindex_remove(cs->app->vindex, ev.id);
		return;
	}
	/* this process stored it and indexed it itself, right after its EXEC
	 * (a resync in between rescans Redis, where the entry already is) */
	if (strcmp(ev.origin, store_event_origin()) == 0)
		return;
	struct sg_error e = { 0 };
	bool found = false;
	if (store_entry_vector(s, ev.tenant, ev.id, add_row, cs->app, &found, &e) != SG_OK)
		sg_log(SG_LOG_WARN, "events: entry %s not read: %s", ev.id, e.msg);
}

/* The ids in the index before a (re)load, as 64-bit hashes with a mark for
 * each one the scan finds again in Redis: the unmarked ones were deleted
 * (or expired) while nobody told this process. Rows added during the scan
 * are not in the set, so they stay. Two ids sharing a hash would keep a
 * deleted row until its TTL, or until a lookup reads its entry and drops it
 * (cache_match_find). 1M ids take 18 MB for the length of a load. */
struct idset {
	uint64_t *h;    /* 0 = empty slot */
	bool *seen;
	size_t cap;     /* a power of two, at least twice the ids */
	size_t n;
	bool failed;    /* out of memory or overfull: nothing is dropped */
};

static uint64_t id_hash64(const char *id)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (; *id; id++)
		h = (h ^ (unsigned char)*id) * 1099511628211ULL;
	return h ? h : 1;
}

static size_t idset_slot(const struct idset *set, uint64_t h)
{
	size_t i = (size_t)(h ^ (h >> 29)) & (set->cap - 1);
	while (set->h[i] && set->h[i] != h)
		i = (i + 1) & (set->cap - 1);
	return i;
}

static void idset_put(void *ud, const char *id)
{
	struct idset *set = ud;
	if (set->failed || 2 * (set->n + 1) > set->cap) {
		set->failed = true; /* the index grew past the count taken */
		return;
	}
	uint64_t h = id_hash64(id);
	size_t i = idset_slot(set, h);
	set->n += set->h[i] == 0;
	set->h[i] = h;
}

static void idset_mark(void *ud, const char *id)
{
	struct idset *set = ud;
	if (!set->cap)
		return;
	uint64_t h = id_hash64(id);
	size_t i = idset_slot(set, h);
	if (set->h[i] == h)
		set->seen[i] = true;
}

static void idset_finish(struct idset *set)
{
	free(set->h);
	free(set->seen);
	memset(set, 0, sizeof(*set));
}

static void idset_fail(struct idset *set)
{
	idset_finish(set);
	set->failed = true;
}

/* Snapshot the index's ids. An empty index needs no set. */
static void idset_init(struct idset *set, struct vindex *vi)
{
	memset(set, 0, sizeof(*set));
	size_t n = vindex_count(vi);
	if (n == 0)
		return;
	size_t cap = 64;
	/* rows added between the count and the walk need room too */
	while (cap < 2 * n + 1024)
		cap *= 2;
	set->h = calloc(cap, sizeof(*set->h));
	set->seen = calloc(cap, sizeof(*set->seen));
	if (!set->h || !set->seen) {
		idset_fail(set);
		return;
	}
	set->cap = cap;
	vindex_each_id(vi, idset_put, set);
	if (set->failed)
		idset_fail(set);
}

/* The ids of rows to drop, collected while the index is walked (nothing
 * may be removed during the walk). */
struct stale {
	const struct idset *set;
	char (*ids)[VINDEX_ID_MAX + 1];
	size_t n, cap;
	bool failed;
};

static void stale_collect(void *ud, const char *id)
{
	struct stale *st = ud;
	uint64_t h = id_hash64(id);
	size_t i = idset_slot(st->set, h);
	if (st->set->h[i] != h || st->set->seen[i])
		return;
	if (st->n == st->cap) {
		size_t cap = st->cap ? st->cap * 2 : 64;
		void *grown = realloc(st->ids, cap * sizeof(*st->ids));
		if (!grown) {
			st->failed = true;
			return;
		}
		st->ids = grown;
		st->cap = cap;
	}
	snprintf(st->ids[st->n++], sizeof(st->ids[0]), "%s", id);
}

/* Drop the rows of the snapshot that the scan did not find again. */
static size_t drop_unseen(struct vindex *vi, const struct idset *set)
{
	struct stale st = { .set = set };
	size_t dropped = 0;
	if (!set->cap)
		return 0;
	vindex_each_id(vi, stale_collect, &st);
	if (st.failed)
		sg_log(SG_LOG_WARN, "resync: out of memory; some deleted entries stay indexed "
		       "until their TTL");
	for (size_t i = 0; i < st.n; i++)
		dropped += vindex_remove(vi, st.ids[i]);
	free(st.ids);
	return dropped;
}

/* Subscribe, then rebuild: events that arrive during the scan wait in the
 * socket and are applied after it, so nothing falls between the two. */
static bool connect_and_sync(struct cache_sync *cs, struct store_sub *sub, struct store *s,
			     bool *warned, bool *tracked)
{
	struct sg_error e = { 0 };
	bool tracking = false;
	*tracked = false;
	/* no copies while nothing invalidates them */
	hot_set_enabled(cs->app->hot, false);
	if (store_sub_connect(sub, cs->app->hot != NULL, &tracking, &e) != SG_OK) {
		if (!*warned)
			sg_log(SG_LOG_WARN, "%s; retrying", e.msg);
		*warned = true;
		return false;
	}
	unsigned long n = atomic_load(&cs->rebuilds);
	size_t loaded = 0, dropped = 0;
	double t0 = sg_now_ms();
	struct idset seen;
	idset_init(&seen, cs->app->vindex);
	if (seen.failed)
		sg_log(SG_LOG_WARN, "resync: no snapshot of the index's ids; entries deleted "
		       "meanwhile stay indexed until their TTL or their next lookup");
	if (cache_rebuild(cs->app, s, idset_mark, &seen, &cs->stop, &loaded, &e) != SG_OK) {
		if (atomic_load(&cs->stop))
			sg_log(SG_LOG_INFO, "index load stopped after %zu entries: shutting down",
			       loaded);
		else
			sg_log(SG_LOG_WARN, "index rebuild incomplete (%zu entries): %s; retrying",
			       loaded, e.msg);
		idset_finish(&seen);
		store_sub_drop(sub);
		return false;
	}
	dropped = drop_unseen(cs->app->vindex, &seen);
	idset_finish(&seen);
	atomic_fetch_add(&cs->rebuilds, 1);
	if (atomic_exchange_explicit(&cs->app->warming, false, memory_order_acq_rel))
		sg_log(SG_LOG_INFO, "index warm: semantic lookups on");
	hot_set_enabled(cs->app->hot, tracking);
	*tracked = tracking;
	sg_log(SG_LOG_INFO, "index %s from redis: %zu entries in %.0f ms (%zu gone rows "
	       "dropped); following entry events", n > 0 ? "resynchronised" : "rebuilt",
	       loaded, sg_now_ms() - t0, dropped);
	*warned = false;
	return true;
}

/* Entry events read but not yet applied: applying an add costs a Redis
 * round trip, and invalidations must not wait behind those. */
struct backlog {
	struct store_sub_msg *m;
	size_t head, n, cap;
};

static void backlog_clear(struct backlog *b)
{
	for (size_t i = b->head; i < b->n; i++)
		store_sub_msg_finish(&b->m[i]);
	b->head = b->n = 0;
}

static bool backlog_push(struct backlog *b, struct store_sub_msg *m)
{
	if (b->head > 0 && b->n == b->cap) { /* slide the live part down */
		memmove(b->m, b->m + b->head, (b->n - b->head) * sizeof(*b->m));
		b->n -= b->head;
		b->head = 0;
	}
	if (b->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 64;
		struct store_sub_msg *grown = realloc(b->m, cap * sizeof(*grown));
		if (!grown)
			return false;
		b->m = grown;
		b->cap = cap;
	}
	b->m[b->n++] = *m;
	memset(m, 0, sizeof(*m));
	return true;
}

/* Read what the subscriber has (waiting up to wait_ms for the first
 * message), applying invalidations at once and queueing entry events.
 * False when the connection was lost. */
static bool take_messages(struct cache_sync *cs, struct store_sub *sub, struct store *s,
			  struct backlog *b, int wait_ms)
{
	for (int k = 0; k < BACKLOG_READ_MAX && b->n - b->head < BACKLOG_MAX; k++) {
		struct store_sub_msg m;
		struct sg_error e = { 0 };
		if (store_sub_next(sub, k == 0 ? wait_ms : 0, &m, &e) != SG_OK) {
			hot_set_enabled(cs->app->hot, false);
			sg_log(SG_LOG_WARN, "%s; will reconnect and resynchronise", e.msg);
			return false;
		}
		bool any = m.payload || m.invalidate_all || m.nkeys;
		if (m.invalidate_all)
			hot_clear(cs->app->hot);
		for (size_t i = 0; i < m.nkeys; i++)
			hot_invalidate(cs->app->hot, m.keys[i], m.key_lens[i]);
		if (m.payload && !backlog_push(b, &m)) {
			/* out of memory: apply it now rather than drop it */
			apply(cs, s, m.payload, m.len);
		}
		store_sub_msg_finish(&m);
		if (!any)
			break;
	}
	return true;
}

static void *run(void *arg)
{
	struct cache_sync *cs = arg;
	struct store *s = store_create(cs->app->cfg);
	struct store_sub *sub = store_sub_create(cs->app->cfg);
	struct backlog b = { 0 };
	int backoff = BACKOFF_MIN_MS;
	bool warned = false;
	/* the hot cache's tracking, and when to ask for it again (cluster) */
	bool tracked = false;
	bool cluster = config_is_cluster(cs->app->cfg);
	int retrack_wait = RETRACK_MIN_MS;
	double retrack_at = 0;
	if (!s || !sub) {
		sg_log(SG_LOG_ERROR, "events: out of memory; other gateways' entries will not "
		       "be followed, and the index stays cold");
		goto out;
	}
	while (!atomic_load(&cs->stop)) {
		if (!store_sub_connected(sub)) {
			/* the resync's scan covers whatever was still queued */
			backlog_clear(&b);
			if (!connect_and_sync(cs, sub, s, &warned, &tracked)) {
				nap(cs, backoff);
				backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
				continue;
			}
			backoff = BACKOFF_MIN_MS;
			retrack_wait = RETRACK_MIN_MS;
			retrack_at = sg_now_ms() + retrack_wait;
		}
		if (cluster && cs->app->hot && !tracked && sg_now_ms() >= retrack_at) {
			char why[256] = "";
			if ((tracked = store_sub_track_again(sub, why, sizeof(why)))) {
				hot_set_enabled(cs->app->hot, true);
				sg_log(SG_LOG_INFO, "hot exact cache on: every master tracks the "
				       "exact keys again");
			} else {
				sg_log(SG_LOG_DEBUG, "hot exact cache still off: %s", why);
				retrack_wait = retrack_wait * 2 > RETRACK_MAX_MS ? RETRACK_MAX_MS
										 : retrack_wait * 2;
				retrack_at = sg_now_ms() + retrack_wait;
			}
		}
		if (!take_messages(cs, sub, s, &b, b.head < b.n ? 0 : POLL_MS))
			continue;
		if (b.head < b.n) {
			struct store_sub_msg *m = &b.m[b.head++];
			apply(cs, s, m->payload, m->len);
			store_sub_msg_finish(m);
			if (b.head == b.n)
				b.head = b.n = 0;
		}
	}
out:
	backlog_clear(&b);
	free(b.m);
	hot_set_enabled(cs->app->hot, false);
	store_sub_destroy(sub);
	store_destroy(s);
	return NULL;
}

struct cache_sync *cache_sync_start(struct sg_app *app, struct sg_error *e)
{
	struct cache_sync *cs = calloc(1, sizeof(*cs));
	if (!cs) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		return NULL;
	}
	cs->app = app;
	atomic_init(&cs->stop, false);
	atomic_init(&cs->rebuilds, 0);
	if (pthread_create(&cs->thread, NULL, run, cs) != 0) {
		free(cs);
		sg_error_set(e, SG_ERR_INTERNAL, "cannot start the event follower thread");
		return NULL;
	}
	return cs;
}

void cache_sync_stop(struct cache_sync *cs)
{
	if (!cs)
		return;
	atomic_store(&cs->stop, true);
	pthread_join(cs->thread, NULL);
	free(cs);
}
