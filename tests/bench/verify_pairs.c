/* Offline hit-quality evaluator: for every labelled pair (a, b, y) of the
 * CSV files given (header "a,b,y", RFC 4180 quoting; ../shared/data/pairs),
 * a is the stored question and b the new one. Both are embedded with the
 * built-in local embedder, their cosine similarity is the vector match, and
 * the hit verifier judges b against a in each mode. For each threshold it
 * prints the semantic hits the gateway would serve and how many of them
 * are wrong (y = 0), per mode, then what each rule rejected and the time
 * per verify_pair() call. Used by scripts/verify-pairs; it reads the data
 * where it lies and stores none of it.
 *
 * usage: verify_pairs [--rows all|even|odd] [--list T] file.csv...
 *   --rows   which data rows to use (1-based, header excluded): tuning on
 *            the even rows and reporting the odd ones keeps a check apart
 *   --list T print the pairs at or above threshold T that strict mode
 *            serves wrongly or rejects rightly-labelled (for tuning) */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/cache/verify.h"
#include "semgate/embed/local.h"
#include "pairs.h"

struct pair {
	char *a, *b;
	int y;
	double sim;
	enum verify_reason r[3]; /* per mode */
};

static double dot(const float *x, const float *y, int d)
{
	double s = 0;
	for (int i = 0; i < d; i++)
		s += (double)x[i] * y[i];
	return s;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static const enum verify_mode modes[3] = { SG_VERIFY_OFF, SG_VERIFY_BASIC, SG_VERIFY_STRICT };

static void report(const char *name, struct pair *ps, size_t n, double list_t)
{
	size_t pos = 0;
	for (size_t i = 0; i < n; i++)
		pos += ps[i].y == 1;
	printf("\n## %s: %zu pairs (%zu labelled the same question)\n\n", name, n, pos);
	printf("| threshold | off: hits / wrong | basic: hits / wrong | strict: hits / wrong |\n");
	printf("|---|---|---|---|\n");
	for (int ti = 0; ti <= 19; ti++) {
		double t = 0.80 + 0.01 * ti;
		size_t hits[3] = { 0 }, wrong[3] = { 0 };
		for (size_t i = 0; i < n; i++) {
			if (ps[i].sim < t - 1e-9)
				continue;
			for (int m = 0; m < 3; m++)
				if (ps[i].r[m] == SG_VERIFY_PASS) {
					hits[m]++;
					wrong[m] += ps[i].y == 0;
				}
		}
		printf("| %.2f |", t);
		for (int m = 0; m < 3; m++) {
			if (hits[m])
				printf(" %zu / %zu (%.1f %% right) |", hits[m], wrong[m],
				       100.0 * (double)(hits[m] - wrong[m]) / (double)hits[m]);
			else
				printf(" 0 / 0 |");
		}
		printf("\n");
	}
	/* what strict mode rejected, over every pair at or above 0.80 */
	size_t right[SG_VERIFY_REASON_COUNT] = { 0 }, lost[SG_VERIFY_REASON_COUNT] = { 0 };
	for (size_t i = 0; i < n; i++) {
		if (ps[i].sim < 0.80 - 1e-9 || ps[i].r[2] == SG_VERIFY_PASS)
			continue;
		if (ps[i].y == 0)
			right[ps[i].r[2]]++;
		else
			lost[ps[i].r[2]]++;
	}
	printf("\nstrict rejections at similarity >= 0.80 (wrong hits prevented / right hits lost):");
	for (int r = 1; r < SG_VERIFY_REASON_COUNT; r++)
		if (right[r] || lost[r])
			printf(" %s %zu/%zu", verify_reason_name((enum verify_reason)r), right[r], lost[r]);
	printf("\n");
	if (list_t > 0) {
		for (size_t i = 0; i < n; i++) {
			if (ps[i].sim < list_t)
				continue;
			if (ps[i].y == 0 && ps[i].r[2] == SG_VERIFY_PASS)
				printf("WRONG %.3f | %s | %s\n", ps[i].sim, ps[i].a, ps[i].b);
			else if (ps[i].y == 1 && ps[i].r[2] != SG_VERIFY_PASS)
				printf("LOST %s %.3f | %s | %s\n", verify_reason_name(ps[i].r[2]), ps[i].sim,
				       ps[i].a, ps[i].b);
		}
	}
}

int main(int argc, char **argv)
{
	int rows = 0; /* 0 all, 1 odd, 2 even */
	double list_t = 0;
	int i = 1;
	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		if (strcmp(argv[i], "--rows") == 0 && i + 1 < argc) {
			const char *v = argv[++i];
			rows = strcmp(v, "odd") == 0 ? 1 : strcmp(v, "even") == 0 ? 2 : 0;
		} else if (strcmp(argv[i], "--list") == 0 && i + 1 < argc) {
			list_t = atof(argv[++i]);
		} else {
			fprintf(stderr, "usage: verify_pairs [--rows all|even|odd] [--list T] file.csv...\n");
			return 2;
		}
	}
	if (i == argc) {
		fprintf(stderr, "usage: verify_pairs [--rows all|even|odd] [--list T] file.csv...\n");
		return 2;
	}
	static float va[SG_EMBED_LOCAL_DIM], vb[SG_EMBED_LOCAL_DIM];
	size_t calls = 0;
	double spent = 0;
	printf("rows: %s; embedder: %s (lexical); a is stored, b is looked up\n",
	       rows == 0 ? "all" : rows == 1 ? "odd" : "even", SG_EMBED_LOCAL_MODEL);
	for (; i < argc; i++) {
		struct pair_text *pt = NULL;
		size_t n = pairs_read(argv[i], rows, &pt);
		struct pair *ps = malloc((n ? n : 1) * sizeof(*ps));
		if (!ps)
			return 1;
		for (size_t j = 0; j < n; j++) {
			struct pair *q = &ps[j];
			q->a = pt[j].a;
			q->b = pt[j].b;
			q->y = pt[j].y;
			embed_local(q->a, strlen(q->a), va, SG_EMBED_LOCAL_DIM);
			embed_local(q->b, strlen(q->b), vb, SG_EMBED_LOCAL_DIM);
			q->sim = dot(va, vb, SG_EMBED_LOCAL_DIM);
			for (int m = 0; m < 3; m++) {
				double t0 = now_s();
				q->r[m] = verify_pair(modes[m], q->b, strlen(q->b), q->a, strlen(q->a));
				if (m == 2) {
					spent += now_s() - t0;
					calls++;
				}
			}
		}
		const char *name = strrchr(argv[i], '/');
		report(name ? name + 1 : argv[i], ps, n, list_t);
		pairs_free(pt, n);
		free(ps);
	}
	printf("\nstrict verify_pair(): %zu calls, %.2f µs per call (mean over every pair)\n",
	       calls, calls ? spent / (double)calls * 1e6 : 0.0);
	return 0;
}
