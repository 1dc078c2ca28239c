/* Benchmark (not a test) of vindex_search against the machine's own memory
 * bandwidth, measured in the same run on a buffer of the same size, and a
 * naive scalar dot-product loop. Prints one table and writes it as Markdown
 * and JSON. Never changes OpenBLAS settings: threading is as the
 * environment left it, and the table says what that was. */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "semgate/vindex.h"

#define DIM 384
#define BATCH 32
#define PART "bench"
#define MAX_RUNS 15

struct row {
	size_t n;
	double mb;
	double search_ms, search_gbs;
	double bw1_gbs, bw2_gbs;
	double naive_ms, naive_gbs;
	double sdot_gbs;
	double ratio;
	double batch_ms_per_q, batch_gbs;
	bool hit_ok;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

/* Row i's vector depends only on i, so a query can be rebuilt from it. */
static void gen_row(float *v, size_t i)
{
	uint64_t s = 0x9e3779b97f4a7c15ULL * (i + 1);
	for (int j = 0; j < DIM; j++)
		v[j] = (float)((double)(rng_next(&s) >> 11) / (double)(1ULL << 53) * 2.0 - 1.0);
}

static volatile float sink;

/* Memory-read bound: many independent accumulators let -O3 vectorise the
 * sum without -ffast-math. */
static float sum_floats(const float *a, size_t n)
{
	float acc[32] = { 0 };
	size_t i = 0;
	for (; i + 32 <= n; i += 32)
		for (int j = 0; j < 32; j++)
			acc[j] += a[i + j];
	float s = 0;
	for (; i < n; i++)
		s += a[i];
	for (int j = 0; j < 32; j++)
		s += acc[j];
	return s;
}

/* The baseline a C programmer writes first, kept scalar on purpose. */
__attribute__((optimize("no-tree-vectorize")))
static size_t naive_best(const float *m, size_t n, const float *q)
{
	size_t best = 0;
	float bs = -INFINITY;
	for (size_t r = 0; r < n; r++) {
		float s = 0;
		for (int j = 0; j < DIM; j++)
			s += m[r * DIM + j] * q[j];
		if (s > bs) {
			bs = s;
			best = r;
		}
	}
	return best;
}

/* Two-thread read: a persistent helper sums the second half while the main
 * thread sums the first, synchronised by barriers so that thread start-up
 * is not timed. */
struct helper {
	pthread_barrier_t go, done;
	const float *a;
	size_t n;
	bool quit;
	float out;
};

static void *helper_main(void *arg)
{
	struct helper *h = arg;
	for (;;) {
		pthread_barrier_wait(&h->go);
		if (h->quit)
			return NULL;
		h->out = sum_floats(h->a, h->n);
		pthread_barrier_wait(&h->done);
	}
}

static double time_read2(struct helper *h, const float *buf, size_t n)
{
	size_t half = n / 2;
	h->a = buf + half;
	h->n = n - half;
	double t0 = now_s();
	pthread_barrier_wait(&h->go);
	float s = sum_floats(buf, half);
	pthread_barrier_wait(&h->done);
	double t = now_s() - t0;
	sink = s + h->out;
	return t;
}

static bool run_size(size_t n, struct helper *h, struct row *out)
{
	size_t nf = n * DIM;
	double bytes = (double)nf * sizeof(float);
	int runs = n >= 1000000 ? 7 : n >= 100000 ? 11 : 15;
	int naive_runs = n >= 1000000 ? 3 : 5;
	char id[32];
	float v[DIM];
	struct sg_error e = { 0 };

	memset(out, 0, sizeof *out);
	out->n = n;
	out->mb = bytes / 1e6;
	fprintf(stderr, "# N=%zu: building index (%.0f MB)...\n", n, out->mb);
	struct vindex *vi = vindex_create();
	float *buf = malloc(nf * sizeof *buf);
	float *queries = malloc((size_t)BATCH * DIM * sizeof *queries);
	if (!vi || !buf || !queries) {
		fprintf(stderr, "out of memory for N=%zu\n", n);
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		gen_row(v, i);
		snprintf(id, sizeof id, "v%zu", i);
		if (vindex_add(vi, PART, DIM, id, v, 0, &e) != SG_OK) {
			fprintf(stderr, "vindex_add: %s\n", e.msg);
			goto fail;
		}
		/* The bandwidth buffer holds the same data, normalised too. */
		vindex_normalize(v, DIM);
		memcpy(buf + i * DIM, v, sizeof v);
	}
	/* Queries: noisy copies of known rows, so the right answer is known. */
	for (int q = 0; q < BATCH; q++) {
		float *qq = queries + (size_t)q * DIM;
		uint64_t s = 777 + (uint64_t)q;
		gen_row(qq, (n / BATCH) * (size_t)q + 1);
		for (int j = 0; j < DIM; j++)
			qq[j] += 0.1f * (float)((double)(rng_next(&s) >> 11) / (double)(1ULL << 53) - 0.5);
	}

	/* Each round times every method once, so load from other processes on
	 * the machine hits all of them alike; the table gives per-method
	 * medians. The slow baselines run in the first rounds only. */
	float *y = malloc(n * sizeof *y);
	if (!y)
		goto fail;
	struct vindex_hit hit, hits[BATCH];
	double t_bw1[MAX_RUNS], t_bw2[MAX_RUNS], t_search[MAX_RUNS], t_batch[MAX_RUNS];
	double t_naive[MAX_RUNS], t_sdot[MAX_RUNS];
	size_t nb = 0;
	/* warm-up */
	sink = sum_floats(buf, nf);
	time_read2(h, buf, nf);
	vindex_search(vi, PART, DIM, queries, 0, &hit, NULL);
	vindex_search_batch(vi, PART, DIM, queries, BATCH, 0, hits, NULL);
	for (int r = 0; r < runs; r++) {
		double t0 = now_s();
		sink = sum_floats(buf, nf);
		t_bw1[r] = now_s() - t0;

		t_bw2[r] = time_read2(h, buf, nf);

		t0 = now_s();
		vindex_search(vi, PART, DIM, queries, 0, &hit, NULL);
		t_search[r] = now_s() - t0;

		t0 = now_s();
		vindex_search_batch(vi, PART, DIM, queries, BATCH, 0, hits, NULL);
		t_batch[r] = now_s() - t0;

		if (r >= naive_runs)
			continue;
		t0 = now_s();
		nb = naive_best(buf, n, queries);
		t_naive[r] = now_s() - t0;

		t0 = now_s();
		for (size_t i = 0; i < n; i++)
			y[i] = cblas_sdot(DIM, buf + i * DIM, 1, queries, 1);
		t_sdot[r] = now_s() - t0;
		sink = y[n / 2];
	}
	free(y);
	out->bw1_gbs = bytes / median(t_bw1, runs) / 1e9;
	out->bw2_gbs = bytes / median(t_bw2, runs) / 1e9;
	out->search_ms = median(t_search, runs) * 1e3;
	out->search_gbs = bytes / (out->search_ms / 1e3) / 1e9;
	out->batch_ms_per_q = median(t_batch, runs) * 1e3 / BATCH;
	out->batch_gbs = bytes / (out->batch_ms_per_q / 1e3) / 1e9;
	out->naive_ms = median(t_naive, naive_runs) * 1e3;
	out->naive_gbs = bytes / (out->naive_ms / 1e3) / 1e9;
	out->sdot_gbs = bytes / median(t_sdot, naive_runs) / 1e9;

	/* The answers must be right, or the timings mean nothing. */
	snprintf(id, sizeof id, "v%zu", nb);
	out->hit_ok = hit.found && strcmp(hit.id, id) == 0 && strcmp(id, "v1") == 0;
	for (int q = 0; q < BATCH; q++) {
		snprintf(id, sizeof id, "v%zu", (n / BATCH) * (size_t)q + 1);
		if (!hits[q].found || strcmp(hits[q].id, id) != 0)
			out->hit_ok = false;
	}
	double bw = out->bw1_gbs > out->bw2_gbs ? out->bw1_gbs : out->bw2_gbs;
	out->ratio = out->search_gbs / bw;

	free(queries);
	free(buf);
	vindex_destroy(vi);
	return true;
fail:
	free(queries);
	free(buf);
	vindex_destroy(vi);
	return false;
}

static const char *const HEAD =
	"| N | matrix MB | search ms | vindex GB/s | read 1T GB/s | read 2T GB/s "
	"| naive dot ms | naive dot GB/s | sdot/row GB/s | vindex/read "
	"| batch32 ms/query | batch32 GB/s-eq | answers ok |\n"
	"|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|\n";

static void print_row(FILE *f, const struct row *r)
{
	fprintf(f, "| %zu | %.1f | %.3f | %.1f | %.1f | %.1f | %.2f | %.2f | %.1f | %.2f | %.4f "
	        "| %.1f | %s |\n",
	        r->n, r->mb, r->search_ms, r->search_gbs, r->bw1_gbs, r->bw2_gbs,
	        r->naive_ms, r->naive_gbs, r->sdot_gbs, r->ratio, r->batch_ms_per_q, r->batch_gbs,
	        r->hit_ok ? "yes" : "NO");
}

static void print_notes(FILE *f, int blas_threads)
{
	fprintf(f, "\ndim %d float32; medians of several runs. OpenBLAS %s, core %s, "
	        "%d thread(s) (not changed by the bench); %d CPUs online.\n"
	        "vindex/read = vindex GB/s over the better of the 1- and 2-thread "
	        "read bandwidth on a buffer of the same size. batch32 = %d queries "
	        "in one vindex_search_batch (sgemm) call; GB/s-eq = matrix bytes / "
	        "time per query. naive dot = scalar C loop, -O3, vectorisation off.\n",
	        DIM, openblas_get_config(), openblas_get_corename(), blas_threads,
	        openblas_get_num_procs(), BATCH);
}

static void write_json(FILE *f, const struct row *rows, int nrows, const char *stamp,
                       int blas_threads)
{
	fprintf(f, "{\n  \"timestamp\": \"%s\",\n  \"dim\": %d,\n  \"batch\": %d,\n"
	        "  \"openblas_config\": \"%s\",\n  \"openblas_core\": \"%s\",\n"
	        "  \"openblas_threads\": %d,\n  \"rows\": [\n",
	        stamp, DIM, BATCH, openblas_get_config(), openblas_get_corename(),
	        blas_threads);
	for (int i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		fprintf(f, "    {\"n\": %zu, \"matrix_mb\": %.3f, \"search_ms\": %.4f, "
		        "\"search_gbs\": %.3f, \"read_1t_gbs\": %.3f, \"read_2t_gbs\": %.3f, "
		        "\"naive_ms\": %.4f, \"naive_gbs\": %.3f, \"sdot_row_gbs\": %.3f, "
		        "\"ratio_vs_read\": %.4f, "
		        "\"batch_ms_per_query\": %.5f, \"batch_gbs_eq\": %.3f, "
		        "\"answers_ok\": %s}%s\n",
		        r->n, r->mb, r->search_ms, r->search_gbs, r->bw1_gbs, r->bw2_gbs,
		        r->naive_ms, r->naive_gbs, r->sdot_gbs, r->ratio, r->batch_ms_per_q,
		        r->batch_gbs, r->hit_ok ? "true" : "false", i + 1 < nrows ? "," : "");
	}
	fprintf(f, "  ]\n}\n");
}

int main(int argc, char **argv)
{
	bool quick = false;
	const char *out_dir = "bench-results";
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--quick") == 0) {
			quick = true;
		} else if (strcmp(argv[i], "--out-dir") == 0 && i + 1 < argc) {
			out_dir = argv[++i];
		} else {
			fprintf(stderr, "usage: %s [--quick] [--out-dir DIR]\n", argv[0]);
			return 2;
		}
	}
	static const size_t sizes[] = { 10000, 100000, 1000000 };
	int nsizes = quick ? 2 : 3;
	struct row rows[3];
	struct helper h = { 0 };
	pthread_t th;
	pthread_barrier_init(&h.go, NULL, 2);
	pthread_barrier_init(&h.done, NULL, 2);
	if (pthread_create(&th, NULL, helper_main, &h) != 0) {
		fprintf(stderr, "pthread_create failed\n");
		return 1;
	}
	int blas_threads = openblas_get_num_threads();
	bool ok = true;
	for (int i = 0; i < nsizes && ok; i++)
		ok = run_size(sizes[i], &h, &rows[i]);
	h.quit = true;
	pthread_barrier_wait(&h.go);
	pthread_join(th, NULL);
	if (!ok)
		return 1;

	printf("%s", HEAD);
	for (int i = 0; i < nsizes; i++)
		print_row(stdout, &rows[i]);
	print_notes(stdout, blas_threads);

	char stamp[32], path[4096];
	time_t now = time(NULL);
	struct tm tm;
	strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime_r(&now, &tm));
	if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "cannot create %s: %s\n", out_dir, strerror(errno));
		return 1;
	}
	snprintf(path, sizeof path, "%s/vindex-%s.md", out_dir, stamp);
	FILE *f = fopen(path, "w");
	if (!f) {
		fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
		return 1;
	}
	fprintf(f, "# vindex benchmark %s\n\n%s", stamp, HEAD);
	for (int i = 0; i < nsizes; i++)
		print_row(f, &rows[i]);
	print_notes(f, blas_threads);
	fclose(f);
	printf("\nwrote %s\n", path);
	snprintf(path, sizeof path, "%s/vindex-%s.json", out_dir, stamp);
	if (!(f = fopen(path, "w"))) {
		fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
		return 1;
	}
	write_json(f, rows, nsizes, stamp, blas_threads);
	fclose(f);
	printf("wrote %s\n", path);
	return 0;
}
