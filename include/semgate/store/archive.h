/* The write-behind archive's side in Redis: the records every conversation
 * turn and cache-entry event adds to the archive stream (in the same
 * MULTI/EXEC as the data, and only when SEMGATE_ARCHIVE_DSN is set), and
 * the consumer-group calls the archiver drains them with. Stream keys are
 * built only by store_archive_stream_key(): one stream, {prefix}arch, on
 * one server (or Sentinel); on a cluster one per slot bucket,
 * {prefix}arch:{T} (semgate/store/layout.h), so a record shares the slot of
 * the data it is written with. The archiver reads every stream
 * store_archive_streams() lists. Records are JSON ("r") plus an optional raw float32
 * vector ("v"); archive/record.c decodes them. */
#ifndef SEMGATE_STORE_ARCHIVE_H
#define SEMGATE_STORE_ARCHIVE_H

#include <stdbool.h>
#include <stddef.h>
#include "semgate/core/err.h"
#include "semgate/store/store.h"

/* The consumer group every archiver joins. */
#define STORE_ARCHIVE_GROUP "semgate-archive"

/* True when the archive is on (cfg->archive_dsn set): only then is any
 * record written. */
bool store_archive_on(const struct sg_config *cfg);

/* The stream that records about (tenant, object_id) go to: an object is a
 * conversation id or an entry id, so every record of one object lands in
 * one stream, in order. malloc'd; NULL on out of memory. */
char *store_archive_stream_key(const struct store *s, const char *tenant,
			       const char *object_id);

/* The cluster stream of slot bucket bucket. malloc'd; NULL on out of memory. */
char *store_archive_stream_in(const struct store *s, unsigned bucket);

/* Every archive stream, for the archiver to drain; out is filled (free
 * with store_strlist_finish). */
enum sg_err store_archive_streams(const struct store *s, struct store_strlist *out,
				  struct sg_error *e);

/* ---- record encoding (pure; malloc'd JSON text, NULL on out of memory) ---- */

/* {"k":"turn","t":tenant,"c":conv,"m":[items...]}: items are the compact
 * JSON messages exactly as pushed on the list. */
char *store_archive_turn_render(const char *tenant, const char *conv,
				const char *const *items, const size_t *lens, size_t n);
/* {"k":"cdel","t":tenant,"c":conv} or {"k":"edel","t":tenant,"id":id}. */
char *store_archive_del_render(bool entry, const char *tenant, const char *id);
/* {"k":"put","t":tenant,"id",...}: every field of the entry (the vector goes
 * in its own stream field) and "ex", its expiry in unix seconds. */
char *store_archive_entry_render(const char *tenant, const struct store_entry *en,
				 long long expires_unix);

/* ---- draining (the archiver; s is the archiver's own store) ---- */

/* One stream record. rec is the JSON, vec the raw vector (may be NULL). */
struct store_archive_msg {
	char id[48];               /* stream id "ms-seq" */
	char *rec;
	size_t rec_len;
	char *vec;
	size_t vec_len;
};
struct store_archive_batch {
	struct store_archive_msg *v;
	size_t n;
	size_t gone;               /* claimed ids whose record was trimmed (lost) */
	char **gone_ids;           /* their ids, to acknowledge */
};
void store_archive_batch_finish(struct store_archive_batch *b);

/* XGROUP CREATE stream STORE_ARCHIVE_GROUP 0 MKSTREAM; an existing group is fine. */
enum sg_err store_archive_group(struct store *s, const char *stream, struct sg_error *e);

/* XREADGROUP COUNT count [BLOCK block_ms] STREAMS stream id: id ">" for new
 * records, "0" for this consumer's own pending ones. */
enum sg_err store_archive_read(struct store *s, const char *stream, const char *consumer,
			       const char *id, size_t count, int block_ms,
			       struct store_archive_batch *out, struct sg_error *e);

/* XAUTOCLAIM stream group consumer min_idle_ms cursor COUNT count: records
 * other consumers (a crashed archiver) have held that long. cursor in/out
 * ("0-0" to start). */
enum sg_err store_archive_claim(struct store *s, const char *stream, const char *consumer,
				long long min_idle_ms, char cursor[48], size_t count,
				struct store_archive_batch *out, struct sg_error *e);

/* XACK ids[0..n). */
enum sg_err store_archive_ack(struct store *s, const char *stream, const char *const *ids,
			      size_t n, struct sg_error *e);

/* Where the group stands on one stream. -1: unknown. */
struct store_archive_lag {
	long long length;          /* XLEN */
	long long pending;         /* delivered, not acknowledged */
	long long lag;             /* not yet delivered (Redis 7 XINFO GROUPS) */
	long long entries_added;   /* ever added to the stream */
	long long entries_read;    /* the group's read counter */
	long long trimmed_unread;  /* added, never read and trimmed away */
};
enum sg_err store_archive_lag(struct store *s, const char *stream,
			      struct store_archive_lag *out, struct sg_error *e);

/* After trimmed_unread > 0: move the group past the gap (XGROUP SETID 0
 * ENTRIESREAD added - length) so the loss is counted once. */
enum sg_err store_archive_skip_gap(struct store *s, const char *stream,
				   const struct store_archive_lag *lag, struct sg_error *e);

/* Remove the group's consumers other than keep that hold nothing pending
 * and have been idle longer than idle_ms (archivers that crashed or
 * stopped, each restart being a new consumer). *removed counts them. */
enum sg_err store_archive_reap(struct store *s, const char *stream, const char *keep,
			       long long idle_ms, size_t *removed, struct sg_error *e);

/* True when Redis holds no cache entry at all (SCAN of the entry keys),
 * for the warm start. */
enum sg_err store_entries_empty(struct store *s, bool *empty, struct sg_error *e);

#endif
