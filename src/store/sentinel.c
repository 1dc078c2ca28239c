/* Sentinel mode: which server is the master, and following it through a
 * failover (see include/semgate/store/sentinel.h). The current master and
 * its generation are process-wide; store.c and events.c read them on every
 * connect and compare the generation on every use of a connection. Worker
 * threads never wait on a sentinel once a master is known: a failed
 * connection or a READONLY reply only raises a flag that the watcher thread
 * acts on (at most every ASK_EVERY_MS). */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/core/clock.h"
#include "semgate/core/log.h"
#include "semgate/store/sentinel.h"
#include "priv.h"

#define ASK_EVERY_MS 200.0        /* re-asking the sentinels, at most this often */
#define ASK_AFTER_FAILURE_MS 1000.0
#define RESUBSCRIBE_MS 500.0      /* after every sentinel refused a subscription */
#define POLL_MS 100

/* ---- parsing (pure) ---- */

bool store_parse_hostport(const char *s, size_t len, struct store_hostport *out)
{
	memset(out, 0, sizeof(*out));
	const char *host = s, *colon;
	size_t hlen;
	if (len > 0 && s[0] == '[') {
		const char *close = memchr(s, ']', len);
		if (!close || close + 1 >= s + len || close[1] != ':')
			return false;
		host = s + 1;
		hlen = (size_t)(close - host);
		colon = close + 1;
	} else {
		colon = NULL;
		for (size_t i = 0; i < len; i++)
			if (s[i] == ':')
				colon = s + i;
		if (!colon)
			return false;
		hlen = (size_t)(colon - s);
		if (memchr(s, ':', hlen)) /* a bare v6 address needs brackets */
			return false;
	}
	if (hlen == 0 || hlen >= sizeof(out->host))
		return false;
	for (size_t i = 0; i < hlen; i++)
		if (host[i] <= ' ' || host[i] == ',' || (unsigned char)host[i] >= 0x7f)
			return false;
	const char *p = colon + 1, *end = s + len;
	if (p == end || end - p > 5)
		return false;
	long port = 0;
	for (; p < end; p++) {
		if (*p < '0' || *p > '9')
			return false;
		port = port * 10 + (*p - '0');
	}
	if (port < 1 || port > 65535)
		return false;
	memcpy(out->host, host, hlen);
	out->host[hlen] = '\0';
	out->port = (int)port;
	return true;
}

int store_parse_hostports(const char *list, struct store_hostport *out, int max,
			  char *why, size_t why_cap)
{
	int n = 0;
	const char *p = list;
	for (;;) {
		const char *comma = strchr(p, ',');
		const char *end = comma ? comma : p + strlen(p);
		const char *a = p, *b = end;
		while (a < b && *a == ' ')
			a++;
		while (b > a && b[-1] == ' ')
			b--;
		if (a == b) {
			snprintf(why, why_cap, "an empty address in the list");
			return -1;
		}
		if (n == max) {
			snprintf(why, why_cap, "more than %d addresses", max);
			return -1;
		}
		if (!store_parse_hostport(a, (size_t)(b - a), &out[n])) {
			snprintf(why, why_cap, "'%.*s' is not host:port", (int)(b - a > 80 ? 80 : b - a),
				 a);
			return -1;
		}
		n++;
		if (!comma)
			return n;
		p = comma + 1;
	}
}

bool store_parse_switch_master(const char *payload, size_t len, const char *name,
			       struct store_hostport *out)
{
	/* five space-separated words: name, old ip, old port, new ip, new port */
	const char *w[5];
	size_t wl[5];
	size_t n = 0, i = 0;
	memset(out, 0, sizeof(*out));
	while (i < len) {
		while (i < len && payload[i] == ' ')
			i++;
		if (i == len)
			break;
		if (n == 5)
			return false;
		w[n] = payload + i;
		while (i < len && payload[i] != ' ')
			i++;
		wl[n] = (size_t)(payload + i - w[n]);
		n++;
	}
	if (n != 5 || wl[0] != strlen(name) || memcmp(w[0], name, wl[0]) != 0)
		return false;
	struct store_hostport old;
	char buf[STORE_HOST_MAX + 8];
	for (int k = 1; k <= 3; k += 2) {
		if (wl[k] >= STORE_HOST_MAX || wl[k + 1] > 5)
			return false;
		/* an IPv6 address comes bare: bracket it for the parser */
		bool v6 = memchr(w[k], ':', wl[k]) != NULL;
		int m = snprintf(buf, sizeof(buf), v6 ? "[%.*s]:%.*s" : "%.*s:%.*s", (int)wl[k],
				 w[k], (int)wl[k + 1], w[k + 1]);
		if (m < 0 || (size_t)m >= sizeof(buf) ||
		    !store_parse_hostport(buf, (size_t)m, k == 1 ? &old : out))
			return false;
	}
	return true;
}

/* ---- the current master ---- */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER; /* g_master, g_known, the list */
static pthread_mutex_t g_ask_mu = PTHREAD_MUTEX_INITIALIZER; /* one round of asking */
static struct store_hostport g_master;
static bool g_known;
static struct store_hostport g_sentinels[STORE_SENTINELS_MAX];
static int g_nsentinels = -1;  /* -1: not parsed yet */
static int g_prefer;           /* the sentinel that answered last */
static atomic_ulong g_gen;
static atomic_ullong g_changes;
static atomic_bool g_suspect;

static bool sentinel_mode(const struct sg_config *cfg)
{
	return cfg->redis_sentinels && cfg->redis_sentinels[0];
}

unsigned long long store_master_changes(void)
{
	return atomic_load(&g_changes);
}

unsigned long store_master_gen(void)
{
	return atomic_load_explicit(&g_gen, memory_order_acquire);
}

void store_master_suspect(void)
{
	atomic_store(&g_suspect, true);
}

bool store_reply_readonly(const redisReply *r)
{
	return r && r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, "READONLY", 8) == 0;
}

static enum sg_err load_list(const struct sg_config *cfg, struct sg_error *e)
{
	enum sg_err rc = SG_OK;
	pthread_mutex_lock(&g_mu);
	if (g_nsentinels < 0) {
		char why[160];
		int n = store_parse_hostports(cfg->redis_sentinels, g_sentinels,
					      STORE_SENTINELS_MAX, why, sizeof(why));
		if (n < 0)
			rc = sg_error_set(e, SG_ERR_BAD_REQUEST, "SEMGATE_REDIS_SENTINELS: %s", why);
		else
			g_nsentinels = n;
	}
	pthread_mutex_unlock(&g_mu);
	return rc;
}

static struct timeval timeout_of(const struct sg_config *cfg)
{
	struct timeval tv = {
		.tv_sec = cfg->redis_timeout_ms / 1000,
		.tv_usec = (cfg->redis_timeout_ms % 1000) * 1000,
	};
	return tv;
}

/* A connection to a sentinel (sentinels take no AUTH here). */
static redisContext *connect_sentinel(const struct sg_config *cfg, const struct store_hostport *a)
{
	struct timeval tv = timeout_of(cfg);
	redisContext *c = redisConnectWithTimeout(a->host, a->port, tv);
	if (!c || c->err) {
		if (c)
			redisFree(c);
		return NULL;
	}
	redisSetTimeout(c, tv);
	return c;
}

/* The master sentinel a names, into out. False with why filled. */
static bool ask_sentinel(const struct sg_config *cfg, const struct store_hostport *a,
			 struct store_hostport *out, char *why, size_t cap)
{
	redisContext *c = connect_sentinel(cfg, a);
	if (!c) {
		snprintf(why, cap, "sentinel %.80s:%d unreachable", a->host, a->port);
		return false;
	}
	redisReply *r = redisCommand(c, "SENTINEL get-master-addr-by-name %s",
				     cfg->redis_master_name);
	bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
		  r->element[0]->type == REDIS_REPLY_STRING &&
		  r->element[1]->type == REDIS_REPLY_STRING;
	if (ok) {
		char buf[STORE_HOST_MAX + 8];
		const char *h = r->element[0]->str, *p = r->element[1]->str;
		int m = snprintf(buf, sizeof(buf), strchr(h, ':') ? "[%s]:%s" : "%s:%s", h, p);
		ok = m > 0 && (size_t)m < sizeof(buf) && store_parse_hostport(buf, (size_t)m, out);
		if (!ok)
			snprintf(why, cap, "sentinel %.80s:%d named a malformed address", a->host,
				 a->port);
	} else {
		snprintf(why, cap, "sentinel %.80s:%d: %s", a->host, a->port,
			 !r ? (c->errstr[0] ? c->errstr : "no reply") :
			 r->type == REDIS_REPLY_ERROR ? r->str : "no master by that name");
	}
	if (r)
		freeReplyObject(r);
	redisFree(c);
	return ok;
}

/* Whether the server at a says ROLE master. */
static bool is_master(const struct sg_config *cfg, const struct store_hostport *a, char *why,
		      size_t cap)
{
	struct sg_error e = { 0 };
	redisContext *c = store_connect_node(cfg, a->host, a->port, "", &e);
	if (!c) {
		snprintf(why, cap, "%s", e.msg);
		return false;
	}
	redisReply *r = redisCommand(c, "ROLE");
	bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
		  r->element[0]->type == REDIS_REPLY_STRING &&
		  strcmp(r->element[0]->str, "master") == 0;
	if (!ok)
		snprintf(why, cap, "%.80s:%d is not a master (ROLE: %.60s)", a->host, a->port,
			 !r ? "no reply" : r->type == REDIS_REPLY_ERROR ? r->str :
			 r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
			 r->element[0]->type == REDIS_REPLY_STRING ? r->element[0]->str :
			 "unexpected reply");
	if (r)
		freeReplyObject(r);
	redisFree(c);
	return ok;
}

/* Make a the master; a new address starts a new generation. */
static void adopt(const struct store_hostport *a)
{
	pthread_mutex_lock(&g_mu);
	bool was_known = g_known;
	bool changed = !g_known || g_master.port != a->port || strcmp(g_master.host, a->host) != 0;
	if (changed) {
		g_master = *a;
		g_known = true;
		atomic_fetch_add_explicit(&g_gen, 1, memory_order_acq_rel);
	}
	unsigned long gen = store_master_gen();
	pthread_mutex_unlock(&g_mu);
	if (!changed)
		return;
	if (was_known)
		atomic_fetch_add(&g_changes, 1);
	sg_log(SG_LOG_INFO, "redis master %s %s:%d (generation %lu)",
	       was_known ? "is now" : "found at", a->host, a->port, gen);
}

/* Ask the sentinels, the last one that answered first, and adopt the first
 * address that really is a master. With force false, a master someone else
 * found meanwhile is enough. */
static enum sg_err ask_sentinels(const struct sg_config *cfg, bool force, struct sg_error *e)
{
	enum sg_err rc = load_list(cfg, e);
	if (rc != SG_OK)
		return rc;
	pthread_mutex_lock(&g_ask_mu);
	pthread_mutex_lock(&g_mu);
	bool known = g_known;
	int n = g_nsentinels, first = g_prefer;
	pthread_mutex_unlock(&g_mu);
	if (known && !force) {
		pthread_mutex_unlock(&g_ask_mu);
		return SG_OK;
	}
	char why[256] = "no sentinel configured";
	rc = SG_ERR_REDIS;
	for (int k = 0; k < n; k++) {
		int i = (first + k) % n;
		struct store_hostport m;
		if (!ask_sentinel(cfg, &g_sentinels[i], &m, why, sizeof(why)) ||
		    !is_master(cfg, &m, why, sizeof(why)))
			continue;
		adopt(&m);
		pthread_mutex_lock(&g_mu);
		g_prefer = i;
		pthread_mutex_unlock(&g_mu);
		rc = SG_OK;
		break;
	}
	pthread_mutex_unlock(&g_ask_mu);
	if (rc != SG_OK)
		sg_error_set(e, SG_ERR_REDIS, "no redis master '%s' found through the sentinels "
			     "(last: %s)", cfg->redis_master_name, why);
	return rc;
}

enum sg_err store_master_get(const struct sg_config *cfg, struct store_hostport *addr,
			     unsigned long *gen, struct sg_error *e)
{
	if (!sentinel_mode(cfg)) {
		snprintf(addr->host, sizeof(addr->host), "%s", cfg->redis_host);
		addr->port = (int)cfg->redis_port;
		*gen = 0;
		return SG_OK;
	}
	for (int round = 0; round < 2; round++) {
		pthread_mutex_lock(&g_mu);
		bool known = g_known;
		if (known) {
			*addr = g_master;
			*gen = store_master_gen();
		}
		pthread_mutex_unlock(&g_mu);
		if (known)
			return SG_OK;
		if (round == 0) {
			enum sg_err rc = ask_sentinels(cfg, false, e);
			if (rc != SG_OK)
				return rc;
		}
	}
	return sg_error_set(e, SG_ERR_REDIS, "no redis master known");
}

/* ---- the watcher ---- */

struct store_sentinel {
	const struct sg_config *cfg;
	pthread_t thread;
	atomic_bool stop;
};

static redisContext *subscribe(const struct sg_config *cfg, const struct store_hostport *a)
{
	redisContext *c = connect_sentinel(cfg, a);
	if (!c)
		return NULL;
	redisReply *r = redisCommand(c, "SUBSCRIBE +switch-master");
	bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
		  r->element[0]->type == REDIS_REPLY_STRING &&
		  strcmp(r->element[0]->str, "subscribe") == 0;
	if (r)
		freeReplyObject(r);
	if (!ok) {
		redisFree(c);
		return NULL;
	}
	return c;
}

/* Wait up to POLL_MS for one message on the subscription and act on it.
 * False when the subscription is lost. */
static bool follow(const struct sg_config *cfg, redisContext *c)
{
	void *reply = NULL;
	if (redisGetReplyFromReader(c, &reply) != REDIS_OK)
		return false;
	if (!reply) {
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		int n = poll(&pfd, 1, POLL_MS);
		if (n < 0 && errno != EINTR)
			return false;
		if (n <= 0)
			return true;
		if (redisBufferRead(c) != REDIS_OK || redisGetReplyFromReader(c, &reply) != REDIS_OK)
			return false;
		if (!reply)
			return true;
	}
	redisReply *r = reply;
	struct store_hostport to;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
	    r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "message") == 0 &&
	    r->element[2]->type == REDIS_REPLY_STRING &&
	    store_parse_switch_master(r->element[2]->str, r->element[2]->len,
				      cfg->redis_master_name, &to)) {
		char why[256];
		sg_log(SG_LOG_INFO, "sentinel: +switch-master to %s:%d", to.host, to.port);
		if (is_master(cfg, &to, why, sizeof(why)))
			adopt(&to);
		else
			atomic_store(&g_suspect, true); /* ask again shortly */
	}
	freeReplyObject(r);
	return true;
}

static void *watch(void *arg)
{
	struct store_sentinel *w = arg;
	const struct sg_config *cfg = w->cfg;
	redisContext *sub = NULL;
	int next = 0;
	double retry_at = 0, ask_at = 0;
	bool warned_sub = false, warned_ask = false;
	while (!atomic_load(&w->stop)) {
		double now = sg_now_ms();
		if (!sub && now >= retry_at) {
			pthread_mutex_lock(&g_mu);
			struct store_hostport a = g_sentinels[next % g_nsentinels];
			int n = g_nsentinels;
			pthread_mutex_unlock(&g_mu);
			if ((sub = subscribe(cfg, &a))) {
				sg_log(SG_LOG_INFO, "sentinel: following +switch-master on %s:%d",
				       a.host, a.port);
				warned_sub = false;
				/* a switch may have happened while nobody listened */
				atomic_store(&g_suspect, true);
			} else {
				next = (next + 1) % n;
				if (next == 0) {
					if (!warned_sub)
						sg_log(SG_LOG_WARN, "sentinel: no sentinel accepts a "
						       "subscription; retrying");
					warned_sub = true;
					retry_at = now + RESUBSCRIBE_MS;
				}
			}
		}
		if (now >= ask_at && atomic_exchange(&g_suspect, false)) {
			struct sg_error e = { 0 };
			if (ask_sentinels(cfg, true, &e) != SG_OK) {
				if (!warned_ask)
					sg_log(SG_LOG_WARN, "sentinel: %s; retrying", e.msg);
				warned_ask = true;
				atomic_store(&g_suspect, true);
				ask_at = now + ASK_AFTER_FAILURE_MS;
			} else {
				warned_ask = false;
				ask_at = now + ASK_EVERY_MS;
			}
		}
		if (sub) {
			if (!follow(cfg, sub)) {
				sg_log(SG_LOG_WARN, "sentinel: subscription lost; moving to the next "
				       "sentinel");
				redisFree(sub);
				sub = NULL;
				pthread_mutex_lock(&g_mu);
				next = (next + 1) % g_nsentinels;
				pthread_mutex_unlock(&g_mu);
			}
		} else {
			const struct timespec t = { 0, 50 * 1000 * 1000 };
			nanosleep(&t, NULL);
		}
	}
	if (sub)
		redisFree(sub);
	return NULL;
}

enum sg_err store_sentinel_start(const struct sg_config *cfg, struct store_sentinel **out,
				 struct sg_error *e)
{
	*out = NULL;
	if (!sentinel_mode(cfg))
		return SG_OK;
	enum sg_err rc = load_list(cfg, e);
	if (rc != SG_OK)
		return rc;
	struct store_sentinel *w = calloc(1, sizeof(*w));
	if (!w)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	w->cfg = cfg;
	atomic_init(&w->stop, false);
	if (pthread_create(&w->thread, NULL, watch, w) != 0) {
		free(w);
		return sg_error_set(e, SG_ERR_INTERNAL, "cannot start the sentinel watcher thread");
	}
	*out = w;
	return SG_OK;
}

void store_sentinel_stop(struct store_sentinel *w)
{
	if (!w)
		return;
	atomic_store(&w->stop, true);
	pthread_join(w->thread, NULL);
	free(w);
}
