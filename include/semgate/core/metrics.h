/* Process-wide metrics: counters, per-route request counts and latency
 * histograms, rendered as Prometheus text for GET /metrics. Every recording
 * function is lock-free (relaxed atomics) and safe from any thread; nothing
 * here does I/O, and no label value ever comes from a client except through
 * the fixed route table and the normalised method. */
#ifndef SEMGATE_METRICS_H
#define SEMGATE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "semgate/core/buf.h"
#include "semgate/core/err.h"

/* Counters, declared once: X(id, family, labels, help). Entries of one
 * family are adjacent and share its help text (printed once). labels is the
 * fixed label set of the series, "" for none. */
#define SG_METRIC_COUNTERS(X) \
	X(CACHE_HIT_EXACT, "semgate_cache_requests_total", "outcome=\"hit-exact\"", \
	  "Chat completions answered, by cache outcome.") \
	X(CACHE_HIT_SEMANTIC, "semgate_cache_requests_total", "outcome=\"hit-semantic\"", "") \
	X(CACHE_HIT_COALESCED, "semgate_cache_requests_total", "outcome=\"hit-coalesced\"", "") \
	X(CACHE_MISS, "semgate_cache_requests_total", "outcome=\"miss\"", "") \
	X(CACHE_BYPASS, "semgate_cache_requests_total", "outcome=\"bypass\"", "") \
	X(CACHE_WARMING, "semgate_cache_requests_total", "outcome=\"warming\"", "") \
	X(LOOKUP_HIT_EXACT, "semgate_cache_lookups_total", "outcome=\"hit-exact\"", \
	  "Sidecar lookups (POST /v1/cache/lookup) answered, by outcome.") \
	X(LOOKUP_HIT_SEMANTIC, "semgate_cache_lookups_total", "outcome=\"hit-semantic\"", "") \
	X(LOOKUP_MISS, "semgate_cache_lookups_total", "outcome=\"miss\"", "") \
	X(LOOKUP_WARMING, "semgate_cache_lookups_total", "outcome=\"warming\"", "") \
	X(VERIFY_NUMBER, "semgate_verify_rejections_total", "reason=\"number\"", \
	  "Requests whose best semantic candidate the hit verifier refused, by the rule that refused it.") \
	X(VERIFY_ENTITY, "semgate_verify_rejections_total", "reason=\"entity\"", "") \
	X(VERIFY_NEGATION, "semgate_verify_rejections_total", "reason=\"negation\"", "") \
	X(VERIFY_ORDER, "semgate_verify_rejections_total", "reason=\"order\"", "") \
	X(VERIFY_OPPOSITE, "semgate_verify_rejections_total", "reason=\"opposite\"", "") \
	X(VERIFY_CONTENT, "semgate_verify_rejections_total", "reason=\"content\"", "") \
	X(VERIFY_FEEDBACK, "semgate_verify_rejections_total", "reason=\"feedback\"", "") \
	X(FEEDBACK_WRONG, "semgate_feedback_total", "verdict=\"wrong\"", \
	  "Verdicts received by POST /v1/cache/feedback.") \
	X(FEEDBACK_RIGHT, "semgate_feedback_total", "verdict=\"right\"", "") \
	X(SHADOW_AGREE, "semgate_shadow_total", "outcome=\"agree\"", \
	  "Would-be semantic hits sent upstream in shadow mode, by whether the answers agreed.") \
	X(SHADOW_DISAGREE, "semgate_shadow_total", "outcome=\"disagree\"", "") \
	X(TOKENS_SAVED_PROMPT, "semgate_tokens_saved_total", "kind=\"prompt\"", \
	  "Tokens the cached answers served had cost upstream, from their usage.") \
	X(TOKENS_SAVED_COMPLETION, "semgate_tokens_saved_total", "kind=\"completion\"", "") \
	X(EMB_INPUTS_CACHE, "semgate_embedding_inputs_total", "source=\"cache\"", \
	  "Inputs of POST /v1/embeddings, by where their vector came from.") \
	X(EMB_INPUTS_UPSTREAM, "semgate_embedding_inputs_total", "source=\"upstream\"", "") \
	X(EMB_INPUTS_BYPASS, "semgate_embedding_inputs_total", "source=\"bypass\"", "") \
	X(STORE_BEHIND_STORED, "semgate_cache_stores_behind_total", "result=\"stored\"", \
	  "Miss answers stored in Redis behind the reply, by result.") \
	X(STORE_BEHIND_FAILED, "semgate_cache_stores_behind_total", "result=\"failed\"", "") \
	X(STORE_BEHIND_BATCHES, "semgate_cache_store_behind_batches_total", "", \
	  "Pipelines (round trips) the stores written behind the reply went in.") \
	X(AUTH_FAILURES, "semgate_auth_failures_total", "", \
	  "Requests refused with 401 (missing or unknown API key).") \
	X(RATE_LIMITED, "semgate_rate_limited_total", "", \
	  "Requests refused with 429 by the per-tenant rate limit.") \
	X(LIMITER_BYPASS, "semgate_rate_limiter_bypass_total", "", \
	  "Requests let through unchecked because Redis could not be asked.") \
	X(UPSTREAM_ERRORS_LLM, "semgate_upstream_errors_total", "kind=\"llm\"", \
	  "Upstream calls that failed in transport (unreachable, timeout, oversized).") \
	X(UPSTREAM_ERRORS_EMBED, "semgate_upstream_errors_total", "kind=\"embedding\"", "") \
	X(SUMMARY_WRITTEN, "semgate_summaries_total", "outcome=\"written\"", \
	  "Summary calls (SEMGATE_SUMMARY), by outcome: written, failed (retried later), conflict (the conversation changed under it; read again).") \
	X(SUMMARY_FAILED, "semgate_summaries_total", "outcome=\"failed\"", "") \
	X(SUMMARY_CONFLICTS, "semgate_summaries_total", "outcome=\"conflict\"", "") \
	X(SUMMARY_CAPTURED, "semgate_summary_messages_total", "stage=\"captured\"", \
	  "Messages trimmed out of a window into pending (captured), folded into a summary (covered), or dropped at SEMGATE_SUMMARY_PENDING_MAX (skipped).") \
	X(SUMMARY_COVERED, "semgate_summary_messages_total", "stage=\"covered\"", "") \
	X(SUMMARY_SKIPPED, "semgate_summary_messages_total", "stage=\"skipped\"", "") \
	X(SUMMARY_QUEUE_FULL, "semgate_summary_queue_full_total", "", \
	  "Conversations the summarizer could not take (SEMGATE_SUMMARY_QUEUE full); their messages stay pending for a later turn or sweep.")

enum sg_counter {
#define SG_X(id, family, labels, help) SG_C_##id,
	SG_METRIC_COUNTERS(SG_X)
#undef SG_X
	SG_C_COUNT
};

/* Unlabelled latency histograms: X(id, name, help). */
#define SG_METRIC_HISTOGRAMS(X) \
	X(UPSTREAM, "semgate_upstream_duration_seconds", \
	  "LLM upstream calls, from sending to the last byte (a whole stream when streamed).") \
	X(EMBED, "semgate_embedding_duration_seconds", \
	  "Embedding calls: the embedding API (cache lookups and /v1/embeddings) or the local embedder.") \
	X(SEARCH, "semgate_vector_search_duration_seconds", \
	  "In-memory vector index searches.") \
	X(REDIS, "semgate_redis_duration_seconds", \
	  "Redis round trips (one command, a pipeline or a MULTI/EXEC block).")

enum sg_hist {
#define SG_X(id, name, help) SG_H_##id,
	SG_METRIC_HISTOGRAMS(SG_X)
#undef SG_X
	SG_H_COUNT
};

/* Add n to a counter. */
void metrics_add(enum sg_counter c, uint64_t n);
static inline void metrics_inc(enum sg_counter c) { metrics_add(c, 1); }

/* Record one observation of ms milliseconds. Also adds it to this thread's
 * per-request totals (see metrics_req_begin). */
void metrics_observe(enum sg_hist h, double ms);

/* One request answered: method (any string; normalised to a fixed set),
 * route (a static route pattern or NULL for no route; the pointer must stay
 * valid for the life of the process), status and duration in ms. */
void metrics_request(const char *method, const char *route, int status, double ms);

/* Requests being served right now (a gauge). */
void metrics_inflight(int delta);

/* Count a chat completion's cache outcome ("hit-exact", "hit-semantic",
 * "miss", "bypass" or "warming": a miss whose semantic lookup was skipped
 * because the index was still loading; anything else is ignored). */
void metrics_cache_outcome(const char *outcome);

/* The same for a sidecar lookup ("hit-exact", "hit-semantic", "miss",
 * "warming"). */
void metrics_lookup_outcome(const char *outcome);

/* Count a verifier rejection by its reason's name ("number", "entity",
 * "negation", "order", "opposite", "content", "feedback"; anything else is
 * ignored). */
void metrics_verify_rejection(const char *reason);

/* Count a feedback verdict. */
void metrics_feedback(bool wrong);

/* Count a shadow comparison. */
void metrics_shadow(bool agree);

/* Per-request totals on the calling thread: begin resets them; req_ms
 * returns the summed ms of h observed since, and *n the count. A civetweb
 * worker serves one request at a time, so these belong to that request. */
void metrics_req_begin(void);
double metrics_req_ms(enum sg_hist h, unsigned *n);

/* Values the caller owns, sampled when /metrics is read. */
struct metrics_extra {
	unsigned long long redis_reconnects;
	unsigned long long redis_master_changes; /* Sentinel failovers followed */
	size_t index_entries;
	size_t index_bytes;
	size_t index_partitions;
	size_t index_listed;      /* partitions searched through lists */
	unsigned long long tally_batches;   /* accounting batches written */
	unsigned long long tally_store_waits; /* of them, waited for their entries' stores */
	unsigned long long tally_dropped;   /* lookups not counted (Redis down) */
	unsigned long long hot_hits;        /* exact hits served from process memory */
	size_t hot_keys, hot_bytes;         /* hot copies held */
	size_t stores_pending;              /* answers sent, their store still queued */
	size_t summary_backlog;             /* conversations the summarizer holds */
	double price_prompt_per_1k;
	double price_completion_per_1k;
	/* the write-behind archive; rendered only when archive is true */
	bool archive;
	long long archive_length, archive_pending, archive_lag; /* summed over streams; -1: unknown */
	unsigned long long archive_archived, archive_rejected, archive_lost;
	unsigned long long archive_batches, archive_pg_errors;
};

/* Append the whole exposition (Prometheus text format 0.0.4) to out. */
enum sg_err metrics_render(struct sg_buf *out, const struct metrics_extra *x);

/* Read one counter (for tests). */
uint64_t metrics_get(enum sg_counter c);

#endif
