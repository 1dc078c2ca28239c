/* Answers stored behind the reply. The chat route hands a miss's answer
 * here before sending it: the entry gets its id and its index row at once
 * and is readable from this process (behind_get_exact, behind_get_entry:
 * the cache's lookups ask here when Redis does not have an entry yet), and
 * one thread of its own, with its own Redis connection, writes the queue to
 * Redis in order. So a repeat of the question is answered from the pending
 * entry, exactly as it will be once stored, and never sent upstream twice.
 * behind_settle waits until everything queued before it is written; the
 * cache API routes and the hit accounting call it first, so what they read
 * or count is never older than the answers already sent. */
#ifndef SEMGATE_BEHIND_H
#define SEMGATE_BEHIND_H

#include <stdbool.h>
#include <stddef.h>

#include "semgate/core/err.h"

struct sg_app;
struct scope_info;
struct store_answer;
struct store_entry_view;
struct behind;

/* Start the writer thread with its own Redis connection (app borrowed; it
 * must outlive the writer). */
struct behind *behind_start(struct sg_app *app, struct sg_error *e);
/* Write everything queued, then stop. Accepts NULL. */
void behind_stop(struct behind *b);

/* One answer to store (everything borrowed for the call: the job keeps
 * copies), as cache_store takes it; exact key always. */
struct behind_store {
	const char *tenant;
	const char *ns;                /* NULL: none */
	const struct scope_info *si;
	const char *answer;
	size_t answer_len;
	long long tokens;
	const float *vec;              /* NULL: exact only */
	int dim;
	long long ttl_s;
};

/* Queue a store: id_out gets the new entry's id, the index gets its row,
 * and the entry is readable here until the writer has stored it. A full
 * queue (Redis far behind) makes the caller wait for room: stores are
 * never dropped while Redis answers. False when out of memory (nothing
 * queued; the caller stores it itself). */
bool behind_queue(struct behind *b, const struct behind_store *in, char id_out[65]);

/* A queued answer under tenant's exact key: true with *out filled (the
 * caller finishes it). */
bool behind_get_exact(struct behind *b, const char *tenant, const char *exact,
		      struct store_answer *out);
/* A queued entry as store_entry_read would show it once stored: true with
 * *out filled (the caller finishes it). */
bool behind_get_entry(struct behind *b, const char *tenant, const char *id,
		      struct store_entry_view *out);

/* Return once every store queued before the call has been written or has
 * failed. Accepts NULL. */
void behind_settle(struct behind *b);

/* Return once none of the n entries eh (tenant and id; hits ignored) is
 * queued any more: written, or failed. Stores of other entries are not
 * waited for. True when it had to wait. Accepts NULL. */
struct store_entry_hits;
bool behind_settle_entries(struct behind *b, const struct store_entry_hits *eh, size_t n);

struct behind_stats {
	unsigned long long queued, stored, failed;
	size_t pending;                /* queued and not yet written */
};
void behind_get_stats(struct behind *b, struct behind_stats *out);

#endif
