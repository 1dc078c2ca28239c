/* Stores written behind the answer (behind.h): a bounded FIFO of owned
 * copies, two small hash tables that find a queued entry by id and by
 * exact key, and one writer thread that takes everything queued at once
 * and stores it in order, up to BATCH_MAX stores per round trip. A job stays findable until Redis has it (or the
 * store failed and its index row is gone). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/app/app.h"
#include "semgate/core/buf.h"
#include "semgate/core/log.h"
#include "semgate/core/metrics.h"
#include "semgate/cache/behind.h"
#include "semgate/cache/cache.h"
#include "semgate/cache/scope.h"
#include "semgate/store/layout.h"
#include "semgate/store/ops.h"
#include "semgate/store/store.h"
#include "semgate/vindex/vindex.h"

/* Most stores queued at once, and most answer bytes: beyond either the
 * request thread waits (Redis is far behind; holding more would only
 * grow memory). */
#define BEHIND_CAP 4096
#define BEHIND_BYTES_CAP (64u << 20)
#define BUCKETS 1024 /* per table; a power of two */
/* Most stores sent in one pipeline (one round trip for all). */
#define BATCH_MAX 64

struct job {
	struct job *next;              /* FIFO */
	struct job *next_id, *next_ex; /* hash chains */
	char *tenant, *ns, *answer;
	size_t answer_len;
	struct scope_info si;          /* scope, exact and an owned query */
	long long tokens, ttl_s, created;
	float *vec;
	int dim;
	int node;                      /* store_node_of, once node_known */
	bool node_known;
	char id[65];
};

struct behind {
	struct sg_app *app;
	struct store *store;           /* the writer's own */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t more, room, settled;
	struct job *head, *tail;
	struct job *by_id[BUCKETS], *by_exact[BUCKETS];
	size_t count, bytes;
	unsigned long long queued, done, stored, failed;
	bool stop;
};

static uint32_t hash2(const char *a, const char *b)
{
	uint32_t h = 2166136261u;
	for (const char *p = a; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	h = (h ^ 0x1f) * 16777619u;
	for (const char *p = b; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return h & (BUCKETS - 1);
}

static void job_free(struct job *j)
{
	if (!j)
		return;
	free(j->tenant);
	free(j->ns);
	free(j->answer);
	free(j->si.query);
	free(j->vec);
	free(j);
}

static struct job *job_new(const struct behind_store *in)
{
	struct job *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->tenant = strdup(in->tenant);
	j->ns = strdup(in->ns ? in->ns : "");
	j->answer = malloc(in->answer_len + 1);
	j->si = *in->si;
	j->si.query = malloc(in->si->query_len + 1);
	if (in->vec && in->dim > 0)
		j->vec = malloc(sizeof(float) * (size_t)in->dim);
	if (!j->tenant || !j->ns || !j->answer || !j->si.query ||
	    (in->vec && in->dim > 0 && !j->vec)) {
		job_free(j);
		return NULL;
	}
	memcpy(j->answer, in->answer, in->answer_len);
	j->answer[in->answer_len] = '\0';
	j->answer_len = in->answer_len;
	memcpy(j->si.query, in->si->query, in->si->query_len);
	j->si.query[in->si->query_len] = '\0';
	if (j->vec) {
		memcpy(j->vec, in->vec, sizeof(float) * (size_t)in->dim);
		j->dim = in->dim;
	}
	j->tokens = in->tokens;
	j->ttl_s = in->ttl_s;
	j->created = (long long)time(NULL);
	cache_new_id(j->id);
	/* in the slot bucket of its exact key (semgate/store/layout.h) */
	store_entry_id_fit(j->tenant, j->si.exact, j->id);
	return j;
}

static size_t job_bytes(const struct job *j)
{
	return j->answer_len + j->si.query_len + sizeof(float) * (size_t)j->dim;
}

/* Unlink j from both tables. Under b->mu. */
static void forget_locked(struct behind *b, struct job *j)
{
	struct job **pp = &b->by_id[hash2(j->tenant, j->id)];
	while (*pp && *pp != j)
		pp = &(*pp)->next_id;
	if (*pp)
		*pp = j->next_id;
	pp = &b->by_exact[hash2(j->tenant, j->si.exact)];
	while (*pp && *pp != j)
		pp = &(*pp)->next_ex;
	if (*pp)
		*pp = j->next_ex;
}

/* The end of one job's store: its outcome counted and logged, and the
 * job no longer findable, so a wait for it (behind_settle_entries) or for
 * room ends now, not after the rest of the writer's list. maybe: a failure
 * after the put went out, which may still have stored it. */
static void job_done(struct behind *b, struct job *j, enum sg_err rc, bool maybe,
		     const struct sg_error *e)
{
	/* a put that went out may have been stored: its row stays, and a
	 * later lookup that finds the row but no entry drops it */
	if (rc != SG_OK && !maybe)
		vindex_remove(b->app->vindex, j->id);
	if (rc != SG_OK)
		sg_log(SG_LOG_WARN, "answer not cached: entry %s: %s", j->id, e->msg);
	metrics_inc(rc == SG_OK ? SG_C_STORE_BEHIND_STORED : SG_C_STORE_BEHIND_FAILED);
	pthread_mutex_lock(&b->mu);
	forget_locked(b, j);
	if (rc == SG_OK)
		b->stored++;
	else
		b->failed++;
	b->count--;
	b->bytes -= job_bytes(j);
	b->done++;
	pthread_cond_broadcast(&b->room);
	pthread_cond_broadcast(&b->settled);
	pthread_mutex_unlock(&b->mu);
}

/* The node j's keys live on (store_node_of), looked up once. */
static int job_node(struct behind *b, struct job *j)
{
	if (!j->node_known) {
		j->node = store_node_of(b->store, j->tenant, j->id);
		j->node_known = true;
	}
	return j->node;
}

/* The next job for a pipeline to node at or after *pp, unlinked (the
 * others keep their order; *pp moves past those skipped), or NULL. One
 * key's jobs are all on one node, so each key's stores stay in order. */
static struct job *take_for(struct behind *b, struct job ***pp, int node)
{
	while (**pp && job_node(b, **pp) != node)
		*pp = &(**pp)->next;
	struct job *j = **pp;
	if (j)
		**pp = j->next;
	return j;
}

/* Store up to BATCH_MAX jobs of *list in one pipeline: every put sent,
 * then every reply read, one round trip for all (as the accounting writes
 * its counts). On a cluster the jobs of one pipeline are those of one
 * node, so a node that fails fails its own stores only. Takes the jobs it
 * stored off *list and frees them. */
static void write_batch(struct behind *b, struct job **list)
{
	struct pending {
		struct job *j;
		struct store_put p;
		enum sg_err rc;
		struct sg_error e;
		bool sent;
	} batch[BATCH_MAX];
	size_t n = 0;
	/* (behind_start made b->store, or did not start the writer) */
	int node = job_node(b, *list);
	unsigned long serial = 0;
	struct job *j, **pp = list;
	while (n < BATCH_MAX && (j = take_for(b, &pp, node))) {
		struct pending *x = &batch[n++];
		memset(x, 0, sizeof(*x));
		x->j = j;
		x->rc = cache_store_send(b->app, b->store, j->tenant, j->ns, &j->si, true,
					 j->answer, j->answer_len, j->tokens, j->vec, j->dim,
					 j->ttl_s, j->id, &x->p, &x->e);
		x->sent = x->rc == SG_OK;
		/* nothing goes out before the first read: a pipeline dropped or
		 * replaced by this send took the earlier puts with it, unsent */
		if (n > 1 && (store_pipeline_lost(b->store) ||
			      store_conn_serial(b->store) != serial)) {
			for (size_t i = 0; i + 1 < n; i++) {
				if (!batch[i].sent)
					continue;
				batch[i].sent = false;
				batch[i].rc = sg_error_set(&batch[i].e, SG_ERR_REDIS,
							   "redis connection replaced before "
							   "the store went out");
			}
		}
		serial = store_conn_serial(b->store);
		if (!x->sent)
			break; /* the next batch tries again from a fresh pipeline */
	}
	bool any = false;
	for (size_t i = 0; i < n; i++)
		any |= batch[i].sent;
	if (any)
		metrics_inc(SG_C_STORE_BEHIND_BATCHES);
	for (size_t i = 0; i < n; i++)
		if (batch[i].sent)
			batch[i].rc = cache_store_recv(b->app, b->store, batch[i].j->tenant,
						       &batch[i].j->si, true, &batch[i].p,
						       &batch[i].e);
	for (size_t i = 0; i < n; i++) {
		struct pending *x = &batch[i];
		if (x->rc == SG_OK)
			store_entry_put_finish(b->store, x->j->tenant, x->j->id, &x->p);
		job_done(b, x->j, x->rc, x->sent, &x->e);
		job_free(x->j);
	}
}

static void *writer(void *arg)
{
	struct behind *b = arg;
	pthread_mutex_lock(&b->mu);
	for (;;) {
		while (!b->head && !b->stop)
			pthread_cond_wait(&b->more, &b->mu);
		if (!b->head)
			break; /* stopping, and everything is written */
		struct job *list = b->head;
		b->head = b->tail = NULL;
		pthread_mutex_unlock(&b->mu);
		while (list)
			write_batch(b, &list);
		pthread_mutex_lock(&b->mu);
	}
	pthread_mutex_unlock(&b->mu);
	return NULL;
}

static void behind_free(struct behind *b)
{
	store_destroy(b->store);
	pthread_cond_destroy(&b->more);
	pthread_cond_destroy(&b->room);
	pthread_cond_destroy(&b->settled);
	pthread_mutex_destroy(&b->mu);
	free(b);
}

struct behind *behind_start(struct sg_app *app, struct sg_error *e)
{
	struct behind *b = calloc(1, sizeof(*b));
	if (!b) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory for the store writer");
		return NULL;
	}
	b->app = app;
	b->store = store_create(app->cfg);
	pthread_mutex_init(&b->mu, NULL);
	pthread_cond_init(&b->more, NULL);
	pthread_cond_init(&b->room, NULL);
	pthread_cond_init(&b->settled, NULL);
	if (!b->store || pthread_create(&b->thread, NULL, writer, b) != 0) {
		sg_error_set(e, SG_ERR_INTERNAL, "cannot start the store writer thread");
		behind_free(b);
		return NULL;
	}
	return b;
}

void behind_stop(struct behind *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&b->mu);
	b->stop = true;
	pthread_cond_signal(&b->more);
	pthread_mutex_unlock(&b->mu);
	pthread_join(b->thread, NULL);
	behind_free(b);
}

bool behind_queue(struct behind *b, const struct behind_store *in, char id_out[65])
{
	struct job *j = job_new(in);
	if (!j)
		return false;
	size_t bytes = job_bytes(j);
	pthread_mutex_lock(&b->mu);
	/* an answer bigger than the byte bound waits for an empty queue */
	while ((b->count >= BEHIND_CAP || (b->count && b->bytes + bytes > BEHIND_BYTES_CAP)) &&
	       !b->stop)
		pthread_cond_wait(&b->room, &b->mu);
	/* findable before its index row exists: a search that finds the row
	 * then finds the entry */
	b->count++;
	b->bytes += bytes;
	uint32_t hi = hash2(j->tenant, j->id), he = hash2(j->tenant, j->si.exact);
	j->next_id = b->by_id[hi];
	b->by_id[hi] = j;
	j->next_ex = b->by_exact[he];
	b->by_exact[he] = j;
	memcpy(id_out, j->id, sizeof(j->id));
	bool index = j->vec != NULL;
	pthread_mutex_unlock(&b->mu);
	/* the writer cannot take j before it is queued below, so j lives */
	struct sg_error ve = { 0 };
	if (index && cache_index_add(b->app, in->tenant, in->si->scope, in->vec, in->dim,
				     in->ttl_s, id_out, &ve) != SG_OK)
		sg_log(SG_LOG_WARN, "entry %s stored without an index row: %s", id_out, ve.msg);
	pthread_mutex_lock(&b->mu);
	if (b->tail)
		b->tail->next = j;
	else
		b->head = j;
	b->tail = j;
	b->queued++;
	pthread_cond_signal(&b->more);
	pthread_mutex_unlock(&b->mu);
	return true;
}

/* The queued job of tenant whose id (by_id) or exact key is key, locked
 * (the caller unlocks b->mu), or NULL unlocked. */
static struct job *find_lock(struct behind *b, const char *tenant, const char *key, bool by_id)
{
	if (!b)
		return NULL;
	pthread_mutex_lock(&b->mu);
	struct job *j = (by_id ? b->by_id : b->by_exact)[hash2(tenant, key)];
	while (j && (strcmp(j->tenant, tenant) != 0 ||
		     strcmp(by_id ? j->id : j->si.exact, key) != 0))
		j = by_id ? j->next_id : j->next_ex;
	if (!j)
		pthread_mutex_unlock(&b->mu);
	return j;
}

bool behind_get_exact(struct behind *b, const char *tenant, const char *exact,
		      struct store_answer *out)
{
	memset(out, 0, sizeof(*out));
	struct job *j = find_lock(b, tenant, exact, false);
	if (!j)
		return false;
	bool ok = (out->answer = sg_memdup0(j->answer, j->answer_len)) != NULL;
	memcpy(out->id, j->id, sizeof(out->id));
	out->answer_len = j->answer_len;
	out->tokens = j->tokens;
	snprintf(out->kind, sizeof(out->kind), "chat");
	pthread_mutex_unlock(&b->mu);
	return ok;
}

bool behind_get_entry(struct behind *b, const char *tenant, const char *id,
		      struct store_entry_view *out)
{
	memset(out, 0, sizeof(*out));
	struct job *j = find_lock(b, tenant, id, true);
	if (!j)
		return false;
	memcpy(out->id, j->id, sizeof(out->id));
	out->query = sg_memdup0(j->si.query, j->si.query_len);
	out->query_len = j->si.query_len;
	out->answer = sg_memdup0(j->answer, j->answer_len);
	out->answer_len = j->answer_len;
	out->ns = strdup(j->ns);
	out->scope = strdup(j->si.scope);
	out->kind = strdup("chat");
	out->tags = strdup("");
	out->model = strdup(j->vec ? b->app->embedder.model : "");
	out->refused = strdup("");
	out->dim = j->dim;
	out->created = j->created;
	out->tokens = j->tokens;
	long long left = j->ttl_s - ((long long)time(NULL) - j->created);
	out->ttl_s = left > 0 ? left : 0;
	pthread_mutex_unlock(&b->mu);
	if (!out->query || !out->answer || !out->ns || !out->scope || !out->kind || !out->tags ||
	    !out->model || !out->refused) {
		store_entry_view_finish(out);
		return false;
	}
	return true;
}

void behind_settle(struct behind *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&b->mu);
	unsigned long long target = b->queued;
	while (b->done < target)
		pthread_cond_wait(&b->settled, &b->mu);
	pthread_mutex_unlock(&b->mu);
}

bool behind_settle_entries(struct behind *b, const struct store_entry_hits *eh, size_t n)
{
	bool waited = false;
	for (size_t i = 0; b && i < n; i++) {
		struct job *j;
		while ((j = find_lock(b, eh[i].tenant, eh[i].id, true))) {
			/* locked and still queued: wait for the writer's next store */
			waited = true;
			pthread_cond_wait(&b->settled, &b->mu);
			pthread_mutex_unlock(&b->mu);
		}
	}
	return waited;
}

void behind_get_stats(struct behind *b, struct behind_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!b)
		return;
	pthread_mutex_lock(&b->mu);
	out->queued = b->queued;
	out->stored = b->stored;
	out->failed = b->failed;
	out->pending = b->count;
	pthread_mutex_unlock(&b->mu);
}
