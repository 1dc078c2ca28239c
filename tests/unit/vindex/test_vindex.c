/* Unit tests for the vector index: results against a naive double-precision
 * scan, swap-removal, replacement, expiry, growth, input checks, partition
 * isolation, batch search and a bounded concurrency smoke test; then the
 * int8 compact search against an exhaustive exact scan, bit for bit, in
 * every kernel the CPU runs, on random and adversarial data, with proof
 * that the error bound is needed in full. Fixed seeds throughout, so every
 * run sees the same data. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/vindex/vindex.h"
#include "sg_test.h"

/* ---- deterministic data ---- */

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64* */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

/* Uniform in [-1, 1). */
static float rng_float(uint64_t *s)
{
	return (float)((double)(rng_next(s) >> 11) / (double)(1ULL << 53) * 2.0 - 1.0);
}

static float *rand_vecs(uint64_t *s, size_t n, int dim)
{
	float *v = malloc(n * (size_t)dim * sizeof *v);
	for (size_t i = 0; i < n * (size_t)dim; i++)
		v[i] = rng_float(s);
	return v;
}

static void make_id(char *buf, size_t len, const char *prefix, size_t i)
{
	snprintf(buf, len, "%s%zu", prefix, i);
}

/* Cosine similarity in double, as the reference. */
static double cos_naive(const float *a, const float *b, int dim)
{
	double ab = 0, aa = 0, bb = 0;
	for (int i = 0; i < dim; i++) {
		ab += (double)a[i] * b[i];
		aa += (double)a[i] * a[i];
		bb += (double)b[i] * b[i];
	}
	return ab / (sqrt(aa) * sqrt(bb));
}

static float *vec_of(int dim, float fill)
{
	float *v = malloc((size_t)dim * sizeof *v);
	for (int i = 0; i < dim; i++)
		v[i] = fill;
	return v;
}

/* ---- tests ---- */

static void test_create_destroy_accept_null_and_empty_index_is_empty(void)
{
	vindex_destroy(NULL);
	struct vindex *vi = vindex_create();
	CHECK(vi != NULL);
	CHECK_INT(vindex_count(vi), 0);
	CHECK_INT(vindex_partition_count(vi), 0);
	CHECK_INT(vindex_bytes(vi), 0);
	CHECK_INT(vindex_expire(vi, 1000), 0);
	CHECK(!vindex_remove(vi, "nope"));
	vindex_clear(vi);
	vindex_destroy(vi);
}

static void test_normalize_returns_norm_and_makes_unit_vector(void)
{
	float v[3] = { 3, 4, 0 };
	CHECK_NEAR(vindex_normalize(v, 3), 5.0, 1e-6);
	CHECK_NEAR(v[0], 0.6, 1e-7);
	CHECK_NEAR(v[1], 0.8, 1e-7);

	float z[2] = { 0, 0 };
	CHECK(vindex_normalize(z, 2) == 0);
	float bad[2] = { 1, NAN };
	CHECK(vindex_normalize(bad, 2) == 0);
	CHECK(isnan(bad[1]) && bad[0] == 1); /* left unchanged */
	float inf[2] = { INFINITY, 1 };
	CHECK(vindex_normalize(inf, 2) == 0);

	/* Huge and tiny components neither overflow nor underflow. */
	float big[2] = { FLT_MAX, FLT_MAX };
	CHECK(vindex_normalize(big, 2) == FLT_MAX);
	CHECK_NEAR(big[0], sqrt(0.5), 1e-7);
	float tiny[2] = { 1e-44f, 1e-44f };
	CHECK(vindex_normalize(tiny, 2) > 0);
	CHECK_NEAR(tiny[0], sqrt(0.5), 1e-6);
	CHECK(vindex_normalize(NULL, 2) == 0);
}

/* For each (dim, size), every query's best id and similarity match a
 * double-precision scan; near-ties (top two within 1e-5) accept either. */
static void test_search_matches_naive_double_loop(void)
{
	static const int dims[] = { 1, 7, 384, 1000 };
	static const size_t sizes[] = { 1, 1000, 5000 };
	uint64_t seed = 0x5eed1234abcdULL;
	char id[32];

	for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
		for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
			int dim = dims[di];
			size_t n = sizes[si];
			struct vindex *vi = vindex_create();
			float *data = rand_vecs(&seed, n, dim);
			for (size_t i = 0; i < n; i++) {
				make_id(id, sizeof id, "e", i);
				CHECK_INT(vindex_add(vi, "p", dim, id, data + i * (size_t)dim, 0, NULL),
				          SG_OK);
			}
			CHECK_INT(vindex_count(vi), n);
			const int nqueries = 16;
			float *q = rand_vecs(&seed, (size_t)nqueries, dim);
			/* Half the queries are scaled, perturbed copies of stored rows. */
			for (int k = 0; k < nqueries; k += 2) {
				size_t src = (size_t)(rng_next(&seed) % n);
				for (int j = 0; j < dim; j++)
					q[(size_t)k * dim + j] = 3.0f * data[src * (size_t)dim + j] +
					                         0.05f * q[(size_t)k * dim + j];
			}
			for (int k = 0; k < nqueries; k++) {
				const float *qk = q + (size_t)k * dim;
				double best = -2, second = -2;
				size_t bi = 0;
				for (size_t i = 0; i < n; i++) {
					double c = cos_naive(qk, data + i * (size_t)dim, dim);
					if (c > best) {
						second = best;
						best = c;
						bi = i;
					} else if (c > second) {
						second = c;
					}
				}
				struct vindex_hit hit;
				CHECK_INT(vindex_search(vi, "p", dim, qk, 0, &hit, NULL), SG_OK);
				CHECK(hit.found);
				CHECK_NEAR(hit.similarity, best, 1e-5);
				make_id(id, sizeof id, "e", bi);
				if (strcmp(hit.id, id) != 0) {
					/* Only a near-tie may pick another row, and that row
					 * must really be as good. */
					size_t got = (size_t)strtoul(hit.id + 1, NULL, 10);
					CHECK(best - second < 1e-5);
					CHECK_NEAR(cos_naive(qk, data + got * (size_t)dim, dim), best, 1e-5);
					printf("# near-tie dim %d n %zu query %d\n", dim, n, k);
				}
			}
			free(q);
			free(data);
			vindex_destroy(vi);
		}
	}
}

static void test_search_of_stored_vector_finds_it_with_similarity_one(void)
{
	uint64_t seed = 42;
	struct vindex *vi = vindex_create();
	float *data = rand_vecs(&seed, 100, 384);
	char id[32];
	for (size_t i = 0; i < 100; i++) {
		make_id(id, sizeof id, "doc:", i);
		vindex_add(vi, "t1|s|m", 384, id, data + i * 384, 0, NULL);
	}
	for (size_t i = 0; i < 100; i += 7) {
		struct vindex_hit hit;
		CHECK_INT(vindex_search(vi, "t1|s|m", 384, data + i * 384, 0, &hit, NULL), SG_OK);
		make_id(id, sizeof id, "doc:", i);
		CHECK(hit.found);
		CHECK_STR(hit.id, id);
		CHECK_NEAR(hit.similarity, 1.0, 1e-6);
		CHECK(hit.similarity <= 1.0f);
	}
	free(data);
	vindex_destroy(vi);
}

static void test_search_of_missing_partition_is_not_found(void)
{
	struct vindex *vi = vindex_create();
	float q[4] = { 1, 2, 3, 4 };
	struct vindex_hit hit = { .id = "junk", .similarity = 0.5f, .found = true };
	struct sg_error e = { 0 };
	CHECK_INT(vindex_search(vi, "nobody", 4, q, 0, &hit, &e), SG_OK);
	CHECK(!hit.found);
	CHECK_STR(hit.id, "");
	CHECK(hit.similarity == -1.0f);
	vindex_destroy(vi);
}

/* Check that every live row is found with its own vector and every removed
 * id is not returned. */
static void check_rows(struct vindex *vi, const float *data, size_t n, int dim,
                       const bool *removed)
{
	char id[32];
	for (size_t i = 0; i < n; i++) {
		struct vindex_hit hit;
		CHECK_INT(vindex_search(vi, "p", dim, data + i * dim, 0, &hit, NULL), SG_OK);
		make_id(id, sizeof id, "r", i);
		if (removed[i]) {
			CHECK(strcmp(hit.id, id) != 0);
			CHECK(hit.similarity < 0.999f);
		} else {
			CHECK(hit.found);
			CHECK_STR(hit.id, id);
			CHECK_NEAR(hit.similarity, 1.0, 1e-6);
		}
	}
}

/* Removing first, middle and last rows moves the last row into each hole;
 * after every removal each other id must still be found with its own vector
 * and be removable exactly once. */
static void test_remove_swaps_last_row_in_and_keeps_others_findable(void)
{
	const int dim = 32;
	const size_t n = 300;
	uint64_t seed = 7;
	struct vindex *vi = vindex_create();
	float *data = rand_vecs(&seed, n, dim);
	char id[32];
	bool removed[300] = { false };
	for (size_t i = 0; i < n; i++) {
		make_id(id, sizeof id, "r", i);
		vindex_add(vi, "p", dim, id, data + i * dim, 0, NULL);
	}
	size_t gone = 0;
	/* 299 is the last row (moves into 0), then the moved row itself, ... */
	static const size_t order[] = { 0, 299, 150, 1, 298, 2, 100, 101 };
	for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
		make_id(id, sizeof id, "r", order[k]);
		CHECK(vindex_remove(vi, id));
		CHECK(!vindex_remove(vi, id));
		removed[order[k]] = true;
		gone++;
		check_rows(vi, data, n, dim, removed);
	}
	for (size_t k = 0; k < 100; k++) { /* pseudo-random further removals */
		size_t i = (size_t)(rng_next(&seed) % n);
		make_id(id, sizeof id, "r", i);
		CHECK(vindex_remove(vi, id) == !removed[i]);
		gone += !removed[i];
		removed[i] = true;
		if (k % 10 == 0)
			check_rows(vi, data, n, dim, removed);
	}
	CHECK_INT(vindex_count(vi), n - gone);
	check_rows(vi, data, n, dim, removed);
	/* Re-adding a removed id works and the id map stayed consistent. */
	CHECK_INT(vindex_add(vi, "p", dim, "r0", data, 0, NULL), SG_OK);
	removed[0] = false;
	check_rows(vi, data, n, dim, removed);
	/* Every live id is removable exactly once; then the partition goes. */
	for (size_t i = 0; i < n; i++) {
		make_id(id, sizeof id, "r", i);
		CHECK(vindex_remove(vi, id) == !removed[i]);
	}
	CHECK_INT(vindex_count(vi), 0);
	CHECK_INT(vindex_partition_count(vi), 0);
	free(data);
	vindex_destroy(vi);
}

/* Equal similarities go to the row stored first, so the same query gets the
 * same answer every time. */
struct id_tally {
	int seen[40];
	int bad;
};

static void tally_id(void *ud, const char *id)
{
	struct id_tally *t = ud;
	int i = -1;
	if (sscanf(id, "e%d", &i) == 1 && i >= 0 && i < 40)
		t->seen[i]++;
	else
		t->bad++;
}

static void test_each_id_visits_every_live_id_once_across_partitions(void)
{
	const int dim = 8;
	uint64_t seed = 11;
	struct vindex *vi = vindex_create();
	float *data = rand_vecs(&seed, 40, dim);
	char id[32];
	struct id_tally t = { { 0 }, 0 };
	vindex_each_id(vi, tally_id, &t); /* empty: no call */
	vindex_each_id(NULL, tally_id, &t);
	CHECK_INT(t.bad, 0);
	for (int i = 0; i < 40; i++) {
		make_id(id, sizeof id, "e", (size_t)i);
		vindex_add(vi, i % 3 ? "a" : "b", dim, id, data + i * dim, 0, NULL);
	}
	for (int i = 0; i < 40; i += 7) {
		make_id(id, sizeof id, "e", (size_t)i);
		CHECK(vindex_remove(vi, id));
	}
	vindex_each_id(vi, tally_id, &t);
	CHECK_INT(t.bad, 0);
	for (int i = 0; i < 40; i++)
		CHECK_INT(t.seen[i], i % 7 ? 1 : 0);
	free(data);
	vindex_destroy(vi);
}

static void test_ties_go_to_the_first_stored_row(void)
{
	struct vindex *vi = vindex_create();
	float v[3] = { 1, 2, 3 }, w[3] = { 2, 4, 6 };
	struct vindex_hit hit, hits[2];
	vindex_add(vi, "p", 3, "first", v, 0, NULL);
	vindex_add(vi, "p", 3, "second", w, 0, NULL);
	vindex_add(vi, "p", 3, "third", v, 0, NULL);
	vindex_search(vi, "p", 3, v, 0, &hit, NULL);
	CHECK_STR(hit.id, "first");
	float q[6] = { 1, 2, 3, 3, 2, 1 };
	vindex_search_batch(vi, "p", 3, q, 2, 0, hits, NULL);
	CHECK_STR(hits[0].id, "first");
	vindex_destroy(vi);
}

static void test_readd_same_id_replaces_vector_and_may_move_partition(void)
{
	const int dim = 16;
	uint64_t seed = 99;
	struct vindex *vi = vindex_create();
	float *v = rand_vecs(&seed, 4, dim);
	struct vindex_hit hit;

	vindex_add(vi, "A", dim, "x", v, 0, NULL);
	vindex_add(vi, "A", dim, "y", v + dim, 0, NULL);
	CHECK_INT(vindex_add(vi, "A", dim, "x", v + 2 * dim, 0, NULL), SG_OK);
	CHECK_INT(vindex_count(vi), 2);
	vindex_search(vi, "A", dim, v + 2 * dim, 0, &hit, NULL);
	CHECK_STR(hit.id, "x");
	CHECK_NEAR(hit.similarity, 1.0, 1e-6);
	vindex_search(vi, "A", dim, v, 0, &hit, NULL);
	CHECK(hit.similarity < 0.999f); /* the old vector is gone */

	/* Replacing the only row of a partition keeps the partition. */
	CHECK_INT(vindex_add(vi, "solo", dim, "z", v, 0, NULL), SG_OK);
	CHECK_INT(vindex_add(vi, "solo", dim, "z", v + dim, 0, NULL), SG_OK);
	vindex_search(vi, "solo", dim, v + dim, 0, &hit, NULL);
	CHECK_STR(hit.id, "z");
	CHECK_NEAR(hit.similarity, 1.0, 1e-6);
	CHECK(vindex_remove(vi, "z"));

	/* Replacing also replaces the expiry. */
	CHECK_INT(vindex_add(vi, "A", dim, "x", v + 2 * dim, 500, NULL), SG_OK);
	vindex_search(vi, "A", dim, v + 2 * dim, 600, &hit, NULL);
	CHECK_STR(hit.id, "y");

	/* Re-adding in another partition moves it, with another dimension. */
	CHECK_INT(vindex_add(vi, "B", 3, "y", v + 3 * dim, 0, NULL), SG_OK);
	CHECK_INT(vindex_count(vi), 2);
	CHECK_INT(vindex_partition_count(vi), 2);
	vindex_search(vi, "B", 3, v + 3 * dim, 0, &hit, NULL);
	CHECK_STR(hit.id, "y");
	vindex_search(vi, "A", dim, v + dim, 0, &hit, NULL);
	CHECK_STR(hit.id, "x"); /* y left A */

	/* Moving the last row of A out drops A. */
	CHECK_INT(vindex_add(vi, "B", 3, "x", v, 0, NULL), SG_OK);
	CHECK_INT(vindex_partition_count(vi), 1);
	vindex_search(vi, "A", dim, v, 0, &hit, NULL);
	CHECK(!hit.found);
	CHECK(vindex_remove(vi, "x"));
	CHECK(vindex_remove(vi, "y"));
	CHECK_INT(vindex_count(vi), 0);
	free(v);
	vindex_destroy(vi);
}

static void test_expired_rows_are_skipped_and_expire_removes_them(void)
{
	const int dim = 8;
	uint64_t seed = 3;
	struct vindex *vi = vindex_create();
	float *v = rand_vecs(&seed, 6, dim);
	struct vindex_hit hit;

	vindex_add(vi, "p", dim, "never", v, 0, NULL);
	vindex_add(vi, "p", dim, "t100", v + dim, 100, NULL);
	vindex_add(vi, "p", dim, "t200", v + 2 * dim, 200, NULL);
	vindex_add(vi, "q", dim, "q100", v + 3 * dim, 100, NULL);
	vindex_add(vi, "q", dim, "q300", v + 4 * dim, 300, NULL);
	vindex_add(vi, "r", dim, "r50", v + 5 * dim, 50, NULL);

	vindex_search(vi, "p", dim, v + dim, 99, &hit, NULL);
	CHECK_STR(hit.id, "t100");
	vindex_search(vi, "p", dim, v + dim, 100, &hit, NULL); /* expiry == now: gone */
	CHECK(hit.found);
	CHECK(strcmp(hit.id, "t100") != 0);
	vindex_search(vi, "r", dim, v + 5 * dim, 50, &hit, NULL);
	CHECK(!hit.found); /* all rows expired */
	CHECK(hit.similarity == -1.0f);

	CHECK_INT(vindex_count(vi), 6); /* search does not remove */
	CHECK_INT(vindex_expire(vi, 100), 3); /* t100, q100, r50 */
	CHECK_INT(vindex_count(vi), 3);
	CHECK_INT(vindex_partition_count(vi), 2); /* r emptied and dropped */
	CHECK(!vindex_remove(vi, "t100"));
	CHECK(!vindex_remove(vi, "r50"));
	vindex_search(vi, "p", dim, v + 2 * dim, 150, &hit, NULL);
	CHECK_STR(hit.id, "t200");
	CHECK_INT(vindex_expire(vi, 100), 0);
	CHECK_INT(vindex_expire(vi, 1000), 2); /* t200, q300 */
	CHECK_INT(vindex_count(vi), 1);
	vindex_search(vi, "p", dim, v + 2 * dim, 1000000, &hit, NULL);
	CHECK_STR(hit.id, "never");
	CHECK(vindex_remove(vi, "never"));

	/* Many expired rows in one partition, mixed with live ones. */
	float *w = rand_vecs(&seed, 1000, dim);
	char id[32];
	for (size_t i = 0; i < 1000; i++) {
		make_id(id, sizeof id, "m", i);
		vindex_add(vi, "big", dim, id, w + i * dim, i % 3 ? 0 : 10, NULL);
	}
	CHECK_INT(vindex_expire(vi, 10), 334);
	CHECK_INT(vindex_count(vi), 666);
	for (size_t i = 0; i < 1000; i += 13) {
		make_id(id, sizeof id, "m", i);
		vindex_search(vi, "big", dim, w + i * dim, 0, &hit, NULL);
		if (i % 3) {
			CHECK_STR(hit.id, id);
		} else {
			CHECK(strcmp(hit.id, id) != 0);
		}
	}
	free(w);
	free(v);
	vindex_destroy(vi);
}

static void test_growth_past_several_doublings_keeps_rows(void)
{
	const int dim = 16;
	const size_t n = 10000; /* 8 rows at first: 11 doublings */
	uint64_t seed = 11;
	struct vindex *vi = vindex_create();
	float *data = rand_vecs(&seed, n, dim);
	char id[32];
	size_t last_bytes = 0;
	for (size_t i = 0; i < n; i++) {
		make_id(id, sizeof id, "g", i);
		CHECK_INT(vindex_add(vi, "grow", dim, id, data + i * dim, 0, NULL), SG_OK);
		CHECK(vindex_bytes(vi) >= last_bytes);
		last_bytes = vindex_bytes(vi);
	}
	CHECK_INT(vindex_count(vi), n);
	CHECK(vindex_bytes(vi) >= n * (dim * sizeof(float) + sizeof(int64_t) + 65));
	for (size_t i = 0; i < n; i += 97) {
		struct vindex_hit hit;
		vindex_search(vi, "grow", dim, data + i * dim, 0, &hit, NULL);
		make_id(id, sizeof id, "g", i);
		CHECK_STR(hit.id, id);
	}
	/* Removing most rows gives memory back. */
	for (size_t i = 0; i < n - 100; i++) {
		make_id(id, sizeof id, "g", i);
		vindex_remove(vi, id);
	}
	CHECK(vindex_bytes(vi) < last_bytes / 4);
	for (size_t i = n - 100; i < n; i += 9) {
		struct vindex_hit hit;
		vindex_search(vi, "grow", dim, data + i * dim, 0, &hit, NULL);
		make_id(id, sizeof id, "g", i);
		CHECK_STR(hit.id, id);
	}
	free(data);
	vindex_destroy(vi);
}

static void test_dimension_mismatch_is_bad_request_with_message(void)
{
	struct vindex *vi = vindex_create();
	float *v384 = vec_of(384, 0.5f);
	float v3[3] = { 1, 2, 3 };
	struct sg_error e = { 0 };
	struct vindex_hit hit, hits[2];

	CHECK_INT(vindex_add(vi, "P", 384, "x", v384, 0, &e), SG_OK);
	CHECK_INT(vindex_add(vi, "P", 3, "y", v3, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(e.code, SG_ERR_BAD_REQUEST);
	CHECK_STR(e.msg, "vector has dimension 3 but partition has 384");
	memset(&e, 0, sizeof e);
	CHECK_INT(vindex_search(vi, "P", 3, v3, 0, &hit, &e), SG_ERR_BAD_REQUEST);
	CHECK_STR(e.msg, "vector has dimension 3 but partition has 384");
	CHECK(!hit.found);
	memset(&e, 0, sizeof e);
	float q2[6] = { 1, 2, 3, 4, 5, 6 };
	CHECK_INT(vindex_search_batch(vi, "P", 3, q2, 2, 0, hits, &e), SG_ERR_BAD_REQUEST);
	CHECK_STR(e.msg, "vector has dimension 3 but partition has 384");

	/* A refused re-add leaves the existing row alone. */
	CHECK_INT(vindex_add(vi, "P", 3, "x", v3, 0, NULL), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_count(vi), 1);
	vindex_search(vi, "P", 384, v384, 0, &hit, NULL);
	CHECK_STR(hit.id, "x");

	CHECK_INT(vindex_add(vi, "Q", 0, "z", v3, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_add(vi, "Q", VINDEX_DIM_MAX + 1, "z", v384, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_search(vi, "Q", -1, v3, 0, &hit, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_partition_count(vi), 1);
	free(v384);
	vindex_destroy(vi);
}

static void test_zero_and_non_finite_vectors_are_refused(void)
{
	struct vindex *vi = vindex_create();
	float zero[4] = { 0, 0, 0, 0 };
	float nan4[4] = { 1, NAN, 0, 0 };
	float inf4[4] = { 1, 0, -INFINITY, 0 };
	float ok[4] = { 1, 0, 0, 0 };
	struct sg_error e = { 0 };
	struct vindex_hit hit, hits[3];

	CHECK_INT(vindex_add(vi, "p", 4, "a", zero, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "zero") != NULL);
	CHECK_INT(vindex_add(vi, "p", 4, "a", nan4, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_add(vi, "p", 4, "a", inf4, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_add(vi, "p", 4, "a", NULL, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_count(vi), 0);
	CHECK_INT(vindex_partition_count(vi), 0);

	CHECK_INT(vindex_add(vi, "p", 4, "a", ok, 0, &e), SG_OK);
	CHECK_INT(vindex_search(vi, "p", 4, zero, 0, &hit, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_search(vi, "p", 4, nan4, 0, &hit, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_search(vi, "p", 4, NULL, 0, &hit, &e), SG_ERR_BAD_REQUEST);
	float batch[12] = { 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1 };
	CHECK_INT(vindex_search_batch(vi, "p", 4, batch, 3, 0, hits, &e), SG_ERR_BAD_REQUEST);
	CHECK_STR(e.msg, "query 1 is zero or has a non-finite component");

	/* Huge finite queries are fine: the query is normalised first. */
	float huge[4] = { FLT_MAX, FLT_MAX, 0, 0 };
	CHECK_INT(vindex_search(vi, "p", 4, huge, 0, &hit, &e), SG_OK);
	CHECK_NEAR(hit.similarity, sqrt(0.5), 1e-6);
	vindex_destroy(vi);
}

static void test_bad_ids_keys_and_expiry_are_refused(void)
{
	struct vindex *vi = vindex_create();
	float v[2] = { 1, 1 };
	char long_id[VINDEX_ID_MAX + 2], long_key[VINDEX_KEY_MAX + 2];
	struct sg_error e = { 0 };
	struct vindex_hit hit;

	memset(long_id, 'a', sizeof long_id);
	long_id[VINDEX_ID_MAX + 1] = '\0';
	CHECK_INT(vindex_add(vi, "p", 2, long_id, v, 0, &e), SG_ERR_BAD_REQUEST);
	long_id[VINDEX_ID_MAX] = '\0'; /* exactly 64 is fine */
	CHECK_INT(vindex_add(vi, "p", 2, long_id, v, 0, &e), SG_OK);
	vindex_search(vi, "p", 2, v, 0, &hit, NULL);
	CHECK_STR(hit.id, long_id);
	CHECK_INT(vindex_add(vi, "p", 2, "", v, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_add(vi, "p", 2, "a b", v, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_add(vi, "p", 2, "a/b", v, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_add(vi, "p", 2, NULL, v, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_add(vi, "p", 2, "Az09._:-", v, 0, &e), SG_OK);

	memset(long_key, 'k', sizeof long_key);
	long_key[VINDEX_KEY_MAX + 1] = '\0';
	CHECK_INT(vindex_add(vi, long_key, 2, "k1", v, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_search(vi, long_key, 2, v, 0, &hit, &e), SG_ERR_BAD_REQUEST);
	long_key[VINDEX_KEY_MAX] = '\0';
	CHECK_INT(vindex_add(vi, long_key, 2, "k1", v, 0, &e), SG_OK);
	CHECK_INT(vindex_add(vi, "", 2, "k2", v, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_add(vi, NULL, 2, "k2", v, 0, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_add(vi, "p", 2, "neg", v, -1, &e), SG_ERR_BAD_REQUEST);
	CHECK(!vindex_remove(vi, NULL));
	CHECK(!vindex_remove(vi, "a b"));
	CHECK_INT(vindex_count(vi), 3);
	vindex_destroy(vi);
}

/* A vector in one partition is never returned for another, even for keys
 * that share prefixes or hold arbitrary bytes. */
static void test_partitions_are_isolated(void)
{
	static const char *keys[] = { "A", "AB", "B", "tenant1\x1fscope\x1fmodel",
	                              "\xff\xfe\x01", "A " };
	const size_t nk = sizeof keys / sizeof keys[0];
	const int dim = 24;
	uint64_t seed = 5;
	struct vindex *vi = vindex_create();
	float *v = rand_vecs(&seed, nk * 20, dim);
	char id[32];
	for (size_t k = 0; k < nk; k++) {
		for (size_t i = 0; i < 20; i++) {
			snprintf(id, sizeof id, "k%zu-%zu", k, i);
			CHECK_INT(vindex_add(vi, keys[k], dim, id, v + (k * 20 + i) * dim, 0, NULL),
			          SG_OK);
		}
	}
	CHECK_INT(vindex_partition_count(vi), nk);
	char prefix[16];
	for (size_t k = 0; k < nk; k++) {
		snprintf(prefix, sizeof prefix, "k%zu-", k);
		/* Query with every vector of every partition. */
		for (size_t j = 0; j < nk * 20; j++) {
			struct vindex_hit hit;
			CHECK_INT(vindex_search(vi, keys[k], dim, v + j * dim, 0, &hit, NULL), SG_OK);
			CHECK(hit.found);
			CHECK(strncmp(hit.id, prefix, strlen(prefix)) == 0);
		}
	}
	/* The same vector with the same id cannot live in two partitions. */
	CHECK_INT(vindex_add(vi, "B", dim, "k0-0", v, 0, NULL), SG_OK);
	struct vindex_hit hit;
	vindex_search(vi, "A", dim, v, 0, &hit, NULL);
	CHECK(strcmp(hit.id, "k0-0") != 0);
	vindex_search(vi, "B", dim, v, 0, &hit, NULL);
	CHECK_STR(hit.id, "k0-0");
	free(v);
	vindex_destroy(vi);
}

static void test_batch_search_equals_single_searches(void)
{
	const int dim = 384;
	const size_t n = 3000;
	uint64_t seed = 0xba7c4;
	struct vindex *vi = vindex_create();
	float *data = rand_vecs(&seed, n, dim);
	char id[32];
	for (size_t i = 0; i < n; i++) {
		make_id(id, sizeof id, "b", i);
		vindex_add(vi, "p", dim, id, data + i * dim, i % 5 == 0 ? 1000 : 0, NULL);
	}
	static const int counts[] = { 1, 2, 32, 33, VINDEX_BATCH_MAX };
	for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
		int nq = counts[c];
		float *q = rand_vecs(&seed, (size_t)nq, dim);
		for (int k = 0; k < nq; k += 3) /* copies of rows, some expired */
			memcpy(q + (size_t)k * dim, data + (size_t)(k * 7 % (int)n) * dim,
			       dim * sizeof(float));
		struct vindex_hit *hits = calloc((size_t)nq, sizeof *hits);
		for (int now = 0; now <= 2000; now += 2000) {
			CHECK_INT(vindex_search_batch(vi, "p", dim, q, nq, now, hits, NULL), SG_OK);
			for (int k = 0; k < nq; k++) {
				struct vindex_hit one;
				vindex_search(vi, "p", dim, q + (size_t)k * dim, now, &one, NULL);
				CHECK(hits[k].found && one.found);
				CHECK_STR(hits[k].id, one.id);
				CHECK_NEAR(hits[k].similarity, one.similarity, 1e-5);
			}
		}
		CHECK_INT(vindex_search_batch(vi, "missing", dim, q, nq, 0, hits, NULL), SG_OK);
		for (int k = 0; k < nq; k++)
			CHECK(!hits[k].found && hits[k].similarity == -1.0f);
		free(hits);
		free(q);
	}
	struct vindex_hit h[1];
	struct sg_error e = { 0 };
	CHECK_INT(vindex_search_batch(vi, "p", dim, data, 0, 0, h, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_search_batch(vi, "p", dim, data, VINDEX_BATCH_MAX + 1, 0, h, &e),
	          SG_ERR_BAD_REQUEST);
	free(data);
	vindex_destroy(vi);
}

/* ---- concurrency smoke test ---- */

#define CC_DIM 48
#define CC_STABLE 64
#define CC_CHURN 400
#define CC_SEARCHES 400
#define CC_WRITES 3000

struct cc_shared {
	struct vindex *vi;
	const float *stable;
	const float *churn;
};

struct cc_arg {
	struct cc_shared *sh;
	uint64_t seed;
	int bad;
};

static void *cc_searcher(void *arg)
{
	struct cc_arg *a = arg;
	struct cc_shared *sh = a->sh;
	char want[32], part[16];
	float q[4 * CC_DIM];
	struct vindex_hit hit, hits[4];
	for (int it = 0; it < CC_SEARCHES; it++) {
		size_t k = (size_t)(rng_next(&a->seed) % CC_STABLE);
		/* Stable rows are never touched, so each is always its own best. */
		if (vindex_search(sh->vi, "main", CC_DIM, sh->stable + k * CC_DIM, 0, &hit,
		                  NULL) != SG_OK || !hit.found || hit.similarity < 0.9999f)
			a->bad++;
		make_id(want, sizeof want, "s", k);
		if (strcmp(hit.id, want) != 0)
			a->bad++;
		/* Side partitions appear and vanish under us. */
		snprintf(part, sizeof part, "side%d", (int)(rng_next(&a->seed) % 4));
		for (int j = 0; j < 4; j++)
			memcpy(q + j * CC_DIM,
			       sh->churn + (size_t)(rng_next(&a->seed) % CC_CHURN) * CC_DIM,
			       CC_DIM * sizeof(float));
		if (vindex_search(sh->vi, part, CC_DIM, q, 0, &hit, NULL) != SG_OK)
			a->bad++;
		if (hit.found && (hit.id[0] != 'c' || hit.similarity < -1 || hit.similarity > 1))
			a->bad++;
		if (vindex_search_batch(sh->vi, part, CC_DIM, q, 4, 0, hits, NULL) != SG_OK)
			a->bad++;
		for (int j = 0; j < 4; j++)
			if (hits[j].found && hits[j].id[0] != 'c')
				a->bad++;
	}
	return NULL;
}

static void *cc_writer(void *arg)
{
	struct cc_arg *a = arg;
	struct cc_shared *sh = a->sh;
	char id[32], part[16];
	for (int it = 0; it < CC_WRITES; it++) {
		size_t c = (size_t)(rng_next(&a->seed) % CC_CHURN);
		make_id(id, sizeof id, "c", c);
		uint64_t op = rng_next(&a->seed) % 8;
		if (op < 3) {
			if (vindex_add(sh->vi, "main", CC_DIM, id, sh->churn + c * CC_DIM, 0,
			               NULL) != SG_OK)
				a->bad++;
		} else if (op < 6) {
			snprintf(part, sizeof part, "side%d", (int)(c % 4));
			if (vindex_add(sh->vi, part, CC_DIM, id, sh->churn + c * CC_DIM,
			               (int64_t)(c % 2) * 5, NULL) != SG_OK)
				a->bad++;
		} else if (op < 7) {
			vindex_remove(sh->vi, id);
		} else {
			vindex_expire(sh->vi, 5);
		}
	}
	return NULL;
}

static void test_concurrent_searches_while_writer_adds_and_removes(void)
{
	uint64_t seed = 0xcc;
	struct cc_shared sh = { .vi = vindex_create() };
	float *stable = rand_vecs(&seed, CC_STABLE, CC_DIM);
	float *churn = rand_vecs(&seed, CC_CHURN, CC_DIM);
	char id[32];
	sh.stable = stable;
	sh.churn = churn;
	for (size_t i = 0; i < CC_STABLE; i++) {
		make_id(id, sizeof id, "s", i);
		vindex_add(sh.vi, "main", CC_DIM, id, stable + i * CC_DIM, 0, NULL);
	}
	pthread_t th[5];
	struct cc_arg args[5];
	for (int i = 0; i < 5; i++) {
		args[i] = (struct cc_arg){ .sh = &sh, .seed = 1000 + (uint64_t)i };
		CHECK_INT(pthread_create(&th[i], NULL, i == 4 ? cc_writer : cc_searcher,
		                         &args[i]), 0);
	}
	for (int i = 0; i < 5; i++) {
		pthread_join(th[i], NULL);
		CHECK_INT(args[i].bad, 0);
	}
	/* The stable rows survived, and counts add up after the storm. */
	for (size_t i = 0; i < CC_STABLE; i++) {
		struct vindex_hit hit;
		vindex_search(sh.vi, "main", CC_DIM, stable + i * CC_DIM, 0, &hit, NULL);
		make_id(id, sizeof id, "s", i);
		CHECK_STR(hit.id, id);
	}
	size_t live = 0;
	for (size_t c = 0; c < CC_CHURN; c++) {
		make_id(id, sizeof id, "c", c);
		live += vindex_remove(sh.vi, id);
	}
	CHECK_INT(vindex_count(sh.vi), CC_STABLE);
	CHECK_INT(vindex_partition_count(sh.vi), 1);
	printf("# churn rows alive at the end: %zu\n", live);
	free(stable);
	free(churn);
	vindex_destroy(sh.vi);
}

static void test_count_bytes_and_partition_count_are_sane(void)
{
	const int dim = 100;
	uint64_t seed = 1;
	struct vindex *vi = vindex_create();
	float *v = rand_vecs(&seed, 50, dim);
	char id[32];
	CHECK_INT(vindex_bytes(vi), 0);
	for (size_t i = 0; i < 50; i++) {
		make_id(id, sizeof id, "c", i);
		vindex_add(vi, i < 30 ? "one" : "two", dim, id, v + i * dim, 0, NULL);
	}
	CHECK_INT(vindex_count(vi), 50);
	CHECK_INT(vindex_partition_count(vi), 2);
	size_t per_row = dim * sizeof(float) + sizeof(int64_t) + VINDEX_ID_MAX + 1;
	size_t b = vindex_bytes(vi);
	CHECK(b >= 50 * per_row);
	CHECK(b <= 4 * 50 * per_row + 64 * 1024); /* capacity at most ~2x rows */
	/* Replacing does not change the count. */
	vindex_add(vi, "one", dim, "c0", v + 49 * dim, 0, NULL);
	CHECK_INT(vindex_count(vi), 50);
	for (size_t i = 30; i < 50; i++) {
		make_id(id, sizeof id, "c", i);
		CHECK(vindex_remove(vi, id));
	}
	CHECK_INT(vindex_count(vi), 30);
	CHECK_INT(vindex_partition_count(vi), 1);
	CHECK(vindex_bytes(vi) < b);
	vindex_clear(vi);
	CHECK_INT(vindex_count(vi), 0);
	CHECK_INT(vindex_partition_count(vi), 0);
	CHECK_INT(vindex_bytes(vi), 0);
	struct vindex_hit hit;
	vindex_search(vi, "one", dim, v, 0, &hit, NULL);
	CHECK(!hit.found);
	/* Usable after clear. */
	CHECK_INT(vindex_add(vi, "one", dim, "c0", v, 0, NULL), SG_OK);
	CHECK_INT(vindex_count(vi), 1);
	free(v);
	vindex_destroy(vi);
}

/* ---- compact search: exactly the answers of an exhaustive exact scan ---- */

/* The index's definition of similarity (vindex.h): double products in 8
 * interleaved partial sums, added pairwise. */
static double ref_dot(const float *a, const float *b, int dim)
{
	double s[8] = { 0 };
	for (int j = 0; j < dim; j++)
		s[j & 7] += (double)a[j] * (double)b[j];
	return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static float ref_sim(double d)
{
	return (float)(d > 1 ? 1 : d < -1 ? -1 : d);
}

/* A partition as the reference sees it: normalised rows in the index's row
 * order, their ids and expiry times. */
struct ref {
	int dim;
	size_t n, cap;
	float *rows;
	int64_t *exp;
	char (*ids)[32];
};

static void ref_init(struct ref *r, int dim, size_t cap)
{
	r->dim = dim;
	r->n = 0;
	r->cap = cap;
	r->rows = malloc(cap * (size_t)dim * sizeof(float));
	r->exp = calloc(cap, sizeof(int64_t));
	r->ids = calloc(cap, sizeof r->ids[0]);
}

static void ref_finish(struct ref *r)
{
	free(r->rows);
	free(r->exp);
	free(r->ids);
}

/* vindex_add() to partition "p" and the same row appended to the
 * reference. */
static void ref_add(struct vindex *vi, struct ref *r, const char *id, const float *v,
                    int64_t exp)
{
	CHECK_INT(vindex_add(vi, "p", r->dim, id, v, exp, NULL), SG_OK);
	float *dst = r->rows + r->n * (size_t)r->dim;
	memcpy(dst, v, (size_t)r->dim * sizeof(float));
	CHECK(vindex_normalize(dst, r->dim) > 0);
	r->exp[r->n] = exp;
	snprintf(r->ids[r->n], sizeof r->ids[0], "%s", id);
	r->n++;
}

/* vindex_remove() and the reference's swap-removal, which must mirror the
 * index's (the last row moves into the hole). */
static void ref_swap_out(struct ref *r, size_t i)
{
	size_t last = r->n - 1, d = (size_t)r->dim;
	memcpy(r->rows + i * d, r->rows + last * d, d * sizeof(float));
	r->exp[i] = r->exp[last];
	memcpy(r->ids[i], r->ids[last], sizeof r->ids[0]);
	r->n = last;
}

static void ref_remove(struct vindex *vi, struct ref *r, size_t i)
{
	CHECK(vindex_remove(vi, r->ids[i]));
	ref_swap_out(r, i);
}

/* Row i stored again under its id with vector nv: in place, same row. */
static void ref_replace(struct vindex *vi, struct ref *r, size_t i, const float *nv)
{
	size_t d = (size_t)r->dim;
	CHECK_INT(vindex_add(vi, "p", r->dim, r->ids[i], nv, 0, NULL), SG_OK);
	memcpy(r->rows + i * d, nv, d * sizeof(float));
	vindex_normalize(r->rows + i * d, r->dim);
	r->exp[i] = 0;
}

/* Row i's id moved to partition "other" with vector mv (the index
 * swap-removes it from "p"), then back into "p", at the end. */
static void ref_move_out_and_back(struct vindex *vi, struct ref *r, size_t i, const float *mv)
{
	char moved[sizeof r->ids[0]];
	memcpy(moved, r->ids[i], sizeof moved);
	CHECK_INT(vindex_add(vi, "other", r->dim, moved, mv, 0, NULL), SG_OK);
	ref_swap_out(r, i);
	ref_add(vi, r, moved, mv, 0);
}

/* vindex_expire(vi, now) on both: it walks the rows in order and
 * swap-removes the expired ones. */
static void ref_expire(struct vindex *vi, struct ref *r, int64_t now)
{
	size_t before = vindex_count(vi), gone = vindex_expire(vi, now);
	CHECK(gone > 0);
	for (size_t i = 0; i < r->n;) {
		if (r->exp[i] != 0 && r->exp[i] <= now)
			ref_swap_out(r, i);
		else
			i++;
	}
	CHECK_INT(vindex_count(vi), before - gone);
}

/* Exhaustive exact scan: the best live row (ties: lowest row) whose
 * similarity is >= min_sim, or SIZE_MAX. */
static size_t ref_best(const struct ref *r, const float *qn, int64_t now, float min_sim,
                       double *sim)
{
	size_t bi = SIZE_MAX;
	double bs = -INFINITY;
	for (size_t i = 0; i < r->n; i++) {
		if (r->exp[i] != 0 && r->exp[i] <= now)
			continue;
		double d = ref_dot(qn, r->rows + i * (size_t)r->dim, r->dim);
		if (bi == SIZE_MAX || d > bs) {
			bs = d;
			bi = i;
		}
	}
	*sim = bs;
	if (bi != SIZE_MAX && !(ref_sim(bs) >= min_sim))
		bi = SIZE_MAX;
	return bi;
}

/* Search modes: every kernel the CPU runs, with one scanning thread and
 * with two (split from 16 rows). */
#define NMODES 6
static const char *const mode_names[NMODES] = {
	"scalar/1T", "scalar/2T", "avx2/1T", "avx2/2T", "avx512-vnni/1T", "avx512-vnni/2T",
};

static bool set_mode(struct vindex *vi, int mode, double bound_scale)
{
	static const enum vindex_kernel ks[] = { VINDEX_KERNEL_SCALAR, VINDEX_KERNEL_AVX2,
		                                 VINDEX_KERNEL_AVX512_VNNI };
	struct vindex_tuning t = { .kernel = ks[mode / 2],
		                   .split_min_rows = mode % 2 ? 16 : SIZE_MAX,
		                   .bound_scale = bound_scale, .share_evenly = true };
	return vindex_set_tuning(vi, &t, NULL) == SG_OK;
}

static void set_default_mode(struct vindex *vi)
{
	struct vindex_tuning t = { .kernel = VINDEX_KERNEL_AUTO, .bound_scale = 1.0 };
	CHECK_INT(vindex_set_tuning(vi, &t, NULL), SG_OK);
}

/* The reference answer for raw query q. */
struct ref_ans {
	size_t row; /* SIZE_MAX: not found */
	double sim;
};

static struct ref_ans ref_answer(const struct ref *r, const float *q, int64_t now,
                                 float min_sim)
{
	struct ref_ans a;
	float *qn = malloc((size_t)r->dim * sizeof *qn);
	memcpy(qn, q, (size_t)r->dim * sizeof *qn);
	vindex_normalize(qn, r->dim);
	a.row = ref_best(r, qn, now, min_sim, &a.sim);
	free(qn);
	return a;
}

/* Does one search (vindex_search, or vindex_search_min when min_sim > -1)
 * of raw query q give the reference answer want? Prints what differs
 * unless what is NULL. */
static bool search_is(struct vindex *vi, const struct ref *r, const float *q, int64_t now,
                      float min_sim, struct ref_ans want, const char *what)
{
	struct vindex_hit hit;
	enum sg_err rc = min_sim > -1 ? vindex_search_min(vi, "p", r->dim, q, min_sim, now, &hit, NULL)
	                              : vindex_search(vi, "p", r->dim, q, now, &hit, NULL);
	bool ok = rc == SG_OK;
	if (want.row == SIZE_MAX)
		ok = ok && !hit.found;
	else
		ok = ok && hit.found && strcmp(hit.id, r->ids[want.row]) == 0 &&
		     hit.similarity == ref_sim(want.sim);
	if (!ok && what)
		printf("# %s: got %s %s %.9g, want %s %.9g\n", what, hit.found ? "found" : "none",
		       hit.id, hit.similarity, want.row == SIZE_MAX ? "none" : r->ids[want.row],
		       want.row == SIZE_MAX ? 0.0 : (double)ref_sim(want.sim));
	return ok;
}

static bool same_as_ref(struct vindex *vi, const struct ref *r, const float *q, int64_t now,
                        float min_sim, const char *what)
{
	return search_is(vi, r, q, now, min_sim, ref_answer(r, q, now, min_sim), what);
}

/* The search in every mode against one reference scan; returns the number
 * of modes run. */
static int check_all_modes(struct vindex *vi, const struct ref *r, const float *q, int64_t now,
                           float min_sim, const char *what)
{
	char buf[160];
	int run = 0;
	struct ref_ans want = ref_answer(r, q, now, min_sim);
	for (int m = 0; m < NMODES; m++) {
		if (!set_mode(vi, m, 1.0))
			continue;
		run++;
		snprintf(buf, sizeof buf, "%s [%s]", what, mode_names[m]);
		CHECK(search_is(vi, r, q, now, min_sim, want, buf));
	}
	set_default_mode(vi);
	return run;
}

/* Random rows of several dimensions and sizes; random queries, noisy and
 * exact copies of rows, negated rows: id and similarity bit for bit. */
static void test_compact_search_equals_exact_scan_on_random_data(void)
{
	static const struct { int dim; size_t n; } cfg[] = {
		{ 1, 1000 }, { 2, 3000 }, { 7, 5000 }, { 64, 50000 }, { 100, 3000 },
		{ 384, 20000 }, { 1000, 2000 },
	};
	uint64_t seed = 0xc0ffee;
	char id[32], what[64];
	for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
		int dim = cfg[c].dim;
		size_t n = cfg[c].n;
		struct vindex *vi = vindex_create();
		struct ref r;
		ref_init(&r, dim, n);
		float *data = rand_vecs(&seed, n, dim);
		for (size_t i = 0; i < n; i++) {
			make_id(id, sizeof id, "e", i);
			ref_add(vi, &r, id, data + i * (size_t)dim, 0);
		}
		float *q = malloc((size_t)dim * sizeof *q);
		int modes = 0;
		for (int k = 0; k < 8; k++) {
			size_t src = (size_t)(rng_next(&seed) % n);
			const float *row = data + src * (size_t)dim;
			for (int j = 0; j < dim; j++) {
				float noise = rng_float(&seed);
				q[j] = k < 3 ? noise : k < 5 ? row[j] + 0.05f * noise :
				       k == 5 ? row[j] + 0.005f * noise : k == 6 ? row[j] : -row[j];
			}
			snprintf(what, sizeof what, "dim %d n %zu query %d", dim, n, k);
			modes = check_all_modes(vi, &r, q, 0, -INFINITY, what);
		}
		printf("# dim %d n %zu: %d modes\n", dim, n, modes);
		CHECK(modes >= 2);
		free(q);
		free(data);
		ref_finish(&r);
		vindex_destroy(vi);
	}
}

/* Rows that differ from each other only in the last bits of a few
 * components, and exact duplicates: the int8 codes cannot tell them apart,
 * so the bound must keep them all and the exact re-rank decides; equal
 * rows go to the one stored first. */
static void test_near_duplicates_differing_in_last_bits_are_ranked_exactly(void)
{
	const int dim = 384;
	const size_t n = 3000;
	uint64_t seed = 0xd00b;
	struct vindex *vi = vindex_create();
	struct ref r;
	ref_init(&r, dim, n);
	float *base = rand_vecs(&seed, 1, dim);
	float *v = malloc((size_t)dim * sizeof *v);
	char id[32];
	for (size_t i = 0; i < n; i++) {
		memcpy(v, base, (size_t)dim * sizeof *v);
		if (i % 10 != 3) { /* every tenth row is an exact copy of the base */
			for (int k = 0; k < 3; k++) {
				int j = (int)(rng_next(&seed) % (uint64_t)dim);
				int ulps = 1 + (int)(rng_next(&seed) % 3);
				float dir = rng_next(&seed) & 1 ? INFINITY : -INFINITY;
				while (ulps--)
					v[j] = nextafterf(v[j], dir);
			}
		}
		make_id(id, sizeof id, "d", i);
		ref_add(vi, &r, id, v, 0);
	}
	/* The base itself: exact copies tie at the top unless a nudged row
	 * beats them; either way the reference knows. */
	check_all_modes(vi, &r, base, 0, -INFINITY, "base");
	struct vindex_hit hit;
	struct vindex_stats st;
	vindex_search(vi, "p", dim, base, 0, &hit, NULL);
	vindex_last_stats(&st);
	printf("# near-duplicates: %zu candidates, %zu re-ranked, answer %s\n", st.candidates,
	       st.reranked, hit.id);
	CHECK(st.reranked > 100); /* the bound kept the rows int8 cannot separate */
	for (int k = 0; k < 6; k++) {
		memcpy(v, base, (size_t)dim * sizeof *v);
		for (int j = 0; j < dim; j += 1 + (int)(rng_next(&seed) % 50))
			v[j] = nextafterf(v[j], rng_next(&seed) & 1 ? INFINITY : -INFINITY);
		check_all_modes(vi, &r, v, 0, -INFINITY, "nudged base");
	}
	/* Only exact copies left (swap-removal reordered them): the tie goes
	 * to the lowest row. */
	for (size_t i = r.n; i-- > 0;)
		if (i % 10 != 3)
			ref_remove(vi, &r, i);
	check_all_modes(vi, &r, base, 0, -INFINITY, "exact copies only");
	vindex_search(vi, "p", dim, base, 0, &hit, NULL);
	CHECK_STR(hit.id, r.ids[0]); /* all equal: the lowest row */
	free(v);
	free(base);
	ref_finish(&r);
	vindex_destroy(vi);
}

/* Built so that one Cauchy-Schwarz term of the bound is exactly tight: the
 * query is (0,0,1), so the approximate score of row r is its third code
 * times the scale, which rounds the true best row down by 0.499 of a step
 * while a rival 2e-6 below it rounds up. The int8 order is then wrong;
 * the rigorous bound still finds the best row, and the same search with
 * the bound shrunk by 0.1% returns the rival. */
static void build_tight_row_case(struct vindex *vi, struct ref *r)
{
	/* Row (1, c, t) normalised: max component first, so the third code is
	 * round(127 t), whatever c. */
	double tb = (60 + 0.499) / 127, tr = (60 + 0.501) / 127;
	double db = tb / sqrt(1 + tb * tb), want = db - 2e-6;
	double c = sqrt((tr / want) * (tr / want) - 1 - tr * tr);
	uint64_t seed = 77;
	char id[32];
	float v[3];
	for (int i = 0; i < 40; i++) { /* filler pointing elsewhere */
		v[0] = 1;
		v[1] = rng_float(&seed);
		v[2] = -0.5f + 0.4f * rng_float(&seed);
		make_id(id, sizeof id, "f", (size_t)i);
		ref_add(vi, r, id, v, 0);
	}
	v[0] = 1;
	v[1] = 0;
	v[2] = (float)tb;
	ref_add(vi, r, "best", v, 0);
	v[1] = (float)c;
	v[2] = (float)tr;
	ref_add(vi, r, "rival", v, 0);
}

/* The same for the query's term: the query's third component rounds down
 * by 0.499 of a step. The best row (0,0,1) feels all of that error; the
 * rival (5/127 * 0.9, w, 0.9) has exact codes where the query is non-zero
 * and feels only 0.92 of it, while w (where the query is 0) sets its
 * similarity just below the best's. */
static void build_tight_query_case(struct vindex *vi, struct ref *r, float *q)
{
	q[0] = 1;
	q[1] = 0;
	q[2] = (float)((60 + 0.499) / 127);
	float qn[3] = { q[0], q[1], q[2] };
	vindex_normalize(qn, 3);
	double want = ref_dot(qn, (const float[3]){ 0, 0, 1 }, 3) - 2e-6, lo = 0, hi = 0.9;
	float v[3] = { 0.9f * 5 / 127, 0, 0.9f }, vn[3];
	for (int i = 0; i < 100; i++) { /* bisect w: similarity falls as w grows */
		v[1] = (float)((lo + hi) / 2);
		memcpy(vn, v, sizeof vn);
		vindex_normalize(vn, 3);
		if (ref_dot(qn, vn, 3) > want)
			lo = v[1];
		else
			hi = v[1];
	}
	v[1] = (float)hi;
	float b[3] = { 0, 0, 1 };
	ref_add(vi, r, "best", b, 0);
	ref_add(vi, r, "rival", v, 0);
	uint64_t seed = 78;
	char id[32];
	for (int i = 0; i < 40; i++) {
		v[0] = -1;
		v[1] = rng_float(&seed);
		v[2] = rng_float(&seed);
		make_id(id, sizeof id, "f", (size_t)i);
		ref_add(vi, r, id, v, 0);
	}
}

static void test_bound_is_needed_in_full_and_pruning_still_exact(void)
{
	for (int which = 0; which < 2; which++) {
		struct vindex *vi = vindex_create();
		struct ref r;
		float q[3] = { 0, 0, 1 };
		ref_init(&r, 3, 64);
		if (which == 0)
			build_tight_row_case(vi, &r);
		else
			build_tight_query_case(vi, &r, q);
		const char *what = which == 0 ? "tight row term" : "tight query term";
		CHECK(check_all_modes(vi, &r, q, 0, -INFINITY, what) >= 2);
		struct vindex_hit hit;
		struct vindex_stats st;
		vindex_search(vi, "p", 3, q, 0, &hit, NULL);
		vindex_last_stats(&st);
		CHECK_STR(hit.id, "best");
		CHECK(st.reranked >= 2 && st.reranked < r.n); /* pruned, yet exact */
		/* Shrink the bound and every kernel gets it wrong. */
		static const double scales[] = { 0.999, 0.5 };
		for (size_t s = 0; s < 2; s++) {
			for (int m = 0; m < NMODES; m++) {
				if (!set_mode(vi, m, scales[s]))
					continue;
				vindex_search(vi, "p", 3, q, 0, &hit, NULL);
				if (strcmp(hit.id, "rival") != 0)
					printf("# %s, bound x %.2f [%s]: got %s\n", what, scales[s],
					       mode_names[m], hit.id);
				CHECK_STR(hit.id, "rival");
			}
		}
		ref_finish(&r);
		vindex_destroy(vi);
	}
}

/* The first pass sees only the high nibbles H of each code + 128 = 16H + L
 * and bounds what L adds by |p| * |L - 7.5|. Query (1,1) and row
 * (1, 111/127) make that exact: both quantise without error (codes
 * (127,127) and (127,111)) and L - 7.5 = (7.5, 7.5) is parallel to p. With
 * the minimum at the row's own similarity, a first-pass bound short by
 * 0.1% drops the row; the full bound keeps it. */
static void test_hi_plane_bound_is_needed_in_full(void)
{
	struct vindex *vi = vindex_create();
	struct ref r;
	ref_init(&r, 2, 64);
	float q[2] = { 1, 1 }, v[2] = { 1, 111.0f / 127 };
	uint64_t seed = 0x41;
	char id[32];
	for (int i = 0; i < 30; i++) { /* filler, all less similar */
		float f[2] = { 1, -rng_float(&seed) * rng_float(&seed) - 0.2f };
		make_id(id, sizeof id, "f", (size_t)i);
		ref_add(vi, &r, id, f, 0);
		if (i == 2) /* row 3: inside an 8-row block, scanned by SIMD */
			ref_add(vi, &r, "best", v, 0);
	}
	float qn[2] = { 1, 1 };
	vindex_normalize(qn, 2);
	float s = ref_sim(ref_dot(qn, r.rows + 3 * 2, 2));
	CHECK(check_all_modes(vi, &r, q, 0, s, "hi plane, min at the row") >= 2);
	struct vindex_hit hit;
	for (int m = 0; m < NMODES; m++) {
		if (!set_mode(vi, m, 0.999))
			continue;
		vindex_search_min(vi, "p", 2, q, s, 0, &hit, NULL);
		if (hit.found)
			printf("# hi plane, bound x 0.999 [%s]: still found %s\n", mode_names[m], hit.id);
		CHECK(!hit.found);
	}
	set_default_mode(vi);
	vindex_search_min(vi, "p", 2, q, s, 0, &hit, NULL);
	CHECK(hit.found && strcmp(hit.id, "best") == 0 && hit.similarity == s);
	ref_finish(&r);
	vindex_destroy(vi);
}

/* Random near-duplicates of the query, closer to each other than an int8
 * step: with the bound cut to zero the int8 order picks a wrong row for
 * most queries; with the real bound every answer is exact. */
static void test_int8_order_differs_from_exact_order_yet_answers_are_exact(void)
{
	const int dim = 16;
	const size_t n = 300;
	uint64_t seed = 0x1e8;
	int wrong_unbounded = 0, queries = 0;
	char id[32];
	for (int k = 0; k < 12; k++) {
		struct vindex *vi = vindex_create();
		struct ref r;
		ref_init(&r, dim, n);
		float *q = rand_vecs(&seed, 1, dim);
		float *v = malloc((size_t)dim * sizeof *v);
		for (size_t i = 0; i < n; i++) {
			for (int j = 0; j < dim; j++)
				v[j] = q[j] + 0.002f * rng_float(&seed);
			make_id(id, sizeof id, "n", i);
			ref_add(vi, &r, id, v, 0);
		}
		check_all_modes(vi, &r, q, 0, -INFINITY, "near-duplicate cloud");
		struct ref_ans want = ref_answer(&r, q, 0, -INFINITY);
		for (int m = 0; m < NMODES; m++) {
			if (!set_mode(vi, m, 0.0))
				continue;
			queries++;
			wrong_unbounded += !search_is(vi, &r, q, 0, -INFINITY, want, NULL);
		}
		free(v);
		free(q);
		ref_finish(&r);
		vindex_destroy(vi);
	}
	printf("# int8 order alone was wrong for %d of %d searches\n", wrong_unbounded, queries);
	CHECK(wrong_unbounded > queries / 2);
}

/* One component near 1 and the rest tiny (down to subnormal), in rows and
 * queries; and rows whose components are all equal. */
static void test_huge_dynamic_range_and_constant_rows(void)
{
	const int dim = 48;
	uint64_t seed = 0xd1a;
	struct vindex *vi = vindex_create();
	struct ref r;
	ref_init(&r, dim, 400);
	float *v = malloc((size_t)dim * sizeof *v);
	char id[32];
	for (size_t i = 0; i < 300; i++) {
		int big = (int)(i % 4);
		for (int j = 0; j < dim; j++) {
			double mag = pow(10.0, -(double)(rng_next(&seed) % 46)); /* 1 .. 1e-45 */
			v[j] = (float)(mag * rng_float(&seed));
		}
		v[big] = i % 2 ? 1.0f : -1.0f;
		if (i % 7 == 0)
			v[big] = 3e38f; /* huge finite */
		make_id(id, sizeof id, "h", i);
		ref_add(vi, &r, id, v, 0);
	}
	for (size_t i = 0; i < 40; i++) { /* constant rows, some equal after scaling */
		for (int j = 0; j < dim; j++)
			v[j] = (i % 2 ? -1.0f : 1.0f) * (float)(1 + i % 5);
		make_id(id, sizeof id, "c", i);
		ref_add(vi, &r, id, v, 0);
	}
	for (int k = 0; k < 30; k++) {
		for (int j = 0; j < dim; j++)
			v[j] = (float)(pow(10.0, -(double)(rng_next(&seed) % 40)) * rng_float(&seed));
		v[k % 6] = k % 3 ? 0.7f : -2.0f;
		if (k >= 24)
			for (int j = 0; j < dim; j++)
				v[j] = k % 2 ? 1.0f : -1e-30f; /* constant queries */
		check_all_modes(vi, &r, v, 0, -INFINITY, "dynamic range");
	}
	/* A constant query finds the first positive constant row: ties. */
	for (int j = 0; j < dim; j++)
		v[j] = 5;
	struct vindex_hit hit;
	vindex_search(vi, "p", dim, v, 0, &hit, NULL);
	CHECK_STR(hit.id, "c0");
	CHECK_NEAR(hit.similarity, 1.0, 1e-6);
	free(v);
	ref_finish(&r);
	vindex_destroy(vi);
}

/* Every row points away from the query: the best similarity is negative. */
static void test_negative_similarities_are_exact(void)
{
	const int dim = 32;
	uint64_t seed = 0xe6;
	struct vindex *vi = vindex_create();
	struct ref r;
	ref_init(&r, dim, 2000);
	float *q = rand_vecs(&seed, 1, dim);
	float *v = malloc((size_t)dim * sizeof *v);
	char id[32];
	for (size_t i = 0; i < 2000; i++) {
		for (int j = 0; j < dim; j++)
			v[j] = -q[j] + 0.3f * rng_float(&seed);
		make_id(id, sizeof id, "m", i);
		ref_add(vi, &r, id, v, 0);
	}
	check_all_modes(vi, &r, q, 0, -INFINITY, "negative");
	struct vindex_hit hit;
	vindex_search(vi, "p", dim, q, 0, &hit, NULL);
	CHECK(hit.found && hit.similarity < -0.5f);
	/* A minimum of -1 or below is no minimum at all. */
	check_all_modes(vi, &r, q, 0, -1.0f, "negative, min -1");
	CHECK_INT(vindex_search_min(vi, "p", dim, q, -1.0f, 0, &hit, NULL), SG_OK);
	CHECK(hit.found);
	CHECK_INT(vindex_search_min(vi, "p", dim, q, -0.5f, 0, &hit, NULL), SG_OK);
	CHECK(!hit.found && hit.similarity == -1.0f && hit.id[0] == '\0');
	free(v);
	free(q);
	ref_finish(&r);
	vindex_destroy(vi);
}

/* vindex_search_min with the threshold exactly at, one float above and
 * one below the best row's similarity, and at other rows' similarities. */
static void test_threshold_at_a_rows_exact_similarity(void)
{
	const int dim = 384;
	const size_t n = 5000;
	uint64_t seed = 0x7e5;
	struct vindex *vi = vindex_create();
	struct ref r;
	ref_init(&r, dim, n);
	float *data = rand_vecs(&seed, n, dim);
	char id[32];
	for (size_t i = 0; i < n; i++) {
		make_id(id, sizeof id, "t", i);
		ref_add(vi, &r, id, data + i * (size_t)dim, 0);
	}
	float *q = malloc((size_t)dim * sizeof *q), *qn = malloc((size_t)dim * sizeof *qn);
	for (int k = 0; k < 6; k++) {
		for (int j = 0; j < dim; j++)
			q[j] = k < 3 ? rng_float(&seed) : data[(size_t)k * 31 * dim + j] +
			                                  0.3f * rng_float(&seed);
		memcpy(qn, q, (size_t)dim * sizeof *qn);
		vindex_normalize(qn, dim);
		double best;
		size_t bi = ref_best(&r, qn, 0, -INFINITY, &best);
		float s = ref_sim(best);
		/* similarity of some other row, for a threshold below the best */
		float other = ref_sim(ref_dot(qn, r.rows + ((bi + 1) % n) * (size_t)dim, dim));
		const float mins[] = { s, nextafterf(s, INFINITY), nextafterf(s, -INFINITY), other,
		                       s - 0.01f, 0.999f, 1.0f, 2.0f };
		for (size_t m = 0; m < sizeof mins / sizeof mins[0]; m++) {
			char what[64];
			snprintf(what, sizeof what, "query %d min %.9g", k, mins[m]);
			check_all_modes(vi, &r, q, 0, mins[m], what);
		}
		struct vindex_hit hit;
		vindex_search_min(vi, "p", dim, q, s, 0, &hit, NULL);
		CHECK(hit.found && hit.similarity == s && strcmp(hit.id, r.ids[bi]) == 0);
		vindex_search_min(vi, "p", dim, q, nextafterf(s, INFINITY), 0, &hit, NULL);
		CHECK(!hit.found);
	}
	struct sg_error e = { 0 };
	struct vindex_hit hit;
	CHECK_INT(vindex_search_min(vi, "p", dim, q, NAN, 0, &hit, &e), SG_ERR_BAD_REQUEST);
	CHECK(!hit.found);
	/* A high minimum that no row reaches leaves nothing to re-rank. */
	struct vindex_stats st;
	for (int j = 0; j < dim; j++)
		q[j] = rng_float(&seed);
	vindex_search_min(vi, "p", dim, q, 0.9f, 0, &hit, NULL);
	vindex_last_stats(&st);
	CHECK(st.reranked == 0);
	free(qn);
	free(q);
	free(data);
	ref_finish(&r);
	vindex_destroy(vi);
}

/* The compact copy follows every change: expiry (skipped, then removed),
 * swap-removal, replacement in place, moves between partitions, re-adds;
 * ties after a swap go to the row now stored first. */
static void test_compact_copy_stays_in_sync_through_changes(void)
{
	const int dim = 40;
	const size_t n = 4000;
	uint64_t seed = 0x5c;
	struct vindex *vi = vindex_create();
	struct ref r;
	ref_init(&r, dim, n + 100);
	float *data = rand_vecs(&seed, n + 200, dim);
	char id[32];
	for (size_t i = 0; i < n; i++) {
		make_id(id, sizeof id, "s", i);
		ref_add(vi, &r, id, data + i * (size_t)dim, i % 3 == 0 ? (int64_t)(100 + i % 50) : 0);
	}
	float *q = malloc((size_t)dim * sizeof *q);
	for (int round = 0; round < 4; round++) {
		int64_t now = round == 0 ? 0 : 120;
		for (int k = 0; k < 6; k++) {
			size_t src = (size_t)(rng_next(&seed) % r.n);
			for (int j = 0; j < dim; j++)
				q[j] = r.rows[src * (size_t)dim + j] + (k % 2 ? 0.02f : 0) * rng_float(&seed);
			char what[48];
			snprintf(what, sizeof what, "round %d query %d", round, k);
			check_all_modes(vi, &r, q, now, -INFINITY, what);
		}
		/* change things for the next round */
		for (int k = 0; k < 300; k++)
			ref_remove(vi, &r, (size_t)(rng_next(&seed) % r.n));
		for (int k = 0; k < 50; k++) /* replace in place: same id, same row */
			ref_replace(vi, &r, (size_t)(rng_next(&seed) % r.n),
			            data + (n + (size_t)k) * (size_t)dim);
		for (int k = 0; k < 20; k++) /* move out to another partition, then back */
			ref_move_out_and_back(vi, &r, (size_t)(rng_next(&seed) % r.n),
			                      data + (n + 100 + (size_t)k) * (size_t)dim);
		if (round == 2)
			ref_expire(vi, &r, 120);
	}
	/* Ties after swaps: three equal rows; removing the first moves the last
	 * into its place, which then wins. */
	struct vindex *tv = vindex_create();
	float w[4] = { 1, 2, 3, 4 }, z[4] = { -1, 0, 0, 0 };
	struct vindex_hit hit;
	vindex_add(tv, "p", 4, "a", w, 0, NULL);
	vindex_add(tv, "p", 4, "b", w, 0, NULL);
	vindex_add(tv, "p", 4, "x", z, 0, NULL);
	vindex_add(tv, "p", 4, "c", w, 0, NULL);
	vindex_search(tv, "p", 4, w, 0, &hit, NULL);
	CHECK_STR(hit.id, "a");
	vindex_remove(tv, "a"); /* rows: c b x */
	vindex_search(tv, "p", 4, w, 0, &hit, NULL);
	CHECK_STR(hit.id, "c");
	vindex_add(tv, "p", 4, "c", w, 50, NULL); /* in place, now expiring */
	vindex_search(tv, "p", 4, w, 60, &hit, NULL);
	CHECK_STR(hit.id, "b");
	vindex_destroy(tv);
	free(q);
	free(data);
	ref_finish(&r);
	vindex_destroy(vi);
}

/* Thousands of rows the int8 scan cannot separate overflow the candidate
 * buffers (4096 per thread, 256 per batch query): the overflow re-ranks or
 * prunes, never drops, so answers stay exact. */
static void test_candidate_overflow_keeps_answers_exact(void)
{
	const int dim = 8;
	const size_t n = 12000;
	uint64_t seed = 0x0f;
	struct vindex *vi = vindex_create();
	struct ref r;
	ref_init(&r, dim, n);
	float *q = rand_vecs(&seed, 1, dim);
	float v[8];
	char id[32];
	for (size_t i = 0; i < n; i++) {
		for (int j = 0; j < dim; j++)
			v[j] = q[j] + 1e-4f * rng_float(&seed);
		make_id(id, sizeof id, "o", i);
		ref_add(vi, &r, id, v, i % 5 == 0 ? 10 : 0);
	}
	check_all_modes(vi, &r, q, 0, -INFINITY, "overflow");
	check_all_modes(vi, &r, q, 20, -INFINITY, "overflow, some expired");
	struct vindex_stats st;
	struct vindex_hit one, hits[4];
	vindex_search(vi, "p", dim, q, 0, &one, NULL);
	vindex_last_stats(&st);
	printf("# overflow: %zu candidates, %zu re-ranked\n", st.candidates, st.reranked);
	CHECK(st.candidates > 4096);
	float qs[4 * 8];
	for (int k = 0; k < 4; k++)
		for (int j = 0; j < dim; j++)
			qs[k * dim + j] = q[j] + (k ? 1e-4f * rng_float(&seed) : 0);
	for (int m = 0; m < NMODES; m++) {
		if (!set_mode(vi, m, 1.0))
			continue;
		CHECK_INT(vindex_search_batch(vi, "p", dim, qs, 4, 20, hits, NULL), SG_OK);
		for (int k = 0; k < 4; k++)
			CHECK(same_as_ref(vi, &r, qs + k * dim, 20, -INFINITY, "overflow single"));
		for (int k = 0; k < 4; k++) {
			vindex_search(vi, "p", dim, qs + k * dim, 20, &one, NULL);
			CHECK_STR(hits[k].id, one.id);
			CHECK(hits[k].similarity == one.similarity);
		}
	}
	free(q);
	ref_finish(&r);
	vindex_destroy(vi);
}

/* On ordinary data the int8 pass leaves next to nothing to re-rank. */
static void test_pruning_leaves_few_rows_to_rerank(void)
{
	const int dim = 384;
	const size_t n = 40000;
	uint64_t seed = 0xfe;
	struct vindex *vi = vindex_create();
	float *data = rand_vecs(&seed, n, dim);
	char id[32];
	for (size_t i = 0; i < n; i++) {
		make_id(id, sizeof id, "p", i);
		vindex_add(vi, "p", dim, id, data + i * (size_t)dim, 0, NULL);
	}
	float *q = malloc((size_t)dim * sizeof *q);
	size_t near_rr = 0, far_rr = 0;
	struct vindex_stats st;
	struct vindex_hit hit;
	for (int k = 0; k < 8; k++) {
		for (int j = 0; j < dim; j++)
			q[j] = data[(size_t)k * 997 * dim + j] + 0.05f * rng_float(&seed);
		vindex_search(vi, "p", dim, q, 0, &hit, NULL);
		vindex_last_stats(&st);
		make_id(id, sizeof id, "p", (size_t)k * 997);
		CHECK_STR(hit.id, id);
		CHECK_INT(st.rows, n);
		CHECK(st.threads == 1 || st.threads == 2);
		near_rr += st.reranked;
		for (int j = 0; j < dim; j++)
			q[j] = rng_float(&seed);
		vindex_search(vi, "p", dim, q, 0, &hit, NULL);
		vindex_last_stats(&st);
		far_rr += st.reranked;
	}
	printf("# re-ranked per query: %.1f near, %.1f random (of %zu rows, kernel %s)\n",
	       near_rr / 8.0, far_rr / 8.0, n, st.kernel);
	CHECK(near_rr <= 8 * 2);
	CHECK(far_rr <= 8 * 50);
	/* Batch: the same answers, bit for bit, and as few re-ranks. */
	float *qs = rand_vecs(&seed, 32, dim);
	struct vindex_hit hits[32];
	CHECK_INT(vindex_search_batch(vi, "p", dim, qs, 32, 0, hits, NULL), SG_OK);
	vindex_last_stats(&st);
	CHECK_INT(st.rows, 32 * n);
	CHECK(st.reranked <= 32 * 50);
	for (int k = 0; k < 32; k++) {
		vindex_search(vi, "p", dim, qs + (size_t)k * dim, 0, &hit, NULL);
		CHECK_STR(hits[k].id, hit.id);
		CHECK(hits[k].similarity == hit.similarity);
	}
	free(qs);
	free(q);
	free(data);
	vindex_destroy(vi);
}

static void test_tuning_refuses_bad_values_and_stats_reset(void)
{
	struct vindex *vi = vindex_create();
	struct sg_error e = { 0 };
	struct vindex_tuning t = { .kernel = VINDEX_KERNEL_AUTO, .bound_scale = -1 };
	CHECK_INT(vindex_set_tuning(vi, &t, &e), SG_ERR_BAD_REQUEST);
	t.bound_scale = NAN;
	CHECK_INT(vindex_set_tuning(vi, &t, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_set_tuning(vi, NULL, &e), SG_ERR_INTERNAL);
	t.bound_scale = 1;
	t.kernel = VINDEX_KERNEL_SCALAR;
	CHECK_INT(vindex_set_tuning(vi, &t, &e), SG_OK);
	float v[2] = { 1, 0 };
	vindex_add(vi, "p", 2, "a", v, 0, NULL);
	struct vindex_hit hit;
	struct vindex_stats st;
	vindex_search(vi, "p", 2, v, 0, &hit, NULL);
	vindex_last_stats(&st);
	CHECK_INT(st.rows, 1);
	CHECK_INT(st.reranked, 1);
	CHECK_STR(st.kernel, "scalar");
	vindex_search(vi, "missing", 2, v, 0, &hit, NULL);
	vindex_last_stats(&st);
	CHECK_INT(st.rows, 0);
	CHECK_INT(st.reranked, 0);
	vindex_destroy(vi);
}

/* ---- top k ---- */

/* vindex_search_top against a brute-force ranking of the reference: the
 * same ids in the same order with the same similarities, for every k, on
 * random rows with exact duplicates (ties), expired rows and a minimum. */
static void test_top_k_equals_brute_force_ranking(void)
{
	const int dim = 24;
	const size_t n = 600;
	uint64_t seed = 0x70bc0ffeeULL;
	struct vindex *vi = vindex_create();
	struct ref r;
	ref_init(&r, dim, n);
	float *data = rand_vecs(&seed, n, dim);
	char id[32];
	for (size_t i = 0; i < n; i++) {
		/* every 7th row repeats an earlier one: equal scores */
		const float *v = data + (i % 7 == 6 ? i - 3 : i) * (size_t)dim;
		make_id(id, sizeof id, "t", i);
		ref_add(vi, &r, id, v, i % 11 == 5 ? 1000 : 0);
	}
	float *qn = malloc((size_t)dim * sizeof *qn);
	for (int qi = 0; qi < 12; qi++) {
		/* queries near a stored row, so several rows score high */
		size_t src = (size_t)(rng_next(&seed) % n);
		float q[24];
		for (int j = 0; j < dim; j++)
			q[j] = 2.0f * data[src * (size_t)dim + j] + 0.6f * rng_float(&seed);
		memcpy(qn, q, sizeof q);
		vindex_normalize(qn, dim);
		/* brute force: every live row's score, sorted best first, ties by row */
		size_t order[600];
		double sc[600];
		size_t m = 0;
		for (size_t i = 0; i < r.n; i++) {
			if (r.exp[i] != 0 && r.exp[i] <= 2000)
				continue;
			double d = ref_dot(qn, r.rows + i * (size_t)dim, dim);
			size_t at = m++;
			while (at > 0 && d > sc[at - 1]) {
				sc[at] = sc[at - 1];
				order[at] = order[at - 1];
				at--;
			}
			sc[at] = d;
			order[at] = i;
		}
		const float mins[] = { -1.0f, 0.0f, ref_sim(sc[2]), ref_sim(sc[0]) };
		for (size_t mi = 0; mi < sizeof mins / sizeof mins[0]; mi++) {
			for (int k = 1; k <= VINDEX_TOPK_MAX; k++) {
				struct vindex_hit hits[VINDEX_TOPK_MAX];
				int got = -1;
				CHECK_INT(vindex_search_top(vi, "p", dim, q, mins[mi], k, 2000, hits,
				                            &got, NULL),
				          SG_OK);
				int want = 0;
				while (want < k && (size_t)want < m && ref_sim(sc[want]) >= mins[mi])
					want++;
				CHECK_INT(got, want);
				for (int i = 0; i < got && i < want; i++) {
					CHECK(hits[i].found);
					CHECK_STR(hits[i].id, r.ids[order[i]]);
					CHECK(hits[i].similarity == ref_sim(sc[i]));
				}
				if (k == 1) {
					struct vindex_hit one;
					CHECK_INT(vindex_search_min(vi, "p", dim, q, mins[mi], 2000, &one,
					                            NULL),
					          SG_OK);
					CHECK(one.found == (got == 1));
					if (got == 1)
						CHECK_STR(one.id, hits[0].id);
				}
			}
		}
	}
	free(qn);
	free(data);
	ref_finish(&r);
	vindex_destroy(vi);
}

static void test_top_k_refuses_bad_arguments_and_misses_cleanly(void)
{
	struct vindex *vi = vindex_create();
	float v[3] = { 1, 2, 3 }, zero[3] = { 0 };
	struct vindex_hit hits[VINDEX_TOPK_MAX];
	struct sg_error e = { 0 };
	int n = -1;
	CHECK_INT(vindex_add(vi, "p", 3, "a", v, 0, NULL), SG_OK);
	CHECK_INT(vindex_search_top(vi, "p", 3, v, -1.0f, 0, 0, hits, &n, &e), SG_ERR_BAD_REQUEST);
	CHECK_INT(n, 0);
	CHECK(strstr(e.msg, "outside 1..16") != NULL);
	CHECK_INT(vindex_search_top(vi, "p", 3, v, -1.0f, VINDEX_TOPK_MAX + 1, 0, hits, &n, NULL),
	          SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_search_top(vi, "p", 3, v, NAN, 4, 0, hits, &n, NULL), SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_search_top(vi, "p", 3, zero, -1.0f, 4, 0, hits, &n, NULL),
	          SG_ERR_BAD_REQUEST);
	CHECK_INT(vindex_search_top(vi, "p", 2, v, -1.0f, 4, 0, hits, &n, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "dimension 2") != NULL);
	CHECK_INT(vindex_search_top(vi, "p", 3, v, -1.0f, 4, 0, NULL, &n, NULL), SG_ERR_INTERNAL);
	/* a missing partition is no error and no row */
	n = -1;
	CHECK_INT(vindex_search_top(vi, "other", 3, v, -1.0f, 4, 0, hits, &n, NULL), SG_OK);
	CHECK_INT(n, 0);
	/* fewer rows than k: all of them */
	CHECK_INT(vindex_search_top(vi, "p", 3, v, -1.0f, 4, 0, hits, &n, NULL), SG_OK);
	CHECK_INT(n, 1);
	CHECK_STR(hits[0].id, "a");
	vindex_destroy(vi);
}

/* ---- coalesced searches: many threads on one partition ---- */

#define CO_DIM 64
#define CO_ROWS 20000
#define CO_QUERIES 48
#define CO_THREADS 12

struct co_shared {
	struct vindex *vi;
	const float *queries;
	struct vindex_hit want[CO_QUERIES], want_min[CO_QUERIES];
	float min_sim[CO_QUERIES];
	pthread_barrier_t start;
	pthread_mutex_t mu;
	int mismatches, errors, most_coalesced;
};

static struct co_arg {
	struct co_shared *sh;
	int who;
} co_args[CO_THREADS];

static bool same_hit(const struct vindex_hit *a, const struct vindex_hit *b)
{
	return a->found == b->found && strcmp(a->id, b->id) == 0 &&
	       memcmp(&a->similarity, &b->similarity, sizeof a->similarity) == 0;
}

static void *co_searcher(void *arg)
{
	struct co_arg *a = arg;
	struct co_shared *sh = a->sh;
	int bad = 0, errs = 0, most = 0;
	pthread_barrier_wait(&sh->start);
	for (int k = 0; k < CO_QUERIES; k++) {
		int i = (k + a->who * 5) % CO_QUERIES;
		const float *q = sh->queries + (size_t)i * CO_DIM;
		struct vindex_hit h, hm;
		struct vindex_stats st;
		if (vindex_search(sh->vi, "co", CO_DIM, q, 0, &h, NULL) != SG_OK)
			errs++;
		vindex_last_stats(&st);
		if (st.coalesced > most)
			most = st.coalesced;
		if (vindex_search_min(sh->vi, "co", CO_DIM, q, sh->min_sim[i], 0, &hm, NULL) != SG_OK)
			errs++;
		vindex_last_stats(&st);
		if (st.coalesced > most)
			most = st.coalesced;
		bad += !same_hit(&h, &sh->want[i]) + !same_hit(&hm, &sh->want_min[i]);
	}
	pthread_mutex_lock(&sh->mu);
	sh->mismatches += bad;
	sh->errors += errs;
	if (most > sh->most_coalesced)
		sh->most_coalesced = most;
	pthread_mutex_unlock(&sh->mu);
	return NULL;
}

/* Concurrent single searches of one partition are served by shared passes
 * (vindex_tuning.coalesce_min_rows) and every answer is bit for bit the
 * one the same search gets alone, with and without a minimum. */
static void test_coalesced_searches_equal_single_searches(void)
{
	static struct co_shared sh;
	uint64_t seed = 0xc0a1e5ce;
	char id[32];
	memset(&sh, 0, sizeof sh);
	sh.vi = vindex_create();
	float *data = rand_vecs(&seed, CO_ROWS, CO_DIM);
	for (size_t i = 0; i < CO_ROWS; i++) {
		make_id(id, sizeof id, "r", i);
		CHECK_INT(vindex_add(sh.vi, "co", CO_DIM, id, data + i * CO_DIM, 0, NULL), SG_OK);
	}
	float *queries = malloc((size_t)CO_QUERIES * CO_DIM * sizeof *queries);
	for (int i = 0; i < CO_QUERIES; i++) {
		/* random questions, near-duplicates of a row, and rows themselves */
		const float *row = data + (size_t)(rng_next(&seed) % CO_ROWS) * CO_DIM;
		for (int j = 0; j < CO_DIM; j++) {
			float noise = rng_float(&seed);
			queries[i * CO_DIM + j] = i % 3 == 0 ? noise : i % 3 == 1 ? row[j] + 0.1f * noise
			                                                            : row[j];
		}
		sh.min_sim[i] = i % 2 ? 0.9f : 0.2f;
	}
	sh.queries = queries;
	struct vindex_tuning t = { .kernel = VINDEX_KERNEL_AUTO, .bound_scale = 1.0,
	                           .coalesce_min_rows = SIZE_MAX };
	CHECK_INT(vindex_set_tuning(sh.vi, &t, NULL), SG_OK);
	for (int i = 0; i < CO_QUERIES; i++) {
		CHECK_INT(vindex_search(sh.vi, "co", CO_DIM, queries + i * CO_DIM, 0, &sh.want[i], NULL),
		          SG_OK);
		CHECK_INT(vindex_search_min(sh.vi, "co", CO_DIM, queries + i * CO_DIM, sh.min_sim[i], 0,
		                            &sh.want_min[i], NULL), SG_OK);
	}
	t.coalesce_min_rows = 1;
	CHECK_INT(vindex_set_tuning(sh.vi, &t, NULL), SG_OK);
	pthread_barrier_init(&sh.start, NULL, CO_THREADS);
	pthread_mutex_init(&sh.mu, NULL);
	pthread_t th[CO_THREADS];
	for (int i = 0; i < CO_THREADS; i++) {
		co_args[i] = (struct co_arg){ &sh, i };
		CHECK_INT(pthread_create(&th[i], NULL, co_searcher, &co_args[i]), 0);
	}
	for (int i = 0; i < CO_THREADS; i++)
		pthread_join(th[i], NULL);
	printf("# %d threads: passes served up to %d queries at once\n", CO_THREADS,
	       sh.most_coalesced);
	CHECK_INT(sh.errors, 0);
	CHECK_INT(sh.mismatches, 0);
	CHECK(sh.most_coalesced > 1);
	pthread_barrier_destroy(&sh.start);
	pthread_mutex_destroy(&sh.mu);
	free(queries);
	free(data);
	vindex_destroy(sh.vi);
}

/* ---- lists: approximate search of big partitions ---- */

/* n rows around nc random centres (centre + spread * noise), as real
 * embeddings cluster by topic. */
static float *clustered_vecs(uint64_t *s, size_t n, int dim, size_t nc, float spread)
{
	float *c = rand_vecs(s, nc, dim);
	float *v = malloc(n * (size_t)dim * sizeof *v);
	for (size_t i = 0; i < n; i++) {
		const float *ci = c + (size_t)(rng_next(s) % nc) * (size_t)dim;
		for (int j = 0; j < dim; j++)
			v[i * (size_t)dim + j] = ci[j] + spread * rng_float(s);
	}
	free(c);
	return v;
}

static void set_lists(struct vindex *vi, size_t min_rows, int probe)
{
	struct vindex_tuning t = { .kernel = VINDEX_KERNEL_AUTO, .bound_scale = 1.0,
	                           .lists_min_rows = min_rows, .probe = probe };
	CHECK_INT(vindex_set_tuning(vi, &t, NULL), SG_OK);
}

/* Every row of the reference, searched for with its own vector, is found
 * with its exact self-similarity, and the search read only its probe
 * lists. Returns the rows searched. */
static size_t every_row_finds_itself(struct vindex *vi, const struct ref *r, int probe,
                                     const char *what)
{
	size_t bad = 0, most = 0;
	for (size_t i = 0; i < r->n; i++) {
		struct vindex_hit hit;
		struct vindex_stats st;
		const float *row = r->rows + i * (size_t)r->dim;
		CHECK_INT(vindex_search(vi, "p", r->dim, row, 0, &hit, NULL), SG_OK);
		vindex_last_stats(&st);
		if (st.lists != probe)
			bad++;
		if (st.rows > most)
			most = st.rows;
		if (!hit.found || strcmp(hit.id, r->ids[i]) != 0 ||
		    hit.similarity != ref_sim(ref_dot(row, row, r->dim))) {
			if (bad++ < 3)
				printf("# %s: row %zu (%s) found %s %.9g\n", what, i, r->ids[i],
				       hit.found ? hit.id : "none", hit.similarity);
		}
	}
	CHECK_INT(bad, 0);
	CHECK(most < r->n / 2);
	return r->n;
}

/* Rows are listed when added, moved within and between lists when they
 * are replaced, removed, moved to another partition or expired, and the
 * partition is clustered again as it grows: after every change each row
 * is still found through its lists, and an answer is always a real row
 * with its exact similarity, never better than an exact scan's. */
static void test_lists_keep_every_row_findable_through_changes(void)
{
	const int dim = 32, probe = 4;
	const size_t n = 6000;
	uint64_t seed = 0x1157;
	struct vindex *vi = vindex_create();
	set_lists(vi, 1024, probe);
	struct ref r;
	ref_init(&r, dim, n + 100);
	float *data = clustered_vecs(&seed, n + 400, dim, 48, 0.4f);
	char id[32];
	struct vindex_stats st;
	struct vindex_hit hit;
	for (size_t i = 0; i < n; i++) {
		make_id(id, sizeof id, "l", i);
		ref_add(vi, &r, id, data + i * (size_t)dim, i % 5 == 0 ? (int64_t)(100 + i % 50) : 0);
		if (i == 1022 || i == 1023) { /* exact below min_rows, listed from it */
			vindex_search(vi, "p", dim, data, 0, &hit, NULL);
			vindex_last_stats(&st);
			CHECK_INT(st.lists, i == 1022 ? 0 : probe);
		}
	}
	every_row_finds_itself(vi, &r, probe, "after adds");
	float *q = malloc((size_t)dim * sizeof *q);
	for (int round = 0; round < 3; round++) {
		for (int k = 0; k < 300; k++)
			ref_remove(vi, &r, (size_t)(rng_next(&seed) % r.n));
		for (int k = 0; k < 50; k++) /* in place, mostly into another list */
			ref_replace(vi, &r, (size_t)(rng_next(&seed) % r.n),
			            data + (n + (size_t)(round * 50 + k)) * (size_t)dim);
		for (int k = 0; k < 20; k++) /* out to another partition, then back */
			ref_move_out_and_back(vi, &r, (size_t)(rng_next(&seed) % r.n),
			                      data + (n + 200 + (size_t)(round * 20 + k)) * (size_t)dim);
		if (round == 1)
			ref_expire(vi, &r, 200);
		char what[32];
		snprintf(what, sizeof what, "round %d", round);
		every_row_finds_itself(vi, &r, probe, what);
		for (int k = 0; k < 200; k++) { /* random queries: a real row, exact score */
			for (int j = 0; j < dim; j++)
				q[j] = rng_float(&seed);
			struct ref_ans want = ref_answer(&r, q, 0, -INFINITY);
			CHECK_INT(vindex_search(vi, "p", dim, q, 0, &hit, NULL), SG_OK);
			CHECK(hit.found);
			float sim = 0;
			bool found = false;
			CHECK_INT(vindex_score(vi, hit.id, dim, q, &sim, &found, NULL), SG_OK);
			CHECK(found && sim == hit.similarity);
			CHECK(hit.similarity <= ref_sim(want.sim));
		}
	}
	free(q);
	free(data);
	ref_finish(&r);
	vindex_destroy(vi);
}

/* Near duplicates (cosine ~0.95 to a stored row) among 20,000 clustered
 * rows: 8 of 128 lists find nearly all of them while reading a fraction
 * of the rows, and probing every list is the exact search. */
static void test_lists_find_near_duplicates_reading_few_rows(void)
{
	const int dim = 64;
	const size_t n = 20000, nq = 400;
	uint64_t seed = 0xd0b1e;
	struct vindex *vi = vindex_create();
	set_lists(vi, 16384, 8);
	struct ref r;
	ref_init(&r, dim, n);
	float *data = clustered_vecs(&seed, n, dim, 200, 0.5f);
	char id[32];
	for (size_t i = 0; i < n; i++) {
		make_id(id, sizeof id, "d", i);
		ref_add(vi, &r, id, data + i * (size_t)dim, 0);
	}
	float *q = malloc((size_t)dim * sizeof *q);
	size_t found = 0, read = 0;
	double minsim = 1;
	for (size_t k = 0; k < nq; k++) {
		size_t src = (size_t)(rng_next(&seed) % n);
		const float *row = r.rows + src * (size_t)dim;
		for (int j = 0; j < dim; j++)
			q[j] = row[j] + 0.07f * rng_float(&seed);
		struct vindex_hit hit;
		struct vindex_stats st;
		CHECK_INT(vindex_search(vi, "p", dim, q, 0, &hit, NULL), SG_OK);
		vindex_last_stats(&st);
		CHECK_INT(st.lists, 8);
		read += st.rows;
		double c = cos_naive(q, row, dim);
		if (c < minsim)
			minsim = c;
		if (hit.found && strcmp(hit.id, r.ids[src]) == 0)
			found++;
	}
	printf("# near duplicates (cos >= %.3f): %zu of %zu found, %.1f%% of rows read\n",
	       minsim, found, nq, 100.0 * (double)read / (double)(nq * n));
	CHECK(minsim > 0.9);
	CHECK(found >= nq * 97 / 100);
	CHECK(read < nq * n / 8);
	/* every list probed: the exact answers */
	set_lists(vi, 16384, 256);
	for (int k = 0; k < 50; k++) {
		for (int j = 0; j < dim; j++)
			q[j] = rng_float(&seed);
		CHECK(same_as_ref(vi, &r, q, 0, -INFINITY, "probe all"));
		struct vindex_stats st;
		vindex_last_stats(&st);
		CHECK_INT(st.lists, 0);
		CHECK_INT(st.rows, n);
	}
	free(q);
	free(data);
	ref_finish(&r);
	vindex_destroy(vi);
}

/* Lists count in vindex_bytes() and go with their rows (the index ends
 * as big as one that never had lists); bad probes are refused. */
static void test_lists_bytes_and_tuning(void)
{
	const int dim = 16;
	uint64_t seed = 77;
	struct vindex *vi = vindex_create(), *plain = vindex_create();
	struct sg_error e = { 0 };
	struct vindex_tuning t = { .kernel = VINDEX_KERNEL_AUTO, .bound_scale = 1.0,
	                           .lists_min_rows = 512, .probe = -1 };
	CHECK_INT(vindex_set_tuning(vi, &t, &e), SG_ERR_BAD_REQUEST);
	t.probe = 257;
	CHECK_INT(vindex_set_tuning(vi, &t, &e), SG_ERR_BAD_REQUEST);
	set_lists(vi, 512, 2);
	float *v = rand_vecs(&seed, 3000, dim);
	char id[32];
	for (size_t i = 0; i < 511; i++) {
		make_id(id, sizeof id, "b", i);
		vindex_add(vi, "p", dim, id, v + i * dim, 0, NULL);
	}
	size_t before = vindex_bytes(vi);
	CHECK_INT(vindex_listed_count(vi), 0);
	make_id(id, sizeof id, "b", (size_t)511);
	vindex_add(vi, "p", dim, id, v + 511 * dim, 0, NULL);
	CHECK_INT(vindex_listed_count(vi), 1);
	size_t listed = vindex_bytes(vi);
	/* 16 centroids of 16 floats and a list entry per row at least */
	CHECK(listed >= before + 16 * dim * sizeof(float) + 512 * 4);
	for (size_t i = 512; i < 3000; i++) {
		make_id(id, sizeof id, "b", i);
		vindex_add(vi, "p", dim, id, v + i * dim, 0, NULL);
	}
	for (size_t i = 0; i < 3000; i++) {
		make_id(id, sizeof id, "b", i);
		vindex_add(plain, "p", dim, id, v + i * dim, 0, NULL);
	}
	CHECK(vindex_bytes(vi) > vindex_bytes(plain));
	for (size_t i = 0; i < 3000; i++) {
		make_id(id, sizeof id, "b", i);
		CHECK(vindex_remove(vi, id));
		CHECK(vindex_remove(plain, id));
	}
	CHECK_INT(vindex_partition_count(vi), 0);
	CHECK_INT(vindex_listed_count(vi), 0);
	CHECK_INT(vindex_bytes(vi), vindex_bytes(plain));
	vindex_clear(vi);
	CHECK_INT(vindex_bytes(vi), 0);
	free(v);
	vindex_destroy(plain);
	vindex_destroy(vi);
}

struct ls_share {
	struct vindex *vi;
	const float *stable;
	size_t nstable;
	atomic_int stop;
	atomic_size_t wrong;
};

static void *ls_searcher(void *arg)
{
	struct ls_share *sh = arg;
	char want[32];
	for (size_t k = 0; !atomic_load(&sh->stop); k = (k + 7) % sh->nstable) {
		struct vindex_hit hit;
		make_id(want, sizeof want, "st", k);
		if (vindex_search(sh->vi, "p", 24, sh->stable + k * 24, 0, &hit, NULL) != SG_OK ||
		    !hit.found || strcmp(hit.id, want) != 0)
			atomic_fetch_add(&sh->wrong, 1);
	}
	return NULL;
}

/* Searches run while the writer adds rows past two clusterings: a stable
 * row is found by its own vector before, during and after each. */
static void test_lists_are_built_while_searches_run(void)
{
	uint64_t seed = 0xc0c0;
	struct ls_share sh = { .vi = vindex_create(), .nstable = 200 };
	set_lists(sh.vi, 1024, 3);
	float *stable = rand_vecs(&seed, sh.nstable, 24);
	float *more = clustered_vecs(&seed, 8000, 24, 30, 0.3f);
	sh.stable = stable;
	atomic_init(&sh.stop, 0);
	atomic_init(&sh.wrong, 0);
	char id[32];
	for (size_t i = 0; i < sh.nstable; i++) {
		make_id(id, sizeof id, "st", i);
		vindex_add(sh.vi, "p", 24, id, stable + i * 24, 0, NULL);
	}
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, ls_searcher, &sh);
	for (size_t i = 0; i < 8000; i++) {
		make_id(id, sizeof id, "m", i);
		CHECK_INT(vindex_add(sh.vi, "p", 24, id, more + i * 24, 0, NULL), SG_OK);
		if (i % 3 == 0 && i > 0) {
			make_id(id, sizeof id, "m", i - 1);
			CHECK(vindex_remove(sh.vi, id));
		}
	}
	atomic_store(&sh.stop, 1);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	CHECK_INT(atomic_load(&sh.wrong), 0);
	struct vindex_hit hit;
	struct vindex_stats st;
	vindex_search(sh.vi, "p", 24, stable, 0, &hit, NULL);
	vindex_last_stats(&st);
	CHECK_INT(st.lists, 3);
	free(stable);
	free(more);
	vindex_destroy(sh.vi);
}

struct ap_share {
	struct vindex *vi;
	const float *v;
	int dim;
	atomic_size_t added; /* rows whose add has returned */
	atomic_int stop;
	atomic_size_t searched, wrong;
};

static void *ap_searcher(void *arg)
{
	struct ap_share *sh = arg;
	uint64_t seed = (uint64_t)(uintptr_t)arg ^ 0x9e37;
	char want[32];
	while (!atomic_load(&sh->stop)) {
		size_t n = atomic_load(&sh->added);
		if (n == 0)
			continue;
		size_t k = (size_t)(rng_next(&seed) % n);
		struct vindex_hit hit;
		make_id(want, sizeof want, "a", k);
		const float *q = sh->v + k * (size_t)sh->dim;
		bool ok = vindex_search(sh->vi, "p", sh->dim, q, 0, &hit, NULL) == SG_OK &&
		          hit.found && strcmp(hit.id, want) == 0 &&
		          fabs(hit.similarity - cos_naive(q, q, sh->dim)) < 1e-5;
		atomic_fetch_add(&sh->searched, 1);
		if (!ok)
			atomic_fetch_add(&sh->wrong, 1);
	}
	return NULL;
}

/* Adds with room append without the partition's lock while searches run:
 * a row whose add has returned is found whole (its id and its exact
 * similarity), exact and with lists, through every growth of the arrays. */
static void test_adds_publish_whole_rows_to_running_searches(void)
{
	const int dim = 24;
	const size_t n = 6000;
	for (int listed = 0; listed < 2; listed++) {
		uint64_t seed = 0xadd5 + (uint64_t)listed;
		struct ap_share sh = { .vi = vindex_create(), .dim = dim };
		if (listed)
			set_lists(sh.vi, 1024, 8);
		float *v = rand_vecs(&seed, n, dim);
		sh.v = v;
		atomic_init(&sh.added, 0);
		atomic_init(&sh.stop, 0);
		atomic_init(&sh.searched, 0);
		atomic_init(&sh.wrong, 0);
		pthread_t th[2];
		for (int i = 0; i < 2; i++)
			pthread_create(&th[i], NULL, ap_searcher, &sh);
		char id[32];
		for (size_t i = 0; i < n; i++) {
			make_id(id, sizeof id, "a", i);
			CHECK_INT(vindex_add(sh.vi, "p", dim, id, v + i * dim, 0, NULL), SG_OK);
			atomic_store(&sh.added, i + 1);
			/* on a loaded machine the searchers may not have run yet:
			 * the second half of the adds waits for their first search */
			while (i == n / 2 && atomic_load(&sh.searched) == 0)
				sched_yield();
		}
		atomic_store(&sh.stop, 1);
		for (int i = 0; i < 2; i++)
			pthread_join(th[i], NULL);
		printf("# %s: %zu searches while adding, %zu wrong\n", listed ? "lists" : "exact",
		       atomic_load(&sh.searched), atomic_load(&sh.wrong));
		CHECK(atomic_load(&sh.searched) > 0);
		CHECK_INT(atomic_load(&sh.wrong), 0);
		CHECK_INT(vindex_count(sh.vi), n);
		free(v);
		vindex_destroy(sh.vi);
	}
}

int main(void)
{
	RUN(test_create_destroy_accept_null_and_empty_index_is_empty);
	RUN(test_normalize_returns_norm_and_makes_unit_vector);
	RUN(test_search_matches_naive_double_loop);
	RUN(test_search_of_stored_vector_finds_it_with_similarity_one);
	RUN(test_search_of_missing_partition_is_not_found);
	RUN(test_remove_swaps_last_row_in_and_keeps_others_findable);
	RUN(test_ties_go_to_the_first_stored_row);
	RUN(test_readd_same_id_replaces_vector_and_may_move_partition);
	RUN(test_expired_rows_are_skipped_and_expire_removes_them);
	RUN(test_growth_past_several_doublings_keeps_rows);
	RUN(test_dimension_mismatch_is_bad_request_with_message);
	RUN(test_zero_and_non_finite_vectors_are_refused);
	RUN(test_bad_ids_keys_and_expiry_are_refused);
	RUN(test_partitions_are_isolated);
	RUN(test_batch_search_equals_single_searches);
	RUN(test_concurrent_searches_while_writer_adds_and_removes);
	RUN(test_count_bytes_and_partition_count_are_sane);
	RUN(test_compact_search_equals_exact_scan_on_random_data);
	RUN(test_near_duplicates_differing_in_last_bits_are_ranked_exactly);
	RUN(test_bound_is_needed_in_full_and_pruning_still_exact);
	RUN(test_hi_plane_bound_is_needed_in_full);
	RUN(test_int8_order_differs_from_exact_order_yet_answers_are_exact);
	RUN(test_huge_dynamic_range_and_constant_rows);
	RUN(test_negative_similarities_are_exact);
	RUN(test_threshold_at_a_rows_exact_similarity);
	RUN(test_compact_copy_stays_in_sync_through_changes);
	RUN(test_candidate_overflow_keeps_answers_exact);
	RUN(test_pruning_leaves_few_rows_to_rerank);
	RUN(test_tuning_refuses_bad_values_and_stats_reset);
	RUN(test_top_k_equals_brute_force_ranking);
	RUN(test_top_k_refuses_bad_arguments_and_misses_cleanly);
	RUN(test_each_id_visits_every_live_id_once_across_partitions);
	RUN(test_coalesced_searches_equal_single_searches);
	RUN(test_lists_keep_every_row_findable_through_changes);
	RUN(test_lists_find_near_duplicates_reading_few_rows);
	RUN(test_lists_bytes_and_tuning);
	RUN(test_lists_are_built_while_searches_run);
	RUN(test_adds_publish_whole_rows_to_running_searches);
	return TEST_DONE();
}
