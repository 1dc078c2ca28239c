/* The store module's cache-administration API (src/store/cache_ops.c and
 * src/store/events.c): reading and deleting entries, invalidation by namespace
 * and tag, hit/miss accounting, the leaderboard, per-tenant stats, and the
 * {prefix}events pub/sub channel that keeps several gateway processes'
 * vector indexes in step. Every key name is still built in src/store/.
 * A struct store is owned by one thread; a struct store_sub likewise. */
#ifndef SEMGATE_STORE_OPS_H
#define SEMGATE_STORE_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include "semgate/core/config.h"
#include "semgate/core/err.h"
#include "semgate/store/store.h"

/* ---- reading one entry ---- */

/* An entry as stored, without its vector. Every pointer is malloc'd and
 * owned by the view (never NULL after a successful read, "" when the field
 * is absent, except metadata, which is NULL when the entry has none);
 * release with store_entry_view_finish. */
struct store_entry_view {
	char id[65];
	char *query;
	size_t query_len;
	char *answer;
	size_t answer_len;
	char *metadata;       /* JSON object text, or NULL */
	size_t metadata_len;
	char *ns;
	char *scope;
	char *kind;           /* "chat" or "text" */
	char *tags;           /* comma-separated, "" for none */
	char *model;          /* embedding model of the vector, "" for none */
	int dim;              /* 0: no vector */
	long long created;
	long long hits;
	long long tokens;
	long long ttl_s;      /* remaining TTL in seconds, -1 none */
	/* feedback (store_entry_feedback): the entry's own raised threshold
	 * (0: none) and the keys of questions it must never answer, each 16
	 * hex digits, space-separated ("" for none) */
	double min_sim;
	char *refused;
};
void store_entry_view_finish(struct store_entry_view *v);

/* Most question keys one entry keeps in its refused list (oldest dropped). */
#define STORE_REFUSED_MAX 16

/* Record a feedback verdict on entry {prefix}e:{tenant}:{id}, atomically
 * (one script): a "wrong" verdict counts in the entry's "wrong" field, adds
 * qkey (16 hex digits) to its refused list and raises its min_sim to
 * min_sim when that is higher (min_sim <= 0: unchanged); a "right" one
 * counts in "right". *found false (nothing written) when there is no such
 * entry; otherwise *wrong_n, *right_n are the counts after this verdict and
 * *min_sim_out the entry's threshold after it (0: none). */
enum sg_err store_entry_feedback(struct store *s, const char *tenant, const char *id,
				 bool wrong, const char *qkey, double min_sim,
				 long long *wrong_n, long long *right_n, double *min_sim_out,
				 bool *found, struct sg_error *e);

/* Shadow-mode calibration (src/store/calib.c): per similarity bucket B
 * (hundredths, 0..100) the would-be semantic hits shadowed and how many
 * of them the fresh answer agreed with. */
#define STORE_CAL_BUCKETS 101
struct store_calibration {
	long long would_hit[STORE_CAL_BUCKETS];
	long long agree[STORE_CAL_BUCKETS];
};

/* Count one shadowed would-be hit in bucket (0..100) for the tenant and,
 * when ns is not empty, for its namespace too: one round trip. */
enum sg_err store_calibration_add(struct store *s, const char *tenant, const char *ns,
				  int bucket, bool agree, struct sg_error *e);

/* The counts of the tenant (ns NULL or "") or of one namespace. */
enum sg_err store_calibration_read(struct store *s, const char *tenant, const char *ns,
				   struct store_calibration *out, struct sg_error *e);

/* HMGET the entry {prefix}e:{tenant}:{id} and its TTL. *found false (and
 * SG_OK) when there is no such entry. */
enum sg_err store_entry_read(struct store *s, const char *tenant, const char *id,
			     struct store_entry_view *out, bool *found,
			     struct sg_error *e);

/* store_entry_read() for n entries of one tenant in one round trip (one
 * pipeline): out[i] and found[i] for ids[i] (borrowed). On an error every
 * view is released and every found[i] is false. */
enum sg_err store_entry_read_many(struct store *s, const char *tenant, const char *const *ids,
				  size_t n, struct store_entry_view *out, bool *found,
				  struct sg_error *e);

/* Load one entry's vector (HMGET + PTTL) and hand it to fn as the start-up
 * scan does. *found false when the entry is gone or has no valid vector. */
enum sg_err store_entry_vector(struct store *s, const char *tenant, const char *id,
			       store_entry_fn fn, void *ud, bool *found,
			       struct sg_error *e);

/* ---- deleting ---- */

/* Called with the id of every entry a delete or invalidation removed;
 * the pointer is valid only during the call. */
typedef void (*store_id_fn)(void *ud, const char *id);

/* Delete one entry and everything that points at it, in one MULTI/EXEC:
 * the entry hash, its exact key (only while that key still names this
 * entry), its tag memberships, its leaderboard row, and a "delete" event.
 * *found false (SG_OK) when the tenant has no such entry. */
enum sg_err store_entry_delete(struct store *s, const char *tenant, const char *id,
			       bool *found, struct sg_error *e);

/* Delete every entry of the tenant whose namespace is ns (NULL: any) and
 * that carries tag (NULL: any); at least one of them must be given. With a
 * tag the tag set is walked (SSCAN), otherwise the tenant's entry keys
 * (SCAN, never KEYS). Each deletion is the one above, announced as a
 * "flush" event; fn (may be NULL) sees each removed id. *deleted counts
 * the entries removed. */
enum sg_err store_invalidate(struct store *s, const char *tenant, const char *ns,
			     const char *tag, store_id_fn fn, void *ud,
			     long long *deleted, struct sg_error *e);

/* ---- accounting: {prefix}stats:{tenant}, {prefix}top:{tenant} ---- */

/* Most verifier reasons a series counts apart. */
#define STORE_REASONS_MAX 16

/* A batch of lookups, summed: per tenant and minute its counters, per
 * entry its hits. */
/* Series counters after the fixed ones: coalesced hits, then the hit and
 * the upstream latency histograms, STORE_LAT_BUCKETS buckets each with
 * upper bounds of 1, 5, 25, 100, 500 and 2500 ms, and the rest. */
#define STORE_LAT_BUCKETS 7
enum {
	STORE_X_COALESCED = 0,
	STORE_X_LAT_HIT = 1,
	STORE_X_LAT_UP = 1 + STORE_LAT_BUCKETS,
	STORE_X_COUNT = 1 + 2 * STORE_LAT_BUCKETS,
};
/* Their field names ("hits_coalesced", "lat_hit:1", …, "lat_up:inf"). */
extern const char *const store_series_extra[STORE_X_COUNT];
/* The latency bucket of ms: 0 .. STORE_LAT_BUCKETS - 1. */
int store_lat_bucket(double ms);

struct store_tenant_counts {
	const char *tenant;
	long long lookups, hits_exact, hits_semantic, misses;
	long long tokens_prompt, tokens_completion;
	/* The per-minute series ({prefix}ts:{tenant}:m:{minute} and its hour
	 * {prefix}ts:{tenant}:h:{hour}); written only when minute > 0. */
	long long minute;             /* unix time / 60 of these lookups */
	long long bypass;             /* requests answered without a lookup */
	long long rejected[STORE_REASONS_MAX]; /* verifier refusals by reason */
	long long extra[STORE_X_COUNT];  /* series only: see STORE_X_* */
	const char *const *reasons;   /* reasons[i] names rejected[i], NULL-ended;
					 borrowed (static); NULL: none */
};
struct store_entry_hits {
	const char *tenant;
	const char *id;
	long long hits;
};

/* The whole batch in one MULTI/EXEC, with the same effect as recording
 * each lookup alone: HINCRBY of every non-zero tenant counter
 * ({prefix}stats:{tenant}, no TTL), of the minute and hour series hashes
 * (their TTLs SEMGATE_SERIES_MINUTES_TTL and SEMGATE_SERIES_HOURS_TTL),
 * and per entry its hits (only while it exists) and ZINCRBY on the
 * leaderboard, whose TTL is set to top_ttl_s. Several rows may name the
 * same tenant (one per minute). Each tenant row and each entry is its own
 * MULTI block: when Redis refuses one, the others still count, and the
 * first refusal is returned. *unapplied (may be NULL) gets the requests
 * (lookups + bypass) of the tenant rows that are not known to be counted:
 * the refused ones, and every one from a lost connection on. */
enum sg_err store_record_counts(struct store *s, const struct store_tenant_counts *tc,
				size_t ntc, const struct store_entry_hits *eh, size_t neh,
				long long top_ttl_s, size_t *unapplied, struct sg_error *e);

/* ---- per-minute series (src/store/series.c) ---- */

/* One bucket of the series, summed over the keys it covers. requests is
 * lookups + bypass. */
struct store_series_point {
	long long requests, hits_exact, hits_semantic, misses, bypass, rejections;
	long long tokens_prompt, tokens_completion;
	long long rejected[STORE_REASONS_MAX];
	long long extra[STORE_X_COUNT];
};

/* Read npoints buckets of per keys each: the minute (hourly: hour) hashes
 * first, first + 1, ... first + npoints * per - 1 of the tenant, pipelined
 * in chunks; out[i] sums keys [first + i*per, first + (i+1)*per). reasons
 * as in store_tenant_counts. Missing keys count zero. */
enum sg_err store_series_read(struct store *s, const char *tenant, bool hourly,
			      long long first, size_t npoints, size_t per,
			      const char *const *reasons, struct store_series_point *out,
			      struct sg_error *e);

struct store_stats {
	long long lookups, hits_exact, hits_semantic, misses;
	long long tokens_prompt, tokens_completion;
	long long entries;       /* entry hashes of the tenant */
	long long indexed;       /* of those, with a vector */
	long long bytes;         /* query + answer + metadata + vector bytes */
	long long vector_bytes;  /* vector bytes alone (what the index holds) */
};

/* The counters and the tenant's entry counts and sizes, in one EVAL
 * whatever the number of entries (it first untracks up to 1,000 entries
 * whose TTL has passed). The first read of a tenant whose accounting was
 * never built (entries written by an earlier version) builds it once with
 * a SCAN of the keyspace (src/store/stats.c). */
enum sg_err store_stats_read(struct store *s, const char *tenant,
			     struct store_stats *out, struct sg_error *e);

struct store_top_row {
	char id[65];
	char *query;   /* malloc'd */
	char *ns;      /* malloc'd */
	char *kind;    /* malloc'd */
	long long hits;
};
struct store_top {
	struct store_top_row *rows;
	size_t n;
};
void store_top_finish(struct store_top *t);

/* The limit most-hit entries of the tenant, highest first. Rows whose
 * entry is gone are skipped and removed from the leaderboard (ZREM). */
enum sg_err store_top_read(struct store *s, const char *tenant, size_t limit,
			   struct store_top *out, struct sg_error *e);

/* ---- events: {prefix}events ---- */

/* A parsed event. type is "add", "delete" or "flush". */
struct store_event {
	char type[8];
	char id[65];
	char tenant[65];
	char origin[33];
};

/* Parse an event payload (pure). False for anything that is not an event
 * this version understands; such messages are ignored. */
bool store_event_parse(const char *payload, size_t len, struct store_event *out);

/* This process's origin id (32 hex characters), named in every event it
 * publishes. */
const char *store_event_origin(void);

/* A dedicated subscriber connection (pub/sub needs its own: a subscribed
 * hiredis context accepts no other command). Owned by one thread. */
struct store_sub;

/* cfg borrowed, must outlive sub. NULL on out of memory. */
struct store_sub *store_sub_create(const struct sg_config *cfg);
void store_sub_destroy(struct store_sub *sub);

/* Connect and SUBSCRIBE, waiting for the confirmation. SG_OK once the
 * subscription is live. With track_exact it also asks Redis to report every
 * change of an exact key ({prefix}x:*) on this connection (CLIENT TRACKING
 * on REDIRECT <itself> BCAST PREFIX, then SUBSCRIBE __redis__:invalidate);
 * *tracking tells whether that took (not on Redis < 6, or when the command
 * is refused: the rest works without it). */
enum sg_err store_sub_connect(struct store_sub *sub, bool track_exact, bool *tracking,
			      struct sg_error *e);

/* Cluster mode, connected, with tracking wanted but not set up (a master
 * refused it or dropped the connection while store_sub_connect asked):
 * set up the per-master tracking connections again, without touching the
 * events connection. True once every master tracks; false (a reason in
 * why) otherwise, and always on one server, where the events connection
 * itself tracks and only a new connect can ask again. */
bool store_sub_track_again(struct store_sub *sub, char *why, size_t cap);

/* Close the connection (the next connect starts afresh). */
void store_sub_drop(struct store_sub *sub);

bool store_sub_connected(const struct store_sub *sub);

/* One message: an entry event (payload), or keys that changed
 * (invalidation: keys, or every key when all is set). */
struct store_sub_msg {
	char *payload;             /* an event, NUL-terminated, or NULL */
	size_t len;
	bool invalidate_all;       /* FLUSHDB/FLUSHALL, or tracking reset */
	char **keys;               /* changed keys, nkeys of them */
	size_t *key_lens;
	size_t nkeys;
};
void store_sub_msg_finish(struct store_sub_msg *m);

/* Wait at most timeout_ms for one message. SG_OK with *m filled (all empty
 * when nothing came in time or the reply was not a message); SG_ERR_REDIS
 * when the connection was lost (it is dropped; reconnect with
 * store_sub_connect). Never blocks longer than timeout_ms waiting for
 * data. */
enum sg_err store_sub_next(struct store_sub *sub, int timeout_ms, struct store_sub_msg *m,
			   struct sg_error *e);

/* ---- upgrading from the layout before slot buckets (legacy.c) ---- */

struct store_legacy_counts {
	size_t entries;  /* cache entries put again in the new layout */
	size_t moved;    /* counter hashes merged and embeddings moved */
	size_t removed;  /* derived keys (exact keys, tag sets, ...) deleted */
	size_t skipped;  /* old keys that could not move: left to their TTL */
	bool already;    /* an earlier start finished the move */
};

/* Move the cache entries, counters, calibration, series and embeddings of
 * the layout without hash tags into the bucket layout, once (the marker key
 * {prefix}layout says it is done), on a single server or through Sentinel;
 * nothing on an empty database or a cluster (which never holds the old
 * layout). Safe to run from several gateways at once. An
 * error (Redis lost) leaves the rest for the next start. Conversations move
 * one by one when first read (store_history_get). */
enum sg_err store_legacy_migrate(struct store *s, struct store_legacy_counts *n,
				 struct sg_error *e);

#endif
