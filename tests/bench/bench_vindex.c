/* Benchmark (not a test) of vindex_search: the exact float32 scan the index
 * used to do (cblas_sgemv over the matrix + max, and cblas_sgemm for a
 * batch, replayed here on a copy of the same rows) against the int8 compact
 * pass + exact re-rank, next to the machine's memory-read bandwidth measured
 * in the same run on a buffer as big as the compact copy. Checks every
 * answer against an exhaustive double-precision scan. Prints two tables and
 * writes them as Markdown and JSON. Never changes OpenBLAS settings. */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "semgate/vindex/vindex.h"

#define DIM 384
#define PLANE 192  /* bytes per row of each code plane at DIM */
#define META 12    /* per-row floats of the compact copy */
#define BATCH 32
#define NQ 16      /* distinct single queries per set */
#define PART "bench"

struct row {
	size_t n;
	double code_mb, fp32_mb, read_mb; /* compact copy; float rows; read per query */
	double old_p50, old_p99;       /* sgemv scan, ms */
	double new_p50, new_p99;       /* vindex_search, near queries, ms */
	double new1_p50;               /* same, one thread */
	double hard_p50, hard_p99;     /* vindex_search, random queries */
	double min_p50;                /* vindex_search_min(0.9), random queries */
	double compact_gbs, bw1_gbs, bw2_gbs, ratio;
	double ref_near, cand_near, rr_near, ref_hard, cand_hard, rr_hard, rr_min;
	int threads;
	double old_batch_ms, new_batch_ms, batch_rr; /* per query */
	/* CONC_THREADS threads of single random-direction searches (misses):
	 * searches/s each alone and coalesced (medians of CONC_ROUNDS), the
	 * largest pass seen */
	double conc_alone_qps, conc_coal_qps;
	int conc_most;
	bool ok;
	int bad;
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

/* Percentile p (0..100) of v[0..n), nearest rank; sorts v. */
static double pct(double *v, int n, double p)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	int k = (int)ceil(p / 100.0 * n) - 1;
	if (k < 0)
		k = 0;
	if (k >= n)
		k = n - 1;
	return v[k];
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

static float rng_unit(uint64_t *s)
{
	return (float)((double)(rng_next(s) >> 11) / (double)(1ULL << 53) * 2.0 - 1.0);
}

/* Row i's vector depends only on i, so a query can be rebuilt from it. */
static void gen_row(float *v, size_t i)
{
	uint64_t s = 0x9e3779b97f4a7c15ULL * (i + 1);
	for (int j = 0; j < DIM; j++)
		v[j] = rng_unit(&s);
}

static volatile uint64_t sink;

/* Memory-read bound: integer adds have no latency chain worth speaking of,
 * so -O3 -march=native turns this into wide loads + adds at full speed. */
static uint64_t sum_bytes(const uint64_t *a, size_t n)
{
	uint64_t acc[8] = { 0 };
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
		for (int j = 0; j < 8; j++)
			acc[j] += a[i + j];
	for (; i < n; i++)
		acc[0] += a[i];
	return acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
}

/* Two-thread read: a persistent helper sums the second half while the main
 * thread sums the first, synchronised by barriers so that thread start-up
 * is not timed. */
struct helper {
	pthread_barrier_t go, done;
	const uint64_t *a;
	size_t n;
	bool quit;
	uint64_t out;
};

static void *helper_main(void *arg)
{
	struct helper *h = arg;
	for (;;) {
		pthread_barrier_wait(&h->go);
		if (h->quit)
			return NULL;
		h->out = sum_bytes(h->a, h->n);
		pthread_barrier_wait(&h->done);
	}
}

static double time_read1(const uint64_t *buf, size_t n)
{
	double t0 = now_s();
	sink = sum_bytes(buf, n);
	return now_s() - t0;
}

static double time_read2(struct helper *h, const uint64_t *buf, size_t n)
{
	size_t half = n / 2;
	h->a = buf + half;
	h->n = n - half;
	double t0 = now_s();
	pthread_barrier_wait(&h->go);
	uint64_t s = sum_bytes(buf, half);
	pthread_barrier_wait(&h->done);
	double t = now_s() - t0;
	sink = s + h->out;
	return t;
}

/* The old vindex_search: sgemv in blocks of 65536 rows, then a max. */
#define OLD_BLOCK 65536
static size_t old_search(const float *m, size_t n, const float *q, float *scores)
{
	size_t bi = 0;
	float bs = -INFINITY;
	for (size_t start = 0; start < n; start += OLD_BLOCK) {
		size_t rows = n - start < OLD_BLOCK ? n - start : OLD_BLOCK;
		cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)rows, DIM, 1.0f, m + start * DIM, DIM,
		            q, 1, 0.0f, scores, 1);
		for (size_t i = 0; i < rows; i++)
			if (scores[i] > bs) {
				bs = scores[i];
				bi = start + i;
			}
	}
	return bi;
}

/* The old vindex_search_batch: sgemm over blocks, 1 MiB of scores. */
static void old_batch(const float *m, size_t n, const float *qs, float *scores)
{
	size_t blk = 262144 / BATCH;
	for (size_t start = 0; start < n; start += blk) {
		size_t rows = n - start < blk ? n - start : blk;
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, BATCH, (int)rows, DIM, 1.0f, qs,
		            DIM, m + start * DIM, DIM, 0.0f, scores, (int)rows);
		for (int q = 0; q < BATCH; q++) {
			float bs = -INFINITY;
			for (size_t i = 0; i < rows; i++)
				if (scores[(size_t)q * rows + i] > bs)
					bs = scores[(size_t)q * rows + i];
			sink += bs > 0;
		}
	}
}

/* The index's definition of similarity (see vindex.h). */
static double dot_exact(const float *a, const float *b)
{
	double s[8] = { 0 };
	for (int j = 0; j < DIM; j++)
		s[j & 7] += (double)a[j] * (double)b[j];
	return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* Does hit equal an exhaustive exact scan for query q (raw) over buf? */
static bool check_hit(const float *buf, size_t n, const float *q, const struct vindex_hit *hit)
{
	float x[DIM];
	memcpy(x, q, sizeof x);
	vindex_normalize(x, DIM);
	double best = -INFINITY;
	size_t bi = 0;
	for (size_t i = 0; i < n; i++) {
		double d = dot_exact(x, buf + i * DIM);
		if (d > best) {
			best = d;
			bi = i;
		}
	}
	char id[32];
	snprintf(id, sizeof id, "v%zu", bi);
	double c = best > 1 ? 1 : best < -1 ? -1 : best;
	return hit->found && strcmp(hit->id, id) == 0 && hit->similarity == (float)c;
}

static void set_threads(struct vindex *vi, bool one)
{
	struct vindex_tuning t = { .kernel = VINDEX_KERNEL_AUTO,
		                   .split_min_rows = one ? SIZE_MAX : 0, .bound_scale = 1.0 };
	vindex_set_tuning(vi, &t, NULL);
}

/* ---- many threads searching one partition at once (the gateway at 16
 * connections, every lookup a miss) ---- */

#define CONC_THREADS 16
#define CONC_ROUNDS 3

struct conc {
	struct vindex *vi;
	const float *queries;       /* NQ random directions */
	double until;
	pthread_barrier_t go;
	atomic_long done;
	atomic_int most, next;
};

static void *conc_main(void *arg)
{
	struct conc *c = arg;
	struct vindex_hit hit;
	struct vindex_stats st;
	long n = 0;
	int most = 0, who = atomic_fetch_add(&c->next, 1);
	pthread_barrier_wait(&c->go);
	while (now_s() < c->until) {
		vindex_search(c->vi, PART, DIM, c->queries + (size_t)((n + who) % NQ) * DIM, 0, &hit,
		              NULL);
		vindex_last_stats(&st);
		if (st.coalesced > most)
			most = st.coalesced;
		n++;
	}
	atomic_fetch_add(&c->done, n);
	for (int m = atomic_load(&c->most); most > m &&
	     !atomic_compare_exchange_weak(&c->most, &m, most);)
		;
	return NULL;
}

/* Searches per second of CONC_THREADS threads for secs, coalescing on or
 * off; *most gets the largest number of queries one pass served. */
static double conc_qps(struct vindex *vi, const float *queries, bool coalesce, double secs,
                       int *most)
{
	struct vindex_tuning t = { .kernel = VINDEX_KERNEL_AUTO, .bound_scale = 1.0,
		                   .coalesce_min_rows = coalesce ? 0 : SIZE_MAX };
	vindex_set_tuning(vi, &t, NULL);
	struct conc c = { .vi = vi, .queries = queries };
	atomic_init(&c.done, 0);
	atomic_init(&c.most, 0);
	atomic_init(&c.next, 0);
	pthread_barrier_init(&c.go, NULL, CONC_THREADS + 1);
	pthread_t th[CONC_THREADS];
	for (int i = 0; i < CONC_THREADS; i++)
		pthread_create(&th[i], NULL, conc_main, &c);
	c.until = now_s() + secs;
	pthread_barrier_wait(&c.go);
	double t0 = now_s();
	for (int i = 0; i < CONC_THREADS; i++)
		pthread_join(th[i], NULL);
	double el = now_s() - t0;
	pthread_barrier_destroy(&c.go);
	set_threads(vi, false);
	*most = atomic_load(&c.most);
	return (double)atomic_load(&c.done) / el;
}

static const char *kernel_used = "?";

static bool run_size(size_t n, struct helper *h, struct row *out, bool verify)
{
	size_t nf = n * DIM;
	int runs = n >= 1000000 ? 101 : n >= 100000 ? 301 : 1001;
	int old_runs = n >= 1000000 ? 21 : n >= 100000 ? 61 : 201;
	int batch_runs = n >= 1000000 ? 5 : n >= 100000 ? 11 : 31;
	char id[32];
	float v[DIM];
	struct sg_error e = { 0 };
	struct vindex_stats stats;
	bool okflag = false;

	memset(out, 0, sizeof *out);
	out->n = n;
	out->code_mb = (double)n * (2 * PLANE + META) / 1e6;
	/* What one near query reads: pass 1 the H plane and meta, pass 2 the
	 * meta again and its own partial sums (written, then read). */
	out->read_mb = (double)n * (PLANE + META + META + 4 + 4) / 1e6;
	out->fp32_mb = (double)nf * sizeof(float) / 1e6;
	fprintf(stderr, "# N=%zu: building index...\n", n);
	struct vindex *vi = vindex_create();
	float *buf = malloc(nf * sizeof *buf);
	float *near = malloc((size_t)BATCH * DIM * sizeof *near);
	float *hard = malloc((size_t)NQ * DIM * sizeof *hard);
	float *scores = malloc((OLD_BLOCK > 262144 ? OLD_BLOCK : 262144) * sizeof *scores);
	size_t bwn = (size_t)(out->read_mb * 1e6) / 8;
	uint64_t *bw = malloc(bwn * sizeof *bw);
	double *t_old = malloc((size_t)runs * sizeof(double));
	double *t_new = malloc((size_t)runs * sizeof(double));
	double *t_new1 = malloc((size_t)runs * sizeof(double));
	double *t_hard = malloc((size_t)runs * sizeof(double));
	double *t_min = malloc((size_t)runs * sizeof(double));
	if (!vi || !buf || !near || !hard || !scores || !bw || !t_old || !t_new || !t_new1 ||
	    !t_hard || !t_min) {
		fprintf(stderr, "out of memory for N=%zu\n", n);
		goto done;
	}
	for (size_t i = 0; i < n; i++) {
		gen_row(v, i);
		snprintf(id, sizeof id, "v%zu", i);
		if (vindex_add(vi, PART, DIM, id, v, 0, &e) != SG_OK) {
			fprintf(stderr, "vindex_add: %s\n", e.msg);
			goto done;
		}
		vindex_normalize(v, DIM); /* what the index stores, for old path & checks */
		memcpy(buf + i * DIM, v, sizeof v);
	}
	for (size_t i = 0; i < bwn; i++)
		bw[i] = i * 0x9e3779b97f4a7c15ULL;
	/* near: noisy copies of known rows (cache hits); hard: random
	 * directions, whose best match is ~0.25 among many close rivals. */
	for (int q = 0; q < BATCH; q++) {
		float *qq = near + (size_t)q * DIM;
		uint64_t s = 777 + (uint64_t)q;
		gen_row(qq, (n / BATCH) * (size_t)q + 1);
		for (int j = 0; j < DIM; j++)
			qq[j] += 0.05f * rng_unit(&s);
	}
	uint64_t hs = 4242;
	for (size_t j = 0; j < (size_t)NQ * DIM; j++)
		hard[j] = rng_unit(&hs);

	struct vindex_hit hit, hits[BATCH];
	double fn = 0, cn = 0, rn = 0, fh = 0, ch = 0, rh = 0, rm = 0;
	double t_bw1[15], t_bw2[15], t_ob[31], t_nb[31];
	/* warm-up */
	sink = sum_bytes(bw, bwn);
	old_search(buf, n, near, scores);
	vindex_search(vi, PART, DIM, near, 0, &hit, NULL);
	/* Rounds interleave the methods, so load from other processes on the
	 * machine hits all of them alike. */
	for (int r = 0; r < runs; r++) {
		const float *qn = near + (size_t)(r % NQ) * DIM;
		const float *qh = hard + (size_t)(r % NQ) * DIM;
		double t0;
		if (r < old_runs) {
			t0 = now_s();
			sink += old_search(buf, n, qn, scores);
			t_old[r] = now_s() - t0;
		}
		set_threads(vi, true);
		t0 = now_s();
		vindex_search(vi, PART, DIM, qn, 0, &hit, NULL);
		t_new1[r] = now_s() - t0;
		set_threads(vi, false);
		t0 = now_s();
		vindex_search(vi, PART, DIM, qn, 0, &hit, NULL);
		t_new[r] = now_s() - t0;
		vindex_last_stats(&stats);
		fn += (double)stats.refined;
		cn += (double)stats.candidates;
		rn += (double)stats.reranked;
		out->threads = stats.threads;
		kernel_used = stats.kernel;
		t0 = now_s();
		vindex_search(vi, PART, DIM, qh, 0, &hit, NULL);
		t_hard[r] = now_s() - t0;
		vindex_last_stats(&stats);
		fh += (double)stats.refined;
		ch += (double)stats.candidates;
		rh += (double)stats.reranked;
		t0 = now_s();
		vindex_search_min(vi, PART, DIM, qh, 0.9f, 0, &hit, NULL);
		t_min[r] = now_s() - t0;
		vindex_last_stats(&stats);
		rm += (double)stats.reranked;
		if (r < 15) {
			t_bw1[r] = time_read1(bw, bwn);
			t_bw2[r] = time_read2(h, bw, bwn);
		}
		if (r < batch_runs) {
			t0 = now_s();
			old_batch(buf, n, near, scores);
			t_ob[r] = now_s() - t0;
			t0 = now_s();
			vindex_search_batch(vi, PART, DIM, near, BATCH, 0, hits, NULL);
			t_nb[r] = now_s() - t0;
			vindex_last_stats(&stats);
			out->batch_rr += (double)stats.reranked / BATCH / batch_runs;
		}
	}
	out->old_p50 = pct(t_old, old_runs, 50) * 1e3;
	out->old_p99 = pct(t_old, old_runs, 99) * 1e3;
	out->new_p50 = pct(t_new, runs, 50) * 1e3;
	out->new_p99 = pct(t_new, runs, 99) * 1e3;
	out->new1_p50 = pct(t_new1, runs, 50) * 1e3;
	out->hard_p50 = pct(t_hard, runs, 50) * 1e3;
	out->hard_p99 = pct(t_hard, runs, 99) * 1e3;
	out->min_p50 = pct(t_min, runs, 50) * 1e3;
	out->ref_near = fn / runs;
	out->cand_near = cn / runs;
	out->rr_near = rn / runs;
	out->ref_hard = fh / runs;
	out->cand_hard = ch / runs;
	out->rr_hard = rh / runs;
	out->rr_min = rm / runs;
	double bytes = out->read_mb * 1e6;
	out->bw1_gbs = bytes / pct(t_bw1, 15, 50) / 1e9;
	out->bw2_gbs = bytes / pct(t_bw2, 15, 50) / 1e9;
	out->compact_gbs = bytes / (out->new_p50 / 1e3) / 1e9;
	out->ratio = out->compact_gbs / (out->bw1_gbs > out->bw2_gbs ? out->bw1_gbs : out->bw2_gbs);
	out->old_batch_ms = pct(t_ob, batch_runs, 50) * 1e3 / BATCH;
	out->new_batch_ms = pct(t_nb, batch_runs, 50) * 1e3 / BATCH;

	/* concurrent misses, alone and coalesced, interleaved */
	double qa[CONC_ROUNDS], qc[CONC_ROUNDS], secs = n >= 1000000 ? 3.0 : 1.5;
	for (int r = 0; r < CONC_ROUNDS; r++) {
		int most = 0;
		qa[r] = conc_qps(vi, hard, false, secs, &most);
		qc[r] = conc_qps(vi, hard, true, secs, &most);
		if (most > out->conc_most)
			out->conc_most = most;
	}
	out->conc_alone_qps = pct(qa, CONC_ROUNDS, 50);
	out->conc_coal_qps = pct(qc, CONC_ROUNDS, 50);

	/* The answers must be right, or the timings mean nothing: every query
	 * of both sets against an exhaustive exact scan (a sample at 1M). */
	out->ok = true;
	int step = verify ? 1 : 4;
	for (int q = 0; q < NQ; q += step) {
		vindex_search(vi, PART, DIM, near + (size_t)q * DIM, 0, &hit, NULL);
		if (!check_hit(buf, n, near + (size_t)q * DIM, &hit))
			out->bad++;
		snprintf(id, sizeof id, "v%zu", (n / BATCH) * (size_t)q + 1);
		if (strcmp(hit.id, id) != 0)
			out->bad++;
		vindex_search(vi, PART, DIM, hard + (size_t)q * DIM, 0, &hit, NULL);
		if (!check_hit(buf, n, hard + (size_t)q * DIM, &hit))
			out->bad++;
	}
	vindex_search_batch(vi, PART, DIM, near, BATCH, 0, hits, NULL);
	for (int q = 0; q < BATCH; q++) {
		vindex_search(vi, PART, DIM, near + (size_t)q * DIM, 0, &hit, NULL);
		if (strcmp(hits[q].id, hit.id) != 0 || hits[q].similarity != hit.similarity)
			out->bad++;
	}
	out->ok = out->bad == 0;
	okflag = true;
done:
	free(t_old);
	free(t_new);
	free(t_new1);
	free(t_hard);
	free(t_min);
	free(bw);
	free(scores);
	free(hard);
	free(near);
	free(buf);
	vindex_destroy(vi);
	return okflag;
}

static const char *const HEAD1 =
	"| N | fp32 MB | compact MB | read/query MB | old sgemv p50 ms | old p99 ms "
	"| new p50 ms | new p99 ms | new 1-thread p50 ms | speed-up p50 | compact GB/s "
	"| mem read 1T GB/s | mem read 2T GB/s | compact/mem | refined/q | cand/q | re-ranked/q "
	"| hard p50 ms | hard p99 ms | hard refined/q | hard re-ranked/q "
	"| min0.9 hard p50 ms | min0.9 re-ranked/q | answers exact |\n"
	"|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
	"|---:|---:|---:|---:|---:|---:|:---:|\n";

static const char *const HEAD2 =
	"| N | old sgemm ms/query | new batch ms/query | speed-up | re-ranked/q |\n"
	"|---:|---:|---:|---:|---:|\n";

static void print_rows(FILE *f, const struct row *rows, int nrows)
{
	fprintf(f, "Single query (%d noisy copies of stored rows unless 'hard' = random "
	        "directions):\n\n%s", NQ, HEAD1);
	for (int i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		fprintf(f, "| %zu | %.1f | %.1f | %.1f | %.3f | %.3f | %.3f | %.3f | %.3f | %.1fx "
		        "| %.1f | %.1f | %.1f | %.2f | %.1f | %.1f | %.1f | %.3f | %.3f | %.0f | %.1f "
		        "| %.3f | %.2f | %s |\n",
		        r->n, r->fp32_mb, r->code_mb, r->read_mb, r->old_p50, r->old_p99, r->new_p50,
		        r->new_p99, r->new1_p50, r->old_p50 / r->new_p50, r->compact_gbs, r->bw1_gbs,
		        r->bw2_gbs, r->ratio, r->ref_near, r->cand_near, r->rr_near, r->hard_p50,
		        r->hard_p99, r->ref_hard, r->rr_hard, r->min_p50, r->rr_min,
		        r->ok ? "yes" : "NO");
	}
	fprintf(f, "\n%d threads of single searches at once, random directions (every one a "
	        "miss), %d rounds interleaved, medians:\n\n"
	        "| N | each alone searches/s | coalesced searches/s | x | largest pass |\n"
	        "|---:|---:|---:|---:|---:|\n", CONC_THREADS, CONC_ROUNDS);
	for (int i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		fprintf(f, "| %zu | %.0f | %.0f | %.2fx | %d |\n", r->n, r->conc_alone_qps,
		        r->conc_coal_qps, r->conc_coal_qps / r->conc_alone_qps, r->conc_most);
	}
	fprintf(f, "\nBatch of %d queries in one call:\n\n%s", BATCH, HEAD2);
	for (int i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		fprintf(f, "| %zu | %.3f | %.3f | %.1fx | %.1f |\n", r->n, r->old_batch_ms,
		        r->new_batch_ms, r->old_batch_ms / r->new_batch_ms, r->batch_rr);
	}
}

static void print_notes(FILE *f, int blas_threads, const double load[2])
{
	fprintf(f, "\ndim %d. old = the float32 scan vindex used before (cblas_sgemv in "
	        "65536-row blocks + max; cblas_sgemm for the batch) on the same rows. "
	        "new = vindex_search: int8 codes as two nibble planes (%s kernel, a helper thread "
	        "from 65536 rows): pass 1 reads the high-nibble plane, pass 2 the low one "
	        "for rows that may still win ('refined'), then an exact re-rank. compact "
	        "MB = both planes + per-row scale and error bounds; read/query MB = what "
	        "a near query reads (high plane, per-row floats twice, partial sums "
	        "written and read); compact GB/s = read/query MB / new p50; mem read = "
	        "summing a buffer of that size with 1 and 2 threads. cand/q = rows whose "
	        "int8 upper bound reached the running floor; re-ranked/q = exact dot "
	        "products. min0.9 = "
	        "vindex_search_min with 0.9. answers exact = every answer checked against "
	        "an exhaustive double scan and batch == single. OpenBLAS %s, core %s, %d "
	        "thread(s) (not changed). Load average %.2f at start, %.2f at end "
	        "(other work on the machine skews every figure).\n",
	        DIM, kernel_used, openblas_get_config(), openblas_get_corename(), blas_threads,
	        load[0], load[1]);
}

static void write_json(FILE *f, const struct row *rows, int nrows, const char *stamp,
                       int blas_threads, const double load[2])
{
	fprintf(f, "{\n  \"timestamp\": \"%s\",\n  \"dim\": %d,\n  \"batch\": %d,\n"
	        "  \"kernel\": \"%s\",\n  \"openblas_config\": \"%s\",\n"
	        "  \"openblas_core\": \"%s\",\n  \"openblas_threads\": %d,\n"
	        "  \"loadavg_start\": %.2f,\n  \"loadavg_end\": %.2f,\n  \"rows\": [\n",
	        stamp, DIM, BATCH, kernel_used, openblas_get_config(), openblas_get_corename(),
	        blas_threads, load[0], load[1]);
	for (int i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		fprintf(f, "    {\"n\": %zu, \"compact_mb\": %.3f, \"fp32_mb\": %.3f, "
		        "\"old_p50_ms\": %.4f, \"old_p99_ms\": %.4f, \"new_p50_ms\": %.4f, "
		        "\"new_p99_ms\": %.4f, \"new_1thread_p50_ms\": %.4f, \"threads\": %d, "
		        "\"compact_gbs\": %.3f, \"read_1t_gbs\": %.3f, \"read_2t_gbs\": %.3f, "
		        "\"compact_over_read\": %.4f, \"read_mb_per_query\": %.3f, "
		        "\"refined_per_query\": %.2f, \"candidates_per_query\": %.2f, "
		        "\"reranked_per_query\": %.2f, \"hard_p50_ms\": %.4f, \"hard_p99_ms\": %.4f, "
		        "\"hard_refined_per_query\": %.2f, "
		        "\"hard_candidates_per_query\": %.2f, \"hard_reranked_per_query\": %.2f, "
		        "\"min09_hard_p50_ms\": %.4f, \"min09_hard_reranked_per_query\": %.2f, "
		        "\"batch_old_ms_per_query\": %.5f, \"batch_new_ms_per_query\": %.5f, "
		        "\"batch_reranked_per_query\": %.2f, \"answers_exact\": %s, "
		        "\"wrong_answers\": %d}%s\n",
		        r->n, r->code_mb, r->fp32_mb, r->old_p50, r->old_p99, r->new_p50, r->new_p99,
		        r->new1_p50, r->threads, r->compact_gbs, r->bw1_gbs, r->bw2_gbs, r->ratio,
		        r->read_mb, r->ref_near, r->cand_near, r->rr_near, r->hard_p50, r->hard_p99,
		        r->ref_hard, r->cand_hard, r->rr_hard,
		        r->min_p50, r->rr_min, r->old_batch_ms, r->new_batch_ms, r->batch_rr,
		        r->ok ? "true" : "false", r->bad, i + 1 < nrows ? "," : "");
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
	double load[2] = { 0, 0 };
	getloadavg(&load[0], 1);
	pthread_barrier_init(&h.go, NULL, 2);
	pthread_barrier_init(&h.done, NULL, 2);
	if (pthread_create(&th, NULL, helper_main, &h) != 0) {
		fprintf(stderr, "pthread_create failed\n");
		return 1;
	}
	int blas_threads = openblas_get_num_threads();
	bool ok = true;
	for (int i = 0; i < nsizes && ok; i++)
		ok = run_size(sizes[i], &h, &rows[i], sizes[i] < 1000000);
	h.quit = true;
	pthread_barrier_wait(&h.go);
	pthread_join(th, NULL);
	if (!ok)
		return 1;
	getloadavg(&load[1], 1);

	print_rows(stdout, rows, nsizes);
	print_notes(stdout, blas_threads, load);

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
	fprintf(f, "# vindex benchmark %s%s\n\n", stamp, quick ? " (quick)" : "");
	print_rows(f, rows, nsizes);
	print_notes(f, blas_threads, load);
	fclose(f);
	printf("\nwrote %s\n", path);
	snprintf(path, sizeof path, "%s/vindex-%s.json", out_dir, stamp);
	if (!(f = fopen(path, "w"))) {
		fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
		return 1;
	}
	write_json(f, rows, nsizes, stamp, blas_threads, load);
	fclose(f);
	printf("wrote %s\n", path);
	for (int i = 0; i < nsizes; i++)
		if (!rows[i].ok)
			return 1;
	return 0;
}
