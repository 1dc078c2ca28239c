/* The client side of the Redis Cluster protocol, on hiredis 0.14 (which has
 * none). Only in cluster mode (SEMGATE_REDIS_CLUSTER); a single server never
 * reaches this file.
 *
 * How it fits the rest of the store: in cluster mode s->c is a staging
 * context that is never connected. The store code appends its pipelines and
 * MULTI blocks to it exactly as on one server; the first read hands the
 * staged bytes to store_cluster_dispatch, which cuts them into units (one
 * command, or MULTI ... EXEC), sends each unit to the master that owns its
 * key's slot (keyless units go to the pinned node of a SCAN, or any master),
 * follows MOVED (map updated, unit re-sent), ASK (ASKING + the unit, on the
 * node named) and TRYAGAIN / CLUSTERDOWN (short back-off, map refresh,
 * bounded), and queues the replies in the order the commands were staged.
 * store_read_reply then pops them. The key layout makes every unit touch one
 * slot, so a MULTI stays atomic on its node.
 *
 * The slot map is shared by every worker thread (a mutex guards it); each
 * struct store keeps its own connection per node. The map is loaded with
 * CLUSTER SLOTS from any known node or seed, and reloaded (at most every
 * MAP_REFRESH_MS) after a redirection or a lost connection. */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <hiredis/sds.h>

#include "semgate/core/clock.h"
#include "semgate/core/config.h"
#include "semgate/core/log.h"
#include "semgate/store/layout.h"
#include "priv.h"

#define MAP_REFRESH_MS 50.0
#define MAX_ATTEMPTS 10
#define NO_NODE 0xffff

/* ---- the shared slot map ---- */

static struct {
	pthread_mutex_t mu;
	struct store_cl_addr nodes[STORE_CL_MAX_NODES]; /* masters, then seeds */
	int nnodes;
	unsigned short slot[STORE_SLOTS];
	bool loaded;
	double last_refresh_ms;
	unsigned long long epoch;
} g_map = { .mu = PTHREAD_MUTEX_INITIALIZER };

static bool addr_eq(const struct store_cl_addr *a, const struct store_cl_addr *b)
{
	return a->port == b->port && strcmp(a->host, b->host) == 0;
}

/* Index of addr among the map's nodes, added when new; -1 when full.
 * Caller holds the lock. */
static int node_index_locked(const struct store_cl_addr *addr)
{
	for (int i = 0; i < g_map.nnodes; i++)
		if (addr_eq(&g_map.nodes[i], addr))
			return i;
	if (g_map.nnodes >= STORE_CL_MAX_NODES)
		return -1;
	g_map.nodes[g_map.nnodes] = *addr;
	return g_map.nnodes++;
}

bool store_cl_parse_addr(const char *p, size_t len, struct store_cl_addr *out)
{
	return config_host_port(p, len, out->host, sizeof(out->host), &out->port);
}

int store_cl_parse_seeds(const char *list, struct store_cl_addr *out, int cap)
{
	int n = 0;
	for (const char *p = list; *p && n < cap;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (store_cl_parse_addr(p, len, &out[n]))
			n++;
		p += len;
		if (*p == ',')
			p++;
	}
	return n;
}

int store_cl_parse_slots(const redisReply *r, struct store_cl_addr *nodes, int cap,
			 unsigned short *slot)
{
	for (int i = 0; i < STORE_SLOTS; i++)
		slot[i] = NO_NODE;
	if (!r || r->type != REDIS_REPLY_ARRAY)
		return -1;
	int n = 0;
	for (size_t i = 0; i < r->elements; i++) {
		const redisReply *e = r->element[i];
		if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
		    e->element[0]->type != REDIS_REPLY_INTEGER ||
		    e->element[1]->type != REDIS_REPLY_INTEGER ||
		    e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2)
			return -1;
		long long lo = e->element[0]->integer, hi = e->element[1]->integer;
		const redisReply *m = e->element[2];
		if (lo < 0 || hi >= STORE_SLOTS || lo > hi ||
		    m->element[0]->type != REDIS_REPLY_STRING ||
		    m->element[1]->type != REDIS_REPLY_INTEGER)
			return -1;
		struct store_cl_addr a = { .port = (int)m->element[1]->integer };
		if (m->element[0]->len == 0 || m->element[0]->len >= sizeof(a.host) ||
		    a.port < 1 || a.port > 65535)
			return -1;
		memcpy(a.host, m->element[0]->str, m->element[0]->len + 1);
		int k = 0;
		while (k < n && !addr_eq(&nodes[k], &a))
			k++;
		if (k == n) {
			if (n >= cap)
				return -1;
			nodes[n++] = a;
		}
		for (long long sl = lo; sl <= hi; sl++)
			slot[sl] = (unsigned short)k;
	}
	return n;
}

/* ---- per-store connections ---- */

static void conn_drop(struct store_cl_conn *cc)
{
	if (cc->c)
		redisFree(cc->c);
	cc->c = NULL;
}

/* An idle connection (nothing outstanding) that is readable was closed by
 * its node (a restart, a failover): better found before sending on it than
 * after, when a command could not be told from one that ran. */
static bool peer_gone(const redisContext *c)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };
	return poll(&p, 1, 0) != 0;
}

static bool busy_has(redisContext *const *busy, size_t nbusy, const redisContext *c)
{
	for (size_t i = 0; i < nbusy; i++)
		if (busy[i] == c)
			return true;
	return false;
}

/* The store's connection to addr, connected now if need be; NULL (e set)
 * when it cannot be reached. busy[0..nbusy) are connections the caller
 * still holds: never dropped to make room. */
static redisContext *conn_get(struct store *s, const struct store_cl_addr *addr,
			      redisContext *const *busy, size_t nbusy, struct sg_error *e)
{
	struct store_cl_conn *cc = NULL;
	for (int i = 0; i < s->ncl && !cc; i++)
		if (addr_eq(&s->cl[i].addr, addr))
			cc = &s->cl[i];
	if (!cc) {
		if (s->ncl < STORE_CL_MAX_NODES) {
			cc = &s->cl[s->ncl++];
		} else {
			/* more nodes than slots for them: reuse one without a
			 * connection, else one nobody holds */
			for (int i = 0; i < s->ncl && !cc; i++)
				if (!s->cl[i].c)
					cc = &s->cl[i];
			for (int i = 0; i < s->ncl && !cc; i++)
				if (!busy_has(busy, nbusy, s->cl[i].c))
					cc = &s->cl[i];
			if (!cc) {
				sg_error_set(e, SG_ERR_REDIS, "redis cluster: more than %d nodes in "
					     "one pipeline", STORE_CL_MAX_NODES);
				return NULL;
			}
			conn_drop(cc);
		}
		memset(cc, 0, sizeof(*cc));
		cc->addr = *addr;
	}
	if (cc->c && !cc->c->err && !peer_gone(cc->c))
		return cc->c;
	conn_drop(cc);
	/* a node that just refused costs a request no connect attempt */
	if (sg_now_ms() < cc->down_until_ms) {
		sg_error_set(e, SG_ERR_REDIS, "redis cluster node %s:%d unavailable (retrying "
			     "shortly)", addr->host, addr->port);
		return NULL;
	}
	cc->c = store_connect_node(s->cfg, addr->host, addr->port, "", e);
	if (!cc->c)
		cc->down_until_ms = sg_now_ms() + RECONNECT_BACKOFF_MS;
	if (cc->c && cc->had) {
		store_count_reconnect();
		sg_log(SG_LOG_INFO, "reconnected to redis cluster node %s:%d", addr->host, addr->port);
	}
	if (cc->c)
		cc->had = true;
	return cc->c;
}

static void conn_forget(struct store *s, const redisContext *c)
{
	for (int i = 0; i < s->ncl; i++)
		if (s->cl[i].c == c)
			conn_drop(&s->cl[i]);
}

void store_cluster_close(struct store *s)
{
	for (int i = 0; i < s->ncl; i++)
		conn_drop(&s->cl[i]);
	s->ncl = 0;
	store_cluster_discard(s);
	if (s->c)
		redisFree(s->c);
	s->c = NULL;
}

/* ---- loading the map ---- */

/* CLUSTER SLOTS from the known nodes, then the seeds; the first full
 * answer replaces the map. force: even within MAP_REFRESH_MS of the last. */
static bool map_refresh(struct store *s, bool force, struct sg_error *e)
{
	struct store_cl_addr cand[2 * STORE_CL_MAX_NODES];
	int nc = 0;
	pthread_mutex_lock(&g_map.mu);
	double now = sg_now_ms();
	if (!force && g_map.loaded && now - g_map.last_refresh_ms < MAP_REFRESH_MS) {
		pthread_mutex_unlock(&g_map.mu);
		return true;
	}
	g_map.last_refresh_ms = now;
	for (int i = 0; i < g_map.nnodes; i++)
		cand[nc++] = g_map.nodes[i];
	pthread_mutex_unlock(&g_map.mu);
	nc += store_cl_parse_seeds(s->cfg->redis_cluster, cand + nc,
				   (int)(sizeof(cand) / sizeof(cand[0])) - nc);
	struct store_cl_addr nodes[STORE_CL_MAX_NODES];
	static unsigned short slot[STORE_SLOTS];
	static pthread_mutex_t parse_mu = PTHREAD_MUTEX_INITIALIZER;
	struct sg_error ce = { 0 };
	for (int i = 0; i < nc; i++) {
		redisContext *c = conn_get(s, &cand[i], NULL, 0, &ce);
		if (!c)
			continue;
		redisReply *r = redisCommand(c, "CLUSTER SLOTS");
		if (!r) {
			conn_forget(s, c);
			continue;
		}
		pthread_mutex_lock(&parse_mu);
		int n = store_cl_parse_slots(r, nodes, STORE_CL_MAX_NODES, slot);
		bool full = n > 0;
		for (int k = 0; full && k < STORE_SLOTS; k++)
			full = slot[k] != NO_NODE;
		if (full) {
			pthread_mutex_lock(&g_map.mu);
			memcpy(g_map.nodes, nodes, (size_t)n * sizeof(nodes[0]));
			g_map.nnodes = n;
			memcpy(g_map.slot, slot, sizeof(slot));
			g_map.loaded = true;
			g_map.epoch++;
			pthread_mutex_unlock(&g_map.mu);
		}
		pthread_mutex_unlock(&parse_mu);
		freeReplyObject(r);
		if (full)
			return true;
	}
	pthread_mutex_lock(&g_map.mu);
	bool loaded = g_map.loaded;
	pthread_mutex_unlock(&g_map.mu);
	if (!loaded)
		sg_error_set(e, SG_ERR_REDIS, "redis cluster: no seed node answered CLUSTER SLOTS "
			     "with every slot covered%s%s", ce.msg[0] ? ": " : "", ce.msg);
	return loaded;
}

static void map_set_slot(unsigned slot, const struct store_cl_addr *addr)
{
	pthread_mutex_lock(&g_map.mu);
	int k = node_index_locked(addr);
	if (k >= 0 && slot < STORE_SLOTS)
		g_map.slot[slot] = (unsigned short)k;
	pthread_mutex_unlock(&g_map.mu);
}

/* The master of slot (slot < 0: any master); false when unknown. */
static bool map_node(int slot, struct store_cl_addr *out)
{
	pthread_mutex_lock(&g_map.mu);
	bool ok = false;
	if (g_map.loaded) {
		unsigned k = slot >= 0 ? g_map.slot[slot] : g_map.slot[0];
		ok = k < (unsigned)g_map.nnodes;
		if (ok)
			*out = g_map.nodes[k];
	}
	pthread_mutex_unlock(&g_map.mu);
	return ok;
}

int store_cluster_node_of(struct store *s, const char *tenant, const char *id)
{
	char *k = store_key(s, "e", tenant, id);
	if (!k)
		return -1;
	unsigned slot = store_key_slot(k, strlen(k));
	free(k);
	pthread_mutex_lock(&g_map.mu);
	int node = g_map.loaded && g_map.slot[slot] < g_map.nnodes ? g_map.slot[slot] : -1;
	pthread_mutex_unlock(&g_map.mu);
	return node;
}

int store_cluster_masters(struct store *s, struct store_cl_addr *out, int cap,
			  struct sg_error *e)
{
	if (!map_refresh(s, false, e))
		return -1;
	bool seen[STORE_CL_MAX_NODES] = { false };
	int n = 0;
	pthread_mutex_lock(&g_map.mu);
	for (int sl = 0; sl < STORE_SLOTS; sl++) {
		unsigned k = g_map.slot[sl];
		if (k < (unsigned)g_map.nnodes && !seen[k] && n < cap) {
			seen[k] = true;
			out[n++] = g_map.nodes[k];
		}
	}
	pthread_mutex_unlock(&g_map.mu);
	return n;
}

int store_cluster_known(struct store_cl_addr *out, int cap)
{
	pthread_mutex_lock(&g_map.mu);
	int n = g_map.nnodes < cap ? g_map.nnodes : cap;
	memcpy(out, g_map.nodes, (size_t)n * sizeof(*out));
	pthread_mutex_unlock(&g_map.mu);
	return n;
}

/* ---- staging ---- */

enum sg_err store_cluster_conn(struct store *s, struct sg_error *e)
{
	if (!s->c) {
		/* never connected: only its output buffer is used */
		s->c = redisConnectFd(-1);
		if (!s->c)
			return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	}
	if (sg_now_ms() < s->next_attempt_ms)
		return sg_error_set(e, SG_ERR_REDIS, "redis cluster unavailable (retrying shortly)");
	pthread_mutex_lock(&g_map.mu);
	bool loaded = g_map.loaded;
	pthread_mutex_unlock(&g_map.mu);
	if (!loaded && !map_refresh(s, true, e)) {
		s->next_attempt_ms = sg_now_ms() + RECONNECT_BACKOFF_MS;
		return SG_ERR_REDIS;
	}
	return SG_OK;
}

void store_cluster_discard(struct store *s)
{
	for (size_t i = s->qpos; i < s->qn; i++)
		freeReplyObject(s->q[i]);
	s->qn = s->qpos = 0;
	if (s->c && s->c->obuf && sdslen(s->c->obuf)) {
		sdsfree(s->c->obuf);
		s->c->obuf = sdsempty();
	}
}

/* ---- cutting the staged bytes into units ---- */

struct cmd {
	size_t off, len;     /* bytes of the whole command */
	const char *name;    /* argv[0] (not NUL-terminated) */
	size_t name_len;
	int slot;            /* of its key; -1 for none */
};

struct unit {
	size_t first, n;     /* commands [first, first + n) */
	int slot;            /* -1: keyless */
	redisReply **rep;    /* n replies once read */
	bool asking;         /* send ASKING first */
	bool unsent;         /* its node could not be reached: nothing was sent */
	struct store_cl_addr to;
};

/* Parse one "$len\r\n<bytes>\r\n" at *p; false on a malformed buffer. */
static bool bulk(const char **p, const char *end, const char **str, size_t *len)
{
	if (*p >= end || **p != '$')
		return false;
	char *e = NULL;
	long long n = strtoll(*p + 1, &e, 10);
	if (!e || e + 2 > end || e[0] != '\r' || n < 0 || (size_t)(end - (e + 2)) < (size_t)n + 2)
		return false;
	*str = e + 2;
	*len = (size_t)n;
	*p = e + 2 + n + 2;
	return true;
}

static bool is_cmd(const struct cmd *c, const char *name)
{
	return c->name_len == strlen(name) && strncasecmp(c->name, name, c->name_len) == 0;
}

/* Arguments of a command parse_cmds keeps: enough to find the key of
 * every command the store sends (XREADGROUP's comes after STREAMS). */
#define KEPT_ARGS 12

/* Which argument is the key: 1 for the commands the store sends with a key,
 * 2 for XGROUP and XINFO (after the subcommand), 3 for EVAL/EVALSHA with
 * keys, the one after STREAMS for XREADGROUP, 0 for keyless ones. argv
 * holds the first min(argc, KEPT_ARGS) arguments. */
static int key_arg(const char *name, size_t len, const char *const *argv,
		   const size_t *alen, size_t argc)
{
	static const char *const keyless[] = { "MULTI", "EXEC", "DISCARD", "PING", "PUBLISH",
					       "SCAN", "ASKING", "CLUSTER", "INFO", "TIME",
					       "AUTH", "SELECT", "CLIENT", "DBSIZE", "WAIT",
					       "FLUSHALL", "FLUSHDB", "SCRIPT" };
	for (size_t i = 0; i < sizeof(keyless) / sizeof(keyless[0]); i++)
		if (len == strlen(keyless[i]) && strncasecmp(name, keyless[i], len) == 0)
			return 0;
	if ((len == 4 && strncasecmp(name, "EVAL", 4) == 0) ||
	    (len == 7 && strncasecmp(name, "EVALSHA", 7) == 0)) {
		if (argc < 4 || alen[2] == 0 || (alen[2] == 1 && argv[2][0] == '0'))
			return 0;
		return 3;
	}
	if ((len == 6 && strncasecmp(name, "XGROUP", 6) == 0) ||
	    (len == 5 && strncasecmp(name, "XINFO", 5) == 0))
		return argc > 2 ? 2 : 0;
	if ((len == 10 && strncasecmp(name, "XREADGROUP", 10) == 0) ||
	    (len == 5 && strncasecmp(name, "XREAD", 5) == 0)) {
		size_t kept = argc < KEPT_ARGS ? argc : KEPT_ARGS;
		/* past XREADGROUP's GROUP <group> <consumer>, which may be
		 * named "streams" */
		for (size_t i = len == 5 ? 1 : 4; i + 1 < kept; i++)
			if (alen[i] == 7 && strncasecmp(argv[i], "STREAMS", 7) == 0)
				return (int)i + 1;
		return 0;
	}
	return argc > 1 ? 1 : 0;
}

/* Split buf into commands; -1 on a malformed buffer (never expected: hiredis
 * formatted it). */
static long parse_cmds(const char *buf, size_t len, struct cmd **out)
{
	size_t cap = 16, n = 0;
	struct cmd *v = malloc(cap * sizeof(*v));
	const char *p = buf, *end = buf + len;
	if (!v)
		return -1;
	while (p < end) {
		const char *start = p;
		char *e = NULL;
		if (*p != '*')
			goto bad;
		long long argc = strtoll(p + 1, &e, 10);
		if (!e || e + 2 > end || e[0] != '\r' || argc < 1 || argc > 1000000)
			goto bad;
		p = e + 2;
		const char *av[KEPT_ARGS] = { 0 };
		size_t al[KEPT_ARGS] = { 0 };
		for (long long i = 0; i < argc; i++) {
			const char *str;
			size_t sl;
			if (!bulk(&p, end, &str, &sl))
				goto bad;
			if (i < KEPT_ARGS) {
				av[i] = str;
				al[i] = sl;
			}
		}
		if (n == cap) {
			struct cmd *nv = realloc(v, 2 * cap * sizeof(*v));
			if (!nv)
				goto bad;
			v = nv;
			cap *= 2;
		}
		int ka = key_arg(av[0], al[0], av, al, (size_t)argc);
		v[n] = (struct cmd){ .off = (size_t)(start - buf), .len = (size_t)(p - start),
				     .name = av[0], .name_len = al[0],
				     .slot = ka ? (int)store_key_slot(av[ka], al[ka]) : -1 };
		n++;
	}
	*out = v;
	return (long)n;
bad:
	free(v);
	return -1;
}

int store_cl_command_slot(const char *cmd, size_t len)
{
	struct cmd *c = NULL;
	long n = parse_cmds(cmd, len, &c);
	int slot = n == 1 ? c[0].slot : -2;
	free(c);
	return slot;
}

/* Group commands into units: MULTI ... EXEC together, the rest alone. */
static size_t make_units(struct cmd *c, size_t n, struct unit *u)
{
	size_t nu = 0;
	for (size_t i = 0; i < n;) {
		struct unit *x = &u[nu++];
		memset(x, 0, sizeof(*x));
		x->first = i;
		x->slot = -1;
		if (is_cmd(&c[i], "MULTI")) {
			size_t j = i + 1;
			while (j < n && !is_cmd(&c[j], "EXEC"))
				j++;
			x->n = (j < n ? j + 1 : n) - i;
		} else {
			x->n = 1;
		}
		for (size_t k = i; k < i + x->n && x->slot < 0; k++)
			x->slot = c[k].slot;
		i += x->n;
	}
	return nu;
}

/* ---- sending and reading ---- */

enum redirect { R_NONE, R_MOVED, R_ASK, R_RETRY };

/* The redirection an error reply asks for; *slot and *to filled for MOVED
 * and ASK ("MOVED 3999 127.0.0.1:6381"). */
static enum redirect redirect_of(const redisReply *r, unsigned *slot, struct store_cl_addr *to)
{
	if (!r || r->type != REDIS_REPLY_ERROR)
		return R_NONE;
	bool moved = strncmp(r->str, "MOVED ", 6) == 0, ask = strncmp(r->str, "ASK ", 4) == 0;
	if (moved || ask) {
		const char *p = r->str + (moved ? 6 : 4);
		char *sp = NULL;
		unsigned long sl = strtoul(p, &sp, 10);
		if (!sp || *sp != ' ' || sl >= STORE_SLOTS ||
		    !store_cl_parse_addr(sp + 1, strlen(sp + 1), to))
			return R_NONE;
		*slot = (unsigned)sl;
		return moved ? R_MOVED : R_ASK;
	}
	if (strncmp(r->str, "TRYAGAIN", 8) == 0 || strncmp(r->str, "CLUSTERDOWN", 11) == 0)
		return R_RETRY;
	return R_NONE;
}

static void unit_free_replies(struct unit *u)
{
	for (size_t i = 0; u->rep && i < u->n; i++)
		if (u->rep[i])
			freeReplyObject(u->rep[i]);
	free(u->rep);
	u->rep = NULL;
}

/* Send the units in todo[0..nt) (each to its u->to) and read their replies.
 * A unit whose node cannot be reached is marked unsent (safe to send again
 * elsewhere); false when a connection failed with replies outstanding (those
 * commands may or may not have run: they are not sent again; e set). */
static bool send_units(struct store *s, const char *buf, const struct cmd *c, struct unit **todo,
		       size_t nt, struct sg_error *e)
{
	bool ok = true;
	redisContext **ctx = calloc(nt + 1, sizeof(*ctx));
	if (!ctx) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		return false;
	}
	for (size_t i = 0; i < nt; i++) {
		struct unit *u = todo[i];
		/* one look-up per node: conn_get drops a connection whose peer has
		 * gone, and an earlier unit may already hold that one, commands
		 * appended, and read from it below */
		size_t j = 0;
		while (j < i && !addr_eq(&todo[j]->to, &u->to))
			j++;
		ctx[i] = j < i ? ctx[j] : conn_get(s, &u->to, ctx, i, e);
		u->unsent = !ctx[i];
		if (!ctx[i])
			continue;
		if (u->asking)
			redisAppendCommand(ctx[i], "ASKING");
		for (size_t k = u->first; k < u->first + u->n; k++)
			redisAppendFormattedCommand(ctx[i], buf + c[k].off, c[k].len);
	}
	for (size_t i = 0; i < nt; i++) {
		struct unit *u = todo[i];
		if (!ctx[i])
			continue;
		u->rep = calloc(u->n, sizeof(*u->rep));
		bool lost = !u->rep;
		void *r = NULL;
		if (!lost && u->asking) {
			lost = redisGetReply(ctx[i], &r) != REDIS_OK || !r;
			if (r)
				freeReplyObject(r);
		}
		for (size_t k = 0; k < u->n && !lost; k++) {
			r = NULL;
			lost = redisGetReply(ctx[i], &r) != REDIS_OK || !r;
			u->rep[k] = r;
		}
		if (lost) {
			sg_error_set(e, SG_ERR_REDIS, "redis cluster: connection to %s:%d lost: %s",
				     u->to.host, u->to.port,
				     ctx[i]->errstr[0] ? ctx[i]->errstr : "no reply");
			unit_free_replies(u);
			/* its later replies would be out of step: drop it for every unit */
			redisContext *dead = ctx[i];
			conn_forget(s, dead);
			for (size_t j = i; j < nt; j++)
				if (ctx[j] == dead)
					ctx[j] = NULL;
			ok = false;
		}
	}
	free(ctx);
	return ok;
}

/* The redirection a unit's replies ask for (the first one found). */
static enum redirect unit_redirect(const struct unit *u, unsigned *slot, struct store_cl_addr *to)
{
	for (size_t k = 0; k < u->n; k++) {
		enum redirect d = redirect_of(u->rep[k], slot, to);
		if (d != R_NONE)
			return d;
	}
	return R_NONE;
}

static bool queue_push(struct store *s, redisReply *r)
{
	if (s->qn == s->qcap) {
		size_t cap = s->qcap ? 2 * s->qcap : 64;
		redisReply **nq = realloc(s->q, cap * sizeof(*nq));
		if (!nq)
			return false;
		s->q = nq;
		s->qcap = cap;
	}
	s->q[s->qn++] = r;
	return true;
}

enum sg_err store_cluster_dispatch(struct store *s, struct sg_error *e)
{
	store_cluster_discard_replies(s);
	size_t len = s->c && s->c->obuf ? sdslen(s->c->obuf) : 0;
	if (len == 0)
		return sg_error_set(e, SG_ERR_REDIS, "redis cluster: nothing was sent");
	/* take the staged bytes: the store's next pipeline starts afresh */
	char *buf = s->c->obuf;
	s->c->obuf = sdsempty();
	struct cmd *c = NULL;
	struct unit *u = NULL, **todo = NULL;
	enum sg_err rc = SG_OK;
	long n = parse_cmds(buf, len, &c);
	if (n <= 0 || !(u = calloc((size_t)n, sizeof(*u))) ||
	    !(todo = calloc((size_t)n, sizeof(*todo)))) {
		rc = sg_error_set(e, n < 0 ? SG_ERR_INTERNAL : SG_ERR_NOMEM,
				  "redis cluster: cannot cut the pipeline into commands");
		goto out;
	}
	size_t nu = make_units(c, (size_t)n, u);
	for (size_t i = 0; i < nu; i++) {
		bool pinned = u[i].slot < 0 && s->pin.port;
		if (pinned)
			u[i].to = s->pin;
		else if (!map_node(u[i].slot, &u[i].to)) {
			rc = sg_error_set(e, SG_ERR_REDIS, "redis cluster: no node for slot %d",
					  u[i].slot);
			goto out;
		}
	}
	/* every unit is sent; those redirected are sent again, a bounded number
	 * of times, with a short back-off for TRYAGAIN and CLUSTERDOWN */
	size_t nt = nu;
	for (size_t i = 0; i < nu; i++)
		todo[i] = &u[i];
	for (int attempt = 0; nt > 0; attempt++) {
		if (!send_units(s, buf, c, todo, nt, e)) {
			/* a node went away: the map may be old */
			map_refresh(s, false, NULL);
			rc = SG_ERR_REDIS;
			goto out;
		}
		size_t again = 0;
		bool backoff = false;
		for (size_t i = 0; i < nt; i++) {
			struct unit *x = todo[i];
			unsigned slot = 0;
			struct store_cl_addr to;
			if (x->unsent) {
				/* never sent: send it again only where the map now says
				 * its slot is served; a node still down fails the call
				 * at once, as one Redis down does (e names the node) */
				struct store_cl_addr was = x->to;
				if (attempt + 1 >= MAX_ATTEMPTS || (x->slot < 0 && s->pin.port)) {
					rc = SG_ERR_REDIS;
					goto out;
				}
				map_refresh(s, false, NULL);
				if (!map_node(x->slot, &x->to) || addr_eq(&x->to, &was)) {
					rc = SG_ERR_REDIS;
					goto out;
				}
				x->asking = false;
				todo[again++] = x;
				continue;
			}
			enum redirect d = unit_redirect(x, &slot, &to);
			x->asking = false;
			if (d == R_NONE)
				continue;
			if (attempt + 1 >= MAX_ATTEMPTS)
				continue; /* the error reply reaches the caller as it is */
			unit_free_replies(x);
			if (d == R_MOVED) {
				map_set_slot(slot, &to);
				x->to = to;
			} else if (d == R_ASK) {
				x->to = to;
				x->asking = true;
			} else {
				backoff = true;
				if (x->slot >= 0 || !s->pin.port) {
					/* the slot's master may have changed */
					x->to.port = 0;
				}
			}
			todo[again++] = x;
		}
		if (again && backoff) {
			double ms = 20.0 * (attempt + 1);
			struct timespec ts = { 0, (long)(ms * 1e6) };
			nanosleep(&ts, NULL);
		}
		if (again)
			map_refresh(s, false, NULL);
		for (size_t i = 0; i < again; i++)
			if (!todo[i]->to.port && !map_node(todo[i]->slot, &todo[i]->to)) {
				rc = sg_error_set(e, SG_ERR_REDIS, "redis cluster: no node for slot %d",
						  todo[i]->slot);
				goto out;
			}
		nt = again;
	}
	for (size_t i = 0; i < nu; i++)
		for (size_t k = 0; k < u[i].n; k++) {
			if (!queue_push(s, u[i].rep[k])) {
				rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
				goto out;
			}
			u[i].rep[k] = NULL;
		}
out:
	if (u)
		for (long i = 0; i < n; i++)
			unit_free_replies(&u[i]);
	if (rc != SG_OK)
		store_cluster_discard_replies(s);
	free(u);
	free(todo);
	free(c);
	sdsfree(buf);
	return rc;
}

void store_cluster_discard_replies(struct store *s)
{
	for (size_t i = s->qpos; i < s->qn; i++)
		freeReplyObject(s->q[i]);
	s->qn = s->qpos = 0;
}

redisReply *store_cluster_next(struct store *s, struct sg_error *e)
{
	if (s->qpos >= s->qn && store_cluster_dispatch(s, e) != SG_OK)
		return NULL;
	if (s->qpos >= s->qn) {
		sg_error_set(e, SG_ERR_REDIS, "redis cluster: no reply");
		return NULL;
	}
	redisReply *r = s->q[s->qpos++];
	if (s->qpos == s->qn)
		s->qn = s->qpos = 0;
	return r;
}
