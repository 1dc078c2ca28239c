/* Vector index: per-partition row-major float32 matrices of L2-normalised
 * rows (the truth) with an int8 compact copy, ids and expiry times beside
 * them; partitions, the id map, locking and the search threads live here,
 * the compact copy's arithmetic in q8.c. Owns only its own memory:
 * it never talks to Redis, never logs request data and never changes
 * OpenBLAS' settings. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "semgate/core/err.h"
#include "semgate/vindex/vindex.h"
#include "priv.h"

_Static_assert(VINDEX_DIM_MAX <= VQ_DIM_MAX, "the int8 kernels encode rows of every allowed dimension");

#define INITIAL_ROWS 8
/* Never shrink a partition's arrays below this many rows. */
#define SHRINK_FLOOR_ROWS 64
/* Candidates carry 32-bit row numbers. */
#define ROWS_MAX ((size_t)INT32_MAX)
/* Default for vindex_tuning.split_min_rows: below this a second thread costs
 * more to start than it saves (measured by tests/bench/bench_vindex). */
#define SPLIT_MIN_ROWS 65536
/* Rows per chunk of a shared first pass: ~1.6 MB of codes at dim 384, so
 * the searcher never waits long for the helper's last chunk. */
#define SHARE_CHUNK_ROWS 8192
/* Candidate buffer per query and scanning thread; a full buffer is pruned
 * or re-ranked, never grown, so scratch does not grow with the partition. */
#define CAND_CAP_SINGLE 4096
#define CAND_CAP_BATCH 256
/* A batch scans rows in blocks of about this many code bytes, which stay
 * in L2 while every query of the batch passes over them. */
#define BATCH_BLOCK_BYTES (256u * 1024u)
/* Single searches of a partition of at least this many rows that arrive
 * while COALESCE_ACTIVE scans of it run wait and are served together by
 * one pass (vindex_tuning.coalesce_min_rows). */
#define COALESCE_MIN_ROWS 16384
#define COALESCE_ACTIVE 2
/* Most queries one coalesced pass serves, and most bytes of their
 * per-row first-pass sums (4 per row and query). */
#define COALESCE_MAX 32
#define COALESCE_DH_BYTES ((size_t)64 << 20)
/* Scratch buffers of coalesced passes kept for reuse. */
#define POOL_MAX 4
/* Lists (vindex_tuning.lists_min_rows): a partition of at least that many
 * rows is clustered into LISTS_MIN..LISTS_MAX lists (the power of two at
 * most sqrt(n)) by spherical k-means over TRAIN_PER_LIST sampled rows per
 * list, TRAIN_ITERS rounds. A partition is clustered again only when it
 * has grown enough for twice the lists: at LISTS_MAX lists, never. */
#define LISTS_MIN 16
#define LISTS_MAX 256
#define TRAIN_PER_LIST 32
#define TRAIN_ITERS 6
#define PROBE_DEFAULT 16
/* Code planes at least this big are 2 MiB-aligned and asked to use huge
 * pages: the scan is bound by memory reads and 4 KiB pages cost ~20%. */
#define HUGE_BYTES ((size_t)2 << 20)

struct part {
	struct part *next; /* hash chain; changed by the writer under tlock */
	uint64_t hash;
	char *key;
	size_t keylen;
	int dim;               /* fixed at creation; read without locks */
	atomic_long refs;      /* the table's reference plus one per search */
	struct vindex *owner;  /* for byte accounting when the last ref goes */
	/* Guards everything below, with one exception: an add appends its
	 * row without it when no array has to grow (see vindex_add). The row
	 * is written past the n rows searches read, then n is stored; so n,
	 * and each list's len, are atomic, and a search reads each once. */
	pthread_rwlock_t lock;
	_Atomic size_t n;
	/* Each array has its own capacity so that a failed realloc of one never
	 * leaves another's size unknown; the usable capacity is the minimum. */
	size_t cap_mat, cap_exp, cap_ids, cap_hi, cap_lo, cap_qs, cap_qe, cap_ql;
	float *mat;            /* n x dim, row-major, rows of unit norm */
	int64_t *exp;          /* expiry per row, ms since epoch, 0 = never */
	char (*ids)[VINDEX_ID_MAX + 1];
	/* The compact copy, row for row with mat (q8.c). */
	size_t plane;          /* bytes per row of each code plane; fixed */
	uint8_t *hi, *lo;      /* n x plane each, VQ_ALIGN-aligned */
	float *qscale;         /* per row: mat row ~ qscale * codes */
	float *qerr;           /* per row: >= |mat row - qscale * codes| */
	float *qlam;           /* per row: what the hi plane alone misses */
	/* Lists (see "lists"): NULL until the partition is clustered. ls and
	 * rl change under lock exclusive; nlists mirrors ls->nlist for
	 * search_single's unlocked choice. */
	struct lists *ls;
	struct rowlist { uint32_t list, pos; } *rl; /* per row: its list, its place in it */
	size_t cap_rl;
	size_t ls_bytes;       /* heap of ls: centroids and row arrays */
	size_t ls_tried;       /* rows when clustering last ran out of memory */
	atomic_int nlists;
	/* Coalesced searches (see "coalesced searches"), under cmu: scans
	 * running or about to, and the single searches waiting to be served
	 * by one pass together. */
	pthread_mutex_t cmu;
	pthread_cond_t ccv;
	int active;
	struct waiter *wait_head, *wait_tail;
};

/* id -> (partition, row), open addressing with linear probing. The key is
 * not stored: it is p->ids[row], so a slot costs 16 bytes. */
struct idslot {
	struct part *p; /* NULL = empty slot */
	uint32_t row;
	uint32_t hash;
};

/* One list: a copy of its rows' codes, bounds and expiry, entry by entry,
 * so that a search streams them from memory as a full scan streams the
 * partition's; rows[i] is the partition row entry i stands for. In no
 * particular order. */
struct vlist {
	_Atomic uint32_t len; /* published after its entry (see part.lock) */
	uint32_t cap;
	uint32_t *rows;
	uint8_t *hi, *lo; /* cap x plane each, VQ_ALIGN-aligned */
	float *scale, *err, *lam;
	int64_t *exp;
};

/* A partition's lists: centroid c (unit norm, dim floats) and list c, the
 * rows nearest to it. */
struct lists {
	int nlist;
	float *cent;      /* nlist x dim */
	struct vlist *l;  /* nlist */
};

struct vindex {
	/* Serialises writers (add, remove, expire, clear). Only writers change
	 * the table, the id map or a partition, so a writer may read all of
	 * them without further locks. */
	pthread_mutex_t wlock;
	/* Held shared by searches while they look a partition up, exclusive by
	 * the writer while it changes the table's shape; never held during a
	 * scan, nor while waiting for a partition lock. */
	pthread_rwlock_t tlock;
	struct part **buckets;
	size_t nbuckets;
	struct idslot *slots;
	size_t nslots, nids;
	atomic_size_t nparts, rows, bytes;
	atomic_size_t nlisted; /* partitions of the table that have lists */
	/* Set by vindex_set_tuning() before searches run. */
	enum vq_kernel kernel;
	size_t split_min_rows;
	size_t coalesce_min_rows;
	/* Scratch of coalesced passes (their <codes, H> arrays are too big to
	 * keep one per thread), reused under pool_mu. */
	pthread_mutex_t pool_mu;
	struct pooled { void *buf; size_t cap; } pool[POOL_MAX];
	int npool;
	double bound_scale;
	bool share_evenly;
	size_t lists_min_rows; /* 0: never clustered (exact searches) */
	int probe;             /* lists a search reads */
};

/* ---- small helpers ---- */

static uint64_t hash_bytes(const char *s, size_t len)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	/* FNV's low bits mix poorly and both tables index by low bits. */
	h ^= h >> 31;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 29;
	return h;
}

static uint32_t id_hash(const char *id)
{
	return (uint32_t)hash_bytes(id, strlen(id));
}

static void account(struct vindex *vi, size_t old_bytes, size_t new_bytes)
{
	if (new_bytes >= old_bytes)
		atomic_fetch_add(&vi->bytes, new_bytes - old_bytes);
	else
		atomic_fetch_sub(&vi->bytes, old_bytes - new_bytes);
}

/* Norm in double so that large finite components cannot overflow and tiny
 * ones cannot underflow; 0 marks a vector that cannot be normalised. */
static double norm_of(const float *v, int dim)
{
	double s = 0;
	for (int i = 0; i < dim; i++) {
		double x = v[i];
		s += x * x;
	}
	if (!isfinite(s) || s <= 0)
		return 0;
	return sqrt(s);
}

float vindex_normalize(float *v, int dim)
{
	if (!v || dim < 1)
		return 0;
	double n = norm_of(v, dim);
	if (n == 0)
		return 0;
	double inv = 1.0 / n;
	for (int i = 0; i < dim; i++)
		v[i] = (float)(v[i] * inv);
	return n > FLT_MAX ? FLT_MAX : (float)n;
}

static bool id_valid(const char *id, size_t *len)
{
	size_t n = 0;
	if (!id)
		return false;
	for (; id[n]; n++) {
		unsigned char c = (unsigned char)id[n];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		          (c >= '0' && c <= '9') || c == '.' || c == '_' ||
		          c == ':' || c == '-';
		if (!ok || n >= VINDEX_ID_MAX)
			return false;
	}
	*len = n;
	return n > 0;
}

static enum sg_err check_key(const char *key, size_t *len, struct sg_error *e)
{
	if (!key)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "partition key is missing");
	size_t n = strnlen(key, VINDEX_KEY_MAX + 1);
	if (n == 0 || n > VINDEX_KEY_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
		                    "partition key must be 1..%d bytes", VINDEX_KEY_MAX);
	*len = n;
	return SG_OK;
}

static enum sg_err check_dim(int dim, struct sg_error *e)
{
	if (dim < 1 || dim > VINDEX_DIM_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
		                    "vector dimension %d is outside 1..%d", dim,
		                    VINDEX_DIM_MAX);
	return SG_OK;
}

static enum sg_err dim_mismatch(struct sg_error *e, int dim, int part_dim)
{
	return sg_error_set(e, SG_ERR_BAD_REQUEST,
	                    "vector has dimension %d but partition has %d", dim,
	                    part_dim);
}

static void hit_none(struct vindex_hit *h)
{
	h->id[0] = '\0';
	h->similarity = -1.0f;
	h->found = false;
}

static void hit_set(struct vindex_hit *h, const char *id, double sim)
{
	/* Rounding can push |cos| a hair past 1. */
	if (sim > 1.0)
		sim = 1.0;
	if (sim < -1.0)
		sim = -1.0;
	memcpy(h->id, id, VINDEX_ID_MAX + 1);
	h->similarity = (float)sim;
	h->found = true;
}

static bool live(int64_t expires, int64_t now_ms)
{
	return expires == 0 || expires > now_ms;
}

/* ---- per-thread scratch for searches ---- */

struct scratch {
	size_t cap; /* bytes at buf */
	void *buf;  /* VQ_ALIGN-aligned */
};

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static bool scratch_key_ok;

static void scratch_free(void *p)
{
	struct scratch *s = p;
	if (s)
		free(s->buf);
	free(s);
}

static void scratch_key_init(void)
{
	scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

/* A VQ_ALIGN-aligned buffer of at least want bytes owned by the calling
 * thread (grow-only, freed at thread exit), or NULL when it cannot be had. */
static void *scratch_get(size_t want)
{
	pthread_once(&scratch_once, scratch_key_init);
	if (!scratch_key_ok)
		return NULL;
	struct scratch *s = pthread_getspecific(scratch_key);
	if (s && s->cap >= want)
		return s->buf;
	void *nb = NULL;
	if (posix_memalign(&nb, VQ_ALIGN, want) != 0)
		return NULL;
	if (!s) {
		if (!(s = calloc(1, sizeof *s)) || pthread_setspecific(scratch_key, s) != 0) {
			free(s);
			free(nb);
			return NULL;
		}
	}
	free(s->buf);
	s->buf = nb;
	s->cap = want;
	return nb;
}

/* What the calling thread's last search did, for vindex_last_stats(). */
static _Thread_local struct vindex_stats last_stats;

/* ---- partitions ---- */

static size_t part_cap(const struct part *p)
{
	size_t c = p->cap_mat;
	if (p->cap_exp < c)
		c = p->cap_exp;
	if (p->cap_ids < c)
		c = p->cap_ids;
	if (p->cap_hi < c)
		c = p->cap_hi;
	if (p->cap_lo < c)
		c = p->cap_lo;
	if (p->cap_qs < c)
		c = p->cap_qs;
	if (p->cap_qe < c)
		c = p->cap_qe;
	if (p->cap_ql < c)
		c = p->cap_ql;
	if (p->ls && p->cap_rl < c)
		c = p->cap_rl;
	return c;
}

static size_t part_bytes(const struct part *p)
{
	return sizeof *p + p->keylen + 1 +
	       p->cap_mat * (size_t)p->dim * sizeof(float) +
	       p->cap_exp * sizeof(int64_t) + p->cap_ids * sizeof p->ids[0] +
	       (p->cap_hi + p->cap_lo) * p->plane +
	       (p->cap_qs + p->cap_qe + p->cap_ql) * sizeof(float) +
	       p->cap_rl * sizeof p->rl[0] + p->ls_bytes;
}

static size_t entry_bytes(size_t plane)
{
	return sizeof(uint32_t) + 2 * plane + 3 * sizeof(float) + sizeof(int64_t);
}

static void vlist_free(struct vlist *v)
{
	free(v->rows);
	free(v->hi);
	free(v->lo);
	free(v->scale);
	free(v->err);
	free(v->lam);
	free(v->exp);
}

/* v's arrays moved to room for cap (>= len) entries; false: v unchanged. */
static bool vlist_alloc(struct vlist *v, size_t plane, uint32_t cap)
{
	struct vlist n = { .len = v->len, .cap = cap };
	void *h = NULL, *l = NULL;
	if (posix_memalign(&h, VQ_ALIGN, (size_t)cap * plane) != 0)
		h = NULL;
	if (posix_memalign(&l, VQ_ALIGN, (size_t)cap * plane) != 0)
		l = NULL;
	n.hi = h;
	n.lo = l;
	n.rows = malloc((size_t)cap * sizeof *n.rows);
	n.scale = malloc((size_t)cap * sizeof *n.scale);
	n.err = malloc((size_t)cap * sizeof *n.err);
	n.lam = malloc((size_t)cap * sizeof *n.lam);
	n.exp = malloc((size_t)cap * sizeof *n.exp);
	if (!n.hi || !n.lo || !n.rows || !n.scale || !n.err || !n.lam || !n.exp) {
		vlist_free(&n);
		return false;
	}
	if (v->len) {
		size_t k = v->len;
		memcpy(n.rows, v->rows, k * sizeof *n.rows);
		memcpy(n.hi, v->hi, k * plane);
		memcpy(n.lo, v->lo, k * plane);
		memcpy(n.scale, v->scale, k * sizeof *n.scale);
		memcpy(n.err, v->err, k * sizeof *n.err);
		memcpy(n.lam, v->lam, k * sizeof *n.lam);
		memcpy(n.exp, v->exp, k * sizeof *n.exp);
	}
	vlist_free(v);
	*v = n;
	return true;
}

static void lists_free(struct lists *ls)
{
	if (!ls)
		return;
	if (ls->l)
		for (int c = 0; c < ls->nlist; c++)
			vlist_free(&ls->l[c]);
	free(ls->l);
	free(ls->cent);
	free(ls);
}

static struct part *part_new(struct vindex *vi, const char *key, size_t keylen,
                             uint64_t hash, int dim)
{
	pthread_rwlockattr_t attr;
	struct part *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->key = malloc(keylen + 1);
	if (!p->key)
		goto fail_key;
	memcpy(p->key, key, keylen);
	p->key[keylen] = '\0';
	p->keylen = keylen;
	p->hash = hash;
	p->dim = dim;
	p->plane = vq_plane(dim);
	p->owner = vi;
	atomic_init(&p->refs, 1);
	atomic_init(&p->nlists, 0);
	if (pthread_rwlockattr_init(&attr) != 0)
		goto fail_attr;
	/* glibc's default prefers readers: back-to-back searches on a busy
	 * partition would starve every add. */
	pthread_rwlockattr_setkind_np(&attr,
	                              PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	int rc = pthread_rwlock_init(&p->lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	if (rc != 0)
		goto fail_attr;
	if (pthread_mutex_init(&p->cmu, NULL) != 0)
		goto fail_cmu;
	if (pthread_cond_init(&p->ccv, NULL) != 0)
		goto fail_ccv;
	account(vi, 0, part_bytes(p));
	return p;

fail_ccv:
	pthread_mutex_destroy(&p->cmu);
fail_cmu:
	pthread_rwlock_destroy(&p->lock);
fail_attr:
	free(p->key);
fail_key:
	free(p);
	return NULL;
}

static void part_unref(struct part *p)
{
	if (!p || atomic_fetch_sub(&p->refs, 1) != 1)
		return;
	account(p->owner, part_bytes(p), 0);
	pthread_rwlock_destroy(&p->lock);
	pthread_cond_destroy(&p->ccv);
	pthread_mutex_destroy(&p->cmu);
	free(p->mat);
	free(p->exp);
	free(p->ids);
	free(p->hi);
	free(p->lo);
	free(p->qscale);
	free(p->qerr);
	free(p->qlam);
	lists_free(p->ls);
	free(p->rl);
	free(p->key);
	free(p);
}

static void *resize(struct vindex *vi, void *arr, size_t old_bytes, size_t new_bytes)
{
	void *na = realloc(arr, new_bytes);
	if (na)
		account(vi, old_bytes, new_bytes);
	return na;
}

/* A code plane moved to a new aligned block of new_bytes, keeping the
 * first keep bytes; NULL (old block untouched) when out of memory. */
static uint8_t *plane_resize(struct vindex *vi, uint8_t *old, size_t old_bytes,
                             size_t keep, size_t new_bytes)
{
	void *na = NULL;
	bool huge = new_bytes >= HUGE_BYTES;
	if (posix_memalign(&na, huge ? HUGE_BYTES : VQ_ALIGN, new_bytes) != 0)
		return NULL;
#ifdef MADV_HUGEPAGE
	if (huge)
		(void)madvise(na, new_bytes, MADV_HUGEPAGE); /* a hint; may be refused */
#endif
	if (keep)
		memcpy(na, old, keep);
	free(old);
	account(vi, old_bytes, new_bytes);
	return na;
}

/* Set every array's capacity to want (>= n, >= 1) rows. On failure some
 * arrays may have changed, none is smaller than n, and false is returned.
 * Caller holds p->lock exclusive (realloc moves what searches read). */
static bool part_set_cap_locked(struct vindex *vi, struct part *p, size_t want)
{
	size_t rowb = (size_t)p->dim * sizeof(float);
	if (p->cap_mat != want) {
		float *m = resize(vi, p->mat, p->cap_mat * rowb, want * rowb);
		if (!m)
			return false;
		p->mat = m;
		p->cap_mat = want;
	}
	if (p->cap_exp != want) {
		int64_t *x = resize(vi, p->exp, p->cap_exp * sizeof *x, want * sizeof *x);
		if (!x)
			return false;
		p->exp = x;
		p->cap_exp = want;
	}
	if (p->cap_ids != want) {
		char (*d)[VINDEX_ID_MAX + 1] = resize(vi, p->ids,
		                                     p->cap_ids * sizeof p->ids[0],
		                                     want * sizeof p->ids[0]);
		if (!d)
			return false;
		p->ids = d;
		p->cap_ids = want;
	}
	if (p->cap_hi != want) {
		uint8_t *c = plane_resize(vi, p->hi, p->cap_hi * p->plane, p->n * p->plane,
		                          want * p->plane);
		if (!c)
			return false;
		p->hi = c;
		p->cap_hi = want;
	}
	if (p->cap_lo != want) {
		uint8_t *c = plane_resize(vi, p->lo, p->cap_lo * p->plane, p->n * p->plane,
		                          want * p->plane);
		if (!c)
			return false;
		p->lo = c;
		p->cap_lo = want;
	}
	if (p->cap_qs != want) {
		float *f = resize(vi, p->qscale, p->cap_qs * sizeof *f, want * sizeof *f);
		if (!f)
			return false;
		p->qscale = f;
		p->cap_qs = want;
	}
	if (p->cap_qe != want) {
		float *f = resize(vi, p->qerr, p->cap_qe * sizeof *f, want * sizeof *f);
		if (!f)
			return false;
		p->qerr = f;
		p->cap_qe = want;
	}
	if (p->cap_ql != want) {
		float *f = resize(vi, p->qlam, p->cap_ql * sizeof *f, want * sizeof *f);
		if (!f)
			return false;
		p->qlam = f;
		p->cap_ql = want;
	}
	if (p->ls && p->cap_rl != want) {
		struct rowlist *r = resize(vi, p->rl, p->cap_rl * sizeof *r, want * sizeof *r);
		if (!r)
			return false;
		p->rl = r;
		p->cap_rl = want;
	}
	return true;
}

/* Give back memory once a partition is at most a quarter full. */
static void part_maybe_shrink_locked(struct vindex *vi, struct part *p)
{
	size_t cap = part_cap(p), want = cap;
	if (p->n == 0)
		return;
	while (want / 2 >= SHRINK_FLOOR_ROWS && p->n <= want / 4)
		want /= 2;
	if (want != cap)
		(void)part_set_cap_locked(vi, p, want); /* failing to shrink is harmless */
}

/* ---- lists ----
 *
 * An exact search reads every row's codes, so a miss in a partition of n
 * rows costs time in n. With vindex_tuning.lists_min_rows set, a big
 * partition's rows are clustered around nlist centroids (spherical
 * k-means), and a single search reads only the rows of the probe lists
 * whose centroids are most similar to the query, ranked as an exact search
 * ranks them. A row nearer to another list's centroid than to any of the
 * query's probe lists is not seen: the answer is then a lesser row or
 * none, never a row that is not there. Rows join the list of their nearest
 * centroid when they are added; the centroids are computed again only when
 * the partition has grown to twice the lists. */

/* Lists for n rows: the power of two <= sqrt(n), within LISTS_MIN..MAX. */
static int lists_for(size_t n)
{
	int k = LISTS_MIN;
	while (k < LISTS_MAX && (size_t)(2 * k) * (size_t)(2 * k) <= n)
		k *= 2;
	return k;
}

/* The list whose centroid is most similar to unit vector v (ties: the
 * lowest); dots has room for nlist floats. */
static uint32_t list_nearest(enum vq_kernel kern, const struct lists *ls, const float *v,
                             int dim, float *dots)
{
	vq_dots(kern, ls->cent, (size_t)ls->nlist, v, dim, dots);
	uint32_t b = 0;
	for (int c = 1; c < ls->nlist; c++)
		if (dots[c] > dots[b])
			b = (uint32_t)c;
	return b;
}

/* Room for one more row in list l. Writer, p->lock exclusive. */
static bool list_reserve(struct vindex *vi, struct part *p, uint32_t l)
{
	struct vlist *v = &p->ls->l[l];
	if (v->len < v->cap)
		return true;
	size_t old = v->cap, want = old < 8 ? 8 : old + old / 2;
	if (want > ROWS_MAX)
		want = ROWS_MAX;
	if (!vlist_alloc(v, p->plane, (uint32_t)want))
		return false;
	size_t eb = entry_bytes(p->plane);
	account(vi, old * eb, want * eb);
	p->ls_bytes += (want - old) * eb;
	return true;
}

/* Entry pos of v becomes a copy of partition row row. */
static void entry_set(const struct part *p, struct vlist *v, uint32_t pos, size_t row)
{
	v->rows[pos] = (uint32_t)row;
	memcpy(v->hi + (size_t)pos * p->plane, p->hi + row * p->plane, p->plane);
	memcpy(v->lo + (size_t)pos * p->plane, p->lo + row * p->plane, p->plane);
	v->scale[pos] = p->qscale[row];
	v->err[pos] = p->qerr[row];
	v->lam[pos] = p->qlam[row];
	v->exp[pos] = p->exp[row];
}

/* Row (stored) joins list l (room reserved). Writer, p->lock exclusive. */
static void list_insert(struct part *p, size_t row, uint32_t l)
{
	struct vlist *v = &p->ls->l[l];
	uint32_t pos = v->len;
	entry_set(p, v, pos, row);
	p->rl[row] = (struct rowlist){ .list = l, .pos = pos };
	v->len = pos + 1; /* last: a search may be reading the list */
}

/* Row leaves its list; the list's last entry takes its place there. */
static void list_delete(struct part *p, size_t row)
{
	struct rowlist w = p->rl[row];
	struct vlist *v = &p->ls->l[w.list];
	uint32_t last = --v->len;
	if (w.pos != last) {
		size_t pl = p->plane, to = w.pos;
		v->rows[to] = v->rows[last];
		memcpy(v->hi + to * pl, v->hi + (size_t)last * pl, pl);
		memcpy(v->lo + to * pl, v->lo + (size_t)last * pl, pl);
		v->scale[to] = v->scale[last];
		v->err[to] = v->err[last];
		v->lam[to] = v->lam[last];
		v->exp[to] = v->exp[last];
		p->rl[v->rows[to]].pos = w.pos;
	}
}

/* Row from (still listed) now lives at row to, which is not listed. */
static void list_moved(struct part *p, size_t from, size_t to)
{
	struct rowlist w = p->rl[from];
	p->ls->l[w.list].rows[w.pos] = (uint32_t)to;
	p->rl[to] = w;
}

/* Row was stored again in place and stays in its list: copy it again. */
static void list_refresh(struct part *p, size_t row)
{
	struct rowlist w = p->rl[row];
	entry_set(p, &p->ls->l[w.list], w.pos, row);
}

/* Unit centroid c from its members' sum; false when they cancel out. */
static bool centroid_set(float *cent, const double *sum, size_t d)
{
	double nn = 0;
	for (size_t j = 0; j < d; j++)
		nn += sum[j] * sum[j];
	if (!(nn > 0))
		return false;
	double inv = 1.0 / sqrt(nn);
	for (size_t j = 0; j < d; j++)
		cent[j] = (float)(sum[j] * inv);
	return true;
}

/* Spherical k-means of ls->nlist centroids over ns rows sampled evenly
 * from the partition's n; deterministic. sum: nlist x d doubles, lab: ns,
 * cnt: nlist, dots: nlist. */
static void lists_train(enum vq_kernel kern, const struct part *p, size_t n, size_t ns,
                        struct lists *ls, double *sum, uint32_t *lab, uint32_t *cnt,
                        float *dots)
{
	size_t d = (size_t)p->dim, k = (size_t)ls->nlist;
	for (size_t c = 0; c < k; c++)
		memcpy(ls->cent + c * d, p->mat + (c * ns / k) * n / ns * d, d * sizeof(float));
	for (int it = 0; it < TRAIN_ITERS; it++) {
		memset(sum, 0, k * d * sizeof *sum);
		memset(cnt, 0, k * sizeof *cnt);
		for (size_t i = 0; i < ns; i++) {
			const float *r = p->mat + i * n / ns * d;
			uint32_t c = list_nearest(kern, ls, r, p->dim, dots);
			lab[i] = c;
			cnt[c]++;
			for (size_t j = 0; j < d; j++)
				sum[c * d + j] += r[j];
		}
		for (size_t c = 0; c < k; c++)
			if (!cnt[c] || !centroid_set(ls->cent + c * d, sum + c * d, d)) {
				/* an empty list takes a sampled row of its own */
				size_t i = (c * 2654435761u + (size_t)it * 40503u) % ns;
				memcpy(ls->cent + c * d, p->mat + i * n / ns * d, d * sizeof(float));
			}
	}
}

/* Cluster p into lists when it is big enough (see LISTS_MIN). Writer
 * (wlock), p->lock not held: only writers change rows, so reading them
 * while searches run is safe; the new lists replace the old ones under the
 * lock. Out of memory keeps what was there and tries again once the
 * partition has doubled. */
static void lists_maybe_build(struct vindex *vi, struct part *p)
{
	size_t n = p->n;
	if (!vi->lists_min_rows || n < vi->lists_min_rows || n < 2 * p->ls_tried)
		return;
	int kk = lists_for(n);
	if ((p->ls && p->ls->nlist >= kk) || n < 4 * (size_t)kk)
		return;
	size_t d = (size_t)p->dim, k = (size_t)kk, cap = part_cap(p);
	size_t ns = k * TRAIN_PER_LIST < n ? k * TRAIN_PER_LIST : n;
	struct lists *ls = calloc(1, sizeof *ls);
	double *sum = malloc(k * d * sizeof *sum);
	uint32_t *lab = malloc(n * sizeof *lab);
	uint32_t *cnt = calloc(k, sizeof *cnt);
	float *dots = malloc(k * sizeof *dots);
	struct rowlist *rl = malloc(cap * sizeof *rl);
	bool ok = ls && sum && lab && cnt && dots && rl;
	if (ok) {
		ls->nlist = kk;
		ls->cent = malloc(k * d * sizeof(float));
		ls->l = calloc(k, sizeof *ls->l);
		ok = ls->cent && ls->l;
	}
	size_t eb = entry_bytes(p->plane);
	size_t bytes = sizeof *ls + k * (d * sizeof(float) + sizeof *ls->l);
	if (ok) {
		lists_train(vi->kernel, p, n, ns, ls, sum, lab, cnt, dots);
		memset(cnt, 0, k * sizeof *cnt);
		for (size_t r = 0; r < n; r++) {
			lab[r] = list_nearest(vi->kernel, ls, p->mat + r * d, p->dim, dots);
			cnt[lab[r]]++;
		}
		for (size_t c = 0; ok && c < k; c++) {
			uint32_t want = cnt[c] + cnt[c] / 4 + 8;
			ok = vlist_alloc(&ls->l[c], p->plane, want);
			bytes += ok ? want * eb : 0;
		}
	}
	if (ok)
		for (size_t r = 0; r < n; r++) {
			struct vlist *v = &ls->l[lab[r]];
			rl[r] = (struct rowlist){ .list = lab[r], .pos = v->len };
			entry_set(p, v, v->len++, r);
		}
	free(sum);
	free(lab);
	free(cnt);
	free(dots);
	if (!ok) {
		lists_free(ls);
		free(rl);
		p->ls_tried = n;
		return;
	}
	pthread_rwlock_wrlock(&p->lock);
	struct lists *old = p->ls;
	account(vi, p->ls_bytes + p->cap_rl * sizeof *rl, bytes + cap * sizeof *rl);
	free(p->rl);
	p->rl = rl;
	p->cap_rl = cap;
	p->ls = ls;
	p->ls_bytes = bytes;
	p->ls_tried = 0;
	atomic_store(&p->nlists, kk);
	pthread_rwlock_unlock(&p->lock);
	if (!old)
		atomic_fetch_add(&vi->nlisted, 1);
	lists_free(old);
}

/* The probe lists (at most nlist) most similar to query x, best first,
 * into pick; returns how many. */
static int lists_pick(const struct vindex *vi, const struct lists *ls, const float *x,
                      int dim, uint32_t *pick)
{
	float dots[LISTS_MAX], top[LISTS_MAX];
	int want = vi->probe < ls->nlist ? vi->probe : ls->nlist, have = 0;
	vq_dots(vi->kernel, ls->cent, (size_t)ls->nlist, x, dim, dots);
	for (int c = 0; c < ls->nlist; c++) {
		if (have == want && !(dots[c] > top[have - 1]))
			continue;
		int i = have < want ? have++ : have - 1;
		while (i > 0 && dots[c] > top[i - 1]) {
			top[i] = top[i - 1];
			pick[i] = pick[i - 1];
			i--;
		}
		top[i] = dots[c];
		pick[i] = (uint32_t)c;
	}
	return have;
}

/* ---- partition table (writer changes it under tlock) ---- */

static struct part *table_find(const struct vindex *vi, const char *key,
                               size_t keylen, uint64_t hash)
{
	if (!vi->nbuckets)
		return NULL;
	for (struct part *p = vi->buckets[hash & (vi->nbuckets - 1)]; p; p = p->next)
		if (p->hash == hash && p->keylen == keylen && memcmp(p->key, key, keylen) == 0)
			return p;
	return NULL;
}

/* Make room for one more partition; false when out of memory. */
static bool table_reserve(struct vindex *vi)
{
	size_t nparts = atomic_load(&vi->nparts);
	if (nparts + 1 <= vi->nbuckets)
		return true;
	size_t nb = vi->nbuckets ? vi->nbuckets * 2 : 16;
	struct part **b = calloc(nb, sizeof *b);
	if (!b)
		return false;
	pthread_rwlock_wrlock(&vi->tlock);
	for (size_t i = 0; i < vi->nbuckets; i++) {
		struct part *p = vi->buckets[i], *next;
		for (; p; p = next) {
			next = p->next;
			p->next = b[p->hash & (nb - 1)];
			b[p->hash & (nb - 1)] = p;
		}
	}
	free(vi->buckets);
	account(vi, vi->nbuckets * sizeof *b, nb * sizeof *b);
	vi->buckets = b;
	vi->nbuckets = nb;
	pthread_rwlock_unlock(&vi->tlock);
	return true;
}

static void table_link(struct vindex *vi, struct part *p)
{
	pthread_rwlock_wrlock(&vi->tlock);
	struct part **head = &vi->buckets[p->hash & (vi->nbuckets - 1)];
	p->next = *head;
	*head = p;
	pthread_rwlock_unlock(&vi->tlock);
	atomic_fetch_add(&vi->nparts, 1);
}

/* Unlink p and drop the table's reference (searches holding one finish
 * first; the last of them frees it). */
static void table_unlink(struct vindex *vi, struct part *p)
{
	pthread_rwlock_wrlock(&vi->tlock);
	struct part **pp = &vi->buckets[p->hash & (vi->nbuckets - 1)];
	while (*pp != p)
		pp = &(*pp)->next;
	*pp = p->next;
	pthread_rwlock_unlock(&vi->tlock);
	atomic_fetch_sub(&vi->nparts, 1);
	if (p->ls)
		atomic_fetch_sub(&vi->nlisted, 1);
	part_unref(p);
}

/* For searches: the partition with one reference taken, or NULL. */
static struct part *part_acquire(struct vindex *vi, const char *key, size_t keylen)
{
	uint64_t h = hash_bytes(key, keylen);
	pthread_rwlock_rdlock(&vi->tlock);
	struct part *p = table_find(vi, key, keylen, h);
	if (p)
		atomic_fetch_add(&p->refs, 1);
	pthread_rwlock_unlock(&vi->tlock);
	return p;
}

/* ---- id map (writer only) ---- */

static size_t idmap_find(const struct vindex *vi, const char *id, uint32_t h)
{
	if (!vi->nslots)
		return SIZE_MAX;
	size_t mask = vi->nslots - 1;
	for (size_t i = h & mask;; i = (i + 1) & mask) {
		const struct idslot *s = &vi->slots[i];
		if (!s->p)
			return SIZE_MAX;
		if (s->hash == h && strcmp(s->p->ids[s->row], id) == 0)
			return i;
	}
}

static void idmap_put(struct idslot *slots, size_t nslots, struct idslot s)
{
	size_t mask = nslots - 1;
	size_t i = s.hash & mask;
	while (slots[i].p)
		i = (i + 1) & mask;
	slots[i] = s;
}

/* Make room for one more id (load <= 3/4); false when out of memory. */
static bool idmap_reserve(struct vindex *vi)
{
	if ((vi->nids + 1) * 4 <= vi->nslots * 3)
		return true;
	size_t ns = vi->nslots ? vi->nslots * 2 : 64;
	struct idslot *s = calloc(ns, sizeof *s);
	if (!s)
		return false;
	for (size_t i = 0; i < vi->nslots; i++)
		if (vi->slots[i].p)
			idmap_put(s, ns, vi->slots[i]);
	free(vi->slots);
	account(vi, vi->nslots * sizeof *s, ns * sizeof *s);
	vi->slots = s;
	vi->nslots = ns;
	return true;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void idmap_delete(struct vindex *vi, size_t i)
{
	size_t mask = vi->nslots - 1, j = i;
	for (;;) {
		j = (j + 1) & mask;
		if (!vi->slots[j].p)
			break;
		size_t home = vi->slots[j].hash & mask;
		bool movable = j > i ? (home <= i || home > j) : (home <= i && home > j);
		if (movable) {
			vi->slots[i] = vi->slots[j];
			i = j;
		}
	}
	vi->slots[i].p = NULL;
	vi->nids--;
}

/* Remove row from p: its id leaves the id map and the last row moves into
 * the hole. Caller is the writer and holds p->lock exclusive. */
static void swap_remove_locked(struct vindex *vi, struct part *p, size_t row)
{
	size_t slot = idmap_find(vi, p->ids[row], id_hash(p->ids[row]));
	if (slot != SIZE_MAX)
		idmap_delete(vi, slot);
	if (p->ls)
		list_delete(p, row);
	size_t last = p->n - 1;
	if (row != last) {
		size_t d = (size_t)p->dim;
		memcpy(p->mat + row * d, p->mat + last * d, d * sizeof(float));
		memcpy(p->hi + row * p->plane, p->hi + last * p->plane, p->plane);
		memcpy(p->lo + row * p->plane, p->lo + last * p->plane, p->plane);
		p->qscale[row] = p->qscale[last];
		p->qerr[row] = p->qerr[last];
		p->qlam[row] = p->qlam[last];
		p->exp[row] = p->exp[last];
		memcpy(p->ids[row], p->ids[last], sizeof p->ids[0]);
		/* The moved id's slot still says row "last", whose id bytes are
		 * intact, so the lookup finds it. */
		slot = idmap_find(vi, p->ids[row], id_hash(p->ids[row]));
		if (slot != SIZE_MAX)
			vi->slots[slot].row = (uint32_t)row;
		if (p->ls)
			list_moved(p, last, row);
	}
	p->n = last;
}

/* Remove the row in id map slot; drop its partition if it empties.
 * Caller is the writer. */
static void drop_slot(struct vindex *vi, size_t slot)
{
	struct part *p = vi->slots[slot].p;
	size_t row = vi->slots[slot].row;
	pthread_rwlock_wrlock(&p->lock);
	swap_remove_locked(vi, p, row);
	part_maybe_shrink_locked(vi, p);
	size_t left = p->n;
	pthread_rwlock_unlock(&p->lock);
	atomic_fetch_sub(&vi->rows, 1);
	if (left == 0)
		table_unlink(vi, p);
}

static void store_row(struct part *p, size_t row, const char *id, size_t idlen,
                      const float *vec, double inv_norm, int64_t expires)
{
	float *dst = p->mat + row * (size_t)p->dim;
	for (int i = 0; i < p->dim; i++)
		dst[i] = (float)(vec[i] * inv_norm);
	vq_encode(dst, p->dim, p->hi + row * p->plane, p->lo + row * p->plane,
	          &p->qscale[row], &p->qerr[row], &p->qlam[row]);
	p->exp[row] = expires;
	memset(p->ids[row], 0, sizeof p->ids[0]);
	memcpy(p->ids[row], id, idlen);
}

/* The list a row of vec (scaled by inv_norm as store_row() stores it)
 * joins in p, which has lists. Writer. */
static enum sg_err list_for_vec(struct vindex *vi, const struct part *p, const float *vec,
                                double inv_norm, uint32_t *list, struct sg_error *e)
{
	float *tmp = malloc((size_t)p->dim * sizeof *tmp + LISTS_MAX * sizeof(float));
	if (!tmp)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory choosing a list");
	for (int i = 0; i < p->dim; i++)
		tmp[i] = (float)(vec[i] * inv_norm);
	*list = list_nearest(vi->kernel, p->ls, tmp, p->dim, tmp + p->dim);
	free(tmp);
	return SG_OK;
}

/* ---- public API ---- */

struct vindex *vindex_create(void)
{
	pthread_rwlockattr_t attr;
	struct vindex *vi = calloc(1, sizeof *vi);
	if (!vi)
		return NULL;
	if (pthread_mutex_init(&vi->wlock, NULL) != 0)
		goto fail_mutex;
	if (pthread_rwlockattr_init(&attr) != 0)
		goto fail_attr;
	pthread_rwlockattr_setkind_np(&attr,
	                              PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	int rc = pthread_rwlock_init(&vi->tlock, &attr);
	pthread_rwlockattr_destroy(&attr);
	if (rc != 0)
		goto fail_attr;
	if (pthread_mutex_init(&vi->pool_mu, NULL) != 0) {
		pthread_rwlock_destroy(&vi->tlock);
		goto fail_attr;
	}
	atomic_init(&vi->nparts, 0);
	atomic_init(&vi->rows, 0);
	atomic_init(&vi->bytes, 0);
	atomic_init(&vi->nlisted, 0);
	vi->kernel = vq_kernel_best();
	vi->split_min_rows = SPLIT_MIN_ROWS;
	vi->coalesce_min_rows = COALESCE_MIN_ROWS;
	vi->bound_scale = 1.0;
	vi->probe = PROBE_DEFAULT;
	return vi;

fail_attr:
	pthread_mutex_destroy(&vi->wlock);
fail_mutex:
	free(vi);
	return NULL;
}

void vindex_destroy(struct vindex *vi)
{
	if (!vi)
		return;
	vindex_clear(vi);
	for (int i = 0; i < vi->npool; i++)
		free(vi->pool[i].buf);
	pthread_mutex_destroy(&vi->pool_mu);
	pthread_rwlock_destroy(&vi->tlock);
	pthread_mutex_destroy(&vi->wlock);
	free(vi);
}

enum sg_err vindex_add(struct vindex *vi, const char *partition, int dim,
                       const char *id, const float *vec, int64_t expires_at_ms,
                       struct sg_error *e)
{
	size_t keylen = 0, idlen = 0;
	enum sg_err rc;

	if (!vi)
		return sg_error_set(e, SG_ERR_INTERNAL, "vector index is missing");
	if ((rc = check_key(partition, &keylen, e)) != SG_OK ||
	    (rc = check_dim(dim, e)) != SG_OK)
		return rc;
	if (!id_valid(id, &idlen))
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
		                    "entry id must be 1..%d characters of [A-Za-z0-9._:-]",
		                    VINDEX_ID_MAX);
	if (!vec)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "vector is missing");
	if (expires_at_ms < 0)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
		                    "expiry must be >= 0 ms since the epoch (0 = never)");
	double norm = norm_of(vec, dim);
	if (norm == 0)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
		                    "vector is zero or has a non-finite component");
	double inv = 1.0 / norm;
	uint64_t kh = hash_bytes(partition, keylen);
	uint32_t ih = (uint32_t)hash_bytes(id, idlen);

	pthread_mutex_lock(&vi->wlock);
	struct part *p = table_find(vi, partition, keylen, kh);
	if (p && p->dim != dim) {
		rc = dim_mismatch(e, dim, p->dim);
		goto out;
	}
	/* The row's list, chosen before any lock: only writers change lists. */
	uint32_t list = 0;
	if (p && p->ls && (rc = list_for_vec(vi, p, vec, inv, &list, e)) != SG_OK)
		goto out;
	size_t old = idmap_find(vi, id, ih);
	if (old != SIZE_MAX && vi->slots[old].p == p) {
		/* Same partition: overwrite in place, so the id never vanishes
		 * from concurrent searches. */
		size_t row = vi->slots[old].row;
		pthread_rwlock_wrlock(&p->lock);
		bool relist = p->ls && p->rl[row].list != list;
		if (relist && !list_reserve(vi, p, list)) {
			pthread_rwlock_unlock(&p->lock);
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory growing a list");
			goto out;
		}
		store_row(p, row, id, idlen, vec, inv, expires_at_ms);
		if (relist) {
			list_delete(p, row);
			list_insert(p, row, list);
		} else if (p->ls) {
			list_refresh(p, row);
		}
		pthread_rwlock_unlock(&p->lock);
		rc = SG_OK;
		goto out;
	}
	/* Everything that can fail happens before the old row is touched. */
	if (old == SIZE_MAX && !idmap_reserve(vi)) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory growing the id map");
		goto out;
	}
	bool created = false;
	if (!p) {
		if (!table_reserve(vi) ||
		    !(p = part_new(vi, partition, keylen, kh, dim))) {
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory creating a partition");
			goto out;
		}
		created = true;
	}
	rc = SG_OK;
	/* Growing an array moves it, so only that takes the lock (and waits
	 * for the searches reading the partition); an add with room appends
	 * without it, as searches never read past n. */
	size_t n = p->n;
	if (n >= ROWS_MAX) {
		rc = sg_error_set(e, SG_ERR_TOO_LARGE, "partition is full (%zu rows)", n);
	} else if (n == part_cap(p) || (p->ls && p->ls->l[list].len == p->ls->l[list].cap)) {
		pthread_rwlock_wrlock(&p->lock);
		size_t cap = part_cap(p);
		size_t want = cap == 0 ? INITIAL_ROWS : cap > ROWS_MAX / 2 ? ROWS_MAX : cap * 2;
		if (n == cap && !part_set_cap_locked(vi, p, want))
			rc = sg_error_set(e, SG_ERR_NOMEM,
			                  "out of memory growing a partition to %zu rows", want);
		if (rc == SG_OK && p->ls && !list_reserve(vi, p, list))
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory growing a list");
		pthread_rwlock_unlock(&p->lock);
	}
	if (rc != SG_OK) {
		if (created)
			part_unref(p);
		goto out;
	}

	/* p is another partition than the old row's, so dropping the old row
	 * (and maybe its partition) leaves p and its reserved room alone. */
	if (old != SIZE_MAX)
		drop_slot(vi, old);
	size_t row = n;
	store_row(p, row, id, idlen, vec, inv, expires_at_ms);
	if (p->ls)
		list_insert(p, row, list);
	p->n = row + 1; /* last: the row is whole before a search can see it */
	if (created)
		table_link(vi, p);
	struct idslot s = { .p = p, .row = (uint32_t)row, .hash = ih };
	idmap_put(vi->slots, vi->nslots, s);
	vi->nids++;
	atomic_fetch_add(&vi->rows, 1);
	lists_maybe_build(vi, p);
	rc = SG_OK;
out:
	pthread_mutex_unlock(&vi->wlock);
	return rc;
}

bool vindex_remove(struct vindex *vi, const char *id)
{
	size_t idlen = 0;
	if (!vi || !id_valid(id, &idlen))
		return false;
	pthread_mutex_lock(&vi->wlock);
	size_t slot = idmap_find(vi, id, (uint32_t)hash_bytes(id, idlen));
	if (slot != SIZE_MAX)
		drop_slot(vi, slot);
	pthread_mutex_unlock(&vi->wlock);
	return slot != SIZE_MAX;
}

/* ---- search ---- */

static size_t round_up(size_t x, size_t a)
{
	return (x + a - 1) / a * a;
}

/* Work shared by the searching thread and at most one helper thread: the
 * rows are cut into chunks that both claim in order from an atomic counter.
 * One query's first pass (H planes) is shared this way; its second pass,
 * which reads little, runs in the searching thread with the floors of both
 * merged. A batch is shared whole, chunk by chunk, each chunk block by
 * block so each block's codes are read from memory once for all queries.
 * The helper is detached and never waited for: it reads the search's data
 * only inside a chunk it claimed, the search waits only until every claimed
 * chunk is done, and whichever of the two lets go of the share last frees
 * it. So a helper the scheduler starts late costs the search nothing. */
struct share {
	atomic_size_t next;   /* chunks claimed */
	atomic_size_t done;   /* chunks finished */
	atomic_size_t helped; /* chunks the helper finished */
	atomic_int refs;
	size_t nchunks, chunk_rows, n, block;
	bool evenly;          /* chunk c goes to thread c % 2 (tests) */
	/* read by the helper only inside a claimed chunk */
	enum vq_kernel kernel;
	const struct vq_rows *rows;
	const struct vq_query *q;
	int nq;
	int64_t now_ms;
	int32_t *dh;          /* one query: <codes, H> per row */
	struct vq_state *st[2]; /* nq states for the searcher [0] and helper [1] */
};

static void share_work(struct share *s, int who)
{
	for (size_t k = (size_t)who;; k += 2) {
		size_t c = s->evenly ? k : atomic_fetch_add(&s->next, 1);
		if (c >= s->nchunks)
			return;
		size_t r0 = c * s->chunk_rows;
		size_t r1 = s->n - r0 < s->chunk_rows ? s->n : r0 + s->chunk_rows;
		if (s->nq == 1) {
			vq_scan_hi(s->kernel, s->rows, s->q, s->st[who], r0, r1, s->now_ms, s->dh);
		} else {
			for (size_t b = r0; b < r1; b += s->block) {
				size_t e = r1 - b < s->block ? r1 : b + s->block;
				for (int i = 0; i < s->nq; i++)
					vq_scan(s->kernel, s->rows, &s->q[i], &s->st[who][i], b, e,
					        s->now_ms);
			}
		}
		if (who)
			atomic_fetch_add_explicit(&s->helped, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&s->done, 1, memory_order_release);
	}
}

static void share_unref(struct share *s)
{
	if (atomic_fetch_sub(&s->refs, 1) == 1)
		free(s);
}

static void *helper_main(void *arg)
{
	share_work(arg, 1);
	share_unref(arg);
	return NULL;
}

/* Start a detached helper on s with every signal blocked (process signals
 * still reach the threads that expect them). False: none started. */
static bool helper_start(struct share *s)
{
	pthread_attr_t attr;
	sigset_t all, old;
	pthread_t th;
	bool started = false;
	if (pthread_attr_init(&attr) != 0)
		return false;
	sigfillset(&all);
	if (pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
	    pthread_sigmask(SIG_SETMASK, &all, &old) == 0) {
		atomic_fetch_add(&s->refs, 1);
		started = pthread_create(&th, &attr, helper_main, s) == 0;
		if (!started)
			atomic_fetch_sub(&s->refs, 1);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	pthread_attr_destroy(&attr);
	return started;
}

/* Run the shared part of a search on s, with a helper when two threads
 * are wanted and one can be had. Returns the threads that did work. */
static int share_run(struct share *s, bool two)
{
	bool started = two && helper_start(s);
	share_work(s, 0);
	if (s->evenly && !started) /* the helper's chunks, into its states */
		share_work(s, 1);
	/* At most the chunk the helper is in: a short wait. */
	while (atomic_load_explicit(&s->done, memory_order_acquire) < s->nchunks)
		sched_yield();
	return atomic_load_explicit(&s->helped, memory_order_relaxed) ? 2 : 1;
}

static const char *kernel_name(enum vq_kernel k)
{
	switch (k) {
	case VQ_SCALAR:
		return "scalar";
	case VQ_AVX2:
		return "avx2";
	case VQ_VNNI:
		return "avx512-vnni";
	}
	return "?";
}

/* The partition a search of dimension dim reads, referenced (*p stays
 * NULL when there is none: no error), or the dimension mismatch. */
static enum sg_err part_for_search(struct vindex *vi, const char *partition, size_t keylen,
                                   int dim, struct part **out, struct sg_error *e)
{
	struct part *p = part_acquire(vi, partition, keylen);
	*out = NULL;
	if (!p)
		return SG_OK;
	if (p->dim != dim) {
		enum sg_err rc = dim_mismatch(e, dim, p->dim);
		part_unref(p);
		return rc;
	}
	*out = p;
	return SG_OK;
}

static enum sg_err scan_all(struct vindex *vi, const struct vq_rows *rowsp,
                            const struct vq_query *q, struct vq_state *st, int nq, size_t nt,
                            size_t n, int64_t now_ms, int32_t *dh, int *threads,
                            struct sg_error *e);

/* Every search: nq queries (validated, normalised into scratch, quantised)
 * against one partition; best[i] gets query i's best live row if its
 * similarity is >= min_sim. */
static enum sg_err search(struct vindex *vi, const char *partition, int dim,
                          const float *queries, int nq, float min_sim, int64_t now_ms,
                          struct vindex_hit *best, struct sg_error *e)
{
	size_t keylen = 0, d = (size_t)dim, uq = (size_t)nq;
	enum sg_err rc;
	double norms[VINDEX_BATCH_MAX];

	memset(&last_stats, 0, sizeof last_stats);
	for (size_t i = 0; i < uq; i++)
		hit_none(&best[i]);
	if (!vi)
		return sg_error_set(e, SG_ERR_INTERNAL, "vector index is missing");
	if ((rc = check_key(partition, &keylen, e)) != SG_OK ||
	    (rc = check_dim(dim, e)) != SG_OK)
		return rc;
	if (!queries)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "query vector is missing");
	for (size_t i = 0; i < uq; i++) {
		norms[i] = norm_of(queries + i * d, dim);
		if (norms[i] != 0)
			continue;
		if (nq == 1)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
			                    "query vector is zero or has a non-finite component");
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
		                    "query %zu is zero or has a non-finite component", i);
	}
	struct part *p = NULL;
	if ((rc = part_for_search(vi, partition, keylen, dim, &p, e)) != SG_OK || !p)
		return rc;
	pthread_rwlock_rdlock(&p->lock);
	size_t n = p->n, qbytes = vq_query_bytes(dim);
	/* one query of a clustered partition reads its probe lists alone */
	const struct lists *ls = nq == 1 && p->ls && vi->probe < p->ls->nlist ? p->ls : NULL;
	size_t nt = !ls && n >= vi->split_min_rows && n >= 16 ? 2 : 1;
	size_t cap = nq == 1 ? CAND_CAP_SINGLE : CAND_CAP_BATCH;
	/* scratch: queries | codes | prepared queries | states | candidates |
	 * one query's <codes, H> per row */
	size_t o_codes = round_up(uq * d * sizeof(float), VQ_ALIGN);
	size_t o_q = o_codes + uq * qbytes;
	size_t o_st = round_up(o_q + uq * sizeof(struct vq_query), VQ_ALIGN);
	size_t o_cand = round_up(o_st + nt * uq * sizeof(struct vq_state), VQ_ALIGN);
	size_t o_dh = round_up(o_cand + nt * uq * cap * sizeof(struct vq_cand), VQ_ALIGN);
	char *buf = scratch_get(o_dh + (nq == 1 ? n * sizeof(int32_t) : 0));
	if (!buf) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory for search scratch");
		goto out;
	}
	float *xn = (float *)(void *)buf;
	struct vq_query *q = (struct vq_query *)(void *)(buf + o_q);
	struct vq_state *st = (struct vq_state *)(void *)(buf + o_st);
	struct vq_cand *cand = (struct vq_cand *)(void *)(buf + o_cand);
	for (size_t i = 0; i < uq; i++) {
		/* Normalising a copy keeps every score in [-1, 1], whatever the
		 * query's magnitude, exactly as rows are normalised. */
		double inv = 1.0 / norms[i];
		for (size_t j = 0; j < d; j++)
			xn[i * d + j] = (float)(queries[i * d + j] * inv);
		vq_query_init(&q[i], xn + i * d, dim, (int8_t *)(buf + o_codes + i * qbytes),
		              vi->bound_scale);
	}
	for (size_t t = 0; t < nt * uq; t++)
		vq_state_init(&st[t], min_sim, cand + t * cap, cap);

	struct vq_rows rows = {
		.mat = p->mat, .hi = p->hi, .lo = p->lo, .scale = p->qscale, .err = p->qerr,
		.lam = p->qlam, .exp = p->exp, .n = n, .plane = p->plane, .dim = dim,
	};
	int threads = 1, probed = 0;
	size_t scanned = n * uq;
	if (ls) {
		uint32_t pick[LISTS_MAX];
		probed = lists_pick(vi, ls, xn, dim, pick);
		scanned = 0;
		for (int i = 0; i < probed; i++) {
			const struct vlist *v = &ls->l[pick[i]];
			/* entries added since n was read are left out: dh has
			 * room for n */
			uint32_t len = v->len;
			if (len > n)
				len = (uint32_t)n;
			struct vq_rows lr = {
				.mat = p->mat, .hi = v->hi, .lo = v->lo, .scale = v->scale,
				.err = v->err, .lam = v->lam, .exp = v->exp, .map = v->rows,
				.n = len, .plane = p->plane, .dim = dim,
			};
			int32_t *dh = (int32_t *)(void *)(buf + o_dh);
			vq_scan_hi(vi->kernel, &lr, q, st, 0, len, now_ms, dh);
			vq_scan_lo(vi->kernel, &lr, q, st, 0, len, now_ms, dh);
			vq_drain(&lr, q, st);
			scanned += len;
		}
	} else if ((rc = scan_all(vi, &rows, q, st, nq, nt, n, now_ms,
	                          (int32_t *)(void *)(buf + o_dh), &threads, e)) != SG_OK) {
		goto out;
	}

	for (size_t i = 0; i < uq; i++) {
		struct vq_state two[2];
		double sim;
		for (size_t t = 0; t < nt; t++)
			two[t] = st[t * uq + i];
		/* one query: the helper's state holds no candidates, only stats */
		size_t row = vq_finish(&rows, &q[i], two, (int)nt, &sim);
		last_stats.refined += two[0].refined;
		last_stats.candidates += two[0].taken;
		last_stats.reranked += two[0].reranked;
		if (row == SIZE_MAX)
			continue;
		hit_set(&best[i], p->ids[row], sim);
		if (!(best[i].similarity >= min_sim))
			hit_none(&best[i]);
	}
	last_stats.rows = scanned;
	last_stats.threads = threads;
	last_stats.lists = probed;
	last_stats.kernel = kernel_name(vi->kernel);
	rc = SG_OK;
out:
	pthread_rwlock_unlock(&p->lock);
	part_unref(p);
	return rc;
}

/* Every row of the partition for nq queries (prepared q, states st: nt
 * per query), with a helper thread when nt is 2. dh: n int32 for one
 * query's first pass. */
static enum sg_err scan_all(struct vindex *vi, const struct vq_rows *rowsp,
                            const struct vq_query *q, struct vq_state *st, int nq, size_t nt,
                            size_t n, int64_t now_ms, int32_t *dh, int *threads,
                            struct sg_error *e)
{
	size_t uq = (size_t)nq;
	size_t block = BATCH_BLOCK_BYTES / (2 * rowsp->plane) / 8 * 8;
	if (block < 8)
		block = 8;
	struct share *sh = calloc(1, sizeof *sh);
	if (!sh)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory for a search");
	atomic_init(&sh->next, 0);
	atomic_init(&sh->done, 0);
	atomic_init(&sh->helped, 0);
	atomic_init(&sh->refs, 1);
	sh->n = n;
	sh->block = block;
	/* about 8 chunks or more, whole 8-row groups, at most SHARE_CHUNK_ROWS
	 * (one query) or four blocks (a batch). n may be 0: a writer emptied
	 * the partition after we found it and has not unlinked it yet. */
	sh->chunk_rows = round_up((n + 7) / 8, 8);
	if (sh->chunk_rows < 8)
		sh->chunk_rows = 8;
	if (sh->chunk_rows > (nq == 1 ? SHARE_CHUNK_ROWS : block * 4))
		sh->chunk_rows = nq == 1 ? SHARE_CHUNK_ROWS : block * 4;
	sh->evenly = vi->share_evenly && nt == 2;
	sh->nchunks = (n + sh->chunk_rows - 1) / sh->chunk_rows;
	sh->kernel = vi->kernel;
	sh->rows = rowsp;
	sh->q = q;
	sh->nq = nq;
	sh->now_ms = now_ms;
	sh->dh = dh;
	sh->st[0] = st;
	sh->st[1] = nt == 2 ? st + uq : NULL;
	*threads = share_run(sh, nt == 2);
	share_unref(sh);
	if (nq == 1) {
		/* The helper's first-pass floor bounds a live row from below too;
		 * the second pass reads little, so the searcher does it alone. */
		if (nt == 2 && st[1].floor > st[0].floor)
			st[0].floor = st[1].floor;
		vq_scan_lo(vi->kernel, rowsp, q, st, 0, n, now_ms, dh);
	}
	return SG_OK;
}

/* ---- coalesced searches ----
 *
 * A scan of a big partition reads every row's codes; when many single
 * searches of one partition are in flight, each reading the same bytes,
 * the memory traffic, not the arithmetic, is what they wait for. So at
 * most COALESCE_ACTIVE scans of a partition run at once; a search that
 * arrives beyond that waits, and when a scan ends, the first waiter leads
 * one pass for every waiter queued (up to COALESCE_MAX): each block of
 * rows is read once and scanned for all of them while it is in cache,
 * first pass for all, then second pass for all. Every query keeps its own
 * state and goes through the very kernels of a single search in the same
 * row order, so its answer is bit for bit the one it would get alone. */
struct waiter {
	struct waiter *next;
	const float *query;
	double norm;
	float min_sim;
	int64_t now_ms;
	struct vindex_hit *best;
	bool lead, done;
};

/* Under p->cmu: let the first waiter lead a pass if a scan slot is free. */
static void promote_locked(struct part *p)
{
	if (p->active >= COALESCE_ACTIVE || !p->wait_head)
		return;
	struct waiter *w = p->wait_head;
	p->wait_head = w->next;
	if (!p->wait_head)
		p->wait_tail = NULL;
	w->next = NULL;
	w->lead = true;
	p->active++;
	pthread_cond_broadcast(&p->ccv);
}

static void scan_end(struct part *p)
{
	pthread_mutex_lock(&p->cmu);
	p->active--;
	promote_locked(p);
	pthread_mutex_unlock(&p->cmu);
}

/* A buffer of at least want bytes from vi's pool (or new); NULL: none. */
static void *pool_get(struct vindex *vi, size_t want, size_t *cap)
{
	void *buf = NULL;
	pthread_mutex_lock(&vi->pool_mu);
	for (int i = 0; i < vi->npool; i++)
		if (vi->pool[i].cap >= want) {
			buf = vi->pool[i].buf;
			*cap = vi->pool[i].cap;
			vi->pool[i] = vi->pool[--vi->npool];
			break;
		}
	pthread_mutex_unlock(&vi->pool_mu);
	if (!buf && posix_memalign(&buf, VQ_ALIGN, want) == 0)
		*cap = want;
	return buf;
}

static void pool_put(struct vindex *vi, void *buf, size_t cap)
{
	pthread_mutex_lock(&vi->pool_mu);
	if (vi->npool == POOL_MAX) { /* keep the biggest */
		int small = 0;
		for (int i = 1; i < vi->npool; i++)
			if (vi->pool[i].cap < vi->pool[small].cap)
				small = i;
		if (vi->pool[small].cap < cap) {
			free(vi->pool[small].buf);
			vi->pool[small] = (struct pooled){ buf, cap };
			buf = NULL;
		}
	} else {
		vi->pool[vi->npool++] = (struct pooled){ buf, cap };
		buf = NULL;
	}
	pthread_mutex_unlock(&vi->pool_mu);
	free(buf);
}

/* One pass over p for the nw waiters (validated: dim matches, norm > 0).
 * Sets every w->best; false when scratch could not be had (nothing set). */
static bool coalesced_pass(struct vindex *vi, struct part *p, struct waiter **w, size_t nw)
{
	size_t d = (size_t)p->dim, qbytes = vq_query_bytes(p->dim), cap = CAND_CAP_SINGLE;
	pthread_rwlock_rdlock(&p->lock);
	size_t n = p->n;
	size_t o_codes = round_up(nw * d * sizeof(float), VQ_ALIGN);
	size_t o_q = o_codes + nw * qbytes;
	size_t o_st = round_up(o_q + nw * sizeof(struct vq_query), VQ_ALIGN);
	size_t o_cand = round_up(o_st + nw * sizeof(struct vq_state), VQ_ALIGN);
	size_t o_dh = round_up(o_cand + nw * cap * sizeof(struct vq_cand), VQ_ALIGN);
	size_t bcap = 0;
	char *buf = pool_get(vi, o_dh + nw * n * sizeof(int32_t) + 1, &bcap);
	if (!buf) {
		pthread_rwlock_unlock(&p->lock);
		return false;
	}
	float *xn = (float *)(void *)buf;
	struct vq_query *q = (struct vq_query *)(void *)(buf + o_q);
	struct vq_state *st = (struct vq_state *)(void *)(buf + o_st);
	struct vq_cand *cand = (struct vq_cand *)(void *)(buf + o_cand);
	int32_t *dh = (int32_t *)(void *)(buf + o_dh);
	for (size_t i = 0; i < nw; i++) {
		double inv = 1.0 / w[i]->norm;
		for (size_t j = 0; j < d; j++)
			xn[i * d + j] = (float)(w[i]->query[j] * inv);
		vq_query_init(&q[i], xn + i * d, p->dim, (int8_t *)(buf + o_codes + i * qbytes),
		              vi->bound_scale);
		vq_state_init(&st[i], w[i]->min_sim, cand + i * cap, cap);
	}
	struct vq_rows rows = {
		.mat = p->mat, .hi = p->hi, .lo = p->lo, .scale = p->qscale, .err = p->qerr,
		.lam = p->qlam, .exp = p->exp, .n = n, .plane = p->plane, .dim = p->dim,
	};
	/* blocks of whole 8-row groups whose planes stay in L2 meanwhile */
	size_t block = BATCH_BLOCK_BYTES / (2 * p->plane) / 8 * 8;
	if (block < 8)
		block = 8;
	for (size_t b = 0; b < n; b += block) {
		size_t e = n - b < block ? n : b + block;
		for (size_t i = 0; i < nw; i++)
			vq_scan_hi(vi->kernel, &rows, &q[i], &st[i], b, e, w[i]->now_ms, dh + i * n);
	}
	for (size_t b = 0; b < n; b += block) {
		size_t e = n - b < block ? n : b + block;
		for (size_t i = 0; i < nw; i++)
			vq_scan_lo(vi->kernel, &rows, &q[i], &st[i], b, e, w[i]->now_ms, dh + i * n);
	}
	for (size_t i = 0; i < nw; i++) {
		double sim;
		size_t row = vq_finish(&rows, &q[i], &st[i], 1, &sim);
		hit_none(w[i]->best);
		if (row != SIZE_MAX) {
			hit_set(w[i]->best, p->ids[row], sim);
			if (!(w[i]->best->similarity >= w[i]->min_sim))
				hit_none(w[i]->best);
		}
	}
	memset(&last_stats, 0, sizeof last_stats);
	last_stats.rows = n;
	last_stats.refined = st[0].refined;
	last_stats.candidates = st[0].taken;
	last_stats.reranked = st[0].reranked;
	last_stats.threads = 1;
	last_stats.kernel = kernel_name(vi->kernel);
	last_stats.coalesced = (int)nw;
	pthread_rwlock_unlock(&p->lock);
	pool_put(vi, buf, bcap);
	return true;
}

/* Lead: serve self and up to COALESCE_MAX - 1 queued waiters in one pass
 * (a slot is already counted in p->active for it). */
static enum sg_err lead_pass(struct vindex *vi, struct part *p, struct waiter *self,
                             const char *partition, int dim, struct sg_error *e)
{
	struct waiter *batch[COALESCE_MAX];
	size_t nw = 0, most = COALESCE_DH_BYTES / (4 * (p->n + 1));
	if (most > COALESCE_MAX)
		most = COALESCE_MAX;
	if (most < 1)
		most = 1;
	batch[nw++] = self;
	pthread_mutex_lock(&p->cmu);
	while (nw < most && p->wait_head) {
		struct waiter *w = p->wait_head;
		p->wait_head = w->next;
		w->next = NULL;
		batch[nw++] = w;
	}
	if (!p->wait_head)
		p->wait_tail = NULL;
	pthread_mutex_unlock(&p->cmu);
	bool ok = coalesced_pass(vi, p, batch, nw);
	enum sg_err rc = SG_OK;
	if (!ok) { /* no scratch for all: each of them alone */
		for (size_t i = 0; i < nw; i++) {
			struct sg_error we = { 0 };
			enum sg_err r = search(vi, partition, dim, batch[i]->query, 1, batch[i]->min_sim,
			                       batch[i]->now_ms, batch[i]->best, &we);
			if (i == 0 && r != SG_OK) {
				rc = r;
				*e = we;
			}
		}
	}
	pthread_mutex_lock(&p->cmu);
	for (size_t i = 1; i < nw; i++)
		batch[i]->done = true;
	p->active--;
	promote_locked(p);
	pthread_cond_broadcast(&p->ccv);
	pthread_mutex_unlock(&p->cmu);
	return rc;
}

/* One query: alone when the partition is small or few scans of it run,
 * otherwise in the next coalesced pass of its partition. */
static enum sg_err search_single(struct vindex *vi, const char *partition, int dim,
                                 const float *query, float min_sim, int64_t now_ms,
                                 struct vindex_hit *best, struct sg_error *e)
{
	size_t keylen = 0;
	struct part *p = NULL;
	if (!vi || vi->coalesce_min_rows == SIZE_MAX || check_key(partition, &keylen, NULL) != SG_OK ||
	    check_dim(dim, NULL) != SG_OK || !query ||
	    part_for_search(vi, partition, keylen, dim, &p, NULL) != SG_OK || !p)
		return search(vi, partition, dim, query, 1, min_sim, now_ms, best, e);
	/* read racily: only to choose. A clustered partition's search reads
	 * a few lists, too little to share. */
	if (p->n < vi->coalesce_min_rows ||
	    atomic_load_explicit(&p->nlists, memory_order_relaxed) > vi->probe) {
		part_unref(p);
		return search(vi, partition, dim, query, 1, min_sim, now_ms, best, e);
	}
	struct waiter self = {
		.query = query, .min_sim = min_sim, .now_ms = now_ms, .best = best,
		.norm = norm_of(query, dim),
	};
	pthread_mutex_lock(&p->cmu);
	bool alone = self.norm == 0 || (p->active < COALESCE_ACTIVE && !p->wait_head);
	if (alone) {
		p->active++;
		pthread_mutex_unlock(&p->cmu);
		enum sg_err rc = search(vi, partition, dim, query, 1, min_sim, now_ms, best, e);
		scan_end(p);
		part_unref(p);
		return rc;
	}
	if (p->wait_tail)
		p->wait_tail->next = &self;
	else
		p->wait_head = &self;
	p->wait_tail = &self;
	promote_locked(p);
	while (!self.lead && !self.done)
		pthread_cond_wait(&p->ccv, &p->cmu);
	pthread_mutex_unlock(&p->cmu);
	enum sg_err rc = SG_OK;
	if (self.lead)
		rc = lead_pass(vi, p, &self, partition, dim, e);
	part_unref(p);
	return rc;
}

enum sg_err vindex_search(struct vindex *vi, const char *partition, int dim,
                          const float *query, int64_t now_ms,
                          struct vindex_hit *best, struct sg_error *e)
{
	if (!best)
		return sg_error_set(e, SG_ERR_INTERNAL, "result pointer is missing");
	return search_single(vi, partition, dim, query, -INFINITY, now_ms, best, e);
}

enum sg_err vindex_search_min(struct vindex *vi, const char *partition, int dim,
                              const float *query, float min_similarity, int64_t now_ms,
                              struct vindex_hit *best, struct sg_error *e)
{
	if (!best)
		return sg_error_set(e, SG_ERR_INTERNAL, "result pointer is missing");
	if (isnan(min_similarity)) {
		hit_none(best);
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "minimum similarity is not a number");
	}
	return search_single(vi, partition, dim, query, min_similarity, now_ms, best, e);
}

enum sg_err vindex_search_batch(struct vindex *vi, const char *partition, int dim,
                                const float *queries, int nq, int64_t now_ms,
                                struct vindex_hit *best, struct sg_error *e)
{
	if (!best)
		return sg_error_set(e, SG_ERR_INTERNAL, "result pointer is missing");
	if (nq < 1 || nq > VINDEX_BATCH_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
		                    "batch of %d queries is outside 1..%d", nq,
		                    VINDEX_BATCH_MAX);
	return search(vi, partition, dim, queries, nq, -INFINITY, now_ms, best, e);
}

/* Insert (row, d) into top[0..*have-1], kept best first with ties in row
 * order; rows arrive in ascending order, so an equal score goes after. */
static void top_insert(size_t *rows, double *sims, int *have, int k, size_t row, double d)
{
	if (*have == k && !(d > sims[k - 1]))
		return;
	int i = *have < k ? (*have)++ : k - 1;
	for (; i > 0 && d > sims[i - 1]; i--) {
		rows[i] = rows[i - 1];
		sims[i] = sims[i - 1];
	}
	rows[i] = row;
	sims[i] = d;
}

enum sg_err vindex_search_top(struct vindex *vi, const char *partition, int dim,
                              const float *query, float min_similarity, int k,
                              int64_t now_ms, struct vindex_hit *hits, int *n,
                              struct sg_error *e)
{
	size_t keylen = 0, d = (size_t)dim;
	enum sg_err rc;

	memset(&last_stats, 0, sizeof last_stats);
	if (!hits || !n)
		return sg_error_set(e, SG_ERR_INTERNAL, "result pointer is missing");
	*n = 0;
	if (!vi)
		return sg_error_set(e, SG_ERR_INTERNAL, "vector index is missing");
	if (k < 1 || k > VINDEX_TOPK_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "top %d rows is outside 1..%d", k,
		                    VINDEX_TOPK_MAX);
	if (isnan(min_similarity))
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "minimum similarity is not a number");
	if ((rc = check_key(partition, &keylen, e)) != SG_OK || (rc = check_dim(dim, e)) != SG_OK)
		return rc;
	if (!query)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "query vector is missing");
	double norm = norm_of(query, dim);
	if (norm == 0)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
		                    "query vector is zero or has a non-finite component");
	struct part *p = NULL;
	if ((rc = part_for_search(vi, partition, keylen, dim, &p, e)) != SG_OK || !p)
		return rc;
	float *xn = scratch_get(d * sizeof(float));
	if (!xn) {
		part_unref(p);
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory for search scratch");
	}
	double inv = 1.0 / norm;
	for (size_t j = 0; j < d; j++)
		xn[j] = (float)(query[j] * inv);

	size_t rows[VINDEX_TOPK_MAX];
	double sims[VINDEX_TOPK_MAX];
	int have = 0;
	pthread_rwlock_rdlock(&p->lock);
	for (size_t r = 0; r < p->n; r++) {
		if (!live(p->exp[r], now_ms))
			continue;
		double s = vq_dot_exact(xn, p->mat + r * d, dim);
		last_stats.reranked++;
		/* the same clamp and rounding as the hit reports */
		float f = (float)(s > 1.0 ? 1.0 : s < -1.0 ? -1.0 : s);
		if (f >= min_similarity)
			top_insert(rows, sims, &have, k, r, s);
	}
	for (int i = 0; i < have; i++)
		hit_set(&hits[i], p->ids[rows[i]], sims[i]);
	*n = have;
	last_stats.rows = p->n;
	last_stats.threads = 1;
	last_stats.kernel = "exact";
	pthread_rwlock_unlock(&p->lock);
	part_unref(p);
	return SG_OK;
}

enum sg_err vindex_score(struct vindex *vi, const char *id, int dim, const float *query,
                         float *similarity, bool *found, struct sg_error *e)
{
	size_t idlen = 0;
	enum sg_err rc;
	*found = false;
	*similarity = -1.0f;
	if (!vi || !query)
		return sg_error_set(e, SG_ERR_INTERNAL, "vector index or query is missing");
	if (!id_valid(id, &idlen))
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "invalid entry id");
	if ((rc = check_dim(dim, e)) != SG_OK)
		return rc;
	double norm = norm_of(query, dim);
	if (norm == 0)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
		                    "query vector is zero or has a non-finite component");
	float *xn = scratch_get((size_t)dim * sizeof(float));
	if (!xn)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory for search scratch");
	for (int j = 0; j < dim; j++)
		xn[j] = (float)(query[j] * (1.0 / norm));
	/* only writers change the id map and rows: holding the writers'
	 * mutex, both can be read */
	pthread_mutex_lock(&vi->wlock);
	size_t slot = idmap_find(vi, id, id_hash(id));
	if (slot != SIZE_MAX) {
		const struct part *p = vi->slots[slot].p;
		size_t row = vi->slots[slot].row;
		if (p->dim != dim) {
			rc = dim_mismatch(e, dim, p->dim);
		} else {
			struct vindex_hit h;
			hit_set(&h, p->ids[row], vq_dot_exact(xn, p->mat + row * (size_t)dim, dim));
			*similarity = h.similarity;
			*found = true;
		}
	}
	pthread_mutex_unlock(&vi->wlock);
	return rc;
}

void vindex_last_stats(struct vindex_stats *out)
{
	if (out)
		*out = last_stats;
}

enum sg_err vindex_set_tuning(struct vindex *vi, const struct vindex_tuning *t,
                              struct sg_error *e)
{
	enum vq_kernel k = VQ_SCALAR;
	if (!vi || !t)
		return sg_error_set(e, SG_ERR_INTERNAL, "vector index or tuning is missing");
	switch (t->kernel) {
	case VINDEX_KERNEL_AUTO:
		k = vq_kernel_best();
		break;
	case VINDEX_KERNEL_SCALAR:
		k = VQ_SCALAR;
		break;
	case VINDEX_KERNEL_AVX2:
		k = VQ_AVX2;
		break;
	case VINDEX_KERNEL_AVX512_VNNI:
		k = VQ_VNNI;
		break;
	}
	if (!vq_kernel_supported(k))
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "this CPU cannot run the %s kernel",
		                    kernel_name(k));
	if (!(t->bound_scale >= 0))
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "bound scale must be >= 0");
	if (t->probe < 0 || t->probe > LISTS_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "lists probed must be 0..%d", LISTS_MAX);
	vi->kernel = k;
	vi->lists_min_rows = t->lists_min_rows;
	vi->probe = t->probe ? t->probe : PROBE_DEFAULT;
	vi->split_min_rows = t->split_min_rows ? t->split_min_rows : SPLIT_MIN_ROWS;
	vi->coalesce_min_rows = t->coalesce_min_rows ? t->coalesce_min_rows : COALESCE_MIN_ROWS;
	vi->bound_scale = t->bound_scale;
	vi->share_evenly = t->share_evenly;
	return SG_OK;
}

size_t vindex_expire(struct vindex *vi, int64_t now_ms)
{
	size_t removed = 0;
	if (!vi)
		return 0;
	pthread_mutex_lock(&vi->wlock);
	for (size_t b = 0; b < vi->nbuckets; b++) {
		struct part *p, *next;
		for (p = vi->buckets[b]; p; p = next) {
			next = p->next;
			pthread_rwlock_wrlock(&p->lock);
			for (size_t i = 0; i < p->n;) {
				if (!live(p->exp[i], now_ms)) {
					swap_remove_locked(vi, p, i); /* row i now holds the old last */
					removed++;
				} else {
					i++;
				}
			}
			part_maybe_shrink_locked(vi, p);
			size_t left = p->n;
			pthread_rwlock_unlock(&p->lock);
			if (left == 0)
				table_unlink(vi, p);
		}
	}
	atomic_fetch_sub(&vi->rows, removed);
	pthread_mutex_unlock(&vi->wlock);
	return removed;
}

void vindex_clear(struct vindex *vi)
{
	struct part *all = NULL;
	if (!vi)
		return;
	pthread_mutex_lock(&vi->wlock);
	pthread_rwlock_wrlock(&vi->tlock);
	for (size_t b = 0; b < vi->nbuckets; b++) {
		struct part *p, *next;
		for (p = vi->buckets[b]; p; p = next) {
			next = p->next;
			p->next = all;
			all = p;
		}
	}
	free(vi->buckets);
	account(vi, vi->nbuckets * sizeof *vi->buckets, 0);
	vi->buckets = NULL;
	vi->nbuckets = 0;
	atomic_store(&vi->nparts, 0);
	atomic_store(&vi->nlisted, 0);
	pthread_rwlock_unlock(&vi->tlock);

	free(vi->slots);
	account(vi, vi->nslots * sizeof *vi->slots, 0);
	vi->slots = NULL;
	vi->nslots = vi->nids = 0;
	atomic_store(&vi->rows, 0);
	while (all) {
		struct part *next = all->next;
		part_unref(all);
		all = next;
	}
	pthread_mutex_unlock(&vi->wlock);
}

void vindex_each_id(struct vindex *vi, void (*fn)(void *ud, const char *id), void *ud)
{
	if (!vi || !fn)
		return;
	/* the writer lock alone: only writers change the id map */
	pthread_mutex_lock(&vi->wlock);
	for (size_t i = 0; i < vi->nslots; i++)
		if (vi->slots[i].p)
			fn(ud, vi->slots[i].p->ids[vi->slots[i].row]);
	pthread_mutex_unlock(&vi->wlock);
}

size_t vindex_count(struct vindex *vi)
{
	return vi ? atomic_load(&vi->rows) : 0;
}

size_t vindex_bytes(struct vindex *vi)
{
	return vi ? atomic_load(&vi->bytes) : 0;
}

size_t vindex_partition_count(struct vindex *vi)
{
	return vi ? atomic_load(&vi->nparts) : 0;
}

size_t vindex_listed_count(struct vindex *vi)
{
	return vi ? atomic_load(&vi->nlisted) : 0;
}
