/* The labelled question pairs of ../shared/data/pairs for the offline
 * benchmarks (verify_pairs, bench_lists): CSV files with the header
 * "a,b,y", RFC 4180 quoting, read where they lie and never copied. */
#ifndef SEMGATE_BENCH_PAIRS_H
#define SEMGATE_BENCH_PAIRS_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pair_text {
	char *a, *b; /* a is stored, b is looked up */
	int y;       /* 1: b asks what a asks */
};

/* One CSV field from *p (RFC 4180): returns a malloc'd string; *p moves
 * past the field and its separator; *eol is set at the end of a record. */
static char *csv_field(const char **p, int *eol)
{
	const char *s = *p;
	size_t cap = 64, n = 0;
	char *out = malloc(cap);
	if (!out)
		exit(1);
	bool quoted = *s == '"';
	if (quoted)
		s++;
	for (;;) {
		char c = *s;
		if (c == '\0')
			break;
		if (quoted && c == '"') {
			if (s[1] == '"') {
				c = '"';
				s++;
			} else {
				s++;
				quoted = false;
				continue;
			}
		} else if (!quoted && (c == ',' || c == '\n' || c == '\r')) {
			break;
		}
		if (n + 2 > cap && !(out = realloc(out, cap *= 2)))
			exit(1);
		out[n++] = c;
		s++;
	}
	out[n] = '\0';
	*eol = *s != ',';
	if (*s == ',')
		s++;
	else {
		while (*s == '\r' || *s == '\n')
			s++;
	}
	*p = s;
	return out;
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		exit(2);
	}
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = malloc((size_t)n + 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
		exit(2);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* Every pair of the CSV file at path into a malloc'd array (*out); rows
 * is 0 for all data rows, 1 for the odd ones, 2 for the even ones (1-based,
 * header excluded). Returns the count; exits on a read error. */
static size_t pairs_read(const char *path, int rows, struct pair_text **out)
{
	char *text = slurp(path);
	const char *p = text;
	int eol = 0;
	while (*p && !eol) /* header */
		free(csv_field(&p, &eol));
	size_t n = 0, cap = 256, row = 0;
	struct pair_text *ps = malloc(cap * sizeof(*ps));
	if (!ps)
		exit(1);
	while (*p) {
		char *f[3] = { NULL, NULL, NULL };
		int k = 0;
		eol = 0;
		while (*p && !eol) {
			char *v = csv_field(&p, &eol);
			if (k < 3)
				f[k++] = v;
			else
				free(v);
		}
		row++;
		if (k < 3 || (rows == 1 && row % 2 == 0) || (rows == 2 && row % 2 == 1)) {
			for (int j = 0; j < k; j++)
				free(f[j]);
			continue;
		}
		if (n == cap && !(ps = realloc(ps, (cap *= 2) * sizeof(*ps))))
			exit(1);
		ps[n++] = (struct pair_text){ .a = f[0], .b = f[1], .y = atoi(f[2]) };
		free(f[2]);
	}
	free(text);
	*out = ps;
	return n;
}

static void pairs_free(struct pair_text *ps, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(ps[i].a);
		free(ps[i].b);
	}
	free(ps);
}

#endif
