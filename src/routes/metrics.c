/* GET /metrics (Prometheus text) and the one helper routes use to count
 * the tokens a cache hit saved. Open like /healthz; it shows counts and
 * timings only, never a tenant, key or request text. */
#include <stdlib.h>

#include "semgate/app/app.h"
#include "semgate/cache/behind.h"
#include "semgate/archive/archive.h"
#include "semgate/cache/hotcache.h"
#include "semgate/core/json.h"
#include "semgate/core/metrics.h"
#include "semgate/routes/routes.h"
#include "semgate/store/sentinel.h"
#include "semgate/store/archive.h"
#include "semgate/store/store.h"
#include "semgate/summary/summary.h"
#include "semgate/cache/tally.h"
#include "semgate/vindex/vindex.h"

/* The archive's lag, read from Redis now (so it is right whichever
 * process archives), and this process's archiver counts. */
static void archive_metrics(struct sg_req *req, struct metrics_extra *x)
{
	struct archive_counts c;
	archive_get_counts(&c);
	x->archive = true;
	x->archive_archived = c.archived;
	x->archive_rejected = c.rejected;
	x->archive_lost = c.lost;
	x->archive_batches = c.batches;
	x->archive_pg_errors = c.pg_errors;
	x->archive_length = x->archive_pending = x->archive_lag = -1;
	struct store *s = worker_store(req->worker);
	struct store_strlist l;
	struct sg_error e = { 0 };
	if (!s || store_archive_streams(s, &l, &e) != SG_OK)
		return;
	long long len = 0, pend = 0, lag = 0;
	bool known = true;
	for (size_t i = 0; i < l.n && known; i++) {
		struct store_archive_lag g;
		known = store_archive_lag(s, l.v[i], &g, &e) == SG_OK;
		len += g.length > 0 ? g.length : 0;
		pend += g.pending > 0 ? g.pending : 0;
		lag += g.lag > 0 ? g.lag : 0;
	}
	store_strlist_finish(&l);
	if (known) {
		x->archive_length = len;
		x->archive_pending = pend;
		x->archive_lag = lag;
	}
}

int route_metrics(struct sg_req *req)
{
	const struct sg_config *cfg = req->app->cfg;
	struct tally_stats ts;
	tally_get_stats(req->app->tally, &ts);
	struct hot_stats hs;
	hot_get_stats(req->app->hot, &hs);
	struct behind_stats bs;
	behind_get_stats(req->app->behind, &bs);
	struct summarizer_stats zs;
	summarizer_get_stats(req->app->summ, &zs);
	struct metrics_extra x = {
		.summary_backlog = zs.backlog,
		.redis_reconnects = store_reconnects(),
		.redis_master_changes = store_master_changes(),
		.index_entries = vindex_count(req->app->vindex),
		.index_bytes = vindex_bytes(req->app->vindex),
		.index_partitions = vindex_partition_count(req->app->vindex),
		.index_listed = vindex_listed_count(req->app->vindex),
		.tally_batches = ts.batches,
		.tally_store_waits = ts.store_waits,
		.tally_dropped = ts.dropped,
		.hot_hits = hs.hits,
		.hot_keys = hs.keys,
		.hot_bytes = hs.bytes,
		.stores_pending = bs.pending,
		.price_prompt_per_1k = cfg->price_prompt_per_1k,
		.price_completion_per_1k = cfg->price_completion_per_1k,
	};
	if (store_archive_on(cfg))
		archive_metrics(req, &x);
	struct sg_buf out;
	sg_buf_init(&out, 0);
	if (metrics_render(&out, &x) != SG_OK) {
		sg_buf_finish(&out);
		return http_send_error(req, 503, "server_error", "out_of_memory", "out of memory");
	}
	int status = http_send(req, 200, "text/plain; version=0.0.4; charset=utf-8",
			       out.data ? out.data : "", out.len, NULL);
	sg_buf_finish(&out);
	return status;
}

void route_metrics_hit_tokens(long long prompt, long long completion)
{
	if (prompt >= 1 && prompt < 1000000000000000LL)
		metrics_add(SG_C_TOKENS_SAVED_PROMPT, (uint64_t)prompt);
	if (completion >= 1 && completion < 1000000000000000LL)
		metrics_add(SG_C_TOKENS_SAVED_COMPLETION, (uint64_t)completion);
}
