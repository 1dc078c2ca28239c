/* Single-flight for cache misses: while one request (the leader) asks the
 * upstream for a question, concurrent misses in the same partition for the
 * same question, or for a question the leader's would answer (similarity at
 * or above the threshold and passed by the hit verifier), wait for the
 * leader's answer instead of making their own upstream call. One process:
 * gateways sharing a Redis each lead their own flights. Thread-safe. */
#ifndef SEMGATE_FLIGHT_H
#define SEMGATE_FLIGHT_H

#include <stdbool.h>
#include <stddef.h>

#include "semgate/cache/verify.h"

struct flights;
struct flight;

struct flights *flights_create(void);
/* No flight may be open. Accepts NULL. */
void flights_destroy(struct flights *f);

/* A miss about to go upstream. All pointers are borrowed for the call. */
struct flight_req {
	const char *part;        /* the index partition (cache_partition_key) */
	const char *exact;       /* the exact key: same question, same scope */
	const float *vec;        /* normalised query vector, or NULL (exact only) */
	int dim;
	double threshold;
	enum verify_mode verify;
	const char *query;
	size_t query_len;
	int wait_ms;             /* longest a follower waits */
};

enum flight_role {
	FLIGHT_LEAD,     /* go upstream, then flight_land() */
	FLIGHT_ANSWERED, /* a leader answered: *answer is its completion (owned) */
	FLIGHT_ALONE,    /* no usable leader answer (failed, timed out, or full):
	                  * go upstream without leading */
};

/* What a follower gets from its leader. */
struct flight_answer {
	char *answer;            /* the leader's completion JSON (owned) */
	size_t len;
	char id[65];             /* the entry the leader stored it as ("" none) */
	double similarity;       /* the question's to the leader's (1: same) */
};
void flight_answer_finish(struct flight_answer *a);

/* Join rq's flight. LEAD: *out is the flight to land. ANSWERED: *ans holds
 * the leader's answer. Blocks while waiting for a leader, at most
 * rq->wait_ms. */
enum flight_role flight_join(struct flights *f, const struct flight_req *rq,
			     struct flight **out, struct flight_answer *ans);

/* The leader is done: answer (len bytes, copied) is the completion JSON it
 * stored as entry id when it got a cacheable one, NULL when not (followers
 * then go upstream themselves). Wakes every follower; the flight is freed
 * when the last has taken the answer. */
void flight_land(struct flights *f, struct flight *fl, const char *answer, size_t len,
		 const char *id);

/* Flights open and followers waiting right now (for tests and metrics). */
void flights_counts(struct flights *f, size_t *open, size_t *waiting);

#endif
