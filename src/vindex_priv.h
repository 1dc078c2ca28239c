/* Internal interface between vindex.c (partitions, locks, threads, public
 * API) and vindex_q8.c (the int8 compact copy: row and query encoding, scan
 * kernels, exact re-rank). Nothing outside src/vindex*.c includes it. */
#ifndef SEMGATE_VINDEX_PRIV_H
#define SEMGATE_VINDEX_PRIV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Code rows are padded with zeros to a multiple of this many bytes (one
 * AVX-512 register), and code arrays are aligned to it. */
#define VQ_ALIGN 64

enum vq_kernel {
	VQ_SCALAR,
	VQ_AVX2,
	VQ_VNNI, /* AVX-512 VNNI */
};

/* Bytes per code row for dim: dim rounded up to VQ_ALIGN. */
size_t vq_stride(int dim);

/* Quantise unit row r (dim floats) into codes (stride bytes, padding
 * zeroed): codes = round(r / scale) in [-127, 127] with scale =
 * max|r_j| / 127. *err is an upper bound on ||r - scale * codes||_2. */
void vq_encode(const float *r, int dim, size_t stride, int8_t *codes, float *scale,
               float *err);

/* What a scan reads of one partition; valid while its lock is held. */
struct vq_rows {
	const float *mat;     /* n x dim, the truth */
	const int8_t *codes;  /* n x stride */
	const float *scale;   /* n */
	const float *err;     /* n */
	const int64_t *exp;   /* n */
	size_t n, stride;
	int dim;
};

/* A prepared query. For every row,
 *   |exact - approx| <= alpha * err_row + beta,
 * exact being vq_dot_exact(x, row) and approx the float value
 * scale * scale_row * <codes, codes_row> as the kernels compute it. */
struct vq_query {
	const float *x;       /* normalised query, dim floats */
	const int8_t *codes;  /* stride bytes */
	const uint8_t *absc;  /* |codes|, stride bytes */
	int32_t sum;          /* sum of codes */
	float scale, alpha, beta;
};

/* Prepare q from the normalised query x. codes and absc are the caller's
 * buffers of stride bytes each, 32-byte aligned. bound_scale multiplies
 * alpha and beta: 1 is the rigorous bound; anything less is for tests that
 * prove the bound is needed. */
void vq_query_init(struct vq_query *q, const float *x, int dim, size_t stride,
                   int8_t *codes, uint8_t *absc, double bound_scale);

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
	size_t taken;    /* live rows that were candidates at some point */
	size_t reranked; /* exact dot products computed */
};

/* min_similarity <= -1 (or -INFINITY) means no threshold. cap >= 2. */
void vq_state_init(struct vq_state *st, float min_similarity, struct vq_cand *buf,
                   size_t cap);

/* Scan rows [r0, r1) of R for q, live at now_ms, with kernel k. */
void vq_scan(enum vq_kernel k, const struct vq_rows *R, const struct vq_query *q,
             struct vq_state *st, size_t r0, size_t r1, int64_t now_ms);

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
