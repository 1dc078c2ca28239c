/* Unit tests for the vector index: results against a naive double-precision
 * scan, swap-removal, replacement, expiry, growth, input checks, partition
 * isolation, batch search and a bounded concurrency smoke test. Fixed seeds
 * throughout, so every run sees the same data. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/vindex.h"
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
	return TEST_DONE();
}
