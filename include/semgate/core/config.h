/* Configuration: every SEMGATE_* setting is one row of a table in config.c;
 * parsing, range checks, --help and the start-up summary all come from it.
 * Secrets are never printed by anything in this module. */
#ifndef SEMGATE_CONFIG_H
#define SEMGATE_CONFIG_H

#include <stdbool.h>
#include <stdio.h>
#include "semgate/core/err.h"

struct sg_config {
	/* server */
	char *host;
	long long port;
	long long threads;
	long long max_body_bytes;
	long long keepalive_ms;
	long long shutdown_grace_ms;
	long long request_timeout_ms;
	char *log_level;
	/* redis */
	char *redis_host;
	long long redis_port;
	char *redis_password;
	long long redis_db;
	char *redis_cluster;  /* seed nodes "host:port,..."; empty: one server */
	char *redis_prefix;
	long long redis_timeout_ms;
	char *redis_sentinels;   /* "host:port,..."; empty: single server */
	char *redis_master_name;
	long long redis_wait_replicas;
	long long redis_wait_timeout_ms;
	/* upstream LLM */
	char *upstream_url;
	char *upstream_api_key;
	long long upstream_connect_timeout_ms;
	long long upstream_timeout_ms;
	long long max_upstream_bytes;
	/* memory */
	long long history_max;
	long long history_ttl;
	char *memory_cache;      /* "first", "all" or "off" */
	char *summary;           /* "on" or "off" */
	char *summary_model;
	long long summary_max_tokens;
	long long summary_max_bytes;
	long long summary_batch;
	long long summary_input_bytes;
	long long summary_pending_max;
	long long summary_timeout_ms;
	long long summary_retry_ms;
	long long summary_retry_max_ms;
	long long summary_threads;
	long long summary_sweep_s;
	long long summary_queue;
	char *prompts_dir;
	char *default_prompt;
	/* cache */
	long long cache_ttl;
	long long hot_cache_entries;
	double semantic_threshold;
	double similarity_floor;   /* lookups seek rows at least this similar */
	char *verify;            /* "strict", "basic" or "off" */
	long long verify_candidates;
	long long coalesce_wait_ms;
	long long store_behind;     /* 1: a miss's store is written behind its answer */
	long long index_lists_from; /* rows from which a partition has lists; 0: never */
	long long index_probe;      /* lists a lookup of a clustered partition reads */
	long long shadow;        /* 0 or 1 */
	double shadow_agree;
	char *embed_url;
	char *embed_model;
	char *embed_api_key;
	long long embed_dim;
	long long embed_timeout_ms;
	/* stats */
	double price_prompt_per_1k;
	double price_completion_per_1k;
	long long series_minutes_ttl;
	long long series_hours_ttl;
	/* auth and limits */
	char *api_keys;          /* "key:tenant,..." (secret) */
	char *api_keys_file;     /* one "key tenant" per line */
	char *admin_keys;        /* "key,key": see every tenant (secret) */
	char *rate_limit;        /* "N/Ws", empty: no limit */
	/* write-behind archive (src/archive/) */
	char *archive_dsn;       /* libpq conninfo (secret); empty: off */
	long long archive_stream_max;
	long long archive_batch;
	long long archive_thread;  /* 0 or 1 */
	long long archive_claim_ms;
	long long archive_warm;    /* 0 or 1 */

	/* set by config_load when the command line asked for these */
	bool show_help;
	bool show_version;
	bool archiver;           /* --archiver: run the archiver only */
};

/* Fill cfg from defaults, then the environment (envp, NULL-terminated
 * "NAME=value" strings; may be NULL), then argv (--flag VALUE or
 * --flag=VALUE; argv[0] is skipped). On a bad value returns
 * SG_ERR_BAD_REQUEST with a message naming the variable or flag, the value
 * and the allowed range. cfg must be released with config_finish even on
 * failure. Not thread-safe; call once at start. */
enum sg_err config_load(struct sg_config *cfg, int argc, char **argv,
			char **envp, struct sg_error *e);

/* Free every string in cfg. Accepts NULL. */
void config_finish(struct sg_config *cfg);

/* Print usage with every option, its variable, default and range. */
void config_print_help(FILE *out, const char *argv0);

/* Log the effective configuration at info level, secrets shown as "(set)". */
void config_log_summary(const struct sg_config *cfg);

/* Longest host name in a "host:port" setting (SEMGATE_REDIS_CLUSTER). */
#define SG_HOST_MAX 63

/* Parse "host:port" (the last ':' splits, so "::1:6379" works): a host of
 * 1..hcap-1 printable bytes without spaces or commas, a port in 1..65535.
 * False (nothing written) otherwise. */
bool config_host_port(const char *p, size_t len, char *host, size_t hcap, int *port);

/* True when the gateway talks to a Redis Cluster (SEMGATE_REDIS_CLUSTER
 * names seed nodes), false for one server or Sentinel. */
static inline bool config_is_cluster(const struct sg_config *cfg)
{
	return cfg->redis_cluster && cfg->redis_cluster[0];
}

#endif
