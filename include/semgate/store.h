/* Redis adapter: one hiredis connection per worker thread, created lazily,
 * re-created after any I/O error; pipelines and MULTI/EXEC blocks; and the
 * key layout — every Redis key name is built in store.c and nowhere else.
 * A struct store is owned by one thread and never shared. */
#ifndef SEMGATE_STORE_H
#define SEMGATE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include "semgate/config.h"
#include "semgate/err.h"

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

/* In one MULTI/EXEC: RPUSH items, LTRIM to the last max, EXPIRE ttl_s.
 * *new_len gets the length after trimming. Either all of it happens or
 * nothing does. */
enum sg_err store_history_append(struct store *s, const char *tenant, const char *conv,
				 const char *const *items, const size_t *lens, size_t n,
				 long long max, long long ttl_s, long long *new_len,
				 struct sg_error *e);

/* DEL; *existed tells whether there was anything. */
enum sg_err store_history_delete(struct store *s, const char *tenant, const char *conv,
				 bool *existed, struct sg_error *e);

#endif
