/* The hot exact cache: a bounded in-process copy of exact keys
 * ({prefix}x:...) that were just served from Redis, so a repeated question
 * is answered without a Redis round trip. It is only used while Redis
 * tracks those keys for this process (CLIENT TRACKING ... BCAST PREFIX
 * {prefix}x:, redirected to the event follower's subscriber connection):
 * every change of such a key anywhere (a new answer, DEL, FLUSHDB,
 * expiry) invalidates the copy. While the subscriber is not connected the
 * cache is empty and refuses fills. A copy never outlives the key's own
 * TTL. Thread-safe. */
#ifndef SEMGATE_HOTCACHE_H
#define SEMGATE_HOTCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct hotcache;

/* What serving a stored completion needs besides its bytes, worked out
 * once from its parse (cache_answer_meta) and kept with the hot copy, so
 * that a hit served from it parses nothing. */
struct hot_meta {
	bool known;          /* the fields below are filled */
	bool spliceable;     /* a fresh id and created go in place (no duplicate) */
	long long tokens;    /* usage.total_tokens (cache_answer_tokens) */
	long long prompt;    /* usage.prompt_tokens (cache_api_usage) */
	long long completion;
};

/* Longest answer the gateway keeps a hot copy of. */
#define HOT_MAX_ANSWER ((size_t)16 * 1024)

/* slots: how many keys it can hold (direct-mapped: a colliding key
 * replaces the one in its slot); answers above max_answer bytes are not
 * kept. NULL when slots is 0 or out of memory. Starts disabled. */
struct hotcache *hot_create(size_t slots, size_t max_answer);
void hot_destroy(struct hotcache *hc);

/* Enabled once invalidations flow (tracking on, subscribed); disabling
 * empties it. Accept NULL. */
void hot_set_enabled(struct hotcache *hc, bool on);
bool hot_enabled(struct hotcache *hc);

/* Before asking Redis for key: a token that hot_put checks, so a value
 * read before an invalidation of its slot (or of everything) is never
 * kept after it. */
uint64_t hot_token(struct hotcache *hc, const char *key);

/* Keep a copy of the value read for key (answer, entry id, kind "chat"),
 * valid for ttl_ms (its PTTL), with meta (NULL: none known). Ignored when
 * disabled, when the token is stale, or when the answer is too long. */
void hot_put(struct hotcache *hc, const char *key, uint64_t token, const char *id,
	     const char *answer, size_t len, long long ttl_ms, const struct hot_meta *meta);

/* A live copy of key: *answer malloc'd (caller frees), id and *meta
 * filled (meta->known false when none was kept). */
bool hot_get(struct hotcache *hc, const char *key, char id[65], char **answer,
	     size_t *len, struct hot_meta *meta);

/* Forget one key (an invalidation message) or every key (a flush, or a
 * change this process made itself and wants visible at once). */
void hot_invalidate(struct hotcache *hc, const char *key, size_t keylen);
void hot_clear(struct hotcache *hc);

/* Served from memory / keys kept, since start (for /metrics). */
struct hot_stats {
	unsigned long long hits, fills, invalidations;
	size_t keys, bytes;
};
void hot_get_stats(struct hotcache *hc, struct hot_stats *out);

#endif
