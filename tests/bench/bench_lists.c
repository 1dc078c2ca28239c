/* Benchmark (not a test) of the index's lists (vindex_tuning.lists_min_rows,
 * SEMGATE_INDEX_LISTS_FROM): what a lookup costs and which hits it still
 * finds, beside the exact index in the same run.
 *  1. ROWS random rows of 384 dimensions (Gaussian: no clusters at all, the
 *     worst case for lists): microseconds per lookup of a random query, and
 *     for near duplicates of stored rows at three similarities, how many
 *     find their own row, per number of lists probed.
 *  2. The labelled pairs given (../shared/data/pairs, read where they lie),
 *     embedded with the built-in local embedder: every a stored in one
 *     partition clustered from 1,000 rows, every b looked up; the semantic
 *     hits at the threshold with lists against those of the exact index.
 * usage: bench_lists [--rows N] [--threshold T] file.csv... */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/embed/local.h"
#include "semgate/vindex/vindex.h"
#include "pairs.h"

#define DIM 384
#define NQ 400
#define LISTS_FROM 8192 /* SEMGATE_INDEX_LISTS_FROM's default */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static double uniform(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) / 9007199254740992.0;
}

static double gauss(void)
{
	return sqrt(-2 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform());
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* The index's rule for a partition of n rows: a power of two <= sqrt(n),
 * 16..256 (for the tables' labels). */
static int lists_for(size_t n)
{
	int k = 16;
	while (k < 256 && (size_t)(4 * k * k) <= n)
		k *= 2;
	return k;
}

static struct vindex *index_with(size_t lists_from, int probe)
{
	struct vindex *vi = vindex_create();
	struct vindex_tuning t = { .kernel = VINDEX_KERNEL_AUTO, .bound_scale = 1.0,
	                           .lists_min_rows = lists_from, .probe = probe };
	if (!vi || vindex_set_tuning(vi, &t, NULL) != SG_OK) {
		fprintf(stderr, "bench_lists: cannot make an index\n");
		exit(1);
	}
	return vi;
}

static void unit(float *v)
{
	double n = 0;
	for (int j = 0; j < DIM; j++)
		n += (double)v[j] * v[j];
	for (int j = 0; j < DIM; j++)
		v[j] = (float)(v[j] / sqrt(n));
}

/* A query of similarity ~sim to unit row r: r plus Gaussian noise. */
static void near_of(const float *r, double sim, float *q)
{
	double eps = sqrt(1 / (sim * sim) - 1) / sqrt(DIM);
	for (int j = 0; j < DIM; j++)
		q[j] = (float)(r[j] + eps * gauss());
	unit(q);
}

static void random_rows(size_t rows)
{
	static const int probes[] = { 0, 4, 8, 16, 32 };
	static const double sims[] = { 0.95, 0.90, 0.85 };
	float *kept = malloc(NQ * DIM * sizeof(float)), *v = malloc(DIM * sizeof(float));
	float *qs = malloc(NQ * DIM * sizeof(float));
	if (!kept || !v || !qs)
		exit(1);
	printf("## %zu random rows x %d (no clusters: the worst case for lists), in %d lists\n\n",
	       rows, DIM, lists_for(rows));
	printf("| lists probed | µs per lookup (random query) | rows read |");
	for (size_t s = 0; s < sizeof sims / sizeof *sims; s++)
		printf(" near duplicates %.2f found |", sims[s]);
	printf("\n|---|---|---|---|---|---|\n");
	for (size_t pi = 0; pi < sizeof probes / sizeof *probes; pi++) {
		int probe = probes[pi];
		rng = 0x9e3779b97f4a7c15ULL; /* the same rows and queries each time */
		struct vindex *vi = index_with(probe ? LISTS_FROM : 0, probe ? probe : 1);
		char id[32];
		for (size_t i = 0; i < rows; i++) {
			for (int j = 0; j < DIM; j++)
				v[j] = (float)gauss();
			unit(v);
			if (i < NQ)
				memcpy(kept + i * DIM, v, DIM * sizeof(float));
			snprintf(id, sizeof id, "r%zu", i);
			vindex_add(vi, "p", DIM, id, v, 0, NULL);
		}
		for (size_t k = 0; k < NQ * DIM; k++)
			qs[k] = (float)gauss();
		struct vindex_hit hit;
		struct vindex_stats st;
		double t0 = now_us();
		size_t read = 0;
		for (size_t k = 0; k < NQ; k++) {
			vindex_search(vi, "p", DIM, qs + k * DIM, 0, &hit, NULL);
			vindex_last_stats(&st);
			read += st.rows;
		}
		double us = (now_us() - t0) / NQ;
		if (probe)
			printf("| %d of %d | %.0f | %.1f %% |", st.lists, lists_for(rows), us,
			       100.0 * (double)read / (double)(NQ * rows));
		else
			printf("| every row (exact) | %.0f | 100 %% |", us);
		for (size_t s = 0; s < sizeof sims / sizeof *sims; s++) {
			size_t found = 0;
			for (size_t k = 0; k < NQ; k++) {
				near_of(kept + k * DIM, sims[s], v);
				vindex_search(vi, "p", DIM, v, 0, &hit, NULL);
				snprintf(id, sizeof id, "r%zu", k);
				found += hit.found && strcmp(hit.id, id) == 0;
			}
			printf(" %.1f %% |", 100.0 * (double)found / NQ);
		}
		printf("\n");
		fflush(stdout);
		vindex_destroy(vi);
	}
	free(kept);
	free(v);
	free(qs);
}

static void labelled(struct pair_text *ps, size_t n, double threshold)
{
	static const int probes[] = { 2, 4, 8, 16 };
	float v[DIM];
	printf("\n## %zu labelled pairs, local embedder, lists from 1,000 rows, threshold %.2f\n\n",
	       n, threshold);
	printf("| lists probed | rows read | hits (exact index: same hit) | right hits (y = 1) |\n");
	printf("|---|---|---|---|\n");
	struct vindex *ex = index_with(0, 1);
	char id[32];
	for (size_t i = 0; i < n; i++) {
		embed_local(ps[i].a, strlen(ps[i].a), v, DIM);
		snprintf(id, sizeof id, "a%zu", i);
		vindex_add(ex, "p", DIM, id, v, 0, NULL);
	}
	for (size_t pi = 0; pi <= sizeof probes / sizeof *probes; pi++) {
		bool exact = pi == sizeof probes / sizeof *probes;
		struct vindex *vi = exact ? ex : index_with(1000, probes[pi]);
		for (size_t i = 0; !exact && i < n; i++) {
			embed_local(ps[i].a, strlen(ps[i].a), v, DIM);
			snprintf(id, sizeof id, "a%zu", i);
			vindex_add(vi, "p", DIM, id, v, 0, NULL);
		}
		size_t hits = 0, same = 0, right = 0, read = 0;
		int lists = 0;
		for (size_t i = 0; i < n; i++) {
			struct vindex_hit h, he;
			struct vindex_stats st;
			embed_local(ps[i].b, strlen(ps[i].b), v, DIM);
			vindex_search(ex, "p", DIM, v, 0, &he, NULL);
			vindex_search(vi, "p", DIM, v, 0, &h, NULL);
			vindex_last_stats(&st);
			read += st.rows;
			lists = st.lists;
			if (!h.found || h.similarity < threshold)
				continue;
			hits++;
			same += he.found && strcmp(he.id, h.id) == 0;
			snprintf(id, sizeof id, "a%zu", i);
			right += ps[i].y == 1 && strcmp(h.id, id) == 0;
		}
		int nlist = lists_for(n);
		if (exact)
			printf("| every row (exact) | 100 %% | %zu | %zu |\n", hits, right);
		else
			printf("| %d of %d | %.1f %% | %zu (%zu) | %zu |\n", lists, nlist, 100.0 *
			       (double)read / (double)(n * n), hits, same, right);
		if (!exact)
			vindex_destroy(vi);
	}
	vindex_destroy(ex);
}

int main(int argc, char **argv)
{
	size_t rows = 100000;
	double threshold = 0.85; /* SEMGATE_SEMANTIC_THRESHOLD's default */
	int i = 1;
	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		if (strcmp(argv[i], "--rows") == 0 && i + 1 < argc)
			rows = strtoul(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--threshold") == 0 && i + 1 < argc)
			threshold = atof(argv[++i]);
		else
			break;
	}
	if (rows < LISTS_FROM || i == argc) {
		fprintf(stderr, "usage: bench_lists [--rows N >= %d] [--threshold T] file.csv...\n",
		        LISTS_FROM);
		return 2;
	}
	random_rows(rows);
	struct pair_text *all = NULL;
	size_t n = 0;
	for (; i < argc; i++) {
		struct pair_text *ps = NULL;
		size_t k = pairs_read(argv[i], 0, &ps);
		struct pair_text *grown = realloc(all, (n + k) * sizeof *all);
		if (!grown)
			return 1;
		all = grown;
		memcpy(all + n, ps, k * sizeof *ps);
		n += k;
		free(ps);
	}
	labelled(all, n, threshold);
	pairs_free(all, n);
	return 0;
}
