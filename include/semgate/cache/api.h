/* The cache as a service (RAG sidecar): request validation, sidecar scopes,
 * lookup / store / delete / invalidate of plain-text entries, hit and miss
 * accounting shared with the chat route, and the JSON shapes of entries and
 * stats. Works through store/store.h, store/ops.h, vindex/vindex.h and embed/embed.h only.
 * Sidecar entries live in partitions of their own: a text answer is never
 * served as a chat completion, nor a completion as a text answer. */
#ifndef SEMGATE_CACHE_API_H
#define SEMGATE_CACHE_API_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>
#include "semgate/core/err.h"
#include "semgate/cache/scope.h"
#include "semgate/cache/verify.h"
#include "semgate/store/ops.h"

struct sg_app;
struct store;
struct upstream;

#define CACHE_API_NAME_MAX 128        /* namespace, tag */
#define CACHE_API_QUERY_MAX 65536     /* bytes of a query */
#define CACHE_API_SCOPE_MAX 1024      /* bytes of a caller scope */
#define CACHE_API_TAGS_MAX 32
#define CACHE_API_METADATA_MAX 16384  /* bytes of metadata, rendered compactly */
#define CACHE_API_DIM_MAX 8192
#define CACHE_API_TTL_MAX 31536000LL  /* one year */
#define CACHE_API_TOP_MAX 100
#define CACHE_API_TOP_DEFAULT 10
/* The embedding model recorded for caller-supplied vectors: they get
 * partitions of their own, apart from the embedder's. */
#define CACHE_API_EXTERNAL_MODEL "external"

/* True when s matches [A-Za-z0-9._:-]{1,128} (namespaces, tags). */
bool cache_api_name_valid(const char *s);

/* True when s is a possible entry id: [A-Za-z0-9._:-]{1,64}. */
bool cache_api_id_valid(const char *s);

enum cache_api_op {
	CACHE_API_LOOKUP,     /* query, namespace, scope, threshold, vector */
	CACHE_API_STORE,      /* query, answer, namespace, scope, ttl, tags, metadata, vector */
	CACHE_API_INVALIDATE, /* namespace, tag (at least one) */
	CACHE_API_FEEDBACK,   /* id, query, verdict (all required) */
};

/* A validated request. String pointers borrow from the parsed body, which
 * must outlive the request; metadata and vector are owned. */
struct cache_api_req {
	const char *query;
	size_t query_len;
	const char *answer;
	size_t answer_len;
	const char *ns;        /* "" when not given */
	const char *scope;     /* "" when not given */
	const char *tag;       /* invalidate: NULL when not given */
	bool has_ns;           /* namespace given (invalidate) */
	bool has_verdict;      /* feedback: verdict given */
	double threshold;      /* 0 when not given */
	long long ttl;         /* 0 when not given */
	const char *tags[CACHE_API_TAGS_MAX]; /* distinct, in request order */
	size_t ntags;
	char *metadata;        /* compact JSON object, or NULL */
	size_t metadata_len;
	float *vector;         /* L2-normalised copy, or NULL */
	int dim;
	/* lookup: the verifier's mode (the route sets it from X-Semgate-Verify
	 * or SEMGATE_VERIFY; cache_api_parse leaves SG_VERIFY_OFF) */
	enum verify_mode verify;
	const char *id;        /* feedback: the entry */
	bool wrong;            /* feedback: verdict "wrong" (else "right") */
};
void cache_api_req_finish(struct cache_api_req *r);

/* Validate body (borrowed) for op. Every field is type-checked; unknown or
 * duplicate fields are refused; null counts as absent. out is always
 * initialised (finish it). SG_ERR_BAD_REQUEST with a message naming the
 * field, or SG_ERR_NOMEM. Pure: no I/O. */
enum sg_err cache_api_parse(enum cache_api_op op, const cJSON *body,
			    struct cache_api_req *out, struct sg_error *e);

/* "limit=N" from a raw query string (NULL: the default). Other parameters
 * are refused. */
enum sg_err cache_api_parse_limit(const char *query, long *limit, struct sg_error *e);

/* The sidecar scope: SHA-256 over a versioned, length-prefixed encoding of
 * tenant, namespace and the caller's scope string; out->exact over that
 * scope and the query. out->query is a copy of the query (freed by
 * scope_info_finish). Disjoint from every chat scope. */
enum sg_err cache_api_scope(const char *tenant, const char *ns, const char *scope,
			    const char *query, size_t query_len, struct scope_info *out,
			    struct sg_error *e);

struct cache_api_result {
	bool hit;
	bool exact;              /* the exact key answered */
	bool embed_failed;       /* no vector: exact lookup only */
	double best;             /* best similarity seen; < -1 when none */
	struct store_entry_view entry; /* on a hit */
	enum verify_reason rejected;   /* on a miss: why the verifier refused */
	char rejected_id[65];    /* the candidate it refused, "" when none */
	bool warming;            /* a miss without a search: the index is loading */
};
void cache_api_result_finish(struct cache_api_result *r);

/* Look a question up for tenant. Without a caller vector the exact key is
 * tried first, then the embedder's vector in the scope's partition; with
 * one, only that vector in the "external" partition. Counts the lookup
 * (hit or miss) in the tenant's stats and leaderboard. SG_ERR_BAD_REQUEST
 * when the caller's vector does not fit the partition (nothing counted),
 * SG_ERR_REDIS when Redis fails. */
enum sg_err cache_api_lookup(struct sg_app *app, struct store *s, struct upstream *up,
			     const char *tenant, const struct cache_api_req *rq,
			     struct cache_api_result *out, struct sg_error *e);

/* Store a text entry: hash, exact key, tags, index row, add event.
 * id_out gets the new id; *indexed whether it has a vector (false when the
 * embedder failed: the entry still answers exact lookups). A vector whose
 * dimension does not fit the partition is SG_ERR_BAD_REQUEST and nothing
 * is written. */
enum sg_err cache_api_store(struct sg_app *app, struct store *s, struct upstream *up,
			    const char *tenant, const struct cache_api_req *rq,
			    char id_out[65], bool *indexed, struct sg_error *e);

/* GET /v1/cache/calibration's query string: "namespace=NAME" and
 * "target=P" (P in (0, 1], default 0.99), each at most once; anything else
 * is refused. ns gets "" when not given. */
enum sg_err cache_api_parse_calibration(const char *query, char ns[CACHE_API_NAME_MAX + 1],
					double *target, struct sg_error *e);

/* The calibration document: per similarity bucket the shadowed would-be
 * hits and agreeing answers, per threshold the cumulative counts and
 * estimated precision, and the lowest threshold whose precision meets
 * target (null when none does). NULL on out of memory. */
cJSON *cache_api_calibration_json(const struct store_calibration *cal, double target);

/* Verdicts before an entry is deleted: the third "wrong" deletes it. */
#define CACHE_FEEDBACK_DELETE_AFTER 3

struct cache_feedback_result {
	bool found;              /* false: the tenant has no such entry */
	bool deleted;            /* the verdict deleted the entry */
	long long wrong, right;  /* verdicts so far */
	double threshold;        /* the entry's own threshold now; 0: none */
};

/* Record a verdict on one of the tenant's entries (POST /v1/cache/feedback).
 * "wrong": the entry never again answers that question (its key joins the
 * entry's refused list; cache_match_find checks it), its own threshold rises
 * just above that question's similarity to it (when the question can be
 * embedded in the entry's model), and the CACHE_FEEDBACK_DELETE_AFTER-th
 * "wrong", or a "wrong" for the entry's own question, deletes it. "right"
 * is counted. SG_ERR_REDIS when Redis fails. */
enum sg_err cache_api_feedback(struct sg_app *app, struct store *s, struct upstream *up,
			       const char *tenant, const struct cache_api_req *rq,
			       struct cache_feedback_result *out, struct sg_error *e);

/* Delete one entry of the tenant (any kind) and its index row. *found
 * false when the tenant has no such entry. */
enum sg_err cache_api_delete(struct sg_app *app, struct store *s, const char *tenant,
			     const char *id, bool *found, struct sg_error *e);

/* Delete the tenant's entries matching ns and/or tag (NULL: any; not both
 * NULL); *deleted gets the count. */
enum sg_err cache_api_invalidate(struct sg_app *app, struct store *s, const char *tenant,
				 const char *ns, const char *tag, long long *deleted,
				 struct sg_error *e);

/* Count a hit (one pipelined MULTI: entry hits, leaderboard, stats and
 * the per-minute series), with the verifier's refusal of the best
 * candidate (SG_VERIFY_PASS: none). Failures are logged, never returned:
 * accounting must not fail a hit. */
void cache_api_record_hit(struct sg_app *app, struct store *s, const char *tenant,
			  const char *id, bool semantic, long long prompt_tokens,
			  long long completion_tokens, enum verify_reason rejected);

/* Count a lookup that missed. */
void cache_api_record_miss(struct sg_app *app, struct store *s, const char *tenant,
			   enum verify_reason rejected);

/* prompt_tokens and completion_tokens of a completion's usage (0 when
 * absent or not a non-negative number). */
void cache_api_usage(const cJSON *completion, long long *prompt, long long *completion_tokens);

/* JSON of an entry as GET /v1/cache/entries/{id} returns it (no vector).
 * NULL on out of memory. The caller deletes it. */
cJSON *cache_api_entry_json(const struct store_entry_view *v);

/* JSON of the stats: the counters, hit_rate, tokens and estimated cost
 * saved at the given prices per 1k tokens, entries and bytes. */
cJSON *cache_api_stats_json(const struct store_stats *st, double price_prompt_per_1k,
			    double price_completion_per_1k);

#endif
