/* Process-wide application state and per-thread worker state: the wiring
 * between configuration and the adapters' handles. Holds no request data. */
#include <stdlib.h>

#include <string.h>

#include "semgate/app/app.h"
#include "semgate/http/auth.h"
#include "semgate/core/log.h"
#include "semgate/core/prompts.h"
#include "semgate/store/store.h"
#include "semgate/vindex/vindex.h"

enum sg_err app_init(struct sg_app *app, const struct sg_config *cfg,
		     struct sg_error *e)
{
	memset(app, 0, sizeof(*app));
	app->cfg = cfg;
	app->llm = (struct upstream_target){
		.base_url = cfg->upstream_url,
		.api_key = cfg->upstream_api_key,
		.connect_timeout_ms = cfg->upstream_connect_timeout_ms,
		.timeout_ms = cfg->upstream_timeout_ms,
		.max_bytes = (size_t)cfg->max_upstream_bytes,
	};
	embedder_init(&app->embedder, cfg);
	if (auth_load(cfg, &app->auth, e) != SG_OK ||
	    ratelimit_parse(cfg->rate_limit, &app->rate, e) != SG_OK)
		return e->code;
	if (!app->auth)
		sg_log(SG_LOG_WARN, "no SEMGATE_API_KEYS or SEMGATE_API_KEYS_FILE: open mode, "
		       "every client is tenant 'default' and needs no key");
	else
		sg_log(SG_LOG_INFO, "auth: %zu gateway API keys loaded; /v1/* needs one",
		       auth_count(app->auth));
	app->vindex = vindex_create();
	if (!app->vindex)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	struct vindex_tuning vt = { .kernel = VINDEX_KERNEL_AUTO, .bound_scale = 1.0,
				    .lists_min_rows = (size_t)cfg->index_lists_from,
				    .probe = (int)cfg->index_probe };
	if (vindex_set_tuning(app->vindex, &vt, e) != SG_OK)
		return e->code;
	app->prompts = prompts_load(cfg->prompts_dir, e);
	if (!app->prompts)
		return e->code;
	if (cfg->default_prompt[0] && !prompts_get(app->prompts, cfg->default_prompt))
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"SEMGATE_DEFAULT_PROMPT: no prompt '%s' in %s (expected %s/%s.txt)",
			cfg->default_prompt, cfg->prompts_dir, cfg->prompts_dir,
			cfg->default_prompt);
	return SG_OK;
}

void app_finish(struct sg_app *app)
{
	auth_destroy(app->auth);
	app->auth = NULL;
	prompts_destroy(app->prompts);
	app->prompts = NULL;
	vindex_destroy(app->vindex);
	app->vindex = NULL;
}

struct sg_worker *worker_create(struct sg_app *app)
{
	struct sg_worker *w = calloc(1, sizeof(*w));
	if (w)
		w->app = app;
	return w;
}

void worker_destroy(struct sg_worker *w)
{
	if (!w)
		return;
	store_destroy(w->store);
	upstream_destroy(w->up);
	free(w);
}

struct store *worker_store(struct sg_worker *w)
{
	if (!w->store)
		w->store = store_create(w->app->cfg);
	return w->store;
}

struct upstream *worker_upstream(struct sg_worker *w)
{
	if (!w->up)
		w->up = upstream_create();
	return w->up;
}
