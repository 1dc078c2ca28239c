/* semgate entry point: configuration, wiring and signals only. */
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "semgate/app/app.h"
#include "semgate/archive/archive.h"
#include "semgate/cache/cache.h"
#include "semgate/cache/sync.h"
#include "semgate/core/clock.h"
#include "semgate/core/config.h"
#include "semgate/cache/flight.h"
#include "semgate/cache/hotcache.h"
#include "semgate/http/http.h"
#include "semgate/core/log.h"
#include "semgate/routes/routes.h"
#include "semgate/store/sentinel.h"
#include "semgate/store/archive.h"
#include "semgate/store/store.h"
#include "semgate/cache/behind.h"
#include "semgate/summary/summary.h"
#include "semgate/cache/tally.h"
#include "semgate/vindex/vindex.h"
#include "semgate/upstream/upstream.h"

#ifndef SEMGATE_VERSION
#define SEMGATE_VERSION "0.1.0"
#endif

extern char **environ;

static volatile sig_atomic_t g_stop;

/* The first SIGTERM/SIGINT starts a graceful stop; a second one cuts the
 * grace period short. */
static void on_signal(int sig)
{
	(void)sig;
	if (g_stop < 2)
		g_stop++;
}

/* A crash leaves its stack in the log (addresses resolve with addr2line
 * against this binary), then dies of the same signal, core and all. Only
 * async-signal-safe calls, but backtrace(): it is called once at start, so
 * that it has loaded what it needs by then. Sanitizer builds keep their own
 * handlers. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SG_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SG_SANITIZED 1
#endif

#ifndef SG_SANITIZED
static void on_fatal(int sig)
{
	static const char head[] = "semgate: fatal signal ";
	char num[4];
	size_t k = 0;
	if (sig >= 10)
		num[k++] = (char)('0' + sig / 10 % 10);
	num[k++] = (char)('0' + sig % 10);
	num[k++] = '\n';
	void *frames[64];
	ssize_t w = write(STDERR_FILENO, head, sizeof(head) - 1);
	w += write(STDERR_FILENO, num, k);
	(void)w;
	backtrace_symbols_fd(frames, backtrace(frames, 64), STDERR_FILENO);
	raise(sig); /* SA_RESETHAND: the default action now */
}
#endif

static void catch_fatal(void)
{
#ifndef SG_SANITIZED
	/* the main thread's overflow gets its trace on this stack; other
	 * threads have none, and die of such a crash without one */
	static char alt[64 * 1024];
	stack_t ss = { .ss_sp = alt, .ss_size = sizeof(alt) };
	void *warm[1];
	backtrace(warm, 1);
	sigaltstack(&ss, NULL);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_fatal;
	sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
	const int sigs[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT };
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
#endif
}

/* Refuse new connections, let requests and streams in flight finish for up
 * to grace_ms, then abort what is left so the workers can be joined. */
static void drain(struct sg_http *http, long long grace_ms)
{
	struct sg_error e = { 0 };
	if (http_drain(http, &e) != SG_OK) {
		sg_log(SG_LOG_WARN, "cannot stop accepting (%s): stopping at once", e.msg);
		upstream_cancel_all();
		return;
	}
	const struct timespec tick = { 0, 20 * 1000 * 1000 };
	double t0 = sg_now_ms(), deadline = t0 + (double)grace_ms;
	sg_log(SG_LOG_INFO, "shutting down: new connections refused, %d requests in flight "
	       "(grace %lld ms)", http_inflight(http), grace_ms);
	/* one tick first: a connection accepted just before may not have
	 * reached its handler yet */
	nanosleep(&tick, NULL);
	while (http_inflight(http) > 0 && sg_now_ms() < deadline && g_stop < 2)
		nanosleep(&tick, NULL);
	int left = http_inflight(http);
	if (left > 0) {
		sg_log(SG_LOG_WARN, "shutting down: %d requests still in flight after %.0f ms; "
		       "cutting them", left, sg_now_ms() - t0);
		upstream_cancel_all();
		/* upstream calls now fail within about a second: let their
		 * handlers send the error before the connections are closed */
		deadline = sg_now_ms() + 2000;
		while (http_inflight(http) > 0 && sg_now_ms() < deadline && g_stop < 2)
			nanosleep(&tick, NULL);
	} else {
		sg_log(SG_LOG_INFO, "shutting down: requests in flight finished in %.0f ms",
		       sg_now_ms() - t0);
	}
}

/* Load every cached vector from Redis into the index. Redis being down at
 * start is not fatal: the cache fills again as answers are stored. */
/* The accounting's hook (tally_before_write): hits are counted on entries
 * that Redis has, so a batch counting hits waits for those entries' own
 * stores, and for nothing else. */
static bool settle_stores(void *b, const struct store_entry_hits *eh, size_t n)
{
	return behind_settle_entries(b, eh, n);
}

static void rebuild_index(struct sg_app *app)
{
	struct store *s = store_create(app->cfg);
	struct sg_error e = { 0 };
	size_t loaded = 0;
	double t0 = sg_now_ms();
	if (!s)
		return;
	if (cache_rebuild(app, s, NULL, NULL, NULL, &loaded, &e) != SG_OK)
		sg_log(SG_LOG_WARN, "index rebuild incomplete (%zu entries): %s", loaded, e.msg);
	else
		sg_log(SG_LOG_INFO, "index rebuilt from redis: %zu entries in %.0f ms", loaded,
		       sg_now_ms() - t0);
	store_destroy(s);
}

/* semgate --archiver: only drain the archive streams, until a signal. */
static int run_archiver(const struct sg_config *cfg)
{
	struct sg_error e = { 0 };
	if (!store_archive_on(cfg)) {
		fprintf(stderr, "semgate: --archiver needs SEMGATE_ARCHIVE_DSN\n");
		return 2;
	}
	config_log_summary(cfg);
	/* in Sentinel mode the archiver follows the master like the gateway */
	struct store_sentinel *sentinel = NULL;
	if (store_sentinel_start(cfg, &sentinel, &e) != SG_OK) {
		fprintf(stderr, "semgate: %s\n", e.msg);
		return 2;
	}
	struct archiver *a = archiver_start(cfg, &e);
	if (!a) {
		fprintf(stderr, "semgate: %s\n", e.msg);
		store_sentinel_stop(sentinel);
		return 1;
	}
	const struct timespec tick = { 0, 100 * 1000 * 1000 };
	while (!g_stop)
		nanosleep(&tick, NULL);
	archiver_stop(a);
	store_sentinel_stop(sentinel);
	sg_log(SG_LOG_INFO, "archiver stopped");
	return 0;
}

/* SEMGATE_ARCHIVE_WARM: refill an empty Redis from the archive before the
 * index loads from Redis. A failure is logged; the gateway starts cold. */
static void warm_from_archive(const struct sg_config *cfg)
{
	struct sg_error e = { 0 };
	size_t n = 0;
	double t0 = sg_now_ms();
	if (archive_warm(cfg, &n, &e) != SG_OK)
		sg_log(SG_LOG_WARN, "warm start from the archive incomplete (%zu entries): %s",
		       n, e.msg);
	else if (n)
		sg_log(SG_LOG_INFO, "warm start: %zu cache entries restored from the archive in "
		       "%.0f ms", n, sg_now_ms() - t0);
}

int main(int argc, char **argv)
{
	struct sg_config cfg;
	struct sg_error e = { 0 };
	int rc = 1;
	if (config_load(&cfg, argc, argv, environ, &e) != SG_OK) {
		fprintf(stderr, "semgate: %s\n", e.msg);
		config_finish(&cfg);
		return 2;
	}
	if (cfg.show_help) {
		config_print_help(stdout, argv[0]);
		config_finish(&cfg);
		return 0;
	}
	if (cfg.show_version) {
		printf("semgate %s\n", SEMGATE_VERSION);
		config_finish(&cfg);
		return 0;
	}
	sg_log_set_level((enum sg_log_level)sg_log_level_parse(cfg.log_level));
	signal(SIGPIPE, SIG_IGN);
	catch_fatal();
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	if (cfg.archiver) {
		rc = run_archiver(&cfg);
		config_finish(&cfg);
		return rc;
	}

	if (upstream_global_init() != SG_OK) {
		fprintf(stderr, "semgate: cannot initialise libcurl\n");
		config_finish(&cfg);
		return 1;
	}
	http_global_init();

	struct cache_sync *sync = NULL;
	struct store_sentinel *sentinel = NULL;
	struct archiver *archiver = NULL;
	struct sg_app app;
	if (app_init(&app, &cfg, &e) != SG_OK) {
		fprintf(stderr, "semgate: %s\n", e.msg);
		rc = 2;
		goto out;
	}
	if (config_is_cluster(&cfg) &&
	    ((cfg.redis_sentinels && cfg.redis_sentinels[0]) || cfg.redis_wait_replicas > 0)) {
		fprintf(stderr, "semgate: SEMGATE_REDIS_CLUSTER cannot be combined with %s\n",
			cfg.redis_sentinels && cfg.redis_sentinels[0] ? "SEMGATE_REDIS_SENTINELS" :
			"SEMGATE_REDIS_WAIT_REPLICAS (WAIT answers for one node only)");
		rc = 2;
		goto out;
	}
	/* before anything connects: in Sentinel mode it finds the master */
	if (store_sentinel_start(&cfg, &sentinel, &e) != SG_OK) {
		fprintf(stderr, "semgate: %s\n", e.msg);
		rc = 2;
		goto out;
	}
	config_log_summary(&cfg);
	if (app.embedder.local)
		sg_log(SG_LOG_INFO, "embeddings: built-in local embedder (%s, %d dims): lexical "
		       "similarity, not semantic; set SEMGATE_EMBED_URL for a real model",
		       app.embedder.model, app.embedder.local_dim);
	app.hot = hot_create((size_t)cfg.hot_cache_entries, HOT_MAX_ANSWER);
	app.flights = cfg.coalesce_wait_ms > 0 ? flights_create() : NULL;
	/* the event follower loads the index in the background when it first
	 * connects (and reloads it after every reconnection): the gateway
	 * listens at once and serves exact hits and misses meanwhile */
	atomic_store(&app.warming, true);
	if (store_archive_on(&cfg)) {
		if (cfg.archive_warm)
			warm_from_archive(&cfg);
		app.archive = archive_pg_create(cfg.archive_dsn);
		if (cfg.archive_thread && !(archiver = archiver_start(&cfg, &e)))
			sg_log(SG_LOG_WARN, "%s: the archive is not drained by this gateway", e.msg);
	}
	sync = cache_sync_start(&app, &e);
	if (!sync) {
		sg_log(SG_LOG_WARN, "%s: other gateways' entries will not be followed", e.msg);
		rebuild_index(&app);
		atomic_store(&app.warming, false);
	}

	app.summ = summarizer_start(&app, &e);
	if (!app.summ && strcmp(cfg.summary, "on") == 0) {
		fprintf(stderr, "semgate: %s\n", e.msg);
		rc = 2;
		goto out;
	}

	app.tally = tally_start(&cfg, &e);
	if (!app.tally)
		sg_log(SG_LOG_WARN, "%s: hits and misses are counted inline", e.msg);
	if (cfg.store_behind && !(app.behind = behind_start(&app, &e)))
		sg_log(SG_LOG_WARN, "%s: answers are stored before they are sent", e.msg);
	if (app.behind)
		tally_before_write(app.tally, settle_stores, app.behind);

	size_t nroutes;
	const struct sg_route *routes = routes_table(&nroutes);
	struct sg_http_opts opts = {
		.host = cfg.host,
		.port = (int)cfg.port,
		.threads = (int)cfg.threads,
		.max_body_bytes = cfg.max_body_bytes,
		.keepalive_ms = cfg.keepalive_ms,
		.request_timeout_ms = (int)cfg.request_timeout_ms,
		.guard = route_guard,
	};
	struct sg_http *http = http_start(&opts, routes, nroutes, &app, worker_create,
					  worker_destroy, &e);
	if (!http) {
		sg_log(SG_LOG_ERROR, "%s", e.msg);
		goto out;
	}
	sg_log(SG_LOG_INFO, "semgate %s listening on http://%s:%d", SEMGATE_VERSION,
	       cfg.host, http_port(http));
	const struct timespec tick = { 0, 100 * 1000 * 1000 };
	double next_expire = sg_now_ms() + 5000;
	while (!g_stop) {
		nanosleep(&tick, NULL);
		if (sg_now_ms() >= next_expire) {
			/* give back the rows of entries whose TTL has passed */
			vindex_expire(app.vindex, sg_wall_ms());
			next_expire = sg_now_ms() + 5000;
		}
	}
	drain(http, cfg.shutdown_grace_ms);
	http_stop(http);
	sg_log(SG_LOG_INFO, "stopped");
	rc = 0;
out:
	/* after http_stop: no request can kick it; a summary call still in
	 * flight is cut (its messages stay pending for the next start) */
	if (app.summ)
		upstream_cancel_all();
	summarizer_stop(app.summ);
	app.summ = NULL;
	tally_stop(app.tally);  /* after http_stop: no request can queue more */
	app.tally = NULL;
	behind_stop(app.behind); /* after the tally, which settles it */
	app.behind = NULL;
	cache_sync_stop(sync);
	store_sentinel_stop(sentinel);
	archiver_stop(archiver);
	archive_pg_destroy(app.archive);
	app.archive = NULL;
	hot_destroy(app.hot);
	app.hot = NULL;
	flights_destroy(app.flights); /* after http_stop: no flight is open */
	app.flights = NULL;
	app_finish(&app);
	http_global_cleanup();
	upstream_global_cleanup();
	config_finish(&cfg);
	return rc;
}
