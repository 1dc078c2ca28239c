/* In-memory vector index of cached entries' embeddings, searched by cosine
 * similarity: per partition one contiguous row-major float32 matrix of
 * L2-normalised rows (the truth) plus an int8 copy scanned with SIMD to find
 * the few rows that can win, re-ranked exactly. Answers are those of an
 * exact scan of the float32 rows, except in a partition clustered into
 * lists (vindex_tuning.lists_min_rows, "Lists" below), where a single
 * search reads only the lists nearest to the query. A leaf module: it
 * knows nothing of Redis, HTTP or tenants, and never changes OpenBLAS
 * settings. */
#ifndef SEMGATE_VINDEX_H
#define SEMGATE_VINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "semgate/core/err.h"

/* Limits. A partition key is an opaque NUL-terminated byte string of
 * 1..VINDEX_KEY_MAX bytes (the caller builds it from tenant, scope hash and
 * embedding model). An entry id is 1..VINDEX_ID_MAX characters of
 * [A-Za-z0-9._:-]. A dimension is 1..VINDEX_DIM_MAX and is fixed when the
 * partition is created by its first vindex_add(). */
#define VINDEX_KEY_MAX 512
#define VINDEX_ID_MAX 64
#define VINDEX_DIM_MAX 8192
/* Most queries one vindex_search_batch() call accepts. */
#define VINDEX_BATCH_MAX 256
/* Most rows one vindex_search_top() call returns. */
#define VINDEX_TOPK_MAX 16

/* Memory per entry of dimension d, with S = d rounded up to 128:
 *   4d    float32 row (the truth)
 *   S     int8 codes, stored as two planes of S/2 nibbles (below)
 *   12    code scale and two error bounds (three floats)
 *   8     expiry, 65 id, ~21 id-map slot (16 bytes at load <= 3/4)
 * = 5d + 106 bytes for d a multiple of 128: 2,026 bytes at d = 384, so
 * 1,000,000 entries take ~2.0 GB (arrays grow by doubling, so up to twice
 * that is allocated right after a growth). vindex_bytes() reports it.
 *
 * How a search stays exact. Row r and query x (both normalised float32)
 * are approximated by sr*c and sx*p with int8 codes c, p (per-vector scale,
 * symmetric, round to nearest). With er >= |r - sr*c| stored per row and
 * ex = |x - sx*p| per query, Cauchy-Schwarz gives
 *   |<x,r> - sx*sr*<p,c>| <= (|x| + ex)*er + ex*|r|  (+ float rounding),
 * so every row has an upper and a lower bound from its codes alone. A
 * single search reads codes in two passes: c + 128 = 16*H + L is stored as
 * a plane of high nibbles H and a plane of low nibbles L. Pass 1 reads only
 * H for every row (half the bytes) and bounds the missing <p, L - 7.5> by
 * |p| * |L - 7.5| (stored per row), which yields wider bounds and, from
 * live rows, a floor no answer can be below. Pass 2 reads L only for rows
 * whose wide upper bound reaches that floor. A row is re-ranked exactly
 * only if its int8 upper bound reaches the best lower bound of any live
 * row, the best exact similarity found so far and (for vindex_search_min)
 * the caller's minimum; the others cannot win. Near-duplicate queries
 * read little more than the H plane; a query with many close rivals reads
 * about as much as a plain int8 scan. */
/* Lists. With vindex_tuning.lists_min_rows set, a partition that reaches
 * that many rows is clustered (spherical k-means over a sample, about 32
 * rows per centroid) into nlist lists, nlist the power of two at most
 * sqrt(rows) within 16..256, and clustered again whenever it has grown
 * enough for twice the lists (from 8,192 rows: 64 lists, 128 at 16,384,
 * 256 at 65,536, then never again). Each list holds a copy of its rows'
 * codes, bounds and expiry, so reading a list streams memory as a full
 * scan does; a row joins the list of its nearest centroid when it is
 * added. vindex_search() and vindex_search_min() of such a partition read
 * only the vindex_tuning.probe lists whose centroids are most similar to
 * the query, and rank their rows exactly as a full search does: the answer
 * is always a real row with its exact similarity, but a better row in a
 * list not read is not seen (a missed hit, never a wrong one). A probe of
 * at least nlist, vindex_search_batch() and vindex_search_top() read every
 * row. Memory: S + 24 bytes per row for the copy (S as below) and 8 for
 * its place, 416 bytes at d = 384 (+20 %), and 4*dim per centroid. Clustering runs in the
 * thread whose add reached the size, with the writer mutex held (other
 * adds and removes wait; searches go on, reading the old lists or every
 * row, until the new lists replace them under the partition's lock): about
 * n*nlist*dim multiply-adds, ~1 s at 65,536 rows of 384.
 *
 * Threading.
 * Every function below is safe to call from any number of threads at once,
 * except vindex_destroy(), which must be the last call.
 * - Searches take the partition's reader/writer lock shared; removes,
 *   replacements in place, vindex_expire(), vindex_clear() and adds that
 *   must grow an array take it exclusive. The lock prefers writers, so a
 *   stream of searches cannot starve them. An add of a new id with room
 *   left (nearly all: the arrays grow by halves or doublings) takes no
 *   partition lock: it writes its row past the rows a search reads and
 *   only then makes the row count (and its list's length) say so, so it
 *   never waits for a running scan, and a search sees the row whole or
 *   not at all.
 * - Writers (add, remove, expire, clear) are serialised with each other by
 *   one mutex; the short table lock that searches take to find a partition
 *   is never held while a scan runs or while a writer waits for a scan.
 * - A search of a partition with at least vindex_tuning.split_min_rows rows
 *   (default 65536) starts a detached helper thread (all signals blocked in
 *   it) that claims chunks of the first pass alongside the searching
 *   thread. The search never waits for the helper to start or to exit, only
 *   for a chunk it is scanning; a helper that cannot start or is scheduled
 *   late costs nothing but its share. The module does not use BLAS and
 *   never reads or sets OPENBLAS_* variables.
 * - Single searches (vindex_search, vindex_search_min) of a partition of
 *   at least vindex_tuning.coalesce_min_rows rows (default 16384) are
 *   coalesced: at most two scans of a partition run at once, and a search
 *   that arrives beyond that waits until one ends; then the first waiter
 *   scans for every waiter queued (up to 32, and at most 64 MB of their
 *   first-pass sums), block by block, so each block of codes is read from
 *   memory once for all of them. Each query keeps its own state and the
 *   kernels and row order of a search alone: its answer is bit for bit the
 *   same. A coalesced pass runs in one thread; its scratch comes from a
 *   small pool shared by the index (4 bytes per row and query).
 * - Each searching thread keeps a grow-only scratch buffer, freed when the
 *   thread exits: per query its normalised copy and codes (4*dim + S
 *   bytes) plus 2 x 4096 candidates of 8 bytes (2 x 256 per query for a
 *   batch), and for a single query 4 bytes per row of the partition (the
 *   first pass's partial dot products): ~4 MB for 1,000,000 rows. */

struct vindex;

/* Result of a search.
 * found == true: id is the best live row's id (NUL-terminated) and
 *   similarity its cosine similarity with the query, in [-1, 1]. Ties go
 *   to the row stored first in the partition's matrix (the lowest row;
 *   removal moves the last row into the hole).
 *   The similarity of query x and stored row r is defined exactly: both
 *   are the float32 vectors that vindex_normalize() would make of the
 *   inputs, and the score is sum_j x_j*r_j evaluated in double precision in
 *   8 partial sums (term j into sum j % 8, in order of j) added as
 *   ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)), then clamped to [-1, 1] and
 *   rounded to float. The best row is the one with the highest such score
 *   (compared in double); an exhaustive scan computing this score for every
 *   row gives bit-for-bit the same id and similarity.
 * found == false (partition missing, empty, or every row expired; also
 *   after an error): id is "" and similarity is -1. Callers must test found,
 *   not the similarity. */
struct vindex_hit {
	char id[VINDEX_ID_MAX + 1];
	float similarity;
	bool found;
};

/* A new empty index, or NULL when out of memory. The caller owns it and frees
 * it with vindex_destroy(). */
struct vindex *vindex_create(void);

/* Free the index and every partition. Accepts NULL. No other call on vi may
 * be running or follow. */
void vindex_destroy(struct vindex *vi);

/* Store vec under id in the partition named by partition, creating the
 * partition with dimension dim if it does not exist. The vector is copied and
 * L2-normalised; vec is borrowed and left unchanged. If id already exists
 * anywhere in the index it is replaced (its old row is removed first; the id
 * may move to another partition). expires_at_ms is a wall-clock time in ms
 * since the epoch after which the row is invisible to searches; 0 = never.
 * partition and id are borrowed (copied).
 * Returns SG_OK, or with e filled:
 *   SG_ERR_BAD_REQUEST  bad key, id, dim, expiry; zero or non-finite vector;
 *                       dim differs from the existing partition's
 *                       ("vector has dimension 3 but partition has 384")
 *   SG_ERR_TOO_LARGE    the partition already holds INT32_MAX rows
 *   SG_ERR_NOMEM        out of memory; the index is unchanged (an existing
 *                       row for id is kept) */
enum sg_err vindex_add(struct vindex *vi, const char *partition, int dim,
                       const char *id, const float *vec, int64_t expires_at_ms,
                       struct sg_error *e);

/* Remove the row stored under id (borrowed), whichever partition holds it.
 * A partition whose last row goes is dropped. Returns true when a row was
 * removed, false when id was not in the index (or is not a valid id). */
bool vindex_remove(struct vindex *vi, const char *id);

/* Find the live row (expiry 0 or > now_ms) of the partition most similar to
 * query (dim floats, borrowed, unchanged; it need not be normalised).
 * best (caller-owned) is always written. A missing partition is not an
 * error: SG_OK with best->found == false.
 * The query is normalised into a copy, so its magnitude does not matter.
 * Returns SG_OK, SG_ERR_BAD_REQUEST (bad key or dim, zero or non-finite
 * query, dim differs from the partition's: "vector has dimension 3 but
 * partition has 384"), or SG_ERR_NOMEM (the thread's scratch buffer could
 * not grow). */
enum sg_err vindex_search(struct vindex *vi, const char *partition, int dim,
                          const float *query, int64_t now_ms,
                          struct vindex_hit *best, struct sg_error *e);

/* vindex_search() for a caller that only wants a row at least
 * min_similarity similar: best->found is true exactly when vindex_search()
 * would find a row whose similarity is >= min_similarity, and then best is
 * what vindex_search() returns. Rows that cannot reach min_similarity are
 * not re-ranked, so this can be cheaper than vindex_search() followed by a
 * comparison. min_similarity <= -1 means no minimum. Returns as
 * vindex_search(), plus SG_ERR_BAD_REQUEST for a NaN min_similarity. */
enum sg_err vindex_search_min(struct vindex *vi, const char *partition, int dim,
                              const float *query, float min_similarity, int64_t now_ms,
                              struct vindex_hit *best, struct sg_error *e);

/* vindex_search() for nq (1..VINDEX_BATCH_MAX) queries at once against one
 * partition: the codes are read from memory once, in L2-sized blocks that
 * every query scans in turn. queries is nq * dim floats, row-major (query i
 * starts at queries + i*dim), borrowed. best points to nq caller-owned
 * hits, all written; best[i] is exactly what vindex_search() returns for
 * query i.
 * Any invalid query fails the whole call with SG_ERR_BAD_REQUEST naming its
 * index, as does nq outside 1..VINDEX_BATCH_MAX. Returns as
 * vindex_search(). */
enum sg_err vindex_search_batch(struct vindex *vi, const char *partition, int dim,
                                const float *queries, int nq, int64_t now_ms,
                                struct vindex_hit *best, struct sg_error *e);

/* The k (1..VINDEX_TOPK_MAX) live rows most similar to query whose
 * similarity is >= min_similarity, best first, into hits[0..*n-1] (*n <= k;
 * caller-owned, hits beyond *n are not written). Scores and ties are those of
 * vindex_search(): hits[0] is what vindex_search_min() returns, and row
 * order among equal scores is storage order. It computes the exact score of
 * every live row of the partition (no int8 pruning), so it costs a full
 * float32 pass: use it when the best row alone is not enough (the cache's
 * verifier refused it), not for every lookup. Returns as
 * vindex_search_min(), plus SG_ERR_BAD_REQUEST for k outside
 * 1..VINDEX_TOPK_MAX; *n is 0 after any error. */
enum sg_err vindex_search_top(struct vindex *vi, const char *partition, int dim,
                              const float *query, float min_similarity, int k,
                              int64_t now_ms, struct vindex_hit *hits, int *n,
                              struct sg_error *e);

/* The similarity (as vindex_search defines it) of query (dim floats,
 * borrowed, need not be normalised) with the row stored under id, whatever
 * its partition or expiry. *found false (and SG_OK) when id is not in the
 * index. SG_ERR_BAD_REQUEST for a bad id, a zero or non-finite query, or a
 * dim other than the row's. */
enum sg_err vindex_score(struct vindex *vi, const char *id, int dim, const float *query,
                         float *similarity, bool *found, struct sg_error *e);

/* Remove every row whose expiry is non-zero and <= now_ms, in every
 * partition; drop partitions left empty. Returns the number of rows
 * removed. */
size_t vindex_expire(struct vindex *vi, int64_t now_ms);

/* Remove every row and partition. */
void vindex_clear(struct vindex *vi);

/* Call fn(ud, id) once for every id in the index (expired rows not yet
 * removed included), in no particular order. id is borrowed for the call
 * only. Writers (add, remove, expire, clear) wait until it returns, and fn
 * must not call any vindex function on vi; searches run on meanwhile. */
void vindex_each_id(struct vindex *vi, void (*fn)(void *ud, const char *id), void *ud);

/* Total rows in all partitions (expired rows not yet removed included). */
size_t vindex_count(struct vindex *vi);

/* Bytes of heap the index has allocated for its matrices, id and expiry
 * arrays, partition records and hash tables (capacity, not just rows used).
 * Scratch buffers of searching threads are not counted. */
size_t vindex_bytes(struct vindex *vi);

/* Number of partitions (each holds at least one row). */
size_t vindex_partition_count(struct vindex *vi);
/* Partitions that have lists (vindex_tuning.lists_min_rows). */
size_t vindex_listed_count(struct vindex *vi);

/* What the calling thread's last search (vindex_search, _min or _batch)
 * did, summed over a batch's queries; all zero after a search that failed
 * or found no partition. For benchmarks and tests. kernel is a static
 * string. */
struct vindex_stats {
	size_t rows;       /* rows scanned (x queries) */
	size_t refined;    /* rows whose second code plane was read after the
	                    * first pass (single queries only) */
	size_t candidates; /* live rows whose int8 upper bound reached the
	                    * floor of the moment */
	size_t reranked;   /* exact float32 dot products computed */
	int threads;       /* threads that scanned rows: 1 or 2 */
	int lists;         /* lists read (0: every row, an exact search) */
	int coalesced;     /* queries the pass served (1: this one alone) */
	const char *kernel;
};
void vindex_last_stats(struct vindex_stats *out);

/* Knobs for tests and benchmarks; production code leaves the defaults.
 * Call before any search of vi runs (searches read them unlocked). */
enum vindex_kernel {
	VINDEX_KERNEL_AUTO, /* the fastest the CPU runs (the default) */
	VINDEX_KERNEL_SCALAR,
	VINDEX_KERNEL_AVX2,
	VINDEX_KERNEL_AVX512_VNNI,
};
struct vindex_tuning {
	enum vindex_kernel kernel;
	/* Scan with two threads from this many rows; 0 = the default, 65536;
	 * SIZE_MAX = always one thread. */
	size_t split_min_rows;
	/* Multiplies the error bound: 1 = rigorous (the default). Below 1 the
	 * answers may be wrong; only for tests showing the bound is needed. */
	double bound_scale;
	/* Tests: with two threads, chunks alternate between them and the
	 * search waits for the helper, so the helper's share always runs. */
	bool share_evenly;
	/* Coalesce concurrent single searches of partitions of at least this
	 * many rows; 0 = the default, 16384; SIZE_MAX = never. */
	size_t coalesce_min_rows;
	/* Approximate search of big partitions ("Lists" above): cluster a
	 * partition once it holds this many rows; 0 = never (the default:
	 * every search exact). Set it before the first add. */
	size_t lists_min_rows;
	/* Lists a single search of a clustered partition reads, best first;
	 * 0 = the default, 16. A value >= the partition's lists reads them all
	 * (an exact search). */
	int probe;
};
/* Returns SG_OK, or SG_ERR_BAD_REQUEST (kernel the CPU lacks, negative or
 * NaN bound_scale; nothing changed) or SG_ERR_INTERNAL (NULL argument). */
enum sg_err vindex_set_tuning(struct vindex *vi, const struct vindex_tuning *t,
                              struct sg_error *e);

/* Scale v (dim floats, caller-owned, dim >= 1) to unit L2 norm in place,
 * computing the norm in double precision. Returns the original norm
 * (clamped to FLT_MAX if it does not fit a float), or 0 when v is all zeros
 * or holds a NaN or infinity, in which case v is left unchanged. Pure and
 * thread-safe. */
float vindex_normalize(float *v, int dim);

#endif
