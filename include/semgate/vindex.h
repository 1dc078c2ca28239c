/* In-memory vector index of cached entries' embeddings, searched by cosine
 * similarity: one contiguous row-major float32 matrix of L2-normalised rows
 * per partition, scanned with cblas_sgemv/sgemm. A leaf module: it knows
 * nothing of Redis, HTTP or tenants, and never changes OpenBLAS settings. */
#ifndef SEMGATE_VINDEX_H
#define SEMGATE_VINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "semgate/err.h"

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

/* Threading.
 * Every function below is safe to call from any number of threads at once,
 * except vindex_destroy(), which must be the last call.
 * - Searches take the partition's reader/writer lock shared; adds, removes,
 *   vindex_expire() and vindex_clear() take it exclusive. The lock prefers
 *   writers, so a stream of searches cannot starve an add.
 * - Writers (add, remove, expire, clear) are serialised with each other by
 *   one mutex; the short table lock that searches take to find a partition
 *   is never held while a scan runs or while a writer waits for a scan.
 * - OpenBLAS threading is the caller's choice: this module never calls
 *   openblas_set_num_threads() and never reads or sets OPENBLAS_* variables.
 *   With the default threaded OpenBLAS one large scan may use every core.
 * - Each searching thread keeps a grow-only scratch buffer, freed when the
 *   thread exits: the normalised query copies plus a block of scores, at
 *   most dim + 65536 floats for vindex_search() and nq * dim + 262144 for
 *   vindex_search_batch(), whatever the partition's size. */

struct vindex;

/* Result of a search.
 * found == true: id is the best live row's id (NUL-terminated) and
 *   similarity its cosine similarity with the query, in [-1, 1]. Ties go
 *   to the row stored first in the partition's matrix.
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

/* vindex_search() for nq (1..VINDEX_BATCH_MAX) queries at once against one
 * partition, using one cblas_sgemm pass over the matrix instead of nq scans.
 * queries is nq * dim floats, row-major (query i starts at queries + i*dim),
 * borrowed. best points to nq caller-owned hits, all written; best[i] equals
 * what vindex_search() would return for query i (up to float rounding).
 * Any invalid query fails the whole call with SG_ERR_BAD_REQUEST naming its
 * index, as does nq outside 1..VINDEX_BATCH_MAX. Returns as
 * vindex_search(). */
enum sg_err vindex_search_batch(struct vindex *vi, const char *partition, int dim,
                                const float *queries, int nq, int64_t now_ms,
                                struct vindex_hit *best, struct sg_error *e);

/* Remove every row whose expiry is non-zero and <= now_ms, in every
 * partition; drop partitions left empty. Returns the number of rows
 * removed. */
size_t vindex_expire(struct vindex *vi, int64_t now_ms);

/* Remove every row and partition. */
void vindex_clear(struct vindex *vi);

/* Total rows in all partitions (expired rows not yet removed included). */
size_t vindex_count(struct vindex *vi);

/* Bytes of heap the index has allocated for its matrices, id and expiry
 * arrays, partition records and hash tables (capacity, not just rows used).
 * Scratch buffers of searching threads are not counted. */
size_t vindex_bytes(struct vindex *vi);

/* Number of partitions (each holds at least one row). */
size_t vindex_partition_count(struct vindex *vi);

/* Scale v (dim floats, caller-owned, dim >= 1) to unit L2 norm in place,
 * computing the norm in double precision. Returns the original norm
 * (clamped to FLT_MAX if it does not fit a float), or 0 when v is all zeros
 * or holds a NaN or infinity, in which case v is left unchanged. Pure and
 * thread-safe. */
float vindex_normalize(float *v, int dim);

#endif
