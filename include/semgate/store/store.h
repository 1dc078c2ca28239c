/* Redis adapter: one hiredis connection per worker thread, created lazily,
 * re-created after any I/O error; pipelines and MULTI/EXEC blocks; and the
 * key layout — every Redis key name is built in store.c and nowhere else.
 * A struct store is owned by one thread and never shared. */
#ifndef SEMGATE_STORE_H
#define SEMGATE_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include "semgate/core/config.h"
#include "semgate/core/err.h"

struct store;

/* A list of binary-safe strings returned by the store; owned by the caller,
 * released with store_strlist_finish. */
struct store_strlist {
	char **v;     /* each NUL-terminated, may also contain NULs */
	size_t *len;
	size_t n;
};
void store_strlist_finish(struct store_strlist *l);

/* Create an unconnected store for this thread; cfg is borrowed and must
 * outlive it. NULL on out of memory. */
struct store *store_create(const struct sg_config *cfg);
void store_destroy(struct store *s);

/* Process-wide count of successful reconnections after a lost connection. */
unsigned long long store_reconnects(void);

/* PING. SG_ERR_REDIS when Redis cannot be reached or answers an error. */
enum sg_err store_ping(struct store *s, struct sg_error *e);

/* ---- conversation history: {prefix}chat:{tenant}:{conv} ---- */

/* All messages of a conversation (LRANGE 0 -1) and its TTL in seconds
 * (-2 when the key does not exist, -1 when it has none). */
enum sg_err store_history_get(struct store *s, const char *tenant, const char *conv,
			      struct store_strlist *out, long long *ttl,
			      struct sg_error *e);

/* Running summaries on (SEMGATE_SUMMARY): what an append does with the
 * messages it trims out of the window. In: pending_max, epoch (a random
 * hex id, at most 32 chars, borrowed). Out: how many messages moved to the
 * pending list, how many of its oldest were dropped at pending_max, and its
 * length after. */
struct store_capture {
	long long pending_max;
	const char *epoch;
	long long moved, skipped, pending;
};

/* In one MULTI/EXEC: RPUSH items, LTRIM to the last max, EXPIRE ttl_s.
 * With cap (summaries on), the trim is one EVAL in the same transaction
 * that first moves exactly the trimmed messages to the tail of the
 * conversation's pending list, holds that list at cap->pending_max and
 * gives it and the summary hash the same TTL (summary.c).
 * *new_len gets the length after trimming. Either all of it happens or
 * nothing does. */
enum sg_err store_history_append(struct store *s, const char *tenant, const char *conv,
				 const char *const *items, const size_t *lens, size_t n,
				 long long max, long long ttl_s, struct store_capture *cap,
				 long long *new_len, struct sg_error *e);

/* DEL of the conversation, its pending list and its summary; *existed
 * tells whether there was anything. */
enum sg_err store_history_delete(struct store *s, const char *tenant, const char *conv,
				 bool *existed, struct sg_error *e);

/* ---- running summaries (src/store/summary.c):
 * {prefix}chatpend:{tenant}:{conv} (list) and {prefix}chatsum:{tenant}:{conv}
 * (hash), same lifetime as the conversation's list ---- */

/* A conversation's summary as readers see it. text is malloc'd (NULL: no
 * summary yet), owned by the caller; free with store_summary_finish. */
struct store_summary {
	char *text;
	size_t text_len;
	long long covered;     /* messages folded into text */
	long long skipped;     /* messages dropped from pending at its bound */
	long long pending;     /* messages waiting to be folded in */
	long long updated_ms;  /* when text was written (unix ms), 0: never */
};
void store_summary_finish(struct store_summary *sm);

/* The history (as store_history_get), its TTL and its summary in one round
 * trip. */
enum sg_err store_conv_read(struct store *s, const char *tenant, const char *conv,
			    struct store_strlist *hist, long long *ttl,
			    struct store_summary *sm, struct sg_error *e);

/* What the summarizer read, in one MULTI: the summary's epoch ("" when
 * there is no summary hash) and head position, its text (malloc'd or
 * NULL) and the first batch pending messages. */
struct store_summary_snap {
	char epoch[40];
	long long out;
	char *text;
	size_t text_len;
	struct store_strlist pending;
};
void store_summary_snap_finish(struct store_summary_snap *sn);

enum sg_err store_summary_snapshot(struct store *s, const char *tenant, const char *conv,
				   long long batch, struct store_summary_snap *sn,
				   struct sg_error *e);

/* Atomically (one EVAL): if the summary and the head of pending are still
 * those of sn, write text (text_len bytes) as the summary and remove
 * exactly the first n pending messages; *left gets the pending length
 * after, or -1 when something changed under it (nothing written). */
enum sg_err store_summary_apply(struct store *s, const char *tenant, const char *conv,
				const struct store_summary_snap *sn, size_t n, const char *text,
				size_t text_len, long long now_ms, long long *left,
				struct sg_error *e);

/* Every conversation whose summary hash says messages are waiting, found
 * by SCAN (never KEYS) over the summary hashes: fn(ud, tenant, conv) for
 * each (pointers valid during the call). O(keyspace): the summarizer's
 * start-up and periodic sweep only. *found: how many. */
typedef void (*store_pending_fn)(void *ud, const char *tenant, const char *conv);
enum sg_err store_summary_scan(struct store *s, store_pending_fn fn, void *ud, size_t *found,
			       struct sg_error *e);

/* ---- cache entries: {prefix}e:{tenant}:{id} and {prefix}x:{tenant}:{sha} ---- */

/* One cache entry to write. All pointers borrowed. */
struct store_entry {
	const char *id;
	const char *query;
	size_t query_len;
	const char *answer;        /* the completion JSON as served */
	size_t answer_len;
	const char *scope;         /* scope hash (hex) */
	const char *ns;            /* namespace, "" for none */
	const char *exact;         /* exact key hash, or NULL: no exact key */
	const float *vec;          /* normalised vector, or NULL */
	int dim;
	const char *emb_model;     /* embedding model of vec, or "" */
	long long created;         /* unix seconds */
	long long tokens;          /* total tokens the answer cost */
	long long ttl_s;
	/* Sidecar entries (routes/cache.c); zero for chat entries. */
	const char *kind;          /* NULL/"chat": completion JSON; "text": plain answer */
	const char *const *tags;   /* ntags tags, each [A-Za-z0-9._:-]{1,128} */
	size_t ntags;
	const char *metadata;      /* a JSON object as text, or NULL */
	size_t metadata_len;
	bool no_archive;           /* a restore from the archive: no stream record */
};

/* Write the entry hash and its exact key in one MULTI/EXEC, both with
 * the entry's TTL. The exact key holds "<id>\n<answer>" ("<id>:text\n<answer>"
 * for text entries). In the same transaction: SADD to each tag set (its TTL
 * raised to at least the entry's) and, when the entry has a vector, an
 * "add" event on {prefix}events for the other gateway processes. */
enum sg_err store_entry_put(struct store *s, const char *tenant,
			    const struct store_entry *en, struct sg_error *e);

/* store_entry_put in halves, so that several puts share one round trip:
 * send appends each put's MULTI block to the pipeline (en is copied into
 * it), recv reads one put's replies, in the order sent; once every put of
 * the pipeline is read, finish each one that was read. After a failed send
 * or recv, store_pipeline_lost says whether the later puts' replies are
 * gone: then their outcome is unknown, as after a lost connection. */
struct store_put {
	size_t queued, acct; /* commands in its MULTI; the accounting's place */
	bool acct_body;      /* finish runs the accounting script by its body */
};
enum sg_err store_entry_put_send(struct store *s, const char *tenant,
				 const struct store_entry *en, struct store_put *p,
				 struct sg_error *e);
enum sg_err store_entry_put_recv(struct store *s, struct store_put *p, struct sg_error *e);
void store_entry_put_finish(struct store *s, const char *tenant, const char *id,
			    const struct store_put *p);
bool store_pipeline_lost(const struct store *s);
/* Nothing of a pipeline is written before its first read: a connection
 * replaced meanwhile (a Sentinel failover seen by the next put's send)
 * took the puts appended before with it. This changes at every new
 * connection; compare it before and after each send. */
unsigned long store_conn_serial(const struct store *s);
/* Which node entry id of tenant lives on: 0 on one server, the master's
 * index in the slot map on a cluster (-1: not known). Puts of one pipeline
 * kept to one node fail together only when that node does. */
int store_node_of(struct store *s, const char *tenant, const char *id);

/* An answer read back from Redis. answer is malloc'd, owned by the caller
 * (free with store_answer_finish). */
struct store_answer {
	char id[65];
	char *answer;
	size_t answer_len;
	long long tokens;
	char kind[8];              /* "chat" or "text" */
};
void store_answer_finish(struct store_answer *a);

/* GET the exact key. *found false (and SG_OK) on a miss. With pttl_ms,
 * its PTTL is read in the same round trip (-2: gone, -1: no TTL). */
enum sg_err store_exact_get(struct store *s, const char *tenant, const char *exact,
			    struct store_answer *out, bool *found, long long *pttl_ms,
			    struct sg_error *e);

/* store_exact_get in two halves, so the caller can work while Redis
 * answers: send the GET (and a PTTL when pttl), then read the answer
 * (pttl_ms non-NULL exactly when pttl was asked). Nothing else may use s
 * in between; a failed send needs no read. */
enum sg_err store_exact_send(struct store *s, const char *tenant, const char *exact, bool pttl,
			     struct sg_error *e);
enum sg_err store_exact_recv(struct store *s, struct store_answer *out, bool *found,
			     long long *pttl_ms, struct sg_error *e);

/* The exact key's name, "{prefix}x:{tenant}:{exact}", into out[cap];
 * false when it does not fit. */
bool store_exact_keyname(const struct sg_config *cfg, const char *tenant, const char *exact,
			 char *out, size_t cap);

/* HMGET answer and tokens of an entry. *found false when it is gone. */
enum sg_err store_entry_answer(struct store *s, const char *tenant, const char *id,
			       struct store_answer *out, bool *found, struct sg_error *e);

/* Called for every entry that has a vector, while scanning at start.
 * Pointers are valid only during the call. */
typedef void (*store_entry_fn)(void *ud, const char *tenant, const char *id,
			       const char *scope, const char *emb_model,
			       const float *vec, int dim, long long pttl_ms);

/* SCAN every entry key under the prefix and HMGET their vectors in
 * pipelined batches; entries without a vector or with a blob whose length
 * does not match dim are skipped. *scanned gets how many were delivered.
 * stop (NULL: never) is read before every batch: once it is true the scan
 * ends with SG_ERR_INTERNAL ("stopped") and delivers nothing more. */
enum sg_err store_scan_entries(struct store *s, store_entry_fn fn, void *ud,
			       const atomic_bool *stop, size_t *scanned, struct sg_error *e);

/* ---- rate limit window: {prefix}rl:{tenant} (src/store/limits.c) ---- */

/* One request against the tenant's sliding window of window_ms, in one
 * atomic script on Redis's clock: drop members older than the window;
 * when fewer than max remain, add this request (a unique member) and set
 * the key's TTL to the window, *allowed = true; otherwise add nothing
 * (refused requests do not count) and *retry_ms gets the time until the
 * oldest member leaves the window. *remaining: admissions left after this
 * one. SG_ERR_REDIS when Redis cannot be asked (the caller decides). */
enum sg_err store_rate_limit(struct store *s, const char *tenant, long long max,
			     long long window_ms, bool *allowed, long long *remaining,
			     long long *retry_ms, struct sg_error *e);

/* ---- embeddings cache: {prefix}emb:{tenant}:{model}:{sha} (src/store/emb.c) ---- */

/* MGET the n keys named by hex digests sha[i]. blobs[i] gets a malloc'd
 * copy of the value (caller frees) or NULL when absent, lens[i] its length.
 * On failure every blobs[i] is NULL. */
enum sg_err store_emb_get(struct store *s, const char *tenant, const char *model,
			  const char *const *sha, size_t n, char **blobs, size_t *lens,
			  struct sg_error *e);

/* SET each key to blobs[i] (lens[i] bytes) with a TTL of ttl_s, in one
 * MULTI/EXEC. */
enum sg_err store_emb_put(struct store *s, const char *tenant, const char *model,
			  const char *const *sha, const char *const *blobs,
			  const size_t *lens, size_t n, long long ttl_s, struct sg_error *e);

#endif
