/* Warm start from the archive: a gateway that finds no cache entry in
 * Redis writes the archive's live entries back (vector, exact key, tags,
 * remaining TTL) before its index loads, so old questions hit again after
 * Redis lost its data. The writes carry no stream record (nothing new to
 * archive). Each entry goes back to its own tenant. */
#include <stdlib.h>
#include <string.h>

#include "semgate/archive/archive.h"
#include "semgate/core/clock.h"
#include "semgate/core/log.h"
#include "semgate/store/archive.h"
#include "semgate/store/store.h"

struct warm_ctx {
	struct store *store;
	long long now;
};

static enum sg_err restore(void *ud, const struct archive_entry_row *row, struct sg_error *e)
{
	struct warm_ctx *w = ud;
	char *tags = row->tags && row->tags[0] ? strdup(row->tags) : NULL;
	const char *tv[64];
	size_t nt = 0;
	char *save = NULL;
	for (char *t = tags ? strtok_r(tags, ",", &save) : NULL; t && nt < 64;
	     t = strtok_r(NULL, ",", &save))
		tv[nt++] = t;
	struct store_entry en = {
		.id = row->id,
		.query = row->query, .query_len = row->query_len,
		.answer = row->answer, .answer_len = row->answer_len,
		.scope = row->scope,
		.ns = row->ns ? row->ns : "",
		.exact = row->exact && row->exact[0] ? row->exact : NULL,
		.vec = row->dim > 0 ? row->vec : NULL,
		.dim = row->dim,
		.emb_model = row->model ? row->model : "",
		.created = row->created,
		.tokens = row->tokens,
		.ttl_s = row->expires - w->now > 0 ? row->expires - w->now : 1,
		.kind = row->kind,
		.tags = nt ? tv : NULL,
		.ntags = nt,
		.metadata = row->metadata,
		.metadata_len = row->metadata_len,
		.no_archive = true,
	};
	enum sg_err rc = store_entry_put(w->store, row->tenant, &en, e);
	free(tags);
	return rc;
}

enum sg_err archive_warm(const struct sg_config *cfg, size_t *restored, struct sg_error *e)
{
	*restored = 0;
	struct store *s = store_create(cfg);
	struct archive_pg *pg = archive_pg_create(cfg->archive_dsn);
	enum sg_err rc = SG_OK;
	bool empty = false;
	if (!s || !pg) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((rc = store_entries_empty(s, &empty, e)) != SG_OK || !empty)
		goto out;
	struct warm_ctx w = { .store = s, .now = sg_wall_ms() / 1000 };
	rc = archive_pg_entries(pg, w.now, restore, &w, restored, e);
out:
	archive_pg_destroy(pg);
	store_destroy(s);
	return rc;
}
