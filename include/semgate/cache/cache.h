/* Exact and semantic answer cache: lookup, storing, and rebuilding the
 * vector index from Redis. Works through store.h, vindex.h and embed.h only.
 * It must never serve an answer across scopes: the exact key and the index
 * partition both carry the scope hash, which carries the tenant. */
#ifndef SEMGATE_CACHE_H
#define SEMGATE_CACHE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>
#include "semgate/core/err.h"
#include "semgate/cache/hotcache.h"
#include "semgate/cache/scope.h"
#include "semgate/cache/verify.h"
#include "semgate/store/ops.h"

struct sg_app;
struct store;
struct upstream;

struct cache_result {
	bool hit;
	bool semantic;           /* a semantic (not exact) hit */
	bool embed_failed;       /* the embedding call failed: exact cache only */
	char id[65];             /* entry that answered */
	char *answer;            /* stored completion JSON (owned) */
	size_t answer_len;
	long long tokens;        /* total tokens the cached answer cost */
	double similarity;       /* best similarity seen; < -1 when none */
	float *vec;              /* the query's normalised vector (owned), or NULL */
	int dim;
	enum verify_reason rejected; /* the verifier refused the best candidate */
	char rejected_id[65];    /* that candidate, "" when none was refused */
	bool warming;            /* no semantic lookup: the index is still loading */
	struct hot_meta meta;    /* known when answered from the hot copy */
};
void cache_result_finish(struct cache_result *r);

/* Look up a request: the exact key first, then (when semantic is true) the
 * index partition of the scope, through cache_match_find() with the verifier in
 * mode verify. On a semantic miss out->vec keeps the query's vector for
 * cache_store. SG_ERR_REDIS when Redis fails (the caller bypasses the
 * cache); an embedding failure is not an error. */
enum sg_err cache_lookup(struct sg_app *app, struct store *s, struct upstream *up,
			 const char *tenant, const struct scope_info *si,
			 bool semantic, double threshold, enum verify_mode verify,
			 struct cache_result *out, struct sg_error *e);

/* One semantic lookup in a partition, for the chat route and the sidecar.
 * All pointers are borrowed. */
struct cache_match_req {
	const char *tenant;
	const char *part;        /* from cache_partition_key() */
	const float *vec;        /* the query's vector */
	int dim;
	double threshold;        /* a candidate's similarity must reach it */
	const char *kind;        /* "chat" or "text": other entries are skipped */
	enum verify_mode verify;
	const char *query;       /* the question's text, for the verifier */
	size_t query_len;
	int candidates;          /* most candidates verified, 1..VINDEX_TOPK_MAX */
	/* the first search's answer when the caller searched already (while
	 * Redis answered its exact lookup), or NULL: cache_match_find searches */
	const struct vindex_hit *first;
};

struct cache_match {
	bool hit;
	double best;             /* best similarity seen; < -1 when none */
	struct store_entry_view entry; /* the entry to serve, when hit (owned) */
	enum verify_reason rejected;   /* why the best candidate was refused */
	char rejected_id[65];    /* which it was; "" when none was refused */
	bool warming;            /* not searched: the index is still loading */
};
void cache_match_finish(struct cache_match *m);

/* The key feedback refuses a question by: 16 hex digits of SHA-256 over its
 * text with ASCII lowercased and white space collapsed, so "How  do I?" and
 * "how do i?" are one question. */
void cache_question_key(const char *q, size_t len, char out[17]);

/* Find the entry to serve for rq: the best row of the partition; when it
 * reaches the threshold its entry is read and verified (verify.h); when the
 * verifier refuses it, up to rq->candidates rows at or above the threshold
 * are read in one round trip and the first that passes, best first, is
 * served. Rows whose entry is gone from Redis are dropped from the index.
 * While the index is loading at start (sg_app.warming) nothing is
 * searched: a miss with out->warming set.
 * A miss is SG_OK with out->hit false. SG_ERR_BAD_REQUEST (e filled) when
 * the index refuses the vector (dimension of another partition);
 * SG_ERR_REDIS when Redis fails. A refusal is counted in the metrics. */
enum sg_err cache_match_find(struct sg_app *app, struct store *s, const struct cache_match_req *rq,
				     struct cache_match *out, struct sg_error *e);

/* Embed the query only (no lookup), for requests that skip the lookup but
 * still store (Cache-Control: no-cache). On failure out->vec stays NULL. */
void cache_embed_query(struct sg_app *app, struct upstream *up,
		       const struct scope_info *si, struct cache_result *out);

/* True when a completion may be cached: one choice, finish_reason stop or
 * length, no tool calls, and a message with string content. */
bool cache_answer_cacheable(const cJSON *completion);

/* Total tokens from a completion's usage (0 when absent). */
long long cache_answer_tokens(const cJSON *completion);

/* Shadow mode: compare the answer a semantic hit would have served (the
 * stored completion JSON, len bytes) with the fresh completion the
 * upstream gave. Equal message contents agree (similarity 1); otherwise
 * both are embedded and agree when their cosine reaches agree_min.
 * *answer_sim gets the similarity, or -2 when it could not be computed
 * (no content, embedding failed): then false, and nothing should be
 * counted. */
bool cache_shadow_agrees(struct sg_app *app, struct upstream *up, const char *cached,
			 size_t len, const cJSON *fresh, double agree_min, double *answer_sim);

/* Count one shadowed would-be hit whose question was sim similar to the
 * candidate in the tenant's (and namespace's) calibration, and in the
 * metrics. */
enum sg_err cache_shadow_record(struct store *s, const char *tenant, const char *ns,
				double sim, bool agree, struct sg_error *e);

/* Store an answer: entry hash, exact key (when exact is true) and, when vec
 * is given, a row in the index. id_out receives the new entry id. */
enum sg_err cache_store(struct sg_app *app, struct store *s, const char *tenant,
			const char *ns, const struct scope_info *si, bool exact,
			const char *answer, size_t answer_len, long long tokens,
			const float *vec, int dim, long long ttl_s, char id_out[65],
			struct sg_error *e);
/* cache_store under an id the caller made with cache_new_id. It is
 * cache_store_redis then cache_index_add, the two halves that a store
 * written behind the answer (behind.h) runs apart: the row at once, Redis
 * from the writer thread. */
enum sg_err cache_store_as(struct sg_app *app, struct store *s, const char *tenant,
			   const char *ns, const struct scope_info *si, bool exact,
			   const char *answer, size_t answer_len, long long tokens,
			   const float *vec, int dim, long long ttl_s, const char *id,
			   struct sg_error *e);
enum sg_err cache_store_redis(struct sg_app *app, struct store *s, const char *tenant,
			      const char *ns, const struct scope_info *si, bool exact,
			      const char *answer, size_t answer_len, long long tokens,
			      const float *vec, int dim, long long ttl_s, const char *id,
			      struct sg_error *e);
/* cache_store_redis in halves, for stores that share one round trip
 * (store_entry_put_send and _recv; the writer of behind.h): send appends
 * the put to s's pipeline; recv reads its replies, in the order sent (a
 * lost pipeline: SG_ERR_REDIS, outcome unknown). Then
 * store_entry_put_finish each put read. */
enum sg_err cache_store_send(struct sg_app *app, struct store *s, const char *tenant,
			     const char *ns, const struct scope_info *si, bool exact,
			     const char *answer, size_t answer_len, long long tokens,
			     const float *vec, int dim, long long ttl_s, const char *id,
			     struct store_put *p, struct sg_error *e);
enum sg_err cache_store_recv(struct sg_app *app, struct store *s, const char *tenant,
			     const struct scope_info *si, bool exact, struct store_put *p,
			     struct sg_error *e);
enum sg_err cache_index_add(struct sg_app *app, const char *tenant, const char *scope,
			    const float *vec, int dim, long long ttl_s, const char *id,
			    struct sg_error *e);

/* Render a stored completion as a fresh answer: new id and created,
 * spliced into the stored bytes (one parse, no re-rendering). Returns the
 * malloc'd JSON to send and in *doc its parsed tree with the same new id
 * and created (caller deletes both); NULL (and *doc NULL) when the entry
 * is not a JSON object or memory ran out. */
char *cache_render_hit(const char *answer, size_t len, cJSON **doc);

/* What cache_render_hit, cache_answer_tokens and cache_api_usage would
 * make of a stored completion, from one parse: m->known false when it is
 * not a JSON object (or memory ran out). */
void cache_answer_meta(const char *answer, size_t len, struct hot_meta *m);

/* m's three token counts from a parsed completion (cache_answer_tokens,
 * cache_api_usage); the rest of m is left as it is. */
void cache_answer_usage(const cJSON *doc, struct hot_meta *m);

/* cache_render_hit's bytes for an answer whose meta says spliceable,
 * without parsing it: the stored bytes with a fresh id and created.
 * malloc'd; NULL when out of memory or the splice is not possible. */
char *cache_render_hit_spliced(const char *answer, size_t len);

/* Add (or replace) the index row of every entry in Redis: at start and on
 * every resync. Entries of the layout before slot buckets are moved into
 * it first (store_legacy_migrate; once). Rows already in the index stay searchable throughout.
 * seen, when not NULL, is called with the id (borrowed) of each entry
 * found, so the caller can drop the rows Redis no longer has. *loaded
 * receives the count. stop (NULL: never) ends the scan early, between two
 * batches of entries (store_scan_entries): a gateway shutting down does not
 * wait for a load of millions of entries to finish. */
enum sg_err cache_rebuild(struct sg_app *app, struct store *s,
			  void (*seen)(void *ud, const char *id), void *ud,
			  const atomic_bool *stop, size_t *loaded, struct sg_error *e);

/* Make a new random entry id (32 hex chars). */
void cache_new_id(char out[65]);

/* The vector index partition of (tenant, scope hash, embedding model) into
 * out (cap bytes, VINDEX_KEY_MAX is enough). Every partition key is made
 * here, so the chat route, the sidecar API and the event follower agree. */
void cache_partition_key(char *out, size_t cap, const char *tenant, const char *scope,
			 const char *model);

#endif
