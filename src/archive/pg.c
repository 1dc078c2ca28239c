/* libpq adapter of the archive: the only file that includes libpq-fe.h.
 * One connection per struct archive_pg, guarded by its mutex (the
 * archiver owns one, the gateway's reads share another). Rows are
 * versioned by stream id so replays and late records change nothing;
 * every statement names the tenant. Errors never carry the DSN. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "semgate/archive/archive.h"
#include "semgate/core/json.h"
#include "semgate/core/log.h"

/* Any fixed 64-bit number: the migration lock shared by every gateway. */
#define MIGRATE_LOCK 0x73656d6761746531LL

struct archive_pg {
	const char *dsn;
	PGconn *c;
	int version;
	pthread_mutex_t mu;
};

struct archive_pg *archive_pg_create(const char *dsn)
{
	struct archive_pg *pg = calloc(1, sizeof(*pg));
	if (!pg)
		return NULL;
	pg->dsn = dsn;
	pthread_mutex_init(&pg->mu, NULL);
	return pg;
}

void archive_pg_destroy(struct archive_pg *pg)
{
	if (!pg)
		return;
	if (pg->c)
		PQfinish(pg->c);
	pthread_mutex_destroy(&pg->mu);
	free(pg);
}

static void drop_locked(struct archive_pg *pg)
{
	if (pg->c)
		PQfinish(pg->c);
	pg->c = NULL;
}

/* libpq's message, first line only, for e (it names host and user, never
 * the password). */
static enum sg_err pg_error(struct archive_pg *pg, struct sg_error *e, const char *what,
			    const PGresult *res)
{
	const char *m = res ? PQresultErrorMessage(res) : NULL;
	if (!m || !m[0])
		m = pg->c ? PQerrorMessage(pg->c) : "no connection";
	int n = (int)strcspn(m, "\n");
	return sg_error_set(e, SG_ERR_ARCHIVE, "archive: %s: %.*s", what, n > 200 ? 200 : n, m);
}

/* Run sql with no result rows wanted. */
static enum sg_err exec_locked(struct archive_pg *pg, const char *sql, const char *what,
			       struct sg_error *e)
{
	PGresult *r = PQexec(pg->c, sql);
	enum sg_err rc = SG_OK;
	ExecStatusType st = PQresultStatus(r);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
		rc = pg_error(pg, e, what, r);
	PQclear(r);
	return rc;
}

static enum sg_err migrate_locked(struct archive_pg *pg, struct sg_error *e)
{
	size_t n;
	const struct arch_migration *m = arch_migrations(&n);
	enum sg_err rc;
	/* the transaction-scoped advisory lock makes two gateways that start
	 * at once take turns: the second finds the work done */
	if ((rc = exec_locked(pg, "BEGIN", "begin", e)) != SG_OK)
		return rc;
	char lock[96];
	snprintf(lock, sizeof(lock), "SELECT pg_advisory_xact_lock(%lld)", MIGRATE_LOCK);
	if ((rc = exec_locked(pg, lock, "migration lock", e)) != SG_OK ||
	    (rc = exec_locked(pg, "CREATE TABLE IF NOT EXISTS archive_schema_version ("
			      " version int PRIMARY KEY, what text NOT NULL,"
			      " applied_at timestamptz NOT NULL DEFAULT now())",
			      "schema_version table", e)) != SG_OK)
		goto fail;
	PGresult *r = PQexec(pg->c, "SELECT coalesce(max(version), 0) FROM archive_schema_version");
	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
		rc = pg_error(pg, e, "schema version", r);
		PQclear(r);
		goto fail;
	}
	int have = atoi(PQgetvalue(r, 0, 0));
	PQclear(r);
	for (size_t i = 0; i < n; i++) {
		if (m[i].version <= have)
			continue;
		if ((rc = exec_locked(pg, m[i].sql, m[i].what, e)) != SG_OK)
			goto fail;
		char v[16];
		snprintf(v, sizeof(v), "%d", m[i].version);
		const char *params[] = { v, m[i].what };
		r = PQexecParams(pg->c, "INSERT INTO archive_schema_version (version, what) "
				 "VALUES ($1, $2)", 2, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			rc = pg_error(pg, e, "schema version", r);
			PQclear(r);
			goto fail;
		}
		PQclear(r);
		sg_log(SG_LOG_INFO, "archive: schema migrated to version %d (%s)", m[i].version,
		       m[i].what);
		have = m[i].version;
	}
	if ((rc = exec_locked(pg, "COMMIT", "commit", e)) != SG_OK)
		return rc;
	pg->version = have;
	return SG_OK;
fail:
	exec_locked(pg, "ROLLBACK", "rollback", NULL);
	return rc;
}

static enum sg_err prepare_locked(struct archive_pg *pg, struct sg_error *e);

static void quiet(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

static enum sg_err ready_locked(struct archive_pg *pg, struct sg_error *e)
{
	if (pg->c && PQstatus(pg->c) == CONNECTION_OK)
		return SG_OK;
	drop_locked(pg);
	pg->c = PQconnectdb(pg->dsn);
	if (!pg->c)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	if (PQstatus(pg->c) != CONNECTION_OK) {
		enum sg_err rc = pg_error(pg, e, "cannot connect to PostgreSQL", NULL);
		drop_locked(pg);
		return rc;
	}
	/* "already exists, skipping" and the like: not for the gateway's log */
	PQsetNoticeProcessor(pg->c, quiet, NULL);
	enum sg_err rc = migrate_locked(pg, e);
	if (rc == SG_OK)
		rc = prepare_locked(pg, e);
	if (rc != SG_OK)
		drop_locked(pg);
	return rc;
}

enum sg_err archive_pg_ready(struct archive_pg *pg, struct sg_error *e)
{
	pthread_mutex_lock(&pg->mu);
	enum sg_err rc = ready_locked(pg, e);
	pthread_mutex_unlock(&pg->mu);
	return rc;
}

int archive_pg_version(struct archive_pg *pg)
{
	pthread_mutex_lock(&pg->mu);
	int v = pg->version;
	pthread_mutex_unlock(&pg->mu);
	return v;
}

/* ---- writing ---- */

static const char sql_turn[] =
	"INSERT INTO archive_turns (tenant, conv, sid_ms, sid_seq, idx, message) "
	"SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS (SELECT 1 FROM archive_conv_deletes d "
	" WHERE d.tenant = $1 AND d.conv = $2 AND (d.sid_ms, d.sid_seq) > ($3::bigint, $4::bigint)) "
	"ON CONFLICT DO NOTHING";
static const char sql_conv_delete[] =
	"WITH t AS (INSERT INTO archive_conv_deletes (tenant, conv, sid_ms, sid_seq) "
	" VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, conv) DO UPDATE"
	" SET sid_ms = EXCLUDED.sid_ms, sid_seq = EXCLUDED.sid_seq"
	" WHERE (archive_conv_deletes.sid_ms, archive_conv_deletes.sid_seq) <"
	" (EXCLUDED.sid_ms, EXCLUDED.sid_seq)) "
	"DELETE FROM archive_turns WHERE tenant = $1 AND conv = $2 AND"
	" (sid_ms, sid_seq) < ($3::bigint, $4::bigint)";
static const char sql_put[] =
	"INSERT INTO archive_entries (tenant, id, sid_ms, sid_seq, deleted, query, answer,"
	" scope, namespace, exact, model, dim, vector, created, tokens, expires, kind, tags,"
	" metadata, hits) VALUES ($1, $2, $3, $4, false, $5, $6, $7, $8, $9, $10, $11, $12,"
	" $13, $14, $15, $16, $17, $18, 0) "
	"ON CONFLICT (tenant, id) DO UPDATE SET sid_ms = EXCLUDED.sid_ms,"
	" sid_seq = EXCLUDED.sid_seq, deleted = false, query = EXCLUDED.query,"
	" answer = EXCLUDED.answer, scope = EXCLUDED.scope, namespace = EXCLUDED.namespace,"
	" exact = EXCLUDED.exact, model = EXCLUDED.model, dim = EXCLUDED.dim,"
	" vector = EXCLUDED.vector, created = EXCLUDED.created, tokens = EXCLUDED.tokens,"
	" expires = EXCLUDED.expires, kind = EXCLUDED.kind, tags = EXCLUDED.tags,"
	" metadata = EXCLUDED.metadata, hits = 0, archived_at = now()"
	" WHERE (archive_entries.sid_ms, archive_entries.sid_seq) <"
	" (EXCLUDED.sid_ms, EXCLUDED.sid_seq)";
static const char sql_entry_delete[] =
	"INSERT INTO archive_entries (tenant, id, sid_ms, sid_seq, deleted)"
	" VALUES ($1, $2, $3, $4, true) "
	"ON CONFLICT (tenant, id) DO UPDATE SET sid_ms = EXCLUDED.sid_ms,"
	" sid_seq = EXCLUDED.sid_seq, deleted = true, query = NULL, answer = NULL,"
	" vector = NULL, metadata = NULL, exact = NULL, archived_at = now()"
	" WHERE (archive_entries.sid_ms, archive_entries.sid_seq) <"
	" (EXCLUDED.sid_ms, EXCLUDED.sid_seq)";
/* a count is absolute and only ever grows for one put (a newer put starts
 * again at 0), so the larger of the two is right whatever the order */
static const char sql_hits[] =
	"UPDATE archive_entries SET hits = GREATEST(hits, $3) WHERE tenant = $1 AND id = $2"
	" AND NOT deleted AND (sid_ms, sid_seq) < ($4::bigint, $5::bigint)";

/* Parsed and planned once per connection, not once per row. */
static enum sg_err prepare_locked(struct archive_pg *pg, struct sg_error *e)
{
	static const struct { const char *name, *sql; } stmts[] = {
		{ "turn", sql_turn }, { "conv_delete", sql_conv_delete }, { "put", sql_put },
		{ "entry_delete", sql_entry_delete }, { "hits", sql_hits },
	};
	for (size_t i = 0; i < sizeof(stmts) / sizeof(stmts[0]); i++) {
		PGresult *r = PQprepare(pg->c, stmts[i].name, stmts[i].sql, 0, NULL);
		bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
		enum sg_err rc = ok ? SG_OK : pg_error(pg, e, "preparing statements", r);
		PQclear(r);
		if (!ok)
			return rc;
	}
	return SG_OK;
}

static bool ok_status(PGresult *r)
{
	ExecStatusType st = PQresultStatus(r);
	return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

/* Most statements in flight in a pipeline before their results are read:
 * keeps both sides' socket buffers from filling (a blocking pipeline could
 * otherwise deadlock). */
#define PIPE_CHUNK 128

/* Where a batch's statements go: one round trip each (exec), or queued in
 * libpq's pipeline and read back in chunks. */
struct sender {
	PGconn *c;
	bool pipe;
	int inflight;       /* sent, results not read yet */
	PGresult *err;      /* the first failed result (exec), kept for its text */
	char msg[200];      /* the first failure's text (pipeline) */
	bool failed;
};

/* Read every pending pipelined result up to and including a sync. */
static bool drain(struct sender *s)
{
	if (PQpipelineSync(s->c) != 1)
		return false;
	for (int i = 0; i < s->inflight; i++) {
		PGresult *r = PQgetResult(s->c);
		if (!r)
			return false;
		if (!ok_status(r) && !s->failed) {
			const char *m = PQresultErrorMessage(r);
			snprintf(s->msg, sizeof(s->msg), "%.*s", (int)strcspn(m, "\n"), m);
			s->failed = true;
		}
		PQclear(r);
		PGresult *end = PQgetResult(s->c); /* NULL after each query's result */
		if (end)
			PQclear(end);
	}
	s->inflight = 0;
	PGresult *sync = PQgetResult(s->c);
	bool ok = sync && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
	PQclear(sync);
	return ok && !s->failed;
}

/* Run (or queue) one statement: a prepared one by name (stmt), or sql
 * with no parameters (BEGIN, COMMIT). */
static bool send_q(struct sender *s, const char *stmt, const char *sql, int n,
		   const char *const *p, const int *lens, const int *fmts)
{
	if (s->pipe) {
		int ok = stmt ? PQsendQueryPrepared(s->c, stmt, n, p, lens, fmts, 0) :
				PQsendQueryParams(s->c, sql, 0, NULL, NULL, NULL, NULL, 0);
		if (ok != 1) {
			s->failed = true;
			return false;
		}
		return ++s->inflight < PIPE_CHUNK || drain(s);
	}
	PGresult *r = stmt ? PQexecPrepared(s->c, stmt, n, p, lens, fmts, 0) : PQexec(s->c, sql);
	if (ok_status(r)) {
		PQclear(r);
		return true;
	}
	s->err = r;
	return false;
}

/* One record's statements. */
static bool write_rec(struct sender *s, const struct arch_rec *r)
{
	char ms[24], seq[24], a[24], b[24], d[24], f[24];
	snprintf(ms, sizeof(ms), "%lld", r->sid_ms);
	snprintf(seq, sizeof(seq), "%lld", r->sid_seq);
	switch (r->kind) {
	case ARCH_TURN: {
		int i = 0;
		const cJSON *m;
		cJSON_ArrayForEach(m, r->msgs) {
			char *text = sg_json_render(m);
			snprintf(a, sizeof(a), "%d", i++);
			const char *p[] = { r->tenant, r->obj, ms, seq, a, text };
			bool ok = text && send_q(s, "turn", NULL, 6, p, NULL, NULL);
			free(text);
			if (!ok)
				return false;
		}
		return true;
	}
	case ARCH_CONV_DELETE: {
		const char *p[] = { r->tenant, r->obj, ms, seq };
		return send_q(s, "conv_delete", NULL, 4, p, NULL, NULL);
	}
	case ARCH_PUT: {
		snprintf(a, sizeof(a), "%d", r->dim);
		snprintf(b, sizeof(b), "%lld", r->created);
		snprintf(d, sizeof(d), "%lld", r->tokens);
		snprintf(f, sizeof(f), "%lld", r->expires);
		const char *p[18] = { r->tenant, r->obj, ms, seq, r->query, r->answer, r->scope,
				      r->ns, r->exact, r->model, a, r->vec, b, d, f,
				      r->kind_name, r->tags, r->metadata };
		int lens[18] = { 0 };
		int fmts[18] = { 0 };
		lens[11] = (int)r->vec_len;
		fmts[11] = 1; /* the vector goes as raw bytes */
		return send_q(s, "put", NULL, 18, p, lens, fmts);
	}
	case ARCH_ENTRY_DELETE: {
		const char *p[] = { r->tenant, r->obj, ms, seq };
		return send_q(s, "entry_delete", NULL, 4, p, NULL, NULL);
	}
	case ARCH_HITS: {
		snprintf(a, sizeof(a), "%lld", r->hits);
		const char *p[] = { r->tenant, r->obj, a, ms, seq };
		return send_q(s, "hits", NULL, 5, p, NULL, NULL);
	}
	}
	return false;
}

static bool conn_ok(const struct archive_pg *pg)
{
	return pg->c && PQstatus(pg->c) == CONNECTION_OK;
}

/* The whole batch in one transaction, pipelined: a few round trips for
 * the batch instead of one per statement. Any failure fails it all. */
static enum sg_err apply_pipelined(struct archive_pg *pg, struct arch_rec *v, size_t n,
				   struct sg_error *e)
{
	struct sender s = { .c = pg->c, .pipe = true };
	if (PQenterPipelineMode(pg->c) != 1)
		return pg_error(pg, e, "pipeline mode", NULL);
	bool ok = send_q(&s, NULL, "BEGIN", 0, NULL, NULL, NULL);
	for (size_t i = 0; ok && i < n; i++)
		if (!v[i].skip)
			ok = write_rec(&s, &v[i]);
	ok = ok && send_q(&s, NULL, "COMMIT", 0, NULL, NULL, NULL);
	if (s.inflight || s.failed)
		ok = drain(&s) && ok;
	bool left = PQexitPipelineMode(pg->c) == 1;
	if (ok && left)
		return SG_OK;
	if (s.msg[0])
		sg_error_set(e, SG_ERR_ARCHIVE, "archive: writing a batch: %s", s.msg);
	else
		pg_error(pg, e, "writing a batch", NULL);
	if (!left)
		drop_locked(pg); /* results still queued: start over on a new connection */
	else if (conn_ok(pg))
		exec_locked(pg, "ROLLBACK", "rollback", NULL);
	return SG_ERR_ARCHIVE;
}

/* Record by record, each under a savepoint: one PostgreSQL refuses is
 * skipped (counted in *rejected) and the rest of the batch still lands. */
static enum sg_err apply_each(struct archive_pg *pg, struct arch_rec *v, size_t n,
			      size_t *rejected, struct sg_error *e)
{
	enum sg_err rc;
	if ((rc = exec_locked(pg, "BEGIN", "begin", e)) != SG_OK)
		return rc;
	for (size_t i = 0; i < n; i++) {
		if (v[i].skip)
			continue;
		if ((rc = exec_locked(pg, "SAVEPOINT r", "savepoint", e)) != SG_OK)
			goto fail;
		struct sender s = { .c = pg->c };
		if (write_rec(&s, &v[i])) {
			if ((rc = exec_locked(pg, "RELEASE SAVEPOINT r", "release", e)) != SG_OK)
				goto fail;
			continue;
		}
		rc = pg_error(pg, e, "writing a batch", s.err);
		PQclear(s.err);
		if (!conn_ok(pg))
			goto fail;
		sg_log(SG_LOG_WARN, "archive: record %lld-%lld of tenant %s refused, skipped: %s",
		       v[i].sid_ms, v[i].sid_seq, v[i].tenant, e->msg);
		(*rejected)++;
		if ((rc = exec_locked(pg, "ROLLBACK TO SAVEPOINT r", "rollback", e)) != SG_OK)
			goto fail;
	}
	return exec_locked(pg, "COMMIT", "commit", e);
fail:
	if (conn_ok(pg))
		exec_locked(pg, "ROLLBACK", "rollback", NULL);
	return rc;
}

enum sg_err archive_pg_apply(struct archive_pg *pg, struct arch_rec *v, size_t n,
			     size_t *rejected, struct sg_error *e)
{
	*rejected = 0;
	pthread_mutex_lock(&pg->mu);
	enum sg_err rc = ready_locked(pg, e);
	if (rc == SG_OK) {
		rc = apply_pipelined(pg, v, n, e);
		/* a refused record (not a lost connection): again, one savepoint
		 * per record, so the rest of the batch still lands */
		if (rc != SG_OK && conn_ok(pg))
			rc = apply_each(pg, v, n, rejected, e);
		if (rc != SG_OK && !conn_ok(pg))
			drop_locked(pg);
	}
	pthread_mutex_unlock(&pg->mu);
	return rc;
}

/* ---- reading ---- */

enum sg_err archive_pg_conversation(struct archive_pg *pg, const char *tenant,
				    const char *conv, cJSON **out, struct sg_error *e)
{
	*out = NULL;
	pthread_mutex_lock(&pg->mu);
	enum sg_err rc = ready_locked(pg, e);
	if (rc != SG_OK)
		goto out;
	const char *p[] = { tenant, conv };
	PGresult *r = PQexecParams(pg->c, "SELECT message FROM archive_turns WHERE tenant = $1"
				   " AND conv = $2 ORDER BY sid_ms, sid_seq, idx", 2, NULL, p,
				   NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		rc = pg_error(pg, e, "reading a conversation", r);
		PQclear(r);
		if (!conn_ok(pg))
			drop_locked(pg);
		goto out;
	}
	cJSON *arr = cJSON_CreateArray();
	for (int i = 0; arr && i < PQntuples(r); i++) {
		cJSON *m = NULL;
		const char *t = PQgetvalue(r, i, 0);
		if (sg_json_parse(t, strlen(t), &m, NULL) == SG_OK)
			cJSON_AddItemToArray(arr, m);
	}
	PQclear(r);
	if (!arr)
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	*out = arr;
out:
	pthread_mutex_unlock(&pg->mu);
	return rc;
}

static const char *col(PGresult *r, int row, int c, size_t *len)
{
	if (PQgetisnull(r, row, c))
		return NULL;
	if (len)
		*len = (size_t)PQgetlength(r, row, c);
	return PQgetvalue(r, row, c);
}

/* One row of the entries query as the callback's struct. */
static enum sg_err entry_row(PGresult *r, archive_entry_fn fn, void *ud, size_t *n,
			     struct sg_error *e)
{
	struct archive_entry_row row = { 0 };
	row.tenant = col(r, 0, 0, NULL);
	row.id = col(r, 0, 1, NULL);
	row.query = col(r, 0, 2, &row.query_len);
	row.answer = col(r, 0, 3, &row.answer_len);
	row.scope = col(r, 0, 4, NULL);
	row.ns = col(r, 0, 5, NULL);
	row.exact = col(r, 0, 6, NULL);
	row.model = col(r, 0, 7, NULL);
	row.kind = col(r, 0, 8, NULL);
	row.tags = col(r, 0, 9, NULL);
	row.metadata = col(r, 0, 10, &row.metadata_len);
	row.dim = atoi(PQgetvalue(r, 0, 12));
	row.created = strtoll(PQgetvalue(r, 0, 13), NULL, 10);
	row.tokens = strtoll(PQgetvalue(r, 0, 14), NULL, 10);
	row.expires = strtoll(PQgetvalue(r, 0, 15), NULL, 10);
	row.hits = strtoll(PQgetvalue(r, 0, 16), NULL, 10);
	size_t blen = 0;
	unsigned char *blob = NULL;
	const char *esc = col(r, 0, 11, NULL);
	if (esc && row.dim > 0)
		blob = PQunescapeBytea((const unsigned char *)esc, &blen);
	if (row.dim > 0 && blob && blen == 4 * (size_t)row.dim)
		row.vec = (const float *)blob; /* malloc'd: aligned for floats */
	else
		row.dim = 0;
	enum sg_err rc = SG_OK;
	if (row.tenant && row.id && row.query && row.answer && row.scope &&
	    (rc = fn(ud, &row, e)) == SG_OK)
		(*n)++;
	PQfreemem(blob);
	return rc;
}

enum sg_err archive_pg_entries(struct archive_pg *pg, long long now_unix,
			       archive_entry_fn fn, void *ud, size_t *n, struct sg_error *e)
{
	*n = 0;
	pthread_mutex_lock(&pg->mu);
	enum sg_err rc = ready_locked(pg, e);
	if (rc != SG_OK)
		goto out;
	char now[24];
	snprintf(now, sizeof(now), "%lld", now_unix);
	const char *p[] = { now };
	/* row by row (single-row mode): a million entries never sit in memory
	 * at once */
	if (PQsendQueryParams(pg->c,
		"SELECT tenant, id, query, answer, scope, namespace, exact, model, kind, tags,"
		" metadata, vector, dim, created, tokens, expires, hits FROM archive_entries"
		" WHERE NOT deleted AND expires > $1::bigint", 1, NULL, p, NULL, NULL, 0) != 1 ||
	    PQsetSingleRowMode(pg->c) != 1) {
		rc = pg_error(pg, e, "reading entries", NULL);
		drop_locked(pg);
		goto out;
	}
	PGresult *r;
	while ((r = PQgetResult(pg->c))) {
		ExecStatusType st = PQresultStatus(r);
		if (st == PGRES_SINGLE_TUPLE && rc == SG_OK)
			rc = entry_row(r, fn, ud, n, e); /* after a failure: drain only */
		else if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK && rc == SG_OK)
			rc = pg_error(pg, e, "reading entries", r);
		PQclear(r);
	}
out:
	pthread_mutex_unlock(&pg->mu);
	return rc;
}
