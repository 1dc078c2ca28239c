/* Configuration table, parsing and validation. Every setting is one row of
 * config_rows[]; nothing else in the program reads SEMGATE_* variables.
 * Secrets (passwords, API keys) are never echoed, not even in error text. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/buf.h"
#include "semgate/core/config.h"
#include "semgate/core/log.h"

enum cfg_type { CFG_STR, CFG_OPTSTR, CFG_SECRET, CFG_INT, CFG_LOGLEVEL, CFG_URL,
		CFG_OPTURL, CFG_RATIO, CFG_PRICE, CFG_CHOICE };

struct cfg_row {
	const char *env;
	const char *flag;
	enum cfg_type type;
	const char *def;
	long long min, max;
	size_t off;
	const char *help;
	const char *choices; /* CFG_CHOICE: the allowed values, "a|b|c" */
};

#define OFF(f) offsetof(struct sg_config, f)

/* Only CFG_CHOICE rows name .choices; the others leave it NULL. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
static const struct cfg_row config_rows[] = {
	{ "SEMGATE_HOST", "--host", CFG_STR, "127.0.0.1", 0, 0, OFF(host),
	  "address to listen on" },
	{ "SEMGATE_PORT", "--port", CFG_INT, "8080", 0, 65535, OFF(port),
	  "TCP port to listen on (0 picks a free one)" },
	{ "SEMGATE_THREADS", "--threads", CFG_INT, "256", 2, 4096, OFF(threads),
	  "worker threads; each open connection or stream holds one" },
	{ "SEMGATE_MAX_BODY_BYTES", "--max-body-bytes", CFG_INT, "4194304", 1024,
	  1073741824, OFF(max_body_bytes), "largest request body accepted (413 above)" },
	{ "SEMGATE_KEEPALIVE_MS", "--keepalive-ms", CFG_INT, "500", 0, 600000,
	  OFF(keepalive_ms), "how long an idle keep-alive connection may hold a thread" },
	{ "SEMGATE_SHUTDOWN_GRACE_MS", "--shutdown-grace-ms", CFG_INT, "10000", 0, 3600000,
	  OFF(shutdown_grace_ms),
	  "on SIGTERM/SIGINT: how long requests and streams in flight may run on" },
	{ "SEMGATE_REQUEST_TIMEOUT_MS", "--request-timeout-ms", CFG_INT, "30000", 100, 3600000,
	  OFF(request_timeout_ms),
	  "longest a client may take to send a request's headers (slow clients are cut)" },
	{ "SEMGATE_LOG_LEVEL", "--log-level", CFG_LOGLEVEL, "info", 0, 0, OFF(log_level),
	  "debug, info, warn or error" },
	{ "SEMGATE_REDIS_HOST", "--redis-host", CFG_STR, "127.0.0.1", 0, 0,
	  OFF(redis_host), "Redis host" },
	{ "SEMGATE_REDIS_PORT", "--redis-port", CFG_INT, "6379", 1, 65535,
	  OFF(redis_port), "Redis port" },
	{ "SEMGATE_REDIS_PASSWORD", "--redis-password", CFG_SECRET, "", 0, 0,
	  OFF(redis_password), "Redis AUTH password (empty: no AUTH)" },
	{ "SEMGATE_REDIS_DB", "--redis-db", CFG_INT, "0", 0, 100000, OFF(redis_db),
	  "Redis database number (SELECT)" },
	{ "SEMGATE_REDIS_CLUSTER", "--redis-cluster", CFG_OPTSTR, "", 0, 0, OFF(redis_cluster),
	  "Redis Cluster seed nodes host:port,host:port,... (empty: the one Redis at "
	  "SEMGATE_REDIS_HOST/PORT)" },
	{ "SEMGATE_REDIS_PREFIX", "--redis-prefix", CFG_STR, "sg:", 0, 0,
	  OFF(redis_prefix), "prefix of every Redis key" },
	{ "SEMGATE_REDIS_TIMEOUT_MS", "--redis-timeout-ms", CFG_INT, "500", 10,
	  60000, OFF(redis_timeout_ms), "Redis connect and command timeout" },
	{ "SEMGATE_REDIS_SENTINELS", "--redis-sentinels", CFG_OPTSTR, "", 0, 0,
	  OFF(redis_sentinels),
	  "Sentinel mode: host:port,... of Redis Sentinels that name the master, followed on "
	  "failover (empty: SEMGATE_REDIS_HOST and SEMGATE_REDIS_PORT are the server)" },
	{ "SEMGATE_REDIS_MASTER_NAME", "--redis-master-name", CFG_STR, "mymaster", 0, 0,
	  OFF(redis_master_name), "Sentinel mode: the name the sentinels monitor the master by" },
	{ "SEMGATE_REDIS_WAIT_REPLICAS", "--redis-wait-replicas", CFG_INT, "0", 0, 64,
	  OFF(redis_wait_replicas),
	  "a conversation turn is acknowledged only once this many replicas have it (WAIT); "
	  "0: off" },
	{ "SEMGATE_REDIS_WAIT_TIMEOUT_MS", "--redis-wait-timeout-ms", CFG_INT, "1000", 1, 60000,
	  OFF(redis_wait_timeout_ms),
	  "how long a conversation write waits for SEMGATE_REDIS_WAIT_REPLICAS replicas "
	  "(503 replicas_unconfirmed past it)" },
	{ "SEMGATE_UPSTREAM_URL", "--upstream-url", CFG_URL, "https://api.openai.com/v1",
	  0, 0, OFF(upstream_url), "base URL of the OpenAI-compatible LLM API" },
	{ "SEMGATE_UPSTREAM_API_KEY", "--upstream-api-key", CFG_SECRET, "", 0, 0,
	  OFF(upstream_api_key), "API key sent upstream as a Bearer token" },
	{ "SEMGATE_UPSTREAM_CONNECT_TIMEOUT_MS", "--upstream-connect-timeout-ms",
	  CFG_INT, "5000", 1, 600000, OFF(upstream_connect_timeout_ms),
	  "upstream connect timeout" },
	{ "SEMGATE_UPSTREAM_TIMEOUT_MS", "--upstream-timeout-ms", CFG_INT, "120000",
	  1, 3600000, OFF(upstream_timeout_ms), "upstream total timeout per call" },
	{ "SEMGATE_MAX_UPSTREAM_BYTES", "--max-upstream-bytes", CFG_INT, "16777216",
	  1024, 1073741824, OFF(max_upstream_bytes),
	  "largest upstream response accepted (502 above)" },
	{ "SEMGATE_HISTORY_MAX", "--history-max", CFG_INT, "20", 1, 10000,
	  OFF(history_max), "messages kept per conversation (older ones are trimmed)" },
	{ "SEMGATE_HISTORY_TTL", "--history-ttl", CFG_INT, "86400", 1, 31536000,
	  OFF(history_ttl), "seconds a conversation lives after its last write" },
	{ "SEMGATE_MEMORY_CACHE", "--memory-cache", CFG_CHOICE, "first", 0, 0, OFF(memory_cache),
	  "which memory-mode turns use the cache: first (only a conversation's first turn, "
	  "whose question others can ask too), all, or off", .choices = "first|all|off" },
	{ "SEMGATE_SUMMARY", "--summary", CFG_CHOICE, "off", 0, 0, OFF(summary),
	  "running summaries: messages trimmed out of a conversation's window are folded by the "
	  "LLM into a summary, written behind, sent as a system message ahead of the window",
	  .choices = "on|off" },
	{ "SEMGATE_SUMMARY_MODEL", "--summary-model", CFG_STR, "gpt-4o-mini", 0, 0,
	  OFF(summary_model), "model the summaries are asked of (the chat upstream, its key)" },
	{ "SEMGATE_SUMMARY_MAX_TOKENS", "--summary-max-tokens", CFG_INT, "512", 0, 100000,
	  OFF(summary_max_tokens), "max_tokens of a summary call (0: not sent)" },
	{ "SEMGATE_SUMMARY_MAX_BYTES", "--summary-max-bytes", CFG_INT, "8192", 256, 65536,
	  OFF(summary_max_bytes), "longest summary kept; a longer answer is cut at a UTF-8 boundary" },
	{ "SEMGATE_SUMMARY_BATCH", "--summary-batch", CFG_INT, "64", 1, 1000,
	  OFF(summary_batch), "pending messages folded in by one summary call, oldest first" },
	{ "SEMGATE_SUMMARY_INPUT_BYTES", "--summary-input-bytes", CFG_INT, "32768", 1024,
	  4194304, OFF(summary_input_bytes),
	  "most message text one summary call sends (besides the summary so far); a longer "
	  "message is cut to half of it" },
	{ "SEMGATE_SUMMARY_PENDING_MAX", "--summary-pending-max", CFG_INT, "1000", 1, 1000000,
	  OFF(summary_pending_max),
	  "messages a conversation may have waiting for its summary; above it the oldest are "
	  "dropped, counted and logged" },
	{ "SEMGATE_SUMMARY_TIMEOUT_MS", "--summary-timeout-ms", CFG_INT, "60000", 100, 3600000,
	  OFF(summary_timeout_ms), "total timeout of one summary call" },
	{ "SEMGATE_SUMMARY_RETRY_MS", "--summary-retry-ms", CFG_INT, "2000", 10, 3600000,
	  OFF(summary_retry_ms), "back-off after a failed summary call; doubles on each failure" },
	{ "SEMGATE_SUMMARY_RETRY_MAX_MS", "--summary-retry-max-ms", CFG_INT, "300000", 10,
	  86400000, OFF(summary_retry_max_ms),
	  "longest back-off: a failing conversation is retried at most once per this long" },
	{ "SEMGATE_SUMMARY_SWEEP_S", "--summary-sweep-s", CFG_INT, "300", 0, 86400,
	  OFF(summary_sweep_s),
	  "how often the summarizer scans Redis for conversations with messages still waiting "
	  "(left by a restart or a full queue); it always scans once at start (0: only then)" },
	{ "SEMGATE_SUMMARY_THREADS", "--summary-threads", CFG_INT, "1", 1, 4,
	  OFF(summary_threads), "summarizer threads (summary calls in flight at once)" },
	{ "SEMGATE_SUMMARY_QUEUE", "--summary-queue", CFG_INT, "1024", 1, 1000000,
	  OFF(summary_queue),
	  "conversations the summarizer tracks at once; when full, a conversation's messages "
	  "stay pending until its next turn or the next sweep" },
	{ "SEMGATE_PROMPTS_DIR", "--prompts-dir", CFG_STR, "prompts", 0, 0,
	  OFF(prompts_dir), "directory of named system prompts (NAME.txt)" },
	{ "SEMGATE_DEFAULT_PROMPT", "--default-prompt", CFG_OPTSTR, "", 0, 0,
	  OFF(default_prompt), "prompt prepended when a request has no system message" },
	{ "SEMGATE_CACHE_TTL", "--cache-ttl", CFG_INT, "86400", 1, 31536000,
	  OFF(cache_ttl), "seconds a cached answer lives (per request: X-Semgate-TTL)" },
	{ "SEMGATE_HOT_CACHE_ENTRIES", "--hot-cache-entries", CFG_INT, "4096", 0, 1000000,
	  OFF(hot_cache_entries),
	  "exact answers (up to 16 KiB each) kept in process memory, invalidated by Redis "
	  "key tracking (0: off)" },
	{ "SEMGATE_SEMANTIC_THRESHOLD", "--semantic-threshold", CFG_RATIO, "0.85", 0, 1,
	  OFF(semantic_threshold),
	  "cosine similarity needed for a semantic hit, in (0, 1] (per request: X-Semgate-Threshold)" },
	{ "SEMGATE_SIMILARITY_FLOOR", "--similarity-floor", CFG_RATIO, "0.6", 0, 1,
	  OFF(similarity_floor),
	  "a semantic lookup looks only for entries at least this similar (or the threshold, "
	  "when lower): a miss reports its best similarity only from here up, and a lower "
	  "floor makes misses in big scopes slower" },
	{ "SEMGATE_VERIFY", "--verify", CFG_CHOICE, "strict", 0, 0, OFF(verify),
	  "hit verifier: strict (every rule), basic (numbers, negation, opposed words) or off "
	  "(per request: X-Semgate-Verify)", .choices = "strict|basic|off" },
	{ "SEMGATE_VERIFY_CANDIDATES", "--verify-candidates", CFG_INT, "4", 1, 16,
	  OFF(verify_candidates),
	  "semantic candidates above the threshold the verifier may try, best first" },
	{ "SEMGATE_COALESCE_WAIT_MS", "--coalesce-wait-ms", CFG_INT, "60000", 0, 600000,
	  OFF(coalesce_wait_ms),
	  "concurrent misses that the first one's answer would answer wait this long for it "
	  "instead of calling the LLM again (0: off)" },
	{ "SEMGATE_INDEX_LISTS_FROM", "--index-lists-from", CFG_INT, "8192", 0, 2147483647,
	  OFF(index_lists_from),
	  "a partition of at least this many entries is clustered into lists and a semantic "
	  "lookup reads only the SEMGATE_INDEX_PROBE nearest ones (0: every lookup reads every "
	  "entry)" },
	{ "SEMGATE_INDEX_PROBE", "--index-probe", CFG_INT, "16", 1, 256, OFF(index_probe),
	  "lists of a clustered partition a semantic lookup reads (more: fewer missed hits, "
	  "slower misses)" },
	{ "SEMGATE_STORE_BEHIND", "--store-behind", CFG_INT, "1", 0, 1, OFF(store_behind),
	  "1: a miss's answer goes to the client before its store is written to Redis (a "
	  "repeat meanwhile is answered from the gateway's memory); 0: stored first" },
	{ "SEMGATE_SHADOW", "--shadow", CFG_INT, "0", 0, 1, OFF(shadow),
	  "shadow mode: a would-be semantic hit goes upstream anyway and the two answers are "
	  "compared, for GET /v1/cache/calibration (per request: X-Semgate-Shadow)" },
	{ "SEMGATE_SHADOW_AGREE", "--shadow-agree", CFG_RATIO, "0.9", 0, 1, OFF(shadow_agree),
	  "shadow mode: answers at least this similar (embedding cosine) agree" },
	{ "SEMGATE_EMBED_URL", "--embed-url", CFG_OPTURL, "", 0, 0, OFF(embed_url),
	  "base URL of an OpenAI-compatible embeddings API (empty: built-in local embedder)" },
	{ "SEMGATE_EMBED_MODEL", "--embed-model", CFG_STR, "text-embedding-3-small", 0, 0,
	  OFF(embed_model), "embedding model sent to SEMGATE_EMBED_URL" },
	{ "SEMGATE_EMBED_API_KEY", "--embed-api-key", CFG_SECRET, "", 0, 0,
	  OFF(embed_api_key), "API key for the embeddings API" },
	{ "SEMGATE_EMBED_DIM", "--embed-dim", CFG_INT, "384", 8, 8192, OFF(embed_dim),
	  "dimension of the built-in local embedder" },
	{ "SEMGATE_EMBED_TIMEOUT_MS", "--embed-timeout-ms", CFG_INT, "2000", 1, 600000,
	  OFF(embed_timeout_ms), "embedding call timeout (on failure the request goes on as a miss)" },
	{ "SEMGATE_PRICE_PROMPT_PER_1K", "--price-prompt-per-1k", CFG_PRICE, "0", 0, 1000000,
	  OFF(price_prompt_per_1k), "price of 1k prompt tokens, for the estimated cost saved" },
	{ "SEMGATE_PRICE_COMPLETION_PER_1K", "--price-completion-per-1k", CFG_PRICE, "0", 0,
	  1000000, OFF(price_completion_per_1k),
	  "price of 1k completion tokens, for the estimated cost saved" },
	{ "SEMGATE_SERIES_MINUTES_TTL", "--series-minutes-ttl", CFG_INT, "604800", 3600,
	  31536000, OFF(series_minutes_ttl),
	  "seconds each per-minute counter hash of GET /v1/cache/timeseries is kept" },
	{ "SEMGATE_SERIES_HOURS_TTL", "--series-hours-ttl", CFG_INT, "7776000", 3600,
	  315360000, OFF(series_hours_ttl),
	  "seconds each per-hour counter hash (steps of whole hours) is kept" },
	{ "SEMGATE_API_KEYS", "--api-keys", CFG_SECRET, "", 0, 0, OFF(api_keys),
	  "gateway API keys as key:tenant,key:tenant (empty: open mode, tenant default)" },
	{ "SEMGATE_API_KEYS_FILE", "--api-keys-file", CFG_OPTSTR, "", 0, 0, OFF(api_keys_file),
	  "file of gateway API keys, one 'key tenant' per line" },
	{ "SEMGATE_ADMIN_KEYS", "--admin-keys", CFG_SECRET, "", 0, 0, OFF(admin_keys),
	  "admin keys as key,key: the cache API of any tenant named by X-Semgate-Tenant "
	  "(the dashboard's tenant picker)" },
	{ "SEMGATE_RATE_LIMIT", "--rate-limit", CFG_OPTSTR, "", 0, 0, OFF(rate_limit),
	  "requests per tenant per window, as N/Ws (e.g. 100/60s; empty: no limit)" },
	{ "SEMGATE_ARCHIVE_DSN", "--archive-dsn", CFG_SECRET, "", 0, 0, OFF(archive_dsn),
	  "PostgreSQL connection string of the write-behind archive (empty: archive off, "
	  "nothing is written to its stream)" },
	{ "SEMGATE_ARCHIVE_STREAM_MAX", "--archive-stream-max", CFG_INT, "1000000", 100,
	  1000000000, OFF(archive_stream_max),
	  "records the archive stream keeps (XADD MAXLEN ~); older unarchived ones are "
	  "dropped and counted" },
	{ "SEMGATE_ARCHIVE_BATCH", "--archive-batch", CFG_INT, "256", 1, 10000,
	  OFF(archive_batch), "records the archiver writes to PostgreSQL per transaction" },
	{ "SEMGATE_ARCHIVE_THREAD", "--archive-thread", CFG_INT, "1", 0, 1,
	  OFF(archive_thread),
	  "run the archiver as a thread of the gateway (0: only semgate --archiver drains)" },
	{ "SEMGATE_ARCHIVE_CLAIM_MS", "--archive-claim-ms", CFG_INT, "30000", 100, 86400000,
	  OFF(archive_claim_ms),
	  "records another archiver has held unacknowledged this long are claimed (XAUTOCLAIM)" },
	{ "SEMGATE_ARCHIVE_WARM", "--archive-warm", CFG_INT, "0", 0, 1, OFF(archive_warm),
	  "on start with no cache entries in Redis, restore them from the archive" },
};
#pragma GCC diagnostic pop

#define N_ROWS (sizeof(config_rows) / sizeof(config_rows[0]))


bool config_host_port(const char *p, size_t len, char *host, size_t hcap, int *port)
{
	const char *colon = NULL;
	for (size_t i = 0; i < len; i++) {
		if (p[i] <= ' ' || (unsigned char)p[i] >= 0x7f || p[i] == ',')
			return false;
		if (p[i] == ':')
			colon = p + i;
	}
	if (!colon || colon == p || (size_t)(colon - p) >= hcap)
		return false;
	long v = 0;
	for (const char *q = colon + 1; q < p + len; q++) {
		if (*q < '0' || *q > '9' || v > 65535)
			return false;
		v = v * 10 + (*q - '0');
	}
	if (v < 1 || v > 65535)
		return false;
	memcpy(host, p, (size_t)(colon - p));
	host[colon - p] = '\0';
	*port = (int)v;
	return true;
}

/* "host:port,host:port,...": 1..16 entries, each as config_host_port takes. */
static bool cluster_seeds_ok(const char *val)
{
	int n = 0;
	for (const char *p = val; *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		char host[SG_HOST_MAX + 1];
		int port;
		if (!config_host_port(p, len, host, sizeof(host), &port) || ++n > 16)
			return false;
		p += len;
		if (*p == ',' && !*++p)
			return false;
	}
	return n > 0;
}

static char **str_field(struct sg_config *cfg, const struct cfg_row *r)
{
	return (char **)((char *)cfg + r->off);
}

static long long *int_field(struct sg_config *cfg, const struct cfg_row *r)
{
	return (long long *)((char *)cfg + r->off);
}

static bool is_string_type(enum cfg_type t)
{
	switch (t) {
	case CFG_STR:
	case CFG_OPTSTR:
	case CFG_SECRET:
	case CFG_LOGLEVEL:
	case CFG_URL:
	case CFG_OPTURL:
	case CFG_CHOICE:
		return true;
	case CFG_INT:
	case CFG_RATIO:
	case CFG_PRICE:
		return false;
	}
	return false;
}


/* Name shown in errors: the source the value came from. */
static enum sg_err set_value(struct sg_config *cfg, const struct cfg_row *r,
			     const char *val, const char *source, struct sg_error *e)
{
	const char *shown = r->type == CFG_SECRET ? "(hidden)" : val;
	switch (r->type) {
	case CFG_INT: {
		errno = 0;
		char *end = NULL;
		long long v = strtoll(val, &end, 10);
		if (errno || end == val || *end != '\0')
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: '%s' is not an integer (allowed %lld..%lld)",
				source, shown, r->min, r->max);
		if (v < r->min || v > r->max)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: %lld is out of range (allowed %lld..%lld)",
				source, v, r->min, r->max);
		*int_field(cfg, r) = v;
		return SG_OK;
	}
	case CFG_LOGLEVEL:
		if (sg_log_level_parse(val) < 0)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: '%s' is not a log level (debug, info, warn, error)",
				source, shown);
		break;
	case CFG_RATIO: {
		errno = 0;
		char *end = NULL;
		double v = strtod(val, &end);
		if (errno || end == val || *end != '\0' || !isfinite(v) || v <= 0.0 || v > 1.0)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: '%s' is not a number in (0, 1]", source, shown);
		*(double *)((char *)cfg + r->off) = v;
		return SG_OK;
	}
	case CFG_PRICE: {
		errno = 0;
		char *end = NULL;
		double v = strtod(val, &end);
		if (errno || end == val || *end != '\0' || !isfinite(v) || v < 0.0 ||
		    v > (double)r->max)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: '%s' is not a price in 0..%lld", source, shown, r->max);
		*(double *)((char *)cfg + r->off) = v;
		return SG_OK;
	}
	case CFG_OPTURL:
		if (val[0] == '\0')
			break;
		/* fall through */
	case CFG_URL:
		if (strncmp(val, "http://", 7) != 0 && strncmp(val, "https://", 8) != 0)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: '%s' is not an http:// or https:// URL", source, shown);
		break;
	case CFG_STR:
		if (r->off == OFF(redis_prefix)) {
			for (const char *p = val; *p; p++)
				if (*p <= ' ' || *p == '*' || *p == '?' || *p == '[' ||
				    *p == ']' || *p == '\\' || (unsigned char)*p >= 0x7f)
					return sg_error_set(e, SG_ERR_BAD_REQUEST,
						"%s: '%s' may only hold printable ASCII without "
						"spaces or glob characters", source, shown);
		} else if (val[0] == '\0') {
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: must not be empty", source);
		}
		break;
	case CFG_CHOICE:
		if (!sg_list_has(r->choices, '|', val))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: '%s' is not one of %s", source, shown, r->choices);
		break;
	case CFG_OPTSTR:
		if (r->off == OFF(redis_cluster) && val[0] && !cluster_seeds_ok(val))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: '%s' is not a list of host:port (at most 16, comma-separated)",
				source, shown);
		break;
	case CFG_SECRET:
		break;
	}
	char *copy = strdup(val);
	if (!copy)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	char **slot = str_field(cfg, r);
	free(*slot);
	*slot = copy;
	return SG_OK;
}

static const char *env_lookup(char **envp, const char *name)
{
	if (!envp)
		return NULL;
	size_t n = strlen(name);
	for (char **p = envp; *p; p++)
		if (strncmp(*p, name, n) == 0 && (*p)[n] == '=')
			return *p + n + 1;
	return NULL;
}

static const struct cfg_row *find_flag(const char *arg, size_t len)
{
	for (size_t i = 0; i < N_ROWS; i++)
		if (strlen(config_rows[i].flag) == len &&
		    strncmp(config_rows[i].flag, arg, len) == 0)
			return &config_rows[i];
	return NULL;
}

enum sg_err config_load(struct sg_config *cfg, int argc, char **argv,
			char **envp, struct sg_error *e)
{
	memset(cfg, 0, sizeof(*cfg));
	enum sg_err rc;
	for (size_t i = 0; i < N_ROWS; i++) {
		const struct cfg_row *r = &config_rows[i];
		/* Defaults are trusted; an empty default string is allowed. */
		if (is_string_type(r->type)) {
			char *copy = strdup(r->def);
			if (!copy)
				return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			*str_field(cfg, r) = copy;
		} else if (r->type == CFG_RATIO || r->type == CFG_PRICE) {
			*(double *)((char *)cfg + r->off) = strtod(r->def, NULL);
		} else {
			*int_field(cfg, r) = strtoll(r->def, NULL, 10);
		}
	}
	for (size_t i = 0; i < N_ROWS; i++) {
		const char *v = env_lookup(envp, config_rows[i].env);
		if (v && (rc = set_value(cfg, &config_rows[i], v, config_rows[i].env, e)))
			return rc;
	}
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			cfg->show_help = true;
			continue;
		}
		if (strcmp(arg, "--version") == 0 || strcmp(arg, "-V") == 0) {
			cfg->show_version = true;
			continue;
		}
		if (strcmp(arg, "--archiver") == 0) {
			cfg->archiver = true;
			continue;
		}
		const char *eq = strchr(arg, '=');
		size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
		const struct cfg_row *r = strncmp(arg, "--", 2) == 0 ? find_flag(arg, len) : NULL;
		if (!r)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"unknown option '%.*s' (see --help)", (int)(len > 80 ? 80 : len), arg);
		const char *val = eq ? eq + 1 : NULL;
		if (!val) {
			if (i + 1 >= argc)
				return sg_error_set(e, SG_ERR_BAD_REQUEST,
					"%s needs a value", r->flag);
			val = argv[++i];
		}
		if ((rc = set_value(cfg, r, val, r->flag, e)))
			return rc;
	}
	return SG_OK;
}

void config_finish(struct sg_config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < N_ROWS; i++) {
		if (!is_string_type(config_rows[i].type))
			continue;
		char **slot = str_field(cfg, &config_rows[i]);
		free(*slot);
		*slot = NULL;
	}
}

void config_print_help(FILE *out, const char *argv0)
{
	fprintf(out,
		"Usage: %s [OPTION VALUE]...\n"
		"semgate: chat-memory and semantic-cache gateway for OpenAI-compatible LLM APIs.\n"
		"Every option can also be set by its environment variable; a flag wins.\n\n",
		argv0);
	for (size_t i = 0; i < N_ROWS; i++) {
		const struct cfg_row *r = &config_rows[i];
		char range[64] = "";
		if (r->type == CFG_INT)
			snprintf(range, sizeof(range), ", %lld..%lld", r->min, r->max);
		else if (r->type == CFG_RATIO)
			snprintf(range, sizeof(range), ", in (0, 1]");
		else if (r->type == CFG_PRICE)
			snprintf(range, sizeof(range), ", 0..%lld", r->max);
		else if (r->type == CFG_CHOICE)
			snprintf(range, sizeof(range), ", one of %s", r->choices);
		fprintf(out, "  %-32s %s\n  %-32s   %s (default: %s%s)\n",
			r->flag, r->env, "", r->help,
			r->def[0] ? r->def : "empty", range);
	}
	fprintf(out, "\n  %-32s run only the archiver (needs SEMGATE_ARCHIVE_DSN)\n"
		"  %-32s show this help\n  %-32s show the version\n",
		"--archiver", "--help, -h", "--version, -V");
}

void config_log_summary(const struct sg_config *cfg)
{
	for (size_t i = 0; i < N_ROWS; i++) {
		const struct cfg_row *r = &config_rows[i];
		struct sg_config *c = (struct sg_config *)cfg;
		if (r->type == CFG_INT)
			sg_log(SG_LOG_INFO, "config %s=%lld", r->env, *int_field(c, r));
		else if (r->type == CFG_RATIO || r->type == CFG_PRICE)
			sg_log(SG_LOG_INFO, "config %s=%g", r->env,
			       *(double *)((char *)c + r->off));
		else if (r->type == CFG_SECRET)
			sg_log(SG_LOG_INFO, "config %s=%s", r->env,
			       (*str_field(c, r))[0] ? "(set)" : "(empty)");
		else
			sg_log(SG_LOG_INFO, "config %s=%s", r->env, *str_field(c, r));
	}
}
