/* Private to the store module (store*.c): the connection, the helpers that
 * run commands on it, and the key builder. Nothing outside src/store*.c
 * includes this file, so hiredis and key names stay inside the module. */
#ifndef SEMGATE_STORE_PRIV_H
#define SEMGATE_STORE_PRIV_H

#include <hiredis/hiredis.h>

#include "semgate/err.h"
#include "semgate/store.h"

#define RECONNECT_BACKOFF_MS 100.0

struct store {
	const struct sg_config *cfg;
	redisContext *c;
	double next_attempt_ms; /* monotonic; no connect before this */
	bool had_connection;    /* a success before the current outage */
};

/* "{prefix}{kind}:{tenant}:{rest}", malloc'd; NULL on out of memory. */
char *store_key(const struct store *s, const char *kind, const char *tenant,
	      const char *rest);

/* Drop the connection; the next call reconnects after a short back-off. */
void store_drop(struct store *s);

/* Make sure there is a live connection. */
enum sg_err store_conn(struct store *s, struct sg_error *e);

/* Read one pipelined reply; NULL (connection dropped, e set) when lost. */
redisReply *store_read_reply(struct store *s, struct sg_error *e);

/* Run one command given as argv; the reply belongs to the caller. */
redisReply *store_run(struct store *s, int argc, const char **argv,
		     const size_t *lens, struct sg_error *e);

/* Set e from an error reply; returns SG_ERR_REDIS. */
enum sg_err store_reply_error(redisReply *r, struct sg_error *e);

/* Read the replies of MULTI + ncmds queued commands + EXEC; returns the
 * EXEC array (caller frees) or NULL with e set. */
redisReply *store_read_exec(struct store *s, size_t ncmds, struct sg_error *e);

#endif
