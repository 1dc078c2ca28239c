/* Hit and miss accounting of the chat route, written behind: lookups are
 * queued in memory and one thread of its own sums whatever has queued up
 * and writes it with one MULTI/EXEC (store_record_counts), so a hit costs
 * its client no Redis round trip and Redis one transaction per batch
 * instead of one per lookup. tally_settle waits until everything queued
 * before it is in Redis; the cache API routes call it first, so what
 * they read or change is never older than the lookups answered before. */
#ifndef SEMGATE_TALLY_H
#define SEMGATE_TALLY_H

#include <stdbool.h>
#include "semgate/core/err.h"
#include "semgate/cache/verify.h"

struct sg_config;
struct store_entry_hits;
struct tally;

/* Start the writer thread with its own Redis connection. */
struct tally *tally_start(const struct sg_config *cfg, struct sg_error *e);
/* Write what is queued, then stop. Accepts NULL. */
void tally_stop(struct tally *t);

/* Queue one lookup of tenant. A full queue (the writer far behind, e.g.
 * Redis slow) makes the caller wait for room: accounting is never
 * dropped while Redis answers.
 * Each is also counted in the tenant's per-minute series (series.h), with
 * the verifier's refusal of its best candidate (SG_VERIFY_PASS: none), and
 * a hit with how long its answer took (ms < 0: not measured) in the hit
 * latency histogram. */
void tally_hit(struct tally *t, const char *tenant, const char *id, bool semantic,
	       long long prompt_tokens, long long completion_tokens,
	       enum verify_reason rejected, double ms);
void tally_miss(struct tally *t, const char *tenant, enum verify_reason rejected);
/* A request answered without a lookup (X-Semgate-Cache: bypass): counted
 * in the series only. */
void tally_bypass(struct tally *t, const char *tenant);
/* A hit that came from a concurrent miss's answer (also counted by its
 * tally_hit): the series' hits_coalesced. */
void tally_coalesced(struct tally *t, const char *tenant);
/* How long a miss's (or bypass's) upstream call took: the series' upstream
 * latency histogram. */
void tally_upstream_latency(struct tally *t, const char *tenant, double ms);

/* Run fn(ud, eh, n) in the writer before a batch that counts hits on the
 * n entries eh is written (set it before any lookup is queued); a batch of
 * misses alone runs nothing. main.c makes it wait for those entries'
 * stores written behind (behind.h), so a hit on an entry whose store is
 * still queued is counted on the entry, which exists by then, and the
 * accounting never waits for the stores of other answers. fn returns
 * whether it had to wait (counted in tally_stats.store_waits). */
void tally_before_write(struct tally *t,
			bool (*fn)(void *, const struct store_entry_hits *, size_t), void *ud);

/* Return once every lookup queued before the call has been written (or
 * found Redis unavailable, in which case it is dropped and logged). */
void tally_settle(struct tally *t);

/* Lookups queued since start, and those written to Redis or dropped. */
struct tally_stats {
	unsigned long long queued, written, dropped, batches;
	unsigned long long store_waits; /* batches that waited for their entries' stores */
};
void tally_get_stats(struct tally *t, struct tally_stats *out);

#endif
