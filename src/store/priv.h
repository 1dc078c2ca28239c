/* Private to the store module (src/store/): the connection, the helpers that
 * run commands on it, and the key builder. Nothing outside src/store/
 * includes this file, so hiredis and key names stay inside the module. */
#ifndef SEMGATE_STORE_PRIV_H
#define SEMGATE_STORE_PRIV_H

#include <hiredis/hiredis.h>

#include "semgate/core/err.h"
#include "semgate/store/sentinel.h"
#include "semgate/store/archive.h"
#include "semgate/store/layout.h"
#include "semgate/store/store.h"
#include "codec.h"


#define RECONNECT_BACKOFF_MS 100.0

/* ---- Redis Cluster (cluster.c) ---- */

#define STORE_CL_MAX_NODES 32

struct store_cl_addr {
	char host[64];
	int port; /* 0: none */
};

struct store_cl_conn {
	struct store_cl_addr addr;
	redisContext *c;
	bool had; /* connected before: the next connection is a reconnection */
	double down_until_ms; /* refused a connection: not tried again before this */
};

struct store {
	const struct sg_config *cfg;
	/* one server: the connection; cluster mode: a staging context, never
	 * connected, whose output buffer store_cluster_dispatch sends */
	redisContext *c;
	double next_attempt_ms; /* monotonic; no connect before this */
	bool had_connection;    /* a success before the current outage */
	bool cluster;           /* SEMGATE_REDIS_CLUSTER is set */
	/* cluster mode only: a connection per node, the replies of the last
	 * dispatch not read yet, and the node keyless commands go to (a SCAN's) */
	struct store_cl_conn cl[STORE_CL_MAX_NODES];
	int ncl;
	redisReply **q;
	size_t qn, qpos, qcap;
	struct store_cl_addr pin;
	unsigned long gen;      /* the master generation c is connected to */
	unsigned long serial;   /* one more each time c is a new connection */
};

/* ---- which server is the master (sentinel.c) ---- */

/* The address data connections go to now and its generation: cfg's
 * host:port (generation 0) in single-server mode; in Sentinel mode the
 * master last found, asking the sentinels first if none is known yet. */
enum sg_err store_master_get(const struct sg_config *cfg, struct store_hostport *addr,
			     unsigned long *gen, struct sg_error *e);

/* The current master generation; a connection of an older one is dropped. */
unsigned long store_master_gen(void);

/* A connection to the master failed or answered READONLY: in Sentinel mode
 * the watcher asks the sentinels again soon (nothing runs on the flag in
 * single-server mode). Never blocks. */
void store_master_suspect(void);

/* An error reply from a server that is no longer (or not yet) the master. */
bool store_reply_readonly(const redisReply *r);

/* Connect to host:port with cfg's timeout and keep-alive, and AUTH when a
 * password is set (the password never appears in e). NULL with e set
 * (messages start with who, e.g. "events: "). */
redisContext *store_connect_node(const struct sg_config *cfg, const char *host, int port,
				 const char *who, struct sg_error *e);

/* Count a successful reconnection after a lost connection (store_reconnects). */
void store_count_reconnect(void);

/* Cluster mode's store_conn: the staging context and a loaded slot map. */
enum sg_err store_cluster_conn(struct store *s, struct sg_error *e);
/* Send what is staged (routed by slot, redirections followed) and queue
 * the replies in order; then pop them one by one. NULL with e set when a
 * node could not be reached (the staged commands are dropped). */
enum sg_err store_cluster_dispatch(struct store *s, struct sg_error *e);
redisReply *store_cluster_next(struct store *s, struct sg_error *e);
/* Forget what is staged and the unread replies. */
void store_cluster_discard(struct store *s);
int store_cluster_node_of(struct store *s, const char *tenant, const char *id);
void store_cluster_discard_replies(struct store *s);
/* Close every node connection and the staging context. */
void store_cluster_close(struct store *s);
/* The masters of the slot map (loading it if need be); -1 with e set. */
int store_cluster_masters(struct store *s, struct store_cl_addr *out, int cap,
			  struct sg_error *e);
/* Every node the shared map knows (for the events subscriber). */
int store_cluster_known(struct store_cl_addr *out, int cap);

/* Parsing, pure (unit-tested): "host:port"; a comma-separated list of
 * them (returns how many were valid, at most cap); a CLUSTER SLOTS reply
 * into masters (returns how many, -1 when malformed) and slot -> index
 * (0xffff: no master). */
bool store_cl_parse_addr(const char *p, size_t len, struct store_cl_addr *out);
int store_cl_parse_seeds(const char *list, struct store_cl_addr *out, int cap);
int store_cl_parse_slots(const redisReply *r, struct store_cl_addr *nodes, int cap,
			 unsigned short *slot);

/* The slot a command formatted as hiredis formats it (RESP array of bulk
 * strings) is routed by: its key's, -1 for a keyless command, -2 for bytes
 * that are not one whole command. */
int store_cl_command_slot(const char *cmd, size_t len);

/* ---- walking every node (SCAN fans out in cluster mode) ---- */

/* The nodes a SCAN must visit: every master in cluster mode, the one
 * server otherwise (one entry, port 0). -1 with e set. */
int store_scan_nodes(struct store *s, struct store_cl_addr *out, int cap, struct sg_error *e);
/* Send keyless commands (SCAN) to node a from now on; NULL: undo. */
void store_pin(struct store *s, const struct store_cl_addr *a);

/* Key names (store.c, the only place they are made; layout in
 * semgate/store/layout.h and docs/CACHE-API.md). Every key carries the hash
 * tag of one of STORE_BUCKETS buckets:
 *
 *   store_key(s, kind, tenant, rest)   "{prefix}{kind}:{T}:{tenant}:{rest}"
 *       in the bucket of (tenant, rest): a conversation (rest = its id), an
 *       entry (its id), an exact key (the question's sha), ...
 *   store_key_in(s, kind, b, tenant, rest)   the same in bucket b: keys that
 *       belong with an object of that bucket (an entry's tag memberships)
 *   store_tenant_key_in(s, kind, b, tenant)  "{prefix}{kind}:{T}:{tenant}":
 *       the bucket-b part of a tenant-wide structure (top, live, size,
 *       stats); readers merge the STORE_BUCKETS parts
 *   store_tenant_key(s, kind, tenant)   one key per tenant, in the bucket
 *       of (tenant, kind) (the rate-limit window)
 *
 * where T is "{<bucket tag>}". Keys built from the same (tenant, object id)
 * share a slot, so they may be written in one MULTI or EVAL on a cluster:
 * a key written with a conversation must be built with store_key* from the
 * conversation's (tenant, conv id) or in store_bucket_of(tenant, conv id);
 * a key written with an entry in store_bucket_of(tenant, entry id). A
 * structure written in those MULTIs but read tenant-wide (a stream, say) is
 * one key per bucket: store_tenant_key_in(s, kind, store_bucket_of(tenant,
 * object id), tenant) to write, and the STORE_BUCKETS keys of
 * store_tenant_key_in(s, kind, b, tenant) to read. All malloc'd; NULL on out
 * of memory. */
char *store_key(const struct store *s, const char *kind, const char *tenant,
		const char *rest);
char *store_key_in(const struct store *s, const char *kind, unsigned bucket,
		   const char *tenant, const char *rest);
char *store_tenant_key_in(const struct store *s, const char *kind, unsigned bucket,
			  const char *tenant);
char *store_tenant_key(const struct store *s, const char *kind, const char *tenant);

/* The name the layout before slot buckets gave a key,
 * "{prefix}{kind}:{tenant}:{rest}" (read once to migrate it); malloc'd. */
char *store_legacy_key(const struct store *s, const char *kind, const char *tenant,
		       const char *rest);

/* SCAN MATCH pattern of every key of kind built by store_key*, of one
 * tenant (glob-escaped) or of every tenant (tenant NULL); malloc'd. */
char *store_key_pattern(const struct store *s, const char *kind, const char *tenant);
/* The same for every tenant. */
char *store_key_pattern_all(const struct store *s, const char *kind);

/* An integer reply, or a string holding one (strtoll); 0 for anything else. */
long long store_reply_ll(const redisReply *r);

/* Drop the connection; the next call reconnects after a short back-off. */
void store_drop(struct store *s);

/* Make sure there is a live connection. */
enum sg_err store_conn(struct store *s, struct sg_error *e);

/* Read one pipelined reply; NULL (connection dropped, e set) when lost. */
redisReply *store_read_reply(struct store *s, struct sg_error *e);
/* The next two pipelined replies (a command and its TTL) into *a and *b.
 * false when the connection failed (e filled; neither is left to free). */
bool store_read_two(struct store *s, redisReply **a, redisReply **b, struct sg_error *e);

/* Run argv, whose key (malloc'd) is freed here: SG_OK with *r the reply,
 * never an error reply (the caller frees it), or the failure with e set and
 * *r NULL. */
enum sg_err store_run_key(struct store *s, int argc, const char **argv, char *key,
			  redisReply **r, struct sg_error *e);

/* Run argv and "<ttl_cmd> <key>" (TTL or PTTL) in one round trip. True
 * with both replies (caller frees them); false with e set and nothing to
 * free when the connection failed. */
bool store_run_with_ttl(struct store *s, int argc, const char **argv, const char *ttl_cmd,
			const char *key, redisReply **reply, redisReply **ttl,
			struct sg_error *e);

/* store_run_with_ttl in two halves, so the caller can work while Redis
 * answers: send argv (and "<ttl_cmd> <key>" unless ttl_cmd is NULL) now,
 * then read the replies (ttl NULL: only the first). On one server the
 * commands leave at the send; a cluster store routes them at the read.
 * Nothing else may use s in between. */
bool store_send_with_ttl(struct store *s, int argc, const char **argv, const char *ttl_cmd,
			 const char *key, struct sg_error *e);
bool store_recv_with_ttl(struct store *s, redisReply **reply, redisReply **ttl,
			 struct sg_error *e);

/* Run one command given as argv; the reply belongs to the caller. */
redisReply *store_run(struct store *s, int argc, const char **argv,
		     const size_t *lens, struct sg_error *e);

/* Run argv for its status only: SG_OK, or the failure (connection or
 * error reply) with e set. */
enum sg_err store_run_status(struct store *s, int argc, const char **argv, struct sg_error *e);
/* Read and free n pipelined replies: the first error reply's error, or
 * SG_ERR_REDIS when the connection was lost (the rest is not read). */
enum sg_err store_read_n(struct store *s, size_t n, struct sg_error *e);

/* Set e from an error reply; returns SG_ERR_REDIS. */
enum sg_err store_reply_error(redisReply *r, struct sg_error *e);

/* Read the replies of MULTI + ncmds queued commands + EXEC; returns the
 * EXEC array (caller frees) or NULL with e set. */
redisReply *store_read_exec(struct store *s, size_t ncmds, struct sg_error *e);
/* True when the replies of further commands already sent can still be
 * read: the connection lives (one server) or they are queued (cluster). */
bool store_replies_pending(const struct store *s);

/* Copy an array reply of strings into out (caller finishes it). */
enum sg_err store_copy_list(redisReply *r, struct store_strlist *out, struct sg_error *e);

/* ---- running summaries (summary.c) ---- */

/* Append to the open MULTI of an append the EVAL that trims the window
 * of list_key to max and moves what it trims to the pending list. On
 * failure (out of memory) the caller must drop the connection. */
enum sg_err store_capture_append(struct store *s, const char *tenant, const char *conv,
				 const char *list_key, long long max, long long ttl_s,
				 const struct store_capture *cap, struct sg_error *e);
/* Read that EVAL's reply (an element of the EXEC array) into cap. */
enum sg_err store_capture_result(const redisReply *r, struct store_capture *cap,
				 struct sg_error *e);
/* ---- SEMGATE_REDIS_WAIT_REPLICAS (store.c) ---- */

/* Append "WAIT n timeout" after a write's EXEC when replicas are to be
 * waited for (and stretch the read timeout to cover the wait): 1 when it
 * was appended, 0 when WAIT is off, -1 when it could not be (out of memory:
 * the write must not be acknowledged). After 1, exactly one of:
 * store_read_wait once the EXEC was read, or store_skip_wait when reading
 * the EXEC failed. */
int store_append_wait(struct store *s);
/* WAIT's reply: SG_OK when enough replicas have the write, else
 * SG_ERR_REPLICAS with e saying how many did. */
enum sg_err store_read_wait(struct store *s, struct sg_error *e);
void store_skip_wait(struct store *s);

/* ---- walking a tenant's entries (cache_ops.c) ---- */

/* One SCAN/SSCAN/ZSCAN step: argv with the cursor at argv[2] (argv[1] for
 * SCAN); on SG_OK *out is the reply (caller frees), its element[1] the
 * batch, and cursor advanced. */
enum sg_err store_scan_step(struct store *s, int argc, const char **argv, char cursor[32],
			    redisReply **out, struct sg_error *e);

/* SCAN MATCH pattern on every node (every master of a cluster, the one
 * server otherwise), each batch of keys (a reply array) to fn; the commands
 * fn sends go by their keys' slots. */
typedef enum sg_err (*store_keys_fn)(struct store *s, redisReply *keys, void *ud,
				     struct sg_error *e);
enum sg_err store_scan_every_node(struct store *s, const char *pattern, store_keys_fn fn,
				  void *ud, struct sg_error *e);

/* One key of a SCAN batch that is an entry of the tenant being walked. */
struct store_tenant_entry {
	const char *key;          /* into the SCAN reply */
	size_t len;
	char id[STORE_ID_MAX + 1];
};

typedef enum sg_err (*store_tenant_batch_fn)(struct store *s, const char *tenant,
					     const struct store_tenant_entry *en, size_t n,
					     void *ud, struct sg_error *e);

/* SCAN the tenant's entry keys (never KEYS) and hand each batch of them
 * to fn; keys of another tenant that the glob also matched are left out.
 * O(keyspace): invalidation by namespace and the one-time accounting
 * rebuild (stats.c) only. */
enum sg_err store_scan_tenant(struct store *s, const char *tenant,
			      store_tenant_batch_fn fn, void *ud, struct sg_error *e);

/* ---- entry accounting: {prefix}live:{tenant}, {prefix}size:{tenant} (stats.c) ---- */

/* Append to the pipeline (inside the caller's MULTI) one EVAL that makes
 * the tenant's accounting of entry id match what Redis holds for it now:
 * tracked with its sizes and expiry while the entry exists, untracked once
 * it is gone. Queue it after the commands that write or delete the entry.
 * It also untracks a few entries that have expired (four), so expired ids
 * never pile up however rarely stats are read. False on out of memory
 * (nothing appended). */
bool store_acct_append_sync(struct store *s, const char *tenant, const char *id);

/* The accounting script's reply at exec->element[pos]: true when Redis
 * had not the script cached (NOSCRIPT), and the caller must run
 * store_acct_sync_now for that entry once nothing else is pending on the
 * connection; any other refusal is logged (the entry itself was still
 * written or deleted). */
bool store_acct_check(const redisReply *exec, size_t pos);
void store_acct_sync_now(struct store *s, const char *tenant, const char *id);

/* The hex SHA1 of the accounting script ("" if it could not be computed:
 * then the body is sent). */
const char *store_acct_sync_sha(void);

/* ---- {prefix}ts: series (series.c) ---- */

/* Append to the open MULTI the HINCRBYs and EXPIREs of one row's minute
 * and hour series (nothing when tc->minute is 0); returns the number of
 * commands appended, or -1 on out of memory (some may be appended: drop
 * the connection). */
struct store_tenant_counts;
long store_series_append(struct store *s, const struct store_tenant_counts *tc);

/* The bucket of a tenant's counters of a minute (unix time / 60; 0: now):
 * the bucket of (tenant, "h:<hour>"). The minute and hour series hashes and
 * the part of the stats counters written with them live there. */
unsigned store_series_bucket(const char *tenant, long long minute);

/* ---- {prefix}events (events.c) ---- */

/* The pub/sub channel name, malloc'd; NULL on out of memory. */
char *store_events_channel(const struct sg_config *cfg);

/* Render one event as compact JSON, malloc'd (NULL on out of memory):
 * {"event":type,"id":id,"tenant":tenant,"origin":...} plus, when scope is
 * not NULL, "scope", "model" and "dim" (the index partition of an add). */
char *store_event_render(const char *type, const char *tenant, const char *id,
			 const char *scope, const char *model, int dim);

/* Append "PUBLISH channel event" to the pipeline; false on out of memory
 * (nothing appended). */
bool store_append_publish(struct store *s, const char *type, const char *tenant,
			  const char *id, const char *scope, const char *model, int dim);

/* ---- {prefix}arch: the archive stream (archive.c) ---- */

/* Append "XADD <stream of (tenant, object_id)> MAXLEN ~ max * r rec [v vec]"
 * to the pipeline, inside the caller's MULTI; call only when
 * store_archive_on(). False on out of memory (nothing appended). */
bool store_archive_append(struct store *s, const char *tenant, const char *object_id,
			  const char *rec, const char *vec, size_t vec_len);

/* Lua: raise KEYS[1]'s TTL to ARGV[1] seconds unless it already has more
 * (a key without a TTL gets one). Used for tag sets. */
extern const char store_lua_expire_max[];

#endif
