/* {prefix}events: rendering and publishing the entry events other gateway
 * processes follow, parsing them, and the dedicated subscriber connection.
 * Part of the store module (the channel name is built here). A subscribed
 * hiredis context is read only after poll() says there is data, so the
 * subscriber never blocks past its timeout and never mistakes a quiet
 * channel for a dead connection. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "semgate/core/buf.h"
#include "semgate/core/digest.h"
#include "semgate/core/json.h"
#include "semgate/core/log.h"
#include "semgate/store/ops.h"
#include "priv.h"

const char store_lua_expire_max[] =
	"local t = redis.call('TTL', KEYS[1]) "
	"if t < tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end "
	"return t";

/* ---- origin ---- */

static char g_origin[33];
static pthread_once_t g_origin_once = PTHREAD_ONCE_INIT;

static void origin_init(void)
{
	sg_random_hex(g_origin, 16);
}

const char *store_event_origin(void)
{
	pthread_once(&g_origin_once, origin_init);
	return g_origin;
}

/* ---- publishing ---- */

char *store_events_channel(const struct sg_config *cfg)
{
	char *ch = NULL;
	if (asprintf(&ch, "%sevents", cfg->redis_prefix) < 0)
		return NULL;
	return ch;
}

char *store_event_render(const char *type, const char *tenant, const char *id,
			 const char *scope, const char *model, int dim)
{
	cJSON *o = cJSON_CreateObject();
	char *out = NULL;
	if (!o)
		return NULL;
	if (!cJSON_AddStringToObject(o, "event", type) ||
	    !cJSON_AddStringToObject(o, "id", id) ||
	    !cJSON_AddStringToObject(o, "tenant", tenant) ||
	    !cJSON_AddStringToObject(o, "origin", store_event_origin()))
		goto out;
	if (scope && (!cJSON_AddStringToObject(o, "scope", scope) ||
		      !cJSON_AddStringToObject(o, "model", model ? model : "") ||
		      !cJSON_AddNumberToObject(o, "dim", dim)))
		goto out;
	out = cJSON_PrintUnformatted(o);
out:
	cJSON_Delete(o);
	return out;
}

bool store_append_publish(struct store *s, const char *type, const char *tenant,
			  const char *id, const char *scope, const char *model, int dim)
{
	char *ch = store_events_channel(s->cfg);
	char *ev = store_event_render(type, tenant, id, scope, model, dim);
	bool ok = ch && ev && redisAppendCommand(s->c, "PUBLISH %s %s", ch, ev) == REDIS_OK;
	free(ch);
	free(ev);
	return ok;
}

/* ---- parsing ---- */

static bool copy_field(const cJSON *o, const char *name, char *out, size_t cap, bool need)
{
	const char *v = sg_json_str(o, name);
	if (!v) {
		out[0] = '\0';
		return !need;
	}
	size_t n = strlen(v);
	if ((need && n == 0) || n >= cap)
		return false;
	memcpy(out, v, n + 1);
	return true;
}

bool store_event_parse(const char *payload, size_t len, struct store_event *out)
{
	memset(out, 0, sizeof(*out));
	cJSON *o = NULL;
	if (sg_json_parse(payload, len, &o, NULL) != SG_OK)
		return false;
	bool ok = cJSON_IsObject(o) &&
		copy_field(o, "event", out->type, sizeof(out->type), true) &&
		copy_field(o, "id", out->id, sizeof(out->id), true) &&
		copy_field(o, "tenant", out->tenant, sizeof(out->tenant), true) &&
		copy_field(o, "origin", out->origin, sizeof(out->origin), false) &&
		(strcmp(out->type, "add") == 0 || strcmp(out->type, "delete") == 0 ||
		 strcmp(out->type, "flush") == 0);
	cJSON_Delete(o);
	if (!ok)
		memset(out, 0, sizeof(*out));
	return ok;
}

/* ---- the subscriber connection ---- */

struct store_sub {
	const struct sg_config *cfg;
	redisContext *c;
	unsigned long gen; /* the master generation c is subscribed on */
	unsigned next; /* cluster mode: the node to try first */
	/* cluster mode with the hot exact cache: one tracking connection per
	 * master (a node reports changes of its own keys only) */
	redisContext *trk[STORE_CL_MAX_NODES];
	int ntrk;
};

struct store_sub *store_sub_create(const struct sg_config *cfg)
{
	struct store_sub *sub = calloc(1, sizeof(*sub));
	if (sub)
		sub->cfg = cfg;
	return sub;
}

void store_sub_drop(struct store_sub *sub)
{
	if (!sub)
		return;
	if (sub->c) {
		redisFree(sub->c);
		sub->c = NULL;
	}
	for (int i = 0; i < sub->ntrk; i++)
		redisFree(sub->trk[i]);
	sub->ntrk = 0;
}

void store_sub_destroy(struct store_sub *sub)
{
	if (!sub)
		return;
	store_sub_drop(sub);
	free(sub);
}

bool store_sub_connected(const struct store_sub *sub)
{
	return sub->c != NULL;
}

/* CLIENT TRACKING on this connection, redirected to itself, for the exact
 * keys. False (and a reason in why) when Redis refuses. */
static bool enable_tracking(redisContext *c, const struct sg_config *cfg, char *why,
			    size_t cap)
{
	redisReply *r = redisCommand(c, "CLIENT ID");
	if (!r || r->type != REDIS_REPLY_INTEGER) {
		snprintf(why, cap, "CLIENT ID: %s", r && r->type == REDIS_REPLY_ERROR ?
			 r->str : "unexpected reply");
		if (r)
			freeReplyObject(r);
		return false;
	}
	long long id = r->integer;
	freeReplyObject(r);
	r = redisCommand(c, "CLIENT TRACKING on REDIRECT %lld BCAST PREFIX %sx:", id,
			 cfg->redis_prefix);
	bool ok = r && r->type == REDIS_REPLY_STATUS;
	if (!ok)
		snprintf(why, cap, "CLIENT TRACKING: %s", r && r->type == REDIS_REPLY_ERROR ?
			 r->str : "unexpected reply");
	if (r)
		freeReplyObject(r);
	return ok;
}

static bool subscribed(const redisReply *r)
{
	return r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
	       r->element[0]->type == REDIS_REPLY_STRING &&
	       strcmp(r->element[0]->str, "subscribe") == 0;
}

/* Cluster mode: a connection per master that tracks the exact keys and
 * receives its own invalidations (sub->trk). False (none kept, a reason in
 * why) when one of them cannot be set up. */
static bool track_masters(struct store_sub *sub, char *why, size_t cap)
{
	struct store_cl_addr m[STORE_CL_MAX_NODES];
	struct sg_error e = { 0 };
	struct store *s = store_create(sub->cfg);
	int n = s ? store_cluster_masters(s, m, STORE_CL_MAX_NODES, &e) : -1;
	store_destroy(s);
	if (n <= 0) {
		snprintf(why, cap, "no cluster masters known: %.150s", e.msg);
		return false;
	}
	for (int i = 0; i < n; i++) {
		redisContext *c = store_connect_node(sub->cfg, m[i].host, m[i].port, "events: ", &e);
		if (!c) {
			snprintf(why, cap, "%.200s", e.msg);
			goto fail;
		}
		sub->trk[sub->ntrk++] = c;
		if (!enable_tracking(c, sub->cfg, why, cap))
			goto fail;
		redisReply *r = redisCommand(c, "SUBSCRIBE __redis__:invalidate");
		bool ok = subscribed(r);
		if (r)
			freeReplyObject(r);
		if (!ok) {
			snprintf(why, cap, "SUBSCRIBE __redis__:invalidate on %.64s:%d failed", m[i].host,
				 m[i].port);
			goto fail;
		}
	}
	return true;
fail:
	for (int i = 0; i < sub->ntrk; i++)
		redisFree(sub->trk[i]);
	sub->ntrk = 0;
	return false;
}

bool store_sub_track_again(struct store_sub *sub, char *why, size_t cap)
{
	bool cluster = config_is_cluster(sub->cfg);
	if (!sub->c || !cluster) {
		snprintf(why, cap, "%s", sub->c ? "not a cluster" : "not connected");
		return false;
	}
	return sub->ntrk > 0 || track_masters(sub, why, cap);
}

/* Cluster mode: connect to one node, trying in turn every node the slot map
 * knows and the seeds, from where the last attempt stopped (a classic
 * PUBLISH reaches every node of a Redis 7 cluster, so any node will do; after
 * a failover the next reconnection finds a live one). */
static redisContext *cluster_node(struct store_sub *sub, struct sg_error *e)
{
	struct store_cl_addr cand[2 * STORE_CL_MAX_NODES];
	int n = store_cluster_known(cand, STORE_CL_MAX_NODES);
	n += store_cl_parse_seeds(sub->cfg->redis_cluster, cand + n, STORE_CL_MAX_NODES);
	for (int i = 0; i < n; i++) {
		const struct store_cl_addr *a = &cand[(sub->next + (unsigned)i) % (unsigned)n];
		redisContext *c = store_connect_node(sub->cfg, a->host, a->port, "events: ", e);
		if (c) {
			sub->next = (sub->next + (unsigned)i) % (unsigned)n;
			return c;
		}
	}
	sub->next++;
	if (n == 0)
		sg_error_set(e, SG_ERR_REDIS, "events: no redis cluster node known");
	return NULL;
}

enum sg_err store_sub_connect(struct store_sub *sub, bool track_exact, bool *tracking,
			      struct sg_error *e)
{
	const struct sg_config *cfg = sub->cfg;
	*tracking = false;
	store_sub_drop(sub);
	bool cluster = config_is_cluster(cfg);
	struct store_hostport at;
	unsigned long gen = 0;
	redisContext *c = NULL;
	redisReply *r = NULL;
	char *ch = NULL;
	if (cluster) {
		if (!(c = cluster_node(sub, e)))
			goto fail;
	} else {
		if (store_master_get(cfg, &at, &gen, e) != SG_OK) {
			store_master_suspect();
			return e ? e->code : SG_ERR_REDIS;
		}
		if (!(c = store_connect_node(cfg, at.host, at.port, "events: ", e))) {
			store_master_suspect();
			return e ? e->code : SG_ERR_REDIS;
		}
	}
	/* pub/sub channels are not per database: no SELECT needed */
	if (!(ch = store_events_channel(cfg))) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto fail;
	}
	char why[256] = "";
	/* on a cluster a node tracks only its own keys: one tracking
	 * connection per master, and this one carries the events only */
	bool track = track_exact && (cluster ? track_masters(sub, why, sizeof(why)) :
				     enable_tracking(c, cfg, why, sizeof(why)));
	if (track_exact && !track)
		sg_log(SG_LOG_WARN, "hot exact cache off: %s", why);
	if (c->err) {
		sg_error_set(e, SG_ERR_REDIS, "events: %s", c->errstr);
		goto fail;
	}
	r = track && !cluster ? redisCommand(c, "SUBSCRIBE %s __redis__:invalidate", ch) :
		    redisCommand(c, "SUBSCRIBE %s", ch);
	if (!subscribed(r)) {
		sg_error_set(e, SG_ERR_REDIS, "events: SUBSCRIBE failed: %s",
			     r && r->type == REDIS_REPLY_ERROR ? r->str :
			     c->errstr[0] ? c->errstr : "unexpected reply");
		goto fail;
	}
	freeReplyObject(r);
	r = NULL;
	if (track && !cluster) {
		/* the second channel's confirmation: from here on, every change
		 * of an exact key reaches this connection */
		void *second = NULL;
		if (redisGetReply(c, &second) != REDIS_OK || !subscribed(second)) {
			if (second)
				freeReplyObject(second);
			sg_error_set(e, SG_ERR_REDIS, "events: SUBSCRIBE failed: %s",
				     c->errstr[0] ? c->errstr : "unexpected reply");
			goto fail;
		}
		freeReplyObject(second);
	}
	free(ch);
	*tracking = track;
	sub->c = c;
	sub->gen = gen;
	return SG_OK;
fail:
	if (r)
		freeReplyObject(r);
	free(ch);
	if (c)
		redisFree(c);
	return e ? e->code : SG_ERR_REDIS;
}

void store_sub_msg_finish(struct store_sub_msg *m)
{
	free(m->payload);
	for (size_t i = 0; i < m->nkeys; i++)
		free(m->keys[i]);
	free(m->keys);
	free(m->key_lens);
	memset(m, 0, sizeof(*m));
}

/* Fill m from a ["message", channel, payload] reply; anything else (a
 * subscribe confirmation) leaves it empty. An invalidation's payload is
 * an array of keys, or nil for all of them; one that cannot be copied
 * (out of memory) is taken as "all", the safe side. */
static void take_message(redisReply *r, struct store_sub_msg *m)
{
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
	    r->element[0]->type != REDIS_REPLY_STRING ||
	    strcmp(r->element[0]->str, "message") != 0 ||
	    r->element[1]->type != REDIS_REPLY_STRING)
		return;
	redisReply *p = r->element[2];
	if (strcmp(r->element[1]->str, "__redis__:invalidate") != 0) {
		if (p->type == REDIS_REPLY_STRING && (m->payload = sg_memdup0(p->str, p->len)))
			m->len = p->len;
		return;
	}
	if (p->type != REDIS_REPLY_ARRAY || p->elements == 0) {
		m->invalidate_all = true;
		return;
	}
	m->keys = calloc(p->elements, sizeof(*m->keys));
	m->key_lens = calloc(p->elements, sizeof(*m->key_lens));
	if (!m->keys || !m->key_lens) {
		store_sub_msg_finish(m);
		m->invalidate_all = true;
		return;
	}
	for (size_t i = 0; i < p->elements; i++) {
		redisReply *k = p->element[i];
		if (k->type != REDIS_REPLY_STRING || !(m->keys[i] = sg_memdup0(k->str, k->len))) {
			store_sub_msg_finish(m);
			m->invalidate_all = true;
			return;
		}
		m->key_lens[i] = k->len;
		m->nkeys++;
	}
}

enum sg_err store_sub_next(struct store_sub *sub, int timeout_ms, struct store_sub_msg *m,
			   struct sg_error *e)
{
	memset(m, 0, sizeof(*m));
	if (!sub->c)
		return sg_error_set(e, SG_ERR_REDIS, "events: not connected");
	if (sub->gen != store_master_gen()) {
		/* another server is the master now: subscribe there (and rescan) */
		store_sub_drop(sub);
		return sg_error_set(e, SG_ERR_REDIS, "events: the redis master changed");
	}
	/* the events connection, then (cluster mode) each tracking one */
	redisContext *v[1 + STORE_CL_MAX_NODES];
	int n = 0;
	v[n++] = sub->c;
	for (int i = 0; i < sub->ntrk; i++)
		v[n++] = sub->trk[i];
	void *reply = NULL;
	redisContext *bad = NULL;
	for (int i = 0; i < n && !reply; i++)
		if (redisGetReplyFromReader(v[i], &reply) != REDIS_OK) {
			bad = v[i];
			goto lost;
		}
	if (!reply) {
		struct pollfd pfd[1 + STORE_CL_MAX_NODES];
		for (int i = 0; i < n; i++)
			pfd[i] = (struct pollfd){ .fd = v[i]->fd, .events = POLLIN };
		int k = poll(pfd, (nfds_t)n, timeout_ms);
		if (k < 0 && errno != EINTR) {
			bad = sub->c;
			goto lost;
		}
		if (k <= 0)
			return SG_OK;
		for (int i = 0; i < n && !reply; i++) {
			if (!pfd[i].revents)
				continue;
			if (redisBufferRead(v[i]) != REDIS_OK ||
			    redisGetReplyFromReader(v[i], &reply) != REDIS_OK) {
				bad = v[i];
				goto lost;
			}
		}
		if (!reply)
			return SG_OK;
	}
	take_message(reply, m);
	freeReplyObject(reply);
	return SG_OK;
lost:
	if (reply)
		freeReplyObject(reply);
	sg_error_set(e, SG_ERR_REDIS, "events: redis connection lost: %s",
		     bad && bad->errstr[0] ? bad->errstr : "closed");
	store_sub_drop(sub);
	store_master_suspect();
	return SG_ERR_REDIS;
}
