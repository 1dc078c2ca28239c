/* The archive's schema as an ordered list of migrations. A migration is
 * never edited once released: a change is a new version at the end. pg.c
 * applies the missing ones under an advisory lock. */
#include "semgate/archive/archive.h"

static const struct arch_migration migrations[] = {
	{ 1, "turns, conversation deletions and cache entries",
	  /* one row per message; a turn's messages share its stream id */
	  "CREATE TABLE archive_turns ("
	  " tenant text NOT NULL, conv text NOT NULL,"
	  " sid_ms bigint NOT NULL, sid_seq bigint NOT NULL, idx int NOT NULL,"
	  " message text NOT NULL, archived_at timestamptz NOT NULL DEFAULT now(),"
	  " PRIMARY KEY (tenant, conv, sid_ms, sid_seq, idx));"
	  /* the newest delete of each conversation: turns older than it are
	   * gone and never come back, even when their record arrives late */
	  "CREATE TABLE archive_conv_deletes ("
	  " tenant text NOT NULL, conv text NOT NULL,"
	  " sid_ms bigint NOT NULL, sid_seq bigint NOT NULL,"
	  " PRIMARY KEY (tenant, conv));"
	  /* an entry row is versioned by the stream id of its last put or
	   * delete; a delete leaves a tombstone (deleted, data cleared) */
	  "CREATE TABLE archive_entries ("
	  " tenant text NOT NULL, id text NOT NULL,"
	  " sid_ms bigint NOT NULL, sid_seq bigint NOT NULL,"
	  " deleted boolean NOT NULL DEFAULT false,"
	  " query text, answer text, scope text, namespace text, exact text,"
	  " model text, dim int NOT NULL DEFAULT 0, vector bytea,"
	  " created bigint, tokens bigint, expires bigint, kind text, tags text,"
	  " metadata text, hits bigint NOT NULL DEFAULT 0,"
	  " archived_at timestamptz NOT NULL DEFAULT now(),"
	  " PRIMARY KEY (tenant, id));" },
	{ 2, "index for the warm start's live entries",
	  "CREATE INDEX archive_entries_live ON archive_entries (tenant, expires)"
	  " WHERE NOT deleted;" },
};

const struct arch_migration *arch_migrations(size_t *n)
{
	*n = sizeof(migrations) / sizeof(migrations[0]);
	return migrations;
}

bool arch_migrations_ordered(const struct arch_migration *m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (m[i].version != (int)i + 1 || !m[i].sql || !m[i].sql[0])
			return false;
	return true;
}
