/* The write-behind archive in PostgreSQL (libpq): decoding the stream's
 * records, the versioned schema, writing batches idempotently, the
 * archiver that drains the stream (a thread of the gateway or the whole of
 * `semgate --archiver`), and the reads back (a whole conversation, the
 * warm start of an empty Redis). Every row carries its tenant and every
 * read filters by it. No DSN or password is ever logged. */
#ifndef SEMGATE_ARCHIVE_H
#define SEMGATE_ARCHIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>
#include "semgate/core/config.h"
#include "semgate/core/err.h"

/* ---- records (pure: record.c) ---- */

enum arch_kind { ARCH_TURN, ARCH_CONV_DELETE, ARCH_PUT, ARCH_ENTRY_DELETE, ARCH_HITS };

/* One decoded stream record. Strings point into root (owned) or into the
 * caller's vector buffer (borrowed); release with arch_rec_finish. */
struct arch_rec {
	enum arch_kind kind;
	long long sid_ms, sid_seq;   /* its stream id: the version of the row */
	const char *tenant;
	const char *obj;             /* conversation id or entry id */
	const cJSON *msgs;           /* ARCH_TURN: the array of messages */
	/* ARCH_PUT */
	const char *query, *answer, *scope, *ns, *exact, *model, *kind_name, *metadata;
	char *tags;                  /* "a,b" (owned), NULL: none */
	int dim;
	long long created, tokens, expires;
	const char *vec;             /* dim float32s, borrowed */
	size_t vec_len;
	/* ARCH_HITS: the entry's hit count after the batch */
	long long hits;
	bool skip;                   /* superseded inside its batch */
	cJSON *root;
};

/* Split a stream id "ms-seq". */
bool arch_sid_parse(const char *id, long long *ms, long long *seq);

/* Decode one record (json[0..len), vec[0..vec_len) may be NULL). False
 * with why[] filled for anything not in the shape the store writes: such
 * a record is acknowledged and counted as rejected, never retried. */
bool arch_rec_decode(const char *sid, const char *json, size_t len, const char *vec,
		     size_t vec_len, struct arch_rec *out, char *why, size_t why_cap);
void arch_rec_finish(struct arch_rec *r);

/* Mark the hit records of v[0..n) that a later hit record of the same
 * entry supersedes (a count is absolute: only the last matters); returns
 * how many are left to write. */
size_t arch_batch_coalesce(struct arch_rec *v, size_t n);

/* ---- schema (schema.c) ---- */

struct arch_migration {
	int version;
	const char *what;
	const char *sql;
};
/* The migrations, in the order they are applied. */
const struct arch_migration *arch_migrations(size_t *n);
/* True when versions run 1, 2, 3, ... without a gap or repeat. */
bool arch_migrations_ordered(const struct arch_migration *m, size_t n);

/* ---- PostgreSQL (pg.c) ---- */

struct archive_pg;

/* dsn borrowed (must outlive it). Connects lazily. */
struct archive_pg *archive_pg_create(const char *dsn);
void archive_pg_destroy(struct archive_pg *pg);

/* Connect (when not connected) and migrate the schema under an advisory
 * lock. SG_ERR_ARCHIVE with e set (never the DSN) when it cannot. */
enum sg_err archive_pg_ready(struct archive_pg *pg, struct sg_error *e);
/* The schema version now in the database (after archive_pg_ready). */
int archive_pg_version(struct archive_pg *pg);

/* Write v[0..n) in one transaction, each row idempotent and versioned by
 * its stream id. A record PostgreSQL refuses (bad data) is skipped and
 * counted in *rejected; a lost connection fails the whole batch. */
enum sg_err archive_pg_apply(struct archive_pg *pg, struct arch_rec *v, size_t n,
			     size_t *rejected, struct sg_error *e);

/* The whole archived conversation, oldest first, as a new cJSON array
 * (caller deletes); an empty array when there is none. Thread-safe. */
enum sg_err archive_pg_conversation(struct archive_pg *pg, const char *tenant,
				    const char *conv, cJSON **out, struct sg_error *e);

/* One archived, live entry for the warm start. Borrowed during the call. */
struct archive_entry_row {
	const char *tenant, *id, *query, *answer, *scope, *ns, *exact, *model, *kind,
		*tags, *metadata;
	size_t query_len, answer_len, metadata_len;
	const float *vec;
	int dim;
	long long created, tokens, expires, hits;
};
typedef enum sg_err (*archive_entry_fn)(void *ud, const struct archive_entry_row *row,
					struct sg_error *e);
/* Every entry not deleted and not expired at now_unix, tenant by tenant. */
enum sg_err archive_pg_entries(struct archive_pg *pg, long long now_unix,
			       archive_entry_fn fn, void *ud, size_t *n, struct sg_error *e);

/* ---- the archiver (archiver.c) ---- */

struct archiver;
/* Start draining in a thread of its own (cfg borrowed). NULL with e set. */
struct archiver *archiver_start(const struct sg_config *cfg, struct sg_error *e);
/* Stop after the batch in hand and join. Accepts NULL. */
void archiver_stop(struct archiver *a);

/* Process-wide archiver counts, for /metrics. */
struct archive_counts {
	unsigned long long archived, rejected, lost, batches, pg_errors;
};
void archive_get_counts(struct archive_counts *out);

/* ---- warm start (warm.c) ---- */

/* When Redis holds no cache entry, write every live archived entry back
 * (with its vector and remaining TTL) before the index loads. *restored
 * counts them; SG_OK and 0 when Redis was not empty. */
enum sg_err archive_warm(const struct sg_config *cfg, size_t *restored, struct sg_error *e);

#endif
