/* Internal interface between vindex.c (partitions, locks, threads, public
 * API) and q8.c (the int8 compact copy: row and query encoding, scan
 * kernels, exact re-rank). Nothing outside src/vindex/ includes it. */
#ifndef SEMGATE_VINDEX_PRIV_H
#define SEMGATE_VINDEX_PRIV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Code arrays and the query's codes are aligned to this (one AVX-512
 * register); a plane row is a multiple of it. */
#define VQ_ALIGN 64

/* The longest row the kernels encode. q8.c is the lower of the two files:
 * it includes only this header, never vindex.h; vindex.c checks that its
 * public VINDEX_DIM_MAX fits. */
#define VQ_DIM_MAX 8192

enum vq_kernel {
	VQ_SCALAR,
	VQ_AVX2,
	VQ_VNNI, /* AVX-512 VNNI */
};

/* A row's int8 codes c (one per dimension, dim rounded up to a multiple of
 * 128 with zeros) are stored as c + 128 = 16*H + L in two planes of
 * nibbles, H and L, each vq_plane(dim) bytes per row: in each 64-byte group
 * g, byte k holds dimension 128g + k in its low nibble and 128g + 64 + k in
 * its high nibble. The scan reads the H plane of every row and the L plane
 * only of rows that may still win. */
size_t vq_plane(int dim);

/* Bytes of a query's codes: dim rounded up to 128. */
size_t vq_query_bytes(int dim);

/* Quantise unit row r (dim floats): codes = round(r / scale) in
 * [-127, 127] with scale = max|r_j| / 127, written as the two planes.
 * *err >= |r - scale*codes|; *lam >= scale * |L - 7.5| over the first dim
 * dimensions (how far the H plane alone can be off). */
void vq_encode(const float *r, int dim, uint8_t *hi, uint8_t *lo, float *scale,
               float *err, float *lam);

/* What a scan reads of one partition; valid while its lock is held. */
struct vq_rows {
	const float *mat;     /* n x dim, the truth */
	const uint8_t *hi;    /* n x plane */
	const uint8_t *lo;    /* n x plane */
	const float *scale;   /* n */
	const float *err;     /* n */
	const float *lam;     /* n */
	const int64_t *exp;   /* n */
	/* NULL, or the row of mat that code row r stands for (a list's copy
	 * of the codes): re-ranks and answers name rows of mat. */
	const uint32_t *map;
	size_t n, plane;
	int dim;
};

/* A prepared query. For every row, with exact = vq_dot_exact(x, row):
 *   |exact - scale*scale_row*<codes, codes_row>| <= alpha*err_row + beta
 * and, knowing only the row's H plane,
 *   |exact - scale*scale_row*(16<codes,H> - 120.5*sum)|
 *                                 <= gamma*lam_row + alpha*err_row + beta_h
 * both including the float rounding of the kernels' arithmetic. */
struct vq_query {
	const float *x;       /* normalised query, dim floats */
	const int8_t *codes;  /* vq_query_bytes(dim), VQ_ALIGN-aligned */
	int32_t sum;          /* sum of codes */
	float scale, alpha, beta, gamma, beta_h;
};

/* Prepare q from the normalised query x; codes is the caller's buffer.
 * bound_scale multiplies every bound term: 1 is rigorous; anything less is
 * for tests that prove the bound is needed. */
void vq_query_init(struct vq_query *q, const float *x, int dim, int8_t *codes,
                   double bound_scale);

struct vq_cand {
	uint32_t row;
	float upper; /* upper bound on the row's exact similarity */
};

/* One scan's progress over a range of rows for one query. */
struct vq_state {
	/* Rows whose upper bound is below floor cannot be the answer: floor
	 * is the largest of min_similarity, a lower bound of some live row's
	 * similarity, and the best exact similarity found. */
	float floor;
	double best;     /* best exact similarity so far */
	size_t best_row; /* SIZE_MAX: none yet */
	struct vq_cand *cand;
	size_t ncand, cap;
	size_t refined;  /* rows whose L plane was read after the H pass */
	size_t taken;    /* live rows whose int8 upper bound reached the floor */
	size_t reranked; /* exact dot products computed */
};

/* min_similarity <= -1 (or -INFINITY) means no threshold. cap >= 2. */
void vq_state_init(struct vq_state *st, float min_similarity, struct vq_cand *buf,
                   size_t cap);

/* One pass over rows [r0, r1) reading both planes (for batches). */
void vq_scan(enum vq_kernel k, const struct vq_rows *R, const struct vq_query *q,
             struct vq_state *st, size_t r0, size_t r1, int64_t now_ms);

/* Two passes for one query. vq_scan_hi() reads only the H planes of rows
 * [r0, r1), keeps each row's <codes, H> in dh[row] and raises st->floor
 * from live rows' lower bounds. After the floors of all ranges are merged,
 * vq_scan_lo() reads the L plane of the rows that can still reach the
 * floor and takes candidates as vq_scan() does. */
void vq_scan_hi(enum vq_kernel k, const struct vq_rows *R, const struct vq_query *q,
                struct vq_state *st, size_t r0, size_t r1, int64_t now_ms, int32_t *dh);
void vq_scan_lo(enum vq_kernel k, const struct vq_rows *R, const struct vq_query *q,
                struct vq_state *st, size_t r0, size_t r1, int64_t now_ms,
                const int32_t *dh);

/* out[c] = <v, row c of m> (nrows x dim floats, row-major) in float32:
 * similarity to the lists' centroids, where rounding only moves a row or a
 * query between two nearly equal lists. Deterministic for a kernel. */
void vq_dots(enum vq_kernel k, const float *m, size_t nrows, const float *v, int dim,
             float *out);

/* Re-rank every candidate of st that can still reach its floor (the one
 * with the highest upper bound first) and empty the buffer, so that st can
 * go on over rows of another vq_rows: one list after another. */
void vq_drain(const struct vq_rows *R, const struct vq_query *q, struct vq_state *st);

/* Merge nst states that scanned disjoint ranges for the same query and
 * re-rank what is left exactly. Returns the best live row (ties: lowest
 * row) with its exact similarity in *sim, or SIZE_MAX when no row was
 * re-ranked. With a min_similarity the caller must still compare *sim:
 * rows that could not reach it were skipped, so the row returned is only
 * the answer if its similarity does reach it. */
size_t vq_finish(const struct vq_rows *R, const struct vq_query *q,
                 struct vq_state *st, int nst, double *sim);

/* The index's similarity of two float vectors: products summed in double
 * in 8 interleaved partial sums (element j into sum j % 8, in order of j),
 * added as ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)). Deterministic. */
double vq_dot_exact(const float *a, const float *b, int dim);

/* The fastest kernel this CPU runs, and whether it runs k. */
enum vq_kernel vq_kernel_best(void);
bool vq_kernel_supported(enum vq_kernel k);

#endif
