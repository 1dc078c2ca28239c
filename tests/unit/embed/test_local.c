/* Unit tests for embed/local.h: normalisation, determinism, and that the
 * lexical similarity it promises holds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/embed/local.h"
#include "sg_test.h"

static double dot(const float *a, const float *b, int dim)
{
	double s = 0;
	for (int i = 0; i < dim; i++)
		s += (double)a[i] * b[i];
	return s;
}

static double sim(const char *a, const char *b)
{
	float va[SG_EMBED_LOCAL_DIM], vb[SG_EMBED_LOCAL_DIM];
	embed_local(a, strlen(a), va, SG_EMBED_LOCAL_DIM);
	embed_local(b, strlen(b), vb, SG_EMBED_LOCAL_DIM);
	return dot(va, vb, SG_EMBED_LOCAL_DIM);
}

static void test_same_input_same_bits(void)
{
	const char *t = "The quick brown fox jumps over the lazy dog, caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac";
	float a[SG_EMBED_LOCAL_DIM], b[SG_EMBED_LOCAL_DIM];
	embed_local(t, strlen(t), a, SG_EMBED_LOCAL_DIM);
	embed_local(t, strlen(t), b, SG_EMBED_LOCAL_DIM);
	CHECK(memcmp(a, b, sizeof(a)) == 0);
}

static void test_output_is_pinned(void)
{
	/* A change here changes every stored vector: bump SG_EMBED_LOCAL_MODEL. */
	float v[8];
	embed_local("hello world", 11, v, 8);
	uint64_t h = 1469598103934665603ULL;
	for (int i = 0; i < 8; i++) {
		uint32_t u;
		memcpy(&u, &v[i], sizeof(u));
		h = (h ^ u) * 1099511628211ULL;
	}
	/* Reproduced by an independent Python implementation of the header's
	 * description: v = {0, -2/sqrt(12), 0, -1/sqrt(12), -1/sqrt(12),
	 * -1/sqrt(12), 1/sqrt(12), -2/sqrt(12)}. */
	CHECK(h == 0x3dab6af74be993b3ULL);
	CHECK_NEAR(v[1], -0.5773502588272095, 1e-9);
}

static void test_unit_norm_for_several_dims(void)
{
	static const int dims[] = { 1, 2, 7, 64, 384, 768, 1536 };
	const char *t = "Semantic caches answer repeated questions cheaply.";
	for (size_t d = 0; d < sizeof(dims) / sizeof(dims[0]); d++) {
		float *v = malloc((size_t)dims[d] * sizeof(*v));
		embed_local(t, strlen(t), v, dims[d]);
		CHECK_NEAR(dot(v, v, dims[d]), 1.0, 1e-5);
		free(v);
	}
}

static void test_case_and_punctuation_do_not_matter(void)
{
	double same = sim("What is the capital of France?", "what is the capital of france");
	double other = sim("What is the capital of France?",
			   "Bake the bread for forty minutes at high heat");
	CHECK(same > 0.9);
	CHECK(same > other);
}

static void test_near_duplicates_score_above_unrelated(void)
{
	double near = sim("How do I reset my password?", "how can I reset my password");
	double far = sim("How do I reset my password?", "Weather forecast for Tokyo tomorrow");
	CHECK(near > far);
	CHECK(near > 0.5);
}

static void test_identical_text_scores_one(void)
{
	CHECK_NEAR(sim("Explain feature hashing", "Explain feature hashing"), 1.0, 1e-6);
	CHECK_NEAR(sim("\xe4\xbd\xa0\xe5\xa5\xbd \xe4\xb8\x96\xe7\x95\x8c",
		       "\xe4\xbd\xa0\xe5\xa5\xbd \xe4\xb8\x96\xe7\x95\x8c"), 1.0, 1e-6);
}

static void test_empty_text_is_fixed_unit_vector(void)
{
	float v[16], w[16];
	embed_local("", 0, v, 16);
	embed_local(" ?!.\t\n", 6, w, 16);
	CHECK_NEAR(dot(v, v, 16), 1.0, 1e-6);
	CHECK(v[0] == 1.0f);
	CHECK(memcmp(v, w, sizeof(v)) == 0);
	embed_local(NULL, 0, v, 16);
	CHECK(v[0] == 1.0f);
}

static void test_text_needs_no_terminator(void)
{
	float a[32], b[32];
	embed_local("hello worldXYZ", 11, a, 32);
	embed_local("hello world", 11, b, 32);
	CHECK(memcmp(a, b, sizeof(a)) == 0);
}

static void test_invalid_utf8_and_nul_are_safe(void)
{
	static const char junk[] = "\xff\xfe\x80\x80\xc3\x00\xe2\x82 a\xf0\x9f";
	float v[64];
	embed_local(junk, sizeof(junk) - 1, v, 64);
	CHECK_NEAR(dot(v, v, 64), 1.0, 1e-5);
}

static void test_dim_zero_writes_nothing(void)
{
	float v[1] = { 42.0f };
	embed_local("abc", 3, v, 0);
	CHECK(v[0] == 42.0f);
}

static void test_one_megabyte_text(void)
{
	size_t n = 1 << 20;
	char *t = malloc(n);
	static const char words[] = "lorem ipsum dolor sit amet consectetur ";
	for (size_t i = 0; i < n; i++)
		t[i] = words[i % (sizeof(words) - 1)];
	float v[SG_EMBED_LOCAL_DIM];
	embed_local(t, n, v, SG_EMBED_LOCAL_DIM);
	CHECK_NEAR(dot(v, v, SG_EMBED_LOCAL_DIM), 1.0, 1e-5);
	/* One 1 MB "word" has no separators at all. */
	memset(t, 'a', n);
	embed_local(t, n, v, SG_EMBED_LOCAL_DIM);
	CHECK_NEAR(dot(v, v, SG_EMBED_LOCAL_DIM), 1.0, 1e-5);
	free(t);
}

int main(void)
{
	RUN(test_same_input_same_bits);
	RUN(test_output_is_pinned);
	RUN(test_unit_norm_for_several_dims);
	RUN(test_case_and_punctuation_do_not_matter);
	RUN(test_near_duplicates_score_above_unrelated);
	RUN(test_identical_text_scores_one);
	RUN(test_empty_text_is_fixed_unit_vector);
	RUN(test_text_needs_no_terminator);
	RUN(test_invalid_utf8_and_nul_are_safe);
	RUN(test_dim_zero_writes_nothing);
	RUN(test_one_megabyte_text);
	return TEST_DONE();
}
