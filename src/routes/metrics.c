/* GET /metrics (Prometheus text) and the one helper routes use to count
 * the tokens a cache hit saved. Open like /healthz; it shows counts and
 * timings only, never a tenant, key or request text. */
#include <stdlib.h>

#include "semgate/app/app.h"
#include "semgate/cache/behind.h"
#include "semgate/cache/hotcache.h"
#include "semgate/core/json.h"
#include "semgate/core/metrics.h"
#include "semgate/routes/routes.h"
#include "semgate/store/sentinel.h"
#include "semgate/store/store.h"
#include "semgate/summary/summary.h"
#include "semgate/cache/tally.h"
#include "semgate/vindex/vindex.h"

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
		.tally_batches = ts.batches,
		.tally_dropped = ts.dropped,
		.hot_hits = hs.hits,
		.hot_keys = hs.keys,
		.hot_bytes = hs.bytes,
		.stores_pending = bs.pending,
		.price_prompt_per_1k = cfg->price_prompt_per_1k,
		.price_completion_per_1k = cfg->price_completion_per_1k,
	};
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

void route_metrics_hit_tokens(const cJSON *completion)
{
	const cJSON *usage = sg_json_obj(completion, "usage");
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens");
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
	if (cJSON_IsNumber(p) && p->valuedouble >= 1 && p->valuedouble < 1e15)
		metrics_add(SG_C_TOKENS_SAVED_PROMPT, (uint64_t)p->valuedouble);
	if (cJSON_IsNumber(c) && c->valuedouble >= 1 && c->valuedouble < 1e15)
		metrics_add(SG_C_TOKENS_SAVED_COMPLETION, (uint64_t)c->valuedouble);
}
