/* Process-wide state shared by the routes (struct sg_app, read-only after
 * start except where a member says otherwise) and each worker thread's own
 * connections (struct sg_worker, never shared between threads). */
#ifndef SEMGATE_APP_H
#define SEMGATE_APP_H

#include <stdatomic.h>

#include "semgate/core/config.h"
#include "semgate/embed/embed.h"
#include "semgate/core/ratelimit.h"
#include "semgate/upstream/upstream.h"

struct auth_keys;
struct store;
struct prompts;
struct tally;
struct hotcache;
struct vindex;

struct flights;
struct summarizer;
struct archive_pg;

struct sg_app {
	const struct sg_config *cfg;
	struct upstream_target llm;   /* the chat completions upstream */
	struct prompts *prompts;      /* named system prompts, read-only */
	struct embedder embedder;     /* read-only */
	struct vindex *vindex;        /* thread-safe (its own locks) */
	struct auth_keys *auth;       /* gateway API keys; NULL: open mode */
	struct rate_limit rate;       /* per-tenant limit; max 0: none */
	struct tally *tally;          /* hit/miss accounting; NULL: written inline */
	struct hotcache *hot;         /* hot exact copies; NULL: off */
	struct flights *flights;      /* single-flight of misses; NULL: off */
	struct behind *behind;        /* miss stores written behind; NULL: inline */
	struct summarizer *summ;      /* running summaries; NULL: SEMGATE_SUMMARY=off */
	struct archive_pg *archive;   /* archive reads (own lock); NULL: archive off */
	/* True from start until the index has been loaded from Redis once
	 * (set by main.c, cleared by the event follower): semantic lookups
	 * are skipped and counted as "warming" meanwhile. */
	atomic_bool warming;
};

struct sg_worker {
	struct sg_app *app;
	struct store *store;          /* created on first use */
	struct upstream *up;          /* created on first use */
};

/* civetweb thread hooks (see http.h). */
struct sg_worker *worker_create(struct sg_app *app);
void worker_destroy(struct sg_worker *w);

/* This thread's Redis store / HTTP client, created on first use; NULL only
 * when out of memory. */
struct store *worker_store(struct sg_worker *w);
struct upstream *worker_upstream(struct sg_worker *w);

/* Fill app from cfg (cfg borrowed; must outlive app): load prompts and
 * check that the default prompt exists. On failure e names the problem;
 * app_finish must still be called. */
enum sg_err app_init(struct sg_app *app, const struct sg_config *cfg,
		     struct sg_error *e);
void app_finish(struct sg_app *app);

#endif
