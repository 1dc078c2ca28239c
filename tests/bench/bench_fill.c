/* Benchmark helper (not a test): fills Redis with cache entries for
 * scripts/bench by cloning one template entry that the real gateway wrote.
 * Every clone keeps the template's fields (scope, namespace, model, dim,
 * answer, tokens), so it lands in the same index partition, but gets a new
 * id, a random L2-normalised vector, its own query text and its own exact
 * key, all with the template's TTL. Key names are derived from the template
 * keys ("<prefix><kind>:{<bucket tag>}:<tenant>:<id or sha>"): each clone's
 * id is fitted to its exact key's bucket and both keys carry the tag of
 * that bucket (semgate/store/layout.h), as src/store/cache.c names them.
 * It only writes keys it creates; it never modifies or deletes the template. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "semgate/store/layout.h"

#define MAX_FIELDS 64

struct field {
	char *name;
	char *val;
	size_t len;
};

struct tmpl {
	struct field f[MAX_FIELDS];
	int n;
	int vec_i, query_i, exact_i, created_i, hits_i, answer_i;
	int dim;
	long long pttl_ms;
	char *entry_kind;        /* "<prefix>e:", the entry key before its tag */
	char *exact_kind;        /* "<prefix>x:" */
	char *tenant;
};

struct opts {
	const char *entry_key;
	const char *exact_key;
	long long add;
	long long start;
	long long batch;
	uint64_t seed;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void hex_of(uint64_t *s, char *out, int nchars)
{
	static const char hex[] = "0123456789abcdef";
	uint64_t x = 0;
	for (int i = 0; i < nchars; i++) {
		if (i % 16 == 0)
			x = splitmix(s);
		out[i] = hex[x & 15];
		x >>= 4;
	}
	out[nchars] = '\0';
}

/* Uniform components, then L2-normalised in double: random directions are
 * all the benchmark needs (their similarity to any query stays far below
 * the threshold). */
static void random_unit(uint64_t *s, float *v, int dim)
{
	double sum = 0.0;
	for (int j = 0; j < dim; j++) {
		double x = (double)(splitmix(s) >> 11) / (double)(1ULL << 53) * 2.0 - 1.0;
		v[j] = (float)x;
		sum += (double)v[j] * (double)v[j];
	}
	double scale = sum > 0.0 ? 1.0 / sqrt(sum) : 1.0;
	for (int j = 0; j < dim; j++)
		v[j] = (float)(v[j] * scale);
}

static bool parse_ll(const char *s, long long min, long long *out)
{
	char *end = NULL;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min)
		return false;
	*out = v;
	return true;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bench_fill --entry-key KEY --exact-key KEY --add N [--start I]\n"
		"                  [--batch B] [--seed S]\n"
		"Clones the cache entry hash KEY (and its exact key) N times with random\n"
		"normalised vectors; query texts are numbered from I. Redis from\n"
		"SEMGATE_REDIS_HOST, SEMGATE_REDIS_PORT, SEMGATE_REDIS_PASSWORD, SEMGATE_REDIS_DB.\n");
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
	long long seed = 1;
	o->batch = 1000;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout);
			exit(0);
		}
		if (!v) {
			fprintf(stderr, "bench_fill: %s needs a value\n", a);
			return -1;
		}
		i++;
		if (strcmp(a, "--entry-key") == 0)
			o->entry_key = v;
		else if (strcmp(a, "--exact-key") == 0)
			o->exact_key = v;
		else if (strcmp(a, "--add") == 0 && parse_ll(v, 0, &o->add))
			;
		else if (strcmp(a, "--start") == 0 && parse_ll(v, 0, &o->start))
			;
		else if (strcmp(a, "--batch") == 0 && parse_ll(v, 1, &o->batch))
			;
		else if (strcmp(a, "--seed") == 0 && parse_ll(v, 0, &seed))
			;
		else {
			fprintf(stderr, "bench_fill: bad option or value: %s %s\n", a, v);
			return -1;
		}
	}
	if (!o->entry_key || !o->exact_key) {
		usage(stderr);
		return -1;
	}
	o->seed = (uint64_t)seed;
	return 0;
}

static redisContext *connect_redis(void)
{
	const char *host = getenv("SEMGATE_REDIS_HOST");
	const char *port_s = getenv("SEMGATE_REDIS_PORT");
	const char *pass = getenv("SEMGATE_REDIS_PASSWORD");
	const char *db = getenv("SEMGATE_REDIS_DB");
	long long port = 6379;
	if (port_s && !parse_ll(port_s, 1, &port)) {
		fprintf(stderr, "bench_fill: SEMGATE_REDIS_PORT '%s' is not a port\n", port_s);
		return NULL;
	}
	struct timeval tv = { 30, 0 };
	redisContext *c = redisConnectWithTimeout(host && *host ? host : "127.0.0.1",
						  (int)port, tv);
	if (!c || c->err) {
		fprintf(stderr, "bench_fill: cannot connect to Redis: %s\n",
			c ? c->errstr : "out of memory");
		redisFree(c);
		return NULL;
	}
	redisSetTimeout(c, tv);
	redisReply *r = NULL;
	if (pass && *pass) {
		r = redisCommand(c, "AUTH %s", pass);
		if (!r || r->type == REDIS_REPLY_ERROR)
			goto fail;
		freeReplyObject(r);
	}
	if (db && *db && strcmp(db, "0") != 0) {
		r = redisCommand(c, "SELECT %s", db);
		if (!r || r->type == REDIS_REPLY_ERROR)
			goto fail;
		freeReplyObject(r);
	}
	return c;
fail:
	fprintf(stderr, "bench_fill: Redis AUTH/SELECT failed\n");
	if (r)
		freeReplyObject(r);
	redisFree(c);
	return NULL;
}

static void tmpl_finish(struct tmpl *t)
{
	for (int i = 0; i < t->n; i++) {
		free(t->f[i].name);
		free(t->f[i].val);
	}
	free(t->entry_kind);
	free(t->exact_kind);
	free(t->tenant);
}

static char *dup_bytes(const char *p, size_t len)
{
	char *s = malloc(len + 1);
	if (s) {
		memcpy(s, p, len);
		s[len] = '\0';
	}
	return s;
}

/* Split "<kind prefix>{<tag>}:<tenant>:<suffix>" (key must end with ":" +
 * suffix, the id or sha) into its kind prefix (up to the '{') and tenant. */
static bool key_parts(const char *key, const char *suffix, char **kind, char **tenant)
{
	size_t kl = strlen(key), sl = strlen(suffix);
	*kind = *tenant = NULL;
	if (sl == 0 || kl <= sl + 1 || strcmp(key + kl - sl, suffix) != 0 ||
	    key[kl - sl - 1] != ':')
		return false;
	const char *open = strchr(key, '{'), *close = open ? strchr(open, '}') : NULL;
	if (!close || close[1] != ':' || close + 2 >= key + kl - sl - 1)
		return false;
	*kind = dup_bytes(key, (size_t)(open - key));
	*tenant = dup_bytes(close + 2, (size_t)(key + kl - sl - 1 - (close + 2)));
	return *kind && *tenant;
}

static int load_template(redisContext *c, const struct opts *o, struct tmpl *t)
{
	long long dim = 0;
	memset(t, 0, sizeof(*t));
	t->vec_i = t->query_i = t->exact_i = t->created_i = t->hits_i = t->answer_i = -1;
	redisReply *r = redisCommand(c, "HGETALL %s", o->entry_key);
	if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0 ||
	    r->elements % 2 || r->elements / 2 > MAX_FIELDS) {
		fprintf(stderr, "bench_fill: template %s is missing or not a hash\n",
			o->entry_key);
		if (r)
			freeReplyObject(r);
		return -1;
	}
	for (size_t i = 0; i < r->elements; i += 2) {
		struct field *f = &t->f[t->n];
		f->name = dup_bytes(r->element[i]->str, r->element[i]->len);
		f->val = dup_bytes(r->element[i + 1]->str, r->element[i + 1]->len);
		f->len = r->element[i + 1]->len;
		if (!f->name || !f->val) {
			freeReplyObject(r);
			return -1;
		}
		if (strcmp(f->name, "vector") == 0)
			t->vec_i = t->n;
		else if (strcmp(f->name, "query") == 0)
			t->query_i = t->n;
		else if (strcmp(f->name, "exact") == 0)
			t->exact_i = t->n;
		else if (strcmp(f->name, "created") == 0)
			t->created_i = t->n;
		else if (strcmp(f->name, "hits") == 0)
			t->hits_i = t->n;
		else if (strcmp(f->name, "answer") == 0)
			t->answer_i = t->n;
		else if (strcmp(f->name, "dim") == 0 && parse_ll(f->val, 1, &dim) && dim <= 8192)
			t->dim = (int)dim;
		t->n++;
	}
	freeReplyObject(r);
	if (t->vec_i < 0 || t->query_i < 0 || t->exact_i < 0 || t->answer_i < 0 ||
	    t->dim <= 0 || t->f[t->vec_i].len != sizeof(float) * (size_t)t->dim) {
		fprintf(stderr, "bench_fill: template lacks query/answer/exact/vector "
			"or its vector does not match dim\n");
		return -1;
	}
	r = redisCommand(c, "PTTL %s", o->entry_key);
	t->pttl_ms = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
	if (r)
		freeReplyObject(r);
	if (t->pttl_ms <= 0) {
		fprintf(stderr, "bench_fill: template has no TTL; every entry must have one\n");
		return -1;
	}
	/* the entry key ends with ":" + id: the id is what follows the last ':' */
	const char *id = strrchr(o->entry_key, ':');
	char *xtenant = NULL;
	bool ok = id && key_parts(o->entry_key, id + 1, &t->entry_kind, &t->tenant) &&
		  key_parts(o->exact_key, t->f[t->exact_i].val, &t->exact_kind, &xtenant) &&
		  strcmp(t->tenant, xtenant) == 0;
	free(xtenant);
	if (!ok) {
		fprintf(stderr, "bench_fill: %s and %s are not an entry key and the exact key "
			"of its hash\n", o->entry_key, o->exact_key);
		return -1;
	}
	return 0;
}

/* Read n replies, counting errors. Returns -1 when the connection fails. */
static int drain(redisContext *c, long long n, long long *errors)
{
	for (long long i = 0; i < n; i++) {
		void *rp = NULL;
		if (redisGetReply(c, &rp) != REDIS_OK || !rp) {
			fprintf(stderr, "bench_fill: Redis connection failed: %s\n", c->errstr);
			return -1;
		}
		redisReply *r = rp;
		if (r->type == REDIS_REPLY_ERROR) {
			if (*errors == 0)
				fprintf(stderr, "bench_fill: Redis error: %s\n", r->str);
			(*errors)++;
		}
		freeReplyObject(r);
	}
	return 0;
}

static int fill(redisContext *c, const struct opts *o, const struct tmpl *t)
{
	const char *argv[2 + 2 * MAX_FIELDS];
	size_t alen[2 + 2 * MAX_FIELDS];
	float *vec = malloc(sizeof(float) * (size_t)t->dim);
	const struct field *ans = &t->f[t->answer_i];
	char *xval = malloc(64 + 1 + ans->len);
	size_t cap = strlen(t->entry_kind) + strlen(t->exact_kind) + strlen(t->tenant) +
		     STORE_TAG_MAX + 4 + 65;
	char *ekey = malloc(cap), *xkey = malloc(cap);
	int rc = 0;
	if (!vec || !xval || !ekey || !xkey) {
		fprintf(stderr, "bench_fill: out of memory\n");
		rc = -1;
		goto out;
	}
	char id[33], sha[65];
	char query[160], created[24], ttl[24];
	snprintf(created, sizeof(created), "%lld", (long long)time(NULL));
	snprintf(ttl, sizeof(ttl), "%lld", t->pttl_ms);
	long long errors = 0, pending = 0;
	double t0 = now_s(), last = t0;
	for (long long k = 0; k < o->add; k++) {
		long long i = o->start + k;
		uint64_t s = o->seed * 0x2545f4914f6cdd1dULL ^ (uint64_t)i * 0x9e3779b97f4a7c15ULL;
		hex_of(&s, id, 32);
		hex_of(&s, sha, 64);
		/* as cache_new_id + store_entry_id_fit: the entry shares a bucket
		 * with its exact key */
		store_entry_id_fit(t->tenant, sha, id);
		const char *tag = store_bucket_tag(store_bucket_of(t->tenant, sha));
		int elen = snprintf(ekey, cap, "%s{%s}:%s:%s", t->entry_kind, tag, t->tenant, id);
		int xlen = snprintf(xkey, cap, "%s{%s}:%s:%s", t->exact_kind, tag, t->tenant, sha);
		random_unit(&s, vec, t->dim);
		int qn = snprintf(query, sizeof(query),
				  "Benchmark filler question number %lld: what about topic %llu?",
				  i, (unsigned long long)(splitmix(&s) % 100000));
		int n = 0;
		argv[n] = "HSET"; alen[n++] = 4;
		argv[n] = ekey; alen[n++] = (size_t)elen;
		for (int f = 0; f < t->n; f++) {
			argv[n] = t->f[f].name;
			alen[n++] = strlen(t->f[f].name);
			if (f == t->vec_i) {
				argv[n] = (const char *)vec;
				alen[n++] = sizeof(float) * (size_t)t->dim;
			} else if (f == t->query_i) {
				argv[n] = query;
				alen[n++] = (size_t)qn;
			} else if (f == t->exact_i) {
				argv[n] = sha;
				alen[n++] = 64;
			} else if (f == t->created_i) {
				argv[n] = created;
				alen[n++] = strlen(created);
			} else if (f == t->hits_i) {
				argv[n] = "0";
				alen[n++] = 1;
			} else {
				argv[n] = t->f[f].val;
				alen[n++] = t->f[f].len;
			}
		}
		redisAppendCommandArgv(c, n, argv, alen);
		redisAppendCommand(c, "PEXPIRE %b %s", ekey, (size_t)elen, ttl);
		memcpy(xval, id, 32);
		xval[32] = '\n';
		memcpy(xval + 33, ans->val, ans->len);
		redisAppendCommand(c, "SET %b %b PX %s", xkey, (size_t)xlen, xval,
				   33 + ans->len, ttl);
		pending += 3;
		if (pending >= 3 * o->batch) {
			if (drain(c, pending, &errors) != 0) {
				rc = -1;
				break;
			}
			pending = 0;
			double now = now_s();
			if (now - last >= 5.0) {
				fprintf(stderr, "bench_fill: %lld/%lld entries (%.0f/s)\n", k + 1,
					o->add, (double)(k + 1) / (now - t0));
				last = now;
			}
		}
	}
	if (rc == 0 && pending && drain(c, pending, &errors) != 0)
		rc = -1;
	double dt = now_s() - t0;
	if (rc == 0 && errors) {
		fprintf(stderr, "bench_fill: %lld Redis errors\n", errors);
		rc = -1;
	}
	if (rc == 0)
		printf("bench_fill: added %lld entries in %.2f s (%.0f entries/s)\n", o->add, dt,
		       dt > 0 ? (double)o->add / dt : 0.0);
out:
	free(vec);
	free(xval);
	free(ekey);
	free(xkey);
	return rc;
}

int main(int argc, char **argv)
{
	struct opts o = { 0 };
	if (parse_opts(argc, argv, &o) != 0)
		return 2;
	redisContext *c = connect_redis();
	if (!c)
		return 1;
	struct tmpl t;
	int rc = 1;
	if (load_template(c, &o, &t) == 0 && fill(c, &o, &t) == 0)
		rc = 0;
	tmpl_finish(&t);
	redisFree(c);
	return rc;
}
